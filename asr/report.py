"""Results of a work directory (or several: a sweep) as results.csv, RESULTS.md and a plot.

Reads what the decode and memsim stages wrote: work_dir/decode/<system>/<split>/<method>/score.json and
work_dir/memsim/<system>/<chip>/instance-<k>/<split>/<method>/score.json. A QAT system's weight bits
come from its name (quant.name, `w<bits>a<bits>`); the float system is `float`.
"""
import csv
import io
import platform
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from asr.files import atomic_path, write_text
from asr.scoring import HEADER, Score, read_score, total

COLUMNS = ["system", "weight_bits", "chip", "split", "method", "instance", "wer", "snt", "words", "corr", "sub",
           "del", "ins"]
QAT_NAME = re.compile(r"^w(\d+(?:\.\d+)?)a\d+$")


def collect(work_dirs: list[Path]) -> list[dict]:
    """One row per score file: float and QAT digital decodes, and every memsim instance."""
    rows = []
    for work in map(Path, work_dirs):
        for path in sorted(work.glob("decode/*/*/*/score.json")):
            system, split, method = path.parts[-4:-1]
            kind = "float" if system == "float" else "qat"
            rows.append(_row(kind, system, "", split, method, "", read_score(path)))
        for path in sorted(work.glob("memsim/*/*/instance-*/*/*/score.json")):
            system, chip, instance, split, method = path.parts[-6:-1]
            rows.append(_row("memsim", system, chip, split, method, int(instance.split("-")[1]), read_score(path)))
    if not rows:
        raise FileNotFoundError(f"no score files under {', '.join(map(str, work_dirs))}: run the decode stage first")
    return rows


def _row(kind: str, system: str, chip: str, split: str, method: str, instance, score: Score) -> dict:
    match = QAT_NAME.match(system)
    bits = float(match.group(1)) if match else ""
    return {"system": kind, "weight_bits": bits, "chip": chip, "split": split, "method": method,
            "instance": instance, "wer": round(score.err, 2), "score": score}


def write_csv(rows: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS)
    writer.writeheader()
    for row in rows:
        counts = row["score"].to_dict()
        writer.writerow({**{k: row[k] for k in COLUMNS if k in row}, **{k: counts[k] for k in COLUMNS[7:]}})
    write_text(path, buffer.getvalue())


def groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows by (system, weight_bits, chip, split, method): a memsim group holds its instances."""
    grouped = defaultdict(list)
    for row in rows:
        grouped[(row["system"], row["weight_bits"], row["chip"], row["split"], row["method"])].append(row)
    order = {"float": 0, "qat": 1, "memsim": 2}
    return dict(sorted(grouped.items(), key=lambda item: (item[0][3], item[0][4], order[item[0][0]],
                                                         str(item[0][1]), item[0][2])))


def summary_table(rows: list[dict]) -> str:
    """WER mean / std / min / max per system, and the relative degradation against the float model."""
    grouped = groups(rows)
    floats = {(k[3], k[4]): statistics.mean(r["wer"] for r in v) for k, v in grouped.items() if k[0] == "float"}
    lines = ["|split|method|system|bits|chip|instances|Snt|Wrd|WER mean|std|min|max|rel. to float|",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (system, bits, chip, split, method), members in grouped.items():
        wers = [r["wer"] for r in members]
        mean = statistics.mean(wers)
        base = floats.get((split, method))
        relative = f"{100 * (mean - base) / base:+.1f} %" if base else "-"
        score = members[0]["score"]
        lines.append(f"|{split}|{method}|{system}|{bits}|{chip or '-'}|{len(members)}|{score.snt}|{score.words}|"
                     f"{mean:.2f}|{statistics.stdev(wers) if len(wers) > 1 else 0:.2f}|{min(wers):.2f}|"
                     f"{max(wers):.2f}|{relative}|")
    return "\n".join(lines)


def espnet_tables(rows: list[dict]) -> str:
    """|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err| per system; memsim counts pooled over its instances."""
    lines = [HEADER]
    for (system, bits, chip, split, method), members in groups(rows).items():
        name = "/".join(str(p) for p in (system, f"w{bits}" if bits != "" else "", chip, split, method) if p)
        if len(members) > 1:
            name += f" ({len(members)} instances pooled)"
        lines.append(total(r["score"] for r in members).row(name))
    return "\n".join(lines)


def environment() -> str:
    try:
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        revision = "unknown"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    return (f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n- git revision: {revision}\n"
            f"- python {platform.python_version()}, torch {torch.__version__}, {device}\n"
            f"- command: `{' '.join(sys.argv)}`")


def results_markdown(rows: list[dict], title: str, notes: str = "") -> str:
    return (f"# {title}\n\n{notes}## WER (%) per system\n\n{summary_table(rows)}\n\n"
            f"## Scoring details\n\n{espnet_tables(rows)}\n\n## Environment\n\n{environment()}\n")


def plot(rows: list[dict], path: Path, split: str = "test") -> None:
    """WER against weight bits on one split (test if present): float (line), QAT digital, memsim mean +- std
    (one marker per chip configuration, side by side), per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = {r["split"] for r in rows}
    split = split if split in splits else sorted(splits)[0]
    grouped = groups([r for r in rows if r["split"] == split])
    methods = sorted({k[4] for k in grouped})
    chips = sorted({k[2] for k in grouped if k[2]})
    offset = {"": 0.0, **{chip: 0.06 * (i + 1) for i, chip in enumerate(chips)}}  # markers side by side
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 4), squeeze=False)
    for ax, method in zip(axes[0], methods):
        series = defaultdict(list)  # label -> (bits, mean, std) points, one line per system and chip
        for (system, bits, chip, _, m), members in grouped.items():
            if m != method:
                continue
            wers = [r["wer"] for r in members]
            if system == "float":
                ax.axhline(wers[0], color="black", linestyle="--", label="float")
                continue
            label = "QAT digital" if system == "qat" else f"memsim {chip}"
            std = statistics.stdev(wers) if len(wers) > 1 else 0.0
            series[label].append((bits + offset[chip], statistics.mean(wers), std))
        for label, points in series.items():
            x, y, error = zip(*sorted(points))
            ax.errorbar(x, y, yerr=error, fmt="-o" if label == "QAT digital" else "-s", capsize=4, label=label)
        ax.legend(fontsize=8)
        ax.set(xlabel="weight bits", ylabel="WER (%)", title=f"{split}, {method} decoding")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_report(work_dirs: list[Path], out_dir: Path, title: str, notes: str = "") -> list[dict]:
    """results.csv, RESULTS.md and wer_vs_bits.png in out_dir."""
    rows = collect(work_dirs)
    out_dir = Path(out_dir)
    write_csv(rows, out_dir / "results.csv")
    write_text(out_dir / "RESULTS.md", results_markdown(rows, title, notes))
    plot(rows, out_dir / "wer_vs_bits.png")
    return rows
