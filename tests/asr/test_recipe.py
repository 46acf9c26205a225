"""The whole recipe end to end on a few-utterance mini corpus: outputs, sweeps, forced retraining, reproducibility."""

import csv
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import memsim
from asr import sensitivity, settings
from asr.checkpoint import load_model
from asr.chips import SUMMARY_FILE
from asr.errors import CorruptFile, UserError
from asr.pipeline import allocation, graph, runner
from asr.pipeline.stages import STAGES
from asr.quant import quantized_layers
from asr.records import RECORD

ROOT = Path(__file__).resolve().parents[2]
TINY_TRAINING = ["train.max_steps=3", "train.checkpoint_every=1", "train.average_last=2"]
# a sensitivity table of the fixture chip: its own setting (3 bits, ADC (8, 10)) and three others per layer
SENSITIVITY = ["memsim.instances=1", "sensitivity.weight_bits=[3,4]", "sensitivity.adcs=[[8,10],[2,2]]"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, tiny_recipe_overrides, make_cfg):
    """A work dir through every stage once: (work_dir, overrides that reproduce its configuration)."""
    work = tmp_path_factory.mktemp("recipe")
    overrides = [*tiny_recipe_overrides(work), *TINY_TRAINING, "memsim.instances=2", "decode.beam_size=8"]
    runner.run(make_cfg(*overrides))
    return work, overrides


def rows(work: Path) -> list[dict]:
    with open(work / "report" / "results.csv") as f:
        return list(csv.DictReader(f))


def runs(work: Path, kind: str) -> dict[str, str]:
    """The run id of every output under work_dir/<kind>, by folder."""
    return {str(p.parent): json.loads(p.read_text())["run"] for p in (work / kind).rglob(RECORD)}


def test_all_stages_from_corpus_to_report_then_a_rerun_makes_nothing(recipe, make_cfg, caplog):
    work, overrides = recipe
    found = {(r["system"], r["weight_bits"], r["instance"]) for r in rows(work) if r["split"] == "test"}
    assert found == {("float", "", ""), ("qat", "3.0", ""), ("memsim", "3.0", "0"), ("memsim", "3.0", "1")}
    assert {r["method"] for r in rows(work)} == {"greedy", "beam"} and all(int(r["words"]) > 0 for r in rows(work))
    results = (work / "report" / "RESULTS.md").read_text()
    s = settings.load(make_cfg(*overrides))
    qat = graph.model_output(s, True).label  # the model's folder without its hash, as the table names it
    assert f"|test|beam|memsim|3|{qat}|high_precision-physical|-|2|" in results and "git revision" in results
    chip = graph.chip_output(s, graph.model_output(s, True))
    summary = json.loads((work / chip.relpath / SUMMARY_FILE).read_text())
    assert summary["total"]["tiles"] > 0 and 0 < summary["total"]["read_disturb_pct"] < 50
    mean = summary["layer_errors"][-1]
    assert mean["layer"] == "mean" and 0 < mean["relative_error"] < 1 and 0.5 < mean["gain"] < 1.5
    assert "## Chip layer errors" in results
    score = json.loads(next((work / "memsim").rglob("score.json")).read_text())
    assert score["real_time_factor"] > 0 and score["audio_seconds"] > 0
    caplog.set_level(logging.INFO, logger="asr.pipeline.runner")
    runner.run(make_cfg(*overrides))
    made = sum(st.outputs is not None for st in STAGES.values()) - 1  # sensitivity: no candidates set
    assert sum("done already" in m for m in caplog.messages) == made
    assert "stage sensitivity: nothing to make with these settings" in caplog.text


