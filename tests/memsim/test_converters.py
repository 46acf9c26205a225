"""Per-layer ADCs: patterns reach the layers they name, and allocation follows the column outputs within its budget."""

import pytest
import torch
from torch import nn

import memsim
from memsim.converters import RangeProbe

IDEAL_CELLS = memsim.CrossbarConfig(device="ideal", read_noise="none", dac_bits=None)


def constant_chip(value: float) -> nn.Module:
    """Two 128 x 64 layers of all-3 weights (3 bits: both bit planes on) on ideal cells."""
    model = nn.Sequential(nn.Linear(128, 64, bias=False), nn.Linear(64, 64, bias=False))
    for layer in model:
        nn.init.constant_(layer.weight, value)
    return memsim.convert(model, IDEAL_CELLS)


def test_range_probe_counts_the_fewest_range_bits_that_hold_each_value():
    probe = RangeProbe(torch.device("cpu"))
    probe(torch.tensor([0.0, 0.5, -1.0, 1.5, 2.0, -3.0]))  # need 1, 1, 1, 2, 2, 3 bits (clip at +-2^(r-1))
    assert probe.counts[1:4].tolist() == [3, 2, 1]
    assert probe.range_bits(1.0) == 3
    assert probe.range_bits(0.8) == 2  # one value in six may clip


def test_allocation_gives_each_layer_the_range_its_column_outputs_need_and_the_rest_as_precision():
    model = constant_chip(1.0)
    x = torch.ones(4, 128)
    chosen = memsim.allocate_adc(model, lambda m: m(x), budget_bits=12)
    # Layer 0: 128 full-scale rows on each plane read 128 = 2^7: 8 range bits. Layer 1's inputs are the
    # layer 0 outputs, all equal, so every row is full scale again: 64 rows read 64 = 2^6, 7 range bits.
    assert chosen == {"0": (4, 8), "1": (5, 7)}
    assert memsim.adc_settings(model) == chosen
    assert all(sum(bits) == 12 for bits in chosen.values())
    x[:, 64:] = 0  # half the rows off: layer 0's columns read 64, 7 range bits
    assert memsim.allocate_adc(constant_chip(1.0), lambda m: m(x), budget_bits=12)["0"] == (5, 7)


def test_allocation_never_exceeds_its_budget():
    chosen = memsim.allocate_adc(constant_chip(1.0), lambda m: m(torch.ones(2, 128)), budget_bits=5)
    assert chosen == {"0": (0, 5), "1": (0, 5)}  # the outputs need 8 and 7 range bits: all 5 go to range


def test_changing_the_adc_does_not_reprogram_the_chip():
    model = memsim.convert(nn.Sequential(nn.Linear(40, 20)), memsim.CrossbarConfig(), torch.Generator().manual_seed(0))
    before = model[0].r.clone()
    memsim.allocate_adc(model, lambda m: m(torch.randn(8, 40)), budget_bits=10)
    assert torch.equal(model[0].r, before)


def test_patterns_set_the_adc_of_the_layers_they_match_first_match_wins():
    model = nn.Sequential(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)), nn.Linear(8, 8))
    memsim.convert(model, IDEAL_CELLS)
    settings = memsim.set_adc(model, {"0.1": (6, 6), "0.*": (4, 4)})
    assert settings == {"0.0": (4, 4), "0.1": (6, 6), "1": (8, 10)}
    assert model[0][1].config.adc_precision_bits == 6


def test_bad_adc_settings_are_refused_by_name():
    model = constant_chip(1.0)
    with pytest.raises(ValueError, match=r"\['encoder\.\*'\] match no crossbar layer"):
        memsim.set_adc(model, {"encoder.*": (4, 4)})
    with pytest.raises(ValueError, match="adc_precision_bits"):
        memsim.set_adc(model, {"0": (30, 4)})
    with pytest.raises(ValueError, match="budget must be 1 to 56 bits"):
        memsim.allocate_adc(model, lambda m: m(torch.ones(1, 128)), budget_bits=0)
    with pytest.raises(ValueError, match=r"did not read crossbar layer\(s\) \['1'\]"):
        memsim.allocate_adc(model, lambda m: m[0](torch.ones(1, 128)), budget_bits=8)
    assert memsim.adc_settings(model) == {"0": (8, 10), "1": (8, 10)}  # a failed allocation changes nothing


def three_layers() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 20)), nn.Linear(20, 10))


def test_a_chip_spec_gives_its_plans_fixed_adcs_at_conversion():
    plan = memsim.AdcPlan(layers=(("0.2", (6, 6)), ("0.*", (4, 5))))
    model = memsim.convert(three_layers(), memsim.ChipSpec(memsim.CrossbarConfig(), plan))
    assert memsim.adc_settings(model) == {"0.0": (4, 5), "0.2": (6, 6), "1": (8, 10)}
    with pytest.raises(ValueError, match=r"\['encoder\.\*'\] match no converted layer"):
        memsim.convert(
            three_layers(), memsim.ChipSpec(memsim.CrossbarConfig(), memsim.AdcPlan((("encoder.*", (4, 4)),)))
        )
    with pytest.raises(ValueError, match="adc_precision_bits"):
        memsim.AdcPlan(layers=(("0", (30, 4)),))


def test_an_automatic_plan_equals_allocating_every_layer_then_setting_the_patterns():
    """The plan allocates the layers no pattern names, from reads of the programmed chip in which every layer's
    ADC is ideal: what allocating all and then patching the patterns' layers gave, ADC for ADC and read for read."""
    x = torch.randn(16, 40, generator=torch.Generator().manual_seed(1))
    plan = memsim.AdcPlan(layers=(("0.2", (4, 4)),), auto_budget_bits=10)
    planned = memsim.convert(
        three_layers(), memsim.ChipSpec(memsim.CrossbarConfig(), plan), torch.Generator().manual_seed(3)
    )
    chosen = memsim.apply_adc_plan(planned, plan, lambda m: m(x))
    patched = memsim.convert(three_layers(), memsim.CrossbarConfig(), torch.Generator().manual_seed(3))
    memsim.allocate_adc(patched, lambda m: m(x), budget_bits=10)
    assert chosen == memsim.set_adc(patched, {"0.2": (4, 4)})
    assert chosen["0.2"] == (4, 4) and sum(chosen["0.0"]) == sum(chosen["1"]) == 10
    for model in (planned, patched):
        for layer in model.modules():
            if isinstance(layer, memsim.MemristorLinear):
                layer.generator.manual_seed(5)
    assert torch.equal(planned(x), patched(x))
