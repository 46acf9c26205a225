"""TED-LIUM release 2 preparation: STM transcripts + SPHERE audio -> one JSON-lines manifest per split.

The manifests hold segments (talk audio, start, end) rather than cut audio, so preparation reads only
audio headers and the dataset reads each segment by frame range. Conventions follow Kaldi and ESPnet
(docs/sources.md): scoring-excluded lines dropped, noise tokens and <sil> removed, pronunciation variants
stripped, split contractions joined, <unk> kept.
"""

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from asr.errors import UserError
from asr.files import write_json, write_jsonl

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
SAMPLE_RATE = 16000
IGNORE = "ignore_time_segment_in_scoring"
_VARIANT = re.compile(r"\(\d+\)$")


@dataclass(frozen=True)
class Options:
    """How segments become manifest entries; durations in seconds."""

    segment_pad: float = 0.0  # widen every segment by this much on each side (within its audio)
    clip_tolerance: float = 1.0  # a segment ending at most this far past its audio is clipped, not an error
    train_min_duration: float = 0.0  # training segments outside [min, max] are dropped; dev/test keep all
    train_max_duration: float = float("inf")


@dataclass
class _SplitStats:
    talks: int = 0
    segments: int = 0
    words: int = 0
    seconds: float = 0.0
    ignored: int = 0  # ignore_time_segment_in_scoring lines
    empty: int = 0  # training segments with no words left after normalization
    too_short: int = 0
    too_long: int = 0
    clipped: int = 0  # segments that ran past the end of their audio

    def as_dict(self) -> dict:
        return {
            "talks": self.talks,
            "segments": self.segments,
            "words": self.words,
            "hours": round(self.seconds / 3600, 4),
            "dropped_ignored": self.ignored,
            "dropped_empty": self.empty,
            "dropped_too_short": self.too_short,
            "dropped_too_long": self.too_long,
            "clipped": self.clipped,
        }


def normalize_words(words: list[str]) -> str:
    """Scoring text of an STM transcript: what the recognizer must output and WER compares against."""
    out: list[str] = []
    for word in words:
        if word == "<sil>" or (word.startswith("{") and word.endswith("}")):
            continue
        word = _VARIANT.sub("", word).lower()
        if word.startswith("'") and out:
            out[-1] += word  # TED-LIUM writes "it's" as "it 's"
        else:
            out.append(word)
    return " ".join(out)


def _parse_stm_line(line: str, where: str):
    """(talk, speaker, start, end, words) of one STM line, or None for a line scoring ignores."""
    fields = line.split()
    try:
        talk, _channel, speaker, start_text, end_text, *rest = fields
        start, end = float(start_text), float(end_text)
    except ValueError:
        raise UserError(
            f"{where}: malformed STM line, expected 'talk channel speaker start end <label> words': {line.strip()!r}"
        ) from None
    if not 0 <= start < end:
        raise UserError(f"{where}: segment times must satisfy 0 <= start < end, got {start} {end}")
    if rest and rest[0].startswith("<") and rest[0].endswith(">") and rest[0] not in ("<unk>", "<sil>"):
        rest = rest[1:]  # the label, e.g. <o,f0,male> (train) or <F0_M> (dev, test)
    if rest == [IGNORE]:
        return None
    return talk, speaker, start, end, rest


def _audio_seconds(path: Path, where: str) -> float:
    if not path.is_file():
        raise UserError(f"{where}: audio file not found: {path}")
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as e:
        raise UserError(f"{path}: cannot read audio ({e})") from None
    if info.samplerate != SAMPLE_RATE or info.channels != 1:
        raise UserError(f"{path}: {info.samplerate} Hz, {info.channels} channel(s); expected {SAMPLE_RATE} Hz mono")
    return info.frames / info.samplerate


def _prepare_split(split_dir: Path, split: str, opts: Options):
    stm_dir = split_dir / "stm"
    stms = sorted(stm_dir.glob("*.stm"))
    if not stms:
        raise UserError(f"{stm_dir}: no .stm files (expected TEDLIUM_release2/{split}/stm/<talk>.stm)")
    records, stats, talks = [], _SplitStats(), set()
    first_clip = None
    for stm in tqdm(stms, desc=f"prepare {split}", unit="talk", leave=False):
        durations: dict[str, float] = {}
        try:
            lines = stm.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{stm}: cannot read ({e})") from None
        for lineno, line in enumerate(lines, 1):
            if not line.strip() or line.startswith(";;"):
                continue
            where = f"{stm} line {lineno}"
            parsed = _parse_stm_line(line, where)
            if parsed is None:
                stats.ignored += 1
                continue
            talk, speaker, start, end, words = parsed
            audio = (split_dir / "sph" / f"{talk}.sph").resolve()
            if talk not in durations:
                durations[talk] = _audio_seconds(audio, where)
            total = durations[talk]
            if start >= total or end > total + opts.clip_tolerance:
                raise UserError(
                    f"{where}: segment {start:.2f}-{end:.2f} s lies outside its audio {audio} ({total:.2f} s)"
                )
            if end > total:
                stats.clipped += 1
                first_clip = first_clip or f"{where}: end {end:.2f} s > {total:.2f} s"
            text = normalize_words(words)
            seg_start = max(0.0, start - opts.segment_pad)
            seg_end = min(total, end + opts.segment_pad)
            duration = seg_end - seg_start
            if split == "train":
                if not text:
                    stats.empty += 1
                    continue
                if duration < opts.train_min_duration:
                    stats.too_short += 1
                    continue
                if duration > opts.train_max_duration:
                    stats.too_long += 1
                    continue
            records.append(
                {
                    "id": f"{talk}-{round(start * 100):07d}-{round(end * 100):07d}",
                    "audio": str(audio),
                    "start": round(seg_start, 3),
                    "end": round(seg_end, 3),
                    "duration": round(duration, 3),
                    "speaker": speaker,
                    "text": text,
                }
            )
            talks.add(talk)
            stats.words += len(text.split())
            stats.seconds += duration
    if stats.clipped:
        log.warning(
            "%s: clipped %d segment(s) that ran past the end of their audio, e.g. %s", split, stats.clipped, first_clip
        )
    stats.talks, stats.segments = len(talks), len(records)
    return records, stats


def prepare(corpus_dir: str | Path, out_dir: str | Path, opts: Options = Options()) -> dict:
    """Write `{out_dir}/{train,dev,test}.jsonl` and `stats.json`; return the per-split statistics.

    Every split is read and checked before any manifest is written, so bad input leaves none behind.
    """
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    if not corpus_dir.is_dir():
        raise UserError(
            f"corpus directory not found: {corpus_dir} (set data.corpus_dir to your TEDLIUM_release2 folder)"
        )
    prepared = {split: _prepare_split(corpus_dir / split, split, opts) for split in SPLITS}
    for split, (records, _) in prepared.items():
        write_jsonl(out_dir / f"{split}.jsonl", records)
    stats = {split: s.as_dict() for split, (_, s) in prepared.items()}
    write_json(out_dir / "stats.json", stats)
    return stats


def format_stats(stats: dict) -> str:
    """The per-split statistics as a small table for the log."""
    rows = ["| split | talks | segments | words | hours |", "|---|---|---|---|---|"]
    rows += [
        f"| {split} | {s['talks']} | {s['segments']} | {s['words']} | {s['hours']:.3f} |" for split, s in stats.items()
    ]
    return "\n".join(rows)
