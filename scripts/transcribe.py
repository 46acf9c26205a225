#!/usr/bin/env python
"""Transcribe audio files with a trained model of a work dir, digitally or on a simulated chip.

    python scripts/transcribe.py talk.wav other.flac --model work/mini/exp/small-w3a8-1a2b3c4d
    python scripts/transcribe.py talk.wav --model DIR --chip-settings CHIP_DIR --instance 2 --save-chip chip.pt
    python scripts/transcribe.py talk.wav --model DIR --chip chip.pt                    # the same chip again
    python scripts/transcribe.py talk.wav --model DIR --chip 1000                       # memsim's default chip

Prints one line per file: the file, a tab, the words. Audio: wav, flac or NIST SPHERE, any sample rate
(resampled to 16 kHz), channels averaged. --chip-settings takes a chip folder the memsim stage made for this
model (work_dir/memsim/<model>/<chip>-<hash>), and --instance K rebuilds its instance K as the recipe did
(seed, pre-cycling, calibration, ADCs, tuning).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from asr import transcribe  # noqa: E402
from asr.decode import DecodeSettings  # noqa: E402
from asr.errors import UserError  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", nargs="+", type=Path)
    parser.add_argument("--model", required=True, type=Path, help="a model folder: work_dir/exp/<name>-<hash>")
    parser.add_argument("--chip", help="a file --save-chip wrote, or a seed (a fresh chip of memsim's defaults)")
    parser.add_argument("--chip-settings", type=Path, help="a chip folder of the memsim stage for this model")
    parser.add_argument("--instance", type=int, help="with --chip-settings: the instance to rebuild (0-based)")
    parser.add_argument("--save-chip", type=Path, help="write the chip to this file")
    parser.add_argument("--method", choices=["greedy", "beam"], default="greedy")
    parser.add_argument("--beam-size", type=int, default=DecodeSettings.beam_size)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    try:
        trained = transcribe.TrainedModel.open(args.model)
        model, chip = transcribe.model_on(trained, args.chip, args.chip_settings, args.device, args.instance)
        if args.save_chip:
            if chip is None:
                raise UserError("--save-chip needs a chip: --chip-settings with --instance, or --chip")
            transcribe.save_chip(args.save_chip, trained, chip)
        texts = transcribe.transcribe_files(model, trained, args.audio, args.method, args.beam_size)
    except UserError as error:
        sys.exit(f"error: {error}")
    for path, text in zip(args.audio, texts, strict=True):
        print(f"{path}\t{text}")


if __name__ == "__main__":
    main()
