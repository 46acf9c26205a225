"""Sentencepiece units for CTC: id 0 is the CTC blank, id 1 is <unk>.

TED-LIUM keeps `<unk>` in its transcripts as a word to be recognized; sentencepiece would otherwise spell
it out as the characters < u n k >, so it is mapped to sentencepiece's own unknown id in both directions.
"""

import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from asr.files import atomic_path

BLANK_ID, UNK_ID = 0, 1
UNK = "<unk>"
MODEL_TYPES = ("char", "bpe", "unigram")
TOKENIZER_FILE = "sp.model"  # the sentencepiece model in a tokenizer output's folder


@dataclass
class TokenizerSettings:
    """What the `tokenizer` settings hold: sentencepiece's model type and (soft) vocabulary size."""

    model_type: str = "char"
    vocab_size: int = 100  # a soft limit: a small corpus gets fewer units
    num_threads: int = 2

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"tokenizer.model_type must be one of {list(MODEL_TYPES)}, got {self.model_type!r}")
        if self.vocab_size < 3:
            raise ValueError(f"tokenizer.vocab_size must be >= 3 (blank, <unk> and a unit), got {self.vocab_size}")
        if self.num_threads < 1:
            raise ValueError(f"tokenizer.num_threads must be >= 1, got {self.num_threads}")


def train(texts: Iterable[str], path: str | Path, model_type: str, vocab_size: int, num_threads: int) -> "Tokenizer":
    """Train on transcripts (`<unk>` words left out) and save the model to `path` atomically.

    vocab_size is a soft limit, so a small corpus gets as many units as it supports instead of an error.
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=(t.replace(UNK, " ") for t in texts),
        model_writer=model,
        model_type=model_type,
        vocab_size=vocab_size,
        num_threads=num_threads,
        hard_vocab_limit=False,
        character_coverage=1.0,
        pad_id=BLANK_ID,
        pad_piece="<blank>",
        unk_id=UNK_ID,
        bos_id=-1,
        eos_id=-1,
        minloglevel=2,
    )
    with atomic_path(path) as tmp:
        tmp.write_bytes(model.getvalue())
    return Tokenizer(path)


class Tokenizer:
    """Text <-> unit ids, with `<unk>` as one unit."""

    def __init__(self, path: str | Path):
        self.sp = spm.SentencePieceProcessor(model_file=str(path))

    @property
    def vocab_size(self) -> int:
        """Number of units including the blank: the size of a CTC output layer."""
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(text.split(UNK)):
            if i:
                ids.append(UNK_ID)
            ids += self.sp.encode(part.strip())
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        parts: list[str] = []
        current: list[int] = []
        for i in ids:
            if i == UNK_ID:
                parts += [self.sp.decode(current), UNK]
                current = []
            elif i != BLANK_ID:
                current.append(i)
        parts.append(self.sp.decode(current))
        return " ".join(p for p in parts if p)
