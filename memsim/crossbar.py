"""Crossbar tiles: weight mapping onto binary cells, programming, and the exact GEMM read.

A weight matrix [out, in] becomes integers q in +-max_level, whose magnitudes are split into binary bit
planes; each plane is a differential pair of arrays (positive weights in one, negative in the other),
cut into tiles of tile_size rows (inputs) and columns (outputs), zero-padded. A cell storing 1 is SET
to LRS, a cell storing 0 stays in HRS. Programming keeps only the state variable r of each cell.

Reading is linear in r. A cell's chord conductance at voltage v is g(v; r) = base(v) + r delta(v), with
base and delta polynomials in v (from the two boundary I-V curves, which pass through the origin). So
a column current is sum_i v_i g(v_i; r_i) and, since Johnson + shot noise has variance
BW (4 kB T + 2 q |v|) g, so is the column's noise variance: each a matrix product over the tile's rows.
One Gaussian per column output is then exact in distribution (the cells' noise is independent); no
per-cell current is ever built.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch

from memsim import ir_drop
from memsim.config import CrossbarConfig
from memsim.device import HRS, LRS, UR, US, CellArray, first_cycle_features, r_of_resistance
from memsim.disturb import programmed_thresholds
from memsim.noise import ReadNoise, read_noise
from memsim.params import N_FEATURES, DeviceParams, cached_params, polyval
from memsim.progress import ProgrammingProgress, ProgressCallback

PROGRAM_CHUNK = 1 << 22  # cells programmed at once: bounds the device model's 230 bytes/cell of state
# The paper's code maps crossbar currents to ADC inputs with a fixed 8020 A^-1 (DacAdcHardwareSettings.
# hardware_output_current_scaling in rwth-i6/SynaptogenML; docs/sources.md): one programmed pair reads about 1.
PAPER_OUTPUT_SCALING = 8020.0
PRECYCLE_VOLTAGE = 2.0  # pre-cycling pulses are uniform in [-2, 2] V, one draw per array and pulse (the paper)


def device_params(config: CrossbarConfig) -> DeviceParams:
    """The device model of a config, with the variations its ablation switches remove taken out."""
    params = cached_params(config.params_path, config.var_order)
    if not config.device_variation:
        params = params.without_device_variation()
    if not config.cycle_variation:
        params = params.without_cycle_variation()
    return params


class ReadModel:
    """The cell read-out of one device kind: g(v; r) = base(v) + r delta(v), noise, and calibration."""

    def __init__(self, config: CrossbarConfig):
        self.noise: ReadNoise | None = None
        if config.device == "ideal":
            # Perfect binary cells: r = 0 conducts G_on, r = 1 nothing; linear I-V; no noise. The value of
            # G_on (a typical LRS) does not matter: the ADC calibration divides it out.
            g_on = torch.tensor([1 / 4500.0])
            self.base, self.delta = g_on, -g_on
            self.r_on, self.r_off = 0.0, 1.0
        else:
            params = device_params(config)
            self.base = _divide_by_v(params.llrs, "LLRS", params.path)
            self.delta = _divide_by_v(
                _pad_like(params.hhrs, params.llrs) - _pad_like(params.llrs, params.hhrs), "HHRS - LLRS", params.path
            )
            if not config.iv_nonlinearity:  # ohmic: the chord conductances at U0, whatever the voltage
                self.base, self.delta = polyval(self.base, params.u0)[None], polyval(self.delta, params.u0)[None]
            r_lrs, r_hrs = nominal_r(params)
            self.r_on, self.r_off = r_lrs, r_hrs
            self.noise = read_noise(config.read_noise)
        v = torch.tensor(config.v_read)
        # One programmed pair (LRS against HRS) at a full-scale input reads as 1 after calibration: for the
        # nominal LRS and HRS of the device model, or with the paper's fixed scaling (Synaptogen cells only:
        # the ideal device's conductance is arbitrary). Per-column calibration corrects on top of nominal.
        if config.calibration == "paper" and config.device != "ideal":
            pair_current = 1 / PAPER_OUTPUT_SCALING
        else:
            pair_current = float(v * polyval(self.delta, v) * (self.r_on - self.r_off))
        self.unit_current = pair_current / (config.levels_per_cell - 1)  # one level step reads as 1

    def row_factors(
        self, v: torch.Tensor, unit: float
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """What each input voltage v [B, rows] contributes per unit of r to a column's current, v delta(v) /
        unit, and to its noise variance, w(v) delta(v) / unit^2 with w the noise's variance per siemens; and
        the r-free part of the variance, w(v) base(v) / unit^2 (None, None without noise)."""
        base, delta = self.conductances(v)  # fresh tensors: the factors are made in place in them
        mean = torch.mul(v, delta).div_(unit)
        if self.noise is None:
            return mean, None, None
        weight = self.noise.variance_per_siemens(v)
        assert isinstance(weight, torch.Tensor)
        weight.div_(unit**2)
        return mean, delta.mul_(weight), base.mul_(weight)

    def conductances(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """base(v) and delta(v), elementwise (coefficients copied to v's device once, not per read)."""
        if self.base.device != v.device:
            self.base, self.delta = self.base.to(v.device), self.delta.to(v.device)
        return polyval(self.base, v), polyval(self.delta, v)


def nominal_r(params: DeviceParams) -> tuple[float, float]:
    """r of the nominal LRS and HRS: the features at the mixture's mean parameters and x = 0."""
    weights = params.gmm_weights / params.gmm_weights.sum()
    mu, sigma = (weights[:, None] * params.gmm_means).sum(0).split(N_FEATURES)
    features = mu + sigma * params.gamma[:, -1]
    r = [
        (params.g_llrs - 1 / resistance) / (params.g_llrs - params.g_hhrs)
        for resistance in (float(features[LRS]), 10 ** float(features[HRS]))
    ]
    return r[0], r[1]


def _pad_like(poly: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Left-pad a highest-power-first polynomial with zeros to the longer of the two lengths."""
    return torch.nn.functional.pad(poly, (max(0, other.numel() - poly.numel()), 0))


def _divide_by_v(poly: torch.Tensor, name: str, path: str) -> torch.Tensor:
    if poly[-1] != 0:
        raise ValueError(
            f"{path}: the {name} I-V polynomial must pass through 0 A at 0 V "
            f"(constant term {float(poly[-1])!r}) to define a chord conductance"
        )
    return poly[:-1]


def integer_weights(weight: torch.Tensor, max_level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor symmetric quantization: q = round(W / s) in +-max_level with s = max|W| / max_level."""
    scale = weight.detach().abs().amax().clamp_min(torch.finfo(weight.dtype).tiny) / max_level
    return torch.round(weight.detach() / scale).clamp_(-max_level, max_level), scale


def digit_planes(q: torch.Tensor, planes: int, tile_size: int, levels: int = 2) -> torch.Tensor:
    """Cell contents [2 (positive, negative), in_padded, planes, out] of integer weights q [out, in]: the
    magnitude's digits in base `levels` (place values levels^k), uint8; binary bits for levels = 2."""
    out_features, in_features = q.shape
    padded = math.ceil(in_features / tile_size) * tile_size
    magnitude = q.abs().to(torch.int64).T  # [in, out]
    digits = torch.stack([(magnitude // levels**k) % levels for k in range(planes)], dim=1).to(torch.uint8)
    cells = torch.zeros(2, padded, planes, out_features, dtype=torch.uint8, device=q.device)
    positive = (q.T > 0)[:, None, :]
    cells[0, :in_features] = digits * positive
    cells[1, :in_features] = digits * ~positive
    return cells


class Programmed(NamedTuple):
    r: torch.Tensor  # the state variable of every cell, shaped as the contents
    failed: int  # cells that did not reach their level (binary: cells storing 1 that did not SET)
    read_disturbable: int  # cells a read within +-v_read could switch: see program()
    pulses: torch.Tensor | None = None  # multi-level cells: pulses each cell took (int16), else None
    failed_by_level: torch.Tensor | None = None  # multi-level cells: failed cells per stored level [levels]
    disturb_threshold: torch.Tensor | None = None  # with read_disturb: memsim.disturb's threshold of every cell


def target_r(levels: torch.Tensor, levels_per_cell: int, r_on: float, r_off: float) -> torch.Tensor:
    """The state r of each level: equally spaced conductances from HRS (level 0) to LRS (the top level);
    the conductance is linear in r at any voltage, so the targets are equally spaced in r too."""
    return r_off + levels.float() * ((r_on - r_off) / (levels_per_cell - 1))


LEVEL_BINS_PER_STEP = 20  # resolution of level_histogram(): a twentieth of a level step


def read_levels(r: torch.Tensor, levels_per_cell: int, r_on: float, r_off: float) -> torch.Tensor:
    """Each cell's conductance in level steps above the nominal HRS (0; the nominal LRS is the top level).
    The conductance is linear in r at every voltage, so this holds at any read voltage."""
    return (r_off - r) * ((levels_per_cell - 1) / (r_off - r_on))


def level_histogram(r: torch.Tensor, contents: torch.Tensor, levels_per_cell: int, model: ReadModel) -> torch.Tensor:
    """Counts [levels, LEVEL_BINS_PER_STEP x levels] of the cells storing each level over their read level
    (read_levels), in bins from -0.5 to levels - 0.5 level steps; cells beyond either end count in the end bin."""
    bins = LEVEL_BINS_PER_STEP * levels_per_cell
    read = read_levels(r, levels_per_cell, model.r_on, model.r_off)
    index = ((read + 0.5) * LEVEL_BINS_PER_STEP).floor_().clamp_(0, bins - 1).long()
    flat = (contents.long() * bins + index).reshape(-1)
    return torch.bincount(flat, minlength=levels_per_cell * bins).view(levels_per_cell, bins)


def program(
    contents: torch.Tensor,
    config: CrossbarConfig,
    generator: torch.Generator | None = None,
    progress: ProgressCallback | None = None,
) -> Programmed:
    """Program cell contents [2, in_padded, planes, out] (levels 0..levels_per_cell-1) into fresh cells.

    Binary cells, per chunk: optional random cycling and pre-cycling, full RESET, SET of the ones, then verify
    and re-SET what did not switch (the SET threshold's tail), each retry verify_step volts harder.
    Multi-level cells: program_levels() (SET, then RESET pulses with a read after each).

    Also counts the cells whose programmed state a read could disturb: a cell storing 0 whose SET threshold
    lies above -v_read, or a cell storing 1 whose RESET threshold lies below +v_read. Reads never change a
    cell in this simulator (as in the paper); the count says how much that assumption carries.

    progress: called with a ProgrammingProgress per pre-cycling pulse (memsim.progress); it sees the programming,
    never changes it.
    """
    if config.device == "ideal":
        return Programmed(target_r(contents, config.levels_per_cell, 0.0, 1.0), 0, 0)
    if config.levels_per_cell > 2:
        return program_levels(contents, config, generator, progress)
    if config.random_cycles == 0 and config.precycle_pulses == 0:
        return _program_fresh(contents.bool(), config, generator)
    return _program_by_pulses(contents.bool(), config, generator, progress)


def _program_by_pulses(
    cells_on: torch.Tensor,
    config: CrossbarConfig,
    generator: torch.Generator | None,
    progress: ProgressCallback | None = None,
) -> Programmed:
    """program(), every pulse simulated by the device model (needed once cells have cycled before).

    Pre-cycled cells take every pulse, the SETs too, through CellArray.apply_pulses (see _reset_cells)."""
    flat_on = cells_on.reshape(-1)
    r = torch.empty(flat_on.shape, device=flat_on.device)
    params = device_params(config).to(flat_on.device)
    r_lrs, r_hrs = nominal_r(params)
    r_threshold = (r_lrs + r_hrs) / 2
    precycle = _precycle_voltages(cells_on.shape, config, generator, flat_on.device)
    report = _PrecycleReport(progress, flat_on.numel(), config.precycle_pulses)
    failed = disturbable = 0
    threshold = torch.empty_like(r) if config.read_disturb else None
    for start in range(0, flat_on.numel(), PROGRAM_CHUNK):
        on = flat_on[start : start + PROGRAM_CHUNK]
        cells = _reset_cells(start, on.numel(), cells_on.shape, params, config, generator, precycle, report)
        for attempt in range(config.verify_retries + 1):
            todo = on & (cells.r > r_threshold)
            if attempt > 0 and not bool(todo.any()):  # programming is not a hot loop: a sync is fine
                break
            voltage = config.set_voltage + attempt * config.verify_step
            if precycle is None:
                cells.apply_voltage(torch.where(todo, voltage, 0.0))
            else:  # 0 V on the cells not to SET, `voltage` on the others
                cells.apply_pulses(torch.tensor([[0.0, voltage]], device=on.device), todo.long())
        r[start : start + on.numel()] = cells.r
        if threshold is not None:
            state = cells.state
            threshold[start : start + on.numel()] = programmed_thresholds(
                state.in_lrs, state.y[US], state.reset_threshold
            )
        failed += int((on & (cells.r > r_threshold)).sum())
        disturbable += int(_read_disturbable(on, cells.ur, cells.us, config.v_read))
    shaped = None if threshold is None else threshold.view(cells_on.shape)
    return Programmed(r.view(cells_on.shape), failed, disturbable, disturb_threshold=shaped)


def _reset_cells(
    start: int,
    count: int,
    shape: torch.Size,
    params: DeviceParams,
    config: CrossbarConfig,
    generator: torch.Generator | None,
    precycle: torch.Tensor | None,
    report: _PrecycleReport,
) -> CellArray:
    """Fresh cells for flat contents start..start+count: random cycling and pre-cycling if configured, then
    the full RESET.

    Pre-cycled cells take their pulses through CellArray.apply_pulses, which computes and draws only for the
    cells a pulse switches (a pre-cycling pulse, one voltage per array, leaves half the arrays alone and SETs or
    RESETs 38 % of the cells on average; the full RESET switches only the cells not in HRS), equal in
    distribution to apply_voltage, which computes every cell on every pulse: the paper model's 50-pulse
    instance took 88 s against 13-15 min (extrapolated per cell) on 2 CPU cores (benchmarks/crossbar.py
    --paper-model --precycle 50; README, "What the paper's condition costs")."""
    cells = CellArray(
        count, params=params, generator=generator, device=params.device, stationary=config.stationary_cells
    )
    _random_cycles(cells, config, generator)
    if precycle is None:
        return cells.apply_voltage(config.reset_voltage)
    arrays = _array_of_cells(start, count, shape, config.tile_size, params.device)
    report.start()
    cells.apply_pulses(precycle, arrays, progress=report.progress_callback)
    return cells.apply_pulses(torch.full((1, 1), config.reset_voltage, device=params.device))


class _PrecycleReport:
    """Pre-cycling's progress events for one matrix of `cells` cells and `pulses` pulses, from
    CellArray.apply_pulses's progress calls: the pulses done over the whole matrix, and the seconds since the
    previous event (or since start(), called as each chunk's pre-cycling begins, so that the work between chunks
    does not count)."""

    def __init__(self, progress: ProgressCallback | None, cells: int, pulses: int):
        self.progress, self.cells, self.pulses = progress, cells, pulses
        self.cell_pulses = 0
        self.last = time.perf_counter()

    def start(self) -> None:
        self.last = time.perf_counter()

    @property
    def progress_callback(self) -> Callable[[int], None] | None:
        """CellArray.apply_pulses's progress: None without a progress callback."""
        return None if self.progress is None else self._report

    def _report(self, cell_pulses: int) -> None:
        assert self.progress is not None
        self.cell_pulses += cell_pulses
        now = time.perf_counter()
        self.progress(ProgrammingProgress("precycle", "", self.cell_pulses / self.cells, self.pulses, now - self.last))
        self.last = now


def _program_fresh(cells_on: torch.Tensor, config: CrossbarConfig, generator: torch.Generator | None) -> Programmed:
    """program() on fresh cells, in closed form (stationary_cells: at a stationary cycle, in place of the first,
    throughout). A fresh cell is in HRS at its first cycle's HRS: the full
    RESET leaves it there, and a SET at u volts (u <= 0) takes it to the first cycle's LRS exactly when
    u <= US; a retry only adds a stronger voltage. So a cell storing 1 ends in LRS if its US lies above the
    strongest SET it can get, and no pulse needs simulating. A cell storing 0 needs only its HRS and US (for
    the read-disturb count), a cell storing 1 all four features: each drawn from its features' marginal
    distribution (device.first_cycle_features), the distribution of the pulse-by-pulse path with half the
    random numbers where most cells store 0."""
    flat_on = cells_on.reshape(-1)
    r = torch.empty(flat_on.shape, device=flat_on.device)
    params = device_params(config).to(flat_on.device)
    strongest_set = config.set_voltage + config.verify_retries * config.verify_step
    failed = disturbable = torch.zeros((), dtype=torch.int64, device=flat_on.device)
    threshold = torch.empty_like(r) if config.read_disturb else None
    for start in range(0, flat_on.numel(), PROGRAM_CHUNK):
        on = flat_on[start : start + PROGRAM_CHUNK]
        ones, zeros = torch.nonzero(on).squeeze(1), torch.nonzero(~on).squeeze(1)  # programming may sync
        hrs, us = first_cycle_features(zeros.numel(), params, (HRS, US), generator, config.stationary_cells)
        r[start + zeros] = r_of_resistance(hrs, params)
        y = first_cycle_features(ones.numel(), params, (HRS, US, LRS, UR), generator, config.stationary_cells)
        switched = y[US] >= strongest_set
        r[start + ones] = torch.where(switched, r_of_resistance(y[LRS], params), r_of_resistance(y[HRS], params))
        if threshold is not None:
            threshold[start + zeros] = us
            threshold[start + ones] = programmed_thresholds(switched, y[US], y[UR])
        failed = failed + (~switched).sum()
        disturbable = disturbable + (us >= -config.v_read).sum() + (y[UR] <= config.v_read).sum()
    shaped = None if threshold is None else threshold.view(cells_on.shape)
    return Programmed(r.view(cells_on.shape), int(failed), int(disturbable), disturb_threshold=shaped)


def _read_disturbable(
    stored: torch.Tensor, reset_threshold: torch.Tensor, set_threshold: torch.Tensor, v_read: float
) -> torch.Tensor:
    """How many cells a read within +-v_read could switch: a cell storing a level above 0 whose RESET threshold
    lies at or below +v_read, a cell storing 0 whose SET threshold lies at or above -v_read (program())."""
    return torch.where(stored, reset_threshold <= v_read, set_threshold >= -v_read).sum()


def _random_cycles(cells: CellArray, config: CrossbarConfig, generator: torch.Generator | None) -> None:
    if config.random_cycles == 0:
        return
    counts = torch.randint(0, config.random_cycles + 1, (cells.n,), generator=generator, device=cells.device)
    for cycle in range(config.random_cycles):
        active = counts > cycle
        cells.apply_voltage(torch.where(active, config.set_voltage, 0.0))
        cells.apply_voltage(torch.where(active, config.reset_voltage, 0.0))


def _precycle_voltages(
    shape: torch.Size, config: CrossbarConfig, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor | None:
    """[pulses, arrays] voltages, uniform in +-PRECYCLE_VOLTAGE: one per array (a tile of one sign and
    plane) and pulse, drawn before any cell so that chunking does not change them."""
    if config.precycle_pulses == 0:
        return None
    _, in_padded, planes, out_features = shape
    arrays = 2 * (in_padded // config.tile_size) * planes * math.ceil(out_features / config.tile_size)
    uniform = torch.rand(config.precycle_pulses, arrays, generator=generator, device=device)
    return uniform.mul_(2 * PRECYCLE_VOLTAGE).sub_(PRECYCLE_VOLTAGE)


def _array_of_cells(start: int, count: int, shape: torch.Size, tile_size: int, device: torch.device) -> torch.Tensor:
    """The array index of flat cells start..start+count of contents [2, in_padded, planes, out]: each row of
    planes x out cells (its sign and input row counted together, in_padded being whole tiles) repeats one pattern
    of arrays, offset by its row tile, so the indices are one broadcast sum, no division per cell."""
    _, in_padded, planes, out_features = shape
    row_length = planes * out_features
    first_row, end_row = start // row_length, (start + count - 1) // row_length + 1
    column_tiles = math.ceil(out_features / tile_size)
    pattern = torch.arange(planes, device=device)[:, None] * column_tiles + (
        torch.arange(out_features, device=device) // tile_size
    )
    row_tile = torch.arange(first_row, end_row, device=device) // tile_size
    arrays = (row_tile[:, None] * (planes * column_tiles) + pattern.reshape(1, -1)).reshape(-1)
    return arrays[start - first_row * row_length :][:count]


def dac(
    x: torch.Tensor, input_range: torch.Tensor, config: CrossbarConfig, input_levels: int | None = None
) -> torch.Tensor:
    """Inputs to voltages: scaled by the input range into [-1, 1], quantized, times v_read.

    input_levels: the source layer's own activation quantizer (2^(b-1)-1 steps per polarity), applied first:
    the digital model feeds the DAC these codes, so an ideal DAC (dac_bits None) reproduces them. The DAC's
    grid then: "symmetric", steps 1/(2^(b-1)-1), the activation quantizer's own grid, so an 8-bit DAC passes
    8-bit activations unchanged; "paper", steps 2^-(b-1) over [-1, 1] (2^b + 1 levels), as the paper's code.
    """
    x = (x / input_range).clamp(-1, 1)
    if input_levels is not None:
        x = torch.round(x * input_levels) / input_levels
    if config.dac_bits is not None:
        steps = dac_steps(config)
        x = torch.round(x * steps) / steps
    return x * config.v_read


def dac_steps(config: CrossbarConfig) -> int:
    """The DAC's codes per polarity: a full-scale input is code +-dac_steps (dac_bits must be set)."""
    assert config.dac_bits is not None
    return 2 ** (config.dac_bits - 1) - (config.dac_grid == "symmetric")


def reads_per_vector(config: CrossbarConfig) -> int:
    """Read pulses per input vector: 1 for amplitude inputs; for bit-serial ones two phases (the positive
    inputs, then the negative ones) of one pulse per magnitude bit of the DAC codes (7 bits for the 8-bit
    symmetric DAC's +-127, 8 for the paper grid's +-128)."""
    if config.input_scheme == "amplitude":
        return 1
    return 2 * dac_steps(config).bit_length()


def read_inputs(read: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, config: CrossbarConfig) -> torch.Tensor:
    """read(v) of the DAC's voltages v as the config's input scheme sends them. Amplitude: one read of v.

    Bit-serial: a one-bit DAC per row, as ISAAC's (Shafiee et al., ISCA 2016), for signed inputs in two phases:
    the rows whose input is positive, then those whose input is negative, each phase one pulse per magnitude bit
    k of the DAC codes with a row at v_read where bit k is set and at 0 V elsewhere. The ADC outputs are
    shift-added and the negative phase's subtracted: sum over phases s and bits k of s 2^k read(pulse) /
    dac_steps, the same units as one read of v. Each pulse is a read of its own, with its own noise and ADC
    conversion. The cells see only 0 V and +v_read, so neither the I-V's curvature below v_read nor its
    asymmetry between polarities enters the product."""
    if config.input_scheme == "amplitude":
        return read(v)
    steps = dac_steps(config)
    codes = torch.round(v * (steps / config.v_read))
    total: torch.Tensor | None = None
    for sign in (1, -1):
        magnitude = (codes * sign).clamp_min_(0)
        for bit in range(steps.bit_length()):
            pulse = torch.floor(magnitude / 2**bit).remainder_(2).mul_(config.v_read)
            place = sign * 2**bit / steps
            part = read(pulse)
            total = part.mul_(place) if total is None else total.add_(part, alpha=place)
    assert total is not None
    return total


def program_levels(
    contents: torch.Tensor,
    config: CrossbarConfig,
    generator: torch.Generator | None = None,
    progress: ProgressCallback | None = None,
) -> Programmed:
    """Multi-level programming with write-verify, every cell its own state machine, all cells vectorized.

    After random cycling and pre-cycling (if configured) and the full RESET, level 0 is the HRS and the top
    level a verified SET (as binary cells). A middle level: SET, then RESET pulses from reset_start rising by
    reset_step (a partial RESET moves the cell towards HRS, the further the higher the pulse), each followed by
    a read, until the read lies in the level's band (CrossbarConfig.verify_scheme; _LevelMachine.pulse has the
    steps). "centred": a band verify_tolerance level steps wide around the target, entered only where the
    pulse's own move would not bring the next read nearer the target (an offset of half the last move); the top
    level verified in its band too (more conductive: RESET ladder; less: a new cycle), the lowest one against
    its band's ceiling (above: SET and full RESET into a new cycle), each at most RECYCLES times; a cell stalled
    at reset_max SET again; reads with the chip's read noise (CellArray.read_state at U0). "first_past": the
    first noiseless read at or past the target is kept, so a level lands about half a pulse's conductance step
    past it (levels 1 and 2 of the mini model's chips at 4 levels read 0.952 and 1.908 level steps on average:
    recipes/mini; centred, the middle levels' means lie within 0.02 of their targets: tests/memsim/
    test_crossbar.py), and the lowest and top levels are not verified.
    An overshoot (past the band) is SET again and restarts two steps below the pulse that overshot (each SET
    starts a new switching cycle).
    A cell not done within pulse_budget pulses counts as failed. Cells that are done leave the array the pulses
    act on (once they make half of it), so a few slow cells do not cost a pulse on every cell. Deterministic
    from the generator; one host sync per pulse (to stop early and to compact).
    """
    flat = contents.reshape(-1)
    r = torch.empty(flat.shape, device=flat.device)
    pulses = torch.zeros(flat.shape, dtype=torch.int16, device=flat.device)
    params = device_params(config).to(flat.device)
    if config.reset_max >= params.umax:
        raise ValueError(
            f"CrossbarConfig.reset_max must lie below the device model's full-RESET voltage {params.umax} V "
            f"(a pulse there resets fully, no middle level), got {config.reset_max}"
        )
    r_lrs, r_hrs = nominal_r(params)
    precycle = _precycle_voltages(contents.shape, config, generator, flat.device)
    report = _PrecycleReport(progress, flat.numel(), config.precycle_pulses)
    failed_by_level = torch.zeros(config.levels_per_cell, dtype=torch.int64, device=flat.device)
    disturbable = torch.zeros((), dtype=torch.int64, device=flat.device)
    for start in range(0, flat.numel(), PROGRAM_CHUNK):
        level = flat[start : start + PROGRAM_CHUNK]
        cells = _reset_cells(start, level.numel(), contents.shape, params, config, generator, precycle, report)
        machine = _LevelMachine(
            level, torch.arange(start, start + level.numel(), device=flat.device), config, r_lrs, r_hrs
        )
        for _ in range(config.pulse_budget):
            remaining = machine.pulse(cells)  # programming is not a hot loop: a sync per pulse is fine
            if remaining == 0:
                break
            if remaining <= machine.done.numel() // 2:  # the cells that are done leave the array pulsed
                left = torch.nonzero(machine.done).squeeze(1)
                failed_by_level, disturbable = machine.select(left).record(
                    cells.select(left), r, pulses, failed_by_level, disturbable
                )
                keep = torch.nonzero(~machine.done).squeeze(1)
                machine, cells = machine.select(keep), cells.select(keep)
        failed_by_level, disturbable = machine.record(cells, r, pulses, failed_by_level, disturbable)
    failed = int(failed_by_level.sum())
    return Programmed(r.view(contents.shape), failed, int(disturbable), pulses.view(contents.shape), failed_by_level)


# A cell at the lowest or the top level outside its band begins at most this many new cycles (SET and full
# RESET) to get a new HRS or LRS within it, then keeps the last: a device whose own mean lies outside the band
# would cycle until its pulse budget ran out, and end wherever that left it.
RECYCLES = 3
# What a cell of _LevelMachine gets next: a read alone, a SET, the next RESET of its ladder, a full RESET, nothing.
_VERIFY, _SET, _LADDER, _FULL_RESET, _DONE = range(5)


class _LevelMachine:
    """The write-verify state of cells being programmed to levels (program_levels), one entry per cell: the next
    step of each, the voltage of its next ladder RESET, and the band of r its verify read must reach."""

    def __init__(self, level: torch.Tensor, index: torch.Tensor, config: CrossbarConfig, r_lrs: float, r_hrs: float):
        self.config, self.r_lrs, self.r_hrs = config, r_lrs, r_hrs
        self.levels = config.levels_per_cell
        self.centred = config.verify_scheme == "centred"
        width = config.verify_tolerance * (r_hrs - r_lrs) / (self.levels - 1)  # in r, which grows towards HRS
        self.strongest_set = config.set_voltage + config.verify_retries * config.verify_step
        self.level, self.index = level, index  # stored level, and position in the contents
        target = target_r(level, self.levels, r_lrs, r_hrs)
        below_target = width / 2 if self.centred else 0.0
        self.target = target
        self.low, self.high = target - below_target, target - below_target + width  # the band, in r
        self.last_read = torch.full_like(target, r_lrs)  # each cell's previous verify read
        self.noise: str | bool = config.read_noise if self.centred else False
        self.voltage = torch.full_like(target, config.reset_start)  # the next ladder RESET
        first = _VERIFY if self.centred else _DONE  # the lowest level: the full RESET's HRS, checked or not
        self.step = torch.where(level == 0, first, _SET).to(torch.int8)
        self.count = torch.zeros_like(level, dtype=torch.int16)  # pulses so far
        self.cycles = torch.zeros_like(level, dtype=torch.int8)  # new cycles begun to reach the band (RECYCLES)

    @property
    def done(self) -> torch.Tensor:
        return self.step == _DONE

    def pulse(self, cells: CellArray) -> int:
        """One pulse on every cell not done (as its step says), a verify read, and each cell's next step; returns
        how many cells are not done.

        A SET that leaves the read above the middle between LRS and HRS is tried again. After one that switched, a
        middle level starts (or resumes) its RESET ladder; the top level is done ("first_past"), or ("centred")
        done within its band, on the ladder when more conductive, and cycled anew (full RESET, SET) when less.
        A ladder RESET: within the band, done; short of it, the next pulse reset_step higher (at reset_max,
        "centred" SETs again and restarts at reset_start: a pulse at the voltage of the last leaves a cell as it
        is); past it, an overshoot: SET again, restart two steps below. The lowest level ("centred"): a cell
        more conductive than its band allows is SET and fully RESET again, into a new cycle's HRS."""
        c, step = self.config, self.step
        volts = torch.where(
            step == _SET,
            self.strongest_set,
            torch.where(step == _LADDER, self.voltage, torch.where(step == _FULL_RESET, c.reset_voltage, 0.0)),
        )
        cells.apply_voltage(volts)
        self.count += (volts != 0).to(torch.int16)
        r = cells.read_state(self.noise)
        below, above = r < self.low, r > self.high  # more conductive than the band, less conductive
        within = ~below & ~above
        if self.centred:  # a ladder read this pulse's move short of the target: the next pulse lands nearer
            within &= ~((step == _LADDER) & (r < self.target - (r - self.last_read) / 2))
        self.last_read = r
        bottom, top = self.level == 0, self.level == self.levels - 1
        switched = (step == _SET) & (r < (self.r_lrs + self.r_hrs) / 2)
        checked = (step == _VERIFY) | (step == _FULL_RESET)
        ladder = step == _LADDER
        short = ladder & ~within & ~above  # not RESET far enough yet
        stalled = short & (self.voltage >= c.reset_max) & self.centred
        overshoot = ladder & above

        cycle_again = self.cycles < RECYCLES
        after_set = torch.where(bottom, _FULL_RESET, _LADDER)
        if self.centred:
            top_next = torch.where(below, _LADDER, torch.where(above & cycle_again, _FULL_RESET, _DONE))
            after_set = torch.where(top, top_next, after_set)
        else:
            after_set = torch.where(top, _DONE, after_set)
        after_check = torch.where(bottom & ~(below & cycle_again), _DONE, _SET)
        self.cycles += ((switched & top & above) | (checked & bottom & below)).to(torch.int8)
        following = torch.where(
            switched,
            after_set,
            torch.where(checked, after_check, torch.where(ladder & within, _DONE, step)),
        )
        self.step = torch.where(overshoot | stalled, _SET, following).to(torch.int8)

        rise = short & ~stalled
        self.voltage = torch.where(rise, (self.voltage + c.reset_step).clamp(max=c.reset_max), self.voltage)
        self.voltage = torch.where(overshoot, (self.voltage - 2 * c.reset_step).clamp(min=c.reset_step), self.voltage)
        self.voltage = torch.where(stalled, torch.full_like(self.voltage, c.reset_start), self.voltage)
        return int((~self.done).sum())

    def record(
        self,
        cells: CellArray,
        r: torch.Tensor,
        pulses: torch.Tensor,
        failed_by_level: torch.Tensor,
        disturbable: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write these cells' final r and pulse counts into r and pulses (flat, all cells); return the failed
        cells per level and the read-disturbable cells with theirs added."""
        r[self.index], pulses[self.index] = cells.state.r, self.count
        failed_by_level = failed_by_level + torch.bincount(
            self.level[~self.done].long(), minlength=self.config.levels_per_cell
        )
        thresholds = cells.state.reset_threshold, cells.state.y[US]
        return failed_by_level, disturbable + _read_disturbable(self.level > 0, *thresholds, self.config.v_read)

    def select(self, keep: torch.Tensor) -> _LevelMachine:
        """The machine of the cells at positions `keep` only."""
        chosen = object.__new__(_LevelMachine)
        chosen.__dict__.update(
            {name: value[keep] if isinstance(value, torch.Tensor) else value for name, value in vars(self).items()}
        )
        return chosen


def adc(y: torch.Tensor, config: CrossbarConfig) -> torch.Tensor:
    """Calibrated column outputs to ADC codes, in place: multiples of the step 2^-p, clipped at
    +-2^(r-1), returned in units of steps (multiply by adc_step(config) for the value)."""
    return adc_codes(y.div_(adc_step(config)), config)


def adc_codes(y_in_steps: torch.Tensor, config: CrossbarConfig) -> torch.Tensor:
    """The ADC on values already in units of its step: round, then clip, in place."""
    if config.adc_precision_bits is not None:
        y_in_steps.round_()
    if config.adc_range_bits is not None:
        limit = 2.0 ** (config.adc_range_bits - 1) / adc_step(config)
        y_in_steps.clamp_(-limit, limit)
    return y_in_steps


def adc_step(config: CrossbarConfig) -> float:
    return 1.0 if config.adc_precision_bits is None else 2.0**-config.adc_precision_bits


def to_codes(
    y: torch.Tensor,
    variance: torch.Tensor | None,
    config: CrossbarConfig,
    generator: torch.Generator | None = None,
    observe: Callable[[torch.Tensor], object] | None = None,
    correction: tuple[torch.Tensor, torch.Tensor] | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Noiseless column outputs y in ADC steps to the ADC's codes, in place: one Gaussian per output with the
    noise `variance` (None: no noise; `noise`, a buffer of y's shape to draw it into), `observe` called with what
    the ADC is about to convert (in units of one programmed pair), the ADC, and a per-column correction
    (offset in steps, inverse gain) of the codes."""
    if variance is not None:
        noise = torch.empty_like(y) if noise is None else noise
        y.addcmul_(variance.clamp_min_(0).sqrt_(), noise.normal_(generator=generator))
    if observe is not None:
        observe(y * adc_step(config))
    adc_codes(y, config)
    if correction is not None:
        offset, inverse_gain = correction
        y.sub_(offset).mul_(inverse_gain)
    return y


RowFactors = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]  # ReadModel.row_factors()


def zero_volt_factors(model: ReadModel, unit: float, like: torch.Tensor) -> RowFactors:
    """The row factors of a row driven at 0 V, [1, 1] each (on `like`'s device): a padding row of a tile, which
    carries no current but its cells' thermal noise."""
    return model.row_factors(like.new_zeros(1, 1), unit)


class CellPairs(NamedTuple):
    """The programmed differential pairs as the read uses them, [rows, planes x out] each: r_pos - r_neg (the
    mean current's) and r_pos + r_neg (the noise variance's). Computed once per programming, not per read.
    Through resistive wires (cell_pairs) the mean's matrix is what the wires leave of it."""

    difference: torch.Tensor
    total: torch.Tensor

    @classmethod
    def of(cls, r: torch.Tensor) -> CellPairs:
        """The pairs of programmed tiles r [2, rows, planes, out]."""
        flat = (r.shape[1], r.shape[2] * r.shape[3])
        return cls((r[0] - r[1]).reshape(flat), (r[0] + r[1]).reshape(flat))


def typical_read_voltage(config: CrossbarConfig) -> float:
    """The voltage a read mostly puts across the cells: v_read for bit-serial pulses (their only non-zero
    voltage), config.typical_input_fraction of it for amplitude inputs."""
    return config.v_read * (1.0 if config.input_scheme == "bit_serial" else config.typical_input_fraction)


def cell_pairs(r: torch.Tensor, model: ReadModel, config: CrossbarConfig) -> CellPairs:
    """The read's pairs (CellPairs) of programmed tiles r [2, rows, planes, out], through the config's wires.

    Ideal wires: CellPairs.of(r). Resistive wires: each array (a plane of one sign, tile_size rows and columns; the
    columns past `out` in the last column tile are unprogrammed HRS cells) gets its exact transfer matrix T
    (memsim.ir_drop.transfer_matrix) at its cells' chord conductances g = base(v_t) + r delta(v_t), v_t the
    typical_read_voltage; the mean's matrix becomes (T_pos - T_neg) / delta(v_t), which is r_pos - r_neg for ideal
    wires. A read then multiplies it by each row's v delta(v) as before: exact for ohmic cells (iv_nonlinearity
    off, or the ideal device); for non-linear cells each cell's current keeps its own I-V at its row's voltage,
    scaled by what the wires leave at v_t (benchmarks/ir_drop.py measures this against the exact non-linear
    solve). Limits: the noise variance stays the cells' own (a cell's noise current reaches the sense amplifier
    attenuated like its signal, which this overstates by at most the gain loss; physical read noise is about
    0.1 % of a LRS current); and the base conductance's shape in v is taken as delta's, base(v) ~ delta(v)
    base(v_t) / delta(v_t), which errs only where the two arrays of a pair lose different fractions (without wires
    the base cancels between them).
    """
    pairs = CellPairs.of(r)
    if not config.wired:
        return pairs
    v_t = torch.tensor(typical_read_voltage(config), device=r.device)
    base, delta = (float(c) for c in model.conductances(v_t))
    _, rows, planes, out = r.shape
    tile = config.tile_size
    cells = torch.nn.functional.pad(r, (0, -out % tile), value=model.r_off)  # [2, rows, planes, out padded]
    arrays = cells.unflatten(1, (rows // tile, tile)).unflatten(-1, (-1, tile))  # [2, T, R, P, U, C]
    arrays = arrays.permute(0, 1, 3, 4, 2, 5)  # [2, row tiles, planes, column tiles, R, C]
    transfer = ir_drop.transfer_matrix(base + arrays * delta, config.wire_resistance)  # float64
    transfer = transfer.permute(0, 1, 4, 2, 3, 5).flatten(-2)[..., :out].flatten(1, 2)  # [2, rows, planes, out]
    difference = ((transfer[0] - transfer[1]) / delta).to(r.dtype).reshape(pairs.difference.shape)
    return CellPairs(difference, pairs.total)


# The most elements (inputs x planes x columns, over all stacked matrices) of the temporaries one batch of tiles
# reads at once: the GEMMs' outputs and their Gaussians. A read of many inputs reads a tile at a time, so these stay
# in the 1 MiB L2 cache of this project's CPUs (lscpu); a read of few inputs (an LSTM step) reads many tiles in one
# batched GEMM, faster than one GEMM per tile: the BLSTM of python benchmarks/crossbar.py --layers-only took
# 216 ms with this value and 241 ms with 1 (a tile at a time), the fastest of 5 alternating calls at a136004.
TILE_BATCH_ELEMENTS = 2**18
# Inputs are read in parts of at most this many elements per tile (inputs x planes x columns): a part's three
# temporaries (mean, variance, Gaussians; 8 MiB each) then stay in the 32 MiB L3 cache (lscpu). Read whole, 4,096
# inputs of a 384 -> 1536 layer stream 50 MiB temporaries through memory: 16.5x-18.1x nn.Linear, against
# 12.1x-12.9x in parts (python benchmarks/crossbar.py --batch 4096, two runs each at a136004 and 927d6e9).
READ_PART_ELEMENTS = 2**21


def tile_reads(
    factors: RowFactors,
    pairs: CellPairs,
    planes: int,
    config: CrossbarConfig,
    generator: torch.Generator | None = None,
    columns: ColumnCalibration | None = None,
    observe: Callable[[torch.Tensor], object] | None = None,
    tile_columns: list[torch.Tensor] | None = None,
    padding: RowFactors | None = None,
) -> torch.Tensor:
    """Read programmed tiles (their cell pairs, of `planes` planes) with the row factors (ReadModel.row_factors, in
    ADC steps) of N input vectors, [N, k] each for the tiles' first k rows; the rest of the last tile's rows are
    padding driven at 0 V, whose factors `padding` (zero_volt_factors) gives when there are any.

    Returns sum over planes L^k and tiles of ADC(calibrated I_pos - I_neg): the integer weights' dot
    product with v / v_read, as the hardware computes it, [N, out]. With `columns`, each ADC output is
    corrected digitally, (code - offset) / gain per tile, plane and column. Leading dimensions read stacked
    matrices in one go (factors [S, N, k], pairs [S, rows, planes x out], columns [S, tiles, planes, out]: S
    matrices, each with its own inputs; the result is [S, N, out]). `observe`, if given, is called per batch of
    tiles with what the ADC is about to convert, [..., tiles, N, planes x columns] in units of one programmed
    pair. `tile_columns`, per row of tiles, the indices of the columns connected there (a grouped convolution's
    matrix: memsim.conv); the others read nothing, not even noise, and cost nothing. None: every column.

    Per part of the inputs (READ_PART_ELEMENTS) and batch of tiles (TILE_BATCH_ELEMENTS; one tile when
    tile_columns differ per tile): one batched GEMM for the mean currents and one for the noise variances,
    [..., tiles, N, planes x out] each, then one Gaussian per element. The padding rows take no part in the
    GEMMs: they add no current, and to each column's variance a constant of their cells.
    """
    planes_x_out = pairs.difference.shape[-1]
    lead, inputs = factors[0].shape[:-2], factors[0].shape[-2]
    part = max(1, READ_PART_ELEMENTS // (lead.numel() * planes_x_out))
    if inputs > part:
        parts = [
            tile_reads(
                _input_part(factors, slice(first, first + part)),
                pairs,
                planes,
                config,
                generator,
                columns,
                observe,
                tile_columns,
                padding,
            )
            for first in range(0, inputs, part)
        ]
        return torch.cat(parts, -2)
    out_features, step = planes_x_out // planes, adc_step(config)
    if columns is not None:  # [..., tiles, 1, planes x out]: broadcast over the N inputs
        offset_in_steps = (columns.offset / step).flatten(-2).unsqueeze(-2)
        inverse_gain = columns.gain.reciprocal().flatten(-2).unsqueeze(-2)
    per_batch = 1 if tile_columns is not None else max(1, TILE_BATCH_ELEMENTS // (lead.numel() * inputs * planes_x_out))
    result = factors[0].new_zeros(*lead, inputs, out_features)
    gaussian = None
    for group in _tile_groups(factors, pairs, config.tile_size, per_batch, padding):
        chosen = None if tile_columns is None else tile_columns[group.tiles.start]
        if chosen is not None and chosen.numel() == 0:
            continue
        # the chosen columns of every plane (plane-major, as the flattened [planes x out] axis)
        wide = None if chosen is None else torch.cat([chosen + plane * out_features for plane in range(planes)])
        # I_pos - I_neg: the base conductance is common to both arrays and cancels (through wires, cell_pairs
        # carries what it leaves in the difference).
        y = group.mean @ _columns(group.difference, wide)
        variance = None
        if group.variance is not None:
            assert group.common is not None  # noise has both parts of the variance
            variance = (group.variance @ _columns(group.total, wide)).add_(group.common)
            if group.padding_variance is not None:
                variance.add_(_columns(group.padding_variance, wide))
            if wide is None and (gaussian is None or gaussian.shape != y.shape):
                gaussian = torch.empty_like(y)
        correction = None
        if columns is not None:
            offset, gain = (per_tile[..., group.tiles, :, :] for per_tile in (offset_in_steps, inverse_gain))
            correction = (_columns(offset, wide), _columns(gain, wide))
        to_codes(y, variance, config, generator, observe, correction, gaussian if wide is None else None)
        codes = y.sum(-3) if y.shape[-3] > 1 else y[..., 0, :, :]
        width = out_features if chosen is None else chosen.numel()
        for plane in range(planes):
            place = config.levels_per_cell**plane * step
            block = codes[..., plane * width : (plane + 1) * width]
            if chosen is None:
                result.add_(block, alpha=place)
            else:
                result.index_add_(-1, chosen, block, alpha=place)
    return result


class _TileGroup(NamedTuple):
    """Some row tiles that tile_reads reads in one batched GEMM: t tiles of K rows holding inputs each."""

    tiles: slice  # which row tiles
    mean: torch.Tensor  # [..., t, N, K] the inputs' mean-current factors on the tiles' rows
    variance: torch.Tensor | None  # [..., t, N, K] their noise-variance factors
    common: torch.Tensor | None  # [..., t, N, 1] twice their r-free variance, summed over each tile's rows
    difference: torch.Tensor  # [..., t, K, planes x out] the rows' cell pairs
    total: torch.Tensor
    padding_variance: torch.Tensor | None  # [..., t, 1, planes x out] what the tiles' 0 V padding rows add


def _tile_groups(
    factors: RowFactors, pairs: CellPairs, tile: int, per_batch: int, padding: RowFactors | None
) -> Iterator[_TileGroup]:
    """The row tiles of a read in batches of per_batch full tiles, then the last tile alone if inputs fill only
    part of it (its padding rows at 0 V as a constant, from `padding`)."""
    mean, variance, common = factors
    rows = mean.shape[-1]
    full = rows // tile

    def by_tile(f: torch.Tensor) -> torch.Tensor:  # [..., N, full x tile] -> [..., full, N, tile]
        return f[..., : full * tile].unflatten(-1, (full, tile)).movedim(-2, -3)

    difference, total = (m[..., : full * tile, :].unflatten(-2, (full, tile)) for m in pairs)
    for start in range(0, full, per_batch):
        batch = slice(start, min(start + per_batch, full))
        yield _TileGroup(
            batch,
            by_tile(mean)[..., batch, :, :],
            None if variance is None else by_tile(variance)[..., batch, :, :],
            # both arrays of a pair see the same rows: their base conductance adds twice to the variance
            None if common is None else 2 * by_tile(common)[..., batch, :, :].sum(-1, keepdim=True),
            difference[..., batch, :, :],
            total[..., batch, :, :],
            None,
        )
    if rows == full * tile:
        return
    last = slice(full * tile, rows)  # the inputs' rows of the last tile; the rest are padding
    padding_variance = last_common = None
    if variance is not None and common is not None:  # noise: the padding cells add to the variance
        if padding is None or padding[1] is None or padding[2] is None:
            raise ValueError("a read whose inputs fill part of a tile needs the factors of its 0 V padding rows")
        padded = slice(rows, (full + 1) * tile)
        padding_variance = (padding[1] * pairs.total[..., padded, :].sum(-2, keepdim=True)).unsqueeze(-3)
        last_common = (2 * (common[..., last].sum(-1, keepdim=True) + (padded.stop - rows) * padding[2])).unsqueeze(-3)
    yield _TileGroup(
        slice(full, full + 1),
        mean[..., last].unsqueeze(-3),
        None if variance is None else variance[..., last].unsqueeze(-3),
        last_common,
        pairs.difference[..., last, :].unsqueeze(-3),
        pairs.total[..., last, :].unsqueeze(-3),
        padding_variance,
    )


def _input_part(factors: RowFactors, inputs: slice) -> RowFactors:
    """The row factors of some of the input vectors."""
    mean, variance, common = factors
    return (
        mean[..., inputs, :],
        None if variance is None else variance[..., inputs, :],
        None if common is None else common[..., inputs, :],
    )


def _columns(matrix: torch.Tensor, columns: torch.Tensor | None) -> torch.Tensor:
    """Of a matrix [..., columns], the chosen columns (None: all)."""
    return matrix if columns is None else matrix[..., columns]


class ColumnCalibration(NamedTuple):
    gain: torch.Tensor  # [tiles, planes, out] measured / expected output of each column
    offset: torch.Tensor  # [tiles, planes, out] in units of one programmed pair at a full-scale input


MIN_COLUMN_GAIN = 0.1  # a broken column (its ones failed to SET) is not amplified beyond 10x


@torch.no_grad()
def fit_columns(
    cells_on: torch.Tensor,
    difference: torch.Tensor,
    model: ReadModel,
    config: CrossbarConfig,
    generator: torch.Generator | None = None,
) -> ColumnCalibration:
    """Per-column calibration, as a chip does after programming: read every tile (its pairs' CellPairs.difference
    [rows, planes x out], through the wires if they have resistance) with known test inputs (column_test_voltages)
    and fit, per tile, plane and column, measured = gain x expected + offset by least squares, where expected is
    what the stored digits cells_on [2, rows, planes, out] give.

    The fit sees the noiseless currents (the mean of many test reads) before the ADC; it costs test reads
    and two numbers per column, not weights.
    """
    _, in_padded, planes, out_features = cells_on.shape
    tiles, tile = in_padded // config.tile_size, config.tile_size
    v = column_test_voltages(config, generator, difference.device)
    measured = column_test_reads(v, difference, model, config)
    stored = (cells_on[0].float() - cells_on[1].float()).reshape(tiles, tile, planes * out_features)
    expected = (v / config.v_read) @ stored  # [tiles, tests, planes * out]
    gain, offset = fit_lines(expected, measured)
    return ColumnCalibration(gain.view(tiles, planes, out_features), offset.view(tiles, planes, out_features))


def column_test_voltages(
    config: CrossbarConfig, generator: torch.Generator | None, device: torch.device | str
) -> torch.Tensor:
    """The test inputs a chip reads its columns with [2 x tile_size, tile_size] volts: uniform in
    +-typical_read_voltage, both polarities; for bit-serial inputs each row at 0 V or v_read at random, the only
    voltages its pulses drive."""
    tile = config.tile_size
    uniform = torch.rand(2 * tile, tile, generator=generator, device=device)
    if config.input_scheme == "bit_serial":
        return uniform.lt_(0.5).float().mul_(config.v_read)
    amplitude = typical_read_voltage(config)
    return uniform.mul_(2 * amplitude).sub_(amplitude)


def column_test_reads(
    v: torch.Tensor, difference: torch.Tensor, model: ReadModel, config: CrossbarConfig
) -> torch.Tensor:
    """The noiseless column outputs before the ADC [tiles, tests, planes x out], in units of one programmed pair, of
    the test voltages v [tests, tile_size] on every tile of a matrix (CellPairs.difference [rows, planes x out])."""
    tile = config.tile_size
    _, delta = model.conductances(v)
    return (v * delta / model.unit_current) @ difference.reshape(-1, tile, difference.shape[-1])


def fit_lines(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares lines y = gain x + offset along dimension 1 of x and y [groups, points, columns]: gain and offset
    [groups, columns] (gain 1 where x does not vary, at least MIN_COLUMN_GAIN: a broken column is not amplified
    beyond 1 / MIN_COLUMN_GAIN)."""
    centred = x - x.mean(1, keepdim=True)
    variance = centred.square().sum(1)
    covariance = (centred * (y - y.mean(1, keepdim=True))).sum(1)
    gain = torch.where(variance > 0, covariance / variance.clamp_min(torch.finfo(x.dtype).tiny), 1.0)
    gain = gain.clamp_min(MIN_COLUMN_GAIN)
    return gain, y.mean(1) - gain * x.mean(1)
