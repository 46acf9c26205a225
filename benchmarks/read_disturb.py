"""Read disturb (memsim.disturb) on one layer: what it costs per read, and whether applying it per batch matters.

The parity protocol's 3-bit 384 -> 1536 layer on the physical chip (memsim.validation.parity; its DAC maps the
protocol's 256 inputs' max-abs to v_read). A pass over data: 4,096 more vectors N(0, 1), clipped at that range.

Cost: seconds per read of 256 vectors with read_disturb off and on, once the chip has read the pass (disturb
saturated: the reads only compare each row's extremes with its bounds), the fastest of --repeats calls taking
turns; and a whole pass from a freshly programmed chip, whose first batches switch cells. Target (issue 29): at
most 1.2x.

Batch granularity: the pass read in batches of 1, 16, 256 and 4,096 vectors (each batch's strongest voltage per
row decides what switches, after the batch), then every chip read once more on held-out inputs: cells switched,
and the held-out output's residual after the gain against the digital layer. Equal columns mean the batch size
does not move the result.

    python benchmarks/read_disturb.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from crossbar import best_of  # benchmarks/crossbar.py

import memsim
from memsim.validation.parity import layer_statistics, protocol_layer

PASS_VECTORS = 4096


def chip(read_disturb: bool) -> tuple[memsim.MemristorLinear, torch.Tensor, torch.Tensor]:
    """The protocol's layer, freshly programmed, its 256 inputs and their digital product."""
    config = dataclasses.replace(memsim.CrossbarConfig.preset("physical", weight_bits=3), read_disturb=read_disturb)
    return protocol_layer(config, seed=0, batch=256)


def read_pass(layer: memsim.MemristorLinear, inputs: torch.Tensor, batch: int) -> None:
    with torch.no_grad():
        for start in range(0, inputs.shape[0], batch):
            layer(inputs[start : start + batch])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    inputs = torch.randn(PASS_VECTORS, 384, generator=torch.Generator().manual_seed(1))

    off, x, _ = chip(False)
    on, _, _ = chip(True)
    read_pass(on, inputs, 256)
    best = best_of([lambda: read_pass(off, x, 256), lambda: read_pass(on, x, 256)], args.repeats, lambda: None)
    print(
        f"read of 256 vectors: disturb off {best[0] * 1e3:.1f} ms, on (saturated) {best[1] * 1e3:.1f} ms, "
        f"ratio {best[1] / best[0]:.3f}"
    )
    passes = {False: float("inf"), True: float("inf")}
    for _ in range(args.repeats):  # a fresh chip each time, programmed outside the timing, the two taking turns
        for disturb in passes:
            layer = chip(disturb)[0]
            start = time.perf_counter()
            read_pass(layer, inputs, 256)
            passes[disturb] = min(passes[disturb], time.perf_counter() - start)
    print(
        f"a pass of {PASS_VECTORS} vectors in batches of 256 on a fresh chip: disturb off {passes[False]:.3f} s, "
        f"on {passes[True]:.3f} s, ratio {passes[True] / passes[False]:.3f}"
    )

    print(f"\n{'batch':>6s} {'switched':>9s} {'residual':>9s}")
    for batch in (1, 16, 256, PASS_VECTORS):
        layer, held_out, digital = chip(True)
        read_pass(layer, inputs, batch)
        residual = layer_statistics(layer, held_out, digital)["residual"]
        print(f"{batch:6d} {int(layer.read_switched_cells):9d} {residual:9.4f}")
    untouched, held_out, digital = chip(False)
    print(f"{'none':>6s} {0:9d} {layer_statistics(untouched, held_out, digital)['residual']:9.4f}")


if __name__ == "__main__":
    main()
