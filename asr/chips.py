"""A quantization-aware model programmed onto simulated memristor crossbars: the one home of the chip procedure
that the memsim stage and transcription both run (prepare), and of its summary (summarize).

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
from tqdm import tqdm

import memsim
from asr.batch_memory import one_utterance
from asr.checkpoint import load_model
from asr.data.features import FeatureSettings
from asr.data.loader import DataFiles, split_loader, unaugmented_loader
from asr.decode import model_device
from asr.errors import CorruptFile
from asr.files import read_json
from asr.identity import with_defaults
from asr.model import ConformerCTC, ctc_loss
from asr.quant import quantized_layers
from asr.tokenizer import BLANK_ID
from memsim.convert import memristor_layers, run_instrumented

CALIBRATION_BATCHES = 4  # unaugmented train batches that set DAC ranges (convolutions) and automatic ADCs
CALIBRATION_SECONDS = 200.0  # padded seconds of audio per calibration batch
SUMMARY_FILE = "summary.json"  # a chip configuration's cells, tiles, layer errors and energy (summarize)
PROBE_SECONDS = 10  # the utterance reads_per_second counts each crossbar layer's reads on


@dataclasses.dataclass(frozen=True)
class Tuning:
    """Chip-in-the-loop fine-tuning of each programmed instance (tune): AdamW steps on the train split's
    augmented batches of `max_seconds` padded audio, drawn with the instance's seed."""

    steps: int
    lr: float
    max_seconds: float


@dataclasses.dataclass(frozen=True)
class ChipFolder:
    """Everything that makes the chips of one chip folder, as its record holds it (asr.pipeline.graph.chip_output
    writes these settings): from_settings reads them, so the recipe and transcription build one chip alike."""

    chip: memsim.ChipSpec  # instance 0's crossbar (its pre-cycling included), the layer kinds, the ADC plan
    seed: int  # instance 0's; instance k is programmed from seed + k
    precycle_per_instance: int = 0  # instance k pre-cycles k x this more than instance 0
    tuning: Tuning | None = None
    read_passes: int = 0  # passes of reads over a split before it is decoded (start_split)

    @classmethod
    def from_settings(cls, settings: dict) -> "ChipFolder":
        """The chips of a chip folder's settings (its record's `settings`, absent ones at their defaults)."""
        settings = {**settings, **with_defaults("chip", {k: v for k, v in settings.items() if k != "crossbar"})}
        auto, tune = settings["adc_auto"], settings["tune"]
        plan = memsim.AdcPlan(
            layers=tuple((pattern, (bits[0], bits[1])) for pattern, bits in settings["layer_adc"].items()),
            auto_budget_bits=auto["budget_bits"] if auto else None,
            auto_coverage=auto["coverage"] if auto else memsim.AdcPlan.auto_coverage,
        )
        crossbar = memsim.CrossbarConfig(**settings["crossbar"])
        layer_bits = tuple(settings["layer_bits"].items())
        return cls(
            chip=memsim.ChipSpec(crossbar, plan, tuple(settings["kinds"]), layer_bits),
            seed=settings["seed"],
            precycle_per_instance=settings.get("precycle_per_instance", 0),
            tuning=Tuning(tune["steps"], tune["lr"], tune["loader"]["max_seconds"]) if tune else None,
            read_passes=settings["read_passes"],
        )

    def chip_of(self, instance: int) -> memsim.ChipSpec:
        """The chip instance `instance` (0-based) is programmed as: instance 0's, pre-cycled more."""
        crossbar = self.chip.crossbar
        extra = instance * self.precycle_per_instance
        return dataclasses.replace(
            self.chip, crossbar=dataclasses.replace(crossbar, precycle_pulses=crossbar.precycle_pulses + extra)
        )

    def seed_of(self, instance: int) -> int:
        return self.seed + instance


