"""The embedded mini corpus: a TEDLIUM_release2-layout tree synthesized offline with espeak-ng.

Every test and every laptop run needs a corpus that exists without a download. This one has the real
corpus' layout and quirks (scoring-excluded gaps, split contractions, <unk>, <sil>, noise tokens,
pronunciation variants, dev/test speaker labels, a segment running past its audio), so preparation runs
the very same code on both. A "speaker" is an espeak-ng voice x variant x pitch x speed; each talk has
its own speaker, and dev/test speakers never occur in train.

The tree is a function of (seed, sizes, GENERATOR_VERSION) only: it is built once into a folder named
by their hash under the cache directory, atomically and by one process at a time (a file lock beside the
folder), and reused afterwards.
"""

import hashlib
import io
import json
import logging
import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from filelock import FileLock
from tqdm import tqdm

from asr.data.grammar import Grammar
from asr.errors import UserError
from asr.files import write_json

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when the grammar or the synthesis changes: it renames the cache folder
SAMPLE_RATE = 16000
VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029"]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5"]
PITCHES = [30, 40, 50, 60, 70]
SPEEDS = [135, 150, 165, 180]  # words per minute
P_NOISE = 0.03  # utterances preceded by a {NOISE}-labelled burst
P_PAST_END = 0.2  # talks whose last segment ends a little past the audio, as some TED-LIUM talks do
NOISE_FLOOR = 3e-4  # so no stretch of a talk is digital silence
SYNTHESIS_TRIES = 5  # calls of espeak-ng per utterance at most, until two outputs agree (agreed_output)


@dataclass(frozen=True)
class Speaker:
    voice: str
    variant: str
    pitch: int
    speed: int

    @property
    def name(self) -> str:
        """A TED-LIUM-like talk id: letters and digits, then an underscore and a year-like suffix."""
        voice = "".join(part.capitalize() for part in self.voice.split("-"))
        return f"{voice}{self.variant.upper()}P{self.pitch}S{self.speed}_2026X"

    @property
    def female(self) -> bool:
        return self.variant.startswith("f")


def require_espeak() -> str:
    """Path of espeak-ng, or a UserError telling how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise UserError(
            "espeak-ng is not installed; the mini corpus is synthesized with it. "
            "Install it with `apt-get install espeak-ng` (`make setup` does so when run as root)."
        )
    return path


def assign_speakers(seed: int, talks: dict[str, int]) -> dict[str, list[Speaker]]:
    """Distinct speakers per split, drawn without replacement, so dev/test speakers are unseen in train."""
    pool = [Speaker(v, var, p, s) for v in VOICES for var in VARIANTS for p in PITCHES for s in SPEEDS]
    random.Random(seed).shuffle(pool)
    if sum(talks.values()) > len(pool):
        raise UserError(f"the mini corpus has {len(pool)} distinct speakers; asked for {sum(talks.values())} talks")
    out, used = {}, 0
    for split in ("dev", "test", "train"):
        out[split] = pool[used : used + talks[split]]
        used += talks[split]
    return out


def synthesize(espeak: str, speaker: Speaker, text: str) -> np.ndarray:
    """One utterance as float32 samples at 16 kHz (espeak-ng itself writes 22.05 kHz): the first output that
    espeak-ng gives twice (agreed_output)."""
    command = [
        espeak,
        "-v",
        f"{speaker.voice}+{speaker.variant}",
        "-p",
        str(speaker.pitch),
        "-s",
        str(speaker.speed),
        "--stdout",
        text,
    ]
    wav = agreed_output(lambda: subprocess.run(command, capture_output=True, check=True).stdout, f"{command}")
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return AF.resample(torch.from_numpy(samples), rate, SAMPLE_RATE).numpy()


def agreed_output(run: Callable[[], bytes], what: str) -> bytes:
    """Run until one output has come twice, and return it.

    espeak-ng before 1.52 draws the breath noise of its breathy variants (f2, f3, f5, ...) with the C
    library's rand() and reads state there that it does not set (espeak-ng issue #1528, fixed by its pull
    request #1530 in 1.52). Debian's 1.51, as on these machines, gave a different waveform for one utterance
    once in about ten builds of a small corpus while the machine was loaded (the same length, correlation
    0.978 with the usual output, which a fresh call gave again). A second call that agrees confirms an output.
    """
    seen: list[bytes] = []
    for _ in range(SYNTHESIS_TRIES):
        output = run()
        if output in seen:
            return output
        seen.append(output)
    raise UserError(f"espeak-ng gave {SYNTHESIS_TRIES} different outputs for the same input: {what}")


def _label(split: str, speaker: Speaker) -> str:
    """TED-LIUM's STM labels: <o,f0,male> style in train, <F0_M> style in dev and test."""
    if split == "train":
        return f"<o,f0,{'female' if speaker.female else 'male'}>"
    return "<F0_F>" if speaker.female else "<F0_M>"


