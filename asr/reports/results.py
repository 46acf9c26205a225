"""Results of one or more work directories, read from the records the decode and memsim stages wrote
(asr.records), never from folder names, and grouped into systems with their references.

Each current decode output is one result: its model, chip and instance, split, method and decoding
settings come from its record and its inputs' records. Results group into systems (a chip's instances
form one group). Every group of a quantized system is compared with references decoded on the same
split with the same decoding settings: the float model of its configuration and, for a chip, the digital
QAT model whose weights it holds. Each relative change has a 95 % confidence interval from a paired
bootstrap over utterances (asr.significance). Outputs whose inputs were made again since, or whose files
no longer match their records, are stale: they are left out, and RESULTS.md says how many. A result whose
files disagree with each other (score.json against its hyps.jsonl) is left out and named with what differs.
"""

import dataclasses
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from asr.decode import HYPS_FILE, SCORE_FILE, DecodeScore, DecodeSettings
from asr.errors import CorruptFile
from asr.files import read_jsonl
from asr.identity import CHIP_DEFAULTS, DEFAULTS, with_defaults
from asr.records import RECORD, Record, Records
from asr.scoring import Score, decode_differences
from asr.significance import Interval, relative_change, relative_change_over_runs, resample_counts

log = logging.getLogger(__name__)

COLUMNS = [
    "system",
    "weight_bits",
    "model",
    "chip",
    "settings",
    "split",
    "method",
    "instance",
    "wer",
    "snt",
    "words",
    "corr",
    "sub",
    "del",
    "ins",
    "snt_err",
    "revision",
    "dirty",
    "path",
]
SYSTEM_ORDER = {"float": 0, "qat": 1, "memsim": 2}
SHOWN_ELSEWHERE = {
    "quant.weight_bits",
    "memsim.weight_bits",
    "decode.method",
    "decode.split",
    "decode.instance",
}  # columns of their own
NOT_LABELS = ("quant.noise_table",)  # measured from the chip settings (shown as quant.noise): too long for a label


