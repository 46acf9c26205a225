"""The report: results read from records, grouped, compared with their references with bootstrap intervals."""

import csv
import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asr.chips import SUMMARY_FILE
from asr.decode import HYPS_FILE, SCORE_FILE
from asr.errors import UserError
from asr.files import write_jsonl
from asr.records import Job, Output, Records
from asr.reports.document import write_report
from asr.scoring import Score
from asr.settings import CHIP_SEEDS_PER_TRAINING_SEED
from asr.significance import relative_change, relative_change_over_runs, resample_counts, t_quantile

ROOT = Path(__file__).resolve().parents[2]
UTTERANCES, WORDS = 10, 20  # per utterance


def made(root: Path, output: Output, errors: list[int] | None = None) -> Output:
    """Commit `output` under root as the runner would; with `errors` (per utterance), as a decode output."""
    records = Records(root)
    job = Job(root, output, {role: records.require(i.relpath).run for role, i in output.inputs.items()}, forced=False)
    job.begin()
    results = None
    if errors is not None:
        lines = [
            {"id": f"utt{i}", **texts(e), "words": WORDS, "corr": WORDS - e, "sub": e, "del": 0, "ins": 0}
            for i, e in enumerate(errors)
        ]
        write_jsonl(job.path / HYPS_FILE, lines)
        score = sum((Score.of_utterance(line) for line in lines), Score())
        results = {
            SCORE_FILE: {"split": output.settings["split"], "method": output.settings["method"], **score.to_dict()}
        }
    job.commit(results)
    return output


def texts(substitutions: int) -> dict[str, str]:
    """A reference of WORDS words and a hypothesis with its first `substitutions` words replaced."""
    ref = [f"w{j}" for j in range(WORDS)]
    return {"ref": " ".join(ref), "hyp": " ".join(["x"] * substitutions + ref[substitutions:])}


def model(root: Path, bits: float | None, baseline: Output | None = None, seed: int | None = None) -> Output:
    settings = {"quant": {"weight_bits": bits}, "train": {"lr": 1e-3}, **({"seed": seed} if seed is not None else {})}
    out = Output("train", "exp", f"m-{bits}", settings)
    return made(
        root, Output(out.stage, out.kind, out.label, out.settings, notes={"baseline": (baseline or out).relpath})
    )


def decode(
    root: Path,
    trained: Output,
    errors: list[int],
    beam_size: int = 100,
    chip: Output | None = None,
    instance: int | None = None,
    split: str = "test",
) -> None:
    settings = {"split": split, "method": "beam", "beam_size": beam_size}
    if chip is not None:
        settings = {"instance": instance, **settings}
    inputs = {"model": trained, **({"chip": chip} if chip else {})}
    made(root, Output("decode", "decode", "beam", settings, inputs, (trained.name,)), errors)


