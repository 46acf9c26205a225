"""Resistive wires in the read: exact for ohmic cells (every array's transfer matrix), seen by every read path, by
the gradient's mean path and by per-column calibration; off at 0 ohm."""

import copy
import dataclasses

import pytest
import torch
from torch import nn

import memsim
from memsim import ir_drop

WIRES = {"row_wire_resistance": 2.0, "column_wire_resistance": 1.5}
NO_WIRES = {"row_wire_resistance": 0.0, "column_wire_resistance": 0.0}
# An ideal chip: binary ohmic cells (4.5 kohm LRS), exact converters, no noise: with wires, still a linear map.
IDEAL = memsim.CrossbarConfig(
    device="ideal", dac_bits=None, adc_precision_bits=None, adc_range_bits=None, read_noise="none", tile_size=16
)


def gain(y: torch.Tensor, reference: torch.Tensor) -> float:
    return float((y * reference).sum() / reference.square().sum())


def unwired(chip: nn.Module) -> nn.Module:
    """A copy of a programmed chip whose crossbars read as if their wires were ideal (same cells; every cache made
    from the wires is made again)."""
    chip = copy.deepcopy(chip)
    for module in chip.modules():
        if isinstance(module, memsim.MemristorLinear):
            module.config = dataclasses.replace(module.config, **NO_WIRES)
    return chip


def test_a_wired_layer_reads_what_the_exact_network_solve_gives():
    """Ohmic Synaptogen cells with device and cycle variation: the read equals the sum over tiles and planes of
    every array's solved column currents (ir_drop.solve), the positive arrays' less the negative ones'; the last
    column tile's unprogrammed columns hold HRS cells, the last row tile's padding rows are driven at 0 V."""
    config = dataclasses.replace(
        memsim.CrossbarConfig(weight_bits=3, tile_size=16, **WIRES).only("wires"),
        device_variation=True,
        cycle_variation=True,
    )
    torch.manual_seed(0)
    layer = memsim.MemristorLinear.from_linear(nn.Linear(40, 20), config, torch.Generator().manual_seed(0))
    v = torch.rand(5, 40) - 0.5
    model = layer.read_model
    base, delta = model.conductances(torch.tensor(0.3))  # ohmic: the same at every voltage
    padded = torch.nn.functional.pad(v, (0, 8))
    expected = torch.zeros(5, 20, dtype=torch.float64)
    for tile in range(3):
        rows = slice(16 * tile, 16 * tile + 16)
        for plane in range(config.planes):
            for sign, r in ((1, layer.r[0, rows, plane]), (-1, layer.r[1, rows, plane])):
                g = torch.nn.functional.pad(base + r * delta, (0, 12), value=float(base + model.r_off * delta))
                solved = ir_drop.solve(g.reshape(16, 2, 16).transpose(0, 1), padded[:, rows], config.wire_resistance)
                expected += sign * 2**plane * solved.column_currents.transpose(0, 1).reshape(5, 32)[:, :20]
    got = layer.read(v)
    torch.testing.assert_close(got.double(), expected / model.unit_current, rtol=1e-5, atol=1e-6)
    assert gain(got, unwired(layer).read(v)) < 0.99  # the wires matter even at this size (measured 0.974)


CHIPS = {  # (the digital module's factory, kinds, input shape): made in the test, under its seed
    "linear": (lambda: nn.Sequential(nn.Linear(40, 12)), ["linear"], (6, 40)),
    "linear, per-column calibration": (lambda: nn.Sequential(nn.Linear(40, 12)), ["linear"], (6, 40)),
    "depthwise conv": (lambda: nn.Sequential(nn.Conv1d(20, 20, 7, padding=3, groups=20)), ["conv"], (3, 20, 30)),
    "dense 2d conv": (lambda: nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, padding=1)), ["conv"], (2, 3, 11, 9)),
    "bidirectional LSTM": (lambda: nn.Sequential(nn.LSTM(8, 6, bidirectional=True)), ["lstm"], (5, 2, 8)),
}


