"""How much each crossbar layer of a programmed chip cares about its own weight bits and ADC: the sensitivity
table that memsim.allocate_under_budget allocates per-layer precision from.

For every crossbar layer and every candidate setting (weight bits, ADC precision and range bits), the layer alone
is programmed again at that setting, every other layer as the chip holds it, and the chip's mean per-utterance CTC
loss is measured on held-out batches (dev). Its sensitivity is that loss minus the loss with the layer programmed
again at its own setting, from the same seed: both readings share the layer's programming draws where they can
and the other layers' read noise (reseeded before every reading), so the difference is the setting's, not
another draw's. A weight-bit candidate requantizes the trained layer's weights over the same range
(asr.quant.QuantLinear.at_bits); fine-tuning at the chosen bits comes after the allocation.

Each candidate's energy is the layer's chip energy per second of audio at that setting (memsim.energy.estimate
with the cell power measured while the candidate read the held-out batches, times the vectors the layer reads per
second of audio: asr.chips.reads_per_second), in microjoules, the unit of the chip summary's energy.

Cost: one reading of the held-out batches per layer and candidate, plus one per layer for its own setting.
"""

import dataclasses
import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

import memsim
from asr.checkpoint import load_model
from asr.chips import CalibrationData, ChipFolder, prepare, reads_per_second, reseed
from asr.model import ConformerCTC
from asr.quant import QuantLinear
from asr.train import evaluate
from memsim.convert import memristor_layers

TABLE_FILE = "sensitivity.json"
SPLIT = "dev"  # the held-out split the table is measured on; test is never used for a choice


@dataclasses.dataclass
class SensitivitySettings:
    """The recipe's `sensitivity` settings: the candidates every crossbar layer is measured at (each weight bits
    with each ADC; none: the stage makes nothing) and how much dev audio each reading decodes."""

    weight_bits: list[float] = dataclasses.field(default_factory=list)
    adcs: list[list[int]] = dataclasses.field(default_factory=list)  # [precision bits, range bits] each
    seconds: float = 400.0  # padded seconds of dev audio per reading, in batches spread over the split

    def __post_init__(self):
        if bool(self.weight_bits) != bool(self.adcs):
            raise ValueError("sensitivity.weight_bits and sensitivity.adcs are set together (or neither)")
        for adc in self.adcs:
            if len(adc) != 2:
                raise ValueError(f"sensitivity.adcs holds [precision bits, range bits] pairs, got {adc}")
            memsim.CrossbarConfig().with_adc_bits(*adc)
        for bits in self.weight_bits:
            memsim.CrossbarConfig(weight_bits=bits)
        if self.seconds <= 0:
            raise ValueError(f"sensitivity.seconds must be > 0, got {self.seconds}")

    @property
    def candidates(self) -> list["LayerSetting"]:
        return candidate_grid(self.weight_bits, self.adcs)


@dataclasses.dataclass(frozen=True)
class LayerSetting:
    """What the allocator may choose for one crossbar layer."""

    weight_bits: float
    adc: tuple[int, int]  # (precision bits, range bits)

    @property
    def label(self) -> str:
        return f"w{self.weight_bits:g}-adc{self.adc[0]}.{self.adc[1]}"


def candidate_grid(weight_bits: Sequence[float], adcs: Sequence[Sequence[int]]) -> list[LayerSetting]:
    """Every pairing of the weight bits and the ADCs (each [precision bits, range bits])."""
    return [LayerSetting(float(bits), (int(adc[0]), int(adc[1]))) for bits in weight_bits for adc in adcs]


ALLOCATION_METHODS = ("knapsack",)  # memsim.allocate_under_budget: exact, by a dynamic program


@dataclasses.dataclass
class AllocationSettings:
    """The recipe's `allocation` settings: per-layer weight bits and ADCs chosen from the configured chip's
    sensitivity table (asr.pipeline.allocation) within an energy budget per second of audio, in microjoules
    (budget_uj), or as a fraction of the configured chip's own energy in that table (budget_fraction; 1: the
    same energy). Neither: no allocation."""

    budget_uj: float | None = None
    budget_fraction: float | None = None
    method: str = "knapsack"

    def __post_init__(self):
        if self.budget_uj is not None and self.budget_fraction is not None:
            raise ValueError("allocation.budget_uj and allocation.budget_fraction: set one, not both")
        for name in ("budget_uj", "budget_fraction"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"allocation.{name} must be > 0, got {value}")
        if self.method not in ALLOCATION_METHODS:
            raise ValueError(f"allocation.method must be one of {list(ALLOCATION_METHODS)}, got {self.method!r}")

    @property
    def active(self) -> bool:
        return self.budget_uj is not None or self.budget_fraction is not None

    @property
    def label(self) -> str:
        """What names the allocated system and chip, e.g. alloc1x (the chip's own energy) or alloc250uJ."""
        if self.budget_fraction is not None:
            return f"alloc{self.budget_fraction:g}x"
        return f"alloc{self.budget_uj:g}uJ".replace("e+", "e")


def spread_batches(batches: list[dict], seconds: float, batch_seconds: float) -> list[dict]:
    """Batches of about `seconds` padded audio in all, evenly spread over the split's (length-sorted) batches,
    so that short and long utterances are both read."""
    count = max(1, min(len(batches), round(seconds / batch_seconds)))
    step = len(batches) / count
    return [batches[int((k + 0.5) * step)] for k in range(count)]


