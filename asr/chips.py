"""A quantization-aware model programmed onto simulated memristor crossbars (the memsim stage's work).

Exactly the layers the QAT model quantized (quant.include; by default feed-forward, attention in/out
projections, conv-module pointwise layers) are mapped onto crossbars by memsim.convert; frontend,
depthwise conv, norms, attention matmuls and the output layer stay digital. Each programming instance is a
fresh chip with its own seed (device-to-device and cycle-to-cycle draws).

The same generator then draws the read noise. Before each split is decoded it is reseeded from (seed,
split), so a split's noise does not depend on which other splits or methods a run decodes.
"""

import hashlib
import itertools
import time
from collections.abc import Iterable
from pathlib import Path

import torch

import memsim
from asr.checkpoint import load_model
from asr.model import ConformerCTC
from asr.quant import quantized_layers

FEATURE_FRAMES_PER_SECOND = 100  # 10 ms frame shift


def program(
    model_path: Path, config: memsim.CrossbarConfig, seed: int, device: str | torch.device
) -> tuple[ConformerCTC, torch.Generator, float]:
    """The trained model at model_path with its quantized layers programmed onto a fresh chip (seed); returns
    the model, the generator its layers read noise from, and the seconds programming took."""
    began = time.perf_counter()
    model = load_model(model_path, device)
    generator = torch.Generator(device).manual_seed(seed)
    memsim.convert(model, config, generator=generator, include=quantized_layers(model))
    return model, generator, time.perf_counter() - began


def reseed(generator: torch.Generator, seed: int, split: str) -> None:
    """Set the read noise of the chip programmed with `seed` to the start of `split`'s own stream."""
    generator.manual_seed(int.from_bytes(hashlib.sha256(f"{seed}/{split}".encode()).digest()[:7], "little"))


def layer_errors(chip: ConformerCTC, model_path: Path, batches: Iterable[dict], count: int) -> list[dict]:
    """memsim.layer_errors of the chip against the digital model at model_path, over `count` batches (features
    as decode_split reads them): where the chip's error arises, layer by layer."""
    device = next(chip.parameters()).device
    digital = load_model(model_path, device)

    def run(model: torch.nn.Module) -> None:
        model.eval()
        for batch in itertools.islice(batches, count):
            model(batch["feats"].to(device), batch["feat_lens"].to(device))

    return memsim.layer_errors(chip, digital, run)


def chip_summary(
    model: ConformerCTC, config: memsim.CrossbarConfig, program_seconds: float, errors: list[dict]
) -> dict:
    """memsim.summary's totals and layers, the configuration, ADC conversions per second of audio, the layer
    errors against the digital model and, for multi-level cells, memsim.level_statistics."""
    rows = memsim.summary(model)
    vectors_per_second = int(model.output_lengths(torch.tensor([FEATURE_FRAMES_PER_SECOND]))[0])
    return {
        "config": dict(vars(config)),
        "layers": rows[:-1],
        "total": rows[-1],
        "adc_conversions_per_second_of_audio": rows[-1]["adc_conversions"] * vectors_per_second,
        "program_seconds": round(program_seconds, 2),
        "layer_errors": errors,
        "levels": memsim.level_statistics(model),
    }
