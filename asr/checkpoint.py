"""Training checkpoints on disk: atomic writes, discovery by step, pruning, and weight averaging.

Files are `ckpt-<step>.pt` in one directory; a crash mid-write never leaves a truncated checkpoint
because every file is written to a temporary name and renamed (asr.files.atomic_path).
"""

import re
from pathlib import Path

import torch

from asr.files import atomic_path

_NAME = re.compile(r"ckpt-(\d+)\.pt")


def path_for(directory: Path, step: int) -> Path:
    return Path(directory) / f"ckpt-{step:08d}.pt"


def save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=False)


def checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in the directory, oldest (lowest step) first."""
    found = [(int(m.group(1)), p) for p in Path(directory).glob("ckpt-*.pt") if (m := _NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def prune(directory: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for path in checkpoints(directory)[:-keep] if keep > 0 else []:
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
