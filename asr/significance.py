"""Confidence intervals for relative WER changes.

relative_change: a paired bootstrap over utterances. Two systems scored on the same utterances are compared
on the same resampled utterance sets (paired), so the interval reflects how much the difference depends on
which utterances happen to be in the test set, not the two systems' shared difficulty. With several
programming instances, a system's errors per utterance are their mean over instances; instances themselves
are not resampled (the WER's std and min-max over instances show that spread).

relative_change_over_runs: the same comparison repeated over training runs (a QAT model per seed, each with
its own chip instances). It resamples the runs, each run's instances and the utterances: utterances are
crossed with runs (every run decodes the same ones, so one utterance resample serves all runs of a replicate)
and instances are nested in runs. Its interval holds the variance between training runs and between
instances that a single run's paired interval cannot see (Efron and Tibshirani, "An Introduction to the
Bootstrap", 1993, sec. 8.3 on resampling hierarchical data at its top levels; with 3 runs the run level is
coarse, which widens the interval rather than hiding the spread).
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
    return Interval(*_percentile_interval(estimate, samples, level))


def _run_means(errors: np.ndarray, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """[replicates, utterances]: a run's errors per utterance averaged over its instances, resampled."""
    instances = errors.shape[0]
    weights = rng.multinomial(instances, np.full(instances, 1 / instances), size=replicates) / instances
    return weights @ errors


def relative_change_over_runs(
    references: list[np.ndarray],
    systems: list[np.ndarray],
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[Interval, Interval]:
    """Relative change of the error count over several training runs, pooled: (runs, instances and utterances
    resampled; utterances only, the runs and instances as measured).

    references[k], systems[k]: run k's errors per utterance, [utterances] or [instances, utterances] (a digital
    model is one instance), all on the same utterances. The estimate pools the runs: the sum over runs of the
    system's instance-mean errors against the reference's, minus 1.
    """
    if len(references) != len(systems) or not references:
        raise ValueError(f"need one reference per run, got {len(references)} references and {len(systems)} systems")
    refs = [np.atleast_2d(r).astype(float) for r in references]
    syss = [np.atleast_2d(s).astype(float) for s in systems]
    shapes = {x.shape[1] for x in refs + syss}
    if len(shapes) != 1:
        raise ValueError(f"every run must score the same utterances, got utterance counts {sorted(shapes)}")
    runs, utterances = len(refs), shapes.pop()
    rng = np.random.default_rng(seed)
    counts = resample_counts(utterances, resamples, seed)
    chosen = rng.integers(0, runs, size=(resamples, runs))  # the runs of each replicate, with replacement
    numerator, denominator = np.zeros(resamples), np.zeros(resamples)
    for slot in range(runs):
        # every run's instances resampled for this slot, then each replicate takes the run it drew
        sys_means = np.stack([_run_means(x, resamples, rng) for x in syss])  # [runs, replicates, utterances]
        ref_means = np.stack([_run_means(x, resamples, rng) for x in refs])
        rows = np.arange(resamples)
        numerator += (counts * sys_means[chosen[:, slot], rows]).sum(1)
        denominator += (counts * ref_means[chosen[:, slot], rows]).sum(1)
    sys_total = sum(x.mean(0) for x in syss)
    ref_total = sum(x.mean(0) for x in refs)
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate, samples = sys_total.sum() / ref_total.sum() - 1, numerator / denominator - 1
    pooled = Interval(*_percentile_interval(estimate, samples, level))
    utterances_only = relative_change(ref_total, sys_total, counts, level)
    return pooled, utterances_only


def _percentile_interval(estimate: float, samples: np.ndarray, level: float) -> tuple[float, float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(np.where(np.isfinite(samples), samples, np.inf), [tail, 100 - tail])
    return float(estimate), float(low), float(high)
