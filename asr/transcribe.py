"""Transcribe audio files with a model the recipe trained: digitally, or on a programmed chip.

The model is a folder the train stages made (`work_dir/exp/<name>-<hash>/`): its `final.pt`, and its record,
which names the tokenizer and CMVN it was trained with and the training transcripts (the beam search's
words). Audio is anything soundfile reads (wav, flac, NIST SPHERE): other sample rates are resampled to
16 kHz, several channels averaged. A chip is either programmed fresh from a seed, with the settings of a
chip folder the memsim stage made for this model (or memsim.CrossbarConfig's defaults), or loaded from a
file `save_chip` wrote, which must belong to the same model and, if settings are given, to the same chip.
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
from asr.checkpoint import load_model
from asr.data.features import SAMPLE_RATE, GlobalCMVN, fbank
from asr.data.loader import DataFiles
from asr.decode import DecodeSettings, build_decoders, vocabulary
from asr.errors import CorruptFile, UserError
from asr.files import atomic_path, read_json_if_present
from asr.model import ConformerCTC
from asr.pipeline.graph import CMVN_FILE, TOKENIZER_FILE
from asr.pipeline.outputs import RECORD
from asr.quant import quantized_layers
from asr.tokenizer import Tokenizer
from asr.train import FINAL

log = logging.getLogger(__name__)

CHIP_FORMAT = "memristor-asr chip 1"  # the `format` entry of a saved chip


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
    record: dict
    files: DataFiles

    @classmethod
    def open(cls, folder: str | Path) -> "TrainedModel":
        folder = Path(folder)
        record = read_json_if_present(folder / RECORD)
        if record is None or record.get("kind") != "exp":
            raise UserError(f"{folder} is not a trained model of a work dir (no model record.json there)")
        if not (folder / FINAL).is_file():
            raise UserError(f"{folder}: no {FINAL}: its training has not finished")
        root = folder.parents[len(Path(record["path"]).parts) - 1]  # the work dir the record's paths start at
        inputs = {role: root / used["path"] for role, used in record["inputs"].items()}
        files = DataFiles(inputs["manifests"], inputs["tokenizer"] / TOKENIZER_FILE, inputs["cmvn"] / CMVN_FILE)
        return cls(folder, record, files)

    def load(self, device: str | torch.device) -> ConformerCTC:
        return load_model(self.folder / FINAL, device)


def chip_settings(trained: TrainedModel, folder: str | Path | None) -> memsim.CrossbarConfig:
    """The settings of a chip folder the memsim stage made for this model, or CrossbarConfig's defaults for
    the model's weight and input bits."""
    quant = trained.record["settings"]["quant"]
    if quant is None or quant["weight_bits"] is None:
        raise UserError(f"{trained.folder} is the float model: a chip holds a quantized (QAT) model's weights")
    if folder is None:
        return memsim.CrossbarConfig(weight_bits=quant["weight_bits"], dac_bits=quant["input_bits"])
    record = read_json_if_present(Path(folder) / RECORD)
    if record is None or "crossbar" not in record.get("settings", {}):
        raise UserError(f"{folder} is not a chip folder of the memsim stage (no chip record.json there)")
    if record["inputs"]["model"]["path"] != trained.record["path"]:
        raise UserError(f"{folder} holds chips of {record['inputs']['model']['path']}, not of {trained.record['path']}")
    return memsim.CrossbarConfig(**record["settings"]["crossbar"])


def program_chip(trained: TrainedModel, config: memsim.CrossbarConfig, seed: int, device: str) -> ConformerCTC:
    """The model with its quantized layers programmed onto a fresh chip (seed: the instance)."""
    model, _, seconds = chips.program(trained.folder / FINAL, config, seed, device)
    log.info("programmed chip %d in %.1f s", seed, seconds)
    return model


def save_chip(path: str | Path, trained: TrainedModel, config: memsim.CrossbarConfig, model: ConformerCTC) -> None:
    """Write a programmed chip (every cell's state) with the model and settings it belongs to."""
    state = {
        "format": CHIP_FORMAT,
        "model": trained.record["identity"],
        "model_path": trained.record["path"],
        "crossbar": dataclasses.asdict(config),
        "state_dict": model.state_dict(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_chip(
    path: str | Path, trained: TrainedModel, config: memsim.CrossbarConfig | None, device: str, noise_seed: int = 0
) -> tuple[ConformerCTC, memsim.CrossbarConfig]:
    """A chip `save_chip` wrote and its settings, checked against the model and, if given, the settings."""
    try:
        state = checkpoint.load(path, map_location=device)
    except (OSError, CorruptFile) as error:
        detail = str(error).removeprefix(f"{path}: ")
        raise UserError(f"{path}: cannot read a saved chip: {detail}") from None
    if not isinstance(state, dict) or state.get("format") != CHIP_FORMAT:
        raise UserError(f"{path} is not a chip saved by this project ({CHIP_FORMAT})")
    if state["model"] != trained.record["identity"]:
        raise UserError(f"{path} holds a chip of {state['model_path']}, not of {trained.record['path']}")
    saved = memsim.CrossbarConfig(**state["crossbar"])
    if config is not None and config != saved:
        differ = [f.name for f in dataclasses.fields(saved) if getattr(saved, f.name) != getattr(config, f.name)]
        raise UserError(f"{path} was saved with other chip settings (they differ in {', '.join(differ)})")
    model = trained.load(device)
    generator = torch.Generator(device).manual_seed(noise_seed)
    memsim.convert(model, saved, generator=generator, include=quantized_layers(model), program=False)
    model.load_state_dict(state["state_dict"])
    return model.eval(), saved


def model_on(
    trained: TrainedModel, chip: str | None, settings_folder: str | Path | None, device: str
) -> tuple[ConformerCTC, memsim.CrossbarConfig | None]:
    """The model digitally (chip None), on a fresh chip (chip: a seed), or on a saved chip (chip: its file);
    with the chip's settings."""
    if chip is None:
        if settings_folder is not None:
            raise UserError("chip settings need a chip: a seed or a saved chip")
        return trained.load(device), None
    if chip.isdigit():
        config = chip_settings(trained, settings_folder)
        return program_chip(trained, config, int(chip), device), config
    return load_chip(chip, trained, chip_settings(trained, settings_folder) if settings_folder else None, device)


@torch.inference_mode()
def transcribe_files(
    model: ConformerCTC, trained: TrainedModel, audio: list[str | Path], method: str = "greedy", beam_size: int = 100
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
