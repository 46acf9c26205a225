import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from asr.data import grammar, mini_corpus, tedlium
from asr.errors import UserError
from asr.files import read_jsonl

ROOT = Path(__file__).resolve().parents[2]


def test_tree_has_the_tedlium_layout(tiny_mini_corpus, tiny_splits):
    for split, spec in tiny_splits.items():
        sph = sorted((tiny_mini_corpus / split / "sph").glob("*.sph"))
        stm = sorted((tiny_mini_corpus / split / "stm").glob("*.stm"))
        assert len(sph) == len(stm) == spec["talks"]
        assert [p.stem for p in sph] == [p.stem for p in stm]
        for path in sph:
            info = sf.info(str(path))
            assert (info.format, info.samplerate, info.channels, info.subtype) == ("NIST", 16000, 1, "PCM_16")


def test_stm_has_tedlium_labels_and_scoring_gaps(tiny_mini_corpus):
    train = (next((tiny_mini_corpus / "train" / "stm").glob("*.stm"))).read_text().splitlines()
    dev = (next((tiny_mini_corpus / "dev" / "stm").glob("*.stm"))).read_text().splitlines()
    assert all(line.split()[5] in ("<o,f0,male>", "<o,f0,female>", "<o,,unknown>") for line in train)
    assert any(line.split()[5] in ("<F0_M>", "<F0_F>") for line in dev)
    assert train[0].split()[2] == "inter_segment_gap" and train[0].endswith(" ignore_time_segment_in_scoring")


def test_dev_and_test_speakers_never_occur_in_train():
    speakers = mini_corpus.assign_speakers(0, {"train": 120, "dev": 8, "test": 11})
    train = set(speakers["train"])
    assert len(train) == 120
    assert not train & set(speakers["dev"]) and not train & set(speakers["test"])
    assert not set(speakers["dev"]) & set(speakers["test"])


def test_grammar_has_tedlium_quirks_and_a_closed_vocabulary():
    g = grammar.Grammar(random.Random(0))
    sentences = [g.sentence() for _ in range(1000)]
    words = [w for s in sentences for w in s.words]
    assert {"<unk>", "<sil>", "'s", "'t"} <= set(words)
    assert any(w.endswith("(2)") for w in words)
    texts = [tedlium.normalize_words(s.words) for s in sentences]
    vocab = {w for t in texts for w in t.split()}
    assert vocab <= grammar.vocabulary() and 250 <= len(grammar.vocabulary()) <= 500
    assert all(3 <= len(t.split()) <= 17 for t in texts)
    assert "it's" in vocab and "don't" in vocab


def test_same_seed_gives_the_same_corpus_and_the_cache_is_reused(tiny_mini_corpus, tiny_splits, tmp_path, monkeypatch):
    again = mini_corpus.build(tmp_path, seed=0, splits=tiny_splits)
    files = sorted(p.relative_to(tiny_mini_corpus) for p in tiny_mini_corpus.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((tiny_mini_corpus / f).read_bytes() == (again / f).read_bytes() for f in files)

    def no_synthesis(*args):
        raise AssertionError("a cached corpus must not be synthesized again")

    monkeypatch.setattr(mini_corpus, "synthesize", no_synthesis)
    assert mini_corpus.build(tmp_path, seed=0, splits=tiny_splits) == again


def test_a_different_seed_gives_a_different_corpus(tiny_splits):
    assert mini_corpus.corpus_key(0, tiny_splits) != mini_corpus.corpus_key(1, tiny_splits)


def test_missing_espeak_gives_a_clear_message(tmp_path, monkeypatch, tiny_splits):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="espeak-ng is not installed.*apt-get install espeak-ng"):
        mini_corpus.build(tmp_path, seed=0, splits=tiny_splits)


def test_mini_corpus_prepares_like_tedlium(tiny_mini_corpus, tiny_splits, tmp_path):
    stats = tedlium.prepare(tiny_mini_corpus, tmp_path)
    vocab = grammar.vocabulary()
    for split in tiny_splits:
        records = read_jsonl(tmp_path / f"{split}.jsonl")
        assert records and stats[split]["segments"] == len(records)
        assert stats[split]["dropped_ignored"] >= len(records)  # one gap before every utterance
        assert all(set(r["text"].split()) <= vocab for r in records)
        assert all(1.0 < r["duration"] < 10.0 for r in records)


def run_cli(tmp_path, *overrides):
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "run.py"),
            "+experiment=mini",
            f"work_dir={tmp_path / 'work'}",
            f"data.synth.cache_dir={tmp_path / 'cache'}",
            *overrides,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )


def test_command_line_builds_prepares_and_then_skips_finished_stages(tmp_path, tiny_splits):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    sizes = [
        f"data.synth.splits.{split}.{key}={value}" for split, spec in tiny_splits.items() for key, value in spec.items()
    ]
    sizes.append("stages=[prepare,tokenizer,cmvn]")
    first = run_cli(tmp_path, *sizes)
    assert first.returncode == 0, first.stderr
    work = tmp_path / "work"
    (stats,) = (work / "manifests").glob("mini-*/stats.json")
    assert [json.loads(stats.read_text())[s]["talks"] for s in ("train", "dev", "test")] == [2, 1, 1]
    assert list(work.glob("tokenizer/char100-*/sp.model")) and list(work.glob("cmvn/fbank80-*/cmvn.json"))
    second = run_cli(tmp_path, *sizes)
    assert second.returncode == 0 and second.stdout.count("done already") == 3


@pytest.mark.slow
def test_default_mini_corpus_has_the_promised_size(tmp_path):
    """About 1 h of training speech and 10 min each of dev and test, as configs/data/mini.yaml promises."""
    assert run_cli(tmp_path, "stages=[prepare]").returncode == 0
    (path,) = (tmp_path / "work" / "manifests").glob("mini-*/stats.json")
    stats = json.loads(path.read_text())
    assert stats["train"]["talks"] == 120 and 1.0 <= stats["train"]["hours"] <= 1.1
    assert all(10 / 60 <= stats[s]["hours"] <= 11 / 60 for s in ("dev", "test"))
