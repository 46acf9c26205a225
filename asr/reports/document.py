"""The report of one or more work directories: results.csv, RESULTS.md and the plots (asr.reports.results
reads and groups the results; asr.reports.chips and asr.reports.energy make the chip and converter tables)."""

import csv
import io
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from asr.errors import UserError
from asr.files import markdown_table, write_text
from asr.records import environment
from asr.reports.aging import AXES, READ_PASSES, READ_TIME, axis_plot, axis_table
from asr.reports.chips import budget_plot, cost_table, layer_error_table, level_plots, save_png
from asr.reports.energy import adc_heatmaps, energy_table, pareto_plot
from asr.reports.frontier import frontier_plot, frontier_table
from asr.reports.results import COLUMNS, STALE, SYSTEM_ORDER, Group, OverSeeds, collect, group, over_seeds
from asr.scoring import HEADER, total
from asr.significance import Interval


def _cell(interval: Interval | None, present: bool) -> str:
    if not present:
        return "-"
    return interval.percent() if interval is not None else "n/a"


def at_a_glance(groups: list[Group]) -> str:
    """The table RESULTS.md opens with: each float model, then each quantized model trained from it, its digital
    QAT row and one row per family of its chips (chips whose names differ only in their numbers, such as a
    converters sweep, share a row with their WER range). WER mean +- std over a chip's instances on dev and
    test, and the test change against the digital QAT model. One decoding method: beam where there is one."""
    method = "beam" if any(g.first.method == "beam" for g in groups) else min(g.first.method for g in groups)
    configurations: dict[tuple, dict[str, Group]] = defaultdict(dict)  # (model, chip, label) -> split -> group
    for g in groups:
        if g.first.method == method:
            configurations[g.first.model, g.first.chip or "", g.label][g.first.split] = g
    # (float model, is it quantized, model, system, chip family) -> the configurations of that row
    families: dict[tuple, list[dict[str, Group]]] = defaultdict(list)
    for (model, chip, label), by_split in configurations.items():
        r = next(iter(by_split.values())).first
        family = chip_family(r.chip_label) if chip else label  # a digital model: a row per label
        families[r.baseline, r.system != "float", model, SYSTEM_ORDER[r.system], family].append(by_split)
    rows = []
    for (*_, family), members in sorted(families.items()):
        first = next(iter(members[0].values()))
        system = _system(first, family, len(members))
        rows.append(
            [first.first.model_label, system, _wers(members, "dev"), _wers(members, "test"), _test_change(members)]
        )
    return (
        f"WER (%) with {method} decoding: mean +- std over a chip's instances, a range over a family's chips; the test "
        "change against the digital QAT model with its 95 % interval (a paired bootstrap over utterances). Every row "
        "and setting is in the detail tables below.\n\n"
        + markdown_table(["model", "system", "dev WER", "test WER", "test: rel. to QAT [95 % CI]"], rows)
    )


def _system(g: Group, family: str, configurations: int) -> str:
    """A row's system: float, digital QAT, one chip (its name and label), or a family of chips."""
    r = g.first
    if r.system != "memsim":
        return {"float": "float", "qat": "digital QAT"}[r.system] + (f" ({g.label})" if g.label else "")
    if configurations > 1:
        return f"{configurations} chips {family}"
    return f"chip {r.chip_label}" + (f" ({g.label})" if g.label else "")


def _wers(members: list[dict[str, Group]], split: str) -> str:
    groups = [m[split] for m in members if split in m]
    if not groups:
        return "-"
    if len(groups) > 1:
        means = [statistics.mean(g.wers) for g in groups]
        return f"{min(means):.2f}-{max(means):.2f}"
    wers = groups[0].wers
    return f"{statistics.mean(wers):.2f}" + (f" +- {statistics.stdev(wers):.2f}" if len(wers) > 1 else "")


def _test_change(members: list[dict[str, Group]]) -> str:
    changes = [m["test"].relative.get("qat") for m in members if "test" in m]
    known = [c for c in changes if c is not None]
    if not known:
        return "-"
    if len(known) > 1:
        return f"{100 * min(c.estimate for c in known):+.1f} % to {100 * max(c.estimate for c in known):+.1f} %"
    return known[0].percent()


def chip_family(chip_label: str) -> str:
    """A chip's name with its numbers as #: chips of one sweep (adc4.6-dac8, adc8.10-dac8) share a family."""
    return re.sub(r"\d+", "#", chip_label)