@dataclasses.dataclass(frozen=True)
class CalibrationData:
    """The training data a chip is prepared with: unaugmented batches for DAC ranges and automatic ADCs, and
    augmented ones for tuning, read with the features the model was trained on."""

    files: DataFiles
    features: FeatureSettings
    num_workers: int = 0

    def calibration(self) -> Iterable[dict]:
        """The first CALIBRATION_BATCHES unaugmented, untokenized train batches (a fresh pass each time)."""
        loader = unaugmented_loader(self.files, "train", self.features, CALIBRATION_SECONDS, self.num_workers)
        return itertools.islice(loader, CALIBRATION_BATCHES)

    def tuning(self, tuning: Tuning, seed: int) -> Iterable[dict]:
        """Augmented, tokenized train batches for tuning the instance of `seed`."""
        return split_loader(
            self.files,
            "train",
            self.features,
            max_seconds=tuning.max_seconds,
            num_workers=self.num_workers,
            seed=seed,
            train=True,
        )


@dataclasses.dataclass
class PreparedChip:
    """A programmed, calibrated (and tuned) chip: the model on it, its noise generator, and what it took."""

    model: ConformerCTC
    generator: torch.Generator
    seed: int
    program_seconds: float  # programming in all, pre-cycling included
    tuning: dict | None  # steps, lr, first and last loss
    precycle_seconds: float = 0.0  # the part of program_seconds spent pre-cycling


class ProgressBars:
    """tqdm bars for memsim's programming events (memsim.ProgrammingProgress): one over the layers of the chip,
    and, while a layer pre-cycles, one over its pulses; each with its estimate of the time left."""

    def __init__(self, description: str):
        self.description = description
        self.layers: tqdm | None = None
        self.pulses: tqdm | None = None

    def __call__(self, event: memsim.ProgrammingProgress) -> None:
        if event.phase == "precycle":
            if self.pulses is None or self.pulses.desc != f"pre-cycle {event.layer}":
                self._close_pulses()
                self.pulses = tqdm(total=event.total, desc=f"pre-cycle {event.layer}", unit="pulse", leave=False)
            self.pulses.update(event.done - self.pulses.n)
            return
        self._close_pulses()
        if self.layers is None:
            self.layers = tqdm(total=event.total, desc=self.description, unit="layer")
        self.layers.update(1)
        if self.layers.n >= event.total:
            self.layers.close()

    def _close_pulses(self) -> None:
        if self.pulses is not None:
            self.pulses.close()
            self.pulses = None


def prepare(
    model_path: Path,
    folder: ChipFolder,
    instance: int,
    data: CalibrationData,
    device: str | torch.device,
    progress: memsim.ProgressCallback | None = None,
) -> PreparedChip:
    """Instance `instance` of a chip folder, as the recipe scores it: program a fresh chip (the ADCs its plan
    fixes by layer come with it), calibrate the DAC ranges of the layers whose inputs the model did not quantize
    (convolutions), apply the plan's automatic ADCs (memsim.apply_adc_plan), and tune it if the folder says so.
    progress: memsim's programming events (ProgressBars shows them); they never change the chip."""
    seed, chip = folder.seed_of(instance), folder.chip_of(instance)
    timer = memsim.ProgrammingTimer(then=progress)
    model, generator, seconds = program(model_path, chip, seed, device, timer)
    if "conv" in chip.kinds:
        calibrate_inputs(model, tqdm(data.calibration(), desc="calibrate inputs", unit="batch", leave=False))
    if chip.adc.auto_budget_bits is not None:  # the plan's fixed ADCs came with the conversion
        calibration = tqdm(data.calibration(), desc="calibrate ADCs", unit="batch", leave=False)
        memsim.apply_adc_plan(model, chip.adc, feeder(calibration))
    tuned = None
    if folder.tuning is not None:
        steps, lr = folder.tuning.steps, folder.tuning.lr
        losses = tune(model, data.tuning(folder.tuning, seed), steps, lr)
        tuned = {"steps": steps, "lr": lr, "loss_first": losses[0], "loss_last": losses[-1]}
    return PreparedChip(model, generator, seed, seconds, tuned, timer.precycle_seconds)


def program(
    model_path: Path,
    chip: memsim.ChipSpec,
    seed: int,
    device: str | torch.device,
    progress: memsim.ProgressCallback | None = None,
) -> tuple[ConformerCTC, torch.Generator, float]:
    """The trained model at model_path with its quantized layers of the chip's kinds (memsim.KINDS) programmed onto
    a fresh chip (seed); returns the model, the generator its layers read noise from, and the seconds programming
    took."""
    began = time.perf_counter()
    model = load_model(model_path, device)
    generator = torch.Generator(device).manual_seed(seed)
    include = quantized_layers(model, chip.kinds)
    memsim.convert(model, chip, generator=generator, include=include, progress=progress)
    return model, generator, time.perf_counter() - began


