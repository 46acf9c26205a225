"""The sensitivity table's readings: each layer alone at each setting, the chip given back as it was."""

import copy

import pytest
import torch

import memsim
from asr.model import ConformerCTC, ModelConfig
from asr.quant import QuantConfig, quantize, quantized_layers
from asr.sensitivity import LayerSetting, readings, spread_batches
from asr.train import evaluate

# ideal cells, an (8, 10) ADC: a layer programmed again at its own setting is the very same layer
IDEAL = memsim.CrossbarConfig(weight_bits=3, tile_size=16, device="ideal", read_noise="none", dac_bits=8)


def batches() -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [
        {
            "feats": torch.randn(3, 40, 80, generator=g),
            "feat_lens": torch.tensor([40, 36, 30]),
            "tokens": torch.randint(1, 10, (3, 4), generator=g),
            "token_lens": torch.tensor([4, 3, 2]),
        }
        for _ in range(2)
    ]


def test_readings_hold_each_layer_at_each_setting_and_give_the_chip_back():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=10, frontend="conv2d", d_model=32, n_layers=1, n_heads=2, d_ff=64)
    digital = quantize(ConformerCTC(config), QuantConfig(weight_bits=3))
    digital.train()
    digital(torch.randn(2, 40, 80), torch.tensor([40, 33]))  # observe input ranges
    digital.eval()
    chip = memsim.convert(copy.deepcopy(digital), IDEAL, include=quantized_layers(digital))
    held = dict(chip.named_modules())
    data = batches()

    def loss() -> float:
        return evaluate(chip, data, torch.device("cpu"), bf16=False)

    before = loss()
    candidates = [LayerSetting(3.0, (8, 10)), LayerSetting(4.0, (8, 10)), LayerSetting(3.0, (1, 1))]
    rows = readings(chip, digital, IDEAL, candidates, loss, seed=5)
    layers = quantized_layers(digital)
    assert len(rows) == 3 * len(layers)  # the own setting is among the candidates: read once
    assert all(chip.get_submodule(name) is held[name] for name in layers)  # given back
    assert loss() == before
    for name in layers:
        own, finer, coarse = (row for row in rows if row["layer"] == name)
        assert own["own"] and own["weight_bits"] == 3 and own["adc"] == [8, 10]
        assert own["loss"] == pytest.approx(before, rel=1e-6)  # ideal cells: the same layer again
        assert coarse["sensitivity"] != 0 and coarse["energy_uj"] < own["energy_uj"] < finer["energy_uj"]


def test_a_reading_that_fails_gives_the_chip_back_first():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=10, frontend="conv2d", d_model=32, n_layers=1, n_heads=2, d_ff=64)
    digital = quantize(ConformerCTC(config), QuantConfig(weight_bits=3))
    chip = memsim.convert(copy.deepcopy(digital), IDEAL, include=quantized_layers(digital))
    held = dict(chip.named_modules())
    calls = []

    def loss() -> float:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return evaluate(chip, batches(), torch.device("cpu"), bf16=False)

    with pytest.raises(RuntimeError, match="out of memory"):
        readings(chip, digital, IDEAL, [LayerSetting(3.0, (8, 10)), LayerSetting(3.0, (1, 1))], loss, seed=5)
    assert all(chip.get_submodule(name) is held[name] for name in quantized_layers(digital))


def test_dev_batches_are_taken_from_the_middle_of_equal_stretches():
    assert spread_batches(list(range(10)), seconds=400, batch_seconds=200) == [2, 7]
    assert spread_batches(list(range(3)), seconds=5000, batch_seconds=200) == [0, 1, 2]
    assert spread_batches(list(range(3)), seconds=10, batch_seconds=200) == [1]
