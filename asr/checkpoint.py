"""Training checkpoints on disk: atomic writes, discovery by step, pruning, weight averaging, and the
trained model rebuilt from a checkpoint.

A run's directory holds `ckpt-<step>.pt` (written every `checkpoint_every` steps, for resuming inside an
epoch) and `ckpt-<step>-epoch-<n>.pt` (the end of the n-th epoch; when a step limit stops the run inside
an epoch, its last checkpoint ends that partial epoch). `final.pt` averages epoch ends only, so the
average does not depend on how often the run checkpointed. A crash mid-write never leaves a truncated
checkpoint: every file is written to a temporary name and renamed (asr.files.atomic_path).

Every checkpoint holds only tensors and plain Python values, so all are loaded with torch.load's
`weights_only=True`: a checkpoint from elsewhere cannot run code when it is loaded.
"""

import re
from pathlib import Path

import torch

from asr.files import atomic_path
from asr.model import ConformerCTC, ModelConfig
from asr.quant import QuantConfig, quantize

_NAME = re.compile(r"ckpt-(\d+)(?:-epoch-(\d+))?\.pt")


def path_for(directory: Path, step: int, epoch_end: int | None = None) -> Path:
    """The checkpoint of `step`; `epoch_end` n marks it as the end of the n-th epoch."""
    suffix = "" if epoch_end is None else f"-epoch-{epoch_end:04d}"
    return Path(directory) / f"ckpt-{step:08d}{suffix}.pt"


def save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load(path: str | Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def _parsed(directory: Path) -> list[tuple[int, bool, Path]]:
    found = [(m, p) for p in Path(directory).glob("ckpt-*.pt") if (m := _NAME.fullmatch(p.name))]
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
    states = [load(p)["model"] for p in paths]
    averaged = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            averaged[key] = sum(s[key].double() for s in states).div(len(states)).to(last.dtype)
        else:
            averaged[key] = last
    return averaged


def load_model(path: str | Path, device: str | torch.device = "cpu") -> ConformerCTC:
    """Rebuild a trained model (float or quantization-aware) from a checkpoint that training wrote: its
    `meta` holds the model and quantization configs, `model` the weights."""
    state = load(path)
    model = ConformerCTC(ModelConfig(**state["meta"]["model"]))
    quantize(model, QuantConfig(**state["meta"]["quant"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval()
