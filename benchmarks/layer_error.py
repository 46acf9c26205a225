"""Where one crossbar layer's error comes from: the parity protocol (memsim.validation.parity) under the
paper and physical presets, each calibration, and each non-ideality alone. Prints gain, relative error,
residual after the gain and read-to-read RMS (all relative to the digital output's RMS), mean over seeds.

    python benchmarks/layer_error.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import memsim
from memsim.validation.parity import layer_statistics, protocol_layer

PREQUANTIZED = "paper, inputs already 8-bit"  # the DAC re-quantizes 8-bit activations


def conditions() -> dict[str, memsim.CrossbarConfig]:
    paper = memsim.CrossbarConfig.preset("paper", weight_bits=3, precycle_pulses=0)
    physical = memsim.CrossbarConfig.preset("physical", weight_bits=3)
    chosen = {
        "paper (no pre-cycling)": paper,
        PREQUANTIZED: paper,
        "paper, per-column calibration": dataclasses.replace(paper, calibration="per_column"),
        "physical": physical,
        "physical, paper calibration": dataclasses.replace(physical, calibration="paper"),
        "physical, per-column calibration": dataclasses.replace(physical, calibration="per_column"),
        "physical, none": physical.only(None),
    }
    chosen.update({f"physical, {kept} alone": physical.only(kept) for kept in memsim.NON_IDEALITIES})
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print(f"{'condition':36s} {'gain':>7s} {'rel.err':>8s} {'residual':>8s} {'read2read':>9s}")
    for name, config in conditions().items():
        runs = [
            layer_statistics(*protocol_layer(config, seed, prequantized=name == PREQUANTIZED))
            for seed in range(args.seeds)
        ]
        mean = {key: statistics.mean(run[key] for run in runs) for key in runs[0]}
        print(
            f"{name:36s} {mean['gain']:7.4f} {mean['relative_error']:8.4f} {mean['residual']:8.4f} "
            f"{mean['read_to_read']:9.4f}"
        )


if __name__ == "__main__":
    main()
