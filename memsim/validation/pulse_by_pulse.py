"""Pre-cycled programming the plain way, every pulse computed for every cell by CellArray.apply_voltage: the
reference that crossbar.program's pre-cycling through CellArray.apply_pulses (which computes only for the
cells a pulse switches) must equal in distribution (tests/memsim/test_precycle.py, benchmarks/crossbar.py
--precycle)."""

from __future__ import annotations

import torch

from memsim.config import CrossbarConfig
from memsim.crossbar import (
    PROGRAM_CHUNK,
    Programmed,
    _array_of_cells,
    _precycle_voltages,
    _random_cycles,
    _read_disturbable,
    device_params,
    nominal_r,
)
from memsim.device import CellArray


def program_pulse_by_pulse(
    contents: torch.Tensor, config: CrossbarConfig, generator: torch.Generator | None = None
) -> Programmed:
    """crossbar.program of binary contents [2, in_padded, planes, out] with pre-cycling (config.precycle_pulses
    > 0), by apply_voltage on every cell for every pulse: the same voltages, draws in the same order up to the
    pulses, then random cycling if configured, the pre-cycling pulses, the full RESET, and the SET with its verify
    retries."""
    if config.precycle_pulses == 0 or config.levels_per_cell != 2 or config.device == "ideal":
        raise ValueError("the reference programs pre-cycled binary Synaptogen cells only")
    flat_on = contents.bool().reshape(-1)
    r = torch.empty(flat_on.shape, device=flat_on.device)
    params = device_params(config).to(flat_on.device)
    r_lrs, r_hrs = nominal_r(params)
    r_threshold = (r_lrs + r_hrs) / 2
    precycle = _precycle_voltages(contents.shape, config, generator, flat_on.device)
    assert precycle is not None
    failed = disturbable = 0
    for start in range(0, flat_on.numel(), PROGRAM_CHUNK):
        on = flat_on[start : start + PROGRAM_CHUNK]
        cells = CellArray(
            on.numel(), params=params, generator=generator, device=params.device, stationary=config.stationary_cells
        )
        _random_cycles(cells, config, generator)
        arrays = _array_of_cells(start, on.numel(), contents.shape, config.tile_size, params.device)
        for voltages in precycle:
            cells.apply_voltage(voltages[arrays])
        cells.apply_voltage(config.reset_voltage)
        for attempt in range(config.verify_retries + 1):
            todo = on & (cells.r > r_threshold)
            if attempt > 0 and not bool(todo.any()):
                break
            cells.apply_voltage(torch.where(todo, config.set_voltage + attempt * config.verify_step, 0.0))
        r[start : start + on.numel()] = cells.r
        failed += int((on & (cells.r > r_threshold)).sum())
        disturbable += int(_read_disturbable(on, cells.ur, cells.us, config.v_read))
    return Programmed(r.view(contents.shape), failed, disturbable)
