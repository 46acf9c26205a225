"""Atomic file writes (a reader never sees half a file, and a failed run leaves no partial output), JSON reads
that name the file and line they fail on, and content hashes."""

import functools
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from asr.errors import CorruptFile


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


def read_json(path: str | Path) -> Any:
    """The JSON value in a file; a CorruptFile error names the file and line if it is not valid JSON."""
    path = Path(path)
    return _parsed(path, 1, _text(path))


def read_json_if_present(path: str | Path) -> Any:
    """read_json, or None when there is no such file."""
    return read_json(path) if Path(path).is_file() else None


def read_jsonl(path: str | Path) -> list[dict]:
    """One JSON object per line; a CorruptFile error names the file and the line that is not one."""
    path = Path(path)
    lines = _text(path).splitlines()
    values = [_parsed(path, number, line) for number, line in enumerate(lines, 1)]
    bad = next((number for number, value in enumerate(values, 1) if not isinstance(value, dict)), None)
    if bad is not None:
        raise CorruptFile(f"{path}, line {bad}: not a JSON object")
    return values


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError as error:
        raise CorruptFile(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def _parsed(path: Path, first_line: int, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CorruptFile(f"{path}, line {first_line + error.lineno - 1}: not valid JSON ({error.msg})") from None


def file_identity(path: str | Path) -> dict:
    """What a user-supplied file (lexicon, LM, checkpoint) contributes to an output's identity: its path and
    the SHA-256 of its content, so replacing the file in place makes a new output."""
    path = Path(path).resolve()
    return {"path": str(path), "sha256": sha256(path)}


def sha256(path: str | Path) -> str:
    """The SHA-256 of a file's content, hashed once per process while its size and modification time stay."""
    path = Path(path).resolve()
    stat = path.stat()
    return _sha256(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:  # size and mtime: a changed file is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
