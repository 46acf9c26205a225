"""The energy estimate: a hand-checkable chip prices exactly by its formula, and metering leaves reads unchanged."""

import pytest
import torch
from torch import nn

import memsim
from memsim.crossbar import dac
from memsim.energy import CORRECTION_GAIN_BITS, ISAAC_ADC_8BIT, ISAAC_DAC_1BIT, sram_energy_per_bit

G_ON = 1 / 4500.0  # the ideal device's LRS conductance (memsim.crossbar.ReadModel)
ROUND_COSTS = memsim.EnergyCosts(
    adc_joules_per_step=1e-15,
    dac_joules_per_bit=2e-15,
    read_seconds=1e-8,
    add_joules_per_bit=3e-15,
    multiply_joules_per_bit2=5e-15,
    sram_joules_per_bit=7e-15,
)


def hand_checkable_chip(**changes) -> tuple[nn.Module, torch.Tensor]:
    """Weights [3, -1] at 3 bits: 3 = binary 11 stores a 1 on both planes of the positive array's row 0, -1 a 1 on
    plane 0 of the negative array's row 1: three cells conduct G_ON, the other five nothing. The input [1, 0.5]:
    the layer's range is the batch's max, so its DAC codes are 127 and 64 (rows at 0.6 V and 0.6 x 64/127 V)."""
    linear = nn.Linear(2, 1, bias=False)
    linear.weight.data = torch.tensor([[3.0, -1.0]])
    config = memsim.CrossbarConfig(
        device="ideal", read_noise="none", dac_bits=8, adc_precision_bits=4, adc_range_bits=6, **changes
    )
    return memsim.convert(nn.Sequential(linear), config), torch.tensor([[1.0, 0.5]])


def energy_of(chip: nn.Module, x: torch.Tensor, costs: memsim.EnergyCosts = ROUND_COSTS) -> dict:
    (row,) = [r for r in memsim.measure_energy(chip, lambda m: m(x), costs) if r["layer"] == "0"]
    return row


def test_a_hand_checkable_chip_costs_what_the_formula_says():
    chip, x = hand_checkable_chip()
    row = energy_of(chip, x)
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
    assert row["correction_pj"] == 0  # nominal calibration: no digital correction
    assert row["chip_pj"] == pytest.approx(row["crossbar_pj"] + row["dac_pj"] + row["adc_pj"] + row["accumulate_pj"])
    # Digital: 2 MACs of 3 x 8 bits, added at 3 + 8 + 1 bits, each weight's 3 bits read from SRAM, or from DRAM.
    assert row["digital_pj"] == pytest.approx(2 * (3 * 8 * 5e-3 + 12 * 3e-3 + 3 * 7e-3))
    dram = ROUND_COSTS.dram_joules_per_bit / 1e-12
    assert row["digital_dram_pj"] == pytest.approx(2 * (3 * 8 * 5e-3 + 12 * 3e-3 + 3 * dram))


def test_a_bit_serial_chip_reads_and_costs_what_its_pulses_do():
    amplitude_chip, x = hand_checkable_chip()
    chip, _ = hand_checkable_chip(input_scheme="bit_serial")
    # Each pulse reads an integer, which the ADC (step 1/16) keeps exactly: 3 - 64/127. One amplitude read is
    # rounded to the ADC's step: 2.5.
    assert float(chip(x)) == pytest.approx(3 - 64 / 127) and float(amplitude_chip(x)) == 2.5
    row = energy_of(chip, x)
    # Codes 127 = 0b1111111 and 64 = 0b1000000, both positive: 2 phases x 7 bits = 14 pulses; row 0 (two conducting
    # cells) is at 0.6 V in the 7 pulses of the positive phase, row 1 (one) in the pulse of bit 6.
    assert row["reads_per_vector"] == 14
    assert row["read_watts"] == pytest.approx(G_ON * 0.36 * (7 * 2 + 1) / 14, rel=1e-6)
    assert row["crossbar_pj"] == pytest.approx(14 * 1e-8 * row["read_watts"] / 1e-12, rel=1e-6)
    # every pulse: 8 one-bit DAC conversions and 2 ADC conversions of 10 bits, accumulated at 10 + 1 bits plus 7
    # bits of shift and 1 of the phases' sign
    assert row["dac_pj"] == pytest.approx(14 * 8 * 2e-3)
    assert row["adc_pj"] == pytest.approx(14 * 2 * 2**10 * 1e-3)
    assert row["accumulate_pj"] == pytest.approx(14 * 2 * 19 * 3e-3)
    assert row["digital_pj"] == energy_of(amplitude_chip, x)["digital_pj"]


def test_the_column_correction_the_bounds_and_an_idealized_adc_are_priced():
    chip, x = hand_checkable_chip(calibration="per_column")
    row = energy_of(chip, x)
    # 2 ADC outputs, each x a 16-bit inverse gain (10 x 16 bits) and minus an offset (10 bits)
    assert row["correction_pj"] == pytest.approx(2 * (10 * CORRECTION_GAIN_BITS * 5e-3 + 10 * 3e-3))
    assert row["chip_pj"] == pytest.approx(
        sum(row[k] for k in ("crossbar_pj", "dac_pj", "adc_pj", "accumulate_pj", "correction_pj"))
    )
    chip, x = hand_checkable_chip()
    memsim.set_adc(chip, {"0": (8, 10)})
    row = energy_of(chip, x, memsim.EnergyCosts())
    assert row["chip_low_pj"] < row["chip_pj"] <= row["chip_high_pj"]
    assert row["adc_idealized"] and not energy_of(hand_checkable_chip()[0], x, memsim.EnergyCosts())["adc_idealized"]


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
    assert costs.sram_joules_per_bit is None  # sized to the weights: Horowitz's figures by size
    for size, picojoules in ((4 * 1024, 10), (8 * 1024, 10), (32 * 1024, 20), (1024**2, 100)):
        assert sram_energy_per_bit(size) * 64 == pytest.approx(picojoules * 1e-12)
    # between 8 and 32 KB on the log-log line: 16 KB at 10 x sqrt(2) pJ; past 1 MB the last segment extended
    assert sram_energy_per_bit(16 * 1024) * 64 == pytest.approx(10 * 2**0.5 * 1e-12)
    assert sram_energy_per_bit(32 * 1024**2) * 64 == pytest.approx(100 * 5 * 1e-12)
    # Walden's 2x per bit up to 10 bits, thermal noise's 4x per bit beyond: the paper's 18-bit ADC
    assert costs.adc_energy(8) == pytest.approx(ISAAC_ADC_8BIT)
    assert costs.adc_energy(18) == pytest.approx(ISAAC_ADC_8BIT * 4 * 4**8)
    assert costs.dac_energy(8) == pytest.approx(8 * ISAAC_DAC_1BIT)
    assert memsim.EnergyCosts(amplitude_dac="binary_weighted").dac_energy(8) == pytest.approx(128 * ISAAC_DAC_1BIT)
    with pytest.raises(ValueError, match="EnergyCosts.amplitude_dac must be one of"):
        memsim.EnergyCosts(amplitude_dac="r2r")
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
