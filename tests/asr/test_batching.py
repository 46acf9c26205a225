import random

import pytest
import torch

from asr import settings
from asr.data.batching import BucketBatchSampler
from asr.data.loader import split_loader
from asr.pipeline import graph, runner
from asr.tokenizer import Tokenizer

DURATIONS = [random.Random(0).uniform(0.5, 20.0) for _ in range(500)]


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_every_segment_once_within_the_budget(shuffle):
    sampler = BucketBatchSampler(DURATIONS, max_seconds=60, shuffle=shuffle, seed=3)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(DURATIONS)))
    assert all(len(b) * max(DURATIONS[i] for i in b) <= 60 for b in batches)
    assert len(sampler) == len(batches)


def test_bucketing_keeps_padding_small():
    batches = list(BucketBatchSampler(DURATIONS, max_seconds=60, shuffle=True, seed=0))
    padded = sum(len(b) * max(DURATIONS[i] for i in b) for b in batches)
    assert sum(DURATIONS) / padded > 0.85  # random batches of this budget waste about half


def test_shuffled_batches_depend_on_seed_and_epoch_only():
    a = BucketBatchSampler(DURATIONS, max_seconds=60, shuffle=True, seed=1)
    b = BucketBatchSampler(DURATIONS, max_seconds=60, shuffle=True, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first


def test_a_segment_longer_than_the_budget_is_a_batch_of_its_own():
    assert list(BucketBatchSampler([1.0, 50.0, 2.0], max_seconds=10)) == [[0, 2], [1]]


def test_loader_gives_padded_feature_and_token_batches(fake_corpus, tmp_path, make_cfg):
    cfg = make_cfg(
        "+experiment=tedlium2",
        f"data.corpus_dir={fake_corpus}",
        f"work_dir={tmp_path}",
        "loader.max_seconds=4",
        "loader.num_workers=2",
        "stages=[prepare,tokenizer,cmvn]",
    )
    runner.run(cfg)
    s = settings.load(cfg)
    files = graph.data_files(s)
    tok = Tokenizer(files.tokenizer)
    torch.manual_seed(0)

    def batches(split: str, train: bool) -> list[dict]:
        return list(split_loader(files, split, s.features, max_seconds=4, num_workers=2, seed=0, train=train))

    for train in (True, False):
        assert sum(len(b["ids"]) for b in batches("train", train)) == 3
        for b in batches("train", train):
            n = len(b["ids"])
            assert b["feats"].shape == (n, int(b["feat_lens"].max()), 80)
            assert b["tokens"].shape == (n, int(b["token_lens"].max()))
            assert [tok.decode(t[:k].tolist()) for t, k in zip(b["tokens"], b["token_lens"], strict=True)] == b["texts"]
    dev = batches("dev", False)
    assert sorted(i for b in dev for i in b["ids"]) == ["TalkB_2012-0000100-0000300", "TalkB_2012-0000300-0000400"]
