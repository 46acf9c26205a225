"""CTC decoding and scoring of a split.

A decoder maps log-probabilities [B, T, V] and output lengths [B] to one hypothesis (words joined by
spaces) per utterance. Two methods:
- `greedy`: the best path (argmax per frame, repeats collapsed, blanks dropped), on the model's device.
- `beam`: flashlight's lexicon beam search (torchaudio's CTCDecoder, on the CPU): only words of the
  lexicon come out, so a spelling slip becomes the nearest word the acoustics allow; an optional KenLM
  n-gram (`decode.lm`) scores the words. The lexicon is the training vocabulary, plus the words of
  `decode.lexicon` if set (e.g. TED-LIUM's TEDLIUM.152k.dic), each spelled in the tokenizer's units.
"""

import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, cast

import torch
from flashlight.lib.text.decoder import CriterionType, LexiconDecoderOptions, ZeroLM
from flashlight.lib.text.decoder.kenlm import KenLM
from flashlight.lib.text.dictionary import Dictionary, create_word_dict
from torch import nn
from torch.utils.data import DataLoader
from torchaudio.models.decoder import CTCDecoder
from tqdm import tqdm

from asr import batch_memory
from asr.data.dataset import SegmentDataset
from asr.data.features import FeatureSettings
from asr.data.loader import DataFiles, unaugmented_loader
from asr.data.tedlium import SPLITS, normalize_words
from asr.errors import CorruptFile, UserError
from asr.files import file_identity, read_json, write_jsonl, write_text
from asr.records import Job
from asr.scoring import HEADER, Score, align, error_statistics, total
from asr.tokenizer import BLANK_ID, UNK, UNK_ID, Tokenizer

log = logging.getLogger(__name__)

Decoder = Callable[[torch.Tensor, torch.Tensor], list[str]]
METHODS = ("greedy", "beam")
HYPS_FILE, SCORE_FILE, ERRORS_FILE = "hyps.jsonl", "score.json", "errors.txt"


@dataclass(frozen=True)
class DecodeScore:
    """What a decode output's score.json holds: the split's Score and how fast it was decoded. Scores made
    before the speed was recorded read as None there."""

    split: str
    method: str
    score: Score
    audio_seconds: float | None = None
    decode_seconds: float | None = None  # the model and every decoder of its run together
    real_time_factor: float | None = None
    batch_seconds: float | None = None  # padded seconds of audio per batch
    bytes_per_second: float | None = None  # with decode.memory_fraction: the peak memory per second of audio
    free_bytes: float | None = None  # with decode.memory_fraction: the free memory it was sized against
    # a chip with read disturb: the cells reads had switched by the end of the split (memsim.disturb)
    read_switched_cells: float | None = None  # a count, typed as the other optional fields

    def to_json(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "score"}
        return {**{k: v for k, v in values.items() if v is not None}, **self.score.to_dict()}

    @classmethod
    def read(cls, path: str | Path) -> "DecodeScore":
        """The score.json at path; a CorruptFile error names a file that does not hold one."""
        values = read_json(path)
        try:
            known = {f.name for f in fields(cls)} - {"score"}
            return cls(score=Score.from_dict(values), **{k: v for k, v in values.items() if k in known})
        except (KeyError, TypeError) as error:
            raise CorruptFile(f"{path}: not a decode's score (no {error})") from None


