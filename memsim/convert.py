"""Whole-model tools: convert linear and convolution layers to crossbars, calibrate input ranges, summarize a chip."""

from __future__ import annotations

import dataclasses
import fnmatch
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from memsim.config import ChipSpec, CrossbarConfig
from memsim.conv import MemristorConv, MemristorConv1d, MemristorConv2d
from memsim.crossbar import LEVEL_BINS_PER_STEP
from memsim.layers import MemristorLinear
from memsim.lstm import MemristorLSTM
from memsim.progress import ProgrammingProgress, ProgressCallback

KINDS = ("linear", "conv", "lstm")  # what convert() maps: linear layers, Conv1d / Conv2d, nn.LSTM


def _kind(module: nn.Module) -> str | None:
    """The kind convert() knows a module as: "linear" (nn.Linear, or a quantization-aware linear exposing its
    integer weights; a LinearLSTM's gate layers among them), "conv" (nn.Conv1d / nn.Conv2d, plain or
    quantization-aware) or "lstm" (nn.LSTM); None for anything else or for what is already on crossbars."""
    if isinstance(module, (MemristorLinear, MemristorConv)):
        return None
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return "conv"
    if isinstance(module, nn.LSTM):
        return "lstm"
    if isinstance(module, nn.Linear) or (
        hasattr(module, "integer_weight") and hasattr(module, "weight_scale") and hasattr(module, "in_features")
    ):
        return "linear"
    return None


def _matches(name: str, patterns: Iterable[str] | str | None) -> bool:
    if patterns is None:
        return False
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _on_crossbars(
    module: nn.Module,
    config: CrossbarConfig,
    generator: torch.Generator | None,
    program: bool,
    progress: ProgressCallback | None,
):
    if _kind(module) == "conv":
        conv_class = MemristorConv1d if isinstance(module, nn.Conv1d) else MemristorConv2d
        return conv_class.from_conv(module, config, generator, program, progress)
    if isinstance(module, nn.LSTM):
        return MemristorLSTM.from_lstm(module, config, generator, program, progress)
    return MemristorLinear.from_linear(module, config, generator, program, progress)


def _programmed_layer(
    name: str,
    module: nn.Module,
    config: CrossbarConfig,
    generator: torch.Generator | None,
    program: bool,
    progress: ProgressCallback | None,
    done: int,
    total: int,
):
    """_on_crossbars, its events named after the layer, then the layer's own event ("program": done of total)."""
    if progress is None:
        return _on_crossbars(module, config, generator, program, None)
    report = progress  # bound here: mypy keeps the narrowing inside the lambda
    start = time.perf_counter()
    layer = _on_crossbars(
        module, config, generator, program, lambda event: report(dataclasses.replace(event, layer=name))
    )
    progress(ProgrammingProgress("program", name, done, total, time.perf_counter() - start))
    return layer


