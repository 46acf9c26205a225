"""Training checkpoints on disk: atomic writes, discovery by step, pruning, weight averaging, and the
trained model rebuilt from a checkpoint.

A run's directory holds `ckpt-<step>.pt` (written every `checkpoint_every` steps, for resuming inside an
epoch) and `ckpt-<step>-epoch-<n>.pt` (the end of the n-th epoch; when a step limit stops the run inside
an epoch, its last checkpoint ends that partial epoch). `final.pt` averages epoch ends only, so the
average does not depend on how often the run checkpointed. A crash mid-write never leaves a truncated
checkpoint: every file is written to a temporary name and renamed (asr.files.atomic_path).

Every checkpoint holds only tensors and plain Python values, so all are loaded with torch.load's
`weights_only=True`: a checkpoint from elsewhere cannot run code when it is loaded. A file that does not
load (truncated, not a checkpoint, or holding other objects) is a CorruptFile error that names it.
"""

import functools
import logging
import re
from pathlib import Path

import torch

from asr.errors import CorruptFile
from asr.files import atomic_path
from asr.model import ConformerCTC, ModelConfig
from asr.quant import QuantConfig, quantize
from asr.records import RESUME_PREFIX

log = logging.getLogger(__name__)

_NAME = re.compile(rf"{RESUME_PREFIX}(\d+)(?:-epoch-(\d+))?\.pt")
FINAL = "final.pt"  # the averaged weights a finished training run leaves in its directory
UNREADABLE_SUFFIX = ".unreadable"  # a checkpoint that failed to load is renamed aside with this suffix


def path_for(directory: Path, step: int, epoch_end: int | None = None) -> Path:
    """The checkpoint of `step`; `epoch_end` n marks it as the end of the n-th epoch."""
    suffix = "" if epoch_end is None else f"-epoch-{epoch_end:04d}"
    return Path(directory) / f"{RESUME_PREFIX}{step:08d}{suffix}.pt"


def save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load(path: str | Path, map_location="cpu") -> dict:
    """A checkpoint's dict, loaded without running code; CorruptFile names a file that does not load."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch.load fails with many types (zip, pickle, EOF, unpickling refused)
        if "Unsupported global" in str(error):  # torch's weights-only unpickler met a class or function
            raise CorruptFile(
                f"{path}: holds objects other than tensors and plain Python values; it is refused because "
                "loading it could run code. Checkpoints this project writes hold only those."
            ) from None
        reason = _reason(error)
        raise CorruptFile(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {reason}") from None
    if not isinstance(state, dict):
        raise CorruptFile(f"{path}: holds a {type(state).__name__}, not a checkpoint's dict")
    return state


def _reason(error: Exception) -> str:
    """The line of a torch.load error that says what is wrong (its unpickler's, where it names one: the
    lines around it advise loading without weights_only, which this project never does)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "WeightsUnpickler error" in line]
    if named:
        at = lines.index(named[0])
        reason = named[0].split("WeightsUnpickler error:", 1)[1].strip()
        return reason or (lines[at + 1] if at + 1 < len(lines) else named[0])
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint (its `model` entry); CorruptFile names a file without them."""
    state = load(path)
    model = state.get("model")
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise CorruptFile(f"{path}: has no `model` entry of weights (a dict of tensors), as training writes it")
    return model


def newest_readable(directory: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint in the directory that loads, and its state. Each newer one that does not load is
    named in a warning and renamed aside (suffix UNREADABLE_SUFFIX), so no later run tries it again."""
    for path in reversed(checkpoints(directory)):
        try:
            return path, load(path)
        except CorruptFile as error:
            aside = path.with_name(path.name + UNREADABLE_SUFFIX)
            path.rename(aside)
            log.warning("%s; renamed to %s, trying the checkpoint before it", error, aside.name)
    return None


def _parsed(directory: Path) -> list[tuple[int, bool, Path]]:
    found = [(m, p) for p in Path(directory).glob(f"{RESUME_PREFIX}*.pt") if (m := _NAME.fullmatch(p.name))]
    return sorted((int(m.group(1)), m.group(2) is not None, p) for m, p in found)


def checkpoints(directory: Path) -> list[Path]:
    """Every checkpoint in the directory, oldest first (at equal steps, the epoch end last)."""
    return [p for _, _, p in _parsed(directory)]


def epoch_checkpoints(directory: Path) -> list[Path]:
    """The epoch-end checkpoints, oldest first."""
    return [p for _, epoch_end, p in _parsed(directory) if epoch_end]


def prune(directory: Path, keep: int) -> None:
    """Keep the newest `keep` epoch ends, and a mid-epoch checkpoint only if it is the newest of all."""
    parsed = _parsed(directory)
    newest = parsed[-1][2] if parsed else None
    ends = [p for _, epoch_end, p in parsed if epoch_end]
    doomed = ends[:-keep] if keep > 0 else ends
    doomed += [p for _, epoch_end, p in parsed if not epoch_end and p != newest]
    for path in doomed:
        path.unlink()


def average(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the checkpoints' model weights; integer buffers (counters) come from the last."""
    states = [weights(p) for p in paths]
    averaged = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            averaged[key] = (
                functools.reduce(torch.add, (s[key].double() for s in states)).div(len(states)).to(last.dtype)
            )
        else:
            averaged[key] = last
    return averaged


def load_model(path: str | Path, device: str | torch.device = "cpu") -> ConformerCTC:
    """Rebuild a trained model (float or quantization-aware) from a checkpoint that training wrote: its
    `meta` holds the model and quantization configs, `model` the weights."""
    state = load(path)
    try:
        model = ConformerCTC(ModelConfig(**state["meta"]["model"]))
        quantize(model, QuantConfig(**state["meta"]["quant"]))
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CorruptFile(f"{path}: not a trained model of this project ({type(error).__name__}: {error})") from None
    return model.to(device).eval()
