"""No silently wrong model: concurrent runs in one work_dir, kill-and-resume, corrupt and edited files, and
settings checked before the first stage. Every scenario runs on the tiny corpus with a one-block model."""

import argparse
import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from asr import checkpoint, settings, train, transcribe
from asr.checkpoint import FINAL
from asr.data import mini_corpus
from asr.data.features import FeatureSettings
from asr.data.loader import LoaderSettings, split_loader
from asr.decode import HYPS_FILE, SCORE_FILE
from asr.errors import CorruptFile, UserError
from asr.pipeline import graph, runner
from asr.quant import QuantConfig
from asr.records import RECORD
from asr.reports.document import write_report
from asr.tokenizer import Tokenizer
from asr.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
TRAINING = ["train.max_steps=12", "train.checkpoint_every=2", "train.average_last=2", "+qat_train.max_steps=3"]
RECIPE = ["memsim.instances=1", "decode.beam_size=8", "decode.splits=[test]"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory, tiny_recipe_overrides, make_cfg):
    """A work dir through every stage once, undisturbed: (work_dir, the overrides without work_dir)."""
    work = tmp_path_factory.mktemp("clean")
    overrides = [o for o in tiny_recipe_overrides(work) if not o.startswith("work_dir=")] + TRAINING + RECIPE
    runner.run(make_cfg(f"work_dir={work}", *overrides))
    return work, overrides


@pytest.fixture
def copy(clean, tmp_path, make_cfg):
    """A copy of the clean work dir to damage: (its path, run(*more) that runs the recipe on it, s)."""
    work = tmp_path / "work"
    shutil.copytree(clean[0], work)
    s = settings.load(make_cfg(f"work_dir={work}", *clean[1]))
    return work, lambda *more: runner.run(make_cfg(f"work_dir={work}", *clean[1], *more)), s


def weights(path: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(path)["model"]


def same_weights(a: Path, b: Path) -> bool:
    first, second = weights(a), weights(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def float_final(work: Path, s) -> Path:
    return work / graph.model_output(s, quantized=False).relpath / FINAL


def qat_folder(work: Path, s) -> Path:
    return work / graph.model_output(s, quantized=True).relpath


def a_decode(work: Path, s) -> Path:
    return work / graph.decodes(s, graph.model_output(s, quantized=True))[0].relpath


def script(work: Path, overrides: list[str], *more: str) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "scripts" / "run.py"), f"work_dir={work}", *overrides, *more]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)


# --- two processes, one work_dir ---------------------------------------------------------------------------


def test_two_concurrent_runs_in_one_work_dir_end_as_one_run(clean, tmp_path, make_cfg):
    """Both exit 0; one makes each output, the other waits and reuses it (a fresh corpus cache: they share the
    synthesis too); the float model is bit-identical to an undisturbed run's, and its log has no step twice."""
    work = tmp_path / "work"
    overrides = [o for o in clean[1] if not o.startswith("data.synth.cache_dir=")] + [
        f"data.synth.cache_dir={tmp_path / 'cache'}",
        "stages=[prepare,tokenizer,cmvn,train_float]",
    ]
    processes = [script(work, overrides) for _ in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], logs
    assert "another process" in "".join(logs)  # one of them waited for the other's lock
    s = settings.load(make_cfg(f"work_dir={work}", *overrides))
    assert same_weights(float_final(work, s), float_final(clean[0], s))
    with open(float_final(work, s).parent / "log.csv") as f:
        logged = [(row["split"], row["step"]) for row in csv.DictReader(f)]
    with open(float_final(clean[0], s).parent / "log.csv") as f:
        assert logged == [(row["split"], row["step"]) for row in csv.DictReader(f)]  # no step twice


def test_a_run_whose_holder_died_is_resumed_from_its_checkpoints(clean, tmp_path, make_cfg, caplog):
    """A process killed (SIGKILL) while it trains leaves its lock free: the next run resumes the model from the
    newest checkpoint, and the model is the undisturbed run's, bit for bit."""
    work = tmp_path / "work"
    overrides = [*clean[1], "stages=[prepare,tokenizer,cmvn,train_float]"]
    s = settings.load(make_cfg(f"work_dir={work}", *overrides))
    folder = float_final(work, s).parent
    process = script(work, overrides)
    deadline = time.monotonic() + 300
    while not checkpoint.checkpoints(folder) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    if (folder / RECORD).is_file():
        pytest.skip("the run finished before it could be killed")
    assert checkpoint.checkpoints(folder)
    with caplog.at_level(logging.INFO):
        runner.run(make_cfg(f"work_dir={work}", *overrides))
    assert "resumed from" in caplog.text
    assert same_weights(float_final(work, s), float_final(clean[0], s))


