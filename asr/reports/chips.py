"""Where a chip's WER goes: per chip configuration, its WER change against the digital QAT model next to its
crossbar layers' output errors (the memsim stage's summary.json, memsim.layer_errors), as a table and a
bar chart. An error-budget sweep (memsim.only, experiment mini_budget) makes one row per non-ideality.
"""

import statistics
from collections import Counter
from pathlib import Path

from asr.chips import SUMMARY_FILE, ChipSummary
from asr.decode import SCORE_FILE, DecodeScore
from asr.files import atomic_path, markdown_table
from asr.reports.results import Group


def save_png(fig, path: Path) -> None:
    """Lay out a matplotlib figure, write it as a PNG atomically, and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def chip_groups(groups: list[Group], split: str = "test", method: str = "beam") -> list[Group]:
    """The chip groups of one split and method (test and beam when present), one per chip configuration."""
    memsim = [g for g in groups if g.first.system == "memsim"]
    split = split if any(g.first.split == split for g in memsim) else min((g.first.split for g in memsim), default="")
    method = (
        method if any(g.first.method == method for g in memsim) else min((g.first.method for g in memsim), default="")
    )
    return [g for g in memsim if g.first.split == split and g.first.method == method]


def summary_of(g: Group) -> ChipSummary | None:
    """The memsim stage's summary.json of the group's chip (None when it has none)."""
    path = g.first.root / str(g.first.chip) / SUMMARY_FILE
    return ChipSummary.read(path) if path.is_file() else None


def name(g: Group) -> str:
    """The model a chip holds (its folder without the hash), the chip's name, and what tells it apart."""
    r = g.first
    return f"{r.model_label} {r.chip_label}" + (f" ({g.label})" if g.label else "")


def short_name(g: Group) -> str:
    """The chip's name and the model it holds: short enough for a chart."""
    r = g.first
    return f"{r.chip_label} ({r.model_label})"


def layer_error_table(groups: list[Group]) -> str:
    """One row per chip: WER, its change against the digital QAT model, and the layer errors (mean over the
    crossbar layers of relative error, gain and residual; the worst layer), with the read-disturbable cells."""
    chosen = chip_groups(groups)
    if not chosen:
        return ""
    header = [
        "chip",
        "WER mean",
        "rel. to QAT [95 % CI]",
        "layer error",
        "gain",
        "residual",
        "worst layer (error)",
        "most clipped layer (ADC inputs clipped)",
        "read-disturbable cells",
        "real-time factor",
    ]
    rows = []
    for g in chosen:
        summary = summary_of(g)
        layers = [row for row in summary.layer_errors if row["layer"] != "mean"] if summary else []
        mean = summary.mean_layer_error if summary else None
        worst = max(layers, key=lambda row: row["relative_error"]) if layers else None
        clipped = max(layers, key=lambda row: row.get("clipped", 0.0)) if layers else None
        relative = g.relative.get("qat")
        disturb = summary.read_disturb_pct if summary else None
        cells = [
            name(g),
            f"{statistics.mean(g.wers):.2f}",
            relative.percent() if relative else "n/a",
            f"{mean['relative_error']:.4f}" if mean else "n/a",
            f"{mean['gain']:.4f}" if mean else "n/a",
            f"{mean['residual']:.4f}" if mean else "n/a",
            f"{worst['layer']} ({worst['relative_error']:.4f})" if worst else "n/a",
            f"{clipped['layer']} ({clipped['clipped']:.2%})" if clipped and "clipped" in clipped else "n/a",
            "n/a" if disturb is None else f"{disturb:.1f} %",
            _real_time_factor(g),
        ]
        rows.append(cells)
    r = chosen[0].first
    return (
        f"Split {r.split}, {r.method} decoding. Layer error: |y - d| / |d| of each crossbar layer's output y "
        "against its digital layer's d on the same inputs (4 batches of the first decoded split, instance 0), "
        "averaged over the layers; gain: the least-squares slope of y on d; residual: what remains after the "
        "gain; clipped: the fraction of a layer's ADC inputs beyond its ADC's range. "
        "Read-disturbable cells: cells whose SET threshold lies above -v_read (those storing 0) or whose "
        "RESET threshold lies below +v_read (those storing 1); reads never change a cell in this simulator. "
        "Real-time factor: decoding seconds (the chip model and every decoder of its run) per second of audio, "
        "mean over the instances.\n\n" + markdown_table(header, rows)
    )


def _real_time_factor(g: Group) -> str:
    factors = [DecodeScore.read(r.root / r.path / SCORE_FILE).real_time_factor for r in g.members]
    known = [f for f in factors if f is not None]
    return f"{statistics.mean(known):.3f}" if known else "n/a"