def convert(
    model: nn.Module,
    chip: CrossbarConfig | ChipSpec,
    generator: torch.Generator | None = None,
    include: Iterable[str] | str | None = None,
    exclude: Iterable[str] | str | None = None,
    program: bool = True,
    kinds: Iterable[str] | None = None,
    progress: ProgressCallback | None = None,
) -> nn.Module:
    """Replace, in place, the layers of the given kinds (KINDS: "linear", "conv", "lstm") of any model by
    programmed MemristorLinear, MemristorConv1d / MemristorConv2d and MemristorLSTM layers.

    chip: a CrossbarConfig for every layer, or a ChipSpec, whose kinds, ADC plan and layer bits apply: a layer
    that one of the plan's patterns names is converted with that ADC, one that a layer_bits pattern names with
    those weight bits (every pattern must name a converted layer); an automatic ADC follows once the chip is
    programmed (converters.apply_adc_plan). kinds: KINDS to convert,
    by default the ChipSpec's, or linear layers only.
    include / exclude: module names or fnmatch patterns as in named_modules() (e.g. "encoder.*.ff*");
    with include, only matching layers are converted; exclude wins over include. program=False leaves the
    cells unprogrammed, to load a saved chip into with load_state_dict. progress: called with a
    ProgrammingProgress per pre-cycling pulse and per layer programmed (memsim.progress; ProgrammingTimer adds up
    how the time splits); it never changes what is programmed.
    """
    spec = chip if isinstance(chip, ChipSpec) else ChipSpec(chip)
    config, plan = spec.crossbar, spec.adc
    kinds = tuple(spec.kinds if kinds is None else kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown layer kind(s) {unknown}; choose from {list(KINDS)}")
    if isinstance(model, (MemristorLinear, MemristorConv)):
        raise ValueError(f"the model is already a {type(model).__name__}")
    if _kind(model) in kinds and not include:
        return _programmed_layer("", model, config, generator, program, progress, 1, 1)
    chosen = [
        (name, module)
        for name, module in model.named_modules()
        if name
        and _kind(module) in kinds
        and (include is None or _matches(name, include))
        and not _matches(name, exclude)
    ]
    for what, patterns in (("ADC", plan.layers), ("weight-bits", spec.layer_bits)):
        unused = [pattern for pattern, _ in patterns if not any(_matches(name, pattern) for name, _ in chosen)]
        if unused:
            raise ValueError(f"{what} pattern(s) {unused} match no converted layer; layers: {[n for n, _ in chosen]}")
    for done, (name, module) in enumerate(chosen, 1):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer_config = spec.crossbar_of(name)
        layer = _programmed_layer(name, module, layer_config, generator, program, progress, done, len(chosen))
        setattr(parent, child, layer)
    return model


def memristor_layers(model: nn.Module) -> list[tuple[str, MemristorLinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MemristorLinear)]


def run_instrumented(model: nn.Module, run: Callable[[nn.Module], Any], hook: str, make: Callable[[], Any]) -> dict:
    """Call run(model) with a fresh make() as the `hook` attribute of every MemristorLinear (adc_probe or
    energy_meter), removed again afterwards; returns the instruments by layer name."""
    layers = memristor_layers(model)
    instruments = {name: make() for name, _ in layers}
    for name, layer in layers:
        setattr(layer, hook, instruments[name])
    try:
        run(model)
    finally:
        for _, layer in layers:
            setattr(layer, hook, None)
    return instruments


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable) -> nn.Module:
    """Set every MemristorLinear's input range to the largest input magnitude seen over the batches.

    Each batch is passed to the model as model(*batch) if it is a tuple or list, else model(batch).
    Layers that already have a range (from quantization-aware training) keep it.
    """
    layers = [layer for _, layer in memristor_layers(model) if float(layer.input_range) == 0]
    for layer in layers:
        layer.calibrating = True
    try:
        for batch in batches:
            model(*batch) if isinstance(batch, (tuple, list)) else model(batch)
    finally:
        for layer in layers:
            layer.calibrating = False
    return model