@dataclass
class DecodeSettings:
    """What the `decode` settings hold (configs/decode/default.yaml)."""

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    splits: list[str] = field(default_factory=lambda: ["dev", "test"])
    batch_seconds: float = 200  # padded seconds of audio per batch
    # instead of batch_seconds: the padded seconds that fit in this fraction of the free memory, measured per model
    # and split (asr/batch_memory.py); None: batch_seconds
    memory_fraction: float | None = None
    beam_size: int = 100
    lexicon: str | None = None  # a word list (first field per line, e.g. TEDLIUM.152k.dic) added to the training words
    lm: str | None = None  # a KenLM n-gram (ARPA or binary) over words; None: no language model
    lm_weight: float = 1.0  # with lm only: tune on dev
    word_score: float = 0.0  # added per word: above 0 favours more words, below 0 fewer

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"decode.methods must be a non-empty list of {list(METHODS)}, got {list(self.methods)}")
        if not self.splits or any(s not in SPLITS for s in self.splits):
            raise ValueError(f"decode.splits must be a non-empty list of {list(SPLITS)}, got {list(self.splits)}")
        if self.batch_seconds <= 0:
            raise ValueError(f"decode.batch_seconds must be > 0, got {self.batch_seconds}")
        if self.memory_fraction is not None and not 0 < self.memory_fraction <= 1:
            raise ValueError(f"decode.memory_fraction must be a fraction in (0, 1], got {self.memory_fraction}")
        if self.beam_size < 1:
            raise ValueError(f"decode.beam_size must be >= 1, got {self.beam_size}")
        for name in ("lexicon", "lm"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"decode.{name}: no such file: {path}")

    def method_settings(self, method: str) -> dict:
        """Exactly what the results of one method depend on (besides the model and the split): batching
        changes the padding and so, by rounding, the outputs; the beam's settings only the beam's. Batches sized
        from memory depend on the machine: their identity holds the fraction, their score.json the seconds."""
        settings: dict[str, Any] = {"batch_seconds": self.batch_seconds}
        if self.memory_fraction is not None:
            settings = {"memory_fraction": self.memory_fraction}
        if method == "beam":
            settings |= {
                "beam_size": self.beam_size,
                "word_score": self.word_score,
                "lexicon": file_identity(self.lexicon) if self.lexicon else None,
                "lm": file_identity(self.lm) if self.lm else None,
            }
            if self.lm:
                settings["lm_weight"] = self.lm_weight
        return settings


def greedy(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = BLANK_ID) -> list[list[int]]:
    """Unit ids of the best path of each utterance; frames at or past its length are ignored.

    Vectorized over the batch and frames; the ids come to the host in one transfer per batch.
    """
    best = log_probs.argmax(-1)  # [B, T]
    previous = torch.cat([best.new_full((best.size(0), 1), blank), best[:, :-1]], dim=1)
    frames = torch.arange(best.size(1), device=best.device)
    keep = (best != blank) & (best != previous) & (frames < lengths.to(best.device)[:, None])
    return [row[row >= 0].tolist() for row in torch.where(keep, best, -1).cpu()]


class GreedyDecoder:
    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode(ids) for ids in greedy(log_probs, lengths)]


class LexiconBeamDecoder:
    """Beam search over the words of `lexicon` (word -> its units), with an optional KenLM file `lm`.

    `units[i]` names unit id i; id 0 is the blank. Sentencepiece units carry the word boundary (a word's
    spelling starts with `▁`), so no silence unit separates words: the blank stands in for it.

    Flashlight lets a word's last unit repeat over frames only if that unit is the silence unit (its
    lexicons end words with `|`). So each word is also spelled with a trailing blank: the search stays in
    the word through the repeats and completes it on the blank after them. A repeat followed directly by
    the next word's first unit still costs the blank's score on the repeated frames.

    The decoder is assembled from its parts rather than with `ctc_decoder`, whose lexicon file reader
    drops the spelling of the word `<unk>`, a word TED-LIUM's transcripts use.

    Reproducibility: flashlight orders hypotheses of equal score by their memory addresses, so which of
    them a full beam keeps changes from run to run. Such exact ties arise on every path that ends a word:
    the hypothesis that completes the word at its last unit and the one still inside it (it may yet
    complete it on a blank, or go on to a longer word) have the same score. TIE_BREAK is added to the word
    score to order them the same way every time: the one still inside the word first. It is 1e-6 of a nat
    per word, far below any acoustic score difference.
    """

    TIE_BREAK = -1e-6

    def __init__(
        self,
        units: Sequence[str],
        lexicon: Mapping[str, Sequence[str]],
        beam_size: int = DecodeSettings.beam_size,
        lm: str | Path | None = None,
        lm_weight: float = DecodeSettings.lm_weight,
        word_score: float = DecodeSettings.word_score,
    ):
        if not lexicon:
            raise UserError("the lexicon for beam search is empty")
        if lm and not Path(lm).is_file():
            raise UserError(f"decode.lm: no such file: {lm}")
        blank = units[BLANK_ID]
        spellings = {word: [list(spelling), [*spelling, blank]] for word, spelling in lexicon.items()}
        spellings.setdefault(UNK, [])  # the word dictionary's fallback entry, even when no word <unk> exists
        words = create_word_dict(spellings)
        options = LexiconDecoderOptions(
            beam_size=beam_size,
            beam_size_token=len(units),
            beam_threshold=50.0,
            lm_weight=lm_weight,
            word_score=word_score + self.TIE_BREAK,
            unk_score=float("-inf"),
            sil_score=0.0,
            log_add=False,
            criterion_type=CriterionType.CTC,
        )
        self.decoder = CTCDecoder(
            nbest=1,
            lexicon=spellings,
            word_dict=words,
            tokens_dict=Dictionary(list(units)),
            lm=KenLM(str(lm), words) if lm else ZeroLM(),
            decoder_options=options,
            blank_token=blank,
            sil_token=blank,
            unk_word=UNK,
        )

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        results = self.decoder(log_probs.float().cpu().contiguous(), lengths.cpu())
        return [" ".join(best[0].words) if best else "" for best in results]


