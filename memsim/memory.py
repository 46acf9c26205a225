"""Peak tensor memory of a block of code, on any device: what a read costs, and what sizes a decoding batch."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storage alive at once during a block, counting what the block allocates (the
    tensors it was given excluded). Device-agnostic: it watches every operation's outputs, not an allocator."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for tensor in pytree.tree_leaves(result):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key not in self.seen and storage.nbytes():
                    self.seen.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, storage.nbytes())
        return result

    def _free(self, key: int, nbytes: int) -> None:
        self.seen.discard(key)
        self.live -= nbytes


def peak_bytes(fn: Callable[[], object]) -> int:
    """The peak bytes of tensor storage fn() allocates and holds at once."""
    with PeakTensorMemory() as tracker:
        fn()
    return tracker.peak
