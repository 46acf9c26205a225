"""The weight error model: what programmed cells do to each integer weight, and that it predicts a chip layer."""

import pytest
import torch
from torch import nn

import memsim
from memsim.error_model import weight_error_model


def test_an_ideal_chip_keeps_every_weight():
    model = weight_error_model(memsim.CrossbarConfig(device="ideal", weight_bits=3), samples=8)
    assert model.levels == [-3, -2, -1, 0, 1, 2, 3]
    for q, means, spreads, noise in zip(model.levels, model.mean, model.spread, model.read_noise, strict=True):
        assert means == pytest.approx([q] * len(model.fractions), abs=1e-5)
        assert max(spreads) == pytest.approx(0, abs=1e-6) and max(noise) == 0


def test_the_model_predicts_a_chip_layers_gain_and_residual():
    """A 512 -> 64 layer of 3-bit integer weights read at inputs of +-0.5 of full scale, without converters or read
    noise: its least-squares gain and residual (memsim.layer_errors) against the digital product are what the
    table's mean and spread at u = +-0.5 predict."""
    config = memsim.CrossbarConfig(weight_bits=3, dac_bits=None, adc_precision_bits=None, adc_range_bits=None)
    table = weight_error_model(config, samples=4096, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    digital = nn.Linear(512, 64, bias=False)
    digital.weight.data = torch.randint(-3, 4, (64, 512)).float()
    digital.weight.data[0, 0] = 3.0  # max |W| = 3: the weights map to themselves (scale 1)
    chip = nn.Sequential(memsim.MemristorLinear.from_linear(digital, config, torch.Generator().manual_seed(2)))
    chip[0].input_range.fill_(1.0)
    x = 0.5 * torch.randint(0, 2, (256, 512)).float().mul(2).sub(1)
    (row, _) = memsim.layer_errors(chip, nn.Sequential(digital), lambda m: m(x))
    columns = [table.fractions.index(-0.5), table.fractions.index(0.5)]
    q = torch.tensor(table.levels, dtype=torch.float64)
    share = torch.bincount(digital.weight.long().flatten() + 3, minlength=7).double() / digital.weight.numel()
    mean = torch.tensor(table.mean, dtype=torch.float64)[:, columns]  # [levels, 2 signs]
    spread = torch.tensor(table.spread, dtype=torch.float64)[:, columns]
    gain = float((share * q * mean.mean(1)).sum() / (share * q.square()).sum())
    residual = ((share[:, None] * ((mean - gain * q[:, None]).square() + spread.square())).sum() / 2) ** 0.5
    residual = float(residual / (share * q.square()).sum() ** 0.5)
    assert row["gain"] == pytest.approx(gain, rel=0.01)
    assert row["residual"] == pytest.approx(residual, rel=0.05)


def test_samples_follow_each_levels_mean_and_deviation():
    table = weight_error_model(memsim.CrossbarConfig(weight_bits=3, read_noise="paper"), samples=512)
    mean, deviation = table.moments()
    q = torch.full((20000,), 2.0)
    drawn = table.sample(q, torch.Generator().manual_seed(0))
    assert float(drawn.mean()) == pytest.approx(float(mean[5]), abs=4 * float(deviation[5]) / 20000**0.5)
    assert float(drawn.std()) == pytest.approx(float(deviation[5]), rel=0.03)
    assert float(deviation[5]) > max(table.spread[5])  # the paper's read noise adds to the programming spread


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="samples must be >= 2"):
        weight_error_model(memsim.CrossbarConfig(), samples=1)
    with pytest.raises(ValueError, match="fractions must be nonzero input fractions"):
        weight_error_model(memsim.CrossbarConfig(), fractions=(0.0, 0.5))
