"""Acoustic features: Kaldi-compatible log-mel filterbanks, global CMVN, SpecAugment, speed perturbation."""

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional as AF
from torchaudio.transforms import SpecAugment

from asr.errors import CorruptFile
from asr.files import read_json, write_json

SAMPLE_RATE = 16000
CMVN_FILE = "cmvn.json"  # the statistics in a CMVN output's folder (GlobalCMVN.save)


@dataclass
class SpecAugmentSettings:
    enabled: bool = True
    freq_masks: int = 2
    freq_width: int = 27
    time_masks: int = 2
    time_width: int = 40
    max_time_fraction: float = 0.2  # no time mask covers more than this fraction of a segment

    def __post_init__(self):
        if min(self.freq_masks, self.freq_width, self.time_masks, self.time_width) < 0:
            raise ValueError("features.specaugment: mask counts and widths must be >= 0")
        if not 0 <= self.max_time_fraction <= 1:
            raise ValueError(f"features.specaugment.max_time_fraction must be in [0, 1], got {self.max_time_fraction}")

    def build(self) -> SpecAugment | None:
        """The training-time augmentation, or None when disabled."""
        if not self.enabled:
            return None
        return spec_augment(self.freq_masks, self.freq_width, self.time_masks, self.time_width, self.max_time_fraction)


@dataclass
class FeatureSettings:
    """What the `features` settings hold: filterbanks, CMVN sample, and training augmentation."""

    num_mel_bins: int = 80
    dither: float = 1.0  # training only
    speeds: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])  # one factor drawn per training segment
    cmvn_segments: int = 2000  # training segments sampled to estimate the global mean and variance
    specaugment: SpecAugmentSettings = field(default_factory=SpecAugmentSettings)

    @classmethod
    def from_dict(cls, values: dict) -> "FeatureSettings":
        """The settings as dataclasses.asdict wrote them (a model's record holds them so)."""
        return cls(**{**values, "specaugment": SpecAugmentSettings(**values["specaugment"])})

    def __post_init__(self):
        if self.num_mel_bins < 1:
            raise ValueError(f"features.num_mel_bins must be >= 1, got {self.num_mel_bins}")
        if self.dither < 0:
            raise ValueError(f"features.dither must be >= 0, got {self.dither}")
        if not self.speeds or min(self.speeds) <= 0:
            raise ValueError(f"features.speeds must be a non-empty list of positive factors, got {self.speeds}")
        if self.cmvn_segments < 1:
            raise ValueError(f"features.cmvn_segments must be >= 1, got {self.cmvn_segments}")


def fbank(wave: torch.Tensor, num_mel_bins: int = 80, dither: float = 0.0) -> torch.Tensor:
    """[samples] float waveform in [-1, 1] at 16 kHz -> [frames, num_mel_bins] log-mel, 25 ms / 10 ms.

    Kaldi's fbank expects 16-bit sample values, hence the scaling; dither (Kaldi's default is 1.0)
    belongs to training only.
    """
    return kaldi.fbank(
        wave.unsqueeze(0) * 32768,
        num_mel_bins=num_mel_bins,
        sample_frequency=SAMPLE_RATE,
        dither=dither,
        energy_floor=0.0,
    )


def speed_perturb(wave: torch.Tensor, factor: float) -> torch.Tensor:
    """Play `wave` `factor` times as fast (tempo and pitch together, as Kaldi's speed perturbation)."""
    if factor == 1.0:
        return wave
    return AF.resample(wave, round(SAMPLE_RATE * factor), SAMPLE_RATE)


class GlobalCMVN:
    """Per-dimension mean and standard deviation over the training set, applied to every split."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.std = mean, std

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) / self.std

    @classmethod
    def estimate(cls, feature_batches) -> "GlobalCMVN":
        """From an iterable of [frames, dims] tensors; float64 sums so long corpora do not lose precision."""
        count = 0
        total: torch.Tensor | float = 0.0
        squares: torch.Tensor | float = 0.0
        for feats in feature_batches:
            feats = feats.double()
            count += feats.shape[0]
            total = total + feats.sum(0)
            squares = squares + (feats**2).sum(0)
        if count == 0 or not isinstance(total, torch.Tensor) or not isinstance(squares, torch.Tensor):
            raise ValueError("no frames to estimate CMVN from")
        mean = total / count
        std = (squares / count - mean**2).clamp_min(1e-10).sqrt()
        return cls(mean.float(), std.float())

    def save(self, path: str | Path) -> None:
        write_json(path, {"mean": self.mean.tolist(), "std": self.std.tolist()})

    @classmethod
    def load(cls, path: str | Path) -> "GlobalCMVN":
        """The statistics `save` wrote; a CorruptFile error names a file that does not hold them."""
        stats = read_json(path)
        try:
            return cls(torch.tensor(stats["mean"]), torch.tensor(stats["std"]))
        except (KeyError, TypeError, ValueError) as error:
            raise CorruptFile(f"{path}: not CMVN statistics (a mean and a std list): {error}") from None


def spec_augment(
    freq_masks: int, freq_width: int, time_masks: int, time_width: int, max_time_fraction: float
) -> SpecAugment:
    """SpecAugment with masks set to zero, which is the mean once features are CMVN-normalized.

    It works on [..., dims, frames]: transpose [frames, dims] features before and after.
    """
    return SpecAugment(
        n_time_masks=time_masks,
        time_mask_param=time_width,
        n_freq_masks=freq_masks,
        freq_mask_param=freq_width,
        p=max_time_fraction,
        zero_masking=True,
    )