# --- kill and resume ---------------------------------------------------------------------------------------


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def training(clean, make_cfg):
    """train(out_dir, workers, quantized=False, fresh=True): the trainer on the tiny corpus's prepared data,
    3 epochs with a real DataLoader (augmentation on), and the epoch length in batches."""
    work, overrides = clean
    s = settings.load(make_cfg(f"work_dir={work}", *overrides))
    files = graph.data_files(s)
    model_config = s.model.build(vocab_size=Tokenizer(files.tokenizer).vocab_size, n_mels=80)
    config = TrainConfig(
        optimizer="radam", lr=3e-3, epochs=3, checkpoint_every=2, keep_checkpoints=3, average_last=2, log_every=1
    )

    def run(out_dir: Path, workers: int, quantized: bool = False, fresh: bool = True) -> Path:
        train.train_model(
            model_config,
            QuantConfig(weight_bits=3) if quantized else QuantConfig(weight_bits=None),
            config,
            files=files,
            features=FeatureSettings(),
            loader=LoaderSettings(max_seconds=4, num_workers=workers),
            out_dir=out_dir,
            init_from=float_final(work, s) if quantized else None,
            fresh=fresh,
        )
        return out_dir / FINAL

    epoch = len(split_loader(files, "train", FeatureSettings(), max_seconds=4, num_workers=0, seed=0, train=True))
    assert epoch >= 3
    return run, epoch


@pytest.fixture(scope="module")
def straight(training, tmp_path_factory):
    """The final weights of uninterrupted runs, by (workers, quantized)."""
    run, _ = training
    cache: dict[tuple[int, bool], Path] = {}

    def get(workers: int, quantized: bool) -> Path:
        if (workers, quantized) not in cache:
            cache[workers, quantized] = run(tmp_path_factory.mktemp("straight"), workers, quantized)
        return cache[workers, quantized]

    return get


def test_augmentation_is_the_same_with_any_number_of_loader_workers(straight):
    assert same_weights(straight(0, False), straight(2, False))


def kill_at_step(monkeypatch, step: int) -> None:
    """The process 'dies' just before training step `step` + 1."""
    real = train._Run.train_step

    def train_step(self, batch):
        if self.step == step:
            raise Killed
        return real(self, batch)

    monkeypatch.setattr(train._Run, "train_step", train_step)


def kill_after_epoch_end(monkeypatch, epoch: int) -> None:
    """The process 'dies' just after writing the checkpoint that ends epoch `epoch`."""
    real = checkpoint.save

    def save(obj, path):
        real(obj, path)
        if path.name.endswith(f"-epoch-{epoch:04d}.pt"):
            raise Killed

    monkeypatch.setattr(train.checkpoint, "save", save)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("point", ["mid-epoch", "after an epoch end", "during QAT"])
def test_a_killed_and_resumed_run_is_bit_identical(training, straight, tmp_path, monkeypatch, workers, point):
    run, epoch = training
    quantized = point == "during QAT"
    with monkeypatch.context() as patch:
        if point == "after an epoch end":
            kill_after_epoch_end(patch, 1)
        else:
            kill_at_step(patch, epoch + 3)
        with pytest.raises(Killed):
            run(tmp_path, workers, quantized)
    newest = checkpoint.checkpoints(tmp_path)[-1]
    assert ("-epoch-" in newest.name) == (point == "after an epoch end"), newest.name
    resumed = run(tmp_path, workers, quantized, fresh=False)
    assert same_weights(resumed, straight(workers, quantized))
    reference = (straight(workers, quantized).parent / "log.csv").read_text().splitlines()
    logged = (tmp_path / "log.csv").read_text().splitlines()
    valid = [row.split(",")[:4] for row in reference if ",valid," in row]
    assert [row.split(",")[:4] for row in logged if ",valid," in row] == valid  # validation losses too


def test_a_truncated_newest_checkpoint_is_named_and_the_one_before_it_resumes(
    training, straight, tmp_path, monkeypatch, caplog
):
    run, epoch = training
    with monkeypatch.context() as patch:
        kill_at_step(patch, epoch + 3)
        with pytest.raises(Killed):
            run(tmp_path, 0)
    newest = checkpoint.checkpoints(tmp_path)[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING):
        resumed = run(tmp_path, 0, fresh=False)
    assert f"{newest}: not a readable PyTorch checkpoint" in caplog.text
    assert (tmp_path / (newest.name + checkpoint.UNREADABLE_SUFFIX)).is_file()
    assert same_weights(resumed, straight(0, False))


