import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asr.data import tedlium
from asr.errors import UserError
from asr.files import read_jsonl

ROOT = Path(__file__).resolve().parents[2]


def record(corpus, split, talk, start, end, text, speaker=None, seg=None):
    seg_start, seg_end = seg or (start, end)
    return {
        "id": f"{talk}-{round(start * 100):07d}-{round(end * 100):07d}",
        "audio": str((corpus / split / "sph" / f"{talk}.sph").resolve()),
        "start": seg_start,
        "end": seg_end,
        "duration": round(seg_end - seg_start, 3),
        "speaker": speaker or talk,
        "text": text,
    }


def test_manifests_follow_tedlium_conventions(fake_corpus, tmp_path, caplog):
    out = tmp_path / "manifests"
    opts = tedlium.Options(train_min_duration=0.2, train_max_duration=30)
    with caplog.at_level(logging.WARNING):
        stats = tedlium.prepare(fake_corpus, out, opts)
    a, b, c = "TalkA_2010X", "TalkB_2012", "TalkC_2013"
    assert read_jsonl(out / "train.jsonl") == [
        record(fake_corpus, "train", a, 0.5, 2.0, "it's the story"),
        record(fake_corpus, "train", a, 2.5, 4.0, "we don't know <unk> yet"),
        # 4.00-4.10 is too short and 5.00-6.00 has no words: both dropped from train only
        record(fake_corpus, "train", a, 8.0, 10.3, "and then", seg=(8.0, 10.0)),  # clipped to the audio
    ]
    assert read_jsonl(out / "dev.jsonl") == [
        record(fake_corpus, "dev", b, 1.0, 3.0, ""),  # dev/test keep every scored segment
        record(fake_corpus, "dev", b, 3.0, 4.0, "they're here"),
    ]
    assert read_jsonl(out / "test.jsonl") == [record(fake_corpus, "test", c, 0.0, 1.0, "a test")]
    assert stats["train"] == {
        "talks": 1,
        "segments": 3,
        "words": 10,
        "hours": round(5.0 / 3600, 4),
        "dropped_ignored": 1,
        "dropped_empty": 1,
        "dropped_too_short": 1,
        "dropped_too_long": 0,
        "clipped": 1,
    }
    assert stats["dev"]["segments"] == 2 and stats["dev"]["words"] == 2
    assert json.loads((out / "stats.json").read_text()) == stats
    assert "clipped 1 segment" in caplog.text and "line 6" in caplog.text


def test_segment_padding_stays_inside_the_audio(fake_corpus, tmp_path):
    tedlium.prepare(fake_corpus, tmp_path, tedlium.Options(segment_pad=0.6))
    test = read_jsonl(tmp_path / "test.jsonl")[0]
    assert (test["start"], test["end"]) == (0.0, 1.6)  # 0.00-1.00 padded, cut at the start of the talk
    assert read_jsonl(tmp_path / "train.jsonl")[0]["start"] == pytest.approx(0.0)


def test_preparation_is_idempotent(fake_corpus, tmp_path):
    out = tmp_path / "manifests"
    tedlium.prepare(fake_corpus, out)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    tedlium.prepare(fake_corpus, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def _missing_corpus(corpus):
    return corpus.parent / "nowhere", "nowhere"


def _missing_audio(corpus):
    (corpus / "dev" / "sph" / "TalkB_2012.sph").unlink()
    return corpus, "TalkB_2012.stm line 1: audio file not found"


def _unreadable_audio(corpus):
    (corpus / "test" / "sph" / "TalkC_2013.sph").write_bytes(b"not a sphere file at all")
    return corpus, "TalkC_2013.sph: cannot read audio"


def _malformed_line(corpus):
    stm = corpus / "dev" / "stm" / "TalkB_2012.stm"
    stm.write_text(stm.read_text() + "TalkB_2012 1 TalkB_2012 4.00\n")
    return corpus, "TalkB_2012.stm line 3: malformed STM line"


def _bad_times(corpus):
    stm = corpus / "dev" / "stm" / "TalkB_2012.stm"
    stm.write_text("TalkB_2012 1 TalkB_2012 5.00 4.00 <F0_M> backwards\n")
    return corpus, "TalkB_2012.stm line 1: segment times"


def _segment_outside_audio(corpus):
    stm = corpus / "test" / "stm" / "TalkC_2013.stm"
    stm.write_text(stm.read_text() + "TalkC_2013 1 TalkC_2013 12.00 13.00 <F0_F> too late\n")
    return corpus, "TalkC_2013.stm line 2: segment 12.00-13.00 s lies outside its audio"


BAD_INPUTS = [_missing_corpus, _missing_audio, _unreadable_audio, _malformed_line, _bad_times, _segment_outside_audio]


@pytest.mark.parametrize("spoil", BAD_INPUTS, ids=lambda f: f.__name__[1:])
def test_bad_input_names_the_file_and_leaves_no_manifest(fake_corpus, tmp_path, spoil):
    corpus, message = spoil(fake_corpus)
    out = tmp_path / "manifests"
    with pytest.raises(UserError, match=message):
        tedlium.prepare(corpus, out)
    assert not out.exists() or not any(out.iterdir())


def test_command_line_reports_bad_input_without_traceback(fake_corpus, tmp_path):
    _malformed_line(fake_corpus)
    work = tmp_path / "work"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "run.py"),
            "+experiment=tedlium2",
            f"data.corpus_dir={fake_corpus}",
            f"work_dir={work}",
            "stages=[prepare]",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )
    assert result.returncode == 1
    assert "TalkB_2012.stm line 3: malformed STM line" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not list(work.glob("manifests/*/*.jsonl")) and not list(work.rglob("record.json"))
