"""Everything a GPU run of this project relies on, in one command (`make gpu-check`), with one table at the end.

1. hot paths without host synchronization (torch.cuda.set_sync_debug_mode("error")): a device pulse, a
   crossbar read, the depthwise and dense convolution reads, a BLSTM's stacked step reads, a QAT training
   step; and pre-cycling with at most one per pulse (set_sync_debug_mode("warn"), the warnings counted: its
   compaction reads how many cells each pulse switches). The rest of programming is left out: its verify loop
   and failure counts sync once per chunk on purpose;
2. the memsim and asr test suites on CUDA (the `device` fixture adds CUDA when present; the recipe picks it);
3. the benchmarks: device pulses and reads, the crossbar read against F.linear, programming, the paper model's
   programming time per instance and real-time factor (digital and on the chip), the training step;
4. a tiny end-to-end recipe (tests/asr/test_recipe.py) on CUDA.

Without a CUDA device it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import typing
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
NO_GPU = 2


def pulse(device: torch.device) -> Callable[[], object]:
    import memsim

    cells = memsim.CellArray(1 << 16, generator=torch.Generator(device).manual_seed(0), device=device)
    voltages = torch.linspace(-2, 2, cells.n, device=device)
    return lambda: cells.apply_voltage(voltages).read(0.2)


def read(device: torch.device) -> Callable[[], object]:
    import memsim

    linear = torch.nn.Linear(512, 512).to(device)
    layer = memsim.MemristorLinear.from_linear(linear, memsim.CrossbarConfig(), torch.Generator(device).manual_seed(0))
    x = torch.randn(256, 512, device=device)
    return lambda: layer(x)


def depthwise_convolution_read(device: torch.device) -> Callable[[], object]:
    """The Conformer's depthwise convolution: read as grouped convolutions (memsim.conv_read)."""
    return _calibrated_convolution(torch.nn.Conv1d(384, 384, 31, padding=15, groups=384), (8, 384, 250), device)


def dense_convolution_read(device: torch.device) -> Callable[[], object]:
    """The mini model's second frontend convolution: its patches gathered and read by the GEMM read."""
    return _calibrated_convolution(torch.nn.Conv2d(144, 144, 3, stride=2), (2, 144, 99, 39), device)


def _calibrated_convolution(
    conv: torch.nn.Module, shape: tuple[int, ...], device: torch.device
) -> Callable[[], object]:
    import memsim

    layer = memsim.convert(
        conv.to(device), memsim.CrossbarConfig(), torch.Generator(device).manual_seed(0), kinds=["conv"]
    )
    x = torch.randn(shape, device=device)
    memsim.calibrate(layer, [(x,)])
    return lambda: layer(x)


def lstm_step_reads(device: torch.device) -> Callable[[], object]:
    """A BLSTM layer's recurrent reads, step by step: both directions' recurrent rows as one stacked read per step
    (memsim.lstm; deciding to read them so syncs once per layer and forward, so the check starts after it)."""
    import memsim
    import memsim.lstm

    lstm = memsim.MemristorLSTM.from_lstm(
        torch.nn.LSTM(256, 256, bidirectional=True).to(device),
        memsim.CrossbarConfig(),
        torch.Generator(device).manual_seed(0),
    )
    memsim.calibrate(lstm, [(torch.randn(20, 8, 256, device=device),)])
    paired = memsim.lstm._PairedRead(typing.cast(list[memsim.MemristorLinear], lstm.gates()[0]), first_row=256)
    h = torch.randn(2, 8, 256, device=device)

    @torch.no_grad()
    def steps() -> None:
        for _ in range(20):
            paired(h)

    return steps


PRECYCLE_PULSES = 50  # the paper's first instance


def precycling(device: torch.device) -> Callable[[], object]:
    """The paper's pre-cycling on a chunk of cells, CellArray.apply_pulses: PRECYCLE_PULSES pulses of one voltage
    per array of 128 x 128 cells, each pulse updating only the cells it switches."""
    import memsim

    generator = torch.Generator(device).manual_seed(0)
    cells = memsim.CellArray(1 << 18, generator=generator, device=device)
    arrays = torch.arange(cells.n, device=device) // (128 * 128)
    voltages = torch.rand(PRECYCLE_PULSES, int(arrays[-1]) + 1, generator=generator, device=device) * 4 - 2
    return lambda: cells.apply_pulses(voltages, arrays)


