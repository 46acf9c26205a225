"""Bit-serial inputs: the same product as one amplitude read on an ideal chip, for every kind of layer and read
path, and on Synaptogen cells no error from the I-V's non-linearity."""

import dataclasses

import pytest
import torch
from torch import nn

import memsim

IDEAL = memsim.CrossbarConfig(device="ideal", read_noise="none", adc_precision_bits=None, adc_range_bits=None)


def relative_residual(y: torch.Tensor, reference: torch.Tensor) -> float:
    """The part of y that a gain on the reference does not explain, relative to the reference's size."""
    gain = (y * reference).sum() / reference.square().sum()
    return float((y - gain * reference).norm() / reference.norm())


@pytest.mark.parametrize("dac_grid", ["symmetric", "paper"])
@pytest.mark.parametrize(
    "module, kinds, x",
    [
        (nn.Linear(300, 20), ["linear"], torch.randn(16, 300)),
        (nn.Conv1d(6, 6, 3, groups=6, padding=1), ["conv"], torch.randn(2, 6, 9)),
        (nn.Conv1d(6, 5, 3), ["conv"], torch.randn(2, 6, 9)),
        (nn.LSTM(8, 6, bidirectional=True), ["lstm"], torch.randn(5, 2, 8)),
    ],
    ids=["linear", "depthwise conv", "dense conv", "bidirectional LSTM"],
)
def test_bit_serial_inputs_compute_what_one_amplitude_read_does_on_an_ideal_chip(module, kinds, x, dac_grid):
    torch.manual_seed(0)
    config = dataclasses.replace(IDEAL, tile_size=8, dac_grid=dac_grid)
    chips = [
        memsim.convert(nn.Sequential(module), dataclasses.replace(config, input_scheme=scheme), kinds=kinds)
        for scheme in ("amplitude", "bit_serial")
    ]
    if kinds == ["lstm"]:  # a fixed DAC range: the paired and read-ahead paths of the LSTM
        for chip in chips:
            memsim.calibrate(chip, [(x,)])
    with torch.no_grad():
        amplitude, serial = (chip(x) for chip in chips)
    if kinds == ["lstm"]:
        amplitude, serial = amplitude[0], serial[0]
    torch.testing.assert_close(serial, amplitude, rtol=1e-5, atol=1e-5)


def test_bit_serial_inputs_remove_the_error_of_the_iv_non_linearity():
    """With every non-ideality but the I-V's curvature and asymmetry removed, amplitude inputs read with a
    residual of a few percent; bit-serial pulses (0 V or v_read only) read the product exactly."""
    torch.manual_seed(0)
    linear = nn.Linear(300, 40)
    x = torch.randn(256, 300)
    with torch.no_grad():
        reference = memsim.convert(nn.Sequential(linear), IDEAL)(x) - linear.bias
        residuals = {}
        for scheme in ("amplitude", "bit_serial"):
            config = memsim.CrossbarConfig(input_scheme=scheme).only("iv_nonlinearity")
            chip = memsim.convert(nn.Sequential(linear), dataclasses.replace(config, dac_bits=8, input_scheme=scheme))
            residuals[scheme] = relative_residual(chip(x) - linear.bias, reference)
    assert residuals["amplitude"] > 0.01
    assert residuals["bit_serial"] < 1e-4


def test_per_column_calibration_fits_bit_serial_cells_at_the_voltage_their_pulses_use():
    """The column fit reads a bit-serial chip as its pulses do (rows at 0 V or v_read): with the I-V alone, it
    leaves the exact product exact, where a fit at the amplitudes' quarter of v_read would add a gain error."""
    torch.manual_seed(0)
    linear = nn.Linear(128, 32)
    x = torch.randn(256, 128)
    config = memsim.CrossbarConfig(calibration="per_column", input_scheme="bit_serial").only("iv_nonlinearity")
    config = dataclasses.replace(config, dac_bits=8, input_scheme="bit_serial")
    with torch.no_grad():
        reference = memsim.convert(nn.Sequential(linear), IDEAL)(x) - linear.bias
        y = memsim.convert(nn.Sequential(linear), config)(x) - linear.bias
    gain = float((y * reference).sum() / reference.square().sum())
    assert gain == pytest.approx(1.0, abs=1e-3) and relative_residual(y, reference) < 1e-3


@pytest.mark.parametrize("scheme", ["amplitude", "bit_serial"])
def test_the_mean_path_holds_the_integer_weights_on_an_ideal_chip_for_either_scheme(scheme):
    """The gradient's effective weights are in weight levels whatever voltage a scheme reads at."""
    torch.manual_seed(0)
    linear = nn.Linear(40, 12)
    layer = memsim.MemristorLinear.from_linear(linear, dataclasses.replace(IDEAL, input_scheme=scheme))
    q, _ = memsim.crossbar.integer_weights(linear.weight, IDEAL.max_level)
    torch.testing.assert_close(layer.effective_weight(), q)


def test_a_bit_serial_chip_needs_a_dac_and_removing_the_dac_sends_amplitudes():
    with pytest.raises(ValueError, match="dac_bits must be set"):
        memsim.CrossbarConfig(input_scheme="bit_serial", dac_bits=None)
    with pytest.raises(ValueError, match="input_scheme must be one of"):
        memsim.CrossbarConfig(input_scheme="pulse_width")
    assert memsim.CrossbarConfig(input_scheme="bit_serial").only("adc").input_scheme == "amplitude"
    with pytest.raises(ValueError, match="input_scheme='bit_serial' is not modelled"):
        memsim.weight_error_model(memsim.CrossbarConfig(input_scheme="bit_serial"), samples=2)
