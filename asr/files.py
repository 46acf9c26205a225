"""Atomic file writes: a reader never sees half a file, and a failed run leaves no partial output."""

import functools
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # a plain new file: the umask sets its mode
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table: the header, its rule, then one line per row (cells as str())."""
    lines = ["|" + "|".join(header) + "|", "|" + "---|" * len(header)]
    return "\n".join(lines + ["|" + "|".join(map(str, row)) + "|" for row in rows])


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_jsonl(path: str | Path, records) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def file_identity(path: str | Path) -> dict:
    """What a user-supplied file (lexicon, LM, checkpoint) contributes to an output's identity: its path and
    the SHA-256 of its content, so replacing the file in place makes a new output."""
    path = Path(path).resolve()
    stat = path.stat()
    return {"path": str(path), "sha256": _sha256(path, stat.st_size, stat.st_mtime_ns)}


@functools.lru_cache(maxsize=64)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:  # size and mtime: a changed file is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