def units(tokenizer: Tokenizer) -> list[str]:
    """The name of every unit id (sentencepiece's pieces)."""
    return [tokenizer.sp.id_to_piece(i) for i in range(tokenizer.vocab_size)]


def spell(tokenizer: Tokenizer, words: Iterable[str]) -> dict[str, list[str]]:
    """Each word's units, as the tokenizer writes the word inside a transcript (so `<unk>` is one unit).
    Words with characters the units cannot spell are left out: the model could never output them."""
    names, lexicon, left_out = units(tokenizer), {}, 0
    for word in sorted(set(words)):
        ids = tokenizer.encode(word)
        if ids and (word == UNK or UNK_ID not in ids):
            lexicon[word] = [names[i] for i in ids]
        else:
            left_out += 1
    if left_out:
        log.warning("lexicon: %d words the tokenizer cannot spell are left out", left_out)
    return lexicon


def vocabulary(train_records: Iterable[dict], lexicon: str | None = None) -> set[str]:
    """The training transcripts' words, plus those of `lexicon`: a file whose lines start with a word
    (further fields, e.g. a pronunciation, are ignored). Its words get the transcripts' normalization
    (variants `word(2)` merged, lower case); split-off pieces such as `'s` are skipped, since transcripts
    join them to the word before."""
    words = {w for r in train_records for w in r["text"].split()}
    if lexicon:
        path = Path(lexicon)
        if not path.is_file():
            raise UserError(f"decode.lexicon: no such file: {path}")
        first = (line.split(maxsplit=1)[:1] for line in path.read_text(encoding="utf-8").splitlines())
        words |= {w for w in map(normalize_words, first) if w and not w.startswith("'")}
    return words