def test_sweeps_over_a_decode_setting_and_a_chip_setting_keep_every_row(recipe, make_cfg):
    work, overrides = recipe
    for override in ("decode.beam_size=4", "memsim.device=ideal"):
        runner.run(make_cfg(*overrides, override, "stages=[decode,memsim,report]"))
    table = (work / "report" / "RESULTS.md").read_text()
    s = settings.load(make_cfg(*overrides))
    for system, quantized in (("float", False), ("qat", True)):
        label = graph.model_output(s, quantized).label
        assert f"|test|beam|{system}||{label}|-|decode.beam_size=4|" in table.replace("|3|", "||")
        assert f"|test|beam|{system}||{label}|-|decode.beam_size=8|" in table.replace("|3|", "||")
    # the physical chip's device is the default: only the ideal chip's label names it
    assert "|high_precision-physical|memsim.device=ideal|2|" in table and "|high_precision-physical|-|2|" in table
    qat = graph.model_output(s, True).label
    assert f"|test|greedy|qat|3|{qat}|-|-|1|" in table  # greedy decoding does not depend on the beam: one row


def test_an_ideal_chip_without_converter_error_hears_what_the_digital_model_hears(recipe, make_cfg):
    work, overrides = recipe
    ideal = [*overrides, "memsim.device=ideal", "memsim.adc=ideal", "memsim.instances=1"]
    runner.run(make_cfg(*ideal, "stages=[memsim]"))
    s = settings.load(make_cfg(*ideal))
    trained = graph.model_output(s, True)
    chip = graph.chip_decodes(s, trained, graph.chip_output(s, trained))
    digital = {(d.settings["split"], d.settings["method"]): d for d in graph.decodes(s, trained)}
    for output in chip:
        key = (output.settings["split"], output.settings["method"])
        on_chip = (work / output.relpath / "hyps.jsonl").read_text()
        assert on_chip == (work / digital[key].relpath / "hyps.jsonl").read_text()


def test_a_mixed_precision_model_trains_and_its_ideal_chip_maps_each_layer_with_its_bits(recipe, make_cfg):
    """quant.layer_bits through the recipe: the QAT stage trains the mixed model (named w3a8-mixed, beside the
    uniform one), and its ideal chip holds each layer at its bits and hears what the digital model hears."""
    work, overrides = recipe
    mixed = [*overrides, "++quant.layer_bits={blocks.*.ff*:1.5}", "memsim.device=ideal", "memsim.adc=ideal"]
    mixed += ["memsim.instances=1", "decode.splits=[test]", "decode.methods=[greedy]"]
    runner.run(make_cfg(*mixed, "stages=[train,decode,memsim]"))
    s = settings.load(make_cfg(*mixed))
    trained = graph.model_output(s, True)
    assert trained.name.startswith(s.model.name) and "w3a8-mixed" in trained.name
    programmed = graph.chip_output(s, trained)
    layers = json.loads((work / programmed.relpath / SUMMARY_FILE).read_text())["layers"]
    assert {row["layer"].split(".")[2].startswith("ff") for row in layers if row["weight_bits"] == 1.5} == {True}
    assert {row["weight_bits"] for row in layers} == {1.5, 3} and {row["planes"] for row in layers} == {1, 2}
    (decoded,) = graph.decodes(s, trained)
    (on_chip,) = graph.chip_decodes(s, trained, programmed)
    assert (work / on_chip.relpath / "hyps.jsonl").read_text() == (work / decoded.relpath / "hyps.jsonl").read_text()


def test_the_sensitivity_table_reads_every_layer_at_every_candidate_on_dev_once(recipe, make_cfg, caplog):
    """stages=[sensitivity]: each crossbar layer reprogrammed alone at its own setting (sensitivity 0) and at each
    other candidate, energies that grow with the bits, a table kept with the model and chip it measured."""
    work, overrides = recipe
    measured = [*overrides, *SENSITIVITY]
    runner.run(make_cfg(*measured, "stages=[sensitivity]"))
    s = settings.load(make_cfg(*measured))
    trained = graph.model_output(s, True)
    output = graph.sensitivity_output(s, trained, graph.chip_output(s, trained))
    table = json.loads((work / output.relpath / sensitivity.TABLE_FILE).read_text())
    rows = table["rows"]
    layers = sorted({row["layer"] for row in rows})
    assert len(layers) == len(quantized_layers(load_model(work / trained.relpath / "final.pt")))
    assert len(rows) == 4 * len(layers)  # the own setting, (3, [8, 10]), is one of the four candidates
    own = [row for row in rows if row["own"]]
    assert len(own) == len(layers) and all(row["sensitivity"] == 0 and row["weight_bits"] == 3 for row in own)
    assert all(row["adc"] == [8, 10] for row in own) and math.isfinite(table["chip_loss"])
    for layer in layers:
        energy = {(row["weight_bits"], tuple(row["adc"])): row["energy_uj"] for row in rows if row["layer"] == layer}
        assert energy[4, (2, 2)] > energy[3, (2, 2)] > 0 and energy[3, (8, 10)] > energy[3, (2, 2)]
    caplog.set_level(logging.INFO)
    runner.run(make_cfg(*measured, "stages=[sensitivity]"))  # kept: nothing measured again
    assert "stage sensitivity: done already" in caplog.text
    runner.run(make_cfg(*overrides, "stages=[sensitivity]"))
    assert "stage sensitivity: nothing to make with these settings" in caplog.text