def calibrate_inputs(model: ConformerCTC, batches: Iterable[dict]) -> None:
    """memsim.calibrate on the batches: the input range of every crossbar layer whose source did not quantize its
    inputs (a quantization-aware convolution's)."""
    device = next(model.parameters()).device
    memsim.calibrate(model, ((b["feats"].to(device), b["feat_lens"].to(device)) for b in batches))


DISTURBED_BUFFERS = ("r", "disturb_threshold", "read_switched_cells")  # what reads change under read disturb


def prepared_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the buffers that reads change (memsim.disturb) of the crossbar layers with read disturb: the chip as
    prepared, for start_split to return to (empty without read disturb)."""
    return {
        f"{name}.{buffer}": getattr(layer, buffer).clone()
        for name, layer in memristor_layers(model)
        if layer.config.read_disturb
        for buffer in DISTURBED_BUFFERS
    }


def start_split(
    chip: PreparedChip,
    prepared: dict[str, torch.Tensor],
    split: str,
    passes: int,
    batches: Callable[[str], Iterable[dict]],
) -> None:
    """Before a split is decoded on a chip: the chip as prepared (prepared_state: another split's reads undone, so
    that the splits stay independent), then `passes` passes of reads over the split (batches(split) gives a fresh
    pass; read disturb carried from pass to pass, their read noise from a stream of their own), then the split's
    own read-noise stream (reseed)."""
    for name, value in prepared.items():
        chip.model.get_buffer(name).copy_(value)
    if passes:
        reseed(chip.generator, chip.seed, f"{split}/passes")
        for _ in range(passes):
            feeder(batches(split))(chip.model)
    reseed(chip.generator, chip.seed, split)


def read_switches(model: nn.Module, split: str = "") -> dict[str, int]:
    """{"read_switched_cells": the cells reads have switched} over the crossbar layers with read disturb, for the
    score.json of a split decoded on the chip (decode_outputs' after_split); empty without read disturb."""
    layers = [layer for _, layer in memristor_layers(model) if layer.config.read_disturb]
    return {"read_switched_cells": sum(int(layer.read_switched_cells) for layer in layers)} if layers else {}


def reseed(generator: torch.Generator, seed: int, split: str) -> None:
    """Set the read noise of the chip programmed with `seed` to the start of `split`'s own stream."""
    generator.manual_seed(int.from_bytes(hashlib.sha256(f"{seed}/{split}".encode()).digest()[:7], "little"))


def feeder(batches: Iterable[dict], count: int | None = None) -> Callable[[torch.nn.Module], None]:
    """A run(model) for memsim's measuring tools: the model, in eval mode, on the batches (the first `count`
    of them, if given; features as decode_split reads them)."""

    def run(model: torch.nn.Module) -> None:
        device = next(model.parameters()).device
        model.eval()
        for batch in itertools.islice(batches, count):
            model(batch["feats"].to(device), batch["feat_lens"].to(device))

    return run


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


def layer_errors(chip: ConformerCTC, model_path: Path, batches: Iterable[dict], count: int | None) -> list[dict]:
    """memsim.layer_errors of the chip against the digital model at model_path, over the batches (the first
    `count`, if given): where the chip's error arises, layer by layer."""
    digital = load_model(model_path, next(chip.parameters()).device)
    return memsim.layer_errors(chip, digital, feeder(batches, count))


@dataclasses.dataclass
class ChipSummary:
    """What a chip folder's summary.json holds (summarize makes it; read() reads it, and nothing else does).
    A summary made before one of its parts existed reads that part as None or empty."""

    crossbar: memsim.CrossbarConfig  # instance 0's configuration
    layers: list[dict]  # memsim.summary's rows per crossbar layer: cells, tiles, planes, adc, ...
    total: dict  # memsim.summary's total row
    layer_errors: list[dict]  # memsim.layer_errors' rows per layer, and a last one named "mean"
    adc_conversions_per_second_of_audio: int | None
    program_seconds: float | None  # instance 0's programming in all
    precycle_seconds: float | None  # the part of program_seconds spent pre-cycling
    levels: dict | None  # memsim.level_statistics of multi-level cells
    tuning: dict | None  # chip-in-the-loop tuning: steps, lr, first and last loss
    energy: dict | None  # costs, vectors_per_second_of_audio, per_second_of_audio_uj, layers

    @classmethod
    def read(cls, path: Path) -> "ChipSummary":
        values = read_json(path)
        try:
            known = {f.name for f in dataclasses.fields(memsim.CrossbarConfig)}
            return cls(
                crossbar=memsim.CrossbarConfig(**{k: v for k, v in values["config"].items() if k in known}),
                layers=values["layers"],
                total=values["total"],
                layer_errors=values.get("layer_errors") or [],
                adc_conversions_per_second_of_audio=values.get("adc_conversions_per_second_of_audio"),
                program_seconds=values.get("program_seconds"),
                precycle_seconds=values.get("precycle_seconds"),
                levels=values.get("levels"),
                tuning=values.get("tuning"),
                energy=values.get("energy"),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise CorruptFile(f"{path}: not a chip summary ({type(error).__name__}: {error})") from None

    @property
    def mean_layer_error(self) -> dict | None:
        """The layer errors' "mean" row: relative error, gain and residual averaged over the layers."""
        return next((row for row in self.layer_errors if row["layer"] == "mean"), None)

    @property
    def read_disturb_pct(self) -> float | None:
        return self.total.get("read_disturb_pct")

    @property
    def adcs(self) -> list[tuple[int | None, int | None]]:
        """Each crossbar layer's ADC (precision bits, range bits)."""
        return [(row["adc"][0], row["adc"][1]) for row in self.layers if "adc" in row]

    @property
    def energy_per_second(self) -> dict[str, float | None]:
        """Microjoules per second of audio by part (crossbar, dac, adc, accumulate, chip, digital); {} if unpriced."""
        return self.energy["per_second_of_audio_uj"] if self.energy else {}


def summarize(chip: PreparedChip, config: memsim.CrossbarConfig, model_path: Path, batches: Iterable[dict]) -> dict:
    """What a chip folder's summary.json holds (ChipSummary reads it), measured on a prepared chip: memsim.summary's
    totals and layers (each with its ADC), the configuration, ADC conversions and the energy estimate
    (memsim.measure_energy's rows, with the costs they assume) per second of audio, the layer errors against the
    digital model at model_path, for multi-level cells memsim.level_statistics, what chip-in-the-loop tuning did,
    and how long programming took (pre-cycling apart). Errors and energy over `batches` (a list: read twice)."""
    model = chip.model
    errors = layer_errors(model, model_path, batches, None)
    energy = memsim.measure_energy(model, feeder(batches))
    rows = memsim.summary(model)
    reads = reads_per_second(model)
    return {
        "config": dict(vars(config)),
        "layers": rows[:-1],
        "total": rows[-1],
        "adc_conversions_per_second_of_audio": round(
            sum(row["adc_conversions"] * reads[row["layer"]] for row in rows[:-1])
        ),
        "program_seconds": round(chip.program_seconds, 2),
        "precycle_seconds": round(chip.precycle_seconds, 2),
        "layer_errors": errors,
        "levels": memsim.level_statistics(model),
        "tuning": chip.tuning,
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
    """An energy_meter that counts the vectors a crossbar layer reads, and nothing else (it is called once per
    read pulse: a bit-serial input's vector is several)."""

    def __init__(self):
        self.vectors = 0.0

    def __call__(self, v: torch.Tensor, layer: memsim.MemristorLinear) -> None:
        self.vectors += v.shape[0] / memsim.crossbar.reads_per_vector(layer.config)


def reads_per_second(model: ConformerCTC) -> dict[str, float]:
    """Input vectors each crossbar layer reads per second of audio, counted over one utterance of PROBE_SECONDS
    (zero features): one per encoder frame for a linear layer or a depthwise convolution, one per output
    position for a frontend convolution (many per frame), one per frame and direction for an LSTM's gates."""
    run = one_utterance(PROBE_SECONDS, model.cfg.n_mels, model_device(model))
    counters = run_instrumented(model, run, "energy_meter", _ReadCounter)
    return {name: counter.vectors / PROBE_SECONDS for name, counter in counters.items()}