def build_decoders(
    tokenizer: Tokenizer, words: set[str], settings: DecodeSettings, methods: Sequence[str] | None = None
) -> dict[str, Decoder]:
    """Decoders by method name (default: settings.methods); `words` is the beam search's vocabulary."""
    methods = list(settings.methods if methods is None else methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown decoding method(s) {unknown}; known: {list(METHODS)}")
    decoders: dict[str, Decoder] = {}
    for method in methods:
        if method == "greedy":
            decoders[method] = GreedyDecoder(tokenizer)
        else:
            decoders[method] = LexiconBeamDecoder(
                units(tokenizer),
                spell(tokenizer, words),
                settings.beam_size,
                settings.lm,
                settings.lm_weight,
                settings.word_score,
            )
    return decoders


def model_device(model: nn.Module) -> torch.device:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def decode_split(
    model: nn.Module, loader: DataLoader, decoders: Mapping[str, Decoder], out_dirs: Mapping[str, str | Path]
) -> dict[str, Score]:
    """Recognize every batch of `loader` (untokenized, unaugmented batches of one split) with `model`
    (anything called as ConformerCTC: features, lengths -> logits, output lengths) in eval mode, and decode
    the outputs once with every decoder. Writes, atomically, into out_dirs[method]: hyps.jsonl (id, ref,
    hyp, words, corr, sub, del, ins per utterance, manifest order) and errors.txt (scoring.error_statistics).
    Returns the Score by method."""
    device, was_training = model_device(model), model.training
    dataset = cast(SegmentDataset, loader.dataset)
    refs: dict[str, str] = {}
    hyps: dict[str, dict[str, str]] = {method: {} for method in decoders}
    model.eval()
    with torch.inference_mode(), tqdm(total=len(dataset), desc="decode", unit="utt") as bar:
        for batch in loader:
            logits, lengths = model(batch["feats"].to(device), batch["feat_lens"].to(device))
            log_probs = logits.float().log_softmax(-1)
            refs.update(zip(batch["ids"], batch["texts"], strict=True))
            for method, decoder in decoders.items():
                hyps[method].update(zip(batch["ids"], decoder(log_probs, lengths), strict=True))
            bar.update(len(batch["ids"]))
    model.train(was_training)
    ids = [r["id"] for r in dataset.records]
    scores = {}
    for method, by_id in hyps.items():
        alignments = align([refs[i] for i in ids], [by_id[i] for i in ids])
        out = Path(out_dirs[method])
        write_jsonl(
            out / HYPS_FILE,
            (
                {"id": i, "ref": refs[i], "hyp": by_id[i], **a.score.counts()}
                for i, a in zip(ids, alignments, strict=True)
            ),
        )
        write_text(out / ERRORS_FILE, error_statistics(ids, alignments))
        scores[method] = total(a.score for a in alignments)
    return scores


@dataclass(frozen=True)
class Decoding:
    """What decoding a trained model's outputs reads: the prepared data, its features, the decode settings, and
    the loader processes."""

    files: DataFiles
    features: FeatureSettings
    settings: DecodeSettings
    num_workers: int = 0


def split_batches(decoding: Decoding, split: str, batch_seconds: float) -> DataLoader:
    """The untokenized, unaugmented batches of one split, as decoding reads them."""
    return unaugmented_loader(decoding.files, split, decoding.features, batch_seconds, decoding.num_workers)


def decode_outputs(
    model: nn.Module,
    jobs: list[Job],
    decoding: Decoding,
    before_split: Callable[[str], object] | None = None,
    after_split: Callable[[str], dict] | None = None,
) -> None:
    """Decode the splits and methods of `jobs` (one model's decode outputs) and commit each with its score.json;
    before_split(split), if given, runs before each split is decoded (a chip returns to its prepared state and
    reseeds its read noise there); after_split(split), if given, returns more fields of the split's score.json
    (DecodeScore's)."""
    files, settings = decoding.files, decoding.settings
    methods = sorted({j.output.settings["method"] for j in jobs})
    words = vocabulary(files.records("train"), settings.lexicon) if "beam" in methods else set()
    decoders = build_decoders(Tokenizer(files.tokenizer), words, settings, methods)
    by_split = defaultdict(list)
    for job in jobs:
        by_split[job.output.settings["split"]].append(job)
    rows = []
    for split, split_jobs in by_split.items():
        batching = _batching(decoding, model, files.records(split))  # before the reseed: the probe reads the chip too
        if before_split is not None:
            before_split(split)
        loader = split_batches(decoding, split, batching["batch_seconds"])
        chosen = {j.output.settings["method"]: j for j in split_jobs}
        began = time.perf_counter()
        folders = {method: job.path for method, job in chosen.items()}
        scores = decode_split(model, loader, {method: decoders[method] for method in chosen}, folders)
        speed = _speed(time.perf_counter() - began, loader)
        log.info("%s: %.1f s of audio decoded in %.1f s, real-time factor %.3f", split, *speed.values())
        extra = after_split(split) if after_split is not None else {}
        for method, job in chosen.items():
            score = DecodeScore(split, method, scores[method], **speed, **batching, **extra)
            job.commit({SCORE_FILE: score.to_json()})
            rows.append(scores[method].row(job.output.relpath))
    log.info("WER:\n%s", "\n".join([HEADER, *rows]))


def _speed(seconds: float, loader: DataLoader) -> dict[str, float]:
    """Audio seconds, decoding seconds (the model and every decoder of the run together) and their ratio."""
    audio = sum(record["duration"] for record in cast(SegmentDataset, loader.dataset).records)
    return {"audio_seconds": round(audio, 2), "decode_seconds": round(seconds, 2), "real_time_factor": seconds / audio}


def _batching(decoding: Decoding, model: nn.Module, records: list[dict]) -> dict:
    """The padded seconds per decoding batch of a split: decode.batch_seconds, or with decode.memory_fraction, what
    fits in that fraction of the free memory for this model and the split's longest utterance."""
    fraction = decoding.settings.memory_fraction
    if fraction is None:
        return {"batch_seconds": decoding.settings.batch_seconds}
    longest = max(r["duration"] for r in records)
    seconds, sizing = batch_memory.batch_seconds(
        model, longest, decoding.features.num_mel_bins, model_device(model), fraction
    )
    log.info(
        "decoding batches of %.0f s: %.1f MiB per second of audio, %.1f GiB free, fraction %g",
        seconds,
        sizing["bytes_per_second"] / 2**20,
        sizing["free_bytes"] / 2**30,
        fraction,
    )
    return sizing
