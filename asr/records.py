"""Outputs keyed by what made them, and the records that say they are complete and current.

Every stage output lives in `work_dir/<kind>/[<folders>/]<label>-<digest>/`: a readable label and a short
hash of exactly the settings it depends on and the digests of its inputs. Any change of a setting gives a
separate output; coming back to an earlier value finds the earlier one.

Beside the files it made, an output folder holds
- `config.yaml`: its settings and inputs, for people (written when making it starts);
- `started.json`: while it is being made: the run id and the runs of the inputs it is made from;
- `record.json`: written last, once it is complete: identity, settings, the inputs with the run of each
  it was made from, its own run (a fresh id every time it is made), `made_by` (git revision and dirty
  state, versions, device, time), and `files`: the size and SHA-256 of every file it made (listed_files).
  No record, no output.
Beside the folder, `<name>.lock` is the lock a process holds while it makes the output (locked).

An output is current when its record exists, its files are still the ones the record lists, and every
input is current and still the very run it was made from. Making an output again (a forced stage, new
inputs, or files that no longer match) gives it a new run, so everything made from the old run is stale:
the runner makes it again, and the report leaves it out. A record written before records listed their
files gets the list on its first reuse, marked as not verified (`files_listed_on_reuse`).
"""

import dataclasses
import functools
import hashlib
import json
import logging
import os
import platform
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from omegaconf import OmegaConf

from asr.errors import CorruptFile
from asr.files import read_json_if_present, sha256, write_json, write_text

log = logging.getLogger(__name__)

RECORD, STARTED, CONFIG, LOCK_SUFFIX = "record.json", "started.json", "config.yaml", ".lock"
RESUME_PREFIX = "ckpt-"  # files that only serve resuming an unfinished output (asr.checkpoint names its files so)
DIGEST_CHARS = 8
PROJECT = "memristor-asr"


@dataclass(frozen=True, eq=False)
class Output:
    """One output of a stage: what it depends on (its identity) and where it lives."""

    stage: str  # the stage that makes it
    kind: str  # its top-level folder under work_dir
    label: str  # the readable part of its folder name
    settings: dict  # JSON values: exactly the settings it depends on
    inputs: dict[str, "Output"] = field(default_factory=dict)  # role -> the output it is made from
    folder: tuple[str, ...] = ()  # folders between `kind` and its own (e.g. its model's folder name)
    notes: dict = field(default_factory=dict)  # recorded, not part of its identity (e.g. its float baseline)

    @functools.cached_property
    def digest(self) -> str:
        payload = {
            "kind": self.kind,
            "label": self.label,
            "settings": self.settings,
            "inputs": {role: output.digest for role, output in self.inputs.items()},
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:DIGEST_CHARS]

    @property
    def name(self) -> str:
        return f"{self.label}-{self.digest}"

    @property
    def relpath(self) -> str:
        """Its folder relative to work_dir (what records use, so a work_dir can move)."""
        return str(Path(self.kind, *self.folder, self.name))


def listed_files(folder: Path) -> dict[str, dict]:
    """What an output's record lists of its folder: name -> size and SHA-256 of every plain file at its top,
    except the bookkeeping (record, started.json), temporaries (dot files), locks, and files named
    RESUME_PREFIX...: state for resuming an unfinished output, where a finished one is read through its
    results (a training run's checkpoints, where its model is final.pt)."""
    return {
        path.name: {"size": path.stat().st_size, "sha256": sha256(path)}
        for path in sorted(folder.iterdir())
        if path.is_file()
        and path.name not in (RECORD, STARTED)
        and not path.name.startswith(".")
        and not path.name.endswith(LOCK_SUFFIX)
        and not path.name.startswith(RESUME_PREFIX)
    }


def file_differences(folder: Path, listed: dict[str, dict]) -> list[str]:
    """Each listed file that is missing or whose size or content differs from its record, said in words."""
    differences = []
    for name, expected in listed.items():
        path = folder / name
        if not path.is_file():
            differences.append(f"{name} is missing")
        elif (size := path.stat().st_size) != expected["size"]:
            differences.append(f"{name} has {size} bytes, the record lists {expected['size']}")
        elif sha256(path) != expected["sha256"]:
            differences.append(f"{name} has other content than the record lists (SHA-256 differs)")
    return differences


@dataclass(frozen=True)
class InputRun:
    """An input of an output: its folder (relative to work_dir) and the run of it the output was made from."""

    path: str
    run: str | None