def budget_plot(groups: list[Group], path: Path) -> bool:
    """Bars per chip: WER change against the digital QAT model (95 % interval) and mean layer error. Returns
    False (and draws nothing) when fewer than two chips have results."""
    chosen = chip_groups(groups)
    if len(chosen) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [short_name(g) for g in chosen]
    relative = [g.relative.get("qat") for g in chosen]
    change = [100 * i.estimate if i else float("nan") for i in relative]
    low = [100 * (i.estimate - i.low) if i else 0.0 for i in relative]
    high = [100 * (i.high - i.estimate) if i else 0.0 for i in relative]
    errors = []
    for g in chosen:
        summary = summary_of(g)
        mean = summary.mean_layer_error if summary else None
        errors.append(100 * mean["relative_error"] if mean else float("nan"))
    y = list(range(len(chosen)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 1.5 + 0.42 * len(chosen)), sharey=True)
    left.barh(y, change, xerr=[low, high], capsize=3, color="tab:red")
    left.axvline(0, color="black", linewidth=0.8)
    left.set(xlabel="WER change against the digital QAT model (%, 95 % CI)", yticks=y, yticklabels=labels)
    right.barh(y, errors, color="tab:blue")
    right.set(xlabel="mean crossbar-layer output error (% of the digital output)")
    for ax in (left, right):
        ax.grid(alpha=0.3, axis="x")
    left.invert_yaxis()
    r = chosen[0].first
    fig.suptitle(f"Chips: {r.split}, {r.method} decoding", fontsize=10)
    save_png(fig, path)
    return True


def _bits_and_planes(layers: list[dict]) -> str:
    """The crossbar layers' weight bits and digit planes: `3 (2)` when all share them, else each pair with its
    count of layers (a mixed-precision chip: `2 (1) x 8, 5 (4) x 8`)."""
    pairs = Counter((row["weight_bits"], row["planes"]) for row in layers if "planes" in row)
    if not pairs:
        return "n/a"
    if len(pairs) == 1:
        (bits, planes), _ = pairs.popitem()
        return f"{bits:g} ({planes})"
    return ", ".join(f"{bits:g} ({planes}) x {count}" for (bits, planes), count in sorted(pairs.items()))


def cost_table(groups: list[Group]) -> str:
    """One row per chip: what it is built of and what programming it cost (memsim.summary's totals and
    memsim.level_statistics), next to its WER and the change against its digital QAT model."""
    chosen = chip_groups(groups)
    if not chosen:
        return ""
    header = [
        "chip",
        "levels per cell",
        "verify tolerance",
        "weight bits (planes)",
        "cells",
        "tiles",
        "ADC conversions per s of audio",
        "pulses per cell: mean / p99 / max",
        "failed cells (per level)",
        "WER mean",
        "rel. to QAT [95 % CI]",
    ]
    rows = []
    for g in chosen:
        summary = summary_of(g)
        if summary is None:
            continue
        levels, total, relative = summary.levels, summary.total, g.relative.get("qat")
        if levels:
            pulses = levels["pulses"]
            pulse_cell = f"{pulses['pulses_mean']:.1f} / {pulses['pulses_p99']} / {pulses['pulses_max']}"
            failed = f"{sum(levels['failed_by_level'])} ({', '.join(map(str, levels['failed_by_level']))})"
        else:
            pulse_cell, failed = "SET with verify", str(total.get("failed_cells", "n/a"))
        conversions = summary.adc_conversions_per_second_of_audio
        cells = [
            name(g),
            str(summary.crossbar.levels_per_cell),
            f"{summary.crossbar.verify_tolerance:g}" if levels else "-",
            _bits_and_planes(summary.layers),
            f"{total['cells']:,}" if "cells" in total else "n/a",
            f"{total['tiles']:,}" if "tiles" in total else "n/a",
            f"{conversions:,}" if conversions is not None else "n/a",
            pulse_cell,
            failed,
            f"{statistics.mean(g.wers):.2f}",
            relative.percent() if relative else "n/a",
        ]
        rows.append(cells)
    r = chosen[0].first
    return (
        f"Split {r.split}, {r.method} decoding; programming figures of instance 0. Binary cells are SET and "
        "verified; multi-level cells are programmed by SET and RESET pulses with a read after each, until the read "
        "lies within the verify tolerance (a fraction of a level step) of the level's target (memsim.crossbar."
        "program_levels); a cell out of pulses counts as failed, per stored level 0 (HRS) up.\n\n"
        + markdown_table(header, rows)
    )


def level_plots(groups: list[Group], out_dir: Path) -> list[Path]:
    """levels-<model>-<chip>.png per multi-level chip: its cells' read conductance per stored level (instance 0),
    one colour per level, the targets and verify bands marked. Returns the files written."""
    written = []
    for g in chip_groups(groups):
        summary = summary_of(g)
        levels = summary.levels if summary else None
        if not levels:
            continue
        r = g.first
        model = Path(r.model).name.rsplit("-", 1)[0]
        path = out_dir / f"levels-{model}-{r.chip_label}.png".replace(" ", "_").replace("/", "_")
        _plot_levels(levels, f"{short_name(g)}: cells per read level (instance 0)", path)
        written.append(path)
    return written


def _plot_levels(levels: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = levels["histogram_edges"]
    top = levels["levels_per_cell"] - 1
    tolerance = levels["verify_tolerance"]
    fig, ax = plt.subplots(figsize=(8, 4))
    colours = plt.get_cmap("viridis")
    for level, counts in enumerate(levels["histogram"]):
        colour = colours(level / max(top, 1))
        ax.stairs(counts, edges, fill=True, alpha=0.55, color=colour, label=f"level {level}")
        ax.axvline(level, color=colour, linestyle="--", linewidth=1)
        if 0 < level < top:
            ax.axvspan(level - tolerance, level, color=colour, alpha=0.12)
    ax.set_yscale("log")
    ax.set(
        xlabel="read conductance above the nominal HRS, in level steps (targets dashed, verify bands shaded)",
        ylabel="cells",
        title=title,
    )
    ax.legend(fontsize=8, ncol=min(top + 1, 8))
    ax.grid(alpha=0.3)
    save_png(fig, path)
