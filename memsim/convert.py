"""Whole-model tools: convert every linear layer to crossbars, calibrate input ranges, summarize a chip."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from memsim.config import CrossbarConfig
from memsim.layers import MemristorLinear


def _is_mappable(module: nn.Module) -> bool:
    """nn.Linear, or a quantization-aware linear that exposes its integer weights."""
    return isinstance(module, nn.Linear) or (
        hasattr(module, "integer_weight") and hasattr(module, "weight_scale") and hasattr(module, "in_features")
    )


def _matches(name: str, patterns: Iterable[str] | str | None) -> bool:
    if patterns is None:
        return False
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def convert(
    model: nn.Module,
    config: CrossbarConfig,
    generator: torch.Generator | None = None,
    include: Iterable[str] | str | None = None,
    exclude: Iterable[str] | str | None = None,
    program: bool = True,
) -> nn.Module:
    """Replace, in place, the linear layers of any model by programmed MemristorLinear layers.

    include / exclude: module names or fnmatch patterns as in named_modules() (e.g. "encoder.*.ff*");
    with include, only matching layers are converted; exclude wins over include. program=False leaves the
    cells unprogrammed, to load a saved chip into with load_state_dict.
    """
    if isinstance(model, MemristorLinear):
        raise ValueError("the model is already a MemristorLinear")
    if _is_mappable(model) and not include:
        return MemristorLinear.from_linear(model, config, generator, program)
    chosen = [
        (name, module)
        for name, module in model.named_modules()
        if name
        and _is_mappable(module)
        and not isinstance(module, MemristorLinear)
        and (include is None or _matches(name, include))
        and not _matches(name, exclude)
    ]
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, MemristorLinear.from_linear(module, config, generator, program))
    return model


def memristor_layers(model: nn.Module) -> list[tuple[str, MemristorLinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MemristorLinear)]


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
    """Per converted layer and in total: cells, arrays, tiles, failed cells, ADC conversions per input vector,
    and the cells a read could disturb (count, and percent of the programmed cells; see crossbar.program);
    for multi-level cells also the programming pulses per cell (mean, 99th percentile, maximum)."""
    rows: list[dict[str, Any]] = []
    for name, layer in memristor_layers(model):
        tile = layer.config.tile_size
        planes = layer.config.planes
        in_tiles = math.ceil(layer.in_features / tile)
        out_tiles = math.ceil(layer.out_features / tile)
        arrays = 2 * planes * in_tiles * out_tiles
        rows.append(
            {
                "layer": name,
                "shape": f"{layer.in_features}x{layer.out_features}",
                "weight_bits": layer.config.weight_bits,
                "planes": planes,
                "tiles": in_tiles * out_tiles,
                "arrays": arrays,
                "cells": arrays * tile * tile,
                "failed_cells": int(layer.failed_cells),
                "adc_conversions": in_tiles * planes * layer.out_features,
                "read_disturbable_cells": int(layer.read_disturbable_cells),
                "read_disturb_pct": _percent(int(layer.read_disturbable_cells), layer.r.numel()),
            }
        )
        if layer.config.levels_per_cell > 2:
            mean, p99, most = layer.pulse_statistics.tolist()
            rows[-1].update(
                levels_per_cell=layer.config.levels_per_cell,
                pulses_mean=round(mean, 2),
                pulses_p99=p99,
                pulses_max=most,
            )
    total: dict[str, Any] = {"layer": "total", "shape": "", "weight_bits": "", "planes": ""}
    for key in ("tiles", "arrays", "cells", "failed_cells", "adc_conversions", "read_disturbable_cells"):
        total[key] = sum(row[key] for row in rows)
    programmed = sum(layer.r.numel() for _, layer in memristor_layers(model))
    total["read_disturb_pct"] = _percent(total["read_disturbable_cells"], programmed)
    return rows + [total]


def _percent(part: int, whole: int) -> float:
    return round(100 * part / whole, 2) if whole else 0.0


def format_summary(rows: list[dict]) -> str:
    """A fixed-width table of summary() rows."""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(row.get(c, ""))) for row in rows)) for c in columns}
    lines = ["  ".join(c.rjust(widths[c]) for c in columns)]
    lines += ["  ".join(str(row.get(c, "")).rjust(widths[c]) for c in columns) for row in rows]
    return "\n".join(lines)
