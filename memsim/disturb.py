"""Read disturb: what reads do to the cells they read (CrossbarConfig.read_disturb; off by default).

A read drives each row of an array at its input's voltage, up to +-v_read. Under the Synaptogen model's threshold
switching (memsim.device) a cell not in LRS SETs when a voltage at or below its SET threshold US reaches it (median
-0.669 V, total spread 0.078 V over the 3,000-cycle oracle of docs/device_facts.md), and a cell in LRS partially
RESETs when a voltage above its RESET threshold UR does (median 0.731 V, spread 0.049 V): a read within +-0.6 V
reaches the tail of both. Whether a 10 ns read pulse switches a cell at the threshold measured with programming
pulses is not modelled here (switching time falls steeply with voltage in valence-change cells); this module takes
the programming-pulse thresholds as they are, the pessimistic end.

State: each binary cell keeps r and one threshold (MemristorLinear's `disturb_threshold`, the shape of r, float32):
negative, the SET threshold of a cell not in LRS; positive, the RESET threshold of a cell in LRS. When a read
switches a cell, what its new state needs is drawn then, from the features' marginal distribution
(device.first_cycle_features; the cell's own device parameters and cycle history, which correlate its cycles, are
not kept):
- SET: r jumps to a drawn LRS, and its threshold becomes the UR drawn with it.
- partial RESET at u, the row's strongest positive voltage: r moves along the transition curve from the cell's
  current at its threshold to a drawn next-cycle HRS at Umax (device.partial_reset), and its threshold becomes the
  US drawn with that HRS. The model would also RESET such a cell further at a later read above u; that needs a
  second threshold per cell and is not kept (only a row's new strongest voltage could do it).
Multi-level cells (middle levels have both thresholds) are not modelled.

Granularity: one read call, a batch of input vectors. Each row's strongest negative and positive voltage over the
batch decide what switches, applied after the batch is read (the batch's own outputs see the chip before it). The
reads of a batch are simultaneous in this simulator; in time order a cell switched by an early vector would change
the later vectors' outputs of the same batch, which the batch-size sweep of benchmarks/read_disturb.py measures.

Saturation: with fixed thresholds every cell that can switch does so the first time its row sees its strongest
voltage, within about one pass over the data. Switching draws new thresholds, so later passes switch a few cells
again (a SET cell whose new UR lies below its row's strongest positive voltage RESETs at the next read that reaches
it, into a new cycle with a new US). No cumulative-time (kinetic) model: the thresholds are those of single pulses.
"""

from __future__ import annotations

import torch

from memsim.device import HRS, LRS, UR, US, first_cycle_features, partial_reset, r_of_resistance
from memsim.params import DeviceParams


def programmed_thresholds(
    in_lrs: torch.Tensor, set_threshold: torch.Tensor, reset_threshold: torch.Tensor
) -> torch.Tensor:
    """The disturb threshold of programmed cells: their RESET threshold where in LRS, else their SET threshold."""
    return torch.where(in_lrs, reset_threshold, set_threshold)


def row_bounds(threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of cells [2, rows, planes, out]: the voltage at or below which some cell of the row SETs (the highest
    SET threshold; -inf where none can) and above which some cell RESETs (the lowest RESET threshold; inf)."""
    rows = threshold.transpose(0, 1).flatten(1)
    settable = torch.where(rows < 0, rows, -torch.inf).amax(1)
    resettable = torch.where(rows > 0, rows, torch.inf).amin(1)
    return settable, resettable


def switch(
    r: torch.Tensor,
    threshold: torch.Tensor,
    lowest: torch.Tensor,
    highest: torch.Tensor,
    params: DeviceParams,
    stationary: bool,
    generator: torch.Generator | None = None,
) -> int:
    """Apply one read's disturb to cells r and threshold [2, rows, planes, out] (contiguous, updated in place), whose
    rows saw voltages down to lowest [rows] and up to highest [rows] (0 for rows not read); returns how many cells
    switched. New features are drawn (stationary: of a cycle in the stationary regime) only for the cells that
    switch."""
    flat_r, flat_threshold = r.view(-1), threshold.view(-1)
    shape = (1, -1, 1, 1)
    sets = ((threshold < 0) & (lowest.view(shape) <= threshold)).view(-1)
    resets = ((threshold > 0) & (highest.view(shape) > threshold)).view(-1)
    set_cells, reset_cells = torch.nonzero(sets).squeeze(1), torch.nonzero(resets).squeeze(1)  # disturb may sync
    if set_cells.numel():
        drawn = first_cycle_features(set_cells.numel(), params, (LRS, UR), generator, stationary)
        flat_r.index_copy_(0, set_cells, r_of_resistance(drawn[0], params))
        flat_threshold.index_copy_(0, set_cells, drawn[1])
    if reset_cells.numel():
        drawn = first_cycle_features(reset_cells.numel(), params, (HRS, US), generator, stationary)
        rows = (
            torch.div(reset_cells, threshold.shape[2] * threshold.shape[3], rounding_mode="floor") % threshold.shape[1]
        )
        moved = partial_reset(flat_r[reset_cells], flat_threshold[reset_cells], drawn[0], highest[rows], params)
        flat_r.index_copy_(0, reset_cells, moved)
        flat_threshold.index_copy_(0, reset_cells, drawn[1])
    return set_cells.numel() + reset_cells.numel()
