import pytest

from asr import tokenizer

TEXTS = [
    "it's the quiet camera near the river",
    "we don't know <unk> yet",
    "they're going to build a robot",
    "in nineteen ninety four she found the old bridge",
] * 20


@pytest.mark.parametrize("model_type,vocab_size", [("char", 100), ("bpe", 60), ("unigram", 40)])
def test_round_trip_keeps_text_and_unk(tmp_path, model_type, vocab_size):
    tok = tokenizer.train(TEXTS, tmp_path / "sp.model", model_type, vocab_size, num_threads=2)
    reloaded = tokenizer.Tokenizer(tmp_path / "sp.model")
    for text in set(TEXTS) | {"<unk> the robot <unk>"}:
        ids = reloaded.encode(text)
        assert reloaded.decode(ids) == text
        assert ids.count(tokenizer.UNK_ID) == text.split().count("<unk>")  # <unk> is one unit
        assert tokenizer.BLANK_ID not in ids
    assert tok.vocab_size <= vocab_size


def test_blank_is_skipped_when_decoding(tmp_path):
    tok = tokenizer.train(TEXTS, tmp_path / "sp.model", "char", 100, num_threads=1)
    ids = tok.encode("a robot")
    with_blanks = [tokenizer.BLANK_ID] + [i for id_ in ids for i in (id_, tokenizer.BLANK_ID)]
    assert tok.decode(with_blanks) == "a robot"
