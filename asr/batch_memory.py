"""Decoding batches sized from memory: as many padded seconds of audio as a fraction of free memory holds.

A model's activation memory at inference grows with the padded seconds in a batch and, through attention,
with the utterances' length; for a batch of S padded seconds of utterances of L seconds it is about S x m(L),
with m growing in L. Measuring one forward pass of the split's longest utterance gives the worst m: a batch of
fraction x free / m seconds fits whatever its utterances. A chip's read holds its own temporaries (per tile and
plane), which the measurement includes, so a model on crossbars gets smaller batches than its digital self.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from asr.errors import UserError
from memsim.memory import peak_bytes

FRAMES_PER_SECOND = 100  # the features' 10 ms shift (asr.data.features.fbank)
MEMINFO = Path("/proc/meminfo")


def free_bytes(device: torch.device) -> int:
    """Memory free for new tensors: the GPU's free memory, or the host's MemAvailable (Linux)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        fields = dict(line.split(":", 1) for line in MEMINFO.read_text().splitlines())
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError) as error:
        raise UserError(
            f"decode.memory_fraction: cannot read the free memory from {MEMINFO} ({error}); "
            "set decode.batch_seconds instead"
        ) from None


def one_utterance(seconds: float, num_mel_bins: int, device: torch.device) -> Callable[[nn.Module], None]:
    """A run(model) that passes one utterance of `seconds` of zero features through a model (in eval mode and
    inference mode; its training mode restored): what a model holds or reads per second of audio is measured
    on it."""
    frames = max(1, math.ceil(seconds * FRAMES_PER_SECOND))
    features = torch.zeros(1, frames, num_mel_bins, device=device)
    lengths = torch.tensor([frames], device=device)

    def run(model: nn.Module) -> None:
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            model(features, lengths)
        model.train(was_training)

    return run


def bytes_per_second(model: nn.Module, seconds: float, num_mel_bins: int, device: torch.device) -> float:
    """Peak activation bytes per second of audio of one forward pass over an utterance of `seconds`."""
    run = one_utterance(seconds, num_mel_bins, device)
    return peak_bytes(lambda: run(model)) / seconds


def batch_seconds(
    model: nn.Module, longest_seconds: float, num_mel_bins: int, device: torch.device, fraction: float
) -> tuple[float, dict]:
    """The padded seconds per batch that fit in `fraction` of the free memory (at least the longest
    utterance, which must fit alone), and what they came from."""
    per_second = bytes_per_second(model, longest_seconds, num_mel_bins, device)
    free = free_bytes(device)
    chosen = max(longest_seconds, fraction * free / per_second)
    return chosen, {"batch_seconds": round(chosen, 1), "bytes_per_second": round(per_second), "free_bytes": free}
