"""What each chip's converters cost: its ADC and DAC settings, the energy estimate of its summary.json
(memsim.measure_energy) per second of audio beside the digital baseline, and its WER; a WER heatmap over ADC
precision x range bits, and WER against energy with the Pareto front. The energies are estimates from the
per-operation costs in memsim.energy.EnergyCosts (recorded in each summary.json).
"""

import dataclasses
import json
import statistics
from collections import defaultdict
from pathlib import Path

from asr.files import markdown_table
from asr.reports.chips import chip_groups, name, save_png, summary_of
from asr.reports.results import Group
from memsim import ADC_PRESETS

NEAR_REFERENCE = 1.10  # "within 10 % relative WER of the reference chip"
# the paper's high-precision ADC: the reference the cheaper chips are held against
REFERENCE_ADC = list(ADC_PRESETS["high_precision"])


def priced(groups: list[Group], split: str = "test") -> list[Group]:
    """The chip groups (of `split`, else the first split decoded; beam when present) whose summary has a
    complete energy estimate."""
    return [g for g in chip_groups(groups, split) if _chip_energy(g) is not None]


def _energy(g: Group) -> dict[str, float | None]:
    summary = summary_of(g)
    return summary.energy_per_second if summary else {}


def _chip_energy(g: Group) -> float | None:
    return _energy(g).get("chip")


def adc_setting(g: Group) -> str:
    """The chip's ADC: "(p, r)" when every layer has the same, else "auto B" or "per layer", with the range bits'
    spread over the layers."""
    summary = summary_of(g)
    adcs = summary.adcs if summary else []
    if not adcs:
        return "n/a"
    if len(set(adcs)) == 1:
        return f"({adcs[0][0]}, {adcs[0][1]})"
    ranges = [r for _, r in adcs if r is not None]
    budget = {p + r for p, r in adcs if p is not None and r is not None}
    kind = f"auto {budget.pop()}" if len(budget) == 1 else "per layer"
    return f"{kind}: range {min(ranges)}-{max(ranges)}" if ranges else kind


def _uniform_adc(g: Group) -> list[int | None] | None:
    summary = summary_of(g)
    adcs = set(summary.adcs) if summary else set()
    return list(adcs.pop()) if len(adcs) == 1 else None


def chip_energy(g: Group) -> float:
    """The chip energy of a priced group (priced() keeps only those that have one)."""
    return float(_chip_energy(g) or 0.0)


def _wer(g: Group) -> float:
    return statistics.mean(g.wers)


