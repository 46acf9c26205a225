"""Device characterization: full switching cycles and the statistics the Synaptogen fit reproduces.

Works on anything with the CellArray interface (memsim.CellArray, memsim.validation.reference.ReferenceCells).
"""

from __future__ import annotations

import dataclasses

import torch

PROTOCOL_SET_V = -2.0
PROTOCOL_RESET_V = 1.46


def full_cycles(
    cells, n_cycles: int, set_voltage: float = PROTOCOL_SET_V, reset_voltage: float = PROTOCOL_RESET_V
) -> dict[str, torch.Tensor]:
    """Run n_cycles SET/RESET cycles; per cycle and cell ([n_cycles, n] float64 on the CPU):
    `lrs` and `hrs` (noiseless ohm after SET and after RESET) and the cycle's thresholds `us`, `ur`."""
    records: dict[str, list[torch.Tensor]] = {key: [] for key in ("us", "ur", "lrs", "hrs")}
    if n_cycles < 1:
        raise ValueError(f"n_cycles must be positive, got {n_cycles}")
    for _ in range(n_cycles):
        records["us"].append(cells.us.cpu())
        records["ur"].append(cells.ur.cpu())
        records["lrs"].append(cells.apply_voltage(set_voltage).resistance().cpu())
        records["hrs"].append(cells.apply_voltage(reset_voltage).resistance().cpu())
    return {key: torch.stack(values).double() for key, values in records.items()}


@dataclasses.dataclass(frozen=True)
class FeatureStats:
    median: float
    total_std: float
    device_std: float  # std over devices of the per-device means
    cycle_std: float  # median over devices of the per-device std
    acf1: float  # lag-1 autocorrelation, mean over devices
    acf10: float


def feature_stats(values: torch.Tensor) -> FeatureStats:
    """Statistics of a [cycles, devices] series."""
    centered = values - values.mean(0)
    variance = (centered**2).mean(0)

    def acf(lag: int) -> float:
        return float(((centered[lag:] * centered[:-lag]).mean(0) / variance).mean())

    return FeatureStats(
        median=float(values.median()),
        total_std=float(values.std()),
        device_std=float(values.mean(0).std()),
        cycle_std=float(values.std(0).median()),
        acf1=acf(1),
        acf10=acf(10),
    )


def cycle_statistics(records: dict[str, torch.Tensor], burn_in: int = 0) -> dict[str, FeatureStats]:
    """Per-feature statistics, HRS in log10 ohm as the fit itself."""
    transforms = {"hrs": torch.log10, "lrs": lambda v: v, "us": lambda v: v, "ur": lambda v: v}
    return {key: feature_stats(transforms[key](records[key][burn_in:])) for key in ("hrs", "lrs", "us", "ur")}


def partial_reset_medians(make_cells, voltages: list[float], warmup_cycles: int = 5) -> dict[float, float]:
    """Median resistance after a single RESET pulse of each voltage applied to cells in LRS."""
    medians = {}
    for voltage in voltages:
        cells = make_cells()
        full_cycles(cells, warmup_cycles)
        cells.apply_voltage(PROTOCOL_SET_V).apply_voltage(voltage)
        medians[voltage] = float(cells.resistance().median())
    return medians
