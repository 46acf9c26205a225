"""Device-model speed and memory, memsim vs the reference numpy `synaptogen`, side by side in one run.

Prints, at N cells: full SET+RESET cycles per second, noisy reads per second, the ratios, and bytes
of per-cell state. Targets (issue 2): cycles >= 5x the reference on the CPU; <= 230 bytes/cell at p = 10.
"""

from __future__ import annotations

import argparse
import time

import torch

import memsim
from memsim.validation.reference import ReferenceCells, seed_reference


def per_second(action, repeats: int, synchronize=lambda: None) -> float:
    action()  # warm-up
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        action()
    synchronize()
    return repeats / (time.perf_counter() - start)


def measure(cells, repeats: int, synchronize=lambda: None) -> dict[str, float]:
    cycle = lambda: cells.apply_voltage(-2.0).apply_voltage(1.46)  # noqa: E731
    read = lambda: cells.read(0.2, noise=True)  # noqa: E731
    return {
        "cycles_per_s": per_second(cycle, repeats, synchronize),
        "reads_per_s": per_second(read, repeats, synchronize),
        "bytes_per_cell": cells.state_bytes() / cells.n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=2**20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"{args.cells:,} cells, p = 10, {args.repeats} repeats; torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    seed_reference(0)
    start = time.perf_counter()
    reference = ReferenceCells(args.cells)
    reference_init = time.perf_counter() - start
    start = time.perf_counter()
    ours = memsim.CellArray(args.cells, generator=torch.Generator().manual_seed(0))
    ours_init = time.perf_counter() - start
    rows = {
        "reference (numpy)": (measure(reference, args.repeats), reference_init),
        "memsim (cpu)": (measure(ours, args.repeats), ours_init),
    }
    if torch.cuda.is_available():
        start = time.perf_counter()
        cuda = memsim.CellArray(args.cells, generator=torch.Generator("cuda").manual_seed(0))
        torch.cuda.synchronize()
        rows["memsim (cuda)"] = (measure(cuda, args.repeats, torch.cuda.synchronize), time.perf_counter() - start)

    base = rows["reference (numpy)"][0]
    print(f"{'':20s} {'init s':>8s} {'cycles/s':>10s} {'x ref':>7s} {'reads/s':>10s} {'x ref':>7s} {'bytes/cell':>11s}")
    for name, (figures, init) in rows.items():
        print(
            f"{name:20s} {init:8.3f} {figures['cycles_per_s']:10.2f} "
            f"{figures['cycles_per_s'] / base['cycles_per_s']:7.2f} {figures['reads_per_s']:10.1f} "
            f"{figures['reads_per_s'] / base['reads_per_s']:7.2f} {figures['bytes_per_cell']:11.1f}"
        )
    print("cell updates/s (cpu):", f"{2 * rows['memsim (cpu)'][0]['cycles_per_s'] * args.cells:.3g}")


if __name__ == "__main__":
    main()