def build_talk(espeak: str, split: str, speaker: Speaker, seconds: float, seed: str, split_dir: Path) -> float:
    """Synthesize one talk until its speech reaches `seconds`; write its .sph and .stm; return the speech seconds."""
    rng = random.Random(seed)
    noise = np.random.default_rng(rng.getrandbits(32))
    grammar = Grammar(rng)
    label = _label(split, speaker)
    pieces, segments, t, speech = [], [], 0.0, 0.0  # segments: [start, end, stm speaker, label, words]

    def pause():
        nonlocal t
        samples = int(rng.uniform(0.3, 1.0) * SAMPLE_RATE)
        pieces.append(np.zeros(samples, np.float32))
        segments.append(
            [t, t + samples / SAMPLE_RATE, "inter_segment_gap", "<o,,unknown>", ["ignore_time_segment_in_scoring"]]
        )
        t += samples / SAMPLE_RATE

    while speech < seconds:
        pause()
        sentence = grammar.sentence()
        words = sentence.words
        utterance = [synthesize(espeak, speaker, sentence.spoken)]
        if rng.random() < P_NOISE:
            utterance.insert(0, noise.normal(0, 0.05, int(0.3 * SAMPLE_RATE)).astype(np.float32))
            words = ["{NOISE}"] + words
        length = sum(len(u) for u in utterance) / SAMPLE_RATE
        pieces += utterance
        segments.append([t, t + length, speaker.name, label, words])
        t += length
        speech += length
    if rng.random() < P_PAST_END:
        segments[-1][1] += 0.03
    else:
        pause()
    audio = np.concatenate(pieces)
    audio += noise.normal(0, NOISE_FLOOR, len(audio)).astype(np.float32)
    sf.write(
        split_dir / "sph" / f"{speaker.name}.sph", np.clip(audio, -1, 1), SAMPLE_RATE, format="NIST", subtype="PCM_16"
    )
    (split_dir / "stm" / f"{speaker.name}.stm").write_text(
        "".join(
            f"{speaker.name} 1 {who} {start:.2f} {end:.2f} {tag} {' '.join(words)}\n"
            for start, end, who, tag, words in segments
        )
    )
    return speech


def corpus_key(seed: int, splits: dict) -> str:
    """Cache key: everything the generated tree depends on."""
    spec = {"seed": seed, "splits": splits, "version": GENERATOR_VERSION}
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def build(cache_dir: str | Path, seed: int, splits: dict, workers: int = 2) -> Path:
    """Return the path of the TEDLIUM_release2 tree for these settings, synthesizing it if not cached.

    `splits` maps train/dev/test to {"talks": n, "minutes": m} (speech minutes for the whole split).
    """
    splits = {name: {"talks": int(s["talks"]), "minutes": float(s["minutes"])} for name, s in splits.items()}
    home = Path(cache_dir) / f"mini-{corpus_key(seed, splits)}"
    corpus = home / "TEDLIUM_release2"
    if (home / "mini_corpus.json").is_file():
        log.info("mini corpus: cached at %s", corpus)
        return corpus
    home.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(home.with_name(home.name + ".lock")) as lock:  # one process synthesizes, the others wait
        if (home / "mini_corpus.json").is_file():
            log.info("mini corpus: synthesized by another process meanwhile (lock %s), at %s", lock.lock_file, corpus)
            return corpus
        _synthesize_corpus(home, seed, splits, workers)
    return corpus


def _synthesize_corpus(home: Path, seed: int, splits: dict, workers: int) -> None:
    """Synthesize the corpus into a temporary folder beside `home` and rename it to `home` once complete."""
    cache_dir, corpus = home.parent, home / "TEDLIUM_release2"
    espeak = require_espeak()
    tmp = Path(cache_dir) / f".{home.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    speakers = assign_speakers(seed, {name: s["talks"] for name, s in splits.items()})
    jobs = []
    for split, spec in splits.items():
        for sub in ("sph", "stm"):
            (tmp / "TEDLIUM_release2" / split / sub).mkdir(parents=True, exist_ok=True)
        per_talk = spec["minutes"] * 60 / max(spec["talks"], 1)
        jobs += [(split, spk, per_talk, f"{seed}-{split}-{i}") for i, spk in enumerate(speakers[split])]

    def run(job):
        split, speaker, seconds, talk_seed = job
        return build_talk(espeak, split, speaker, seconds, talk_seed, tmp / "TEDLIUM_release2" / split)

    began = time.perf_counter()
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:  # the work runs in espeak-ng and torch, not Python
            speech = list(tqdm(pool.map(run, jobs), total=len(jobs), desc="synthesize mini corpus", unit="talk"))
        seconds = time.perf_counter() - began
        hours = {
            name: sum(sec for job, sec in zip(jobs, speech, strict=True) if job[0] == name) / 3600 for name in splits
        }
        write_json(
            tmp / "mini_corpus.json",
            {
                "seed": seed,
                "splits": splits,
                "version": GENERATOR_VERSION,
                "generation_seconds": round(seconds, 1),
                "speech_hours": {name: round(h, 4) for name, h in hours.items()},
            },
        )
        shutil.rmtree(home, ignore_errors=True)  # a folder without its mini_corpus.json is incomplete
        tmp.rename(home)
    except subprocess.CalledProcessError as e:
        raise UserError(f"espeak-ng failed: {e.stderr.decode(errors='replace').strip()}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("mini corpus: synthesized %d talks in %.1f s into %s", len(jobs), seconds, corpus)
