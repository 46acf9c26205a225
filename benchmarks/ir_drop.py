"""What the wires alone do to one programmed tile, by the exact solver (memsim.ir_drop.solve): the column currents
of the parity protocol's cells (memsim.validation.parity: 3-bit weights N(0, 0.05^2), programmed on the physical
chip, each cell with the Synaptogen I-V at its own r) and inputs N(0, 1) through the 8-bit DAC, with wires against
without, per tile size and wire resistance per segment. Prints the gain (least squares of the wired currents on
the ideal-wire ones) and the residual after it, relative to the ideal-wire currents' RMS; mean over the arrays
(positive and negative, each bit plane) of the layer's first tile, and over seeds. Also the solver's time.

    python benchmarks/ir_drop.py [--seeds 2] [--vectors 32]
"""

from __future__ import annotations

import argparse
import statistics
import time

from memsim.config import CrossbarConfig
from memsim.crossbar import dac
from memsim.ir_drop import segment_resistance, solve, synaptogen_iv
from memsim.validation.parity import protocol_layer

TILES = (64, 128, 256)
OHMS = (0.5, 1.0, 2.5, 5.0)


def tile_statistics(tile: int, ohms: float, seed: int, vectors: int) -> tuple[float, float]:
    """Gain and relative residual of the wired currents of one tile's arrays against ideal wires."""
    config = CrossbarConfig.preset("physical", weight_bits=3, tile_size=tile)
    layer, x, _ = protocol_layer(config, seed, vectors)
    v = dac(x, x.abs().amax(), config)[:, :tile].double()  # the first row tile's voltages [vectors, tile]
    arrays = layer.r[:, :tile, :, :tile].permute(0, 2, 1, 3).reshape(-1, tile, tile)  # [2 x planes, R, C]
    iv = synaptogen_iv(layer.read_model.base, layer.read_model.delta, arrays)
    batch = v.expand(arrays.shape[0], *v.shape)
    ideal = solve(arrays, batch, 0.0, iv).column_currents
    wired = solve(arrays, batch, ohms, iv).column_currents
    gain = (wired * ideal).sum((-2, -1)) / ideal.square().sum((-2, -1))
    residual = (wired - gain[:, None, None] * ideal).norm(dim=(-2, -1)) / ideal.norm(dim=(-2, -1))
    return float(gain.mean()), float(residual.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--vectors", type=int, default=32)
    args = parser.parse_args()
    nodes = ", ".join(f"{node} nm {segment_resistance(node)[0]:.2f}" for node in (45, 22, 7))
    print(f"ohms per segment of a passive crossbar (NeuroSim 1.4): {nodes}")
    print(f"{'tile':>5s} {'ohms':>5s} {'gain':>7s} {'residual':>8s} {'seconds':>8s}")
    for tile in TILES:
        for ohms in OHMS:
            start = time.perf_counter()
            runs = [tile_statistics(tile, ohms, seed, args.vectors) for seed in range(args.seeds)]
            seconds = (time.perf_counter() - start) / args.seeds
            gain, residual = (statistics.mean(run[k] for run in runs) for k in (0, 1))
            print(f"{tile:5d} {ohms:5.1f} {gain:7.4f} {residual:8.4f} {seconds:8.1f}", flush=True)


if __name__ == "__main__":
    main()