def summary(model: nn.Module) -> list[dict[str, Any]]:
    """Per converted layer and in total: cells, arrays, tiles, failed cells, ADC conversions per input vector and
    (per layer) the ADC's [precision bits, range bits],
    and the cells a read could disturb (count, and percent of the programmed cells; see crossbar.program), with
    read_disturb the cells reads have switched so far;
    for multi-level cells also the programming pulses per cell (mean, 99th percentile, maximum; level_statistics
    has the rest)."""
    rows: list[dict[str, Any]] = []
    for name, layer in memristor_layers(model):
        tile = layer.config.tile_size
        planes = layer.config.planes
        arrays = 2 * planes * layer.tiles()
        rows.append(
            {
                "layer": name,
                "shape": f"{layer.in_features}x{layer.out_features}",
                "weight_bits": layer.config.weight_bits,
                "planes": planes,
                "tiles": layer.tiles(),
                "arrays": arrays,
                "cells": arrays * tile * tile,
                "failed_cells": int(layer.failed_cells),
                "adc_conversions": layer.conversions()[1],
                "adc": [layer.config.adc_precision_bits, layer.config.adc_range_bits],
                "read_disturbable_cells": int(layer.read_disturbable_cells),
                "read_disturb_pct": _percent(int(layer.read_disturbable_cells), layer.r.numel()),
            }
        )
        if layer.config.read_disturb:
            rows[-1]["read_switched_cells"] = int(layer.read_switched_cells)
        if layer.config.levels_per_cell > 2:
            rows[-1].update(levels_per_cell=layer.config.levels_per_cell, **pulse_statistics(layer.pulse_histogram))
    total: dict[str, Any] = {"layer": "total", "shape": "", "weight_bits": "", "planes": "", "adc": ""}
    for key in ("tiles", "arrays", "cells", "failed_cells", "adc_conversions", "read_disturbable_cells"):
        total[key] = sum(row[key] for row in rows)
    programmed = sum(layer.r.numel() for _, layer in memristor_layers(model))
    total["read_disturb_pct"] = _percent(total["read_disturbable_cells"], programmed)
    if any("read_switched_cells" in row for row in rows):
        total["read_switched_cells"] = sum(row.get("read_switched_cells", 0) for row in rows)
    levels = level_statistics(model)
    if levels is not None:
        total.update(levels_per_cell=levels["levels_per_cell"], **levels["pulses"])
    return rows + [total]


def pulse_statistics(histogram: torch.Tensor) -> dict[str, float]:
    """pulses_mean, pulses_p99 and pulses_max of cells counted per number of programming pulses."""
    counts = histogram.double()
    pulses = torch.arange(counts.numel(), dtype=torch.float64)
    cumulative = counts.cumsum(0)
    p99 = int(torch.searchsorted(cumulative, 0.99 * cumulative[-1]))
    most = int(torch.nonzero(counts).max()) if bool(counts.any()) else 0
    return {
        "pulses_mean": round(float(counts @ pulses / counts.sum().clamp_min(1)), 2),
        "pulses_p99": p99,
        "pulses_max": most,
    }


def level_statistics(model: nn.Module) -> dict[str, Any] | None:
    """What programming the multi-level layers cost and gave, summed over them (None without any): levels per
    cell, the pulses per cell (pulse_statistics), failed cells per stored level, and the cells' read levels
    (crossbar.level_histogram) per stored level with the bin edges, in level steps."""
    layers = [layer for _, layer in memristor_layers(model) if layer.config.levels_per_cell > 2]
    if not layers:
        return None
    kinds = {(layer.config.levels_per_cell, layer.config.pulse_budget) for layer in layers}
    if len(kinds) > 1:
        raise ValueError(f"the model's multi-level layers differ in (levels_per_cell, pulse_budget): {sorted(kinds)}")
    levels = layers[0].config.levels_per_cell
    histogram = torch.stack([layer.level_histogram.cpu() for layer in layers]).sum(0)
    edges = [-0.5 + k / LEVEL_BINS_PER_STEP for k in range(levels * LEVEL_BINS_PER_STEP + 1)]
    return {
        "levels_per_cell": levels,
        "verify_tolerance": layers[0].config.verify_tolerance,
        "pulses": pulse_statistics(torch.stack([layer.pulse_histogram.cpu() for layer in layers]).sum(0)),
        "failed_by_level": torch.stack([layer.level_failures.cpu() for layer in layers]).sum(0).tolist(),
        "histogram_edges": edges,
        "histogram": histogram.tolist(),
    }


def _percent(part: int, whole: int) -> float:
    return round(100 * part / whole, 2) if whole else 0.0


def format_summary(rows: list[dict]) -> str:
    """A fixed-width table of summary() rows."""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(row.get(c, ""))) for row in rows)) for c in columns}
    lines = ["  ".join(c.rjust(widths[c]) for c in columns)]
    lines += ["  ".join(str(row.get(c, "")).rjust(widths[c]) for c in columns) for row in rows]
    return "\n".join(lines)
