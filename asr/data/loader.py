"""DataLoaders built from the configuration and the files earlier stages left in work_dir."""
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from asr.data.batching import BucketBatchSampler, collate
from asr.data.dataset import SegmentDataset
from asr.data.features import GlobalCMVN, spec_augment
from asr.files import read_jsonl
from asr.tokenizer import Tokenizer
from asr.workdir import WorkDir


def make_loader(cfg: DictConfig, split: str, train: bool, normalize: bool = True,
                tokenize: bool = True) -> DataLoader:
    """Batches of one split; `train` adds speed perturbation, dither, SpecAugment and shuffling.

    normalize / tokenize need the cmvn / tokenizer stages' outputs; the cmvn stage itself reads
    unnormalized features.
    """
    work, feat = WorkDir(cfg.work_dir), cfg.features
    records = read_jsonl(work.manifest(split))
    speeds = list(feat.speeds) if train else [1.0]
    aug = feat.specaugment
    dataset = SegmentDataset(
        records,
        tokenizer=Tokenizer(work.tokenizer) if tokenize else None,
        cmvn=GlobalCMVN.load(work.cmvn) if normalize else None,
        num_mel_bins=feat.num_mel_bins, speeds=speeds, dither=feat.dither if train else 0.0,
        specaugment=spec_augment(aug.freq_masks, aug.freq_width, aug.time_masks, aug.time_width,
                                 aug.max_time_fraction) if train and aug.enabled else None)
    # Slowing down lengthens a segment: bound the batch by its longest possible duration.
    stretch = 1 / min(speeds)
    sampler = BucketBatchSampler([r["duration"] * stretch for r in records], cfg.loader.max_seconds,
                                 shuffle=train, seed=cfg.seed)
    workers = cfg.loader.num_workers
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                      persistent_workers=workers > 0)