def own_setting(layer: memsim.MemristorLinear) -> LayerSetting:
    config = layer.config
    if config.adc_precision_bits is None or config.adc_range_bits is None:
        raise ValueError("a sensitivity table needs a chip whose layers have finite ADCs (memsim.adc_* set)")
    return LayerSetting(float(config.weight_bits), (config.adc_precision_bits, config.adc_range_bits))


def _layer_seed(seed: int, name: str) -> int:
    """The programming seed of layer `name` when it is programmed again: the same for every setting it takes."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:7], "little")


def measure(
    model_path: Path,
    folder: ChipFolder,
    candidates: Sequence[LayerSetting],
    batches: Sequence[dict],
    data: CalibrationData,
    device: str | torch.device,
) -> dict:
    """The sensitivity table of instance 0 of a chip folder, prepared as the recipe scores it (asr.chips.prepare),
    on tokenized held-out batches (a list: read many times): chip_loss, the readings' rows (readings()), the
    candidates, the utterances read and the seconds it took."""
    crossbar = folder.chip_of(0).crossbar
    if crossbar.dac_bits is None:
        raise ValueError("a sensitivity table prices each candidate, so the chip needs a DAC (memsim.dac_bits set)")
    prepared = prepare(model_path, folder, 0, data, device)
    model, generator, seed = prepared.model, prepared.generator, prepared.seed
    digital = load_model(model_path, device)

    def loss() -> float:
        reseed(generator, seed, "sensitivity")
        return evaluate(model, batches, torch.device(device), bf16=False)

    began = time.perf_counter()
    chip_loss = loss()
    rows = readings(model, digital, crossbar, candidates, loss, seed)
    return {
        "chip_loss": chip_loss,
        "candidates": [setting.label for setting in candidates],
        "utterances": sum(len(b["feat_lens"]) for b in batches),
        "seconds": round(time.perf_counter() - began, 1),
        "rows": rows,
    }


def readings(
    chip: ConformerCTC,
    digital: nn.Module,
    crossbar: memsim.CrossbarConfig,
    candidates: Sequence[LayerSetting],
    loss: Callable[[], float],
    seed: int,
) -> list[dict]:
    """One row per crossbar layer of `chip` and setting, the layer's own setting first: the layer alone programmed
    again at the setting (from its `digital` twin, crossbar's settings otherwise), the chip's loss() then, its
    sensitivity (that loss minus the own setting's) and the layer's chip energy per second of audio. Each layer's
    settings are programmed from one seed and read with one noise stream (a weight-bit candidate still programs
    other cells: more planes); the chip holds its own layers again afterwards. A progress bar counts the
    readings."""
    reads = reads_per_second(chip)
    plan = []
    for name, layer in memristor_layers(chip):
        own = own_setting(layer)
        plan.append((name, layer, [own, *(c for c in candidates if c != own)]))
    bar = tqdm(total=sum(len(settings) for *_, settings in plan), desc="sensitivity", unit="reading")
    rows = []
    for name, programmed, settings in plan:
        source = digital.get_submodule(name)
        if not isinstance(source, QuantLinear):
            raise ValueError(f"{name}: sensitivity is measured for quantization-aware linear layers only")
        reference = None
        try:
            for setting in settings:
                layer = _reprogrammed(source, programmed, crossbar, setting, _layer_seed(seed, name))
                meter = memsim.energy.EnergyMeter()
                layer.energy_meter = meter
                chip.set_submodule(name, layer)
                value = loss()
                layer.energy_meter = None
                reference = value if reference is None else reference
                energy = memsim.energy.estimate(layer, float(meter.watts) / meter.reads, memsim.EnergyCosts())
                rows.append(
                    {
                        "layer": name,
                        "weight_bits": setting.weight_bits,
                        "adc": list(setting.adc),
                        "own": setting == settings[0],
                        "loss": value,
                        "sensitivity": value - reference,
                        "energy_uj": energy["chip_pj"] * reads[name] / 1e6,
                    }
                )
                bar.set_postfix(layer=name)
                bar.update(1)
        finally:
            chip.set_submodule(name, programmed)
    bar.close()
    return rows


def _reprogrammed(
    source: QuantLinear,
    programmed: memsim.MemristorLinear,
    crossbar: memsim.CrossbarConfig,
    setting: LayerSetting,
    seed: int,
) -> memsim.MemristorLinear:
    """The trained layer at the setting's weight bits, programmed with the chip's crossbar at the setting from
    `seed`, reading noise from a stream of that seed too, with the programmed layer's bias (tuning may have
    changed it)."""
    device = programmed.r.device
    config = dataclasses.replace(crossbar, weight_bits=setting.weight_bits).with_adc_bits(*setting.adc)
    layer = memsim.MemristorLinear.from_linear(
        source.at_bits(setting.weight_bits), config, torch.Generator(device).manual_seed(seed)
    )
    layer.generator = torch.Generator(device).manual_seed(seed + 1)
    if programmed.bias is not None and layer.bias is not None:
        with torch.no_grad():
            layer.bias.copy_(programmed.bias)
    return layer.to(device).eval()


def own_energy(table: dict) -> float:
    """The measured chip's energy per second of audio in the table: every layer at its own setting."""
    return sum(row["energy_uj"] for row in table["rows"] if row["own"])


def allocation_candidates(table: dict) -> dict[str, list[memsim.Candidate]]:
    """The table's rows as the allocator's candidates per layer (setting: LayerSetting)."""
    out: dict[str, list[memsim.Candidate]] = {}
    for row in table["rows"]:
        setting = LayerSetting(row["weight_bits"], (row["adc"][0], row["adc"][1]))
        out.setdefault(row["layer"], []).append(memsim.Candidate(setting, row["energy_uj"], row["sensitivity"]))
    return out