# --- corrupt, edited and missing files ------------------------------------------------------------------


def test_a_truncated_final_checkpoint_is_named_and_the_model_made_again(copy, clean, caplog):
    work, run, s = copy
    final = qat_folder(work, s) / FINAL
    final.write_bytes(final.read_bytes()[:500])
    with caplog.at_level(logging.WARNING):
        run()
    assert f"{qat_folder(work, s)} does not match its record: {FINAL} has 500 bytes" in caplog.text
    assert same_weights(final, qat_folder(clean[0], s) / FINAL)
    assert (a_decode(work, s) / HYPS_FILE).read_bytes() == (a_decode(clean[0], s) / HYPS_FILE).read_bytes()


def test_loading_a_truncated_checkpoint_names_the_file(copy):
    work, _, s = copy
    final = qat_folder(work, s) / FINAL
    final.write_bytes(final.read_bytes()[:500])
    with pytest.raises(CorruptFile, match=f"{final}: not a readable PyTorch checkpoint"):
        checkpoint.load_model(final)


def test_an_edited_hyps_file_is_left_out_of_the_report_and_made_again(copy, clean, caplog):
    work, run, s = copy
    hyps = a_decode(work, s) / HYPS_FILE
    lines = [json.loads(line) for line in hyps.read_text().splitlines()]
    lines[0]["sub"] += 5  # still valid JSON, and still a plausible count
    hyps.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with caplog.at_level(logging.WARNING):
        write_report([work], work / "report", "test")
    assert f"{hyps.parent} does not match its record: {HYPS_FILE} has" in caplog.text
    assert str(hyps.parent) not in (work / "report" / "results.csv").read_text()
    assert "stale result(s) left out" in (work / "report" / "RESULTS.md").read_text()
    run("stages=[decode,report]")
    assert hyps.read_bytes() == (a_decode(clean[0], s) / HYPS_FILE).read_bytes()


def without_file_list(folder: Path) -> None:
    """Make the folder's record look like one written before records listed their files."""
    record = json.loads((folder / RECORD).read_text())
    del record["files"]
    (folder / RECORD).write_text(json.dumps(record))


@pytest.mark.parametrize("edited", [HYPS_FILE, SCORE_FILE])
def test_a_decode_whose_files_disagree_is_left_out_naming_what_differs(copy, caplog, edited):
    """Where the record cannot tell (made before records listed their files), the report still finds a
    score.json or a hyps.jsonl line that disagrees with the utterances' references and hypotheses."""
    work, _, s = copy
    folder = a_decode(work, s)
    without_file_list(folder)
    if edited == HYPS_FILE:
        lines = [json.loads(line) for line in (folder / HYPS_FILE).read_text().splitlines()]
        lines[1]["del"] += 3
        (folder / HYPS_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))
        expected = "hyps.jsonl line 2: counts"
    else:
        score = json.loads((folder / SCORE_FILE).read_text())
        score["ins"] += 10 * score["words"]
        (folder / SCORE_FILE).write_text(json.dumps(score))
        expected = "score.json: WER"
    with caplog.at_level(logging.WARNING):
        write_report([work], work / "report", "test")
    assert f"{folder}: left out of the report: {expected}" in caplog.text
    markdown = (work / "report" / "RESULTS.md").read_text()
    assert "1 result(s) left out because their files disagree" in markdown and str(folder) in markdown


def test_a_malformed_hyps_line_names_the_file_and_line(copy, caplog):
    work, _, s = copy
    folder = a_decode(work, s)
    without_file_list(folder)
    text = (folder / HYPS_FILE).read_text().splitlines()
    (folder / HYPS_FILE).write_text("\n".join([text[0], text[1][:-5], *text[2:]]) + "\n")
    with caplog.at_level(logging.WARNING):
        write_report([work], work / "report", "test")
    assert f"{folder / HYPS_FILE}, line 2: not valid JSON" in caplog.text