def training_step(device: torch.device) -> Callable[[], object]:
    from asr.model import ConformerCTC, ModelConfig, ctc_loss
    from asr.quant import QuantConfig, quantize

    config = ModelConfig(vocab_size=32, frontend="conv2d", d_model=144, n_layers=2, d_ff=576, kernel_size=15)
    model = quantize(ConformerCTC(config), QuantConfig(weight_bits=3)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    feats, lengths = torch.randn(4, 400, 80, device=device), torch.full((4,), 400, device=device)
    tokens, token_lengths = torch.randint(1, 32, (4, 20), device=device), torch.full((4,), 20, device=device)

    def step() -> None:
        logits, out_lengths = model(feats, lengths)
        loss = ctc_loss(logits, out_lengths, tokens, token_lengths, model.blank)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


HOT_PATHS = {
    "device pulse + read": pulse,
    "crossbar read": read,
    "depthwise convolution read": depthwise_convolution_read,
    "dense convolution read": dense_convolution_read,
    "BLSTM step reads (directions stacked)": lstm_step_reads,
    "QAT training step": training_step,
    "pre-cycling pulses": precycling,
}
SYNCS_ALLOWED = {"pre-cycling pulses": PRECYCLE_PULSES}  # the hot paths allowed some: at most this many per run


def run_without_sync(
    make: Callable[[torch.device], Callable[[], object]], device: torch.device, allowed: int = 0
) -> None:
    """Build the work (set-up may synchronize), run it once to warm up, then once more where any host
    synchronization raises, or, with `allowed` syncs, where more than that many raise (CUDA only; on the CPU
    it just runs)."""
    work = make(device)
    work()
    if device.type != "cuda":
        work()
        return
    torch.cuda.synchronize()
    if allowed == 0:
        torch.cuda.set_sync_debug_mode("error")
        try:
            work()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            work()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchronizing CUDA operation" in str(warning.message) for warning in caught)
    if syncs > allowed:
        raise RuntimeError(f"{syncs} host synchronizations, {allowed} allowed")


def command(*args: str) -> list[str]:
    return [sys.executable, *args]


COMMANDS = {
    "memsim tests": command("-m", "pytest", "-q", "tests/memsim"),
    "asr tests": command("-m", "pytest", "-q", "tests/asr"),
    "benchmark: device": command("benchmarks/device.py"),
    "benchmark: crossbar": command("benchmarks/crossbar.py", "--device", "cuda", "--paper-model"),
    "benchmark: training step": command("benchmarks/train_step.py", "--device", "cuda"),
    "tiny recipe end to end": command("-m", "pytest", "-q", "tests/asr/test_recipe.py", "-k", "all_stages"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=["sync", *COMMANDS], help="run only these checks")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False); run it on a machine with a GPU")
        return NO_GPU
    device = torch.device("cuda")
    print(f"gpu-check on {torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)
    rows: list[tuple[str, str, float]] = []
    for name, make in HOT_PATHS.items():
        if args.only and "sync" not in args.only:
            break
        start = time.perf_counter()
        try:
            run_without_sync(make, device, SYNCS_ALLOWED.get(name, 0))
            status = "ok"
        except RuntimeError as error:  # set_sync_debug_mode("error") raises RuntimeError on a synchronization
            status = f"FAILED: {str(error).splitlines()[0][:80]}"
        rows.append((f"no host sync: {name}", status, time.perf_counter() - start))
    for name, argv in COMMANDS.items():
        if args.only and name not in args.only:
            continue
        print(f"\n=== {name}: {' '.join(argv[1:])}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=ROOT)
        rows.append(
            (name, "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode})", time.perf_counter() - start)
        )
    width = max(len(name) for name, _, _ in rows)
    print(f"\n{'check':{width}s}  {'seconds':>8s}  result")
    for name, status, seconds in rows:
        print(f"{name:{width}s}  {seconds:8.1f}  {status}")
    return 0 if all(status == "ok" for _, status, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