def tables_by_family(groups: list[Group]) -> str:
    """summary_table per topic: the digital models, then one table per family of chips (chip_family)."""
    families: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        families[chip_family(g.first.chip_label) if g.first.chip else ""].append(g)
    sections = [
        f"### {family and f'Chips {family}' or 'Digital models'}\n\n{summary_table(members)}"
        for family, members in sorted(families.items())
    ]
    return "\n\n".join(sections)


def summary_table(groups: list[Group]) -> str:
    """WER mean / std / min / max per group, with the relative changes and their 95 % intervals."""
    revisions = sorted({str(r.revision) + ("+dirty" if r.dirty else "") for g in groups for r in g.members})
    with_revision = len(revisions) > 1
    header = [
        "split",
        "method",
        "system",
        "bits",
        "model",
        "chip",
        "settings",
        "instances",
        "Snt",
        "Wrd",
        "WER mean",
        "std",
        "min",
        "max",
        "rel. to float [95 % CI]",
        "rel. to QAT [95 % CI]",
    ] + (["revision"] * with_revision)
    rows = []
    for g in groups:
        r, wers = g.first, g.wers
        cells = [
            r.split,
            r.method,
            r.system,
            "" if r.weight_bits is None else f"{r.weight_bits:g}",
            r.model_label,
            r.chip_label or "-",
            g.label or "-",
            len(wers),
            r.score.snt,
            r.score.words,
            f"{statistics.mean(wers):.2f}",
            f"{statistics.stdev(wers) if len(wers) > 1 else 0:.2f}",
            f"{min(wers):.2f}",
            f"{max(wers):.2f}",
            _cell(g.relative.get("float"), r.system != "float"),
            _cell(g.relative.get("qat"), r.system == "memsim"),
        ]
        if with_revision:
            cells.append(", ".join(sorted({str(m.revision) + ("+dirty" if m.dirty else "") for m in g.members})))
        rows.append(cells)
    return markdown_table(header, rows)


def _change(g: Group, reference: str) -> str:
    interval = g.relative.get(reference)
    return "n/a" if interval is None else f"{100 * interval.estimate:+.1f} %"


def seeds_table(joined: list[OverSeeds]) -> str:
    """Systems trained with several seeds: WER per seed (a chip's mean over its instances) against its reference
    per seed, each seed's relative change, and the pooled change with two intervals: over seeds and utterances
    (asr.significance.relative_change_over_runs), and over the utterances alone (what a single run's paired
    interval measures)."""
    rows = []
    for o in joined:
        r = o.first
        rows.append(
            [
                r.split,
                r.method,
                r.system,
                r.model_label,
                r.chip_label or "-",
                o.label or "-",
                ", ".join(str(seed) for seed in o.seeds),
                ", ".join(str(len(g.members)) for g in o.groups),
                " / ".join(f"{statistics.mean(g.wers):.2f}" for g in o.groups),
                " / ".join(f"{statistics.mean(ref.wers):.2f}" for ref in o.references),
                "its QAT model" if r.system == "memsim" else "float",
                " / ".join(_change(g, "qat" if r.system == "memsim" else "float") for g in o.groups),
                o.pooled.percent(),
                o.utterances_only.percent(),
            ]
        )
    return markdown_table(
        [
            "split",
            "method",
            "system",
            "model",
            "chip",
            "settings",
            "seeds",
            "instances",
            "WER per seed",
            "reference WER per seed",
            "reference",
            "rel. to reference per seed",
            "rel. to reference, pooled [95 % CI: seeds and utterances]",
            "[95 % CI: utterances only]",
        ],
        rows,
    )


def espnet_table(groups: list[Group]) -> str:
    """|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err| per group; a chip's counts pooled over its instances."""
    lines = [HEADER]
    for g in groups:
        r = g.first
        parts = [
            r.system,
            "" if r.weight_bits is None else f"w{r.weight_bits:g}",
            r.chip_label,
            g.label,
            r.split,
            r.method,
        ]
        name = "/".join(p for p in parts if p)
        if len(g.members) > 1:
            name += f" ({len(g.members)} instances pooled)"
        lines.append(total(m.score for m in g.members).row(name))
    return "\n".join(lines)