@dataclass(frozen=True)
class MadeBy:
    """Where and with what an output was made (environment()), and when it was finished."""

    revision: str | None = None
    dirty: bool | None = None
    project: str | None = None
    torch: str | None = None
    python: str | None = None
    device: str | None = None
    host: str | None = None
    finished: str | None = None


@dataclass
class Record:
    """What an output's record.json holds; written by Job.commit and read by Records, nowhere else."""

    path: str  # the output's folder, relative to work_dir
    stage: str
    kind: str
    label: str
    inputs: dict[str, InputRun]
    identity: str
    settings: dict  # exactly the settings it depends on (asr.pipeline.graph)
    run: str
    made_by: MadeBy
    files: dict[str, dict] | None = None  # name -> size and sha256 (listed_files); None before records had them
    files_listed_on_reuse: str | None = None  # set when the list was added to an older record
    system: str | None = None  # a model's system: float, or its quantization (e.g. w3a8)
    baseline: str | None = None  # a model's float model, which its results are compared with

    @classmethod
    def from_json(cls, values: dict) -> "Record":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(
            **{
                **{k: v for k, v in values.items() if k in known},
                "inputs": {role: InputRun(**used) for role, used in values["inputs"].items()},
                "made_by": MadeBy(**{k: v for k, v in values["made_by"].items() if k in MADE_BY_FIELDS}),
            }
        )

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


MADE_BY_FIELDS = {f.name for f in dataclasses.fields(MadeBy)}


def read_record(path: Path) -> Record | None:
    """The record in an output folder; None if there is none, or if it does not parse (a warning names it)."""
    try:
        values = read_json_if_present(path / RECORD)
        return None if values is None else Record.from_json(values)
    except CorruptFile as error:
        log.warning("%s: the output is taken as missing", error)
    except (AttributeError, KeyError, TypeError) as error:
        log.warning("%s: not a record (%s): the output is taken as missing", path / RECORD, error)
    return None


class Records:
    """The records under one work_dir, read once each: which outputs exist, whose files still match their
    record, and which are current. `writer`: this process may add file lists to records made without them."""

    def __init__(self, root: Path, writer: bool = True):
        self.root, self.writer = Path(root), writer
        self._records: dict[str, Record | None] = {}
        self._current: dict[str, bool] = {}
        self._verified: dict[str, bool] = {}

    def get(self, relpath: str) -> Record | None:
        if relpath not in self._records:
            self._records[relpath] = read_record(self.root / relpath)
        return self._records[relpath]

    def verified(self, relpath: str) -> bool:
        """The output's files are the ones its record lists (each checked once per Records). A mismatch is
        named in a warning. A record without a list gets one now, noted as not verified."""
        if relpath not in self._verified:
            record, folder = self.get(relpath), self.root / relpath
            if record is None:
                self._verified[relpath] = False
            elif record.files is None:
                self._list_files(relpath, record)
                self._verified[relpath] = True
            else:
                differences = file_differences(folder, record.files)
                if differences:
                    log.warning("%s does not match its record: %s", folder, "; ".join(differences))
                self._verified[relpath] = not differences
        return self._verified[relpath]

    def _list_files(self, relpath: str, record: Record) -> None:
        record.files = listed_files(self.root / relpath)
        record.files_listed_on_reuse = "made before records listed their files: listed, not verified"
        if self.writer:
            try:
                write_json(self.root / relpath / RECORD, record.to_json())
            except OSError as error:  # a read-only work dir (a report over someone else's): verified next time
                log.warning("%s: cannot add the file list to its record: %s", self.root / relpath, error)

    def require(self, relpath: str) -> Record:
        """The record of an output that must exist (the plan checked it)."""
        record = self.get(relpath)
        if record is None:
            raise RuntimeError(f"{self.root / relpath} has no record")
        return record

    def current_path(self, relpath: str) -> bool:
        """The output at relpath is complete, and so is every input, each still the run it was made from."""
        if relpath not in self._current:
            record = self.get(relpath)
            self._current[relpath] = (
                record is not None
                and self.verified(relpath)
                and all(
                    (found := self.get(used.path)) is not None
                    and found.run == used.run
                    and self.current_path(used.path)
                    for used in record.inputs.values()
                )
            )
        return self._current[relpath]

    def current(self, output: Output) -> bool:
        record = self.get(output.relpath)
        return record is not None and record.identity == output.digest and self.current_path(output.relpath)


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    """Where and with what outputs are made: git revision and dirty state of the project's checkout (None
    outside one), versions, device. Read once per process (the runner reads it when a run starts, so it
    names the code that was loaded, even if the checkout changes while a long run goes on)."""
    root = Path(__file__).resolve().parents[1]  # the checkout: asr/records.py is one folder down

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    revision = git("rev-parse", "--short=12", "HEAD")
    status = git("status", "--porcelain") if revision else None
    try:
        version = metadata.version(PROJECT)
    except metadata.PackageNotFoundError:
        version = None
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    return {
        "revision": revision,
        "dirty": None if status is None else bool(status),
        "project": version,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "host": platform.node(),
    }


