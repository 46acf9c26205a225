"""Identities: the models, chips and decodes behind recipes/mini/RESULTS.md keep theirs, so nothing is trained or
programmed again, and a setting added to the code re-keys nothing while it is at its default.

A change that re-keys outputs on purpose (a resized corpus, say) updates CASES and says so in its commit."""

import csv
import dataclasses
from pathlib import Path

import pytest

from asr import identity, settings
from asr.pipeline import graph
from memsim import CrossbarConfig

RESULTS = Path(__file__).resolve().parents[2] / "recipes" / "mini" / "results.csv"

# results.csv was made on the mini corpus of 10-minute dev and test splits (asr.data.corpus: 40 minutes since) with
# 3 programming instances per chip (experiment mini: 10 since)
MADE_WITH = ["data.synth.splits.dev.minutes=10", "data.synth.splits.test.minutes=10", "memsim.instances=3"]
# configurations of recipes/mini (its README has the commands) whose models and chips results.csv holds
CASES = [
    ["+experiment=mini_budget", "memsim.only=adc"],
    ["+experiment=mini_levels", "memsim.levels_per_cell=2"],
    ["+experiment=mini_converters", "memsim.adc_precision_bits=4", "memsim.adc_range_bits=6"],
    ["+experiment=mini_converters", "memsim.adc=auto", "memsim.adc_budget_bits=8"],
    ["+experiment=mini", "model=blstm"],
    ["+experiment=mini", "quant.weight_bits=1.5"],
    ["+experiment=mini", "quant.weight_bits=4"],
    ["+experiment=mini", "quant.noise=gauss", "quant.noise_std=0.05", "decode.splits=[test]"],
    ["+experiment=mini", "quant=qat_all", "memsim.kinds=[linear,conv]"],
    ["+experiment=mini", "quant.quantize_depthwise=true", "memsim.kinds=[linear,conv]"],
    ["+experiment=mini", "memsim.tune_steps=60", "memsim.tune_lr=0.0003"],
]


@pytest.fixture(scope="module")
def recorded() -> tuple[set[str], set[str]]:
    """The models of results.csv and the folders of its results."""
    with open(RESULTS) as f:
        rows = list(csv.DictReader(f))
    return {r["model"] for r in rows}, {r["path"] for r in rows}


@pytest.mark.parametrize("case", CASES, ids=" ".join)
def test_the_outputs_behind_the_mini_results_keep_their_identities(case, recorded, make_cfg):
    models, paths = recorded
    s = settings.load(make_cfg(*case, *MADE_WITH, "work_dir=work/mini"))
    trained = graph.model_output(s, quantized=True)
    assert trained.relpath in models and graph.model_output(s, quantized=False).relpath in models
    chip = graph.chip_output(s, trained)
    decodes = [d.relpath for d in graph.chip_decodes(s, trained, chip) if d.settings["split"] == "test"]
    assert decodes and set(decodes) <= paths, chip.relpath


def test_a_setting_added_later_re_keys_nothing_at_its_default(monkeypatch):
    config = dataclasses.asdict(CrossbarConfig())
    before = identity.identity("crossbar", config)
    monkeypatch.setitem(identity.DEFAULTS, "crossbar", {**identity.DEFAULTS["crossbar"], "wire_ohms": 0.0})
    assert identity.identity("crossbar", {**config, "wire_ohms": 0.0}) == before
    assert identity.identity("crossbar", {**config, "wire_ohms": 1.0}) == {**before, "wire_ohms": 1.0}
    assert identity.with_defaults("crossbar", before)["wire_ohms"] == 0.0  # an older record reads as the default


def test_noise_settings_leave_a_models_identity_while_noise_is_off():
    quant = {**identity.DEFAULTS["quant"], "weight_bits": 3, "noise_std": 0.1}
    assert "noise_std" not in identity.identity("quant", quant)
    assert identity.identity("quant", {**quant, "noise": "gauss"})["noise_std"] == 0.1


def test_multi_level_chips_made_before_centred_verify_keep_their_identity_and_label():
    before = {**dataclasses.asdict(CrossbarConfig(levels_per_cell=4))}
    before.pop("verify_scheme")  # a record made before the setting existed, by first-past verify
    recorded = identity.with_defaults("crossbar", before)
    assert recorded["verify_scheme"] == "first_past"
    assert identity.identity("crossbar", recorded) == identity.identity("crossbar", before)
    centred = dataclasses.asdict(CrossbarConfig(levels_per_cell=4))
    assert identity.identity("crossbar", centred)["verify_scheme"] == "centred"  # re-keyed: it programs otherwise
    binary = dataclasses.asdict(CrossbarConfig())
    assert "verify_scheme" not in identity.identity("crossbar", binary)  # binary cells have no levels to verify
    assert identity.with_defaults("crossbar", {"levels_per_cell": 2})["verify_scheme"] == "centred"
