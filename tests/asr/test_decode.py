import json

import pytest
import torch
from torch import nn

from asr import decode, settings, tokenizer
from asr.data.loader import split_loader
from asr.decode import (
    DecodeScore,
    DecodeSettings,
    LexiconBeamDecoder,
    build_decoders,
    decode_split,
    greedy,
    spell,
    vocabulary,
)
from asr.errors import UserError
from asr.files import read_jsonl
from asr.pipeline import graph, runner
from asr.scoring import HEADER, Score, align, error_statistics, score_utterances, total

UNITS = ["<blank>", "<unk>", "▁", "c", "a", "t", "s", "o", "d", "g"]
LEXICON = {"cat": ["▁", "c", "a", "t"], "cot": ["▁", "c", "o", "t"], "dog": ["▁", "d", "o", "g"]}
TEXTS = ["it's the quiet camera near the river", "we don't know <unk> yet", "they're going to build a robot"] * 20
# A bigram KenLM (log10 probabilities) that strongly prefers "cot" to "cat".
ARPA = """\\data\\
ngram 1=5
ngram 2=1

\\1-grams:
-1.0\t<s>\t0
-1.0\t</s>
-99\t<unk>
-3.0\tcat\t0
-0.2\tcot\t0

\\2-grams:
-0.1\t<s> cot

\\end\\
"""


def emissions(frames: list[tuple[str, ...]]) -> torch.Tensor:
    """Log-probabilities [1, T, V]: a frame naming one unit gives it all the mass, naming two 0.55 and 0.45."""
    rows = []
    for names in frames:
        p = torch.full((len(UNITS),), 1e-4)
        for name, share in zip(names, (1.0,) if len(names) == 1 else (0.55, 0.45), strict=True):
            p[UNITS.index(name)] = share
        rows.append((p / p.sum()).log())
    return torch.stack(rows)[None]


def one_hot(ids: list[int], vocab: int) -> torch.Tensor:
    """Log-probabilities [1, T, V] that put (almost) all mass on the given unit per frame."""
    return torch.nn.functional.one_hot(torch.tensor(ids), vocab).float().mul(20).log_softmax(-1)[None]


