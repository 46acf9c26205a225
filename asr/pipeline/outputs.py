"""Outputs keyed by what made them, and the records that say they are complete and current.

Every stage output lives in `work_dir/<kind>/[<folders>/]<label>-<digest>/`: a readable label and a short
hash of exactly the settings it depends on and the digests of its inputs. Any change of a setting gives a
separate output; coming back to an earlier value finds the earlier one.

Beside the files it made, an output folder holds
- `config.yaml`: its settings and inputs, for people (written when making it starts);
- `started.json`: while it is being made: the run id and the runs of the inputs it is made from;
- `record.json`: written last, once it is complete: identity, settings, the inputs with the run of each
  it was made from, its own run (a fresh id every time it is made), and `made_by` (git revision and dirty
  state, versions, device, time). No record, no output.

An output is current when its record exists and every input is current and still the very run it was
made from. Making an output again (a forced stage, or new inputs) gives it a new run, so everything made
from the old run is stale: the runner makes it again, and the report leaves it out.
"""

import functools
import hashlib
import json
import os
import platform
import subprocess
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch
from omegaconf import OmegaConf

from asr.files import write_json, write_text

RECORD, STARTED, CONFIG = "record.json", "started.json", "config.yaml"
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


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


class Records:
    """The records under one work_dir, read once each: which outputs exist and which are current."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._records: dict[str, dict | None] = {}
        self._current: dict[str, bool] = {}

    def get(self, relpath: str) -> dict | None:
        if relpath not in self._records:
            self._records[relpath] = read_json(self.root / relpath / RECORD)
        return self._records[relpath]

    def require(self, relpath: str) -> dict:
        """The record of an output that must exist (the plan checked it)."""
        record = self.get(relpath)
        if record is None:
            raise RuntimeError(f"{self.root / relpath} has no record")
        return record

    def current_path(self, relpath: str) -> bool:
        """The output at relpath is complete, and so is every input, each still the run it was made from."""
        if relpath not in self._current:
            record = self.get(relpath)
            self._current[relpath] = record is not None and all(
                (found := self.get(used["path"])) is not None
                and found["run"] == used["run"]
                and self.current_path(used["path"])
                for used in record["inputs"].values()
            )
        return self._current[relpath]

    def current(self, output: Output) -> bool:
        record = self.get(output.relpath)
        return record is not None and record["identity"] == output.digest and self.current_path(output.relpath)


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    """Where and with what outputs are made: git revision and dirty state of the project's checkout (None
    outside one), versions, device. Read once per process (the runner reads it when a run starts, so it
    names the code that was loaded, even if the checkout changes while a long run goes on)."""
    root = Path(__file__).resolve().parents[2]

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
        started = read_json(self.path / STARTED)
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
        and then the record."""
        self.committed = True
        if not self.writer:
            return
        provenance = self.provenance()
        for name, content in (results or {}).items():
            write_json(self.path / name, {**content, "provenance": provenance})
        write_json(
            self.path / RECORD,
            {
                "path": self.output.relpath,
                "stage": self.output.stage,
                "kind": self.output.kind,
                "label": self.output.label,
                "inputs": self.inputs,
                **self.output.notes,
                **provenance,
            },
        )
        (self.path / STARTED).unlink(missing_ok=True)


def rank() -> int:
    """This process's rank under torchrun (0 otherwise): only rank 0 writes records."""
    return int(os.environ.get("RANK", 0))
