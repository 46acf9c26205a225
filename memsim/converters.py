"""Per-layer ADC settings: by layer-name pattern, or allocated from the column outputs each layer's ADCs see.

An ADC with precision bits p and range bits r has a step of 2^-p and clips at +-2^(r-1) (in units of one
programmed pair at a full-scale input): 2^(p + r) codes, a (p + r)-bit converter. For a fixed number of bits,
range and precision trade against each other, and the right split differs by layer: a layer whose column
outputs stay small wastes range bits that precision could use (Hilmes, Rossenbach, Schlueter, arXiv
2606.13379, reallocate them per layer). allocate_adc() measures each layer's column outputs on calibration
data and gives it the fewest range bits that hold all but a fraction of them, and the rest of the budget as
precision. The ADC acts only when reading, so a programmed chip changes its ADCs without being reprogrammed.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
from torch import nn

from memsim.config import AdcPlan
from memsim.convert import memristor_layers, run_instrumented

MAX_RANGE_BITS = 32  # CrossbarConfig.adc_range_bits' largest value
MAX_PRECISION_BITS = 24  # CrossbarConfig.adc_precision_bits' largest value
MAX_ADC_BUDGET_BITS = MAX_RANGE_BITS + MAX_PRECISION_BITS


def set_adc(model: nn.Module, settings: Mapping[str, tuple[int | None, int | None]]) -> dict[str, tuple]:
    """Give the crossbar layers whose names match a pattern (fnmatch, as named_modules() names them) that ADC,
    (precision bits, range bits), None for ideal; the first matching pattern wins. Returns every crossbar
    layer's ADC afterwards. A pattern that matches no crossbar layer is an error (a typo would otherwise
    leave the chip as it was)."""
    layers = memristor_layers(model)
    unused = [p for p in settings if not any(fnmatch.fnmatchcase(name, p) for name, _ in layers)]
    if unused:
        raise ValueError(f"ADC pattern(s) {unused} match no crossbar layer; layers: {[n for n, _ in layers]}")
    for name, layer in layers:
        pattern = next((p for p in settings if fnmatch.fnmatchcase(name, p)), None)
        if pattern is not None:
            precision, range_ = settings[pattern]
            layer.set_adc(precision, range_)
    return adc_settings(model)


def adc_settings(model: nn.Module) -> dict[str, tuple[int | None, int | None]]:
    """(precision bits, range bits) of every crossbar layer's ADC."""
    return {
        name: (layer.config.adc_precision_bits, layer.config.adc_range_bits) for name, layer in memristor_layers(model)
    }


class RangeProbe:
    """Counts a layer's ADC inputs by the fewest range bits that hold each: value a needs r bits when
    a <= 2^(r-1), that is r = ceil(log2 a) + 1 (at least 1). Counts stay on the device: no host sync."""

    def __init__(self, device: torch.device):
        self.counts = torch.zeros(MAX_RANGE_BITS + 1, dtype=torch.int64, device=device)

    def __call__(self, values: torch.Tensor) -> None:
        needed = values.abs().log2_().ceil_().add_(1).clamp_(1, MAX_RANGE_BITS)  # log2(0) = -inf: 1 bit
        self.counts += torch.bincount(needed.long().flatten(), minlength=MAX_RANGE_BITS + 1)

    def clipped_fraction(self, range_bits: int | None) -> float:
        """The fraction of the values seen that an ADC of range_bits clips (None: no clipping)."""
        total = int(self.counts.sum())
        if range_bits is None or total == 0:
            return 0.0
        return int(self.counts[range_bits + 1 :].sum()) / total

    def range_bits(self, coverage: float) -> int:
        """The fewest range bits that clip at most a fraction 1 - coverage of the values seen."""
        counts = self.counts.cpu()
        clipped_above = counts.flip(0).cumsum(0).flip(0)  # [r]: values that need r bits or more
        allowed = (1 - coverage) * float(counts.sum())
        for bits in range(1, MAX_RANGE_BITS + 1):
            if bits == MAX_RANGE_BITS or float(clipped_above[bits + 1]) <= allowed:
                return bits
        raise AssertionError("unreachable")


@torch.no_grad()
def apply_adc_plan(model: nn.Module, plan: AdcPlan, run: Callable[[nn.Module], Any]) -> dict[str, tuple]:
    """The ADC plan's part that needs the programmed chip: with auto_budget_bits, allocate_adc for every crossbar
    layer that no pattern of the plan names (convert gave those theirs), from run(model) (calibration reads).
    Returns every crossbar layer's ADC afterwards."""
    if plan.auto_budget_bits is not None:
        fixed = {name for name, _ in memristor_layers(model) if plan.fixed(name) is not None}
        allocate_adc(model, run, plan.auto_budget_bits, plan.auto_coverage, keep=fixed)
    return adc_settings(model)


def allocate_adc(
    model: nn.Module,
    run: Callable[[nn.Module], Any],
    budget_bits: int,
    coverage: float = 0.999,
    keep: Collection[str] = (),
) -> dict[str, tuple[int, int]]:
    """Split an ADC of budget_bits (precision + range) per layer: call run(model) (e.g. a loop over some
    calibration batches) with ideal ADCs, give each crossbar layer the fewest range bits that hold a fraction
    `coverage` of its ADC inputs (at most the budget) and the rest as precision bits, and set them; the layers
    named in `keep` keep the ADC they have. Returns each allocated layer's (precision bits, range bits)."""
    if not isinstance(budget_bits, int) or not 1 <= budget_bits <= MAX_ADC_BUDGET_BITS:
        raise ValueError(f"the ADC budget must be 1 to {MAX_ADC_BUDGET_BITS} bits, got {budget_bits!r}")
    if not 0 < coverage <= 1:
        raise ValueError(f"the ADC coverage must be a fraction in (0, 1], got {coverage!r}")
    layers = memristor_layers(model)
    if not layers:
        raise ValueError("the model has no crossbar layers to allocate ADCs to")
    before = adc_settings(model)
    device = layers[0][1].r.device
    for _, layer in layers:
        layer.set_adc(None, None)
    try:
        probes = run_instrumented(model, run, "adc_probe", lambda: RangeProbe(device))
    finally:
        for name, layer in layers:
            layer.set_adc(*before[name])
    unread = [name for name, probe in probes.items() if int(probe.counts.sum()) == 0]
    if unread:
        raise ValueError(f"run(model) did not read crossbar layer(s) {unread}: no calibration data for their ADCs")
    chosen = {}
    for name, layer in layers:
        if name in keep:
            continue
        range_bits = min(probes[name].range_bits(coverage), budget_bits)
        chosen[name] = (min(budget_bits - range_bits, MAX_PRECISION_BITS), range_bits)
        layer.set_adc(*chosen[name])
    return chosen
