"""Word error counts (jiwer alignments), ESPnet-style result rows, and per-word error statistics.

TED-LIUM practice, followed here: words are the whitespace-separated tokens of the normalized transcripts
(asr.data.tedlium.normalize_words), and `<unk>` is an ordinary word on both sides. A reference `<unk>`
counts in Wrd; a hypothesis `<unk>` against it is correct, anything else against it an error.
"""

from collections import Counter
from dataclasses import dataclass, fields

import jiwer

HEADER = "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|\n|---|---|---|---|---|---|---|---|---|"
DELETED = "*"  # the empty side of a deletion or insertion in aligned text


@dataclass(frozen=True)
class Score:
    """Counts over `snt` utterances of `words` reference words; percentages are of `words`, S.Err of `snt`."""

    snt: int = 0
    words: int = 0
    corr: int = 0
    sub: int = 0
    del_: int = 0  # deletions ("del" is a Python keyword; "del" in files)
    ins: int = 0
    snt_err: int = 0  # utterances with at least one error

    def __add__(self, other: "Score") -> "Score":
        return Score(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def errors(self) -> int:
        return self.sub + self.del_ + self.ins

    @property
    def err(self) -> float:
        """Word error rate in %; an empty reference with insertions scores inf (as 1/0 errors)."""
        return 100.0 * self.errors / self.words if self.words else (float("inf") if self.errors else 0.0)

    @property
    def sentence_err(self) -> float:
        """Sentence error rate in %: utterances with any error."""
        return 100.0 * self.snt_err / self.snt if self.snt else 0.0

    def percent(self, count: int) -> float:
        return 100.0 * count / self.words if self.words else 0.0

    def row(self, dataset: str) -> str:
        """`|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|` with one-decimal percentages, as ESPnet's RESULTS.md."""
        rates = [self.percent(c) for c in (self.corr, self.sub, self.del_, self.ins)] + [self.err, self.sentence_err]
        return f"|{dataset}|{self.snt}|{self.words}|" + "|".join(f"{r:.1f}" for r in rates) + "|"

    def counts(self) -> dict:
        """The word counts under their file names: words, corr, sub, del, ins."""
        return {f.name.rstrip("_"): getattr(self, f.name) for f in fields(self) if f.name not in ("snt", "snt_err")}

    def to_dict(self) -> dict:
        """What score.json holds: snt, snt_err, the word counts, `err` and `sentence_err` in %."""
        return {
            "snt": self.snt,
            "snt_err": self.snt_err,
            **self.counts(),
            "err": round(self.err, 4),
            "sentence_err": round(self.sentence_err, 4),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Score":
        return cls(**{f.name: d[f.name.rstrip("_")] for f in fields(cls)})

    @classmethod
    def of_utterance(cls, counts: dict) -> "Score":
        """One utterance's Score from its counts (words, corr, sub, del, ins), as hyps.jsonl holds them."""
        errors = counts["sub"] + counts["del"] + counts["ins"]
        return cls(1, counts["words"], counts["corr"], counts["sub"], counts["del"], counts["ins"], int(errors > 0))


@dataclass(frozen=True)
class Alignment:
    """One utterance scored: its counts and the aligned word pairs (ref, hyp); DELETED marks a missing side."""

    score: Score
    pairs: tuple[tuple[str, str], ...]


def align(refs: list[str], hyps: list[str]) -> list[Alignment]:
    """Each (reference, hypothesis) pair aligned, from a single jiwer alignment of all of them."""
    if not refs:
        return []
    aligned = jiwer.process_words(refs, hyps)
    out = []
    for ref, hyp, chunks in zip(aligned.references, aligned.hypotheses, aligned.alignments, strict=True):
        counts: Counter[str] = Counter()
        pairs: list[tuple[str, str]] = []
        for c in chunks:
            r, h = ref[c.ref_start_idx : c.ref_end_idx], hyp[c.hyp_start_idx : c.hyp_end_idx]
            if c.type == "insert":
                pairs += [(DELETED, w) for w in h]
            elif c.type == "delete":
                pairs += [(w, DELETED) for w in r]
            else:
                pairs += list(zip(r, h, strict=True))
            counts[c.type] += len(h) if c.type == "insert" else len(r)
        errors = counts["substitute"] + counts["delete"] + counts["insert"]
        out.append(
            Alignment(
                Score(
                    1,
                    len(ref),
                    counts["equal"],
                    counts["substitute"],
                    counts["delete"],
                    counts["insert"],
                    int(errors > 0),
                ),
                tuple(pairs),
            )
        )
    return out


def score_utterances(refs: list[str], hyps: list[str]) -> list[Score]:
    """One Score per (reference, hypothesis) pair."""
    return [a.score for a in align(refs, hyps)]


def total(scores) -> Score:
    return sum(scores, Score())


def decode_differences(lines: list[dict], score: Score) -> list[str]:
    """Where one decode's files disagree: each utterance's counts in hyps.jsonl against its reference and
    hypothesis aligned again, and their total against score.json's. Empty when they agree."""
    try:
        refs, hyps = [line["ref"] for line in lines], [line["hyp"] for line in lines]
        stored = [Score.of_utterance(line) for line in lines]
    except (KeyError, TypeError) as error:
        return [f"hyps.jsonl: a line lacks {error}"]
    recounted = score_utterances(refs, hyps)
    differences = [
        f"hyps.jsonl line {number}: counts {_counts(old)}, its ref and hyp aligned again give {_counts(new)}"
        for number, (old, new) in enumerate(zip(stored, recounted, strict=True), 1)
        if old != new
    ]
    if len(differences) > 3:
        differences = differences[:3] + [f"and {len(differences) - 3} more lines"]
    summed = total(recounted)
    if summed != score:
        differences.append(
            f"score.json: WER {score.err:.2f} ({score.errors} errors in {score.words} words), hyps.jsonl's "
            f"utterances give {summed.err:.2f} ({summed.errors} in {summed.words})"
        )
    return differences


def _counts(score: Score) -> str:
    return f"{score.words} words, {score.sub} sub, {score.del_} del, {score.ins} ins"


def error_statistics(ids: list[str], alignments: list[Alignment]) -> str:
    """A text report of where the errors are, in the spirit of Kaldi's and icefall's `errs-*` files: totals,
    substitutions (ref -> hyp), deletions and insertions by frequency, per-word statistics, and every
    utterance with an error, aligned: equal words plain, errors as (ref->hyp)."""
    score = total(a.score for a in alignments)
    subs: Counter[tuple[str, str]] = Counter()
    dels: Counter[str] = Counter()
    inss: Counter[str] = Counter()
    per_word: dict[str, list[int]] = {}
    for a in alignments:
        for ref, hyp in a.pairs:
            if ref == DELETED:
                inss[hyp] += 1
            elif hyp == DELETED:
                dels[ref] += 1
            elif ref != hyp:
                subs[ref, hyp] += 1
            for word, side in ((ref, 0), (hyp, 1)):
                if word != DELETED:
                    stats = per_word.setdefault(word, [0, 0, 0, 0])  # correct, errors, in ref, in hyp
                    stats[2 + side] += 1
            if ref == hyp:
                per_word[ref][0] += 1
            else:
                for word in {ref, hyp} - {DELETED}:
                    per_word[word][1] += 1
    lines = [
        f"%WER {score.err:.2f} [ {score.errors} / {score.words}, {score.ins} ins, {score.del_} del, {score.sub} sub ]",
        f"%SER {score.sentence_err:.2f} [ {score.snt_err} / {score.snt} ]",
        "",
        "SUBSTITUTIONS: count ref -> hyp",
    ]
    lines += [f"{n:6d}  {ref} -> {hyp}" for (ref, hyp), n in _by_count(subs)]
    lines += ["", "DELETIONS: count ref"] + [f"{n:6d}  {word}" for word, n in _by_count(dels)]
    lines += ["", "INSERTIONS: count hyp"] + [f"{n:6d}  {word}" for word, n in _by_count(inss)]
    lines += ["", "PER-WORD STATS: word  correct  errors  in_ref  in_hyp"]
    ranked = sorted(per_word.items(), key=lambda item: (-item[1][1], item[0]))
    lines += [f"{word}  {c}  {e}  {r}  {h}" for word, (c, e, r, h) in ranked if e]
    lines += ["", "UTTERANCES WITH ERRORS: id: aligned words, errors as (ref->hyp)"]
    for utt, a in zip(ids, alignments, strict=True):
        if a.score.errors:
            lines.append(f"{utt}: " + " ".join(ref if ref == hyp else f"({ref}->{hyp})" for ref, hyp in a.pairs))
    return "\n".join(lines) + "\n"


def _by_count(counter: Counter) -> list:
    return sorted(counter.items(), key=lambda item: (-item[1], item[0]))
