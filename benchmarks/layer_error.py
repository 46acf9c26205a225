"""Where one crossbar layer's error comes from: the parity protocol (memsim.validation.parity) under the
paper and physical presets, each calibration, multi-level cells under each write-verify scheme, bit-serial
inputs, relaxation after programming (memsim.relaxation) with and without drift compensation, and each
non-ideality alone (relaxation's at 1 day). Prints gain, relative error, residual after the gain and read-to-read RMS
(all relative to the digital output's RMS), mean over seeds.
Then a depthwise convolution (the mini model's: 144 channels, kernel 15, 3 bits, physical chip) against its
fake-quantized self, by tile size: a tile holds the taps of tile / 15 channels, and each column also reads
the other channels' rows of its tile, whose cells store 0 (HRS pairs that differ from cell to cell).

    python benchmarks/layer_error.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch
from torch import nn

import memsim
from memsim.crossbar import integer_weights
from memsim.relaxation import ONE_DAY
from memsim.validation.parity import layer_statistics, protocol_layer


def conditions() -> dict[str, memsim.CrossbarConfig]:
    paper = memsim.CrossbarConfig.preset("paper", weight_bits=3, precycle_pulses=0)
    physical = memsim.CrossbarConfig.preset("physical", weight_bits=3)
    chosen = {
        "paper (no pre-cycling)": paper,
        "paper, QAT input quantizer kept": dataclasses.replace(paper, keep_input_quantizer=True),
        "paper, per-column calibration": dataclasses.replace(paper, calibration="per_column"),
        "physical": physical,
        "physical, paper calibration": dataclasses.replace(physical, calibration="paper"),
        "physical, per-column calibration": dataclasses.replace(physical, calibration="per_column"),
        "physical, per-column, full-scale tests": dataclasses.replace(
            physical, calibration="per_column", typical_input_fraction=1.0
        ),
        "physical, none": physical.only(None),
        "physical, stationary cells": dataclasses.replace(physical, stationary_cells=True),
        "physical, bit-serial inputs": dataclasses.replace(physical, input_scheme="bit_serial"),
        "physical, bit-serial, I-V only": dataclasses.replace(
            physical.only("iv_nonlinearity"), dac_bits=8, input_scheme="bit_serial"
        ),
        "physical, 4-level cells": dataclasses.replace(physical, levels_per_cell=4),
        "physical, 4-level, first-past verify": dataclasses.replace(
            physical, levels_per_cell=4, verify_scheme="first_past"
        ),
        "physical, 8-level cells": dataclasses.replace(physical, levels_per_cell=8),
        "physical, 8-level, first-past verify": dataclasses.replace(
            physical, levels_per_cell=8, verify_scheme="first_past"
        ),
    }
    for seconds, when in ((ONE_DAY, "1 day"), (10 * 365 * ONE_DAY, "10 years")):
        aged = dataclasses.replace(physical, read_time=seconds)
        chosen[f"physical, read after {when}"] = aged
        chosen[f"physical, {when}, global compensation"] = dataclasses.replace(aged, drift_compensation="global")
        chosen[f"physical, {when}, per-column compensation"] = dataclasses.replace(
            aged, drift_compensation="per_column"
        )
        chosen[f"physical, {when}, cmo fit"] = dataclasses.replace(aged, relaxation="cmo")
        chosen[f"physical, 4-level cells, {when}"] = dataclasses.replace(aged, levels_per_cell=4)
    day = dataclasses.replace(physical, read_time=ONE_DAY)  # only() keeps its read time for relaxation alone
    chosen.update({f"physical, {kept} alone": day.only(kept) for kept in memsim.NON_IDEALITIES})
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print(f"{'condition':44s} {'gain':>7s} {'rel.err':>8s} {'residual':>8s} {'read2read':>9s}")
    for name, config in conditions().items():
        runs = [layer_statistics(*protocol_layer(config, seed)) for seed in range(args.seeds)]
        mean = {key: statistics.mean(run[key] for run in runs) for key in runs[0]}
        print(
            f"{name:44s} {mean['gain']:7.4f} {mean['relative_error']:8.4f} {mean['residual']:8.4f} "
            f"{mean['read_to_read']:9.4f}"
        )
    depthwise_errors(args.seeds)


def depthwise_errors(seeds: int) -> None:
    """The depthwise convolution's relative output error by tile size, mean over seeds."""
    torch.manual_seed(0)
    conv = nn.Conv1d(144, 144, 15, padding=7, groups=144)
    x = torch.randn(4, 144, 200)
    q, scale = integer_weights(conv.weight, 3)
    digital = conv._conv_forward(x, q * scale, conv.bias).detach()
    print(f"\n{'depthwise Conv1d 144, k=15: tile':44s} {'channels':>8s} {'rel.err':>8s}")
    for tile in (15, 30, 60, 128):
        errors = []
        for seed in range(seeds):
            config = memsim.CrossbarConfig(weight_bits=3, tile_size=tile)
            chip = memsim.MemristorConv1d.from_conv(conv, config, torch.Generator().manual_seed(seed))
            memsim.calibrate(chip, [(x,)])
            with torch.no_grad():
                errors.append(float((chip(x) - digital).norm() / digital.norm()))
        print(f"{tile:44d} {tile / 15:8.1f} {statistics.mean(errors):8.4f}")


if __name__ == "__main__":
    main()