def spread(total: int) -> list[int]:
    """`total` errors over the utterances, as evenly as possible."""
    return [total // UTTERANCES + (i < total % UTTERANCES) for i in range(UTTERANCES)]


@pytest.fixture
def work(tmp_path) -> Path:
    """float 10 %, QAT 11 %, a chip of 3 instances at 12/13/14 %, and the float model at a second beam size."""
    root = tmp_path / "work"
    float_model = model(root, None)
    qat = model(root, 3.0, baseline=float_model)
    decode(root, float_model, spread(20))
    decode(root, float_model, spread(30), beam_size=10)
    decode(root, qat, spread(22))
    chip = made(
        root,
        Output(
            "memsim",
            "memsim",
            "my chip",
            {"crossbar": {"device": "ideal", "weight_bits": 3.0}, "seed": 1},
            {"model": qat},
            (qat.name,),
        ),
    )
    for instance, errors in enumerate((24, 26, 28)):
        decode(root, qat, spread(errors), chip=chip, instance=instance)
    return root


def test_report_reads_records_groups_instances_and_compares_with_both_references(work, tmp_path):
    groups = write_report([work], tmp_path / "out", "fixed")
    table = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "|test|beam|float||m-None|-|decode.beam_size=10|1|10|200|15.00|0.00|15.00|15.00|-|-|" in table
    assert "|test|beam|float||m-None|-|-|1|10|200|10.00|" in table  # beam_size 100 is the default: no label
    assert "|test|beam|qat|3|m-3.0|-|-|1|10|200|11.00|0.00|11.00|11.00|+10.0 % [" in table
    memsim_row = next(line for line in table.splitlines() if line.startswith("|test|beam|memsim|"))
    assert memsim_row.startswith("|test|beam|memsim|3|m-3.0|my chip|-|3|10|200|13.00|1.00|12.00|14.00|+30.0 % [")
    assert "|+18.2 % [" in memsim_row  # 26 errors on average against the QAT model's 22
    assert "|memsim/w3/my chip/test/beam (3 instances pooled)|30|600|87.0|13.0|0.0|0.0|13.0|100.0|" in table
    chip_group = next(g for g in groups if g.first.system == "memsim")
    for interval in chip_group.relative.values():
        assert interval.low <= interval.estimate <= interval.high
    with open(tmp_path / "out" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {r["system"] for r in rows} == {"float", "qat", "memsim"}
    assert {r["instance"] for r in rows if r["system"] == "memsim"} == {"0", "1", "2"}
    assert all(r["revision"] == rows[0]["revision"] for r in rows) and (tmp_path / "out" / "wer_vs_bits.png").is_file()


def test_a_result_made_from_an_older_run_of_its_model_is_left_out(work, tmp_path):
    qat = next(p for p in (work / "exp").iterdir() if p.name.startswith("m-3.0"))
    record = (qat / "record.json").read_text().replace('"run": "', '"run": "remade', 1)
    (qat / "record.json").write_text(record)  # as if the model had been trained again since
    write_report([work], tmp_path / "out", "stale")
    table = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "|qat|" not in table and "|memsim|" not in table and "4 stale result(s) left out" in table


def test_report_script_merges_work_directories_and_refuses_empty_ones(work, tmp_path):
    out = tmp_path / "merged"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "report.py"), str(work), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "|qat|3|" in (out / "RESULTS.md").read_text()
    (tmp_path / "empty").mkdir()
    empty = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "report.py"), str(tmp_path / "empty")], capture_output=True, text=True
    )
    assert empty.returncode == 1 and "no current decode results" in empty.stderr and "Traceback" not in empty.stderr


def test_paired_bootstrap_interval_covers_the_estimate_and_is_zero_for_a_copy():
    rng = np.random.default_rng(0)
    reference = rng.poisson(2.0, 500)
    system = reference + rng.binomial(1, 0.3, 500)
    interval = relative_change(reference, system)
    assert interval.estimate == pytest.approx(system.sum() / reference.sum() - 1)
    assert interval.low < interval.estimate < interval.high and interval.low > 0
    same = relative_change(reference, np.stack([reference, reference]))
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    counts = resample_counts(500, resamples=300)
    assert counts.shape == (300, 500) and (counts.sum(1) == 500).all()
    wide = relative_change(reference[:50], system[:50])
    assert wide.high - wide.low > interval.high - interval.low  # fewer utterances, less certainty
    with pytest.raises(ValueError, match="same utterances"):
        relative_change(reference, system[:10])


def decoded(rng, difficulty: np.ndarray, effect: float, instances: int) -> np.ndarray:
    """Errors per utterance of `instances` decodes of a system `effect` worse than the reference (each instance
    +-3 % of its own)."""
    return rng.poisson(difficulty * (1 + effect) * rng.uniform(0.97, 1.03, (instances, 1)))