def test_an_allocation_within_the_chips_own_energy_reaches_its_chip_layer_by_layer(recipe, make_cfg):
    work, overrides = recipe
    measured = [*overrides, *SENSITIVITY]
    with pytest.raises(UserError, match="allocation needs the sensitivity table of this configuration"):
        allocation.resolve(settings.load(make_cfg(*overrides, "allocation.budget_fraction=1")))
    runner.run(make_cfg(*measured, "stages=[sensitivity]"))
    with pytest.raises(UserError, match="no choice of settings fits the budget"):
        allocation.resolve(settings.load(make_cfg(*measured, "allocation.budget_uj=1e-9")))
    allocated = [*measured, "allocation.budget_fraction=1", "decode.splits=[test]", "decode.methods=[greedy]"]
    runner.run(make_cfg(*allocated, "stages=[train,memsim]"))
    s = allocation.resolve(settings.load(make_cfg(*allocated)))
    assert s.memsim.name.endswith("-alloc1x") and not s.sensitivity.candidates
    trained = graph.model_output(s, True)
    summary = json.loads((work / graph.chip_output(s, trained).relpath / SUMMARY_FILE).read_text())
    assert {row["layer"]: row["adc"] for row in summary["layers"]} == s.memsim.layer_adc
    assert {row["layer"]: row["weight_bits"] for row in summary["layers"]} == {
        name: s.quant.layer_bits.get(name, 3) for name in s.memsim.layer_adc
    }


def test_an_allocation_takes_each_layers_least_sensitive_setting_when_the_budget_allows_all(recipe, make_cfg):
    """A hand-made table: with room for everything, every layer takes its least sensitive candidate; layers whose
    bits change make a model of their own, fine-tuned from the uniform one."""
    work, overrides = recipe
    s = settings.load(make_cfg(*overrides, *SENSITIVITY, "allocation.budget_uj=1e9"))
    layers = quantized_layers(load_model(work / graph.model_output(s, True).relpath / "final.pt"))
    best = {name: (4.0 if k % 2 else 3.0, [2, 2] if k % 3 else [8, 10]) for k, name in enumerate(layers)}
    rows = [
        {
            "layer": name,
            "weight_bits": bits,
            "adc": adc,
            "own": (bits, adc) == (3.0, [8, 10]),
            "energy_uj": bits * sum(adc),
            "sensitivity": -1.0 if (bits, adc) == best[name] else 0.5 * bits,
        }
        for name in layers
        for bits in (3.0, 4.0)
        for adc in ([8, 10], [2, 2])
    ]
    result = allocation.allocated(s, {"rows": rows}, work / "table.json")
    assert result.memsim.layer_adc == {name: adc for name, (_, adc) in best.items()}
    assert result.quant.layer_bits == {name: bits for name, (bits, _) in best.items() if bits != 3}
    assert result.quant.name == "w3a8-alloc1e09uJ" and result.memsim.name.endswith("-alloc1e09uJ")
    uniform = work / graph.model_output(s, True).relpath / "final.pt"
    assert result.qat_train["init_from"] == str(uniform)
    with pytest.raises(CorruptFile, match="not a sensitivity table"):
        allocation.allocated(s, {"rows": [{"layer": layers[0]}]}, work / "table.json")


