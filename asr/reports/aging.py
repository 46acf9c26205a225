"""A chip in use: the WER change against the digital QAT model of chips read memsim.read_time seconds after
programming (memsim.relaxation; experiment mini_relaxation), and of chips with read disturb decoded after
memsim.read_passes passes of reads over the split (memsim.disturb; experiment mini_disturb); per axis one series per
model and the settings that matter there, as a table and a plot.
"""

import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from asr.files import markdown_table
from asr.reports.chips import chip_groups, save_png
from asr.reports.results import Group

NAMED_TIMES = {1.0: "1 s", 3600.0: "1 h", 86400.0: "1 day", 2592000.0: "1 month", 31536000.0: "1 year"}


def time_label(seconds: float) -> str:
    """A read time as people say it: 1 s, 1 h, 1 day, 1 month (30 days), 1 year, 10 years; else seconds."""
    if seconds in NAMED_TIMES:
        return NAMED_TIMES[seconds]
    years = seconds / 31536000.0
    return f"{years:g} years" if years >= 2 and years.is_integer() else f"{seconds:g} s"


@dataclass(frozen=True)
class Axis:
    """A chip setting the report draws WER over: which chips it holds, how a value reads, and what else tells
    its series apart."""

    setting: str  # the flat setting (memsim.*)
    name: str  # the column of the table
    label: Callable[[float], str]
    holds: Callable[[dict], bool]  # whether a chip's settings put it on this axis
    series_settings: tuple[tuple[str, object], ...]  # (flat setting, its default) that make a series
    log_scale: bool
    file: str  # the plot's file name


READ_TIME = Axis(
    "memsim.read_time",
    "read after",
    time_label,
    lambda s: float(s.get("memsim.read_time") or 0) > 0,
    (("memsim.relaxation", "wan2022"), ("memsim.levels_per_cell", 2), ("memsim.drift_compensation", "none")),
    True,
    "wer_over_time.png",
)
READ_PASSES = Axis(
    "memsim.read_passes",
    "passes read before",
    lambda passes: f"{passes:g}",
    lambda s: bool(s.get("memsim.read_disturb")),
    (("memsim.v_read", 0.6), ("memsim.input_scheme", "amplitude")),
    False,
    "wer_over_passes.png",
)
AXES = (READ_TIME, READ_PASSES)


def series(groups: list[Group], axis: Axis, split: str = "test") -> dict[str, list[tuple[float, Group]]]:
    """The chips on an axis, of one split (beam decoding when present), by series (the model and the axis's
    series settings), each a list of (value, group) by value."""
    found: dict[str, list[tuple[float, Group]]] = defaultdict(list)
    for g in chip_groups(groups, split):
        s = g.first.settings
        if not axis.holds(s):
            continue
        described = ", ".join(f"{key.split('.')[-1]} {s.get(key, default)}" for key, default in axis.series_settings)
        found[f"{g.first.model_label}: {described}"].append((float(s.get(axis.setting) or 0), g))
    return {key: sorted(points, key=lambda p: p[0]) for key, points in sorted(found.items())}


def axis_table(groups: list[Group], axis: Axis) -> str:
    """One row per value and series: the chips' WER (mean over instances) and its change against the digital QAT
    model with the paired 95 % interval ("" without chips on the axis)."""
    found = series(groups, axis)
    if not found:
        return ""
    rows = []
    for key, points in found.items():
        for value, g in points:
            relative = g.relative.get("qat")
            change = relative.percent() if relative else "n/a"
            rows.append([key, axis.label(value), str(len(g.members)), f"{statistics.mean(g.wers):.2f}", change])
    first = next(iter(found.values()))[0][1].first
    return f"Split {first.split}, {first.method} decoding.\n\n" + markdown_table(
        ["series", axis.name, "instances", "WER mean", "rel. to QAT [95 % CI]"], rows
    )


def axis_plot(groups: list[Group], axis: Axis, out_dir: Path) -> bool:
    """WER change against the digital QAT model over the axis, one line per series with its intervals, as
    out_dir / axis.file. Returns False (and draws nothing) without chips on the axis."""
    found = series(groups, axis)
    if not found:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, points in found.items():
        intervals = [g.relative.get("qat") for _, g in points]
        change = [100 * i.estimate if i else float("nan") for i in intervals]
        low = [100 * (i.estimate - i.low) if i else 0.0 for i in intervals]
        high = [100 * (i.high - i.estimate) if i else 0.0 for i in intervals]
        ax.errorbar([v for v, _ in points], change, yerr=[low, high], marker="o", capsize=3, label=key)
    values = sorted({value for points in found.values() for value, _ in points})
    if axis.log_scale:
        ax.set_xscale("log")
    ax.set_xticks(values, [axis.label(v) for v in values])
    first = next(iter(found.values()))[0][1].first
    ax.set(
        xlabel=axis.name,
        ylabel="WER change against the digital QAT model (%, 95 % CI)",
        title=f"Chips in use: {first.split}, {first.method} decoding",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    save_png(fig, out_dir / axis.file)
    return True
