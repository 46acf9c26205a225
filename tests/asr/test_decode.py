import json

import pytest
import torch
from torch import nn

from asr import decode, stages, tokenizer
from asr.decode import LexiconBeamDecoder, build_decoders, decode_split, greedy, spell, vocabulary
from asr.errors import UserError
from asr.files import read_jsonl, write_jsonl
from asr.scoring import HEADER, Score, read_score, score_utterances, total
from asr.workdir import WorkDir

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
        for name, share in zip(names, (1.0,) if len(names) == 1 else (0.55, 0.45)):
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
    assert [(s.words, s.corr, s.sub, s.del_, s.ins) for s in utterances] == [
        (6, 5, 0, 1, 0), (3, 3, 0, 0, 1), (1, 0, 1, 0, 0), (0, 0, 0, 0, 1)]
    score = total(utterances)
    assert score == Score(snt=4, words=10, corr=8, sub=1, del_=1, ins=2)
    assert score.err == pytest.approx(40.0)
    assert HEADER.splitlines()[0] == "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|"
    assert score.row("dev") == "|dev|4|10|80.0|10.0|10.0|20.0|40.0|"
    assert score.to_dict() == {"snt": 4, "words": 10, "corr": 8, "sub": 1, "del": 1, "ins": 2, "err": 40.0}
    assert Score.from_dict(score.to_dict()) == score
    assert score_utterances([], []) == [] and total([]).err == 0.0


def test_vocabulary_adds_the_lexicon_file_normalized(tmp_path, make_cfg):
    write_jsonl(WorkDir(tmp_path).manifest("train"), [{"text": "the cat"}, {"text": "a <unk> cat"}])
    (tmp_path / "words.dic").write_text("Dog D AO G\ndog(2) D AA G\n's Z\n\nbird B ER D\n")
    cfg = make_cfg(f"work_dir={tmp_path}")
    assert vocabulary(cfg) == {"the", "cat", "a", "<unk>"}
    cfg = make_cfg(f"work_dir={tmp_path}", f"decode.lexicon={tmp_path / 'words.dic'}")
    assert vocabulary(cfg) == {"the", "cat", "a", "<unk>", "dog", "bird"}
    with pytest.raises(UserError, match="decode.lexicon: no such file: .*nope.dic"):
        vocabulary(make_cfg(f"work_dir={tmp_path}", f"decode.lexicon={tmp_path / 'nope.dic'}"))
    with pytest.raises(UserError, match=r"unknown decoding method\(s\) \['viterbi'\]"):
        build_decoders(cfg, ["viterbi"])


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
def trained(tmp_path_factory, tiny_mini_corpus, tiny_splits, make_cfg):
    """A tiny work dir through prepare, tokenizer, cmvn, a 1-step float model and its decode stage."""
    work = tmp_path_factory.mktemp("work")
    sizes = [f"data.synth.splits.{split}.{key}={value}" for split, spec in tiny_splits.items() for key, value in spec.items()]
    base = [f"work_dir={work}", f"data.synth.cache_dir={tiny_mini_corpus.parents[1]}", *sizes, "model.d_model=32",
            "model.n_layers=1", "model.d_ff=64", "model.n_heads=2", "train.max_steps=1", "train.average_last=1",
            "loader.num_workers=0", "decode.beam_size=8"]
    stages.run(make_cfg(*base, "stages=[prepare,tokenizer,cmvn,train,decode]"))
    return work, base


def test_decode_stage_writes_hypotheses_and_scores_per_system_split_and_method(trained, make_cfg):
    work, base = trained
    stages.run(make_cfg(*base, "quant=qat", "stages=[train,decode]"))
    for system in ("float", "w3a8"):
        for split in ("dev", "test"):
            refs = [r["text"] for r in read_jsonl(WorkDir(work).manifest(split))]
            for method in ("greedy", "beam"):
                folder = WorkDir(work).decode_dir(system, split) / method
                lines = read_jsonl(folder / "hyps.jsonl")
                assert [line["ref"] for line in lines] == refs
                assert set(lines[0]) == {"id", "ref", "hyp", "words", "corr", "sub", "del", "ins"}
                score = json.loads((folder / "score.json").read_text())
                assert set(score) == {"split", "method", "snt", "words", "corr", "sub", "del", "ins", "err"}
                assert (score["split"], score["method"], score["snt"]) == (split, method, len(refs))
                assert read_score(folder / "score.json") == total(Score.from_dict(line | {"snt": 1}) for line in lines)


def test_decode_split_runs_any_ctc_module_and_scores_it_exactly(trained, make_cfg, tmp_path, device):
    work, base = trained
    cfg = make_cfg(*base)
    model = AlwaysBlank(tokenizer.Tokenizer(WorkDir(work).tokenizer).vocab_size).to(device)
    scores = decode_split(model, cfg, "dev", tmp_path)  # both methods, built from cfg
    refs = [r["text"] for r in read_jsonl(WorkDir(work).manifest("dev"))]
    words = sum(len(ref.split()) for ref in refs)
    for method in ("greedy", "beam"):
        assert scores[method] == Score(snt=len(refs), words=words, del_=words)
        assert read_score(tmp_path / method / "score.json").err == 100.0
    assert model.training  # its mode is given back


def test_decode_stage_without_a_trained_model_names_the_missing_checkpoint(tmp_path, make_cfg):
    with pytest.raises(UserError, match=r"no trained model at .*small-float/final.pt"):
        stages.run(make_cfg(f"work_dir={tmp_path}", "stages=[decode]"))