def test_auto_and_per_layer_adcs_reach_the_chip_and_its_summary_prices_them(recipe, make_cfg):
    work, overrides = recipe
    chip = [*overrides, "memsim.adc=auto", "memsim.adc_budget_bits=9", "memsim.instances=1"]
    chip += ["++memsim.layer_adc={blocks.0.ff1.*:[3,3]}", "stages=[memsim]"]
    runner.run(make_cfg(*chip))
    s = settings.load(make_cfg(*chip))
    summary = json.loads((work / graph.chip_output(s, graph.model_output(s, True)).relpath / SUMMARY_FILE).read_text())
    adcs = {row["layer"]: row["adc"] for row in summary["layers"]}
    assert all(sum(bits) == 9 for name, bits in adcs.items() if ".ff1." not in name)
    assert {tuple(bits) for name, bits in adcs.items() if ".ff1." in name} == {(3, 3)}
    energy = summary["energy"]
    per_layer = {row["layer"]: row for row in energy["layers"]}
    assert per_layer.keys() == adcs.keys() | {"total"}
    assert all(per_layer[name]["adc_bits"] == sum(bits) for name, bits in adcs.items())
    per_second = energy["per_second_of_audio_uj"]
    reads = energy["vectors_per_second_of_audio"]  # per layer: one per encoder frame (4x subsampled 10 ms frames)
    (frame_rate,) = set(reads.values())
    assert frame_rate == pytest.approx(25, rel=0.01) and reads.keys() == adcs.keys()
    assert per_second["chip"] == pytest.approx(per_layer["total"]["chip_pj"] * frame_rate / 1e6)
    assert 0 < per_second["crossbar"] < per_second["chip"] and per_second["digital"] > 0


def test_a_bit_serial_chip_counts_vectors_once_and_converts_each_pulse(recipe, make_cfg):
    """Bit-serial inputs read each vector in 14 pulses (two phases of 7 magnitude bits of the 8-bit DAC): the
    summary counts the vectors per second as amplitude inputs do, and an ADC conversion per column and pulse."""
    work, overrides = recipe
    chip = [*overrides, "memsim.input_scheme=bit_serial", "memsim.instances=1", "stages=[memsim]"]
    runner.run(make_cfg(*chip))
    s = settings.load(make_cfg(*chip))
    summary = json.loads((work / graph.chip_output(s, graph.model_output(s, True)).relpath / SUMMARY_FILE).read_text())
    reads = summary["energy"]["vectors_per_second_of_audio"]
    (frame_rate,) = set(reads.values())  # one per encoder frame, as for amplitude inputs
    assert frame_rate == pytest.approx(25, rel=0.01)
    rows = {row["layer"]: row for row in summary["energy"]["layers"][:-1]}
    assert {row["reads_per_vector"] for row in rows.values()} == {14}
    tile = summary["config"]["tile_size"]
    for row in summary["layers"]:  # linear layers: per pulse, a conversion per row tile, plane and column
        inputs, outputs = (int(n) for n in row["shape"].split("x"))
        assert row["adc_conversions"] == 14 * math.ceil(inputs / tile) * row["planes"] * outputs
        assert rows[row["layer"]]["adc_conversions"] == row["adc_conversions"]
    expected = sum(row["adc_conversions"] * reads[row["layer"]] for row in summary["layers"])
    assert summary["adc_conversions_per_second_of_audio"] == round(expected)


def test_a_chip_with_resistive_wires_is_a_chip_of_its_own_and_decodes_through_them(recipe, make_cfg):
    """Wire resistance enters the chip's identity (a chip of its own, beside the ideal-wire one, whose identity the
    new settings leave as it was), its summary records it, and its decodes read through the wires."""
    work, overrides = recipe
    plain = [*overrides, "memsim.instances=1", "stages=[memsim]"]
    wired = [*plain, "memsim.row_wire_resistance=2.78", "memsim.column_wire_resistance=2.78"]
    runner.run(make_cfg(*wired))
    s_plain, s_wired = settings.load(make_cfg(*plain)), settings.load(make_cfg(*wired))
    trained = graph.model_output(s_wired, True)
    chip_plain, chip_wired = graph.chip_output(s_plain, trained), graph.chip_output(s_wired, trained)
    assert chip_plain.relpath != chip_wired.relpath
    assert "wire" not in json.dumps(chip_plain.settings)  # at 0 ohm the identity is the one from before wires
    assert "row_wire_resistance" in json.dumps(chip_wired.settings)
    summary = json.loads((work / chip_wired.relpath / SUMMARY_FILE).read_text())
    assert (summary["config"]["row_wire_resistance"], summary["config"]["column_wire_resistance"]) == (2.78, 2.78)
    assert all(
        (work / output.relpath / "hyps.jsonl").exists() for output in graph.chip_decodes(s_wired, trained, chip_wired)
    )


