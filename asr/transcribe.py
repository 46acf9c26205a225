"""Transcribe audio files with a model the recipe trained: digitally, or on a programmed chip.

The model is a folder the train stages made (`work_dir/exp/<name>-<hash>/`): its `final.pt`, and its record,
which names the tokenizer and CMVN it was trained with and the training transcripts (the beam search's
words). Audio is anything soundfile reads (wav, flac, NIST SPHERE): other sample rates are resampled to
16 kHz, several channels averaged. A chip is instance K of a chip folder the memsim stage made for this
model, prepared by the very procedure the recipe scored it with (asr.chips.prepare: seed, pre-cycling,
calibration, ADCs and tuning of instance K); or a fresh chip of memsim.CrossbarConfig's defaults from a seed;
or a file `save_chip` wrote, which must belong to the same model and, if settings are given, to the same
chip folder.
"""

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import torch
import torchaudio.functional as AF

import memsim
from asr import checkpoint, chips
from asr.checkpoint import FINAL, load_model
from asr.data.features import CMVN_FILE, SAMPLE_RATE, FeatureSettings, GlobalCMVN, fbank
from asr.data.loader import DataFiles
from asr.decode import DecodeSettings, build_decoders, vocabulary
from asr.errors import CorruptFile, UserError
from asr.files import atomic_path
from asr.model import ConformerCTC
from asr.quant import quantized_layers
from asr.records import Record, read_record
from asr.tokenizer import TOKENIZER_FILE, Tokenizer

log = logging.getLogger(__name__)

CHIP_FORMAT = "memristor-asr chip 2"  # the `format` entry of a saved chip


def read_audio(path: str | Path) -> torch.Tensor:
    """The file's samples as mono float32 at 16 kHz; a UserError naming the file if it cannot be read."""
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise UserError(f"{path}: cannot read audio: {error}") from None
    wave = torch.from_numpy(samples).mean(dim=1)  # channels averaged
    return wave if rate == SAMPLE_RATE else AF.resample(wave, rate, SAMPLE_RATE)


@dataclass(frozen=True)
class TrainedModel:
    """A model folder of a work dir, with the data files it was trained with."""

    folder: Path
    record: Record
    files: DataFiles

    @classmethod
    def open(cls, folder: str | Path) -> "TrainedModel":
        folder = Path(folder)
        record = read_record(folder)
        if record is None or record.kind != "exp":
            raise UserError(f"{folder} is not a trained model of a work dir (no model record.json there)")
        if not (folder / FINAL).is_file():
            raise UserError(f"{folder}: no {FINAL}: its training has not finished")
        root = folder.parents[len(Path(record.path).parts) - 1]  # the work dir the record's paths start at
        inputs = {role: root / used.path for role, used in record.inputs.items()}
        files = DataFiles(inputs["manifests"], inputs["tokenizer"] / TOKENIZER_FILE, inputs["cmvn"] / CMVN_FILE)
        return cls(folder, record, files)

    def load(self, device: str | torch.device) -> ConformerCTC:
        return load_model(self.folder / FINAL, device)


def chip_folder_settings(trained: TrainedModel, folder: str | Path) -> dict:
    """The settings of a chip folder the memsim stage made for this model (its record's `settings`)."""
    record = read_record(Path(folder))
    if record is None or "crossbar" not in record.settings:
        raise UserError(f"{folder} is not a chip folder of the memsim stage (no chip record.json there)")
    if record.inputs["model"].path != trained.record.path:
        raise UserError(f"{folder} holds chips of {record.inputs['model'].path}, not of {trained.record.path}")
    return record.settings


def quantization(trained: TrainedModel) -> dict:
    """The model's quantization settings; a UserError for the float model, which no chip can hold."""
    quant = trained.record.settings["quant"]
    if quant is None or quant["weight_bits"] is None:
        raise UserError(f"{trained.folder} is the float model: a chip holds a quantized (QAT) model's weights")
    return quant


def default_chip_settings(trained: TrainedModel, seed: int) -> dict:
    """The settings of a chip of memsim's defaults for the model's weight bits (per layer too) and input bits,
    programmed from seed."""
    quant = quantization(trained)
    config = memsim.CrossbarConfig(weight_bits=quant["weight_bits"], dac_bits=quant["input_bits"])
    return {"crossbar": dataclasses.asdict(config), "seed": seed, "layer_bits": quant.get("layer_bits") or {}}


def calibration_data(trained: TrainedModel) -> chips.CalibrationData:
    """The training data the model was trained on, with its features, for preparing a chip as the recipe does."""
    return chips.CalibrationData(trained.files, FeatureSettings.from_dict(trained.record.settings["features"]))


@dataclass(frozen=True)
class Chip:
    """A model on a chip: the chip folder's settings (or a default chip's), the instance, and the prepared chip."""

    settings: dict
    instance: int
    prepared: chips.PreparedChip

    @property
    def folder(self) -> chips.ChipFolder:
        return chips.ChipFolder.from_settings(self.settings)