@dataclass
class Result:
    """One decode output: one model (on one chip instance, or digital) on one split with one method."""

    root: Path
    path: str  # its folder, relative to root
    system: str  # float | qat | memsim
    model: str  # the model's folder
    model_label: str  # its record's label: architecture and system, e.g. small-w3a8-dw
    baseline: str  # the folder of the float model it is compared with
    weight_bits: float | None
    chip: str | None  # the chip configuration's folder
    chip_label: str  # its record's label (memsim.name)
    instance: int | None
    split: str
    method: str
    settings: dict  # flat dotted keys: model.*, quant.*, train.*, memsim.*, decode.* (what made it)
    score: Score
    revision: str | None
    dirty: bool | None

    @property
    def comparison_key(self) -> tuple:
        """What a reference must share: the split and the decoding settings."""
        decoding = {k: v for k, v in self.settings.items() if k.startswith("decode.") and k != "decode.instance"}
        return self.split, json.dumps(decoding, sort_keys=True)

    @cached_property
    def lines(self) -> list[dict]:
        """Its hyps.jsonl, one dict per utterance in manifest order (read once: checked, then resampled)."""
        return read_jsonl(self.root / self.path / HYPS_FILE)

    def utterances(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Ids, errors and reference words per utterance (hyps.jsonl), in manifest order."""
        lines = self.lines
        return (
            [line["id"] for line in lines],
            np.array([line["sub"] + line["del"] + line["ins"] for line in lines]),
            np.array([line["words"] for line in lines]),
        )


@dataclass
class Group:
    """The results of one system on one split with one decoding setup (a chip's instances together)."""

    members: list[Result]
    label: str = ""  # the settings that tell it apart from the other groups of its kind
    float_reference: "Group | None" = None
    qat_reference: "Group | None" = None
    relative: dict[str, Interval | None] = field(default_factory=dict)  # "float" / "qat" -> interval

    @property
    def first(self) -> Result:
        return self.members[0]

    @property
    def wers(self) -> list[float]:
        return [r.score.err for r in self.members]

    @cached_property
    def errors(self) -> tuple[list[str], np.ndarray]:
        """Utterance ids and errors [instances, utterances]."""
        read = [r.utterances() for r in self.members]
        return read[0][0], np.stack([errors for _, errors, _ in read])

    def sort_key(self) -> tuple:
        r = self.first
        return (r.split, r.method, SYSTEM_ORDER[r.system], r.weight_bits or 0, r.model_label, r.chip_label, self.label)


def _flatten(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, inner, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list) else value
    return out


STALE = "stale"  # why a result is left out: its model or chip was made again since (or its files changed)


def collect(work_dirs: list[Path], manifests: str | None = None) -> tuple[list[Result], dict[str, str]]:
    """Every current decode output under the work directories whose files agree, and the folders of those left
    out with the reason: STALE, or what disagrees (a warning says it too). A result is never made of two
    sources that disagree: its score.json must equal what its hyps.jsonl's utterances give. manifests: only the
    results decoded from that prepared corpus (its folder under work_dir, e.g. manifests/mini-07509ac9)."""
    results, left_out = [], {}
    manifests = None if manifests is None else Path(manifests).as_posix().rstrip("/")
    for root in map(Path, work_dirs):
        records = Records(root)
        for record_path in sorted(root.glob(f"**/{RECORD}")):
            relpath = str(record_path.parent.relative_to(root))
            record = records.get(relpath)
            if record is None or record.stage not in ("decode", "memsim") or "method" not in record.settings:
                continue
            if manifests is not None and not _decoded_from(record, root, manifests):
                continue
            if not records.current_path(relpath):
                left_out[str(root / relpath)] = STALE
                continue
            try:
                result = _result(root, relpath, record, records)
                differences = decode_differences(result.lines, result.score)
            except CorruptFile as error:
                differences = [str(error)]
            if differences:
                left_out[str(root / relpath)] = "; ".join(differences)
                log.warning("%s: left out of the report: %s", root / relpath, left_out[str(root / relpath)])
                continue
            results.append(result)
    return results, left_out


def _decoded_from(record: Record, root: Path, manifests: str) -> bool:
    """Whether a decode record read the prepared corpus `manifests` (relative to root, or absolute)."""
    used = record.inputs.get("manifests")
    return used is not None and manifests in (used.path, (root / used.path).resolve().as_posix())


def _result(root: Path, relpath: str, record: Record, records: Records) -> Result:
    model = records.require(record.inputs["model"].path)
    chip = records.require(record.inputs["chip"].path) if "chip" in record.inputs else None
    decode = record.settings
    quant = model.settings["quant"]  # None: the float model
    settings = _flatten("", {**model.settings, "quant": quant and with_defaults("quant", quant)}, {})
    if chip is not None:
        extra = with_defaults("chip", {k: v for k, v in chip.settings.items() if k != "crossbar"})
        crossbar = {**with_defaults("crossbar", chip.settings["crossbar"]), **extra}
        _flatten("memsim", crossbar, settings)
    _flatten("decode", decode, settings)
    bits = quant["weight_bits"] if quant else None
    system = "memsim" if chip is not None else ("float" if bits is None else "qat")
    return Result(
        root,
        relpath,
        system,
        model.path,
        model.label,
        model.baseline or model.path,
        bits,
        chip.path if chip else None,
        chip.label if chip else "",
        decode.get("instance"),
        decode["split"],
        decode["method"],
        settings,
        DecodeScore.read(root / relpath / SCORE_FILE).score,
        record.made_by.revision,
        record.made_by.dirty,
    )


def group(results: list[Result]) -> list[Group]:
    """Results by (work dir, model, chip, split, decoding settings), labelled, linked to their references,
    with their relative changes."""
    grouped = defaultdict(list)
    for r in results:
        grouped[(str(r.root), r.model, r.chip, *r.comparison_key)].append(r)
    groups = [Group(sorted(members, key=lambda r: r.instance or 0)) for members in grouped.values()]
    _label(groups)
    digital = {(str(g.first.root), g.first.model, *g.first.comparison_key): g for g in groups if g.first.chip is None}
    counts: dict[int, np.ndarray] = {}
    for g in groups:
        r = g.first
        if r.system == "float":
            continue
        g.float_reference = digital.get((str(r.root), r.baseline, *r.comparison_key))
        g.qat_reference = digital.get((str(r.root), r.model, *r.comparison_key)) if r.system == "memsim" else None
        for name, reference in (("float", g.float_reference), ("qat", g.qat_reference)):
            g.relative[name] = _relative(g, reference, counts) if reference is not None else None
    return sorted(groups, key=Group.sort_key)


# Settings at these values name nothing in a label: a row differs from the others in what it sets otherwise.
LABEL_DEFAULTS = _flatten(
    "",
    {
        "quant": DEFAULTS["quant"],
        "memsim": {**DEFAULTS["crossbar"], **CHIP_DEFAULTS},
        "model": DEFAULTS["model"],
        "decode": dataclasses.asdict(DecodeSettings()),
    },
    {},
)


def _label(groups: list[Group]) -> None:
    """Each group's label: its settings that differ within its kind (system, method, model and chip name: the
    model's and the chip's names already tell those of other names apart)."""
    kinds = defaultdict(list)
    for g in groups:
        kinds[g.first.system, g.first.method, g.first.model_label, g.first.chip_label].append(g)
    for members in kinds.values():
        keys = {
            k
            for k in set().union(*(g.first.settings for g in members)) - SHOWN_ELSEWHERE
            if not k.startswith(NOT_LABELS)
        }
        varying = sorted(k for k in keys if len({json.dumps(g.first.settings.get(k)) for g in members}) > 1)
        for g in members:
            values = {k: g.first.settings.get(k) for k in varying}
            g.label = ", ".join(f"{k}={v}" for k, v in values.items() if v is not None and v != LABEL_DEFAULTS.get(k))


def _relative(g: Group, reference: Group, counts: dict) -> Interval | None:
    ids, errors = g.errors
    ref_ids, ref_errors = reference.errors
    if ids != ref_ids:
        return None
    if len(ids) not in counts:  # every comparison on a split sees the same resamples
        counts[len(ids)] = resample_counts(len(ids))
    return relative_change(ref_errors, errors, counts[len(ids)])


SEED = "seed"  # the flat settings key of a model's training seed (qat_train.seed, or the top-level seed)
# what else differs between the seeds of one system: their chips' seeds (asr.settings.RecipeSettings.chip_seed) and
# an allocation's uniform model (each seed's own)
VARY_WITH_SEED = ("memsim.seed", "init_from.")


@dataclass
class OverSeeds:
    """One system (a digital QAT model or a chip configuration) trained with several seeds, on one split with one
    decoding setup: each seed's group with its reference (the float model for QAT, the seed's own QAT model for a
    chip), and the relative change pooled over the seeds (asr.significance.relative_change_over_runs)."""

    groups: list[Group]  # one per seed, in seed order
    references: list[Group]
    label: str  # what tells it apart from other systems of its name, the seed left out
    pooled: Interval  # over seeds and utterances (asr.significance.relative_change_over_runs)
    utterances_only: Interval

    @property
    def first(self) -> Result:
        return self.groups[0].first

    @property
    def seeds(self) -> list:
        return [g.first.settings.get(SEED) for g in self.groups]


def over_seeds(groups: list[Group]) -> list["OverSeeds"]:
    """The systems that several training seeds made, each compared with its references over the seeds. Groups
    join when every setting but the seed agrees and they scored the same utterances (same work dir, split and
    decoding); a join whose seeds repeat, or whose runs cannot be pooled, is left out with a warning."""
    joined: dict[tuple, list[tuple[Group, Group]]] = defaultdict(list)
    for g in groups:
        r = g.first
        reference = g.qat_reference if r.system == "memsim" else g.float_reference
        if r.system == "float" or reference is None or reference.errors[0] != g.errors[0]:
            continue
        kept = {k: v for k, v in r.settings.items() if k != SEED and not k.startswith(VARY_WITH_SEED)}
        rest = json.dumps(kept, sort_keys=True, default=str)
        joined[str(r.root), r.chip_label, rest, tuple(g.errors[0])].append((g, reference))
    out = []
    for pairs in joined.values():
        seeds = [g.first.settings.get(SEED) for g, _ in pairs]
        if len(pairs) < 2:
            continue
        if len(set(seeds)) < len(seeds):
            log.warning("%s: seeds %s repeat; not pooled over seeds", pairs[0][0].first.path, sorted(map(str, seeds)))
            continue
        pairs.sort(key=lambda pair: pair[0].first.settings.get(SEED) or 0)
        members, references = [g for g, _ in pairs], [ref for _, ref in pairs]
        try:
            pooled, utterances_only = relative_change_over_runs(
                [ref.errors[1] for ref in references], [g.errors[1] for g in members]
            )
        except ValueError as error:
            log.warning("%s: not pooled over seeds: %s", members[0].first.path, error)
            continue
        label = ", ".join(
            part for part in members[0].label.split(", ") if part and not part.startswith((f"{SEED}=", *VARY_WITH_SEED))
        )
        out.append(OverSeeds(members, references, label, pooled, utterances_only))
    return sorted(out, key=lambda o: o.groups[0].sort_key())