def test_the_interval_over_training_runs_holds_the_spread_between_runs():
    rng = np.random.default_rng(1)
    difficulty = rng.gamma(1.0, 1.0, 800)  # shared by every run and instance: the pairing removes it
    effects = [0.0, 0.2, 0.4]  # each training run's own chip effect
    references = [decoded(rng, difficulty, 0.0, 1)[0] for _ in effects]
    systems = [decoded(rng, difficulty, effect, 10) for effect in effects]
    pooled, utterances_only = relative_change_over_runs(references, systems)
    estimate = sum(s.mean(0).sum() for s in systems) / sum(r.sum() for r in references) - 1
    assert pooled.estimate == pytest.approx(estimate) and utterances_only.estimate == pytest.approx(estimate)
    assert pooled.low < estimate < pooled.high and utterances_only.low < estimate < utterances_only.high
    # runs 0 to +40 % apart: the pooled interval reaches past them (3 runs: a t of 2 degrees of freedom at most)
    assert pooled.low < 0.0 and pooled.high > 0.4 and utterances_only.high - utterances_only.low < 0.15
    # one run: the utterances-only interval is the paired bootstrap's
    single = relative_change_over_runs(references[:1], systems[:1])[1]
    paired = relative_change(references[0], systems[0])
    assert (single.estimate, single.low, single.high) == pytest.approx((paired.estimate, paired.low, paired.high))
    copies = relative_change_over_runs(references, [np.stack([r, r]) for r in references])[0]
    assert (copies.estimate, copies.low, copies.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same utterances"):
        relative_change_over_runs(references, [systems[0][:, :10], *systems[1:]])


@pytest.mark.parametrize(("run_spread", "utterances"), [(0.08, 300), (0.2, 1000), (0.0, 300)])
def test_the_interval_over_three_training_runs_covers_the_mean_effect_of_runs(run_spread, utterances):
    """Simulated: 3 runs whose chip effects scatter around +20 % (run_spread), 10 instances each; the pooled
    interval should hold +20 % about 95 % of the time, the utterances-only one misses it when runs differ."""
    rng = np.random.default_rng(0)
    counts = resample_counts(utterances, resamples=500)
    covered = {"pooled": 0, "utterances": 0}
    trials = 100
    for _ in range(trials):
        difficulty = rng.gamma(1.0, 1.0, utterances)
        references = [rng.poisson(difficulty) for _ in range(3)]
        systems = [decoded(rng, difficulty, 0.2 + run_spread * rng.standard_normal(), 10) for _ in range(3)]
        pooled, utterances_only = relative_change_over_runs(references, systems, counts)
        covered["pooled"] += pooled.low <= 0.2 <= pooled.high
        covered["utterances"] += utterances_only.low <= 0.2 <= utterances_only.high
    assert 0.88 <= covered["pooled"] / trials <= 0.99  # about 95 %, not an interval too wide to miss
    if run_spread >= 0.08:
        assert covered["utterances"] / trials < 0.85  # what a single run's paired interval would claim


def test_t_quantiles_match_the_tables():
    # Student's t, 97.5 % point, from any statistics table
    for freedom, table in ((1, 12.706), (2, 4.303), (3, 3.182), (10, 2.228), (30, 2.042), (math.inf, 1.960)):
        assert t_quantile(0.975, freedom) == pytest.approx(table, abs=5e-4)


def test_chips_of_qat_models_trained_with_several_seeds_are_pooled_with_an_interval_over_the_seeds(tmp_path):
    work = tmp_path / "work"
    float_model = model(work, None)
    decode(work, float_model, spread(20))
    for seed, (qat_errors, chip_errors) in enumerate([(22, (24, 26)), (20, (30, 32)), (24, (24, 24))]):
        qat = model(work, 3.0, baseline=float_model, seed=seed)
        chip_seed = 1000 + CHIP_SEEDS_PER_TRAINING_SEED * seed  # as the recipe programs each seed's chips
        decode(work, qat, spread(qat_errors))
        chip = made(
            work,
            Output("memsim", "memsim", "seeded", {"crossbar": {"weight_bits": 3.0}, "seed": chip_seed}, {"model": qat}),
        )
        for instance, errors in enumerate(chip_errors):
            decode(work, qat, spread(errors), chip=chip, instance=instance)
    other_corpus = model(work, 3.0, baseline=float_model, seed=3)  # its test set has 12 utterances: not pooled
    decode(work, other_corpus, [2] * 12)
    write_report([work], tmp_path / "out", "seeds")
    table = (tmp_path / "out" / "RESULTS.md").read_text()
    section = table.split("## Over training seeds")[1].split("\n## ")[0]
    chip_row = next(line for line in section.splitlines() if line.startswith("|test|beam|memsim|"))
    # (25 + 31 + 24) / (22 + 20 + 24) errors: +21.2 %, each seed's chip against that seed's QAT model
    assert chip_row.startswith("|test|beam|memsim|m-3.0|seeded|-|0, 1, 2|2, 2, 2|")
    assert "|12.50 / 15.50 / 12.00|11.00 / 10.00 / 12.00|" in chip_row
    assert "|its QAT model|+13.6 % / +55.0 % / +0.0 %|+21.2 % [" in chip_row
    qat_row = next(line for line in section.splitlines() if line.startswith("|test|beam|qat|"))
    assert "|0, 1, 2|1, 1, 1|11.00 / 10.00 / 12.00|10.00 / 10.00 / 10.00|float|+10.0 % / +0.0 % / +20.0 %|" in qat_row
    assert sum(line.startswith("|test|") for line in section.splitlines()) == 2  # the float model has no reference


def test_chip_layer_errors_and_the_budget_chart_come_from_the_chip_summaries(work, tmp_path):
    qat = next(p for p in (work / "exp").iterdir() if p.name.startswith("m-3.0"))
    trained = Output("train", "exp", "m-3.0", {"quant": {"weight_bits": 3.0}, "train": {"lr": 1e-3}})
    assert trained.relpath == str(qat.relative_to(work))
    errors = [
        {"layer": "blocks.0.ff1.w1", "gain": 0.95, "relative_error": 0.12, "residual": 0.1, "clipped": 0.001},
        {"layer": "blocks.0.ff1.w2", "gain": 0.97, "relative_error": 0.08, "residual": 0.07, "clipped": 0.02},
        {"layer": "mean", "gain": 0.96, "relative_error": 0.10, "residual": 0.085, "clipped": 0.0105},
    ]
    chip = Output("memsim", "memsim", "noisy", {"crossbar": {"device": "synaptogen"}, "seed": 1}, {"model": trained})
    records = Records(work)
    job = Job(work, chip, {"model": records.require(trained.relpath).run}, forced=False)
    job.begin()
    job.commit(
        {SUMMARY_FILE: {"config": {}, "layers": [], "layer_errors": errors, "total": {"read_disturb_pct": 19.5}}}
    )
    for instance, count in enumerate((30, 32)):
        decode(work, trained, spread(count), chip=chip, instance=instance)
    write_report([work], tmp_path / "out", "budget")
    table = (tmp_path / "out" / "RESULTS.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("|m-3.0 noisy|"))
    assert row.endswith("|0.1000|0.9600|0.0850|blocks.0.ff1.w1 (0.1200)|blocks.0.ff1.w2 (2.00%)|19.5 %|n/a|")
    assert "|15.50|+40.9 % [" in row
    assert "|m-3.0 my chip|13.00|+18.2 % [" in table and "|n/a|n/a|n/a|n/a|n/a|n/a|" in table  # no summary: n/a
    assert (tmp_path / "out" / "chips.png").is_file()


def test_no_budget_chart_for_a_single_chip(work, tmp_path):
    write_report([work], tmp_path / "out", "one chip")
    assert not (tmp_path / "out" / "chips.png").exists()


def test_a_multi_level_chip_gets_its_cost_row_and_level_histogram(work, tmp_path):
    import torch
    from torch import nn

    import memsim

    trained = Output("train", "exp", "m-3.0", {"quant": {"weight_bits": 3.0}, "train": {"lr": 1e-3}})
    config = memsim.CrossbarConfig(levels_per_cell=4)
    layers = memsim.convert(nn.Sequential(nn.Linear(128, 16)), config, torch.Generator().manual_seed(0))
    levels = memsim.level_statistics(layers)
    assert levels is not None
    chip = Output("memsim", "memsim", "four", {"crossbar": {"levels_per_cell": 4}, "seed": 1}, {"model": trained})
    job = Job(work, chip, {"model": Records(work).require(trained.relpath).run}, forced=False)
    job.begin()
    summary = {
        "config": {"levels_per_cell": 4, "verify_tolerance": 0.25},
        "layers": memsim.summary(layers)[:-1],
        "total": memsim.summary(layers)[-1],
        "adc_conversions_per_second_of_audio": 1000,
        "levels": levels,
    }
    job.commit({SUMMARY_FILE: summary})
    decode(work, trained, spread(30), chip=chip, instance=0)
    write_report([work], tmp_path / "out", "levels")
    table = (tmp_path / "out" / "RESULTS.md").read_text()
    pulses = levels["pulses"]
    failed = levels["failed_by_level"]
    row = next(line for line in table.splitlines() if line.startswith("|m-3.0 four|4|0.25|3 (1)|"))
    assert f"|{2 * 128 * 128:,}|1|1,000|{pulses['pulses_mean']:.1f} / {pulses['pulses_p99']} / " in row
    assert f"|{sum(failed)} ({', '.join(map(str, failed))})|15.00|" in row
    assert (tmp_path / "out" / "levels-m-3.0-four.png").is_file()


def priced_chip(
    work: Path,
    name: str,
    adcs: list[tuple[int, int]],
    chip_uj: float,
    errors: int,
    dev_errors: int | None = None,
    trained: Output | None = None,
) -> None:
    """A w3 chip of two layers with the given ADCs, its summary priced at chip_uj per second, one instance
    decoded on test (and on dev, with dev_errors); of the `work` fixture's QAT model unless `trained` is given."""
    import memsim

    trained = trained or Output("train", "exp", "m-3.0", {"quant": {"weight_bits": 3.0}, "train": {"lr": 1e-3}})
    chip = Output("memsim", "memsim", name, {"crossbar": {"adcs": adcs}, "seed": 1}, {"model": trained})
    rows = [{"layer": f"l{i}", "adc": list(adc), "adc_conversions": 10} for i, adc in enumerate(adcs)]
    parts = {
        "crossbar": 1.0,
        "dac": 2.0,
        "adc": chip_uj - 3.5,
        "accumulate": 0.5,
        "correction": 0.0,
        "chip": chip_uj,
        "chip_low": chip_uj / 2,
        "chip_high": chip_uj * 2,
        "digital": 30.0,
        "digital_dram": 600.0,
    }
    idealized = [{"layer": "total", "adc_idealized": max(p + r for p, r in adcs) > 12}]
    summary = {
        "config": {"dac_bits": 8},
        "layers": rows,
        "total": {"layer": "total"},
        "energy": {
            "costs": dataclasses.asdict(memsim.EnergyCosts()),
            "per_second_of_audio_uj": parts,
            "layers": idealized,
        },
    }
    job = Job(work, chip, {"model": Records(work).require(trained.relpath).run}, forced=False)
    job.begin()
    job.commit({SUMMARY_FILE: summary})
    decode(work, trained, spread(errors), chip=chip, instance=0)
    if dev_errors is not None:
        decode(work, trained, spread(dev_errors), chip=chip, instance=0, split="dev")


def test_the_cheapest_chip_is_chosen_on_dev_and_reported_on_test(work, tmp_path):
    priced_chip(work, "high", [(8, 10), (8, 10)], 1000.0, 24, dev_errors=24)
    priced_chip(work, "low", [(4, 4), (4, 4)], 10.0, 26, dev_errors=30)  # on dev beyond 10 % of 24 errors
    priced_chip(work, "auto8", [(5, 3), (6, 2)], 9.0, 40, dev_errors=25)  # on test beyond
    write_report([work], tmp_path / "out", "converters")
    table = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "- m-3.0, chosen on dev: the (8, 10) chip (high) has WER 12.00 at 1,000 uJ/s;" in table
    assert (
        "is auto8 (ADC auto 8: range 2-3): WER 12.50 at 9.00 uJ/s, 111x less energy. "
        "On test: WER 12.00 and 20.00 (+66.7 % relative)." in table
    )


def test_converter_settings_are_priced_and_the_cheapest_near_the_reference_is_named(work, tmp_path):
    priced_chip(work, "high", [(8, 10), (8, 10)], 1000.0, 24)
    priced_chip(work, "low", [(4, 4), (4, 4)], 10.0, 26)  # within 10 % of 24 errors
    priced_chip(work, "auto8", [(5, 3), (6, 2)], 9.0, 40)
    write_report([work], tmp_path / "out", "converters")
    table = (tmp_path / "out" / "RESULTS.md").read_text()
    # 30 uJ/s digital against 10 (5-20) on the chip: 3x less, 1.5x-6x over the cost bounds; 60x against DRAM
    assert (
        "|m-3.0 low|amplitude|(4, 4)|8|1.00|2.00|6.50|0.500|0.00|10.0 [5.00-20.0]|30.0 / 600|3x [1.5-6] / 60x|13.00|"
        in table
    )
    assert "|m-3.0 high|amplitude|(8, 10) *|8|" in table and "\\* an ADC of more than 12 bits" in table
    assert "|m-3.0 auto8|amplitude|auto 8: range 2-3|8|" in table
    assert (
        "- m-3.0, chosen on test: the (8, 10) chip (high) has WER 12.00 at 1,000 uJ/s; the cheapest chip within 10 % "
        "relative " in table
    )
    assert "is low (ADC (4, 4)): WER 13.00 at 10.0 uJ/s, 100x less energy." in table
    assert (tmp_path / "out" / "adc_heatmap.png").is_file() and (tmp_path / "out" / "wer_vs_energy.png").is_file()


def test_the_pareto_front_keeps_what_no_other_point_beats():
    from asr.reports.energy import pareto_front

    points = [(10.0, 5.0), (1.0, 9.0), (5.0, 4.0), (2.0, 9.5), (20.0, 4.0)]
    assert pareto_front(points) == [(1.0, 9.0), (5.0, 4.0)]


def test_results_open_with_one_compact_table_of_every_model(work, tmp_path):
    """Digital rows, one row per chip, and one row per family of chips whose names differ only in numbers."""
    priced_chip(work, "adc8.10", [(8, 10), (8, 10)], 1000.0, 24)
    priced_chip(work, "adc4.4", [(4, 4), (4, 4)], 10.0, 26)
    write_report([work], tmp_path / "out", "glance")
    block = (tmp_path / "out" / "RESULTS.md").read_text().split("## At a glance")[1].split("\n## ")[0]
    rows = [line for line in block.splitlines() if line.startswith("|m-")]
    assert rows == [
        "|m-None|float|-|10.00|-|",
        "|m-None|float (decode.beam_size=10)|-|15.00|-|",
        "|m-3.0|digital QAT|-|11.00|-|",
        "|m-3.0|2 chips adc#.#|-|12.00-13.00|+9.1 % to +18.2 %|",
        "|m-3.0|chip my chip|-|13.00 +- 1.00|" + rows[-1].split("|")[-2] + "|",
    ]
    assert rows[-1].split("|")[-2].startswith("+18.2 % [")


def test_a_report_can_hold_the_results_of_one_prepared_corpus_only(tmp_path):
    work = tmp_path / "work"
    float_model = model(work, None)
    corpora = [made(work, Output("prepare", "manifests", "mini", {"minutes": m})) for m in (10, 40)]
    for corpus, errors in zip(corpora, (20, 30), strict=True):
        settings = {"split": "test", "method": "beam", "beam_size": 100, "minutes": corpus.settings["minutes"]}
        inputs = {"model": float_model, "manifests": corpus}
        made(work, Output("decode", "decode", "beam", settings, inputs, (float_model.name,)), spread(errors))
    groups = write_report([work], tmp_path / "out", "one corpus", manifests=corpora[1].relpath)
    assert [g.wers for g in groups] == [[15.0]]  # 30 errors in 200 words: the 40-minute corpus's decode alone
    with pytest.raises(UserError, match="no current decode results"):
        write_report([work], tmp_path / "none", "no corpus", manifests="manifests/elsewhere")


def test_allocated_chips_stand_beside_the_uniform_chips_and_their_front(work, tmp_path):
    priced_chip(work, "high", [(8, 10), (8, 10)], 1000.0, 24)
    priced_chip(work, "mid", [(6, 6), (6, 6)], 100.0, 30)  # dearer and worse than low: off the front
    priced_chip(work, "low", [(4, 4), (4, 4)], 10.0, 26)
    priced_chip(work, "low-alloc1x", [(4, 4), (2, 6)], 10.0, 23)
    # an allocation that changed bits: a model of its own, fine-tuned from the uniform one, held against it
    uniform = Output("train", "exp", "m-3.0", {"quant": {"weight_bits": 3.0}, "train": {"lr": 1e-3}})
    start = {"path": f"{uniform.relpath}/final.pt", "sha256": "0" * 64}
    tuned = Output("train", "exp", "m-3.0-alloc2x", {"quant": {"weight_bits": 3.0}, "init_from": start})
    made(work, Output(tuned.stage, tuned.kind, tuned.label, tuned.settings, notes={"baseline": uniform.relpath}))
    priced_chip(work, "mixed-alloc2x", [(4, 4), (4, 6)], 20.0, 22, trained=tuned)
    write_report([work], tmp_path / "out", "allocation")
    section = (tmp_path / "out" / "RESULTS.md").read_text().split("## Mixed precision against uniform chips")[1]
    rows = [line for line in section.split("\n## ")[0].splitlines() if line.startswith("|m-3.0")]
    assert [row.split("|")[2] for row in rows] == ["low", "low-alloc1x", "mixed-alloc2x", "mid", "high"]  # by energy
    kinds = [row.split("|")[-2] for row in rows]
    assert kinds == ["uniform, on the front", "allocated", "allocated", "uniform", "uniform, on the front"]
    assert "|10.00|11.50|+4.5 % [" in rows[1]  # 23 errors against the QAT model's 22
    assert rows[2].startswith("|m-3.0-alloc2x|") and "|20.00|11.00|+0.0 % [" in rows[2]  # the same uniform model
    assert (tmp_path / "out" / "frontier.png").is_file()


def test_chips_read_after_programming_are_reported_over_time(work, tmp_path):
    qat = next(p for p in (work / "exp").iterdir() if p.name.startswith("m-3.0"))
    trained = Output("train", "exp", "m-3.0", {"quant": {"weight_bits": 3.0}, "train": {"lr": 1e-3}})
    assert trained.relpath == str(qat.relative_to(work))
    for read_time, errors in ((3600.0, (24, 26)), (86400.0, (30, 34))):
        crossbar = {"device": "synaptogen", "read_time": read_time, "drift_compensation": "global"}
        chip = made(
            work, Output("memsim", "memsim", f"t{read_time:g}", {"crossbar": crossbar, "seed": 1}, {"model": trained})
        )
        for instance, count in enumerate(errors):
            decode(work, trained, spread(count), chip=chip, instance=instance)
    write_report([work], tmp_path / "out", "aging")
    table = (tmp_path / "out" / "RESULTS.md").read_text()
    section = table.split("## Chips over time after programming")[1].split("\n## ")[0]
    series = "m-3.0: relaxation wan2022, levels_per_cell 2, drift_compensation global"
    assert f"|{series}|1 h|2|12.50|+13.6 % [" in section
    assert f"|{series}|1 day|2|16.00|+45.5 % [" in section
    assert "my chip" not in section  # read at programming: not a point in time
    assert (tmp_path / "out" / "wer_over_time.png").is_file()


def test_chips_with_read_disturb_are_reported_over_the_passes_read_before_decoding(work, tmp_path):
    trained = Output("train", "exp", "m-3.0", {"quant": {"weight_bits": 3.0}, "train": {"lr": 1e-3}})
    for passes, errors in ((0, (24, 26)), (10, (30, 30))):
        settings = {"crossbar": {"device": "synaptogen", "read_disturb": True}, "seed": 1, "read_passes": passes}
        chip = made(work, Output("memsim", "memsim", f"p{passes}", settings, {"model": trained}))
        for instance, count in enumerate(errors):
            decode(work, trained, spread(count), chip=chip, instance=instance)
    write_report([work], tmp_path / "out", "disturb")
    section = (tmp_path / "out" / "RESULTS.md").read_text().split("## Chips over passes of reads")[1].split("\n## ")[0]
    assert "|m-3.0: v_read 0.6, input_scheme amplitude|0|2|12.50|" in section
    assert "|m-3.0: v_read 0.6, input_scheme amplitude|10|2|15.00|+36.4 % [" in section
    assert (tmp_path / "out" / "wer_over_passes.png").is_file()


def test_no_section_of_chips_in_use_without_chips_read_later_or_disturbed(work, tmp_path):
    write_report([work], tmp_path / "out", "fresh chips")
    assert "## Chips over" not in (tmp_path / "out" / "RESULTS.md").read_text()
    assert (
        not (tmp_path / "out" / "wer_over_time.png").exists()
        and not (tmp_path / "out" / "wer_over_passes.png").exists()
    )
