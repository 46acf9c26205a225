"""Results of one or more work directories as results.csv, RESULTS.md and a plot, read from the records
the decode and memsim stages wrote (asr.pipeline.outputs), never from folder names.

Each current decode output is one result: its model, chip and instance, split, method and decoding
settings come from its record and its inputs' records. Results group into systems (a chip's instances
form one group). Every group of a quantized system is compared with references decoded on the same
split with the same decoding settings: the float model of its configuration and, for a chip, the digital
QAT model whose weights it holds. Each relative change has a 95 % confidence interval from a paired
bootstrap over utterances (asr.significance). Outputs whose inputs were made again since, or whose files
no longer match their records, are stale: they are left out, and RESULTS.md says how many. A result whose
files disagree with each other (score.json against its hyps.jsonl) is left out and named with what differs.
"""

import csv
import dataclasses
import io
import json
import logging
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from asr.chip_report import budget_plot, cost_table, layer_error_table, level_plots, save_png
from asr.decode import HYPS_FILE, SCORE_FILE
from asr.energy_report import adc_heatmaps, energy_table, pareto_plot
from asr.errors import CorruptFile, UserError
from asr.files import markdown_table, read_jsonl, write_text
from asr.pipeline.outputs import RECORD, Records, environment
from asr.quant import QuantConfig
from asr.scoring import HEADER, Score, decode_differences, read_score, total
from asr.significance import Interval, relative_change, resample_counts
from memsim import CrossbarConfig

log = logging.getLogger(__name__)

COLUMNS = [
    "system",
    "weight_bits",
    "model",
    "chip",
    "settings",
    "split",
    "method",
    "instance",
    "wer",
    "snt",
    "words",
    "corr",
    "sub",
    "del",
    "ins",
    "snt_err",
    "revision",
    "dirty",
    "path",
]
SYSTEM_ORDER = {"float": 0, "qat": 1, "memsim": 2}
SHOWN_ELSEWHERE = {
    "quant.weight_bits",
    "memsim.weight_bits",
    "decode.method",
    "decode.split",
    "decode.instance",
}  # columns of their own
NOT_LABELS = ("quant.noise_table",)  # measured from the chip settings (shown as quant.noise): too long for a label


