"""What the wires do to one programmed tile, by the exact solver (memsim.ir_drop.solve), and how well the read's
fast model (crossbar.cell_pairs: each array's transfer matrix at the typical read voltage) follows it.

The parity protocol's cells (memsim.validation.parity: 3-bit weights N(0, 0.05^2), programmed on the physical chip,
each cell with the Synaptogen I-V at its own r) and inputs N(0, 1) through the 8-bit DAC; per tile size and wire
resistance per segment, the differential outputs (positive array less negative, per bit plane) of the layer's first
tile. Prints, mean over planes and seeds:
- gain: least squares of the exact wired outputs on the exact ideal-wire ones, and the residual after it, relative
  to the ideal-wire outputs' RMS (what the wires do);
- fast error: the fast model's outputs against the exact wired ones, |fast - exact| / |exact| (norms over inputs
  and columns); beside it, the same error of a read that ignores the wires (today's read without them);
- the seconds of the exact solve and of the transfer matrices, per seed.

With --layers, only this instead: the whole protocol layer (384 -> 1536, the paper Conformer's feed-forward shape,
3-bit weights with its statistics) on the physical chip through wires, per tile size and NeuroSim's segment
resistance at 45, 22 and 7 nm (and none), nominal and per-column calibration: gain, relative error and residual of
its outputs against the digital layer's (memsim.validation.parity.layer_statistics), mean over seeds.

With --recipe, only this instead: the same comparison on sampled tiles of the mini recipe's trained 3-bit QAT model
(experiment mini; train it first) programmed on the physical chip and fed the dev split's first batch, each
sampled layer's first tile with the voltages its DAC makes of the layer's real inputs (--vectors of them), at
NeuroSim's 22 nm and 7 nm segments and 128-row tiles (--tile).

With --read-cost, only this instead: a 384 -> 1536 3-bit layer on the physical chip (128 x 128 tiles, 144 arrays)
read at batch 1024 without wires and with 1 ohm per segment, the fastest of --repeats alternating calls (benchmarks/
crossbar.py's best_of), and the seconds its transfer matrices take once after programming.

    python benchmarks/ir_drop.py [--seeds 2] [--vectors 32]
    python benchmarks/ir_drop.py --layers [--seeds 2]
    python benchmarks/ir_drop.py --recipe [--tile 128] [--vectors 32]
    python benchmarks/ir_drop.py --read-cost [--repeats 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time
from pathlib import Path
from typing import NamedTuple

import torch
from crossbar import best_of  # benchmarks/crossbar.py

from memsim import MemristorLinear, convert
from memsim.config import CrossbarConfig
from memsim.crossbar import cell_pairs, dac
from memsim.ir_drop import segment_resistance, solve, synaptogen_iv
from memsim.validation.parity import layer_statistics, protocol_layer

TILES = (64, 128, 256)
OHMS = (0.5, 1.0, 2.5, 5.0)


class TileStatistics(NamedTuple):
    gain: float
    residual: float
    fast_error: float
    unwired_error: float
    exact_seconds: float
    transfer_seconds: float


def tile_statistics(tile: int, ohms: float, seed: int, vectors: int) -> TileStatistics:
    """The wires' effect on the protocol layer's first tile, and the fast model's error, by the exact solve."""
    config = CrossbarConfig.preset("physical", weight_bits=3, tile_size=tile)
    layer, x, _ = protocol_layer(config, seed, vectors)
    return compare_tile(layer, dac(x, x.abs().amax(), config)[:, :tile], ohms)


