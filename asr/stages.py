"""The pipeline's stages and the runner that `stages=[...]` drives.

A stage is a function of the whole configuration that reads and writes files under work_dir. After it
finishes, a marker named by a hash of the configuration it depends on (`Stage.depends_on`, dotted keys)
records that configuration; a later run skips the stage while a marker for the same configuration exists,
unless it is named in `force=[...]`. One marker per configuration: a sweep over bit widths in one
work_dir reuses the float baseline and every finished bit width when it runs again.
`stages=all` runs every stage in the order of STAGES.
"""
import hashlib
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

from asr import decode, evaluate, tokenizer, train
from asr.data import mini_corpus, tedlium
from asr.data.dataset import SegmentDataset
from asr.data.features import GlobalCMVN
from asr.errors import UserError
from asr.files import read_jsonl, write_json
from asr.quant import QuantConfig
from asr.report import write_report
from asr.workdir import WorkDir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    run: Callable[[DictConfig], None]
    depends_on: tuple[str, ...]  # configuration keys whose change makes the stage run again
    view: Callable[[DictConfig], DictConfig] | None = None  # the configuration those keys are read from


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


def float_baseline(cfg: DictConfig) -> DictConfig:
    """The float model of this configuration: no quantization, its own exp_dir (baseline.exp_dir), so
    every bit width of a sweep shares one baseline."""
    return OmegaConf.merge(cfg, {"quant": {"name": "float", "weight_bits": None},
                                 "train": {"exp_dir": cfg.baseline.exp_dir, "init_from": None}})


def system_run(cfg: DictConfig) -> DictConfig:
    """The configured system's training run: `train`, updated by `qat_train` when it is quantized (e.g. a
    short fine-tuning from the float baseline)."""
    return cfg if cfg.quant.weight_bits is None else OmegaConf.merge(cfg, {"train": cfg.qat_train})


def train_baseline(cfg: DictConfig) -> None:
    """The float baseline (skipped by a sweep over bit widths once trained)."""
    train.train(float_baseline(cfg))


def train_system(cfg: DictConfig) -> None:
    """The configured system: float, or quantization-aware (cfg.quant)."""
    train.train(system_run(cfg))


def decode_systems(cfg: DictConfig) -> None:
    """The float baseline and the configured system, each through the decode stage."""
    decode.decode(float_baseline(cfg))
    if cfg.quant.weight_bits is not None:
        decode.decode(system_run(cfg))


def report(cfg: DictConfig) -> None:
    """results.csv, RESULTS.md and a plot of everything decoded in work_dir (a whole sweep shares it)."""
    work = WorkDir(cfg.work_dir)
    write_report([work.root], work.report_dir, f"Results: {cfg.data.name}, model {cfg.model.name}")
    log.info("report: %s", work.report_dir / "RESULTS.md")


_BASELINE = ("data", "prepare", "tokenizer", "features", "loader", "model", "train", "baseline", "seed")
_SYSTEM = (*_BASELINE, "quant", "qat_train")

STAGES: dict[str, Stage] = {
    "prepare": Stage(prepare, ("data", "prepare")),
    "tokenizer": Stage(train_tokenizer, ("data", "prepare", "tokenizer")),
    "cmvn": Stage(estimate_cmvn, ("data", "prepare", "features.num_mel_bins", "features.cmvn_segments", "seed")),
    "train_float": Stage(train_baseline, _BASELINE, view=float_baseline),  # the same for every bit width
    "train": Stage(train_system, _SYSTEM),
    "decode": Stage(decode_systems, (*_SYSTEM, "decode")),
    "memsim": Stage(lambda cfg: evaluate.evaluate(system_run(cfg)), (*_SYSTEM, "decode", "memsim")),
    "report": Stage(report, (*_SYSTEM, "decode", "memsim")),
}


def _fingerprint(cfg: DictConfig, keys: tuple[str, ...]) -> dict:
    values = {k: OmegaConf.select(cfg, k) for k in keys}
    return {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in values.items()}


def stage_names(cfg: DictConfig) -> list[str]:
    """cfg.stages as a list: `all` means every stage in order."""
    names = list(STAGES) if cfg.stages == "all" else list(cfg.stages)
    unknown = [s for s in names + list(cfg.force) if s not in STAGES]
    if unknown:
        raise UserError(f"unknown stage(s) {unknown}; known: {list(STAGES)} (or stages=all)")
    return names


def check(cfg: DictConfig) -> None:
    """Refuse bad quantization and chip settings before any stage runs, naming the setting."""
    try:
        QuantConfig(**{k: v for k, v in OmegaConf.to_container(cfg.quant, resolve=True).items() if k != "name"})
    except (TypeError, ValueError) as error:
        raise UserError(f"quant settings: {error}") from None
    if cfg.quant.weight_bits is not None:
        evaluate.crossbar_config(cfg)


def run(cfg: DictConfig) -> None:
    """Run the stages of `cfg.stages` in order, skipping those already done with the same configuration."""
    check(cfg)
    work = WorkDir(cfg.work_dir)
    for name in stage_names(cfg):
        stage = STAGES[name]
        fingerprint = _fingerprint(stage.view(cfg) if stage.view else cfg, stage.depends_on)
        digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
        marker = work.stage_marker(name, digest)
        if name not in cfg.force and marker.is_file():
            log.info("stage %s: done already (%s); force=[%s] runs it again", name, marker, name)
            continue
        marker.unlink(missing_ok=True)
        log.info("stage %s: running", name)
        began = time.perf_counter()
        stage.run(cfg)
        write_json(marker, fingerprint)
        log.info("stage %s: finished in %.1f s", name, time.perf_counter() - began)
