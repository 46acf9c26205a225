"""Segments from a manifest -> (features, unit ids), read from the talk audio by frame range."""

import hashlib
from collections.abc import Sequence

import soundfile as sf
import torch
from torch.utils.data import Dataset

from asr.data.features import SAMPLE_RATE, GlobalCMVN, fbank, speed_perturb
from asr.tokenizer import Tokenizer


def read_segment(record: dict) -> torch.Tensor:
    """The segment's samples as float32 in [-1, 1]; only its frames are read from the (long) talk file."""
    samples, rate = sf.read(
        record["audio"],
        start=round(record["start"] * SAMPLE_RATE),
        stop=round(record["end"] * SAMPLE_RATE),
        dtype="float32",
    )
    if rate != SAMPLE_RATE:
        raise ValueError(f"{record['audio']}: {rate} Hz, expected {SAMPLE_RATE} Hz")
    return torch.from_numpy(samples)


class SegmentDataset(Dataset):
    """Items are dicts: id, text, feats [frames, dims] (normalized if cmvn is given), tokens [units].

    Training adds a random speed factor per item, dither, and SpecAugment. An item is asked for as an index,
    or as `(index, epoch)` (asr.data.batching.EpochTaggedBatches); its random draws come from torch's generator
    seeded with `item_seed(seed, epoch, index)` for the item alone (and restored afterwards, so loading in the
    training process leaves the model's dropout draws alone). The augmentation is therefore the same in any
    worker, with any number of workers, and after a resume.
    """

    def __init__(
        self,
        records: Sequence[dict],
        tokenizer: Tokenizer | None = None,
        cmvn: GlobalCMVN | None = None,
        num_mel_bins: int = 80,
        speeds: Sequence[float] = (1.0,),
        dither: float = 0.0,
        specaugment=None,
        seed: int = 0,
    ):
        self.records, self.tokenizer, self.cmvn, self.seed = records, tokenizer, cmvn, seed
        self.num_mel_bins, self.speeds, self.dither, self.specaugment = num_mel_bins, list(speeds), dither, specaugment

    def __len__(self) -> int:
        return len(self.records)

    @property
    def augments(self) -> bool:
        return len(self.speeds) > 1 or self.dither > 0 or self.specaugment is not None

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        record = self.records[index]
        if not self.augments:
            feats = self._features(record)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(item_seed(self.seed, epoch, index))
                feats = self._features(record)
        tokens = torch.tensor(self.tokenizer.encode(record["text"]) if self.tokenizer else [], dtype=torch.long)
        return {"id": record["id"], "text": record["text"], "feats": feats, "tokens": tokens}

    def _features(self, record: dict) -> torch.Tensor:
        """The record's normalized features, augmented with draws from torch's global generator."""
        wave = read_segment(record)
        if len(self.speeds) > 1:
            wave = speed_perturb(wave, self.speeds[int(torch.randint(len(self.speeds), ()))])
        feats = fbank(wave, self.num_mel_bins, self.dither)
        if self.cmvn is not None:
            feats = self.cmvn(feats)
        if self.specaugment is not None:
            feats = self.specaugment(feats.T).T
        return feats


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one item's augmentation in one epoch: a hash, so that neighbouring (epoch, index) pairs
    get unrelated streams."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