def results_markdown(groups: list[Group], left_out: dict[str, str], title: str, notes: str = "") -> str:
    env = environment()
    revisions = sorted({str(r.revision) + ("+dirty" if r.dirty else "") for g in groups for r in g.members})
    stale = [path for path, why in left_out.items() if why == STALE]
    stale_note = (
        f"\n{len(stale)} stale result(s) left out: their models or chips were made again since, or their files no "
        "longer match their records. Run the decode and memsim stages of those configurations again to refresh "
        "them.\n"
        if stale
        else ""
    )
    disagreeing = {path: why for path, why in left_out.items() if why != STALE}
    if disagreeing:
        stale_note += f"\n{len(disagreeing)} result(s) left out because their files disagree:\n" + "".join(
            f"- `{path}`: {why}\n" for path, why in disagreeing.items()
        )
    joined = over_seeds(groups)
    seeds_section = (
        "## Over training seeds\n\nSystems whose QAT model was trained with several seeds (`qat_train.seed`), "
        "each seed's chips (mean over instances) compared with that seed's QAT model. The first interval holds the "
        "spread between seeds and over utterances (a t interval at Satterthwaite's degrees of freedom: "
        "asr.significance.relative_change_over_runs); the second only the utterances, as one seed's paired "
        f"bootstrap would.\n\n{seeds_table(joined)}\n\n"
        if joined
        else ""
    )
    chips = layer_error_table(groups)
    chip_section = f"## Chip layer errors\n\n{chips}\n\n" if chips else ""
    costs = cost_table(groups)
    chip_section += f"## Chip cells, converters and programming\n\n{costs}\n\n" if costs else ""
    energy = energy_table(groups)
    chip_section += f"## Converters and energy\n\n{energy}\n\n" if energy else ""
    over_time, over_passes = axis_table(groups, READ_TIME), axis_table(groups, READ_PASSES)
    chip_section += (
        "## Chips over time after programming\n\nChips read `memsim.read_time` seconds after programming, their cells "
        f"relaxed as `memsim.relaxation` says ({READ_TIME.file}).\n\n{over_time}\n\n"
        if over_time
        else ""
    )
    chip_section += (
        "## Chips over passes of reads\n\nChips with read disturb (`memsim.read_disturb`), each split decoded after "
        f"`memsim.read_passes` passes of reads over it from the prepared chip ({READ_PASSES.file}).\n\n"
        f"{over_passes}\n\n"
        if over_passes
        else ""
    )
    allocated = frontier_table(groups)
    chip_section += (
        "## Mixed precision against uniform chips\n\nAllocated chips (`allocation.*`) beside the uniform chips of "
        "the QAT model they were allocated from, each against that model's digital WER (frontier.png).\n\n"
        f"{allocated}\n\n"
        if allocated
        else ""
    )
    return (
        f"# {title}\n\n{notes}## At a glance\n\n{at_a_glance(groups)}\n\n{seeds_section}## WER (%) per system\n\n"
        f"{tables_by_family(groups)}\n\n"
        "Snt and Wrd: the utterances and reference words each split scored. A memsim row holds its programming "
        "instances: WER mean, std, min and max over them. Relative changes compare error counts with the float "
        "model of the same configuration and, for a chip, with the digital QAT model it holds, on the same split "
        "with the same decoding settings; the 95 % interval is a paired bootstrap over utterances (2000 "
        "resamples; the instances' own spread is in std/min/max). `settings` names what tells a row apart from "
        f"the other rows of its system, method and chip name.\n{stale_note}\n"
        f"{chip_section}## Scoring details\n\n{espnet_table(groups)}\n\n"
        f"## Environment\n\n- results made at git revision(s): {', '.join(revisions)}\n"
        f"- this report: git revision {env['revision']}{' (dirty)' if env['dirty'] else ''}, project "
        f"{env['project']}, python {env['python']}, torch {env['torch']}, {env['device']}\n"
        f"- command: `{' '.join(sys.argv)}`\n"
    )