def hypotheses(work: Path) -> dict[str, bytes]:
    return {str(p.relative_to(work)): p.read_bytes() for p in work.glob("*/**/hyps.jsonl")}


def test_forced_retraining_decodes_and_programs_again_and_reproduces_every_result(recipe, make_cfg):
    work, overrides = recipe
    s = settings.load(make_cfg(*overrides))
    before = {kind: runs(work, kind) for kind in ("exp", "decode", "memsim")}
    weights = {
        m.relpath: torch.load(work / m.relpath / "final.pt", weights_only=True)["model"] for m in graph.systems(s)
    }
    results = hypotheses(work)
    runner.run(make_cfg(*overrides, "force=[train_float]"))
    after = {kind: runs(work, kind) for kind in ("exp", "decode", "memsim")}
    for output in [
        *graph.systems(s),
        *graph.decodes(s, graph.model_output(s, False)),
        *graph.decodes(s, graph.model_output(s, True)),
        graph.chip_output(s, graph.model_output(s, True)),
    ]:
        folder = str(work / output.relpath)
        kind = output.kind
        assert after[kind][folder] != before[kind][folder], folder  # the QAT model starts from the float one
    for path, state in weights.items():  # the same settings and seed: the same weights and hypotheses
        again = torch.load(work / path / "final.pt", weights_only=True)["model"]
        assert all(torch.equal(state[k], again[k]) for k in state), path
    assert hypotheses(work) == results


def test_any_quant_name_reports(recipe, make_cfg):
    work, overrides = recipe
    runner.run(make_cfg(*overrides, "quant.name=odd_name-3", "stages=[train,decode,report]"))
    assert any(r["model"].startswith("exp/small-odd_name-3-") and r["system"] == "qat" for r in rows(work))


def test_the_memsim_stage_is_bit_reproducible(recipe, make_cfg):
    work, overrides = recipe
    s = settings.load(make_cfg(*overrides))
    trained = graph.model_output(s, True)
    outputs = graph.chip_decodes(s, trained, graph.chip_output(s, trained))
    first = {o.relpath: (work / o.relpath / "hyps.jsonl").read_bytes() for o in outputs}
    runner.run(make_cfg(*overrides, "force=[memsim]", "stages=[memsim]"))
    assert {o.relpath: (work / o.relpath / "hyps.jsonl").read_bytes() for o in outputs} == first
    from asr import chips

    logits = []
    for _ in range(2):
        chip = memsim.ChipSpec(s.chip_config())
        model, generator, _ = chips.program(work / trained.relpath / "final.pt", chip, 7, "cpu")
        chips.reseed(generator, 7, "dev")
        with torch.inference_mode():
            logits.append(
                model(torch.randn(2, 50, 80, generator=torch.Generator().manual_seed(0)), torch.tensor([50, 40]))[0]
            )
    assert torch.equal(*logits)
    assert isinstance(load_model(work / trained.relpath / "final.pt"), torch.nn.Module)


def run_script(work: Path, override: str) -> subprocess.CompletedProcess:
    """scripts/run.py on the mini experiment with one override, as a user runs it."""
    command = [sys.executable, str(ROOT / "scripts" / "run.py"), "+experiment=mini", f"work_dir={work}", override]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HYDRA_FULL_ERROR": "0"})