def program_instance(trained: TrainedModel, settings: dict, instance: int, device: str) -> Chip:
    """Instance `instance` of the chips of `settings`, prepared exactly as the recipe prepared it (chips.prepare)."""
    quantization(trained)
    folder = chips.ChipFolder.from_settings(settings)
    prepared = chips.prepare(trained.folder / FINAL, folder, instance, calibration_data(trained), device)
    log.info("programmed chip instance %d (seed %d) in %.1f s", instance, prepared.seed, prepared.program_seconds)
    return Chip(settings, instance, prepared)


def save_chip(path: str | Path, trained: TrainedModel, chip: Chip) -> None:
    """Write a programmed chip: every cell's state and every tuned parameter, its settings and instance, and each
    crossbar layer's ADC, with the model it belongs to."""
    state = {
        "format": CHIP_FORMAT,
        "model": trained.record.identity,
        "model_path": trained.record.path,
        "chip": chip.settings,
        "instance": chip.instance,
        "seed": chip.prepared.seed,
        "adcs": {name: list(bits) for name, bits in memsim.adc_settings(chip.prepared.model).items()},
        "state_dict": chip.prepared.model.state_dict(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_chip(path: str | Path, trained: TrainedModel, settings: dict | None, device: str) -> Chip:
    """A chip `save_chip` wrote, checked against the model and, if given, a chip folder's settings."""
    try:
        state = checkpoint.load(path, map_location=device)
    except (OSError, CorruptFile) as error:
        detail = str(error).removeprefix(f"{path}: ")
        raise UserError(f"{path}: cannot read a saved chip: {detail}") from None
    if state.get("format") != CHIP_FORMAT:
        raise UserError(f"{path} is not a chip saved by this version of the project ({CHIP_FORMAT}): program it again")
    if state["model"] != trained.record.identity:
        raise UserError(f"{path} holds a chip of {state['model_path']}, not of {trained.record.path}")
    if settings is not None and settings != state["chip"]:
        differ = sorted(k for k in {*settings, *state["chip"]} if settings.get(k) != state["chip"].get(k))
        raise UserError(f"{path} was saved with other chip settings (they differ in {', '.join(differ)})")
    chip = chips.ChipFolder.from_settings(state["chip"]).chip_of(state["instance"])
    model = trained.load(device)
    generator = torch.Generator(device).manual_seed(state["seed"])
    memsim.convert(model, chip, generator=generator, include=quantized_layers(model, chip.kinds), program=False)
    memsim.set_adc(model, {name: (bits[0], bits[1]) for name, bits in state["adcs"].items()})  # automatic ones too
    model.load_state_dict(state["state_dict"])
    prepared = chips.PreparedChip(model.eval(), generator, state["seed"], 0.0, None)
    return Chip(state["chip"], state["instance"], prepared)


def model_on(
    trained: TrainedModel,
    chip: str | None,
    settings_folder: str | Path | None,
    device: str,
    instance: int | None = None,
) -> tuple[ConformerCTC, Chip | None]:
    """The model digitally, or on a chip: instance `instance` of a chip folder (settings_folder), a fresh chip of
    memsim's defaults (chip: a seed), or a saved chip (chip: its file, checked against settings_folder if given)."""
    settings = chip_folder_settings(trained, settings_folder) if settings_folder is not None else None
    if instance is not None:
        if settings is None or chip is not None:
            raise UserError("--instance K programs instance K of the chip folder --chip-settings (and takes no --chip)")
        on = program_instance(trained, settings, instance, device)
    elif chip is None:
        if settings is not None:
            raise UserError("--chip-settings needs --instance K (a chip folder's instance) or --chip FILE")
        return trained.load(device), None
    elif chip.isdigit():
        if settings is not None:
            raise UserError(
                "a chip folder's chips are its instances, each with the seed the recipe gave it: use --instance K "
                "with --chip-settings (a seed in --chip programs a chip of memsim's defaults)"
            )
        on = program_instance(trained, default_chip_settings(trained, int(chip)), 0, device)
    else:
        on = load_chip(chip, trained, settings, device)
    return on.prepared.model, on


@torch.inference_mode()
def transcribe_files(
    model: ConformerCTC,
    trained: TrainedModel,
    audio: list[str | Path],
    method: str = "greedy",
    beam_size: int = DecodeSettings.beam_size,
) -> list[str]:
    """The words `model` hears in each file, with greedy or lexicon beam search decoding."""
    settings = DecodeSettings(methods=[method], beam_size=beam_size)
    words = vocabulary(trained.files.records("train")) if method == "beam" else set()
    decoder = build_decoders(Tokenizer(trained.files.tokenizer), words, settings)[method]
    cmvn = GlobalCMVN.load(trained.files.cmvn)
    device = next(model.parameters()).device
    texts = []
    for path in audio:
        feats = cmvn(fbank(read_audio(path), model.cfg.n_mels))[None].to(device)
        logits, lengths = model(feats, torch.tensor([feats.shape[1]], device=device))
        texts += decoder(logits.float().log_softmax(-1), lengths)
    return texts