def energy_table(groups: list[Group]) -> str:
    """One row per priced chip: input scheme, ADC, DAC, energy per second of audio by part, in total and over
    the cost bounds, the digital baseline with its weights in SRAM and in DRAM, how many times less the chip
    spends, and WER; then, per model, the cheapest chip within NEAR_REFERENCE of the (8, 10) chip's WER."""
    chosen = priced(groups)
    if not chosen:
        return ""
    header = [
        "chip",
        "inputs",
        "ADC (precision, range)",
        "DAC bits",
        "crossbar",
        "DAC",
        "ADC",
        "accumulate",
        "correction",
        "chip total [low-high]",
        "digital: SRAM / DRAM",
        "digital / chip: SRAM [range] / DRAM",
        "WER mean",
        "rel. to QAT [95 % CI]",
    ]
    rows = []
    for g in sorted(chosen, key=lambda g: (g.first.model_label, chip_energy(g))):
        energy = _energy(g)
        relative = g.relative.get("qat")
        rows.append(
            [
                name(g),
                _scheme(g),
                adc_setting(g) + (" *" if _adc_idealized(g) else ""),
                str(_dac_bits(g)),
                *(_uj(energy.get(part)) for part in ("crossbar", "dac", "adc", "accumulate", "correction")),
                f"{_uj(energy.get('chip'))} [{_uj(energy.get('chip_low'))}-{_uj(energy.get('chip_high'))}]",
                f"{_uj(energy.get('digital'))} / {_uj(energy.get('digital_dram'))}",
                _savings(energy),
                f"{_wer(g):.2f}",
                relative.percent() if relative else "n/a",
            ]
        )
    r = chosen[0].first
    costs = _costs_of(chosen[0])
    idealized = (
        f"\n\n\\* an ADC of more than {costs['published_adc_bits']} bits at one conversion per read pulse: beyond "
        "what this estimate counts as published converters, an idealization."
        if any(_adc_idealized(g) for g in chosen) and "published_adc_bits" in costs
        else ""
    )
    return (
        f"Split {r.split}, {r.method} decoding. Energy in microjoules per second of audio (= microwatts while "
        "listening), estimated by memsim.measure_energy on instance 0 (4 batches of the first decoded split) for "
        "the machine each chip's input scheme simulates (amplitude: one DAC conversion per row and one ADC "
        "conversion per column per vector; bit-serial: one-bit DACs and one ADC conversion per column for each "
        "input bit, in a positive and a negative phase): the cells' read power is simulated; DAC, ADC and digital "
        f"operations are counted and priced with memsim.energy.EnergyCosts ({_costs(costs)}). The range: the "
        "same counts under memsim.energy.COST_BOUNDS' least and most favourable costs. Digital baseline: the same "
        "layers as integer multiply-accumulates plus weight reads from an SRAM that holds all their weights, or "
        "from DRAM (M. Horowitz, ISSCC 2014, 45 nm); digital / chip below 1: the chip spends more. Estimates, not "
        "measurements.\n\n"
        + markdown_table(header, rows)
        + idealized
        + "\n\n"
        + _cheapest_near_reference(groups, chosen)
    )


def _savings(energy: dict[str, float | None]) -> str:
    """How many times less than the digital baseline the chip spends (below 1: more): SRAM central [over the
    chip's cost bounds] / DRAM."""
    chip, low, high = (energy.get(key) for key in ("chip", "chip_low", "chip_high"))
    sram, dram = energy.get("digital"), energy.get("digital_dram")
    if not chip or sram is None:
        return "n/a"
    text = f"{sram / chip:.2g}x"
    if low and high:
        text += f" [{sram / high:.2g}-{sram / low:.2g}]"
    return text + (f" / {dram / chip:.2g}x" if dram is not None else "")


def _scheme(g: Group) -> str:
    summary = summary_of(g)
    return summary.crossbar.input_scheme.replace("_", "-") if summary else "n/a"


def _adc_idealized(g: Group) -> bool:
    """Whether any layer's ADC is beyond what the estimate counts as published (memsim.energy.estimate)."""
    summary = summary_of(g)
    layers = summary.energy.get("layers", []) if summary and summary.energy else []
    return any(row.get("adc_idealized") for row in layers)


