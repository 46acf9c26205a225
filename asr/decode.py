"""CTC decoding, scoring of a split, and the decode stage.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch
from flashlight.lib.text.decoder import CriterionType, LexiconDecoderOptions, ZeroLM
from flashlight.lib.text.decoder.kenlm import KenLM
from flashlight.lib.text.dictionary import Dictionary, create_word_dict
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchaudio.models.decoder import CTCDecoder
from tqdm import tqdm

from asr.data.loader import make_loader
from asr.data.tedlium import normalize_words
from asr.errors import UserError
from asr.files import read_jsonl, write_json, write_jsonl
from asr.scoring import HEADER, Score, score_utterances, total
from asr.tokenizer import BLANK_ID, UNK, UNK_ID, Tokenizer
from asr.train import load_model
from asr.workdir import WorkDir

log = logging.getLogger(__name__)

Decoder = Callable[[torch.Tensor, torch.Tensor], list[str]]
METHODS = ("greedy", "beam")
HYPS_FILE, SCORE_FILE = "hyps.jsonl", "score.json"


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
    """

    def __init__(self, units: Sequence[str], lexicon: Mapping[str, Sequence[str]], beam_size: int = 50,
                 lm: str | Path | None = None, lm_weight: float = 1.0, word_score: float = 0.0):
        if not lexicon:
            raise UserError("the lexicon for beam search is empty")
        if lm and not Path(lm).is_file():
            raise UserError(f"decode.lm: no such file: {lm}")
        blank = units[BLANK_ID]
        spellings = {word: [list(spelling), [*spelling, blank]] for word, spelling in lexicon.items()}
        spellings.setdefault(UNK, [])  # the word dictionary's fallback entry, even when no word <unk> exists
        words = create_word_dict(spellings)
        options = LexiconDecoderOptions(beam_size=beam_size, beam_size_token=len(units), beam_threshold=50.0,
                                        lm_weight=lm_weight, word_score=word_score, unk_score=float("-inf"),
                                        sil_score=0.0, log_add=False, criterion_type=CriterionType.CTC)
        self.decoder = CTCDecoder(nbest=1, lexicon=spellings, word_dict=words, tokens_dict=Dictionary(list(units)),
                                  lm=KenLM(str(lm), words) if lm else ZeroLM(), decoder_options=options,
                                  blank_token=blank, sil_token=blank, unk_word=UNK)

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


def vocabulary(cfg: DictConfig) -> set[str]:
    """The training transcripts' words, plus those of `decode.lexicon`: a file whose lines start with a
    word (further fields, e.g. a pronunciation, are ignored). Its words get the transcripts' normalization
    (variants `word(2)` merged, lower case); split-off pieces such as `'s` are skipped, since transcripts
    join them to the word before."""
    words = {w for r in read_jsonl(WorkDir(cfg.work_dir).manifest("train")) for w in r["text"].split()}
    if cfg.decode.lexicon:
        path = Path(cfg.decode.lexicon)
        if not path.is_file():
            raise UserError(f"decode.lexicon: no such file: {path}")
        first = (line.split(maxsplit=1)[:1] for line in path.read_text(encoding="utf-8").splitlines())
        words |= {w for w in map(normalize_words, first) if w and not w.startswith("'")}
    return words


def build_decoders(cfg: DictConfig, methods: Sequence[str] | None = None) -> dict[str, Decoder]:
    """Decoders by method name (default: `decode.methods`), from the tokenizer and lexicon in work_dir."""
    methods = list(cfg.decode.methods if methods is None else methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown decoding method(s) {unknown}; known: {list(METHODS)}")
    tokenizer, d = Tokenizer(WorkDir(cfg.work_dir).tokenizer), cfg.decode
    decoders: dict[str, Decoder] = {}
    for method in methods:
        if method == "greedy":
            decoders[method] = GreedyDecoder(tokenizer)
        else:
            decoders[method] = LexiconBeamDecoder(units(tokenizer), spell(tokenizer, vocabulary(cfg)), d.beam_size,
                                                  d.lm, d.lm_weight, d.word_score)
    return decoders


def _device(model: nn.Module) -> torch.device:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def decode_split(model: nn.Module, cfg: DictConfig, split: str, out_dir: str | Path,
                 decoders: Mapping[str, Decoder] | None = None) -> dict[str, Score]:
    """Recognize a split's manifest with `model` (anything called as ConformerCTC: features, lengths ->
    logits, output lengths) in eval mode, without augmentation, and decode the outputs once with every
    decoder (default: build_decoders(cfg)). Writes, atomically, per method:
    out_dir/<method>/hyps.jsonl (id, ref, hyp, words, corr, sub, del, ins per utterance, manifest order)
    and out_dir/<method>/score.json (Score.to_dict() plus split and method). Returns the Score by method.
    """
    decoders = build_decoders(cfg) if decoders is None else decoders
    loader = make_loader(OmegaConf.merge(cfg, {"loader": {"max_seconds": cfg.decode.batch_seconds}}), split,
                         train=False, tokenize=False)
    device, was_training = _device(model), model.training
    refs, hyps = {}, {method: {} for method in decoders}
    model.eval()
    with torch.inference_mode(), tqdm(total=len(loader.dataset), desc=f"decode {split}", unit="utt") as bar:
        for batch in loader:
            logits, lengths = model(batch["feats"].to(device), batch["feat_lens"].to(device))
            log_probs = logits.float().log_softmax(-1)
            refs.update(zip(batch["ids"], batch["texts"]))
            for method, decoder in decoders.items():
                hyps[method].update(zip(batch["ids"], decoder(log_probs, lengths)))
            bar.update(len(batch["ids"]))
    model.train(was_training)
    ids = [r["id"] for r in loader.dataset.records]
    scores = {}
    for method, by_id in hyps.items():
        utterances = score_utterances([refs[i] for i in ids], [by_id[i] for i in ids])
        write_jsonl(Path(out_dir) / method / HYPS_FILE, ({"id": i, "ref": refs[i], "hyp": by_id[i], **s.counts()}
                                                         for i, s in zip(ids, utterances)))
        scores[method] = total(utterances)
        write_json(Path(out_dir) / method / SCORE_FILE, {"split": split, "method": method, **scores[method].to_dict()})
    return scores


def decode(cfg: DictConfig) -> None:
    """The decode stage: the current configuration's trained model (train.exp_dir/final.pt) on every split
    of `decode.splits` with every method of `decode.methods`, into work_dir/decode/<system>/<split>/<method>/;
    the system is quant.name: `float`, or the QAT name such as `w3a8`."""
    path = Path(cfg.train.exp_dir) / "final.pt"
    if not path.is_file():
        raise UserError(f"no trained model at {path}: run the train stage first")
    model = load_model(path, "cuda" if torch.cuda.is_available() else "cpu")
    work, system, decoders = WorkDir(cfg.work_dir), cfg.quant.name, build_decoders(cfg)
    rows = []
    for split in cfg.decode.splits:
        scores = decode_split(model, cfg, split, work.decode_dir(system, split), decoders)
        rows += [score.row(f"{system}/{split}/{method}") for method, score in scores.items()]
    log.info("WER of %s:\n%s", path, "\n".join([HEADER, *rows]))