@pytest.mark.parametrize("name", CHIPS)
def test_every_read_path_sees_the_wires_as_its_mean_path_does(name):
    """On an ideal chip with wires, reads are exactly linear: every kind of layer computes what the digital layer
    computes with each crossbar's effective weights (through the wires, and divided by the column gains of per-column
    calibration) in place of its integer weights, and the wires lower its output against the same cells read through
    ideal wires."""
    make, kinds, shape = CHIPS[name]
    torch.manual_seed(0)
    module = make()
    calibration = "per_column" if "per-column" in name else "nominal"
    config = dataclasses.replace(IDEAL, calibration=calibration, **WIRES)
    chip = memsim.convert(copy.deepcopy(module), config, torch.Generator().manual_seed(0), kinds=kinds)
    x = torch.randn(shape)
    if kinds == ["lstm"]:  # a fixed DAC range: the paired and read-ahead paths of the LSTM
        memsim.calibrate(chip, [(x,)])
    reference = copy.deepcopy(module)
    crossbars = [m for m in chip.modules() if isinstance(m, memsim.MemristorLinear)]
    gates = [m for m in reference.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    if kinds == ["lstm"]:
        reference = nn.Sequential(memsim.LinearLSTM.from_lstm(module[0]))
        gates = [cell for directions in reference[0].gates() for cell in directions]
    assert len(crossbars) == len(gates) > 0
    with torch.no_grad():
        for crossbar, gate in zip(crossbars, gates, strict=True):
            weight = crossbar.effective_weight() * crossbar.weight_scale[:, None]
            if isinstance(gate, (nn.Conv1d, nn.Conv2d)) and gate.groups > 1:  # block-diagonal on the chip
                per_group = gate.weight[0].numel()
                blocks = weight.unflatten(0, (gate.groups, -1)).unflatten(-1, (gate.groups, per_group))
                weight = torch.stack([blocks[k, :, k] for k in range(gate.groups)])
                weight = weight.flatten(0, 1)
            gate.weight.data = weight.reshape(gate.weight.shape)
        got, expected, ideal_wires = chip(x), reference(x), unwired(chip)(x)
    if kinds == ["lstm"]:
        got, expected, ideal_wires = got[0], expected[0], ideal_wires[0]
    if calibration == "per_column":  # its fitted offsets shift each column alike for every input: no weight's
        got, expected = got - got.mean(0), expected - expected.mean(0)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # the wires took part of the output: 0.3 % (the LSTM's 14-row gate matrices) to 1.8 % (the linear layer)
    assert gain(got - ideal_wires, ideal_wires) < -0.002


def test_per_column_calibration_recovers_the_gain_the_wires_take():
    """64-row tiles at 2.5 ohm per segment on physical cells: nominal calibration reads about a quarter low;
    per-column calibration, which reads its test inputs through the wires, brings the gain back near 1."""
    torch.manual_seed(0)
    linear = nn.Linear(128, 64, bias=False)
    x = torch.randn(64, 128)
    digital = memsim.convert(nn.Sequential(linear), memsim.CrossbarConfig(weight_bits=3).only(None))(x)
    gains = {}
    for calibration in ("nominal", "per_column"):
        config = memsim.CrossbarConfig(
            weight_bits=3,
            tile_size=64,
            read_noise="none",
            calibration=calibration,
            row_wire_resistance=2.5,
            column_wire_resistance=2.5,
        )
        with torch.no_grad():
            gains[calibration] = gain(
                memsim.convert(nn.Sequential(linear), config, torch.Generator().manual_seed(0))(x), digital
            )
    assert gains["nominal"] < 0.85 and abs(1 - gains["per_column"]) < 0.05


def test_a_wired_chip_computes_its_transfer_matrices_once(monkeypatch):
    """Programming computes them (per-column calibration reads through them); fitting the column gains, reads and
    the mean path reuse them."""
    calls = []
    transfer_matrix = ir_drop.transfer_matrix
    monkeypatch.setattr(ir_drop, "transfer_matrix", lambda *args: calls.append(1) or transfer_matrix(*args))
    config = memsim.CrossbarConfig(weight_bits=3, tile_size=16, calibration="per_column", **WIRES)
    torch.manual_seed(0)
    layer = memsim.MemristorLinear.from_linear(nn.Linear(40, 12), config)
    with torch.no_grad():
        layer(torch.randn(3, 40))
    layer.effective_weight()
    assert len(calls) == 1


def test_wires_at_zero_ohm_read_as_before_and_bad_values_are_refused_by_name():
    config = memsim.CrossbarConfig(tile_size=16, read_noise="none")
    assert not config.wired and config.wire_resistance == (0.0, 0.0)
    layer = memsim.MemristorLinear.from_linear(nn.Linear(40, 12), config, torch.Generator().manual_seed(0))
    assert torch.equal(layer.cell_pairs().difference, memsim.crossbar.CellPairs.of(layer.r).difference)
    with pytest.raises(ValueError, match="column_wire_resistance"):
        memsim.CrossbarConfig(row_wire_resistance=1.0)
    with pytest.raises(ValueError, match="row_wire_resistance"):
        memsim.CrossbarConfig(row_wire_resistance=-1.0, column_wire_resistance=1.0)
    with pytest.raises(ValueError, match="wire_resistance"):
        ir_drop.transfer_matrix(torch.ones(2, 2), (1.0, 0.0))


def test_the_wire_weight_model_programs_the_layers_own_weights_every_few_training_steps():
    """Training against the wires: the effective weights of the nominal chip holding q (deterministic: no device or
    cycle variation, no noise); between programmings, weights that changed move at the mean gain. A step is a new
    weight version: calls within one step (an LSTM's per frame) count once. The state survives a checkpoint."""
    config = memsim.CrossbarConfig(weight_bits=3, tile_size=16, calibration="per_column", **WIRES)
    generator = torch.Generator().manual_seed(0)
    q = torch.randint(-3, 4, (12, 40), generator=generator).float()
    model = memsim.WireWeightModel(config, (12, 40), refresh=2)
    source = nn.Linear(40, 12, bias=False)
    source.weight.data = q.clone()
    nominal = memsim.MemristorLinear.from_linear(
        source, memsim.WireWeightModel.nominal(config), torch.Generator().manual_seed(0)
    )  # per-tensor scale max|q| / 3 = 1: the same integer weights
    torch.manual_seed(1)
    first = model(q, version=0)
    torch.testing.assert_close(first, nominal.effective_weight())
    torch.manual_seed(2)
    assert torch.equal(memsim.WireWeightModel(config, (12, 40))(q, 0), first)  # no chance involved
    mean_gain = gain(first, q)
    residual = float((first - mean_gain * q).norm() / (mean_gain * q).norm())
    assert residual > 0.003  # what per-column calibration leaves of the wires differs by weight (measured 0.0059)
    changed = q.clone()
    changed[0, 0] = -changed[0, 0] if changed[0, 0] != 0 else 3
    assert torch.equal(model(q, version=0), first) and int(model.steps) == 1  # the same step counts once
    between = model(changed, version=1)
    torch.testing.assert_close(between, first + mean_gain * (changed - q), rtol=1e-5, atol=1e-6)
    saved = copy.deepcopy(model.state_dict())
    refreshed = model(changed, version=2)  # the third step programs again
    assert not torch.equal(refreshed, between)
    torch.testing.assert_close(refreshed, memsim.WireWeightModel(config, (12, 40))(changed, 0))
    resumed = memsim.WireWeightModel(config, (12, 40), refresh=2)
    resumed.load_state_dict(saved)
    assert torch.equal(resumed(changed, version=7), refreshed)  # resumed after step 2: programs at step 3 too
    with pytest.raises(ValueError, match="resistance"):
        memsim.WireWeightModel(memsim.CrossbarConfig(), (12, 40))