def _uj(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:#.3g}"


def _costs(costs: dict) -> str:
    thermal = f" up to {costs['adc_thermal_bits']} bits, 4x per bit above" if "adc_thermal_bits" in costs else ""
    amplitude = f", amplitude DAC {costs['amplitude_dac']}" if "amplitude_dac" in costs else ""
    return (
        f"ADC {costs['adc_joules_per_step'] * 1e15:.2f} fJ x 2^bits{thermal}, one-bit DAC "
        f"{costs['dac_joules_per_bit'] * 1e12:.2f} pJ (ISAAC, ISCA 2016){amplitude}, read pulse "
        f"{costs['read_seconds'] * 1e9:g} ns"
    )


def _cheapest_near_reference(groups: list[Group], shown: list[Group]) -> str:
    """Per model: the (8, 10) chip with the widest DAC, and the cheapest chip whose WER is within NEAR_REFERENCE
    of it, both chosen on the dev split (beam when present) and reported on the table's split (`shown`). Without
    dev decodes the choice is made on the table's split, and the line says so."""
    dev = [g for g in priced(groups, "dev") if g.first.split == "dev"]
    choosing = dev or shown
    on = choosing[0].first.split if choosing else ""
    reported = {_key(g): g for g in shown}
    lines = []
    for model in sorted({g.first.model_label for g in choosing}):
        same = [g for g in choosing if g.first.model_label == model]
        if len(same) < 2:
            continue
        references = [g for g in same if _uniform_adc(g) == REFERENCE_ADC and _dac_bits(g) == _widest_dac(same)]
        if not references:
            continue
        reference = min(references, key=_wer)
        near = [g for g in same if _wer(g) <= NEAR_REFERENCE * _wer(reference)]
        # energies equal to the 3 digits the table shows (the same converters; the cells' read energy varies a
        # little with the activations): the better WER
        cheapest = min(near, key=lambda g: (float(f"{chip_energy(g):.3g}"), _wer(g)))
        saving = (_chip_energy(reference) or 0) / (_chip_energy(cheapest) or 1)
        line = (
            f"- {model}, chosen on {on}: the (8, 10) chip ({reference.first.chip_label}) has WER "
            f"{_wer(reference):.2f} at {_uj(_chip_energy(reference))} uJ/s; the cheapest chip within "
            f"{100 * (NEAR_REFERENCE - 1):.0f} % relative of it is {cheapest.first.chip_label} (ADC "
            f"{adc_setting(cheapest)}): WER {_wer(cheapest):.2f} at {_uj(_chip_energy(cheapest))} uJ/s, "
            f"{saving:,.0f}x less energy."
        )
        if dev:
            test_reference, test_cheapest = reported.get(_key(reference)), reported.get(_key(cheapest))
            if test_reference and test_cheapest:
                split = test_cheapest.first.split
                line += (
                    f" On {split}: WER {_wer(test_reference):.2f} and {_wer(test_cheapest):.2f} "
                    f"({100 * (_wer(test_cheapest) / _wer(test_reference) - 1):+.1f} % relative)."
                )
        lines.append(line)
    return "\n".join(lines)


def _key(g: Group) -> tuple[str, str, str]:
    """What names a chip configuration across splits: its model, its chip and what tells it apart."""
    return g.first.model_label, g.first.chip_label, g.label


def _widest_dac(groups: list[Group]) -> int:
    return max(_dac_bits(g) or 0 for g in groups)


def _dac_bits(g: Group) -> int | None:
    summary = summary_of(g)
    return summary.crossbar.dac_bits if summary else None


def _costs_of(g: Group) -> dict:
    """The per-operation costs a priced chip's energy estimate assumed (priced() keeps only chips with one)."""
    summary = summary_of(g)
    assert summary is not None and summary.energy is not None
    return summary.energy["costs"]


def _without_adc(g: Group) -> str:
    """The chip's configuration but its ADC: chips that share it differ only in their converters."""
    summary = summary_of(g)
    config = dataclasses.asdict(summary.crossbar) if summary else {}
    for key in ("adc_precision_bits", "adc_range_bits"):
        config.pop(key, None)
    return json.dumps(config, sort_keys=True)


def adc_heatmaps(groups: list[Group], path: Path) -> bool:
    """WER over ADC precision x range bits, one panel per model: the chips of one ADC for every layer whose
    configurations differ only in it (the largest such family of that model). Returns False (and draws nothing)
    when no model has two ADC settings or more."""
    families: dict[tuple[str, str], dict[tuple[int, int], float]] = defaultdict(dict)
    for g in sorted(chip_groups(groups), key=lambda g: g.first.chip_label):
        adc = _uniform_adc(g)
        if adc is not None and adc[0] is not None and adc[1] is not None:
            families[(g.first.model_label, _without_adc(g))].setdefault((adc[0], adc[1]), _wer(g))
    cells: dict[str, dict[tuple[int, int], float]] = {}
    for (model, _), grid in sorted(families.items(), key=lambda item: len(item[1])):
        cells[model] = grid  # the largest family of each model comes last
    panels = {model: grid for model, grid in cells.items() if len(grid) > 1}
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (model, grid) in zip(axes[0], sorted(panels.items()), strict=True):
        precisions = sorted({p for p, _ in grid})
        ranges = sorted({r for _, r in grid})
        values = np.full((len(precisions), len(ranges)), np.nan)
        for (p, r), wer in grid.items():
            values[precisions.index(p), ranges.index(r)] = wer
        image = ax.imshow(values, origin="lower", cmap="viridis_r")
        middle = (np.nanmin(values) + np.nanmax(values)) / 2
        for (i, j), wer in np.ndenumerate(values):
            if not np.isnan(wer):
                colour = "black" if wer < middle else "white"  # light cells (low WER) get dark text
                ax.text(j, i, f"{wer:.2f}", ha="center", va="center", fontsize=8, color=colour)
        ax.set(
            xticks=range(len(ranges)),
            xticklabels=ranges,
            yticks=range(len(precisions)),
            yticklabels=precisions,
            xlabel="ADC range bits r (clip at +-2^(r-1))",
            ylabel="ADC precision bits p (step 2^-p)",
            title=f"{model}: WER (%), mean over instances",
        )
        fig.colorbar(image, ax=ax, label="WER (%)")
    save_png(fig, path)
    return True


def pareto_plot(groups: list[Group], path: Path) -> bool:
    """WER against the chip's energy per second of audio (log), per model, the Pareto front (no other chip of that
    model is both cheaper and better) joined, and each digital QAT model at its digital baseline's energy.
    Returns False when fewer than two chips are priced."""
    chosen = priced(groups)
    if len(chosen) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = plt.get_cmap("tab10")
    for i, model in enumerate(sorted({g.first.model_label for g in chosen})):
        same = [g for g in chosen if g.first.model_label == model]
        energy = [chip_energy(g) for g in same]
        wers = [_wer(g) for g in same]
        spread = [statistics.stdev(g.wers) if len(g.wers) > 1 else 0.0 for g in same]
        colour = colours(i)
        ax.errorbar(energy, wers, yerr=spread, fmt="o", color=colour, alpha=0.6, markersize=4, label=f"{model} chips")
        front = pareto_front(list(zip(energy, wers, strict=True)))
        ax.plot(*zip(*front, strict=True), "-", color=colour, linewidth=1.5, label=f"{model} Pareto front")
        for g in same:
            if (chip_energy(g), _wer(g)) in front:
                ax.annotate(
                    _point_label(g), (chip_energy(g), _wer(g)), fontsize=6, xytext=(3, 3), textcoords="offset points"
                )
        qat = same[0].qat_reference
        digital = _energy(same[0])["digital"]
        if qat is not None and digital is not None:
            ax.plot([digital], [_wer(qat)], "*", color=colour, markersize=12, label=f"{model} digital QAT")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(matplotlib.ticker.FormatStrFormatter("%g"))
    r = chosen[0].first
    save_energy_plot(
        fig, ax, path, "WER (%), mean over instances", f"WER against energy: {r.split}, {r.method} decoding"
    )
    return True


def save_energy_plot(fig, ax, path: Path, ylabel: str, title: str) -> None:
    """Label a plot over the chip's energy per second of audio (its x axis), add its grid and legend, and save it."""
    ax.set(
        xlabel="energy per second of audio (uJ), crossbar layers only: estimate (memsim.energy)",
        ylabel=ylabel,
        title=title,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    save_png(fig, path)


def _point_label(g: Group) -> str:
    """A chip's ADC, and its input scheme when its inputs are not amplitudes."""
    scheme = _scheme(g)
    return adc_setting(g) + ("" if scheme in ("amplitude", "n/a") else f", {scheme}")


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (energy, WER) points no other point beats in both (lower is better), by increasing energy."""
    front: list[tuple[float, float]] = []
    for energy, wer in sorted(points):
        if not front or wer < front[-1][1]:
            front.append((energy, wer))
    return front
