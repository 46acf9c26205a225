"""Decoding batches sized from memory: the measured bytes per second of audio, and the seconds they allow."""

import pytest
import torch
from torch import nn

import memsim
from asr import batch_memory
from asr.errors import UserError


class Wide(nn.Module):
    """Holds a [frames, 1000] float tensor per utterance: 4,000 bytes per frame, 400,000 per second of audio."""

    def forward(self, features, lengths):
        return features.new_zeros(features.shape[0], features.shape[1], 1000), lengths


def test_the_peak_memory_of_the_longest_utterance_sets_the_batch(monkeypatch):
    assert batch_memory.bytes_per_second(Wide(), 3.0, 80, torch.device("cpu")) == 400_000
    monkeypatch.setattr(batch_memory, "free_bytes", lambda device: 10**9)
    seconds, sizing = batch_memory.batch_seconds(Wide(), 3.0, 80, torch.device("cpu"), 0.5)
    assert seconds == pytest.approx(0.5 * 10**9 / 400_000) and sizing["bytes_per_second"] == 400_000
    seconds, _ = batch_memory.batch_seconds(Wide(), 3.0, 80, torch.device("cpu"), 1e-6)
    assert seconds == 3.0  # never below the longest utterance: it must fit alone


class Frames(nn.Module):
    """A linear layer over each feature frame, called as a ConformerCTC."""

    def __init__(self, features: int):
        super().__init__()
        self.linear = nn.Linear(features, features)

    def forward(self, features, lengths):
        return self.linear(features), lengths


def test_a_layer_on_crossbars_needs_more_memory_per_second_than_its_digital_self():
    torch.manual_seed(0)
    digital = Frames(256)
    chip = memsim.convert(Frames(256), memsim.CrossbarConfig(weight_bits=3), torch.Generator().manual_seed(0))
    per_second = [batch_memory.bytes_per_second(m, 2.0, 256, torch.device("cpu")) for m in (digital, chip)]
    assert per_second[0] == 200 * 256 * 4 / 2.0  # its output only
    assert per_second[1] > 2 * per_second[0]  # per tile: mean, variance and noise of every plane's columns


def test_free_memory_that_cannot_be_read_is_one_clear_message(monkeypatch, tmp_path):
    assert batch_memory.free_bytes(torch.device("cpu")) > 0
    monkeypatch.setattr(batch_memory, "MEMINFO", tmp_path / "meminfo")
    with pytest.raises(UserError, match="decode.memory_fraction: cannot read .*meminfo.*set decode.batch_seconds"):
        batch_memory.free_bytes(torch.device("cpu"))
