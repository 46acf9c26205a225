"""Crossbar read speed and memory, side by side in one run.

Per shape, at batch 1024: nn.Linear, the 3-bit MemristorLinear (GEMM read: noiseless mean and noise
variance per tile, one Gaussian per output), and a brute-force per-cell read as the paper's code does it
(a [batch, rows, columns] tensor of cell currents per array) at a batch it can afford, scaled per vector.
Also the peak tensor memory a forward allocates (its inputs and the programmed r excluded) and the
programming time per million cells.
Targets: <= 9x nn.Linear (issue 16; issue 3 asked 10x); >= 300x faster than the per-cell read; memory
O(cells + batch x outputs x tiles x planes).

Then programming, side by side on one 384 -> 1536 3-bit layer (2.36 M cells): the paper's procedure with
the reference numpy `synaptogen` package (a fresh CellArrayCPU per 128 x 128 array, +2 V, then -2 V on the
ones), memsim pulse by pulse, and memsim's default (fresh cells in closed form). With --paper-model, the
whole paper model's crossbar layers (12 x 384 Conformer, 3 bits) programmed by memsim, and its forward's
real-time factor, digital and on the chip.
Target (issue 16): programming >= 3x faster per cell than the paper's numpy code.
With --paper-model --precycle P, only this instead: the paper model programmed with the paper's protocol (P
pre-cycling pulses of one uniform [-2, 2] V draw per array, full RESET, one SET), pre-cycling through
CellArray.apply_pulses (only the cells a pulse switches; on the CPU its compiled loop), and, side by side on the
first rows of one layer (--reference-rows; the whole model takes some 18 min pulse by pulse), against every cell
computed on every pulse (memsim.validation.pulse_by_pulse) and against apply_pulses's torch path (CUDA's), each
extrapolated to the model per cell.
Also a depthwise Conv1d, Conv2d layers and a BLSTM on crossbars against their digital layers (--layers-only:
these alone). Times are the fastest of --repeats calls, the layers compared taking turns.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import time

import torch
from torch import nn

import memsim
from memsim.crossbar import _program_by_pulses, adc, adc_step, dac, digit_planes, program
from memsim.memory import peak_bytes
from memsim.validation.pulse_by_pulse import program_pulse_by_pulse

SHAPES = [(512, 512), (384, 1536), (1536, 384), (384, 1152)]


def best_of(calls: list, repeats: int, synchronize) -> list[float]:
    """Seconds per call of each function: the fastest of `repeats` timed calls, the functions taking turns.
    On a shared machine other work only ever slows a call down, so the fastest is the code's own cost, and
    taking turns exposes the layers compared to the same load. Each timed call follows an untimed one of the
    same function, so that none is timed on the caches and allocations another one left."""
    best = [float("inf")] * len(calls)
    for _ in range(repeats):
        for i, fn in enumerate(calls):
            fn()
            synchronize()
            start = time.perf_counter()
            fn()
            synchronize()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


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


def peak_mib(fn) -> float:
    return peak_bytes(fn) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--brute-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--paper-model", action="store_true", help="also program the whole paper model")
    parser.add_argument("--layers-only", action="store_true", help="only the convolutions and the LSTM")
    parser.add_argument(
        "--precycle",
        type=int,
        default=0,
        metavar="P",
        help="with --paper-model: only its programming, P pre-cycling pulses",
    )
    parser.add_argument(
        "--reference-rows", type=int, default=128, help="--precycle: rows of a layer both paths program (whole tiles)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    config = memsim.CrossbarConfig(weight_bits=3)
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; 3-bit weights, "
        f"tile {config.tile_size}, physical read noise, ADC ({config.adc_precision_bits}, {config.adc_range_bits})"
    )
    if args.layers_only:
        layer_kinds(config, device, sync, args.repeats)
        return
    if args.paper_model and args.precycle:
        precycled_paper_model(args.precycle, args.reference_rows, device, sync)
        return
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
            t_linear, t_xbar = best_of([functools.partial(linear, x), functools.partial(layer, x)], args.repeats, sync)
            small = x[: args.brute_batch]
            (t_brute,) = best_of([functools.partial(per_cell_forward, layer, small)], 2, sync)
            t_brute /= args.brute_batch
            memory = peak_mib(functools.partial(layer, x))
        per_vector = t_xbar / args.batch
        print(
            f"{in_features:>4d}x{out_features:<5d} {cells:9d} {t_linear * 1e3:9.2f} {t_xbar * 1e3:8.1f} "
            f"{t_xbar / t_linear:8.1f} {t_brute * 1e3:15.2f} {t_brute / per_vector:9.0f} {memory:8.1f} "
            f"{cells * 4 / 2**20:9.2f} {program_s / cells * 1e6:15.2f}"
        )
    layer_kinds(config, device, sync, args.repeats)
    programming(config, device, sync)
    if args.paper_model:
        paper_model(config, device, sync)


LAYER_KINDS = {  # convolutions and an LSTM with an input batch each: the recipes' sizes, and one small Conv2d
    "depthwise Conv1d 384, k=31": (lambda: nn.Conv1d(384, 384, 31, padding=15, groups=384), (8, 384, 250)),
    # the mini model's second frontend conv (model=small), on 5 s of 80 filterbanks after the first
    "Conv2d 144->144, 3x3/2": (lambda: nn.Conv2d(144, 144, 3, stride=2), (2, 144, 249, 39)),
    # the paper model's VGG frontend (model=paper), its last conv on 5 s after the first pooling
    "Conv2d 128->128, 3x3": (lambda: nn.Conv2d(128, 128, 3, padding=1), (2, 128, 250, 40)),
    "Conv2d 32->32, 3x3": (lambda: nn.Conv2d(32, 32, 3, padding=1), (8, 32, 40, 20)),
    "BLSTM 256->256": (lambda: nn.LSTM(256, 256, bidirectional=True), (100, 8, 256)),
}


def layer_kinds(config: memsim.CrossbarConfig, device: torch.device, sync, repeats: int) -> None:
    """Each layer kind on crossbars against its digital layer (the same multiple as MemristorLinear's is the
    target of issue 14), with its tiles and cells (a grouped convolution keeps only the tiles that hold weights)."""
    print(f"\n{'layer':>28s} {'tiles':>6s} {'cells':>9s} {'digital ms':>10s} {'xbar ms':>8s} {'x digital':>9s}")
    for name, (make, shape) in LAYER_KINDS.items():
        torch.manual_seed(0)
        digital = nn.Sequential(make()).to(device)
        chip = memsim.convert(
            nn.Sequential(make()).to(device), config, torch.Generator(device).manual_seed(0), kinds=["conv", "lstm"]
        )
        x = torch.randn(shape, device=device)
        memsim.calibrate(chip, [(x,)])  # a fixed DAC range, as a deployed chip has (the LSTM then reads ahead)
        with torch.no_grad():
            t_digital, t_chip = best_of([functools.partial(digital, x), functools.partial(chip, x)], repeats, sync)
        total = memsim.summary(chip)[-1]
        print(
            f"{name:>28s} {total['tiles']:6d} {total['cells']:9d} {t_digital * 1e3:10.2f} {t_chip * 1e3:8.1f} "
            f"{t_chip / t_digital:9.1f}"
        )


def timed(action, sync) -> float:
    sync()
    start = time.perf_counter()
    action()
    sync()
    return time.perf_counter() - start


def paper_procedure(cells_on: torch.Tensor, tile: int) -> None:
    """The paper's programming, with the reference package: per array (sign, row tile, plane, column tile)
    a fresh CellArrayCPU of tile x tile cells, a +2 V RESET, then -2 V on the cells that store 1."""
    from synaptogen import synaptogen as reference

    params = reference.load_params(reference.default_param_fp, p=10)
    padded = nn.functional.pad(cells_on, (0, -cells_on.shape[-1] % tile)).float()  # [2, in, planes, out]
    for sign, rows, plane, columns in itertools.product(
        range(2), range(0, padded.shape[1], tile), range(padded.shape[2]), range(0, padded.shape[3], tile)
    ):
        ones = padded[sign, rows : rows + tile, plane, columns : columns + tile].reshape(-1).numpy()
        cells = reference.CellArrayCPU(ones.size, params)
        reference.applyVoltage(cells, 2.0)
        reference.applyVoltage(cells, ones * -2.0)


def programming(config: memsim.CrossbarConfig, device: torch.device, sync) -> None:
    weight = torch.randn(1536, 384) * 0.05
    q, _ = memsim.crossbar.integer_weights(weight, config.max_level)
    cells_on = digit_planes(q, config.planes, config.tile_size)
    n = cells_on.numel()
    reference = timed(lambda: paper_procedure(cells_on, config.tile_size), lambda: None)
    on_device = cells_on.to(device)
    pulses = timed(lambda: _program_by_pulses(on_device.bool(), config, torch.Generator(device).manual_seed(0)), sync)
    default = timed(lambda: program(on_device, config, torch.Generator(device).manual_seed(0)), sync)
    print(f"\nprogramming 384x1536, 3 bits, {n / 1e6:.2f} M cells ({device}):")
    print(f"{'method':>42s} {'seconds':>8s} {'s/Mcell':>8s} {'vs paper code':>13s}")
    for name, seconds in (
        ("the paper's procedure, reference numpy (cpu)", reference),
        ("memsim, pulse by pulse", pulses),
        ("memsim, fresh cells in closed form (default)", default),
    ):
        print(f"{name:>42s} {seconds:8.2f} {seconds / n * 1e6:8.3f} {reference / seconds:12.1f}x")


def quantized_paper_model(device: torch.device) -> tuple[nn.Module, list[str]]:
    """The paper model (12 x 384 Conformer, 3-bit QAT layers) and the names of its crossbar layers."""
    from asr.model import ConformerCTC, ModelConfig
    from asr.quant import QuantConfig, quantize, quantized_layers

    torch.manual_seed(0)
    model = quantize(ConformerCTC(ModelConfig(vocab_size=500)), QuantConfig(weight_bits=3)).to(device).eval()
    return model, quantized_layers(model)


SWEEP_INSTANCES = 10  # the paper's programming instances: instance k pre-cycles k x P pulses


def torch_pulses(run):
    """run() with CellArray.apply_pulses taking its torch path (CUDA's) on the CPU too."""
    original = memsim.CellArray.apply_pulses
    memsim.CellArray.apply_pulses = functools.partialmethod(original, compiled=False)
    try:
        return run()
    finally:
        memsim.CellArray.apply_pulses = original


def precycled_paper_model(pulses: int, reference_rows: int, device: torch.device, sync) -> None:
    """The paper model programmed with P pre-cycling pulses (the paper's preset), pre-cycling through
    CellArray.apply_pulses: seconds per instance, split into pre-cycling and the rest (ProgrammingTimer); side by
    side with the pulse-by-pulse reference and the torch path on the first reference_rows rows of the first
    384 -> 1536 layer, the fastest of 2 alternating calls each, extrapolated to the model per cell; and the estimated
    time of the paper's 10-instance sweep (instance k: k x P pulses)."""
    config = memsim.CrossbarConfig.preset("paper", weight_bits=3, precycle_pulses=pulses)
    if reference_rows % config.tile_size:
        raise ValueError(f"--reference-rows must be a multiple of the tile size {config.tile_size}")
    model, layers = quantized_paper_model(device)
    name = next(n for n in layers if tuple(model.get_submodule(n).weight.shape) == (1536, 384))
    q = model.get_submodule(name).integer_weight().detach()
    part = digit_planes(q, config.planes, config.tile_size)[:, :reference_rows]
    seed = functools.partial(torch.Generator(device).manual_seed, 0)
    paths = {
        "every cell on every pulse": lambda: program_pulse_by_pulse(part, config, seed()),
        "torch, switching cells": lambda: torch_pulses(lambda: program(part, config, seed())),
        "compiled loop per cell": lambda: program(part, config, seed()),
    }
    if device.type != "cpu":  # the compiled loop runs on the CPU; program() takes the torch path
        del paths["compiled loop per cell"]
    part_seconds = dict(zip(paths, best_of(list(paths.values()), 2, sync), strict=True))
    timer = memsim.ProgrammingTimer()
    seconds = timed(lambda: memsim.convert(model, config, seed(), include=layers, progress=timer), sync)
    cells = memsim.summary(model)[-1]["cells"]
    print(
        f"\npaper model (12 x 384, 3 bits, {cells / 1e6:.1f} M cells), the paper's protocol: {pulses} pre-cycling "
        f"pulses (one uniform [-2, 2] V draw per array), full RESET, one SET; {torch.get_num_threads()} CPU threads"
    )
    print(f"  side by side on {name}, rows 0-{reference_rows - 1} ({part.numel():,} cells), fastest of 2 alternating:")
    for method, method_seconds in part_seconds.items():
        per_cell = method_seconds / part.numel()
        print(
            f"  {method:>26s} {method_seconds:7.2f} s  {per_cell * 1e9:7.0f} ns/cell"
            f"  {per_cell * cells / 60:6.1f} min per model (per cell x {cells / 1e6:.1f} M)"
        )
    fastest = min(part_seconds.values())
    print(f"  {'ratios to the fastest':>26s} " + " / ".join(f"{t / fastest:.1f}x" for t in part_seconds.values()))
    rest = seconds - timer.precycle_seconds
    per_pulse = timer.precycle_seconds / pulses
    sweep_pulses = pulses * SWEEP_INSTANCES * (SWEEP_INSTANCES + 1) // 2
    path = "compiled loop" if device.type == "cpu" else "torch"
    print(
        f"  whole model, {path}: {seconds:.1f} s per instance = {timer.precycle_seconds:.1f} s "
        f"pre-cycling ({per_pulse:.2f} s per pulse) + {rest:.1f} s the rest (fresh cells, full RESET, SET)"
    )
    print(
        f"  estimated {SWEEP_INSTANCES}-instance sweep (instance k: k x {pulses} pulses, {sweep_pulses:,} in all): "
        f"{(SWEEP_INSTANCES * rest + sweep_pulses * per_pulse) / 60:.0f} min"
    )


def paper_model(config: memsim.CrossbarConfig, device: torch.device, sync, batch_seconds: float = 40.0) -> None:
    """The paper model's crossbar layers programmed by memsim (seconds per instance), and the real-time factor
    of its forward pass (decoding's cost without the search) on the digital QAT model and on the chip, for a
    batch of 4 utterances of batch_seconds / 4 of random features."""
    model, layers = quantized_paper_model(device)
    frames = int(batch_seconds / 4 * 100)  # 10 ms feature frames
    features = torch.randn(4, frames, 80, device=device)
    lengths = torch.full((4,), frames, device=device)
    with torch.no_grad():
        (digital,) = best_of([functools.partial(model, features, lengths)], 2, sync)
        generator = torch.Generator(device).manual_seed(0)
        seconds = timed(lambda: memsim.convert(model, config, generator, include=layers), sync)
        (chip,) = best_of([functools.partial(model, features, lengths)], 2, sync)
    total = memsim.summary(model)[-1]
    print(
        f"\npaper model (12 x 384, 3 bits): {len(layers)} crossbar layers, {total['cells'] / 1e6:.1f} M cells in "
        f"{total['tiles']} tiles programmed in {seconds:.1f} s per instance ({seconds / total['cells'] * 1e6:.3f} "
        f"s/Mcell); forward over {batch_seconds:g} s of audio (4 x {batch_seconds / 4:g} s): real-time factor "
        f"{digital / batch_seconds:.3f} digital QAT, {chip / batch_seconds:.3f} on the chip ({chip / digital:.1f}x)"
    )


if __name__ == "__main__":
    main()
