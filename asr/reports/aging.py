"""A chip over time after programming: the WER change against the digital QAT model of chips read memsim.read_time
seconds after programming (memsim.relaxation), one series per model, relaxation fit, cell levels and drift
compensation, as a table and a plot over log time (experiment mini_relaxation).
"""

import statistics
from collections import defaultdict
from pathlib import Path

from asr.files import markdown_table
from asr.reports.chips import chip_groups, save_png
from asr.reports.results import Group

READ_TIME = "memsim.read_time"
NAMED_TIMES = {1.0: "1 s", 3600.0: "1 h", 86400.0: "1 day", 2592000.0: "1 month", 31536000.0: "1 year"}


def time_label(seconds: float) -> str:
    """A read time as people say it: 1 s, 1 h, 1 day, 1 month (30 days), 1 year, 10 years; else seconds."""
    if seconds in NAMED_TIMES:
        return NAMED_TIMES[seconds]
    years = seconds / 31536000.0
    return f"{years:g} years" if years >= 2 and years.is_integer() else f"{seconds:g} s"


def series_over_time(groups: list[Group], split: str = "test") -> dict[str, list[tuple[float, Group]]]:
    """The chips read after programming (read_time > 0) of one split (beam decoding when present), by series
    (model, relaxation fit, levels per cell, drift compensation), each a list of (read_time, group) by time."""
    series: dict[str, list[tuple[float, Group]]] = defaultdict(list)
    for g in chip_groups(groups, split):
        s = g.first.settings
        read_time = float(s.get(READ_TIME, 0) or 0)
        if read_time <= 0:
            continue
        key = (
            f"{g.first.model_label}, {s.get('memsim.relaxation', 'wan2022')}, "
            f"{s.get('memsim.levels_per_cell', 2)} levels, compensation {s.get('memsim.drift_compensation', 'none')}"
        )
        series[key].append((read_time, g))
    return {key: sorted(points, key=lambda p: p[0]) for key, points in sorted(series.items())}


def time_table(groups: list[Group]) -> str:
    """One row per read time and series: the chips' WER (mean over instances) and its change against the digital
    QAT model with the paired 95 % interval."""
    series = series_over_time(groups)
    if not series:
        return ""
    rows = []
    for key, points in series.items():
        for seconds, g in points:
            relative = g.relative.get("qat")
            rows.append(
                [
                    key,
                    time_label(seconds),
                    str(len(g.members)),
                    f"{statistics.mean(g.wers):.2f}",
                    relative.percent() if relative else "n/a",
                ]
            )
    first = next(iter(series.values()))[0][1].first
    return f"Split {first.split}, {first.method} decoding.\n\n" + markdown_table(
        ["series", "read after", "instances", "WER mean", "rel. to QAT [95 % CI]"], rows
    )


def time_plot(groups: list[Group], path: Path) -> bool:
    """WER change against the digital QAT model over the read time (log scale), one line per series with its
    intervals. Returns False (and draws nothing) without chips read after programming."""
    series = series_over_time(groups)
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, points in series.items():
        times = [seconds for seconds, _ in points]
        intervals = [g.relative.get("qat") for _, g in points]
        change = [100 * i.estimate if i else float("nan") for i in intervals]
        low = [100 * (i.estimate - i.low) if i else 0.0 for i in intervals]
        high = [100 * (i.high - i.estimate) if i else 0.0 for i in intervals]
        ax.errorbar(times, change, yerr=[low, high], marker="o", capsize=3, label=key)
    all_times = sorted({seconds for points in series.values() for seconds, _ in points})
    ax.set_xscale("log")
    ax.set_xticks(all_times, [time_label(t) for t in all_times])
    first = next(iter(series.values()))[0][1].first
    ax.set(
        xlabel="read time after programming",
        ylabel="WER change against the digital QAT model (%, 95 % CI)",
        title=f"Chips over time after programming: {first.split}, {first.method} decoding",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    save_png(fig, path)
    return True