def test_unknown_key_on_the_command_line_is_one_clear_message(tmp_path):
    result = run_script(tmp_path, "quant.wieght_bits=3")
    assert result.returncode != 0 and "wieght_bits" in result.stderr and "Traceback" not in result.stderr


def test_a_bad_setting_on_the_command_line_is_one_clear_message(tmp_path):
    result = run_script(tmp_path, "memsim.adc=auto")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "error: memsim.adc=auto needs memsim.adc_budget_bits (precision + range bits per conversion), and "
        "memsim.adc_budget_bits needs memsim.adc=auto; got adc=auto, adc_budget_bits=None"
    )


def test_a_chip_can_hold_the_depthwise_convolutions_too(recipe, make_cfg):
    work, overrides = recipe
    chip = [*overrides, "quant.quantize_depthwise=true", "memsim.kinds=[linear,conv]", "memsim.instances=1"]
    runner.run(make_cfg(*chip, "stages=[train,memsim]"))
    s = settings.load(make_cfg(*chip))
    summary = json.loads((work / graph.chip_output(s, graph.model_output(s, True)).relpath / SUMMARY_FILE).read_text())
    layers = {row["layer"] for row in summary["layers"]}
    assert "blocks.0.conv.depthwise.crossbar" in layers and "blocks.0.ff1.w1" in layers
    errors = {row["layer"]: row for row in summary["layer_errors"]}
    assert 0 < errors["blocks.0.conv.depthwise"]["relative_error"] < 1  # compared with the digital convolution


def test_chip_in_the_loop_tuning_runs_before_decoding_and_is_reported(recipe, make_cfg):
    work, overrides = recipe
    chip = [*overrides, "memsim.tune_steps=2", "memsim.instances=1", "stages=[memsim]"]
    runner.run(make_cfg(*chip))
    s = settings.load(make_cfg(*chip))
    trained = graph.model_output(s, True)
    summary = json.loads((work / graph.chip_output(s, trained).relpath / SUMMARY_FILE).read_text())
    assert summary["tuning"]["steps"] == 2 and summary["tuning"]["loss_first"] > 0
    untuned = settings.load(make_cfg(*overrides))
    assert graph.chip_output(s, trained).relpath != graph.chip_output(untuned, trained).relpath  # its own identity


def test_a_blstm_model_trains_and_decodes_on_its_chip(recipe, make_cfg):
    work, overrides = recipe
    blstm = [*overrides, "model=blstm", "model.d_model=32", "model.n_layers=1", "memsim.instances=1"]
    runner.run(make_cfg(*blstm, "stages=[train_float,train,memsim]"))
    s = settings.load(make_cfg(*blstm))
    summary = json.loads((work / graph.chip_output(s, graph.model_output(s, True)).relpath / SUMMARY_FILE).read_text())
    assert [row["layer"] for row in summary["layers"]] == ["lstm.cells.0.0", "lstm.cells.0.1"]
    assert any(
        (work / output.relpath / "score.json").is_file()
        for output in graph.chip_decodes(
            s, graph.model_output(s, True), graph.chip_output(s, graph.model_output(s, True))
        )
    )


def test_decoding_batches_from_memory_are_sized_per_model_and_recorded(recipe, make_cfg):
    """Last in this file: its outputs would change the labels of the other tests' tables."""
    work, overrides = recipe
    sized = [*overrides, "decode.memory_fraction=0.001", "decode.methods=[greedy]", "decode.splits=[test]"]
    runner.run(make_cfg(*sized, "memsim.instances=1", "stages=[decode,memsim]"))
    s = settings.load(make_cfg(*sized, "memsim.instances=1"))
    trained = graph.model_output(s, True)
    outputs = [*graph.decodes(s, trained), *graph.chip_decodes(s, trained, graph.chip_output(s, trained))]
    scores = [json.loads((work / o.relpath / "score.json").read_text()) for o in outputs]
    assert all(o.settings["memory_fraction"] == 0.001 and "batch_seconds" not in o.settings for o in outputs)
    assert all(score["batch_seconds"] > 0 and score["free_bytes"] > 0 for score in scores)
    assert scores[-1]["bytes_per_second"] >= scores[0]["bytes_per_second"]  # the chip's read holds more, if anything
