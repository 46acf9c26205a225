"""How programming reports its progress: events to a callback, and a callback that adds up where the time went.

Programming a model's crossbars takes minutes once the cells are pre-cycled (the paper's protocol), so it reports,
through an optional `progress` callback of memsim.convert and the crossbar programming functions, each pre-cycling
pulse and each layer. memsim depends on no progress-bar package: a caller wraps whichever it likes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class ProgrammingProgress:
    """One step of programming.

    phase "precycle": pre-cycling pulses applied to some of a matrix's cells (crossbar.program; on the CPU a chunk
    of cells takes all its pulses per event, on CUDA every cell one pulse): `done` of `total` pulses, counted in
    whole-matrix pulses, so it grows by a chunk's share of the pulses per event and reaches `total` at the end; an
    LSTM layer pre-cycles one matrix per layer and direction, each from 0. phase "program": a layer of the model
    programmed (memsim.convert): `done` of `total` layers.

    seconds: wall-clock seconds since the previous event of this phase for this matrix (precycle), or the whole
    layer's programming, its pre-cycling included (program). Summed over a run's events of one phase, they give
    the time of that phase (ProgrammingTimer).
    """

    phase: str
    layer: str  # the layer's name in the model (memsim.convert); "" for a matrix programmed on its own
    done: float
    total: int
    seconds: float


ProgressCallback = Callable[[ProgrammingProgress], object]


@dataclasses.dataclass
class ProgrammingTimer:
    """A progress callback that adds up how programming's time splits: `precycle_seconds` from the pre-cycling
    events, `seconds` from memsim.convert's per-layer events (all of programming, pre-cycling included), and
    `other_seconds`, the rest. Forwards every event to `then`, if given (a progress bar, say)."""

    then: ProgressCallback | None = None
    precycle_seconds: float = 0.0
    seconds: float = 0.0

    def __call__(self, event: ProgrammingProgress) -> None:
        if event.phase == "precycle":
            self.precycle_seconds += event.seconds
        else:
            self.seconds += event.seconds
        if self.then is not None:
            self.then(event)

    @property
    def other_seconds(self) -> float:
        return self.seconds - self.precycle_seconds
