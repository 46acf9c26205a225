"""Confidence intervals for relative WER changes.

relative_change: a paired bootstrap over utterances. Two systems scored on the same utterances are compared
on the same resampled utterance sets (paired), so the interval reflects how much the difference depends on
which utterances happen to be in the test set, not the two systems' shared difficulty. With several
programming instances, a system's errors per utterance are their mean over instances; instances themselves
are not resampled (the WER's std and min-max over instances show that spread).

relative_change_over_runs: the same comparison repeated over training runs (a QAT model per seed, each with
its own chip instances), pooled over the runs. Its interval adds two variances: between runs, the spread of the
runs' own changes over R runs (a run's chip is its mean over instances, so their spread is inside it), and over
utterances, the part of the paired bootstrap's variance that all runs share (each run's own utterance-level noise
is in the between-run spread already, so the runs' own bootstrap variances are taken out of it). With only a few
runs the first is itself uncertain, so the interval is the estimate +- a Student t quantile times the combined
standard error, at Satterthwaite's degrees of freedom (F. E. Satterthwaite, "An approximate distribution of
estimates of variance components", Biometrics Bulletin 2(6), 1946): at 3 runs whose changes differ a lot it
reaches +-4.3 standard errors, at runs that agree it is the normal interval of the utterances. A percentile
bootstrap over 3 runs cannot reach beyond the runs it has (simulated coverage 0.85 at nominal 0.95 where runs
dominate); this one covered 0.91-0.985 of 200 simulated comparisons each (2 to 8 runs, 300 to 3000 utterances;
tests/asr/test_report.py keeps three of them).
"""

import math
import statistics
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
    return Interval(*_percentile_interval(estimate, _resampled_changes(counts, sys, ref), level))


def relative_change_over_runs(
    references: list[np.ndarray],
    systems: list[np.ndarray],
    counts: np.ndarray | None = None,
    level: float = LEVEL,
) -> tuple[Interval, Interval]:
    """Relative change of the error count over several training runs, pooled: (the interval over runs and
    utterances; over utterances only, the runs as measured).

    references[k], systems[k]: run k's errors per utterance, [utterances] or [instances, utterances] (averaged
    over instances; a digital model is one instance), all on the same utterances. The estimate pools the runs: the
    sum over runs of the system's errors against the reference's, minus 1. counts: resample_counts(utterances).
    """
    if len(references) != len(systems) or not references:
        raise ValueError(f"need one reference per run, got {len(references)} references and {len(systems)} systems")
    refs = [np.atleast_2d(r).astype(float).mean(0) for r in references]
    syss = [np.atleast_2d(s).astype(float).mean(0) for s in systems]
    shapes = {x.shape[0] for x in refs + syss}
    if len(shapes) != 1:
        raise ValueError(f"every run must score the same utterances, got utterance counts {sorted(shapes)}")
    runs = len(refs)
    ref_total, sys_total = np.sum(refs, axis=0), np.sum(syss, axis=0)
    counts = resample_counts(len(ref_total)) if counts is None else counts
    pooled_changes = _resampled_changes(counts, sys_total, ref_total)
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = sys_total.sum() / ref_total.sum() - 1
    utterances_only = Interval(*_percentile_interval(estimate, pooled_changes, level))
    ratio = estimate + 1
    ref_sums, sys_sums = np.array([r.sum() for r in refs]), np.array([s.sum() for s in syss])
    if runs < 2 or not np.isfinite(ratio) or not (ref_sums > 0).all():
        return Interval(utterances_only.estimate, -math.inf, math.inf), utterances_only
    # between runs: the ratio's linearized deviations per run (its error count against the pooled ratio)
    deviations = (sys_sums - ratio * ref_sums) / ref_sums.mean()
    between = float(deviations.var(ddof=1)) / runs
    # over utterances: the pooled change's bootstrap variance holds the runs' own utterance-level noise over R,
    # which `between` holds already; the runs' bootstrap variances tell the two apart
    pooled = _finite_variance(pooled_changes)
    own = statistics.fmean(_finite_variance(_resampled_changes(counts, s, r)) for r, s in zip(refs, syss, strict=True))
    utterances = max(0.0, (runs * pooled - own) / (runs - 1))
    freedom = (between + utterances) ** 2 * (runs - 1) / between**2 if between > 0 else math.inf
    half = t_quantile(1 - (1 - level) / 2, freedom) * math.sqrt(between + utterances)
    return Interval(estimate, estimate - half, estimate + half), utterances_only


def _resampled_changes(counts: np.ndarray, system: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The relative change of the error count on each utterance resample ([resamples]; inf or nan where the
    resampled reference has no errors)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (counts @ system) / (counts @ reference) - 1


def _finite_variance(samples: np.ndarray) -> float:
    """The variance of the finite resampled changes (those where the reference has errors)."""
    finite = samples[np.isfinite(samples)]
    return float(finite.var(ddof=1)) if len(finite) > 1 else 0.0


def t_quantile(p: float, freedom: float) -> float:
    """The p-quantile (p > 0.5) of Student's t with `freedom` degrees of freedom (any real > 0; inf: the normal),
    by bisection on its distribution function, integrated numerically (Simpson's rule): within 1e-6 of the tables
    for p up to 0.995 at freedom >= 1 (far tails of very few degrees of freedom need a finer grid)."""
    if not 0.5 < p < 1 or not freedom > 0:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and freedom > 0, got p={p}, freedom={freedom}")
    nu = min(freedom, 1e7)  # beyond this the t is the normal to far below the integration's error
    scale = math.exp(math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2)) / math.sqrt(nu * math.pi)

    def cdf(x: float) -> float:
        t = np.linspace(0.0, x, 2049)
        density = scale * (1 + t * t / nu) ** (-(nu + 1) / 2)
        weights = np.ones_like(t)
        weights[1:-1:2], weights[2:-1:2] = 4, 2
        return 0.5 + float(weights @ density) * (t[1] - t[0]) / 3

    low, high = 0.0, 1.0
    while cdf(high) < p:
        low, high = high, 2 * high
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < p else (low, middle)
    return (low + high) / 2


def _percentile_interval(estimate: float, samples: np.ndarray, level: float) -> tuple[float, float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(np.where(np.isfinite(samples), samples, np.inf), [tail, 100 - tail])
    # between two infinite resamples the interpolation gives nan: the bound is unbounded there
    return float(estimate), float(np.nan_to_num(low, nan=np.inf)), float(np.nan_to_num(high, nan=np.inf))
