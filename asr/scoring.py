"""Word error counts (jiwer alignments) and ESPnet-style result rows.

TED-LIUM practice, followed here: words are the whitespace-separated tokens of the normalized transcripts
(asr.data.tedlium.normalize_words), and `<unk>` is an ordinary word on both sides. A reference `<unk>`
counts in Wrd; a hypothesis `<unk>` against it is correct, anything else against it an error.
"""
import json
from dataclasses import dataclass, fields
from pathlib import Path

import jiwer

HEADER = "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|\n|---|---|---|---|---|---|---|---|"


@dataclass(frozen=True)
class Score:
    """Counts over `snt` utterances of `words` reference words; percentages are of `words`."""

    snt: int = 0
    words: int = 0
    corr: int = 0
    sub: int = 0
    del_: int = 0  # deletions ("del" is a Python keyword; "del" in files)
    ins: int = 0

    def __add__(self, other: "Score") -> "Score":
        return Score(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def errors(self) -> int:
        return self.sub + self.del_ + self.ins

    @property
    def err(self) -> float:
        """Word error rate in %; an empty reference with insertions scores inf (as 1/0 errors)."""
        return 100.0 * self.errors / self.words if self.words else (float("inf") if self.errors else 0.0)

    def percent(self, count: int) -> float:
        return 100.0 * count / self.words if self.words else 0.0

    def row(self, dataset: str) -> str:
        """`|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|` with one-decimal percentages, as ESPnet's RESULTS.md."""
        rates = [self.percent(c) for c in (self.corr, self.sub, self.del_, self.ins)] + [self.err]
        return f"|{dataset}|{self.snt}|{self.words}|" + "|".join(f"{r:.1f}" for r in rates) + "|"

    def counts(self) -> dict:
        """The word counts under their file names: words, corr, sub, del, ins."""
        return {f.name.rstrip("_"): getattr(self, f.name) for f in fields(self) if f.name != "snt"}

    def to_dict(self) -> dict:
        """What score.json holds: snt, the word counts, and `err` in %."""
        return {"snt": self.snt, **self.counts(), "err": round(self.err, 4)}

    @classmethod
    def from_dict(cls, d: dict) -> "Score":
        return cls(**{f.name: d[f.name.rstrip("_")] for f in fields(cls)})


def score_utterances(refs: list[str], hyps: list[str]) -> list[Score]:
    """One Score per (reference, hypothesis) pair, from a single jiwer alignment of all of them."""
    if not refs:
        return []
    aligned = jiwer.process_words(refs, hyps)
    scores = []
    for ref_words, chunks in zip(aligned.references, aligned.alignments):
        counts = {"equal": 0, "substitute": 0, "delete": 0, "insert": 0}
        for c in chunks:
            counts[c.type] += c.hyp_end_idx - c.hyp_start_idx if c.type == "insert" else c.ref_end_idx - c.ref_start_idx
        scores.append(Score(1, len(ref_words), counts["equal"], counts["substitute"], counts["delete"], counts["insert"]))
    return scores


def total(scores) -> Score:
    return sum(scores, Score())


def read_score(path: str | Path) -> Score:
    return Score.from_dict(json.loads(Path(path).read_text()))
