"""A quantization-aware model programmed onto simulated memristor crossbars (the memsim stage's work).

Exactly the layers the QAT model quantized (quant.include; by default feed-forward, attention in/out
projections, conv-module pointwise layers) are mapped onto crossbars by memsim.convert; frontend,
depthwise conv, norms, attention matmuls and the output layer stay digital. Each programming instance is a
fresh chip with its own seed (device-to-device and cycle-to-cycle draws).

The same generator then draws the read noise. Before each split is decoded it is reseeded from (seed,
split), so a split's noise does not depend on which other splits or methods a run decodes.
"""

import dataclasses
import hashlib
import itertools
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

import memsim
from asr.batch_memory import one_utterance
from asr.checkpoint import load_model
from asr.decode import model_device
from asr.model import ConformerCTC, ctc_loss
from asr.quant import quantized_layers
from asr.tokenizer import BLANK_ID
from memsim.convert import run_instrumented

PROBE_SECONDS = 10  # the utterance reads_per_second counts each crossbar layer's reads on


def program(
    model_path: Path,
    config: memsim.CrossbarConfig,
    seed: int,
    device: str | torch.device,
    kinds: tuple[str, ...] = ("linear",),
) -> tuple[ConformerCTC, torch.Generator, float]:
    """The trained model at model_path with its quantized layers of the given kinds (memsim.KINDS) programmed onto
    a fresh chip (seed); returns the model, the generator its layers read noise from, and the seconds programming
    took."""
    began = time.perf_counter()
    model = load_model(model_path, device)
    generator = torch.Generator(device).manual_seed(seed)
    memsim.convert(model, config, generator=generator, include=quantized_layers(model, kinds), kinds=kinds)
    return model, generator, time.perf_counter() - began


def calibrate_inputs(model: ConformerCTC, batches: Iterable[dict], count: int) -> None:
    """memsim.calibrate on `count` batches: the input range of every crossbar layer whose source did not quantize
    its inputs (a quantization-aware convolution's)."""
    device = next(model.parameters()).device
    memsim.calibrate(
        model, ((b["feats"].to(device), b["feat_lens"].to(device)) for b in itertools.islice(batches, count))
    )


def reseed(generator: torch.Generator, seed: int, split: str) -> None:
    """Set the read noise of the chip programmed with `seed` to the start of `split`'s own stream."""
    generator.manual_seed(int.from_bytes(hashlib.sha256(f"{seed}/{split}".encode()).digest()[:7], "little"))


def feeder(batches: Iterable[dict], count: int) -> Callable[[torch.nn.Module], None]:
    """A run(model) for memsim's measuring tools: the model, in eval mode, on the first `count` batches
    (features as decode_split reads them)."""

    def run(model: torch.nn.Module) -> None:
        device = next(model.parameters()).device
        model.eval()
        for batch in itertools.islice(batches, count):
            model(batch["feats"].to(device), batch["feat_lens"].to(device))

    return run


def set_adcs(
    model: ConformerCTC,
    calibration: Iterable[dict],
    count: int,
    auto: tuple[int, float] | None,
    layer_adc: dict[str, list],
) -> None:
    """Give the chip's layers their own ADCs: with `auto` (budget bits, coverage), memsim.allocate_adc on `count`
    calibration batches; then layer_adc's patterns (memsim.set_adc)."""
    if auto is not None:
        budget_bits, coverage = auto
        memsim.allocate_adc(model, feeder(calibration, count), budget_bits, coverage)
    if layer_adc:
        memsim.set_adc(model, {pattern: (bits[0], bits[1]) for pattern, bits in layer_adc.items()})


def tunable(model: nn.Module) -> list[nn.Parameter]:
    """What stays digital and is cheap to change on a programmed chip: every bias, the norms, the output layer."""
    norms = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d)
    chosen = {id(p): p for name, p in model.named_parameters() if name.endswith("bias") or name.startswith("head.")}
    for module in model.modules():
        if isinstance(module, norms):
            chosen.update({id(p): p for p in module.parameters()})
    return list(chosen.values())


