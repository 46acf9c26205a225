"""Subsampling frontends: [B, T, F] features -> [B, T/4, d_model], with exact output lengths.

Both reduce time 4x before the Conformer so attention runs on 40 ms frames. Each frontend knows its own
length arithmetic (`output_lengths`), which the padding masks and the CTC loss rely on.
"""

import torch
from torch import nn


class VGGSubsampling(nn.Module):
    """The paper's VGG-style frontend: two blocks of two 3x3 convs + ReLU, each followed by 2x2 max pooling.

    Pooling uses ceil mode (as ESPnet's VGG2L), so any input length >= 1 gives ceil(ceil(T / 2) / 2) frames.
    """

    def __init__(self, n_mels: int, d_model: int, channels: tuple[int, int] = (64, 128)):
        super().__init__()
        c1, c2 = channels
        self.convs = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c2, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
        )
        self.out = nn.Linear(c2 * ((n_mels + 3) // 4), d_model)

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        for _ in range(2):
            lengths = (lengths + 1) // 2
        return lengths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x.unsqueeze(1))  # [B, C, T', F']
        return self.out(x.transpose(1, 2).flatten(2))


class Conv2dSubsampling(nn.Module):
    """Two strided 3x3 convs (stride 2, no padding) + ReLU, as ESPnet's Conv2dSubsampling; needs T >= 7."""

    def __init__(self, n_mels: int, d_model: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(1, d_model, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(d_model, d_model, 3, stride=2),
            nn.ReLU(),
        )
        self.out = nn.Linear(d_model * (((n_mels - 1) // 2 - 1) // 2), d_model)

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        return ((lengths - 1) // 2 - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x.unsqueeze(1))
        return self.out(x.transpose(1, 2).flatten(2))


FRONTENDS = {"vgg": VGGSubsampling, "conv2d": Conv2dSubsampling}
