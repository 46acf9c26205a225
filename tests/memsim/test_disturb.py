"""Read disturb (memsim.disturb): reads switch exactly the cells their row voltages reach past a threshold."""

import pytest
import torch
from torch import nn

import memsim
from memsim.crossbar import device_params, nominal_r
from memsim.device import CellArray, partial_reset

SETS_AT, RESETS_AT = -0.45, 0.45  # thresholds a 0.6 V read reaches; -0.9 and 0.9 it does not
EXACT_INPUTS = dict(dac_bits=None, adc_precision_bits=None, adc_range_bits=None, read_noise="none")


def _hand_made_layer(**settings) -> memsim.MemristorLinear:
    """A 4 -> 3 layer on one 4 x 4 tile, 3-bit (two planes), its cells' thresholds set by hand: in every row, the
    positive array's cells of plane 0 alternate between SETs at -0.45 V (not in LRS) and RESETs at +0.45 V (in
    LRS), every other cell out of reach (-0.9 V or +0.9 V)."""
    config = memsim.CrossbarConfig(tile_size=4, read_disturb=True, **{**EXACT_INPUTS, **settings})
    layer = memsim.MemristorLinear.from_linear(nn.Linear(4, 3), config, generator=torch.Generator().manual_seed(0))
    threshold = torch.where(layer.r < 0.5, 0.9, -0.9)  # in LRS (small r) or not
    threshold[0, :, 0, 0::2] = SETS_AT
    threshold[0, :, 0, 1] = RESETS_AT
    r_lrs, r_hrs = nominal_r(device_params(config))
    layer.r[0, :, 0, 0::2] = r_hrs
    layer.r[0, :, 0, 1] = r_lrs
    layer.disturb_threshold.copy_(threshold)
    layer.input_range.fill_(1.0)  # an input of 1 reads at v_read
    return layer


def test_a_read_switches_exactly_the_cells_its_rows_reach_past_their_thresholds():
    layer = _hand_made_layer()
    r, threshold = layer.r.clone(), layer.disturb_threshold.clone()
    x = torch.tensor(
        [[-1.0, 1.0, -0.5, 0.0], [0.2, -0.2, 1.0, 0.0]]
    )  # per row (input): -0.6..0.12 V, -0.12..0.6 V, ...
    with torch.no_grad():
        layer(x)
    lowest, highest = (x * layer.config.v_read).amin(0), (x * layer.config.v_read).amax(0)
    sets = (threshold < 0) & (lowest.view(1, -1, 1, 1) <= threshold)
    resets = (threshold > 0) & (highest.view(1, -1, 1, 1) > threshold)
    assert sets.sum() == 2 and resets.sum() == 2  # row 0 SETs (-0.6 V), rows 1 and 2 RESET (+0.6 V), row 3 not
    switched = sets | resets
    assert torch.equal(layer.r[~switched], r[~switched]) and torch.equal(
        layer.disturb_threshold[~switched], threshold[~switched]
    )
    assert bool((layer.r[sets] < 0.5).all()) and bool((layer.disturb_threshold[sets] > 0).all())  # now in LRS
    assert bool((layer.r[resets] > r[resets]).all()) and bool((layer.disturb_threshold[resets] < 0).all())
    assert int(layer.read_switched_cells) == 4


def test_disturb_accumulates_over_reads_and_a_weaker_read_adds_nothing():
    layer = _hand_made_layer()
    read = lambda x: layer(torch.tensor(x))  # noqa: E731
    with torch.no_grad():
        read([[-0.5, 0.0, 0.0, 0.0]])  # -0.3 V: short of -0.45 V
        assert int(layer.read_switched_cells) == 0
        read([[-1.0, 0.0, 0.0, 0.0]])
        first = int(layer.read_switched_cells)
        read([[0.0, -1.0, 0.0, 0.0]])
        assert int(layer.read_switched_cells) == 2 * first == 4  # row 0's two SETs, then row 1's


def test_bit_serial_reads_drive_rows_at_0_v_or_plus_v_read_and_set_no_cell():
    layer = _hand_made_layer(dac_bits=8, input_scheme="bit_serial")
    before = layer.disturb_threshold.clone()
    with torch.no_grad():
        layer(torch.tensor([[-1.0, -1.0, -1.0, 1.0]]))
    assert torch.equal(layer.disturb_threshold[before == SETS_AT], before[before == SETS_AT])  # no SET
    assert int(layer.read_switched_cells) == 4  # every row's RESET at +0.6 V, the negative inputs' too


def test_a_partial_reset_by_a_read_follows_the_device_models_transition_curve():
    params = device_params(memsim.CrossbarConfig())
    cells = CellArray(2000, params=params, generator=torch.Generator().manual_seed(1))
    cells.apply_voltage(-2.5)
    before, threshold = cells.r, cells.ur
    u = torch.full_like(threshold, 0.95)
    partial = threshold < u
    cells.apply_voltage(u)
    expected = partial_reset(before, threshold, cells.hrs, u, params)
    torch.testing.assert_close(expected[partial], cells.r[partial], rtol=1e-4, atol=1e-5)


def test_the_rows_of_a_convolutions_matrix_see_their_channels_voltages():
    """A convolution's matrix row (channel, tap) sees its channel's voltages: only channel 0 is driven, at -v_read."""
    config = memsim.CrossbarConfig(read_disturb=True, **EXACT_INPUTS)
    conv = memsim.MemristorConv1d.from_conv(nn.Conv1d(3, 4, 5, padding=2), config, torch.Generator().manual_seed(0))
    layer = conv.crossbar
    layer.input_range.fill_(1.0)
    before = torch.where(layer.disturb_threshold < 0, SETS_AT, RESETS_AT)
    layer.disturb_threshold.copy_(before)
    x = torch.zeros(2, 3, 11)
    x[:, 0] = -1.0
    with torch.no_grad():
        conv(x)
    taps = 5  # channel 0's rows: 0..4
    driven = layer.disturb_threshold[:, :taps]
    assert bool((driven[before[:, :taps] == SETS_AT] > 0).all())  # every cell of theirs that could SET did
    assert torch.equal(driven[before[:, :taps] == RESETS_AT], before[:, :taps][before[:, :taps] == RESETS_AT])
    assert torch.equal(layer.disturb_threshold[:, taps:], before[:, taps:])


def test_read_disturb_is_off_by_default_binary_only_and_counted_in_the_summary():
    assert not memsim.CrossbarConfig().read_disturb
    assert not hasattr(
        memsim.MemristorLinear.from_linear(nn.Linear(4, 3), memsim.CrossbarConfig()), "disturb_threshold"
    )
    with pytest.raises(ValueError, match="CrossbarConfig.read_disturb"):
        memsim.CrossbarConfig(read_disturb=True, levels_per_cell=4)
    layer = _hand_made_layer()
    with torch.no_grad():
        layer(torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))
    rows = memsim.summary(nn.Sequential(layer))
    assert rows[0]["read_switched_cells"] == rows[-1]["read_switched_cells"] == 3
    assert memsim.CrossbarConfig(read_disturb=True).only("read_noise").read_disturb is False