def write_csv(groups: list[Group], path: Path) -> None:
    """One row per result (each chip instance its own row), in the order of the summary table."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS)
    writer.writeheader()
    for g in groups:
        for r in g.members:
            writer.writerow(
                {
                    "system": r.system,
                    "weight_bits": "" if r.weight_bits is None else r.weight_bits,
                    "model": r.model,
                    "chip": r.chip or "",
                    "settings": g.label,
                    "split": r.split,
                    "method": r.method,
                    "instance": "" if r.instance is None else r.instance,
                    "wer": round(r.score.err, 2),
                    **{k: v for k, v in r.score.to_dict().items() if k in COLUMNS},
                    "revision": r.revision,
                    "dirty": r.dirty,
                    "path": r.path,
                }
            )
    write_text(path, buffer.getvalue())


def plot(groups: list[Group], path: Path, split: str = "test") -> None:
    """WER against weight bits on one split (test if present): float (dashed line), QAT digital, and each
    chip configuration (mean +- std over instances, markers side by side), per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    splits = {g.first.split for g in groups}
    split = split if split in splits else sorted(splits)[0]
    chosen = [g for g in groups if g.first.split == split]
    methods = sorted({g.first.method for g in chosen})
    series_count = max(
        len({(g.first.system, g.first.chip_label, g.label) for g in chosen if g.first.method == m}) for m in methods
    )
    fig, axes = plt.subplots(1, len(methods), figsize=(6 * len(methods), 4 + 0.22 * series_count), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        series = defaultdict(list)  # label -> (bits, mean, std): one line per system, chip and setting
        for g in (g for g in chosen if g.first.method == method):
            r, wers = g.first, g.wers
            extra = f" ({g.label})" if g.label else ""
            if r.system == "float":
                ax.axhline(wers[0], color="black", linestyle="--", linewidth=1, label=f"float{extra}")
                continue
            name = ("QAT digital" if r.system == "qat" else f"memsim {r.chip_label}") + extra
            series[name].append(
                (r.weight_bits, statistics.mean(wers), statistics.stdev(wers) if len(wers) > 1 else 0.0)
            )
        spread = 0.25 / max(1, len(series))  # markers of one bit width side by side within +-0.125
        for i, (name, points) in enumerate(sorted(series.items())):
            x, y, error = zip(*sorted(points), strict=True)
            ax.errorbar(
                [b + spread * (i - (len(series) - 1) / 2) for b in x],
                y,
                yerr=error,
                fmt="-o" if name.startswith("QAT") else "-s",
                markersize=4,
                capsize=3,
                label=name,
            )
        wers = [w for g in chosen if g.first.method == method for w in g.wers]
        scale = "log" if min(wers) > 0 else "linear"  # a WER of 0 has no place on a log axis
        if scale == "log":
            ax.set_ylim(min(wers) / 1.25, max(wers) * 1.25)
            ax.set_yscale("log")
            for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
                axis(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set(xlabel="weight bits", ylabel=f"WER (%), {scale} scale", title=f"{split}, {method} decoding")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    save_png(fig, path)


def write_report(
    work_dirs: list[Path], out_dir: Path, title: str, notes: str = "", manifests: str | None = None
) -> list[Group]:
    """results.csv, RESULTS.md, wer_vs_bits.png, (with two chips or more) chips.png and wer_vs_energy.png, (with
    two ADC settings or more at one weight width) adc_heatmap.png, (per multi-level chip) levels-*.png and (with
    allocated chips) frontier.png, and (with chips in use: asr.reports.aging) wer_over_time.png and
    wer_over_passes.png in out_dir; returns the groups."""
    results, left_out = collect(work_dirs, manifests)
    if not results:
        corpus = f" decoded from {manifests}" if manifests else ""
        raise UserError(
            f"no current decode results{corpus} under {', '.join(map(str, work_dirs))}: run the decode stage first"
            + (" or name a manifests folder the work dir holds (e.g. manifests/mini-<hash>)" if manifests else "")
        )
    groups = group(results)
    out_dir = Path(out_dir)
    markdown = results_markdown(groups, left_out, title, notes)  # before writing: it records whether the tree is clean
    write_csv(groups, out_dir / "results.csv")
    write_text(out_dir / "RESULTS.md", markdown)
    plot(groups, out_dir / "wer_vs_bits.png")
    budget_plot(groups, out_dir / "chips.png")
    level_plots(groups, out_dir)
    adc_heatmaps(groups, out_dir / "adc_heatmap.png")
    pareto_plot(groups, out_dir / "wer_vs_energy.png")
    frontier_plot(groups, out_dir / "frontier.png")
    for axis in AXES:
        axis_plot(groups, axis, out_dir)
    return groups
