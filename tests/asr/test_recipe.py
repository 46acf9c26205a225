"""The whole recipe end to end on a few-utterance mini corpus, reports, and bad overrides."""
import csv
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asr import stages
from asr.errors import UserError
from asr.files import write_json
from asr.report import write_report

ROOT = Path(__file__).resolve().parents[2]
TINY_MODEL = ["model.d_model=32", "model.n_layers=1", "model.d_ff=64", "model.n_heads=2", "train.max_steps=3",
              "train.checkpoint_every=1", "train.average_last=2", "loader.num_workers=0", "qat_train.epochs=1"]


def test_all_stages_from_corpus_to_report_then_rerun_skips(tmp_path, tiny_mini_corpus, tiny_splits, make_cfg, caplog):
    sizes = [f"data.synth.splits.{split}.{key}={value}" for split, spec in tiny_splits.items() for key, value in spec.items()]
    overrides = ["+experiment=mini", f"work_dir={tmp_path}", f"data.synth.cache_dir={tiny_mini_corpus.parents[1]}",
                 *sizes, *TINY_MODEL, "memsim.instances=2", "memsim.tile_size=16"]
    stages.run(make_cfg(*overrides))
    report = tmp_path / "report"
    with open(report / "results.csv") as f:
        rows = list(csv.DictReader(f))
    systems = {(r["system"], r["weight_bits"], r["instance"]) for r in rows if r["split"] == "test"}
    assert systems == {("float", "", ""), ("qat", "3.0", ""), ("memsim", "3.0", "0"), ("memsim", "3.0", "1")}
    assert {r["method"] for r in rows} == {"greedy", "beam"} and {r["split"] for r in rows} == {"dev", "test"}
    assert all(int(r["words"]) > 0 for r in rows)
    results = (report / "RESULTS.md").read_text()
    assert "|test|beam|memsim|3.0|high_precision-physical|2|" in results and "git revision" in results
    assert (report / "wer_vs_bits.png").stat().st_size > 1000
    assert (tmp_path / "memsim" / "w3a8" / "high_precision-physical" / "summary.json").is_file()
    caplog.clear()
    caplog.set_level(logging.INFO, logger="asr.stages")
    stages.run(make_cfg(*overrides))
    assert sum("done already" in m for m in caplog.messages) == len(stages.STAGES)
    caplog.clear()
    stages.run(make_cfg(*overrides, "quant.weight_bits=2", "stages=[train_float]"))  # a sweep's next bit width
    assert sum("done already" in m for m in caplog.messages) == 1


def write_scores(work: Path, path: str, words: int, errors: int) -> None:
    write_json(work / path / "score.json", {"snt": 10, "words": words, "corr": words - errors, "sub": errors,
                                            "del": 0, "ins": 0, "err": 100 * errors / words})


def test_report_from_fixed_results(tmp_path):
    work = tmp_path / "work"
    write_scores(work, "decode/float/test/beam", 200, 20)  # 10 %
    write_scores(work, "decode/w3a8/test/beam", 200, 22)  # 11 %
    for instance, errors in enumerate((24, 26, 28)):  # 12, 13, 14 %
        write_scores(work, f"memsim/w3a8/reasonable-paper/instance-{instance}/test/beam", 200, errors)
    rows = write_report([work], tmp_path / "out", "fixed")
    assert len(rows) == 5
    table = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "|test|beam|float||-|1|10|200|10.00|0.00|10.00|10.00|+0.0 %|" in table
    assert "|test|beam|qat|3.0|-|1|10|200|11.00|0.00|11.00|11.00|+10.0 %|" in table
    assert "|test|beam|memsim|3.0|reasonable-paper|3|10|200|13.00|1.00|12.00|14.00|+30.0 %|" in table
    assert "|memsim/w3.0/reasonable-paper/test/beam (3 instances pooled)|30|600|87.0|13.0|0.0|0.0|13.0|" in table
    with open(tmp_path / "out" / "results.csv") as f:
        first = next(csv.DictReader(f))
    assert first == {"system": "float", "weight_bits": "", "chip": "", "split": "test", "method": "beam",
                     "instance": "", "wer": "10.0", "snt": "10", "words": "200", "corr": "180", "sub": "20",
                     "del": "0", "ins": "0"}


def test_report_script_merges_sweep_directories(tmp_path):
    for bits, errors in ((2, 30), (4, 21)):
        write_scores(tmp_path / f"w{bits}", "decode/float/test/greedy", 100, 20)
        write_scores(tmp_path / f"w{bits}", f"decode/w{bits}a8/test/greedy", 100, errors)
    out = tmp_path / "merged"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), str(tmp_path / "w2"), str(tmp_path / "w4"),
                    "--out", str(out)], check=True, capture_output=True)
    table = (out / "RESULTS.md").read_text()
    assert "|qat|2.0|" in table and "|qat|4.0|" in table and (out / "wer_vs_bits.png").is_file()


@pytest.mark.parametrize("override, message", [
    ("quant.weight_bits=2.5", "quant settings: bits must be 1.5"),
    ("memsim.adc=fast", "memsim settings: unknown ADC preset 'fast'"),
    ("memsim.tile_size=0", "CrossbarConfig.tile_size must be a positive integer"),
])
def test_bad_settings_are_refused_before_any_stage(override, message, tmp_path, make_cfg):
    with pytest.raises(UserError, match=message):
        stages.run(make_cfg("+experiment=mini", f"work_dir={tmp_path}", override))
    assert not (tmp_path / "stages").exists()


def test_unknown_key_on_the_command_line_is_one_clear_message(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), "+experiment=mini",
                             f"work_dir={tmp_path}", "quant.wieght_bits=3"], capture_output=True, text=True,
                            env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    assert result.returncode != 0 and "wieght_bits" in result.stderr and "Traceback" not in result.stderr
