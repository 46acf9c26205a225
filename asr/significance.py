"""Confidence intervals for relative WER changes: a paired bootstrap over utterances.

Two systems scored on the same utterances are compared on the same resampled utterance sets (paired), so
the interval reflects how much the difference depends on which utterances happen to be in the test set,
not the two systems' shared difficulty. With several programming instances, a system's errors per
utterance are their mean over instances; instances themselves are not resampled (the WER's std and
min-max over instances show that spread).
"""

from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    estimate: float  # relative change, e.g. 0.2 = +20 %
    low: float
    high: float

    def percent(self) -> str:
        """`+19.9 % [+5.1, +36.0]`; inf where the reference made no errors."""
        return f"{100 * self.estimate:+.1f} % [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"


def resample_counts(utterances: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """[resamples, utterances]: how often each utterance occurs in each bootstrap resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(utterances, np.full(utterances, 1 / utterances), size=resamples)


def relative_change(
    reference: np.ndarray, system: np.ndarray, counts: np.ndarray | None = None, level: float = LEVEL
) -> Interval:
    """Relative change of the error count, system against reference, with a percentile interval.

    reference, system: errors per utterance, [utterances] or [instances, utterances] (averaged over
    instances). Both are on the same utterances, so their WERs share the word count, which cancels.
    counts: resample_counts(utterances), shared by every comparison on a split for consistency.
    """
    ref = np.atleast_2d(reference).mean(0)
    sys = np.atleast_2d(system).mean(0)
    if ref.shape != sys.shape:
        raise ValueError(f"paired comparison needs the same utterances, got {ref.shape} and {sys.shape}")
    counts = resample_counts(len(ref)) if counts is None else counts
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = sys.sum() / ref.sum() - 1
        samples = (counts @ sys) / (counts @ ref) - 1
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(np.where(np.isfinite(samples), samples, np.inf), [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high))
