"""The pipeline's stages and the runner that `stages=[...]` drives.

A stage is a function of the whole configuration that reads and writes files under work_dir. After it
finishes, a marker records the configuration it depends on (`Stage.depends_on`, dotted keys); a later
run skips the stage while that configuration is unchanged, unless it is named in `force=[...]`. Later
stages (train, decode, memsim, report) join by adding an entry to STAGES.
"""
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

from asr import decode, tokenizer, train
from asr.data import mini_corpus, tedlium
from asr.data.dataset import SegmentDataset
from asr.data.features import GlobalCMVN
from asr.errors import UserError
from asr.files import read_jsonl, write_json
from asr.workdir import WorkDir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    run: Callable[[DictConfig], None]
    depends_on: tuple[str, ...]  # configuration keys whose change makes the stage run again


def corpus_dir(cfg: DictConfig) -> Path:
    """The TEDLIUM_release2 tree: the user's copy, or the mini corpus (synthesized on first use)."""
    data = cfg.data
    if data.get("synth"):
        s = data.synth
        return mini_corpus.build(s.cache_dir, s.seed, OmegaConf.to_container(s.splits), s.workers)
    if not data.corpus_dir:
        raise UserError("data.corpus_dir is not set: pass data.corpus_dir=/path/to/TEDLIUM_release2")
    return Path(data.corpus_dir)


def prepare(cfg: DictConfig) -> None:
    """Manifests and statistics for train/dev/test."""
    work, p = WorkDir(cfg.work_dir), cfg.prepare
    opts = tedlium.Options(segment_pad=p.segment_pad, clip_tolerance=p.clip_tolerance,
                           train_min_duration=p.train_min_duration, train_max_duration=p.train_max_duration)
    stats = tedlium.prepare(corpus_dir(cfg), work.manifest("train").parent, opts)
    log.info("corpus statistics (%s):\n%s", work.corpus_stats, tedlium.format_stats(stats))


def train_tokenizer(cfg: DictConfig) -> None:
    """Sentencepiece model on the training transcripts."""
    work, t = WorkDir(cfg.work_dir), cfg.tokenizer
    texts = [r["text"] for r in read_jsonl(work.manifest("train"))]
    tok = tokenizer.train(texts, work.tokenizer, t.model_type, t.vocab_size, t.num_threads)
    log.info("tokenizer: %s, %d units including blank, at %s", t.model_type, tok.vocab_size, work.tokenizer)


def estimate_cmvn(cfg: DictConfig) -> None:
    """Global feature mean and variance from (a seeded sample of) the training segments."""
    work = WorkDir(cfg.work_dir)
    records = read_jsonl(work.manifest("train"))
    records = random.Random(cfg.seed).sample(records, min(len(records), cfg.features.cmvn_segments))
    items = DataLoader(SegmentDataset(records, num_mel_bins=cfg.features.num_mel_bins), batch_size=None,
                       num_workers=cfg.loader.num_workers)
    cmvn = GlobalCMVN.estimate(item["feats"] for item in tqdm(items, desc="cmvn", unit="segment"))
    cmvn.save(work.cmvn)
    log.info("cmvn: from %d training segments, at %s", len(records), work.cmvn)


# What a trained model depends on: the stages that train or use one rerun when it changes.
_MODEL = ("data", "prepare", "tokenizer", "features", "loader", "model", "quant", "train", "seed")

STAGES: dict[str, Stage] = {
    "prepare": Stage(prepare, ("data", "prepare")),
    "tokenizer": Stage(train_tokenizer, ("data", "prepare", "tokenizer")),
    "cmvn": Stage(estimate_cmvn, ("data", "prepare", "features.num_mel_bins", "features.cmvn_segments", "seed")),
    "train": Stage(train.train, _MODEL),
    "decode": Stage(decode.decode, (*_MODEL, "decode")),
}


def _fingerprint(cfg: DictConfig, keys: tuple[str, ...]) -> dict:
    values = {k: OmegaConf.select(cfg, k) for k in keys}
    return {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in values.items()}


def run(cfg: DictConfig) -> None:
    """Run `cfg.stages` in order, skipping those already done with the same configuration."""
    unknown = [s for s in list(cfg.stages) + list(cfg.force) if s not in STAGES]
    if unknown:
        raise UserError(f"unknown stage(s) {unknown}; known: {list(STAGES)}")
    work = WorkDir(cfg.work_dir)
    for name in cfg.stages:
        stage, marker = STAGES[name], work.stage_marker(name)
        fingerprint = _fingerprint(cfg, stage.depends_on)
        if name not in cfg.force and marker.is_file() and json.loads(marker.read_text()) == fingerprint:
            log.info("stage %s: done already (%s); force=[%s] runs it again", name, marker, name)
            continue
        marker.unlink(missing_ok=True)
        log.info("stage %s: running", name)
        began = time.perf_counter()
        stage.run(cfg)
        write_json(marker, fingerprint)
        log.info("stage %s: finished in %.1f s", name, time.perf_counter() - began)