def compare_tile(layer: MemristorLinear, v: torch.Tensor, ohms: float) -> TileStatistics:
    """The differential outputs of a programmed layer's first tile (row and column tile 0, every plane) for the
    first row tile's voltages v [vectors, tile]: exact through wires of `ohms` per segment and through ideal ones
    (the cells' own I-V), and by the fast model."""
    tile = layer.config.tile_size
    config = dataclasses.replace(layer.config, row_wire_resistance=ohms, column_wire_resistance=ohms)
    v = v.double()
    cells = layer.r[:, :tile, :, :tile]
    arrays = cells.permute(0, 2, 1, 3)  # [2 (sign), planes, R, C]
    model = layer.read_model
    iv = synaptogen_iv(model.base, model.delta, arrays)
    batch = v.expand(*arrays.shape[:2], *v.shape)
    start = time.perf_counter()
    ideal, wired = (solve(arrays, batch, wires, iv).column_currents for wires in (0.0, ohms))
    exact_seconds = time.perf_counter() - start
    start = time.perf_counter()
    difference = cell_pairs(cells, model, config).difference.double()
    transfer_seconds = time.perf_counter() - start
    row_factor = v * model.conductances(v)[1].double()  # v delta(v), as the read's mean factor
    fast = row_factor @ difference.unflatten(-1, (config.planes, tile)).movedim(1, 0)  # [planes, vectors, C]
    unwired = row_factor @ (arrays[0] - arrays[1]).double()
    ideal, wired = ideal[0] - ideal[1], wired[0] - wired[1]  # [planes, vectors, C]
    gain = (wired * ideal).sum((-2, -1)) / ideal.square().sum((-2, -1))
    residual = (wired - gain[:, None, None] * ideal).norm(dim=(-2, -1)) / ideal.norm(dim=(-2, -1))

    def error(model_outputs: torch.Tensor) -> float:
        return float(((model_outputs - wired).norm(dim=(-2, -1)) / wired.norm(dim=(-2, -1))).mean())

    return TileStatistics(
        float(gain.mean()), float(residual.mean()), error(fast), error(unwired), exact_seconds, transfer_seconds
    )


def layer_errors(seeds: int) -> None:
    """The protocol layer's output error through wires, by tile size, node and calibration."""
    nodes = {"none": 0.0, **{f"{node} nm": segment_resistance(node)[0] for node in (45, 22, 7)}}
    header = ("tile", "wires", "ohms", "calibration", "gain", "rel. error", "residual")
    print(" ".join(f"{name:>11s}" for name in header))
    for tile in TILES:
        for node, ohms in nodes.items():
            for calibration in ("nominal", "per_column"):
                config = CrossbarConfig.preset(
                    "physical",
                    weight_bits=3,
                    tile_size=tile,
                    calibration=calibration,
                    row_wire_resistance=ohms,
                    column_wire_resistance=ohms,
                )
                with torch.no_grad():
                    runs = [layer_statistics(*protocol_layer(config, seed)) for seed in range(seeds)]
                mean = [statistics.mean(run[key] for run in runs) for key in ("gain", "relative_error", "residual")]
                print(
                    f"{tile:11d} {node:>11s} {ohms:11.2f} {calibration:>11s} "
                    + " ".join(f"{value:11.4f}" for value in mean),
                    flush=True,
                )


RECIPE_LAYERS = ("blocks.0.ff1.w1", "blocks.1.attn.in_proj", "blocks.2.conv.pointwise1", "blocks.3.ff2.w2")


