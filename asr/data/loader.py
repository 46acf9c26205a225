"""DataLoaders over a split's manifest, with the tokenizer and CMVN that earlier stages made."""

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from asr.data.batching import BucketBatchSampler, EpochTaggedBatches, collate
from asr.data.dataset import SegmentDataset
from asr.data.features import FeatureSettings, GlobalCMVN
from asr.files import read_jsonl
from asr.tokenizer import Tokenizer


@dataclass
class LoaderSettings:
    """What the `loader` settings hold."""

    max_seconds: float = 100  # padded seconds of audio per training batch
    # part of a model's identity: models trained before each item's augmentation was seeded by its own (seed,
    # epoch, index) drew it in whichever worker loaded it, so the number of workers shaped them
    num_workers: int = 2

    def __post_init__(self):
        if self.max_seconds <= 0:
            raise ValueError(f"loader.max_seconds must be > 0, got {self.max_seconds}")
        if self.num_workers < 0:
            raise ValueError(f"loader.num_workers must be >= 0, got {self.num_workers}")


@dataclass(frozen=True)
class DataFiles:
    """The prepared data a model is trained and scored on: manifests, tokenizer and CMVN statistics."""

    manifests: Path  # folder of {train,dev,test}.jsonl
    tokenizer: Path  # sentencepiece model
    cmvn: Path  # cmvn.json

    def records(self, split: str) -> list[dict]:
        return read_jsonl(self.manifests / f"{split}.jsonl")


def make_loader(
    records: list[dict],
    features: FeatureSettings,
    *,
    max_seconds: float,
    num_workers: int,
    seed: int,
    train: bool,
    tokenizer: Tokenizer | None = None,
    cmvn: GlobalCMVN | None = None,
) -> DataLoader:
    """Batches of `records` (manifest entries) of at most max_seconds padded audio; `train` adds speed
    perturbation, dither, SpecAugment and shuffling, each item's draws seeded by (seed, epoch, index). Without
    `tokenizer` the batches' tokens are empty; without `cmvn` the features are not normalized (what the CMVN
    estimate itself reads).

    The loader has a generator of its own for the seeds it gives its workers: starting an epoch then draws
    nothing from torch's global generator, whose state a training checkpoint saves and restores."""
    speeds = list(features.speeds) if train else [1.0]
    dataset = SegmentDataset(
        records,
        tokenizer=tokenizer,
        cmvn=cmvn,
        num_mel_bins=features.num_mel_bins,
        speeds=speeds,
        dither=features.dither if train else 0.0,
        specaugment=features.specaugment.build() if train else None,
        seed=seed,
    )
    # Slowing down lengthens a segment: bound the batch by its longest possible duration.
    stretch = 1 / min(speeds)
    buckets = BucketBatchSampler([r["duration"] * stretch for r in records], max_seconds, shuffle=train, seed=seed)
    return DataLoader(
        dataset,
        batch_sampler=EpochTaggedBatches(buckets) if train else buckets,
        collate_fn=collate,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def split_loader(
    files: DataFiles,
    split: str,
    features: FeatureSettings,
    *,
    max_seconds: float,
    num_workers: int,
    seed: int,
    train: bool,
    tokenize: bool = True,
) -> DataLoader:
    """make_loader over one split of `files`, normalized with its CMVN (and tokenized, unless `tokenize` is off)."""
    return make_loader(
        files.records(split),
        features,
        max_seconds=max_seconds,
        num_workers=num_workers,
        seed=seed,
        train=train,
        tokenizer=Tokenizer(files.tokenizer) if tokenize else None,
        cmvn=GlobalCMVN.load(files.cmvn),
    )


def unaugmented_loader(
    files: DataFiles, split: str, features: FeatureSettings, max_seconds: float, num_workers: int
) -> DataLoader:
    """A split as decoding and chip calibration read it: in manifest-length order, untokenized, not augmented."""
    return split_loader(
        files,
        split,
        features,
        max_seconds=max_seconds,
        num_workers=num_workers,
        seed=0,  # unshuffled and unaugmented: the seed draws nothing
        train=False,
        tokenize=False,
    )


def estimate_cmvn(records: list[dict], features: FeatureSettings, *, seed: int, num_workers: int) -> GlobalCMVN:
    """Global feature mean and deviation from a seeded sample of `features.cmvn_segments` training segments."""
    sample = random.Random(seed).sample(records, min(len(records), features.cmvn_segments))
    items = DataLoader(
        SegmentDataset(sample, num_mel_bins=features.num_mel_bins), batch_size=None, num_workers=num_workers
    )
    return GlobalCMVN.estimate(item["feats"] for item in tqdm(items, desc="cmvn", unit="segment"))
