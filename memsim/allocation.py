"""Per-layer precision under an energy budget: for every crossbar layer, which of its candidate settings (weight
bits, ADC bits) to take so that the summed sensitivity is least and the summed energy stays within a budget.

A layer's sensitivity to a setting is the change of a loss when that layer alone takes the setting (measured on
held-out data, every other layer as it is); summing them over the layers treats their effects as additive, the
first-order model under which HAWQ-V3 allocates mixed precision by per-layer sensitivities and a budget
(Z. Yao et al., "HAWQ-V3: Dyadic Neural Network Quantization", ICML 2021, sec. 3.4, there solved as an integer
program). The problem is a multiple-choice knapsack. allocate_under_budget() solves it exactly by a dynamic program
over the Pareto frontier of the layers decided so far: after each layer it keeps only the partial allocations that
no other one beats in both energy and sensitivity, and none beyond the budget. No integer-program solver (scipy's
milp would be a new dependency), and no rounding of energies to a grid, which could either break the budget or
miss the optimum. The frontier holds at most one allocation per distinct energy; with tens of layers and a few
candidates each it stays in the thousands.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One setting a layer may take, what it costs and what it does."""

    setting: Any  # e.g. (weight bits, ADC precision bits, ADC range bits)
    energy: float  # in the budget's unit, e.g. joules per second of audio
    sensitivity: float  # the loss change when this layer alone takes the setting (may be negative)


@dataclasses.dataclass(frozen=True)
class Allocation:
    """The chosen setting per layer, and the summed energy and sensitivity of the choice."""

    settings: dict[str, Any]
    energy: float
    sensitivity: float


def allocate_under_budget(candidates: Mapping[str, Sequence[Candidate]], budget: float) -> Allocation:
    """The choice of one candidate per layer with the least summed sensitivity whose summed energy is at most
    `budget` (of equal sensitivities, the cheapest). A ValueError names a layer without candidates, or the least
    energy any choice needs when the budget is below it."""
    empty = [layer for layer, options in candidates.items() if not options]
    if empty:
        raise ValueError(f"layer(s) {empty} have no candidate setting")
    least = sum(min(option.energy for option in options) for options in candidates.values())
    if least > budget:
        raise ValueError(f"no choice of settings fits the budget {budget:g}: the cheapest needs {least:g}")
    frontier: list[tuple[float, float, tuple[int, ...]]] = [(0.0, 0.0, ())]  # (energy, sensitivity, picks)
    for options in candidates.values():
        grown = sorted(
            (energy + option.energy, sensitivity + option.sensitivity, picks + (index,))
            for energy, sensitivity, picks in frontier
            for index, option in enumerate(options)
            if energy + option.energy <= budget
        )
        frontier = []
        for entry in grown:  # by energy: keep each that is less sensitive than every cheaper one
            if not frontier or entry[1] < frontier[-1][1]:
                frontier.append(entry)
    energy, sensitivity, picks = frontier[-1]  # the least sensitive (the frontier's sensitivities fall)
    chosen = {layer: options[i].setting for (layer, options), i in zip(candidates.items(), picks, strict=True)}
    return Allocation(chosen, energy, sensitivity)