def recipe_tiles(tile: int, vectors: int) -> None:
    """compare_tile on the recipe model's sampled layers with their real DAC voltages."""
    from hydra import compose, initialize_config_dir

    from asr import settings
    from asr.checkpoint import FINAL, load_model
    from asr.decode import Decoding, split_batches
    from asr.pipeline import graph

    settings.register()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "configs"), version_base=None):
        recipe = settings.load(compose(config_name="config", overrides=["+experiment=mini"]))
    model = load_model(recipe.work_dir_path / graph.model_output(recipe, True).relpath / FINAL, "cpu")
    config = CrossbarConfig.preset("physical", weight_bits=recipe.quant.weight_bits, tile_size=tile)
    convert(model, config, torch.Generator().manual_seed(0), include=list(RECIPE_LAYERS))
    voltages: dict[str, torch.Tensor] = {}
    for name in RECIPE_LAYERS:
        layer = model.get_submodule(name)
        assert isinstance(layer, MemristorLinear)
        read = layer.read

        def capture(v: torch.Tensor, first_tile: int = 0, name: str = name, read=read) -> torch.Tensor:
            voltages.setdefault(name, v[:vectors, :tile])
            return read(v, first_tile)

        layer.read = capture  # type: ignore[method-assign]
    decoding = Decoding(graph.data_files(recipe), recipe.features, recipe.decode, recipe.loader.num_workers)
    batch = next(iter(split_batches(decoding, "dev", recipe.decode.batch_seconds)))
    with torch.no_grad():
        model.eval()(batch["feats"], batch["feat_lens"])
    header = ("layer", "ohms", "gain", "residual", "fast error", "no-wire error", "exact s", "transfer s")
    print(f"{header[0]:>24s} " + " ".join(f"{name:>13s}" for name in header[1:]))
    for name in RECIPE_LAYERS:
        for node in (22, 7):
            ohms = segment_resistance(node)[0]
            result = compare_tile(model.get_submodule(name), voltages[name], ohms)
            print(f"{name:>24s} {ohms:13.2f} " + " ".join(f"{value:13.4f}" for value in result), flush=True)


def read_cost(repeats: int) -> None:
    """Read time of one layer with and without wires, side by side, and the one-off cost of its transfer matrices."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(384, 1536)
    x = torch.randn(1024, 384)
    layers = {}
    for ohms in (0.0, 1.0):
        config = CrossbarConfig(weight_bits=3, row_wire_resistance=ohms, column_wire_resistance=ohms)
        layers[ohms] = MemristorLinear.from_linear(linear, config, torch.Generator().manual_seed(0))
    wired = layers[1.0]
    start = time.perf_counter()
    cell_pairs(wired.r, wired.read_model, wired.config)  # what programming computed once, timed again
    transfer_seconds = time.perf_counter() - start
    arrays = 2 * wired.config.planes * wired.tiles()
    with torch.no_grad():
        seconds = best_of([functools.partial(layer, x) for layer in layers.values()], repeats, lambda: None)
    print(
        f"read of 1024 vectors, 384 -> 1536, 3 bits: "
        f"no wires {seconds[0] * 1e3:.1f} ms, 1 ohm {seconds[1] * 1e3:.1f} ms"
    )
    print(f"ratio {seconds[1] / seconds[0]:.3f}; transfer matrices {transfer_seconds:.1f} s for {arrays} arrays")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--vectors", type=int, default=32)
    parser.add_argument("--layers", action="store_true", help="only the whole layer's error through wires")
    parser.add_argument("--read-cost", action="store_true", help="only the read's cost with and without wires")
    parser.add_argument("--recipe", action="store_true", help="only the fast model on the recipe model's tiles")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.read_cost:
        read_cost(args.repeats)
        return
    if args.layers:
        layer_errors(args.seeds)
        return
    if args.recipe:
        recipe_tiles(args.tile, args.vectors)
        return
    nodes = ", ".join(f"{node} nm {segment_resistance(node)[0]:.2f}" for node in (45, 22, 7))
    print(f"ohms per segment of a passive crossbar (NeuroSim 1.4): {nodes}")
    header = ("tile", "ohms", "gain", "residual", "fast error", "no-wire error", "exact s", "transfer s")
    print(" ".join(f"{name:>13s}" for name in header))
    for tile in TILES:
        for ohms in OHMS:
            runs = [tile_statistics(tile, ohms, seed, args.vectors) for seed in range(args.seeds)]
            means = [statistics.mean(run[k] for run in runs) for k in range(len(TileStatistics._fields))]
            print(f"{tile:13d} {ohms:13.1f} " + " ".join(f"{value:13.4f}" for value in means), flush=True)


if __name__ == "__main__":
    main()