@dataclass
class Result:
    """One decode output: one model (on one chip instance, or digital) on one split with one method."""

    root: Path
    path: str  # its folder, relative to root
    system: str  # float | qat | memsim
    model: str  # the model's folder
    baseline: str  # the folder of the float model it is compared with
    weight_bits: float | None
    chip: str | None  # the chip configuration's folder
    chip_label: str
    instance: int | None
    split: str
    method: str
    settings: dict  # flat dotted keys: model.*, quant.*, train.*, memsim.*, decode.* (what made it)
    score: Score
    revision: str | None
    dirty: bool | None

    @property
    def model_label(self) -> str:
        """The model's folder without its hash: its architecture and system, e.g. small-w3a8-dw."""
        return Path(self.model).name.rsplit("-", 1)[0]

    @property
    def comparison_key(self) -> tuple:
        """What a reference must share: the split and the decoding settings."""
        decoding = {k: v for k, v in self.settings.items() if k.startswith("decode.") and k != "decode.instance"}
        return self.split, json.dumps(decoding, sort_keys=True)

    def utterances(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Ids, errors and reference words per utterance (hyps.jsonl), in manifest order."""
        lines = read_jsonl(self.root / self.path / HYPS_FILE)
        return (
            [line["id"] for line in lines],
            np.array([line["sub"] + line["del"] + line["ins"] for line in lines]),
            np.array([line["words"] for line in lines]),
        )


@dataclass
class Group:
    """The results of one system on one split with one decoding setup (a chip's instances together)."""

    members: list[Result]
    label: str = ""  # the settings that tell it apart from the other groups of its kind
    float_reference: "Group | None" = None
    qat_reference: "Group | None" = None
    relative: dict[str, Interval | None] = field(default_factory=dict)  # "float" / "qat" -> interval

    @property
    def first(self) -> Result:
        return self.members[0]

    @property
    def wers(self) -> list[float]:
        return [r.score.err for r in self.members]

    @cached_property
    def errors(self) -> tuple[list[str], np.ndarray]:
        """Utterance ids and errors [instances, utterances]."""
        read = [r.utterances() for r in self.members]
        return read[0][0], np.stack([errors for _, errors, _ in read])

    def sort_key(self) -> tuple:
        r = self.first
        return (r.split, r.method, SYSTEM_ORDER[r.system], r.weight_bits or 0, r.model_label, r.chip_label, self.label)


def _flatten(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, inner, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list) else value
    return out


STALE = "stale"  # why a result is left out: its model or chip was made again since (or its files changed)


def collect(work_dirs: list[Path]) -> tuple[list[Result], dict[str, str]]:
    """Every current decode output under the work directories whose files agree, and the folders of those left
    out with the reason: STALE, or what disagrees (a warning says it too). A result is never made of two
    sources that disagree: its score.json must equal what its hyps.jsonl's utterances give."""
    results, left_out = [], {}
    for root in map(Path, work_dirs):
        records = Records(root)
        for record_path in sorted(root.glob(f"**/{RECORD}")):
            relpath = str(record_path.parent.relative_to(root))
            record = records.get(relpath)
            if record is None or record["stage"] not in ("decode", "memsim") or "method" not in record["settings"]:
                continue
            if not records.current_path(relpath):
                left_out[str(root / relpath)] = STALE
                continue
            try:
                result = _result(root, relpath, record, records)
                differences = decode_differences(read_jsonl(root / relpath / HYPS_FILE), result.score)
            except CorruptFile as error:
                differences = [str(error)]
            if differences:
                left_out[str(root / relpath)] = "; ".join(differences)
                log.warning("%s: left out of the report: %s", root / relpath, left_out[str(root / relpath)])
                continue
            results.append(result)
    return results, left_out


# A setting a record lacks was added to the code after the record was made; every such setting's default
# is the behaviour from before it existed, so records are compared as if they held the default.
QUANT_DEFAULTS = dataclasses.asdict(QuantConfig())
CROSSBAR_DEFAULTS = dataclasses.asdict(CrossbarConfig())


def _result(root: Path, relpath: str, record: dict, records: Records) -> Result:
    model = records.require(record["inputs"]["model"]["path"])
    chip = records.require(record["inputs"]["chip"]["path"]) if "chip" in record["inputs"] else None
    decode = record["settings"]
    quant = model["settings"]["quant"]
    settings = _flatten("", {**model["settings"], "quant": quant and {**QUANT_DEFAULTS, **quant}}, {})
    if chip is not None:
        extra = {k: v for k, v in chip["settings"].items() if k != "crossbar"}  # seed, kinds, adc_auto, tune, ...
        crossbar = {**CROSSBAR_DEFAULTS, **chip["settings"]["crossbar"], "kinds": ["linear"], **extra}
        _flatten("memsim", crossbar, settings)
    _flatten("decode", decode, settings)
    bits = (model["settings"]["quant"] or {}).get("weight_bits")  # None: the float model
    system = "memsim" if chip is not None else ("float" if bits is None else "qat")
    made_by = record["made_by"]
    return Result(
        root,
        relpath,
        system,
        model["path"],
        model.get("baseline", model["path"]),
        bits,
        chip["path"] if chip else None,
        chip["label"] if chip else "",
        decode.get("instance"),
        decode["split"],
        decode["method"],
        settings,
        read_score(root / relpath / SCORE_FILE),
        made_by.get("revision"),
        made_by.get("dirty"),
    )


def group(results: list[Result]) -> list[Group]:
    """Results by (work dir, model, chip, split, decoding settings), labelled, linked to their references,
    with their relative changes."""
    grouped = defaultdict(list)
    for r in results:
        grouped[(str(r.root), r.model, r.chip, *r.comparison_key)].append(r)
    groups = [Group(sorted(members, key=lambda r: r.instance or 0)) for members in grouped.values()]
    _label(groups)
    digital = {(str(g.first.root), g.first.model, *g.first.comparison_key): g for g in groups if g.first.chip is None}
    counts: dict[int, np.ndarray] = {}
    for g in groups:
        r = g.first
        if r.system == "float":
            continue
        g.float_reference = digital.get((str(r.root), r.baseline, *r.comparison_key))
        g.qat_reference = digital.get((str(r.root), r.model, *r.comparison_key)) if r.system == "memsim" else None
        for name, reference in (("float", g.float_reference), ("qat", g.qat_reference)):
            g.relative[name] = _relative(g, reference, counts) if reference is not None else None
    return sorted(groups, key=Group.sort_key)


def _label(groups: list[Group]) -> None:
    """Each group's label: its settings that differ within its kind (system, method, model and chip name: the
    model's and the chip's names already tell those of other names apart)."""
    kinds = defaultdict(list)
    for g in groups:
        kinds[g.first.system, g.first.method, g.first.model_label, g.first.chip_label].append(g)
    for members in kinds.values():
        keys = {
            k
            for k in set().union(*(g.first.settings for g in members)) - SHOWN_ELSEWHERE
            if not k.startswith(NOT_LABELS)
        }
        varying = sorted(k for k in keys if len({json.dumps(g.first.settings.get(k)) for g in members}) > 1)
        for g in members:
            g.label = ", ".join(f"{k}={g.first.settings.get(k)}" for k in varying)


def _relative(g: Group, reference: Group, counts: dict) -> Interval | None:
    ids, errors = g.errors
    ref_ids, ref_errors = reference.errors
    if ids != ref_ids:
        return None
    if len(ids) not in counts:  # every comparison on a split sees the same resamples
        counts[len(ids)] = resample_counts(len(ids))
    return relative_change(ref_errors, errors, counts[len(ids)])


def _cell(interval: Interval | None, present: bool) -> str:
    if not present:
        return "-"
    return interval.percent() if interval is not None else "n/a"


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
    chips = layer_error_table(groups)
    chip_section = f"## Chip layer errors\n\n{chips}\n\n" if chips else ""
    costs = cost_table(groups)
    chip_section += f"## Chip cells, converters and programming\n\n{costs}\n\n" if costs else ""
    energy = energy_table(groups)
    chip_section += f"## Converters and energy\n\n{energy}\n\n" if energy else ""
    return (
        f"# {title}\n\n{notes}## WER (%) per system\n\n{summary_table(groups)}\n\n"
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


def write_report(work_dirs: list[Path], out_dir: Path, title: str, notes: str = "") -> list[Group]:
    """results.csv, RESULTS.md, wer_vs_bits.png, (with two chips or more) chips.png and wer_vs_energy.png, (with
    two ADC settings or more at one weight width) adc_heatmap.png and (per multi-level chip) levels-*.png in
    out_dir; returns the groups."""
    results, left_out = collect(work_dirs)
    if not results:
        raise UserError(f"no current decode results under {', '.join(map(str, work_dirs))}: run the decode stage first")
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
    return groups