def length(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor([x.size(1)])


def test_greedy_collapses_repeats_drops_blanks_and_stops_at_each_length(device):
    frames = torch.tensor([[2, 2, 0, 3, 3, 0, 3, 4, 4, 0], [0, 5, 5, 5, 0, 0, 6, 6, 7, 7]], device=device)
    log_probs = torch.nn.functional.one_hot(frames, 8).float().log_softmax(-1)
    assert greedy(log_probs, torch.tensor([10, 7], device=device)) == [[2, 3, 3, 4], [5, 6]]
    assert greedy(log_probs[:, :0], torch.tensor([0, 0], device=device)) == [[], []]


def test_lexicon_beam_search_corrects_a_misspelling_that_greedy_makes():
    # "▁ c a s|t - ▁ d o g": greedy reads "cas", the lexicon only knows cat, cot and dog.
    x = emissions([("▁",), ("c",), ("<blank>",), ("a",), ("s", "t"), ("<blank>",), ("▁",), ("d",), ("o",), ("g",)])
    assert "".join(UNITS[i] for i in greedy(x, length(x))[0]) == "▁cas▁dog"
    beam = LexiconBeamDecoder(UNITS, LEXICON, beam_size=10)
    assert beam(x, length(x)) == ["cat dog"]
    assert beam(torch.cat([x, x]), torch.tensor([10, 6])) == ["cat dog", "cat"]  # the second stops after "cas"


def test_beam_search_gives_the_same_words_whatever_the_memory_layout():
    # Flashlight breaks score ties by memory address; with random emissions and a small beam, fresh decoders
    # among other allocations gave 2 to 5 different results for these emissions before words got TIE_BREAK.
    lexicon = {**LEXICON, "cats": ["▁", "c", "a", "t", "s"], "a": ["▁", "a"], "at": ["▁", "a", "t"]}
    x = (torch.randn(2, 40, len(UNITS), generator=torch.Generator().manual_seed(34)) * 1.5).log_softmax(-1)
    results, allocations = set(), []
    for size in range(12):
        allocations.append([bytearray(1000 * size + 7 * i) for i in range(3 * size)])
        results.add(tuple(LexiconBeamDecoder(UNITS, lexicon, beam_size=3)(x, torch.tensor([40, 31]))))
    assert len(results) == 1


def test_language_model_decides_what_the_acoustics_leave_open(tmp_path):
    x = emissions([("▁",), ("c",), ("a", "o"), ("t",), ("<blank>",)])
    (tmp_path / "lm.arpa").write_text(ARPA)
    assert LexiconBeamDecoder(UNITS, LEXICON)(x, length(x)) == ["cat"]
    assert LexiconBeamDecoder(UNITS, LEXICON, lm=tmp_path / "lm.arpa", lm_weight=1.0)(x, length(x)) == ["cot"]
    with pytest.raises(UserError, match="decode.lm: no such file: .*missing.arpa"):
        LexiconBeamDecoder(UNITS, LEXICON, lm=tmp_path / "missing.arpa")


@pytest.mark.parametrize("model_type,vocab_size", [("char", 100), ("bpe", 60)])
def test_beam_search_over_spelled_words_returns_clean_sentences_unchanged(tmp_path, model_type, vocab_size):
    tok = tokenizer.train(TEXTS, tmp_path / "sp.model", model_type, vocab_size, num_threads=1)
    lexicon = spell(tok, {w for t in TEXTS for w in t.split()} | {"naïve"})
    assert lexicon["<unk>"] == ["<unk>"] and "naïve" not in lexicon  # ï is no unit: the word cannot come out
    assert all(spelling[0].startswith("▁") for word, spelling in lexicon.items() if word != "<unk>")
    beam = LexiconBeamDecoder(decode.units(tok), lexicon)
    for text in set(TEXTS):
        ids = [i for u in tok.encode(text) for i in (tokenizer.BLANK_ID, u, u)] + [tokenizer.BLANK_ID]
        x = one_hot(ids, tok.vocab_size)
        assert beam(x, length(x)) == [text]


def test_word_error_counts_and_espnet_row():
    refs = ["the cat sat on the mat", "a <unk> dog", "hello", ""]
    hyps = ["the cat sat on mat", "a <unk> dog barked", "yellow", "uh"]
    utterances = score_utterances(refs, hyps)
    assert [(s.words, s.corr, s.sub, s.del_, s.ins, s.snt_err) for s in utterances] == [
        (6, 5, 0, 1, 0, 1),
        (3, 3, 0, 0, 1, 1),
        (1, 0, 1, 0, 0, 1),
        (0, 0, 0, 0, 1, 1),
    ]
    score = total(utterances) + total(score_utterances(["ok"], ["ok"]))
    assert score == Score(snt=5, words=11, corr=9, sub=1, del_=1, ins=2, snt_err=4)
    assert score.err == pytest.approx(400 / 11) and score.sentence_err == 80.0
    assert HEADER.splitlines()[0] == "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|"
    assert score.row("dev") == "|dev|5|11|81.8|9.1|9.1|18.2|36.4|80.0|"
    assert score.to_dict() == {
        "snt": 5,
        "snt_err": 4,
        "words": 11,
        "corr": 9,
        "sub": 1,
        "del": 1,
        "ins": 2,
        "err": 36.3636,
        "sentence_err": 80.0,
    }
    assert Score.from_dict(score.to_dict()) == score
    assert score_utterances([], []) == [] and total([]).err == 0.0


def test_error_statistics_count_substitutions_deletions_insertions_and_align_each_utterance():
    ids, refs, hyps = ["u1", "u2", "u3"], ["the cat sat", "a dog", "ok"], ["the cap sat down", "dog", "ok"]
    text = error_statistics(ids, align(refs, hyps))
    assert text.startswith("%WER 50.00 [ 3 / 6, 1 ins, 1 del, 1 sub ]\n%SER 66.67 [ 2 / 3 ]")
    assert "     1  cat -> cap\n" in text and "     1  a\n" in text and "     1  down\n" in text
    assert "u1: the (cat->cap) sat (*->down)\n" in text and "u2: (a->*) dog\n" in text and "u3:" not in text
    assert "cat  0  1  1  0\n" in text and "cap  0  1  0  1\n" in text


def test_vocabulary_adds_the_lexicon_file_normalized(tmp_path):
    train = [{"text": "the cat"}, {"text": "a <unk> cat"}]
    (tmp_path / "words.dic").write_text("Dog D AO G\ndog(2) D AA G\n's Z\n\nbird B ER D\n")
    assert vocabulary(train) == {"the", "cat", "a", "<unk>"}
    assert vocabulary(train, str(tmp_path / "words.dic")) == {"the", "cat", "a", "<unk>", "dog", "bird"}
    with pytest.raises(UserError, match="decode.lexicon: no such file: .*nope.dic"):
        vocabulary(train, str(tmp_path / "nope.dic"))
    tok = tokenizer.train(TEXTS, tmp_path / "sp.model", "char", 100, num_threads=1)
    with pytest.raises(UserError, match=r"unknown decoding method\(s\) \['viterbi'\]"):
        build_decoders(tok, {"the"}, DecodeSettings(), ["viterbi"])


def test_decode_settings_say_what_each_method_depends_on(tmp_path):
    (tmp_path / "lm.arpa").write_text(ARPA)
    settings_ = DecodeSettings(beam_size=7, lm_weight=3.0)
    assert settings_.method_settings("greedy") == {"batch_seconds": 200}
    assert settings_.method_settings("beam") == {
        "batch_seconds": 200,
        "beam_size": 7,
        "word_score": 0.0,
        "lexicon": None,
        "lm": None,
    }  # no LM: its weight does not matter
    with_lm = DecodeSettings(lm=str(tmp_path / "lm.arpa")).method_settings("beam")
    assert with_lm["lm_weight"] == 1.0 and len(with_lm["lm"]["sha256"]) == 64
    with pytest.raises(ValueError, match="decode.beam_size must be >= 1"):
        DecodeSettings(beam_size=0)


class AlwaysBlank(nn.Module):
    """Any module called like ConformerCTC decodes: this one hears nothing, so every word is deleted."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.anchor = nn.Parameter(torch.zeros(()))  # where decode_split finds the device

    def forward(self, feats, lengths):
        logits = torch.zeros(*feats.shape[:2], self.vocab_size, device=feats.device)
        logits[..., tokenizer.BLANK_ID] = 10.0
        return logits, lengths


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_work_overrides, make_cfg):
    """A tiny work dir through prepare, tokenizer, cmvn, a 1-step float model and its decode stage."""
    work = tmp_path_factory.mktemp("work")
    base = [*tiny_work_overrides(work), "train.max_steps=1", "train.average_last=1", "decode.beam_size=8"]
    runner.run(make_cfg(*base, "stages=[prepare,tokenizer,cmvn,train,decode]"))
    return work, base


def test_decode_stage_writes_hypotheses_errors_and_scores_per_system_split_and_method(trained, make_cfg):
    work, base = trained
    cfg = make_cfg(*base, "quant=qat", "stages=[train,decode]")
    runner.run(cfg)
    s = settings.load(cfg)
    files = graph.data_files(s)
    outputs = [d for m in graph.systems(s) for d in graph.decodes(s, m)]
    assert len(outputs) == 8 and {o.folder[0].split("-")[1] for o in outputs} == {"float", "w3a8"}
    for output in outputs:
        folder, split = work / output.relpath, output.settings["split"]
        refs = [r["text"] for r in files.records(split)]
        lines = read_jsonl(folder / "hyps.jsonl")
        assert [line["ref"] for line in lines] == refs
        assert set(lines[0]) == {"id", "ref", "hyp", "words", "corr", "sub", "del", "ins"}
        score = json.loads((folder / "score.json").read_text())
        assert (score["split"], score["method"], score["snt"]) == (split, output.settings["method"], len(refs))
        assert score["provenance"]["identity"] == output.digest and score["provenance"]["made_by"]["torch"]
        assert DecodeScore.read(folder / "score.json").score == total(Score.of_utterance(line) for line in lines)
        assert (folder / "errors.txt").read_text().startswith("%WER")


def test_decode_split_runs_any_ctc_module_and_scores_it_exactly(trained, make_cfg, tmp_path, device):
    work, base = trained
    s = settings.load(make_cfg(*base))
    files = graph.data_files(s)
    tok = tokenizer.Tokenizer(files.tokenizer)
    model = AlwaysBlank(tok.vocab_size).to(device)
    loader = split_loader(files, "dev", s.features, max_seconds=50, num_workers=0, seed=0, train=False, tokenize=False)
    decoders = build_decoders(tok, vocabulary(files.records("train")), s.decode)
    scores = decode_split(model, loader, decoders, {m: tmp_path / m for m in decoders})
    refs = [r["text"] for r in files.records("dev")]
    words = sum(len(ref.split()) for ref in refs)
    for method in ("greedy", "beam"):
        assert scores[method] == Score(snt=len(refs), words=words, del_=words, snt_err=len(refs))
        assert len(read_jsonl(tmp_path / method / "hyps.jsonl")) == len(refs)
    assert model.training  # its mode is given back
