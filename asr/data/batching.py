"""Length-bucketed batches bounded by seconds of padded audio, and their collation."""

import random
from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Sampler


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length segments whose padded size, len(batch) * longest, stays <= max_seconds.

    Sorting by duration keeps padding small; with shuffle, durations get a small random jitter before
    sorting (so batch membership varies between epochs) and batch order is shuffled. The batches depend
    only on (seed, epoch): call set_epoch before each epoch. A segment longer than max_seconds forms a
    batch of its own.
    """

    def __init__(
        self, durations: Sequence[float], max_seconds: float, shuffle: bool = False, seed: int = 0, jitter: float = 0.1
    ):
        self.durations, self.max_seconds = list(durations), max_seconds
        self.shuffle, self.seed, self.jitter, self.epoch = shuffle, seed, jitter, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        if self.shuffle:
            keys = [d * (1 + rng.uniform(-self.jitter, self.jitter)) for d in self.durations]
        else:
            keys = self.durations
        batches: list[list[int]] = []
        batch: list[int] = []
        longest = 0.0
        for i in sorted(range(len(keys)), key=keys.__getitem__):
            new_longest = max(longest, self.durations[i])
            if batch and new_longest * (len(batch) + 1) > self.max_seconds:
                batches.append(batch)
                batch, new_longest = [], self.durations[i]
            batch.append(i)
            longest = new_longest
        if batch:
            batches.append(batch)
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


class EpochTaggedBatches(Sampler[list[tuple[int, int]]]):
    """A batch sampler's batches with every index paired with the epoch, `(index, epoch)`, which is what the
    training dataset seeds an item's augmentation from (asr.data.dataset.SegmentDataset): the draws then
    depend on neither the worker that loads the item nor what it loaded before, so a resumed run draws them
    again exactly (a persistent worker's random state carries across epochs and no checkpoint holds it)."""

    def __init__(self, batch_sampler: BucketBatchSampler):
        self.batch_sampler, self.epoch = batch_sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        epoch = self.epoch
        return ([(index, epoch) for index in batch] for batch in self.batch_sampler)


def collate(items: list[dict]) -> dict:
    """Pad to the longest item: feats [B, T, F] with feat_lens [B], tokens [B, U] (0-padded) with token_lens."""
    return {
        "ids": [it["id"] for it in items],
        "texts": [it["text"] for it in items],
        "feats": pad_sequence([it["feats"] for it in items], batch_first=True),
        "feat_lens": torch.tensor([len(it["feats"]) for it in items]),
        "tokens": pad_sequence([it["tokens"] for it in items], batch_first=True),
        "token_lens": torch.tensor([len(it["tokens"]) for it in items]),
    }
