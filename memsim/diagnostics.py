"""Where a chip's error comes from: each crossbar layer's output against its digital layer's, on the same inputs.

Errors compound through a network, so every crossbar layer is compared on the inputs it really receives on
the chip: its digital twin (the layer of the same name in the model before conversion) is fed the very
same tensor. Sums are kept on the device and read once at the end: no host synchronization per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from memsim.conv import MemristorConv
from memsim.converters import RangeProbe
from memsim.layers import MemristorLinear


@torch.no_grad()
def layer_errors(chip: nn.Module, digital: nn.Module, run: Callable[[nn.Module], Any]) -> list[dict[str, Any]]:
    """Call run(chip) (e.g. a loop over some batches) and compare every crossbar layer's outputs y (each
    MemristorLinear, and each MemristorConv as a whole) with its digital twin's outputs d on the same inputs.
    Per layer: `gain`, the least-squares slope of y on d; `relative_error`, |y - d| / |d|; `residual`,
    |y - gain d| / |d| (what no gain correction removes); norms over every output element seen; `clipped`, the
    fraction of the layer's ADC inputs beyond its ADC's range (converters.RangeProbe). The last row, "mean",
    averages the layers. The digital model is put in eval mode (its quantizers use their stored ranges)."""
    digital.eval()
    twins = dict(digital.named_modules())
    sums: dict[str, torch.Tensor] = {}  # per layer: [y.d, d.d, y.y]
    hooks = []
    probes: dict[str, tuple[RangeProbe, int | None]] = {}
    compared = compared_layers(chip)
    crossbars = {name: [m for m in layer.modules() if isinstance(m, MemristorLinear)] for name, layer in compared}
    for name, linears in crossbars.items():
        probes[name] = (RangeProbe(linears[0].r.device), linears[0].config.adc_range_bits)
        for linear in linears:
            linear.adc_probe = probes[name][0]
    for name, layer in compared:
        if name not in twins:
            raise ValueError(f"the digital model has no layer {name!r} to compare the chip's with")
        twin = twins[name]

        def record(module, inputs, output, name=name, twin=twin):
            y, d = output.double().flatten(), twin(inputs[0]).double().flatten()
            totals = torch.stack([y @ d, d @ d, y @ y])
            sums[name] = totals if name not in sums else sums[name] + totals

        hooks.append(layer.register_forward_hook(record))
    try:
        run(chip)
    finally:
        for hook in hooks:
            hook.remove()
        for linears in crossbars.values():
            for linear in linears:
                linear.adc_probe = None
    rows: list[dict[str, Any]] = []
    for name, totals in sums.items():
        yd, dd, yy = totals.tolist()
        gain = yd / dd if dd > 0 else float("nan")
        relative_error = max(yy - 2 * yd + dd, 0.0) ** 0.5 / dd**0.5 if dd > 0 else float("nan")
        residual = max(yy - yd * gain, 0.0) ** 0.5 / dd**0.5 if dd > 0 else float("nan")
        probe, range_bits = probes[name]
        clipped = probe.clipped_fraction(range_bits)
        rows.append(
            {"layer": name, "gain": gain, "relative_error": relative_error, "residual": residual, "clipped": clipped}
        )
    if rows:
        measures = ("gain", "relative_error", "residual", "clipped")
        mean = {key: sum(float(row[key]) for row in rows) / len(rows) for key in measures}
        rows.append({"layer": "mean", **mean})
    return rows


def compared_layers(chip: nn.Module) -> list[tuple[str, nn.Module]]:
    """The chip's layers that have a digital twin of the same name: MemristorLinear layers and MemristorConv
    layers (not the MemristorLinear inside a convolution, whose digital counterpart is the convolution)."""
    convs = {name for name, module in chip.named_modules() if isinstance(module, MemristorConv)}
    return [
        (name, module)
        for name, module in chip.named_modules()
        if isinstance(module, MemristorConv)
        or (isinstance(module, MemristorLinear) and name.rpartition(".")[0] not in convs)
    ]
