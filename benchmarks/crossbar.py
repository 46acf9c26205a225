"""Crossbar read speed and memory, side by side in one run.

Per shape, at batch 1024: nn.Linear, the 3-bit MemristorLinear (GEMM read: noiseless mean and noise
variance per tile, one Gaussian per output), and a brute-force per-cell read as the paper's code does it
(a [batch, rows, columns] tensor of cell currents per array) at a batch it can afford, scaled per vector.
Also the peak tensor memory a forward allocates (its inputs and the programmed r excluded) and the
programming time per million cells.
Targets (issue 3): <= 10x nn.Linear; >= 300x faster than the per-cell read; memory O(cells).
"""

from __future__ import annotations

import argparse
import functools
import time
import weakref

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import memsim
from memsim.crossbar import adc, adc_step, dac

SHAPES = [(512, 512), (384, 1536), (1536, 384), (384, 1152)]


def seconds_per_call(fn, repeats: int, synchronize) -> float:
    fn()
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize()
    return (time.perf_counter() - start) / repeats


def per_cell_forward(layer: memsim.MemristorLinear, x: torch.Tensor) -> torch.Tensor:
    """The per-cell read: every cell's current and noise materialized, [batch, rows, columns] per array."""
    config, model = layer.config, layer.read_model
    v = nn.functional.pad(dac(x, x.abs().amax(), config), (0, layer.r.shape[1] - x.shape[1]))
    base, delta = model.conductances(v)
    weight = model.noise.variance_per_siemens(v)
    out = 0
    for plane in range(config.planes):
        for sign, r in ((1, layer.r[0, :, plane]), (-1, layer.r[1, :, plane])):
            g = base[:, :, None] + r[None] * delta[:, :, None]  # [batch, rows, columns]
            current = v[:, :, None] * g + torch.sqrt(weight[:, :, None] * g.abs()) * torch.randn_like(g)
            tiles = current.view(x.shape[0], -1, config.tile_size, layer.out_features).sum(2)
            out = out + sign * 2**plane * tiles
    return adc(out / model.unit_current, config).sum(1) * adc_step(config)


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storage alive at once during a block, counting what the block allocates."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for tensor in pytree.tree_leaves(result):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key not in self.seen and storage.nbytes():
                    self.seen.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, storage.nbytes())
        return result

    def _free(self, key: int, nbytes: int) -> None:
        self.seen.discard(key)
        self.live -= nbytes


def peak_mib(fn) -> float:
    with PeakTensorMemory() as tracker:
        fn()
    return tracker.peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--brute-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    config = memsim.CrossbarConfig(weight_bits=3)
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; 3-bit weights, "
        f"tile {config.tile_size}, physical read noise, ADC ({config.adc_precision_bits}, {config.adc_range_bits})"
    )
    print(
        f"{'shape':>10s} {'cells':>9s} {'linear ms':>9s} {'xbar ms':>8s} {'x linear':>8s} "
        f"{'per-cell ms/vec':>15s} {'speed-up':>9s} {'xbar MiB':>8s} {'cells MiB':>9s} {'program s/Mcell':>15s}"
    )
    for in_features, out_features in SHAPES:
        linear = nn.Linear(in_features, out_features).to(device)
        start = time.perf_counter()
        layer = memsim.MemristorLinear.from_linear(linear, config, torch.Generator(device).manual_seed(0))
        sync()
        program_s = time.perf_counter() - start
        cells = layer.r.numel()
        x = torch.randn(args.batch, in_features, device=device)
        with torch.no_grad():
            t_linear = seconds_per_call(functools.partial(linear, x), args.repeats, sync)
            t_xbar = seconds_per_call(functools.partial(layer, x), args.repeats, sync)
            small = x[: args.brute_batch]
            t_brute = seconds_per_call(functools.partial(per_cell_forward, layer, small), 2, sync) / args.brute_batch
            memory = peak_mib(functools.partial(layer, x))
        per_vector = t_xbar / args.batch
        print(
            f"{in_features:>4d}x{out_features:<5d} {cells:9d} {t_linear * 1e3:9.2f} {t_xbar * 1e3:8.1f} "
            f"{t_xbar / t_linear:8.1f} {t_brute * 1e3:15.2f} {t_brute / per_vector:9.0f} {memory:8.1f} "
            f"{cells * 4 / 2**20:9.2f} {program_s / cells * 1e6:15.2f}"
        )


if __name__ == "__main__":
    main()
