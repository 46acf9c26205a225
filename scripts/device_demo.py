"""memsim demonstration: program Synaptogen cells and compare their statistics with the reference.

Cycles the same number of cells in memsim and in the reference numpy `synaptogen` package (-2 V SET,
+1.46 V RESET), prints the switching statistics side by side, then the device facts the tests check
(currents and conductance ratio at 0.2 V, partial RESET, I-V non-linearity, read noise), and programs a
binary pattern the way a crossbar is programmed (full RESET, SET of the ones) and reads it back.
docs/device_facts.md holds its output for 2048 devices x 3000 cycles.
"""

from __future__ import annotations

import argparse
import time

import torch

import memsim
from memsim.validation.characterize import cycle_statistics, full_cycles, partial_reset_medians
from memsim.validation.reference import ReferenceCells, seed_reference

UNITS = {"hrs": "log10 ohm", "lrs": "ohm", "us": "V", "ur": "V"}


def print_statistics(ours: dict, reference: dict) -> None:
    print(f"{'feature':8s} {'statistic':11s} {'memsim':>10s} {'reference':>10s}")
    for feature, stats in ours.items():
        for name, value in vars(stats).items():
            print(
                f"{feature.upper():8s} {name:11s} {value:10.4g} {getattr(reference[feature], name):10.4g}"
                f"   {UNITS[feature] if name in ('median', 'total_std', 'device_std', 'cycle_std') else ''}"
            )


def program_pattern(n: int, generator: torch.Generator) -> None:
    bits = torch.rand(n, generator=generator) < 0.5
    cells = memsim.CellArray(n, generator=generator)
    cells.apply_voltage(2.0)  # full RESET: every cell to HRS
    cells.apply_voltage(torch.where(bits, -2.5, 0.0))  # SET the ones, beyond the US tail
    for mode in ("physical", "paper"):
        current = cells.read(0.2, noise=mode)
        on, off = current[bits], current[~bits]
        print(
            f"read at 0.2 V, {mode:8s} noise: ones {on.median() * 1e6:6.2f} uA (min {on.min() * 1e6:6.2f}), "
            f"zeros {off.median() * 1e6:5.2f} uA (max {off.max() * 1e6:5.2f}); "
            f"threshold errors {int(((current > 1e-5) != bits).sum())} of {n}"
        )


def print_device_facts(records: dict, generator: torch.Generator) -> None:
    """Currents, conductance ratio, partial RESET, I-V non-linearity and read noise of memsim's cells."""
    lrs, hrs = records["lrs"][50:], records["hrs"][50:]
    print(
        f"currents at 0.2 V: LRS median {0.2 / lrs.median() * 1e6:.2f} uA, "
        f"HRS median {0.2 / hrs.median() * 1e6:.3f} uA; "
        f"median conductance ratio {(hrs / lrs).median():.2f}"
    )
    seed_reference(7)
    voltages = [0.8, 0.9, 1.0, 1.2, 1.4]
    ours = partial_reset_medians(lambda: memsim.CellArray(8000, generator=generator), voltages)
    theirs = partial_reset_medians(lambda: ReferenceCells(8000), voltages)
    print(
        "partial RESET after SET, median ohm (memsim / reference): "
        + ", ".join(f"{v} V {ours[v]:.0f} / {theirs[v]:.0f}" for v in voltages)
    )
    cells = memsim.CellArray(4000, generator=generator).apply_voltage(-2.0)
    g02 = cells.current(0.2) / 0.2
    print(
        f"LRS chord conductance relative to 0.2 V: {float((cells.current(-0.6) / -0.6 / g02).median()):.3f} at -0.6 V, "
        f"{float((cells.current(0.6) / 0.6 / g02).median()):.3f} at +0.6 V"
    )
    hrs_cells = memsim.CellArray(2000, generator=generator).apply_voltage(-2.0).apply_voltage(1.46)
    for mode in ("physical", "paper"):
        sigmas = [
            float((torch.stack([c.read(0.2, noise=mode) for _ in range(400)]).std(0) / c.current(0.2)).median())
            for c in (cells, hrs_cells)
        ]
        print(
            f"read noise at 0.2 V, {mode}: {100 * sigmas[0]:.3f} % of the LRS current, {100 * sigmas[1]:.3f} % of HRS"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1024)
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"{args.devices} devices x {args.cycles} cycles (-2 V SET / +1.46 V RESET), first 50 dropped")
    start = time.perf_counter()
    records = full_cycles(
        memsim.CellArray(args.devices, generator=torch.Generator().manual_seed(args.seed)), args.cycles
    )
    ours = cycle_statistics(records, burn_in=50)
    ours_s = time.perf_counter() - start
    seed_reference(args.seed)
    start = time.perf_counter()
    reference = cycle_statistics(full_cycles(ReferenceCells(args.devices), args.cycles), burn_in=50)
    reference_s = time.perf_counter() - start
    print_statistics(ours, reference)
    print(f"time: memsim {ours_s:.1f} s, reference {reference_s:.1f} s\n")
    print_device_facts(records, torch.Generator().manual_seed(args.seed))
    program_pattern(100_000, torch.Generator().manual_seed(args.seed))


if __name__ == "__main__":
    main()
