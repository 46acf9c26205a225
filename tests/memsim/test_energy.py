"""The energy estimate: a hand-checkable chip prices exactly by its formula, and metering leaves reads unchanged."""

import math

import pytest
import torch
from torch import nn

import memsim
from memsim.crossbar import dac
from memsim.energy import ISAAC_ADC_8BIT, ISAAC_DAC_1BIT

G_ON = 1 / 4500.0  # the ideal device's LRS conductance (memsim.crossbar.ReadModel)
ROUND_COSTS = memsim.EnergyCosts(
    adc_joules_per_step=1e-15,
    dac_joules_per_bit=2e-15,
    read_seconds=1e-8,
    add_joules_per_bit=3e-15,
    multiply_joules_per_bit2=5e-15,
    sram_joules_per_bit=7e-15,
)


def test_a_hand_checkable_chip_costs_what_the_formula_says():
    # Weights [3, -1] at 3 bits: 3 = binary 11 stores a 1 on both planes of the positive array's row 0, -1 a 1
    # on plane 0 of the negative array's row 1: three cells conduct G_ON, the other five nothing.
    linear = nn.Linear(2, 1, bias=False)
    linear.weight.data = torch.tensor([[3.0, -1.0]])
    config = memsim.CrossbarConfig(
        device="ideal", read_noise="none", dac_bits=8, adc_precision_bits=4, adc_range_bits=6
    )
    chip = memsim.convert(nn.Sequential(linear), config)
    x = torch.tensor([[1.0, 0.5]])  # the layer's range is the batch's max: rows at 0.6 V and 0.6 x 64/127 V
    (row,) = [r for r in memsim.measure_energy(chip, lambda m: m(x), ROUND_COSTS) if r["layer"] == "0"]
    v0, v1 = 0.6, 0.6 * 64 / 127
    watts = G_ON * (2 * v0**2 + v1**2)
    assert row["read_watts"] == pytest.approx(watts, rel=1e-6)
    assert row["crossbar_pj"] == pytest.approx(1e-8 * watts / 1e-12, rel=1e-6)
    # DAC: 2 rows x 1 column tile x 2 arrays x 2 planes = 8 conversions of 8 bits.
    assert (row["dac_conversions"], row["dac_pj"]) == (8, pytest.approx(8 * 8 * 2e-3))
    # ADC: 1 row tile x 2 planes x 1 column = 2 conversions of 4 + 6 bits; accumulated at 10 + 1 bits.
    assert (row["adc_conversions"], row["adc_bits"]) == (2, 10)
    assert row["adc_pj"] == pytest.approx(2 * 2**10 * 1e-3)
    assert row["accumulate_pj"] == pytest.approx(2 * 11 * 3e-3)
    assert row["chip_pj"] == pytest.approx(row["crossbar_pj"] + row["dac_pj"] + row["adc_pj"] + row["accumulate_pj"])
    # Digital: 2 MACs of 3 x 8 bits, added at 3 + 8 + 1 bits, each weight's 3 bits read from SRAM.
    assert row["digital_pj"] == pytest.approx(2 * (3 * 8 * 5e-3 + 12 * 3e-3 + 3 * 7e-3))


def test_the_total_sums_the_layers_and_an_ideal_converter_has_no_price():
    model = memsim.convert(nn.Sequential(nn.Linear(20, 30), nn.Linear(30, 10)), memsim.CrossbarConfig())
    rows = memsim.measure_energy(model, lambda m: m(torch.randn(5, 20)))
    assert [r["layer"] for r in rows] == ["0", "1", "total"]
    for key in ("crossbar_pj", "chip_pj", "digital_pj", "adc_conversions"):
        assert rows[2][key] == pytest.approx(rows[0][key] + rows[1][key])
    memsim.set_adc(model, {"1": (None, None)})
    rows = memsim.measure_energy(model, lambda m: m(torch.randn(5, 20)))
    assert rows[1]["adc_pj"] is None and rows[1]["chip_pj"] is None and rows[2]["chip_pj"] is None
    assert rows[0]["chip_pj"] is not None and rows[2]["crossbar_pj"] > 0


def test_metering_leaves_the_read_unchanged():
    model = memsim.convert(nn.Sequential(nn.Linear(20, 30)), memsim.CrossbarConfig(), torch.Generator().manual_seed(0))
    x = torch.randn(7, 20)
    model[0].generator = torch.Generator().manual_seed(5)
    plain = model(x)
    model[0].generator = torch.Generator().manual_seed(5)
    outputs = []
    memsim.measure_energy(model, lambda m: outputs.append(m(x)))
    assert torch.equal(outputs[0], plain)
    assert model[0].energy_meter is None


def test_default_costs_come_from_isaac_and_bad_costs_are_named():
    costs = memsim.EnergyCosts()
    assert costs.adc_joules_per_step * 2**8 == pytest.approx(ISAAC_ADC_8BIT) == pytest.approx(1.667e-12, rel=1e-3)
    assert costs.dac_joules_per_bit == ISAAC_DAC_1BIT == pytest.approx(0.39e-12, rel=0.01)
    assert math.isclose(costs.sram_joules_per_bit * 64, 10e-12)
    with pytest.raises(ValueError, match="EnergyCosts.read_seconds must be a number >= 0"):
        memsim.EnergyCosts(read_seconds=-1.0)
    with pytest.raises(ValueError, match=r"did not read crossbar layer\(s\) \['0'\]"):
        memsim.measure_energy(memsim.convert(nn.Sequential(nn.Linear(2, 2)), memsim.CrossbarConfig()), lambda m: None)


def test_a_grouped_convolution_dissipates_only_in_the_tiles_that_exist():
    conv = memsim.MemristorConv1d.from_conv(nn.Conv1d(8, 8, 3, groups=8), memsim.CrossbarConfig(tile_size=4))
    x = torch.randn(2, 8, 5)
    (row, _) = memsim.measure_energy(nn.Sequential(conv), lambda m: m(x), ROUND_COSTS)
    crossbar = conv.crossbar
    patches, _ = conv.patches(x)
    v = dac(patches.reshape(-1, 24), patches.abs().amax(), crossbar.config)  # every cell by itself
    base, delta = crossbar.read_model.conductances(v)  # [vectors, rows]
    g = (
        base[:, None, :, None, None] + crossbar.r[None] * delta[:, None, :, None, None]
    )  # [vectors, 2, rows, planes, out]
    present = crossbar.column_presence().float().repeat_interleave(4, 0)  # [rows, out]
    watts = (v.square()[:, None, :, None, None] * g * present[None, None, :, None, :]).sum() / v.shape[0]
    assert row["read_watts"] == pytest.approx(float(watts), rel=1e-5)
    assert float(present.mean()) == 0.25  # each row reaches 2 of the 8 columns: its channel and a neighbour
    assert row["macs"] == 8 * 3  # the digital baseline multiplies each channel's 3 taps, not the matrix's zeros