def test_a_record_without_a_file_list_gets_one_on_reuse_and_nothing_is_made_again(copy, caplog):
    work, run, s = copy
    folder = qat_folder(work, s)
    run_id = json.loads((folder / RECORD).read_text())["run"]
    without_file_list(folder)
    with caplog.at_level(logging.INFO):
        run("stages=[train,decode,memsim]")
    record = json.loads((folder / RECORD).read_text())
    assert record["run"] == run_id and FINAL in record["files"] and "not verified" in record["files_listed_on_reuse"]
    assert "stage train: done already" in caplog.text and "stage memsim: done already" in caplog.text


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_deleted_or_truncated_record_makes_its_output_again(copy, clean, caplog, damage):
    work, run, s = copy
    folder = a_decode(work, s)
    if damage == "deleted":
        (folder / RECORD).unlink()
    else:
        (folder / RECORD).write_text((folder / RECORD).read_text()[:40])
    with caplog.at_level(logging.WARNING):
        run("stages=[decode]")
    if damage == "truncated":
        assert f"{folder / RECORD}, line" in caplog.text and "taken as missing" in caplog.text
    assert json.loads((folder / RECORD).read_text())["files"][HYPS_FILE]["size"] > 0
    assert (folder / HYPS_FILE).read_bytes() == (a_decode(clean[0], s) / HYPS_FILE).read_bytes()


def test_a_saved_chip_that_is_not_a_chip_is_named(clean, make_cfg, tmp_path):
    s = settings.load(make_cfg(f"work_dir={clean[0]}", *clean[1]))
    trained = transcribe.TrainedModel.open(qat_folder(clean[0], s))
    text = tmp_path / "notes.txt"
    text.write_text("hello world\n")
    with pytest.raises(UserError, match=f"{text}: cannot read a saved chip: not a readable PyTorch checkpoint"):
        transcribe.load_chip(text, trained, None, "cpu")


# --- settings checked before the first stage ---------------------------------------------------------------


def test_a_qat_train_value_of_the_wrong_type_names_the_setting_and_its_type(clean, make_cfg):
    with pytest.raises(UserError, match=r"qat_train.epochs: 'abc' is not a value of type int"):
        settings.load(make_cfg(f"work_dir={clean[0]}", *clean[1], "qat_train.epochs=abc"))
    s = settings.load(make_cfg(f"work_dir={clean[0]}", *clean[1], "qat_train.epochs=5"))
    assert s.train_config(True).epochs == 5


@pytest.mark.parametrize("setting", ["data.name", "memsim.name", "quant.name"])
def test_empty_names_are_refused(clean, make_cfg, setting):
    with pytest.raises(UserError, match=f"{setting} must be a non-empty name"):
        settings.load(make_cfg(f"work_dir={clean[0]}", *clean[1], f"{setting}=''"))


def test_a_bad_or_unsafe_init_checkpoint_is_refused_before_any_stage(clean, make_cfg, tmp_path, monkeypatch):
    stages: list[str] = []
    monkeypatch.setattr(runner, "_make", lambda s, name, stage, jobs: stages.append(name))
    text, unsafe = tmp_path / "model.pt", tmp_path / "unsafe.pt"
    text.write_text("not a checkpoint")
    torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=1)}, unsafe)
    for path, message in ((text, "not a readable PyTorch checkpoint"), (unsafe, "could run code")):
        with pytest.raises(UserError, match=f"qat_train.init_from: {path}: .*{message}"):
            runner.run(make_cfg(f"work_dir={tmp_path / 'work'}", *clean[1], f"qat_train.init_from={path}"))
    assert stages == []


def test_the_recipe_without_its_extra_says_what_to_install():
    hide = (
        "import importlib.util as u; find = u.find_spec; "
        "u.find_spec = lambda name, *a: None if name == 'soundfile' else find(name, *a); import asr"
    )
    result = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0
    assert "soundfile is not installed: pip install 'memristor-asr[asr]'" in result.stderr


# --- the corpus ---------------------------------------------------------------------------------------------


def test_espeak_outputs_are_taken_once_two_calls_agree():
    outputs = iter([b"odd", b"usual", b"usual"])
    assert mini_corpus.agreed_output(lambda: next(outputs), "x") == b"usual"
    outputs = iter([b"usual", b"odd", b"usual"])
    assert mini_corpus.agreed_output(lambda: next(outputs), "x") == b"usual"
    counter = iter(range(100))
    with pytest.raises(UserError, match="5 different outputs for the same input: x"):
        mini_corpus.agreed_output(lambda: str(next(counter)).encode(), "x")


def test_the_corpus_is_byte_identical_when_synthesized_under_a_competing_load(tiny_mini_corpus, tiny_splits, tmp_path):
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        again = mini_corpus.build(tmp_path, seed=0, splits=tiny_splits)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    files = sorted(p.relative_to(tiny_mini_corpus) for p in tiny_mini_corpus.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((tiny_mini_corpus / f).read_bytes() == (again / f).read_bytes() for f in files)
