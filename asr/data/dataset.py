"""Segments from a manifest -> (features, unit ids), read from the talk audio by frame range."""

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

    Training adds a random speed factor per item, dither, and SpecAugment; random draws use torch's
    generator, which the DataLoader seeds per worker.
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
    ):
        self.records, self.tokenizer, self.cmvn = records, tokenizer, cmvn
        self.num_mel_bins, self.speeds, self.dither, self.specaugment = num_mel_bins, list(speeds), dither, specaugment

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        wave = read_segment(record)
        if len(self.speeds) > 1:
            wave = speed_perturb(wave, self.speeds[int(torch.randint(len(self.speeds), ()))])
        feats = fbank(wave, self.num_mel_bins, self.dither)
        if self.cmvn is not None:
            feats = self.cmvn(feats)
        if self.specaugment is not None:
            feats = self.specaugment(feats.T).T
        tokens = torch.tensor(self.tokenizer.encode(record["text"]) if self.tokenizer else [], dtype=torch.long)
        return {"id": record["id"], "text": record["text"], "feats": feats, "tokens": tokens}
