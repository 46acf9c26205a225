"""Mixed precision against uniform chips (asr.pipeline.allocation): each allocated chip beside the uniform chips of
the QAT model it was allocated from, by energy per second of audio and by its WER change against that uniform
digital QAT model, with the uniform chips' Pareto front. A fine-tuned allocation is a model of its own
(w3a8-alloc...), but it is compared with the same uniform QAT model as the uniform chips: the question is what
an allocation of chip bits buys over a uniform chip, not over its own fine-tuning.
"""

import statistics
from dataclasses import dataclass
from pathlib import Path

from asr.files import markdown_table
from asr.reports.energy import adc_setting, chip_energy, pareto_front, priced, save_energy_plot
from asr.reports.results import Group
from asr.significance import Interval, relative_change

ALLOCATED = "-alloc"  # what an allocated chip's name holds (AllocationSettings.label)
INIT_FROM = "init_from.path"  # the flat setting of a model fine-tuned from a checkpoint


@dataclass
class Point:
    """One chip on the frontier: its group, energy, and its WER change against the uniform QAT model."""

    group: Group
    energy: float
    change: Interval | None
    allocated: bool
    on_front: bool = False


def uniform_model(g: Group) -> str:
    """The folder of the uniform QAT model a chip's model is, or was fine-tuned from (an allocation's)."""
    start = g.first.settings.get(INIT_FROM)
    if ALLOCATED in g.first.model_label and isinstance(start, str):
        return str(Path(start).parent)
    return g.first.model


def frontiers(groups: list[Group], split: str = "test") -> dict[str, list[Point]]:
    """Per uniform QAT model ("work dir/model folder") that has allocated chips: its priced chips and the allocated
    ones, by energy, each
    with its change against that model's digital WER on the same utterances (None where it has no such
    decode); the uniform chips of the Pareto front (energy, WER) marked."""
    chips = priced(groups, split)
    digital = {(str(g.first.root), g.first.model, g.first.comparison_key): g for g in groups if g.first.system == "qat"}
    out: dict[str, list[Point]] = {}
    for root, model in sorted(
        {(str(g.first.root), uniform_model(g)) for g in chips if ALLOCATED in g.first.chip_label}
    ):
        points = []
        for g in (g for g in chips if str(g.first.root) == root and uniform_model(g) == model):
            reference = digital.get((root, model, g.first.comparison_key))
            change = None
            if reference is not None and reference.errors[0] == g.errors[0]:
                change = relative_change(reference.errors[1], g.errors[1])
            points.append(Point(g, chip_energy(g), change, ALLOCATED in g.first.chip_label))
        uniform = [(p.energy, statistics.mean(p.group.wers)) for p in points if not p.allocated]
        front = set(pareto_front(uniform))
        for p in points:
            p.on_front = not p.allocated and (p.energy, statistics.mean(p.group.wers)) in front
        out[f"{root}/{model}"] = sorted(points, key=lambda p: p.energy)
    return out


def _changed(p: Point) -> Interval:
    if p.change is None:
        raise ValueError(f"{p.group.first.path}: no change against the uniform QAT model")
    return p.change


def _xy(points: list[Point]) -> tuple[list[float], list[float]]:
    """Energies and WER changes in percent, for plotting."""
    return [p.energy for p in points], [100 * _changed(p).estimate for p in points]


def frontier_table(groups: list[Group]) -> str:
    """One table per uniform QAT model with allocations: every chip by energy, its WER, its change against the
    uniform digital QAT model with the paired interval, and whether it is on the uniform chips' front."""
    sections = []
    for model, points in frontiers(groups).items():
        r = points[0].group.first
        rows = [
            [
                p.group.first.model_label,
                p.group.first.chip_label,
                adc_setting(p.group),
                f"{p.energy:.2f}",
                f"{statistics.mean(p.group.wers):.2f}"
                + (f" +- {statistics.stdev(p.group.wers):.2f}" if len(p.group.wers) > 1 else ""),
                "-" if p.change is None else p.change.percent(),
                "allocated" if p.allocated else ("uniform, on the front" if p.on_front else "uniform"),
            ]
            for p in points
        ]
        header = ["model", "chip", "ADC", "uJ per s of audio", "WER", "rel. to the uniform QAT [95 % CI]", "kind"]
        sections.append(f"Uniform QAT model `{model}`, {r.split}, {r.method}:\n\n{markdown_table(header, rows)}")
    return "\n\n".join(sections)


def frontier_plot(groups: list[Group], path: Path) -> bool:
    """The WER change against the uniform QAT model over energy per second of audio: the uniform chips and their
    Pareto front, the allocated chips as stars. False when no chip is allocated."""
    found = frontiers(groups)
    if not found:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = plt.get_cmap("tab10")
    for i, (model, points) in enumerate(found.items()):
        known = [p for p in points if p.change is not None]
        colour = colours(i)
        uniform = [p for p in known if not p.allocated]
        ax.plot(*_xy(uniform), "o", color=colour, alpha=0.6, label=f"{model}: uniform chips")
        front = [p for p in uniform if p.on_front]
        ax.plot(*_xy(front), "-", color=colour, label=f"{model}: uniform Pareto front")
        for p in (p for p in known if p.allocated):
            change = _changed(p)
            spread = [[100 * (change.estimate - change.low)], [100 * (change.high - change.estimate)]]
            (x,), (y,) = _xy([p])
            ax.errorbar([x], [y], yerr=spread, fmt="*", markersize=12, color=colour, capsize=3)
            ax.annotate(p.group.first.chip_label, (x, y), fontsize=6, xytext=(4, 4), textcoords="offset points")
    r = next(iter(found.values()))[0].group.first
    ax.set_xscale("log")
    ax.axhline(0, color="black", linewidth=0.8)
    title = f"Allocated chips (stars, 95 % CI) and uniform chips: {r.split}, {r.method} decoding"
    save_energy_plot(fig, ax, path, "WER change against the uniform digital QAT model (%)", title)
    return True