class Job:
    """One output being made by this run: its folder, the input runs it is made from, and its record.

    input_runs: the run of each input (role -> run id); None on a process that writes no records (a
    torchrun rank other than 0, while rank 0 may still be making the inputs). `resumed` is True when an
    earlier attempt at the same output from the same input runs was interrupted (a started.json but no
    record) and the stage is not forced: a trainer may continue from its checkpoints.
    """

    def __init__(self, root: Path, output: Output, input_runs: dict[str, str] | None, forced: bool):
        self.root, self.output, self.writer = Path(root), output, input_runs is not None
        self.path = self.root / output.relpath
        self.committed, self.resumed, self.run = False, False, uuid.uuid4().hex
        self.inputs = {
            role: {"path": used.relpath, "run": (input_runs or {}).get(role)} for role, used in output.inputs.items()
        }
        try:
            started = read_json_if_present(self.path / STARTED)
        except CorruptFile as error:
            log.warning("%s: made afresh, not resumed", error)
            started = None
        if self.writer and not forced and started is not None and not (self.path / RECORD).is_file():
            self.resumed = started["inputs"] == self.inputs
            self.run = started["run"] if self.resumed else self.run

    def input(self, role: str) -> Path:
        """The folder of an input, by role."""
        return self.root / self.output.inputs[role].relpath

    def begin(self) -> None:
        """Mark the output as being made: no record until commit, settings readable in config.yaml."""
        if not self.writer:
            return
        (self.path / RECORD).unlink(missing_ok=True)
        write_json(self.path / STARTED, {"run": self.run, "inputs": self.inputs})
        write_text(
            self.path / CONFIG,
            OmegaConf.to_yaml(
                OmegaConf.create(
                    {"settings": self.output.settings, "inputs": {r: i["path"] for r, i in self.inputs.items()}}
                )
            ),
        )

    def provenance(self) -> dict:
        """What every result file of this output carries: its identity, settings, run, and made_by."""
        return {
            "identity": self.output.digest,
            "settings": self.output.settings,
            "run": self.run,
            "made_by": {**environment(), "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        }

    def commit(self, results: dict[str, dict] | None = None) -> None:
        """The output is complete: write each results file (name -> JSON object, with its provenance added)
        and then the record, which lists every file of the output with its size and SHA-256."""
        self.committed = True
        if not self.writer:
            return
        provenance = self.provenance()
        for name, content in (results or {}).items():
            write_json(self.path / name, {**content, "provenance": provenance})
        record = Record(
            path=self.output.relpath,
            stage=self.output.stage,
            kind=self.output.kind,
            label=self.output.label,
            inputs={role: InputRun(str(used["path"]), used["run"]) for role, used in self.inputs.items()},
            identity=provenance["identity"],
            settings=provenance["settings"],
            run=provenance["run"],
            made_by=MadeBy(**provenance["made_by"]),
            files=listed_files(self.path),
            **self.output.notes,
        )
        write_json(self.path / RECORD, record.to_json())
        (self.path / STARTED).unlink(missing_ok=True)


@contextmanager
def locked(folders: list[Path]) -> Iterator[None]:
    """Hold the lock of each output folder (`<folder>.lock` beside it, an OS file lock that is freed when its
    holder dies) while the block runs. Locks are taken in sorted order, so two processes never wait for each
    other in a cycle; a lock that another process holds is waited for, said on one log line."""
    with ExitStack() as stack:
        for folder in sorted(set(folders)):
            folder.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(folder.with_name(folder.name + LOCK_SUFFIX))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                log.info("%s: another process is making it; waiting for it to finish (lock %s)", folder, lock.lock_file)
                lock.acquire()
            stack.callback(lock.release)
        yield


def rank() -> int:
    """This process's rank under torchrun (0 otherwise): only rank 0 writes records."""
    return int(os.environ.get("RANK", 0))
