"""Training step time and peak memory, float vs QAT (3-bit weights, 8-bit inputs), side by side in one run.

A step is forward, CTC loss, backward and an AdamW update on one synthetic batch, at the small (4 x 144)
and the paper (12 x 384) model sizes. Each (size, mode) runs in a fresh process so its peak memory is its
own; modes alternate over a few rounds and the fastest round counts, so a busy machine skews less.
Target (issue 5): QAT step time <= 1.3x float.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from asr.model import ConformerCTC, ModelConfig, count_parameters, ctc_loss
from asr.quant import QuantConfig, quantize

# size -> (model fields, vocab, batch size, frames per utterance); batches of ~100 s (small) and ~40 s (paper)
SIZES = {
    "small": (
        dict(frontend="conv2d", d_model=144, n_layers=4, n_heads=4, d_ff=576, kernel_size=15, pos_enc="relative"),
        100,
        16,
        600,
    ),
    "paper": (dict(), 500, 4, 1000),
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(size: str, mode: str, steps: int, device: str) -> dict:
    fields, vocab, batch, frames = SIZES[size]
    torch.manual_seed(0)
    model = ConformerCTC(ModelConfig(vocab_size=vocab, **fields))
    quantize(model, QuantConfig(weight_bits=3 if mode == "qat" else None))
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    feats = torch.randn(batch, frames, 80, device=device)
    lengths = torch.full((batch,), frames, device=device)
    tokens = torch.randint(1, vocab, (batch, frames // 16), device=device)
    token_lengths = torch.full((batch,), frames // 16, device=device)
    cuda = device.startswith("cuda")

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits, out_lengths = model(feats, lengths)
        loss = ctc_loss(logits, out_lengths, tokens, token_lengths, model.blank)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    before = peak_rss_mb()
    step()  # warm-up (allocations, optimizer state)
    times = [step() for _ in range(steps)]
    memory = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb() - before
    return {"params": count_parameters(model), "step_s": statistics.median(times), "memory_mb": memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step (median)")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per mode, alternating")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--worker", nargs=2, metavar=("SIZE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(*args.worker, args.steps, args.device)))
        return

    print(
        f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"memory: {'peak allocated' if args.device.startswith('cuda') else 'peak RSS growth over the steps'}"
    )
    print(
        f"{'size':6} {'params':>11} {'batch':>12} {'float s/step':>13} {'QAT s/step':>11} {'QAT/float':>10} "
        f"{'float MB':>9} {'QAT MB':>8}"
    )
    for size in args.sizes:
        runs = {"float": [], "qat": []}
        for _ in range(args.rounds):  # alternate the modes; the fastest round is the least disturbed one
            for mode in runs:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        size,
                        mode,
                        "--steps",
                        str(args.steps),
                        "--device",
                        args.device,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
        runs = {mode: min(results, key=lambda r: r["step_s"]) for mode, results in runs.items()}
        _, _, batch, frames = SIZES[size]
        f, q = runs["float"], runs["qat"]
        print(
            f"{size:6} {f['params']:>11,} {f'{batch}x{frames / 100:.0f}s':>12} {f['step_s']:>13.3f} "
            f"{q['step_s']:>11.3f} {q['step_s'] / f['step_s']:>9.2f}x {f['memory_mb']:>9.0f} {q['memory_mb']:>8.0f}"
        )


if __name__ == "__main__":
    main()