def tune(model: ConformerCTC, batches: Iterable[dict], steps: int, lr: float) -> list[float]:
    """Chip-in-the-loop fine-tuning: `steps` AdamW steps on `tunable` parameters only, the programmed chip in the
    forward (its reads as they are, gradients along its mean path: MemristorLinear.through_mean_path); dropout
    off and the quantizers' ranges frozen (eval mode). Returns the loss per step."""
    device = next(model.parameters()).device
    parameters = tunable(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    model.eval()
    losses = []
    for batch in itertools.islice(_forever(batches), steps):
        feats, feat_lens, tokens, token_lens = (
            batch[k].to(device) for k in ("feats", "feat_lens", "tokens", "token_lens")
        )
        logits, lengths = model(feats, feat_lens)
        loss = ctc_loss(logits, lengths, tokens, token_lens, blank=BLANK_ID)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    for p in parameters:
        p.requires_grad_(False)
    return torch.stack(losses).tolist() if losses else []


def _forever(batches: Iterable[dict]) -> Iterable[dict]:
    """The batches again and again (a loader's next pass each time; nothing is kept)."""
    while True:
        yield from batches


def layer_errors(chip: ConformerCTC, model_path: Path, batches: Iterable[dict], count: int) -> list[dict]:
    """memsim.layer_errors of the chip against the digital model at model_path, over `count` batches: where the
    chip's error arises, layer by layer."""
    digital = load_model(model_path, next(chip.parameters()).device)
    return memsim.layer_errors(chip, digital, feeder(batches, count))


def chip_summary(
    model: ConformerCTC,
    config: memsim.CrossbarConfig,
    program_seconds: float,
    errors: list[dict],
    energy: list[dict],
    tuning: dict | None = None,
) -> dict:
    """memsim.summary's totals and layers (each with its ADC), the configuration, ADC conversions and the energy
    estimate (memsim.measure_energy's rows, with the costs they assume) per second of audio, the layer errors
    against the digital model, for multi-level cells memsim.level_statistics, and what chip-in-the-loop tuning
    (`tuning`) did."""
    rows = memsim.summary(model)
    reads = reads_per_second(model)
    return {
        "config": dict(vars(config)),
        "layers": rows[:-1],
        "total": rows[-1],
        "adc_conversions_per_second_of_audio": round(
            sum(row["adc_conversions"] * reads[row["layer"]] for row in rows[:-1])
        ),
        "program_seconds": round(program_seconds, 2),
        "layer_errors": errors,
        "levels": memsim.level_statistics(model),
        "tuning": tuning,
        "energy": {
            "costs": dataclasses.asdict(memsim.EnergyCosts()),
            "vectors_per_second_of_audio": reads,
            "per_second_of_audio_uj": per_second_of_audio(energy[:-1], reads),
            "layers": energy,
        },
    }


def per_second_of_audio(layers: list[dict], reads: dict[str, float]) -> dict[str, float | None]:
    """Each energy of memsim.measure_energy's layer rows (picojoules per vector), times the vectors each layer
    reads per second of audio, summed over the layers: microjoules per second of audio (None where a layer's
    converter is ideal and unpriced)."""
    totals: dict[str, float | None] = {}
    for key in memsim.energy.ENERGY_KEYS:
        values = [row[key] * reads[row["layer"]] for row in layers if row[key] is not None]
        totals[key.removesuffix("_pj")] = sum(values) / 1e6 if len(values) == len(layers) else None
    return totals


class _ReadCounter:
    """An energy_meter that counts the vectors a crossbar layer reads, and nothing else."""

    def __init__(self):
        self.vectors = 0

    def __call__(self, v: torch.Tensor, layer: object) -> None:
        self.vectors += v.shape[0]


def reads_per_second(model: ConformerCTC) -> dict[str, float]:
    """Input vectors each crossbar layer reads per second of audio, counted over one utterance of PROBE_SECONDS
    (zero features): one per encoder frame for a linear layer or a depthwise convolution, one per output
    position for a frontend convolution (many per frame), one per frame and direction for an LSTM's gates."""
    run = one_utterance(PROBE_SECONDS, model.cfg.n_mels, model_device(model))
    counters = run_instrumented(model, run, "energy_meter", _ReadCounter)
    return {name: counter.vectors / PROBE_SECONDS for name, counter in counters.items()}
