"""Where every stage keeps its outputs inside `work_dir`, so stages find each other's files."""
from pathlib import Path


class WorkDir:
    """Paths of the files the stages write under one work directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def manifest(self, split: str) -> Path:
        return self.root / "manifests" / f"{split}.jsonl"

    @property
    def corpus_stats(self) -> Path:
        return self.root / "manifests" / "stats.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer" / "sp.model"

    @property
    def cmvn(self) -> Path:
        return self.root / "cmvn.json"

    def decode_dir(self, system: str, split: str) -> Path:
        """Hypotheses and scores of one system (`float`, `w3a8`, ...) on one split, a folder per method."""
        return self.root / "decode" / system / split

    def memsim_dir(self, system: str, chip: str) -> Path:
        """Programming instances of one QAT system on one chip configuration (`<adc>-<noise>`...)."""
        return self.root / "memsim" / system / chip

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def stage_marker(self, stage: str, digest: str) -> Path:
        """The record that `stage` finished with the configuration whose hash is `digest`."""
        return self.root / "stages" / stage / f"{digest}.json"
