"""Conformer blocks (Gulati et al. 2020): macaron feed-forward halves around attention and convolution.

Every weight-times-activation product is an nn.Linear (feed-forward `w1`/`w2`, attention `in_proj`/
`out_proj`, convolution `pointwise1`/`pointwise2`), so a crossbar converter can find and map all of them.
"""

import torch
from torch import nn

from asr.model.attention import SelfAttention


class FeedForward(nn.Module):
    """Pre-norm d -> ff -> d with Swish; the block adds half of its output (macaron)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.w1 = nn.Linear(d_model, d_ff)
        self.w2 = nn.Linear(d_ff, d_model)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(self.dropout(self.act(self.w1(self.norm(x))))))


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a [B, C, T] tensor: each frame normalized on its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ConvModule(nn.Module):
    """Pointwise linear d -> 2d + GLU, depthwise conv over time, norm, Swish, pointwise linear d -> d.

    The pointwise convolutions are written as nn.Linear (identical maths, and mappable). Padded frames are
    zeroed before the depthwise conv so they do not leak into real frames. `norm="batch"` is the original
    Conformer's BatchNorm; "layer" keeps every frame independent of the rest of the batch. asr.quant may
    swap `depthwise` for a QuantConv1d (fake-quantized weights, the same parameter names).
    """

    def __init__(self, d_model: int, kernel_size: int, dropout: float, norm: str = "batch"):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"conv kernel_size must be odd, got {kernel_size}")
        self.norm = nn.LayerNorm(d_model)
        self.pointwise1 = nn.Linear(d_model, 2 * d_model)
        self.glu = nn.GLU(dim=-1)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel_size, padding=kernel_size // 2, groups=d_model)
        self.conv_norm: nn.Module
        if norm == "batch":
            self.conv_norm = nn.BatchNorm1d(d_model)
        elif norm == "layer":
            self.conv_norm = ChannelLayerNorm(d_model)
        else:
            raise ValueError(f"conv norm must be 'batch' or 'layer', got {norm!r}")
        self.act = nn.SiLU()
        self.pointwise2 = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = self.glu(self.pointwise1(self.norm(x)))
        x = x.masked_fill(~valid[..., None], 0.0).transpose(1, 2)  # [B, d, T]
        x = self.act(self.conv_norm(self.depthwise(x))).transpose(1, 2)
        return self.dropout(self.pointwise2(x))


class ConformerBlock(nn.Module):
    """x + FF/2, + attention, + convolution, + FF/2, then a final LayerNorm."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        kernel_size: int,
        dropout: float,
        attn_dropout: float,
        rel_pos: bool,
        conv_norm: str,
    ):
        super().__init__()
        self.ff1 = FeedForward(d_model, d_ff, dropout)
        self.attn = SelfAttention(d_model, n_heads, dropout, attn_dropout, rel_pos)
        self.conv = ConvModule(d_model, kernel_size, dropout, conv_norm)
        self.ff2 = FeedForward(d_model, d_ff, dropout)
        self.norm_out = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ff1(x)
        x = x + self.attn(x, valid)
        x = x + self.conv(x, valid)
        x = x + 0.5 * self.ff2(x)
        return self.norm_out(x)
