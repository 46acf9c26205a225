"""One crossbar layer measured against its digital product, on the protocol used to compare memsim with the
paper's released code: 3-bit 384 -> 1536, weights N(0, 0.05^2) quantized at scale max|W| / 6 (levels -3..3),
inputs N(0, 1), batch 256, mapped from a quantization-aware layer (integer weights, and an 8-bit activation
quantizer at full scale max|x|) as the recipe's layers are mapped.

The digital product takes the inputs as the chip's input path quantizes them, so what remains is the cells', the
noise's and the ADC's doing: under the paper preset the DAC alone quantizes the raw inputs (the paper's model
code replaces the layers' input quantizers with identity); where the layer keeps its activation quantizer
(CrossbarConfig.keep_input_quantizer) the digital product takes its 8-bit codes, and a DAC grid other than
theirs (the paper's, steps 1/128) shows in the gain."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from memsim.config import CrossbarConfig
from memsim.crossbar import dac
from memsim.layers import MemristorLinear

IN_FEATURES, OUT_FEATURES = 384, 1536
INPUT_BITS = 8


def protocol_layer(
    config: CrossbarConfig, seed: int, batch: int = 256
) -> tuple[MemristorLinear, torch.Tensor, torch.Tensor]:
    """The programmed layer, the inputs, and the digital product of the inputs as the layer's input path
    quantizes them (its activation quantizer if it keeps it, else its DAC) with the integer weights times their
    scale."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(OUT_FEATURES, IN_FEATURES, generator=generator) * 0.05
    scale = weight.abs().max() / 6
    q = (weight / scale).round().clamp(-3, 3)
    x = torch.randn(batch, IN_FEATURES, generator=generator)
    full_scale = x.abs().max()
    levels = 2 ** (INPUT_BITS - 1) - 1
    source = SimpleNamespace(  # a quantization-aware layer as MemristorLinear.from_linear reads one
        weight=weight,
        bias=None,
        in_features=IN_FEATURES,
        out_features=OUT_FEATURES,
        integer_weight=lambda: q,
        weight_scale=scale,
        input_scale=full_scale / levels,
        input_bits=INPUT_BITS,
    )
    layer = MemristorLinear.from_linear(source, config, generator)
    if layer.input_levels is not None:
        quantized = torch.round(x / full_scale * levels) * (full_scale / levels)
    else:
        quantized = dac(x, full_scale, config) / config.v_read * full_scale
    return layer, x, quantized @ (q * scale).T


@torch.no_grad()
def layer_statistics(layer: MemristorLinear, x: torch.Tensor, digital: torch.Tensor) -> dict[str, float]:
    """Two reads of x: gain (least-squares slope on the digital product), relative error, residual after the
    gain, and read-to-read RMS, each relative to the digital output's RMS."""
    first, second = layer(x), layer(x)
    rms = digital.square().mean().sqrt()
    gain = (first * digital).sum() / digital.square().sum()
    return {
        "gain": float(gain),
        "relative_error": float((first - digital).square().mean().sqrt() / rms),
        "residual": float((first - gain * digital).square().mean().sqrt() / rms),
        "read_to_read": float((first - second).square().mean().sqrt() / rms),
    }
