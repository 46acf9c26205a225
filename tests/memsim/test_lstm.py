"""LSTMs on crossbars: LinearLSTM computes nn.LSTM, and an ideal chip reproduces it with fake-quantized gates."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import memsim
import memsim.lstm
from memsim.crossbar import integer_weights

IDEAL = memsim.CrossbarConfig(
    device="ideal", dac_bits=None, adc_precision_bits=None, adc_range_bits=None, weight_bits=5, tile_size=8
)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_linear_lstm_computes_what_nn_lstm_computes_with_padded_and_packed_batches(bidirectional):
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 7, num_layers=2, bidirectional=bidirectional, batch_first=True)
    linear = memsim.LinearLSTM.from_lstm(lstm)
    x, lengths = torch.randn(3, 6, 5), torch.tensor([6, 4, 2])
    expected, (h, c) = lstm(x)
    got, (h1, c1) = linear(x)
    for a, b in ((got, expected), (h1, h), (c1, c)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, (h, c) = lstm(packed)
    expected = pad_packed_sequence(out, batch_first=True)[0]
    got, (h1, c1) = linear(x, lengths=lengths)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)  # padded steps output 0, as nn.LSTM's
    torch.testing.assert_close((h1, c1), (h, c), rtol=1e-5, atol=1e-6)
    out, (h2, _) = linear(packed)
    torch.testing.assert_close(pad_packed_sequence(out, batch_first=True)[0], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h2, h, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("bidirectional", "inputs", "calibrated"),
    [(False, 6, False), (True, 6, False), (True, 6, True), (True, 8, True)],
    ids=["unidirectional", "bidirectional", "directions paired", "directions paired, inputs read ahead"],
)
def test_an_ideal_chip_reproduces_the_lstm_with_fake_quantized_gates(monkeypatch, bidirectional, inputs, calibrated):
    """Calibrated (a fixed DAC range), the two directions' step reads are one stacked read: of [x_t; h_(t-1)], or
    of h_(t-1) alone when the 8 inputs fill a tile of their own and are read for all steps ahead."""
    torch.manual_seed(1)
    lstm = nn.LSTM(inputs, 10, num_layers=2, bidirectional=bidirectional)
    chip = memsim.convert(nn.Sequential(lstm), IDEAL, kinds=["lstm"])[0]
    x, lengths = torch.randn(7, 4, inputs), torch.tensor([7, 5, 3, 1])
    if calibrated:
        memsim.calibrate(chip, [(x,)])
    paired_reads = []
    read = memsim.lstm._PairedRead.__call__
    monkeypatch.setattr(
        memsim.lstm._PairedRead, "__call__", lambda self, v: paired_reads.append(v.shape) or read(self, v)
    )
    assert isinstance(chip, memsim.MemristorLSTM) and len(memsim.summary(nn.Sequential(chip))) == 1 + 2 * (
        1 + bidirectional
    )
    reference = memsim.LinearLSTM.from_lstm(lstm)
    for directions in reference.cells:
        for cell in directions:  # the gates' [W_ih | W_hh] quantized per tensor, as the chip stores them
            q, scale = integer_weights(cell.weight, IDEAL.max_level)
            cell.weight.data = q * scale
    with torch.no_grad():
        expected, (h, c) = reference(x, lengths=lengths)
        got, (h1, c1) = chip(x, lengths=lengths)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close((h1, c1), (h, c), rtol=1e-4, atol=1e-5)
    stepped_rows = 10 if inputs == IDEAL.tile_size else inputs + 10  # layer 1; layer 2's inputs are 20 wide
    expected_reads = [torch.Size([2, 4, stepped_rows])] * 7 + [torch.Size([2, 4, 20 + 10])] * 7 if calibrated else []
    assert paired_reads == expected_reads


def test_paired_directions_read_as_each_direction_alone():
    """A physical chip without read noise, with an ADC and per-column calibration: the stacked read of both
    directions (each its own DAC range, scale and column corrections) gives what one read per direction gives."""
    torch.manual_seed(3)
    config = memsim.CrossbarConfig(
        tile_size=8, read_noise="none", adc_precision_bits=5, adc_range_bits=7, calibration="per_column"
    )
    chip = memsim.MemristorLSTM.from_lstm(nn.LSTM(8, 6, bidirectional=True), config, torch.Generator().manual_seed(0))
    x, lengths = torch.randn(6, 3, 8), torch.tensor([6, 4, 2])
    memsim.calibrate(chip, [(x,)])
    reverse = chip.cells[0][1]
    reverse.input_range.mul_(2)  # the directions' DAC ranges differ
    assert not torch.equal(chip.cells[0][0].column_gain, reverse.column_gain)
    with torch.no_grad():
        paired = chip(x, lengths=lengths)
        assert memsim.lstm._reads_paired(chip.gates()[0])
    with torch.no_grad():
        chip.cells[0][0].register_forward_hook(lambda *args: None)  # a hook wants whole reads: one per direction
        assert not memsim.lstm._reads_paired(chip.gates()[0])
        alone = chip(x, lengths=lengths)
    torch.testing.assert_close(paired, alone, rtol=1e-5, atol=1e-6)


def test_every_step_reads_the_crossbar_once_per_direction():
    chip = memsim.MemristorLSTM.from_lstm(nn.LSTM(3, 4, bidirectional=True), memsim.CrossbarConfig(tile_size=8))
    reads = []
    for directions in chip.cells:
        for cell in directions:
            cell.register_forward_hook(lambda module, inputs, output: reads.append(inputs[0].shape))
    chip(torch.randn(5, 2, 3))
    assert reads == [torch.Size([2, 3 + 4])] * 10  # [x_t; h_(t-1)], 5 steps x 2 directions


def test_projections_are_refused():
    with pytest.raises(ValueError, match="proj_size=2"):
        memsim.LinearLSTM.from_lstm(nn.LSTM(3, 4, proj_size=2))


def test_input_rows_on_tiles_of_their_own_are_read_for_all_steps_at_once_with_the_same_outputs(monkeypatch):
    """8 inputs fill one 8-row tile: its read of every x_t happens before the recurrence, the recurrent rows'
    tile reads step by step; without noise the outputs equal the step-by-step read of [x_t; h_(t-1)]."""
    torch.manual_seed(2)
    config = memsim.CrossbarConfig(tile_size=8, read_noise="none", adc_precision_bits=6, adc_range_bits=8)
    chip = memsim.MemristorLSTM.from_lstm(nn.LSTM(8, 4, num_layers=2), config, torch.Generator().manual_seed(0))
    x, lengths = torch.randn(5, 3, 8), torch.tensor([5, 4, 2])
    memsim.calibrate(chip, [(x,)])  # a fixed DAC range: a part's voltages must not depend on the other parts
    errors = memsim.layer_errors(chip, memsim.LinearLSTM.from_lstm(nn.LSTM(8, 4, num_layers=2)), lambda m: m(x))
    assert [row["layer"] for row in errors] == ["cells.0.0", "cells.1.0", "mean"]  # forward hooks see whole reads
    reads = []
    original = memsim.MemristorLinear.read
    monkeypatch.setattr(
        memsim.MemristorLinear,
        "read",
        lambda self, v, first_tile=0: reads.append((v.shape, first_tile)) or original(self, v, first_tile),
    )
    with torch.no_grad():
        ahead, (h, c) = chip(x, lengths=lengths)
        layer_1 = reads[:6]
        assert layer_1 == [(torch.Size([15, 8]), 0)] + [(torch.Size([3, 4]), 1)] * 5  # then layer 2: 4 + 4 rows
        monkeypatch.setattr(memsim.lstm, "_reads_inputs_ahead", lambda cell, inputs: False)
        stepwise, (h1, c1) = chip(x, lengths=lengths)
    torch.testing.assert_close(ahead, stepwise, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close((h, c), (h1, c1), rtol=1e-5, atol=1e-6)


def test_calibration_sees_every_batch_even_once_the_range_is_set():
    """After its first batch a layer has a range; while calibrating it still reads whole (no reading ahead, no
    paired directions), so every later batch's inputs reach its range."""
    torch.manual_seed(5)
    chip = memsim.MemristorLSTM.from_lstm(nn.LSTM(8, 4, bidirectional=True), memsim.CrossbarConfig(tile_size=8))
    small, large = torch.randn(5, 2, 8), 10 * torch.randn(5, 2, 8)
    memsim.calibrate(chip, [(small,), (large,)])
    for cell in chip.cells[0]:
        assert float(cell.input_range) >= float(large.abs().max())
