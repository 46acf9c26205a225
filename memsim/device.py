"""The Synaptogen cell model in PyTorch: a vectorized array of stochastic ReRAM cells.

Each cell has device-to-device parameters (mu, sigma) drawn once from a Gaussian mixture, and a
cycle-to-cycle feature process: a VAR(p) series of normal vectors x_n, mapped by the per-feature
polynomials Gamma and then y = mu + sigma * Gamma(x) (HRS in log10 ohm) to the four switching features
of the current cycle: HRS, US, LRS, UR. The cell's state variable r mixes two boundary I-V polynomials,
I(U) = (1 - r) LLRS(U) + r HHRS(U); SET jumps to the cycle's LRS, RESET moves along a transition curve
towards the next cycle's HRS, reached fully at Umax. A new cycle (VAR draw) starts when a cell in LRS
begins to RESET.

Semantics follow the reference `synaptogen` package, with the Julia original's initial state (fresh
cells in HRS) and the per-cell RESET threshold kept apart from the feature array. Every branch is
computed for all cells and then selected: no host synchronization, so the same code runs on CUDA.
On the CPU a pulse is applied in chunks of cells, so that its temporaries stay in cache.

CellArray.apply_pulses applies many pulses of which each switches only some cells (pre-cycling): the same
physics, computed and drawn only for the cells each pulse switches, by a compiled loop per cell on the CPU
(memsim.pulse_kernel) and by torch over the switching cells elsewhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numba
import numpy as np
import torch

from memsim import pulse_kernel
from memsim.noise import read_noise
from memsim.params import N_FEATURES, DeviceParams, cached_params, polyval
from memsim.pulse_kernel import DISTANCE, HHRS_AT_U, LLRS_AT_U, NEVER, PARTIAL, RESET_BOUND_AFTER, VOLTS

HRS, US, LRS, UR = range(N_FEATURES)
CPU_CHUNK = 1 << 16  # cells per step on the CPU; CUDA takes the whole array at once
# Cells per call of the compiled pulse loop (CellArray.apply_pulses on the CPU): a progress report per call, about
# 20 ms of work per call for the paper's 50 pre-cycling pulses on 2 cores.
COMPILED_CHUNK = 1 << 16


def draw_device_parameters(
    n: int, params: DeviceParams, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Device-to-device draw: mixture component k [n] and (mu, sigma) [n, 8] for n devices.

    Draw order: one uniform per device for the component, then 8 normals per device.
    """
    k, mu_sigma = _mixture(n, params.gmm_weights, params.gmm_means, params.gmm_chol, generator)
    return k, mu_sigma.T


def first_cycle(
    n: int, params: DeviceParams, generator: torch.Generator | None = None, stationary: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The draws that make n fresh cells: device parameters mu_sigma [8, n], the VAR history [n, 4p] (oldest
    vector first) and the current cycle's features y [4, n] (HRS in ohm, US, LRS in ohm, UR), in CellArray's
    draw order: draw_device_parameters's, then 4 normals per cell for the first VAR vector (the rest of the
    history 0) or, stationary, 4p normals per cell for a whole history from the process's stationary
    distribution (stationary_covariance)."""
    _, mu_sigma = _mixture(n, params.gmm_weights, params.gmm_means, params.gmm_chol, generator)
    vectors = params.var_order if stationary else 1
    innovations = torch.randn(N_FEATURES * vectors, n, generator=generator, device=params.device)
    factor = _square_root(stationary_covariance(params)) if stationary else params.var_noise
    history = torch.zeros(n, N_FEATURES * params.var_order, device=params.device)
    y = torch.empty(N_FEATURES, n, device=params.device)
    for cells in _chunks(n, params.device):
        x = factor @ innovations[:, cells]  # [4 x vectors, cells], the newest vector last
        history[cells, -N_FEATURES * vectors :] = x.T
        _features(x[-N_FEATURES:], mu_sigma[:, cells], params, out=y[:, cells])
    return mu_sigma, history, y


def stationary_covariance(params: DeviceParams) -> torch.Tensor:
    """[4p, 4p]: the covariance of a cell's VAR history (its last p vectors, oldest first) once the
    cycle-to-cycle process is stationary: sum over k of C^k Q C^k^T, with C the process's companion matrix
    (shift the history, append var_lags @ history) and Q the innovations' covariance in the newest block; by
    doubling, in float64. A Gaussian VAR's stationary distribution is this Gaussian (Luetkepohl, New
    Introduction to Multiple Time Series Analysis, 2005, sec. 2.1.4), so a history drawn from it is a cell
    after infinitely many cycles, exactly in distribution (tests/memsim/test_precycle.py checks it against
    cells cycled on)."""
    size = N_FEATURES * params.var_order
    companion = torch.zeros(size, size, dtype=torch.float64, device=params.device)
    companion[:-N_FEATURES, N_FEATURES:] = torch.eye(size - N_FEATURES, dtype=torch.float64, device=params.device)
    companion[-N_FEATURES:] = params.var_lags.double()
    covariance = torch.zeros_like(companion)
    noise = params.var_noise.double()
    covariance[-N_FEATURES:, -N_FEATURES:] = noise @ noise.T
    power = companion
    for _ in range(64):  # after step j the sum holds 2^j terms
        covariance = covariance + power @ covariance @ power.T
        power = power @ power
        if float(power.abs().max()) < 1e-12:
            return covariance.float()
    raise ValueError("the device model's VAR process is not stable: its cycles have no stationary distribution")


def _mixture(
    n: int, weights: torch.Tensor, means: torch.Tensor, factors: torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """n draws of a Gaussian mixture (weights [K], means [K, d], covariance factors [K, d, d]): the component k [n]
    from one uniform each, then d normals each; returns k and the draws [d, n]. All K components' transforms in
    one GEMM per chunk, the cell's own selected by 0/1 weights."""
    device = means.device
    components, dims = means.shape
    cumulative = torch.cumsum(weights, 0) / weights.sum()
    u = torch.rand(n, generator=generator, device=device)
    k = torch.zeros(n, dtype=torch.int64, device=device)  # the first component whose cumulative weight >= u
    for bound in cumulative[:-1]:
        k += u > bound
    z = torch.randn(n, dims, generator=generator, device=device)
    transforms = factors.reshape(components * dims, dims)  # [K x d, d]
    means_t = means.T.contiguous()  # [d, K]
    draws = torch.empty(dims, n, device=device)
    for cells in _chunks(n, device):
        drawn = (transforms @ z[cells].T).view(components, dims, -1)  # every component's draw
        chunk = torch.add(drawn[0], means_t[:, :1], out=draws[:, cells])
        for component in range(1, components):
            chosen = (k[cells] == component).float()
            chunk.lerp_(drawn[component].add_(means_t[:, component : component + 1]), chosen)
    return k, draws


def first_cycle_features(
    n: int,
    params: DeviceParams,
    features: tuple[int, ...],
    generator: torch.Generator | None = None,
    stationary: bool = False,
) -> torch.Tensor:
    """Some of the first cycle's features (`features`, indices among HRS, US, LRS, UR) of n fresh cells, [len, n]:
    the rows of first_cycle()'s y, drawn from their own marginal distribution, which needs 3 normals per feature
    where all four features need 12 (a feature depends only on its own mu, sigma and x; the marginal of a
    Gaussian is the Gaussian of the sub-covariance, per mixture component and for the VAR vector alike);
    stationary: of a cycle in the stationary regime (the newest vector's block of stationary_covariance)."""
    chosen = list(features)
    dims = chosen + [N_FEATURES + f for f in chosen]  # their mu, then their sigma
    covariance = params.gmm_chol @ params.gmm_chol.transpose(1, 2)
    _, mu_sigma = _mixture(
        n, params.gmm_weights, params.gmm_means[:, dims], _square_root(covariance[:, dims][:, :, dims]), generator
    )
    innovations = torch.randn(len(chosen), n, generator=generator, device=params.device)
    if stationary:
        var_covariance = stationary_covariance(params)[-N_FEATURES:, -N_FEATURES:]
    else:
        var_covariance = params.var_noise @ params.var_noise.T
    x_factor = _square_root(var_covariance[chosen][:, chosen])
    y = torch.empty(len(chosen), n, device=params.device)
    for cells in _chunks(n, params.device):
        x = x_factor @ innovations[:, cells]
        _transform(x, mu_sigma[:, cells], params.gamma[chosen], [f == HRS for f in chosen], out=y[:, cells])
    return y


def _square_root(covariance: torch.Tensor) -> torch.Tensor:
    """A factor F with F F^T = covariance (symmetric, positive semi-definite; batched), from its eigenvectors:
    defined for a singular covariance too (a model without device variation has none)."""
    values, vectors = torch.linalg.eigh(covariance.double())
    return (vectors * values.clamp_min(0).sqrt()[..., None, :]).float()


def _chunks(n: int, device: torch.device) -> list[slice]:
    """Slices of n cells: CPU_CHUNK at a time on the CPU (temporaries in cache), all at once on CUDA."""
    step = n if device.type == "cuda" else CPU_CHUNK
    return [slice(start, start + step) for start in range(0, n, step)]


@dataclasses.dataclass
class CellState:
    """Everything a cell remembers, one row per cell (float32 unless noted): 230 bytes at p = 10."""

    history: torch.Tensor  # [n, 4p] the last p feature vectors x, oldest first (cell-major, for the GEMM)
    mu_sigma: torch.Tensor  # [8, n] device-to-device parameters: mu (4), then sigma (4)
    y: torch.Tensor  # [4, n] the current cycle's features HRS (ohm), US (V), LRS (ohm), UR (V)
    r: torch.Tensor  # [n] state variable: 0 on the LLRS boundary, 1 on the HHRS boundary
    reset_threshold: torch.Tensor  # [n] a RESET acts above this voltage
    reset_coefs: torch.Tensor  # [2, n] (a, c) of the transition curve I = a |Umax - U|^eta + c
    cycle_count: torch.Tensor  # [n] int32
    in_hrs: torch.Tensor  # [n] bool
    in_lrs: torch.Tensor  # [n] bool

    def __getitem__(self, cells: slice | torch.Tensor) -> CellState:
        """The state of some cells: views of a range (updating them updates this state), copies for an index
        tensor."""
        return CellState(
            **{
                name: tensor[cells] if tensor.ndim == 1 or name == "history" else tensor[:, cells]
                for name, tensor in vars(self).items()
            }
        )

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (getattr(self, f.name) for f in dataclasses.fields(self)))


class CellArray:
    """n independent cells in their high-resistance state: fresh, at their first cycle, or (stationary) at a
    cycle of the cycle-to-cycle process in its stationary regime, as after many cycles of use (first_cycle)."""

    def __init__(
        self,
        n: int,
        params: DeviceParams | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        stationary: bool = False,
    ):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"CellArray needs a positive number of cells, got {n!r}")
        if device is None:
            device = generator.device if generator is not None else "cpu"
        self.params = p = (params or cached_params()).to(device)
        self.generator = generator
        self.n = n
        self._at_umax = _boundary_currents(torch.tensor(p.umax, device=p.device), p)
        mu_sigma, history, y = first_cycle(n, p, generator, stationary)
        self.state = CellState(
            history=history,
            mu_sigma=mu_sigma,
            y=y,
            r=r_of_resistance(y[HRS], p),
            reset_threshold=y[UR].clone(),
            reset_coefs=torch.zeros(2, n, device=p.device),
            cycle_count=torch.zeros(n, dtype=torch.int32, device=p.device),
            in_hrs=torch.ones(n, dtype=torch.bool, device=p.device),
            in_lrs=torch.zeros(n, dtype=torch.bool, device=p.device),
        )

    def __len__(self) -> int:
        return self.n

    def select(self, index: torch.Tensor) -> CellArray:
        """A new array of the cells at `index` (copies of their state), with the same parameters and generator:
        pulses then cost only what these cells need."""
        chosen = object.__new__(CellArray)
        chosen.params, chosen.generator, chosen._at_umax = self.params, self.generator, self._at_umax
        chosen.n, chosen.state = int(index.numel()), self.state[index]
        return chosen

    @property
    def device(self) -> torch.device:
        return self.params.device

    # Copies of the current cycle's switching features, the cycle count and the state variable r.
    @property
    def hrs(self) -> torch.Tensor:
        return self.state.y[HRS].clone()

    @property
    def us(self) -> torch.Tensor:
        return self.state.y[US].clone()

    @property
    def lrs(self) -> torch.Tensor:
        return self.state.y[LRS].clone()

    @property
    def ur(self) -> torch.Tensor:
        return self.state.y[UR].clone()

    @property
    def cycle_count(self) -> torch.Tensor:
        return self.state.cycle_count.clone()

    @property
    def r(self) -> torch.Tensor:
        return self.state.r.clone()

    def state_bytes(self) -> int:
        """Bytes of per-cell state held by this array (all cells)."""
        return self.state.nbytes()

    def apply_voltage(self, u: torch.Tensor | float) -> CellArray:
        """Apply one pulse of u volts (scalar, or one per cell): SET where u <= US, RESET where u > UR."""
        p = self.params
        u = self._voltage(u)
        at_u = _boundary_currents(u, p) if u.ndim == 0 else None  # one voltage: evaluate once
        chunk = self.n if self.device.type == "cuda" else CPU_CHUNK
        for start in range(0, self.n, chunk):
            cells = slice(start, start + chunk)
            state = self.state[cells]
            innovations = self._randn(N_FEATURES, state.r.numel())
            u_cells = u if u.ndim == 0 else u[cells]
            at_u_cells = at_u if at_u is not None else _boundary_currents(u_cells, p)
            _apply_pulse(state, u_cells, at_u_cells, self._at_umax, innovations, p)
        return self

    def apply_pulses(
        self,
        voltages: torch.Tensor,
        group: torch.Tensor | None = None,
        progress: Callable[[int], object] | None = None,
        compiled: bool | None = None,
    ) -> CellArray:
        """Apply pulses one after the other: pulse k puts voltages[k, group[i]] volts on cell i (voltages [pulses,
        groups]; group [n] int64, None: voltages[k, 0] on every cell). progress, if given, is called with the
        number of cell-pulses applied since its previous call.

        The physics of apply_voltage, computed only for the cells a pulse switches: a cell SETs only if it is
        not in LRS and u <= US, RESETs only if it is not in HRS and u > its RESET threshold, and only a cell
        leaving LRS starts a new cycle (draws the VAR innovations). In the paper's pre-cycling (50 pulses
        uniform in +-2 V on fresh cells, 16 arrays of 128 x 128), half the pulses switch no cell of a given
        array; on average a pulse SETs 17 % of the cells, RESETs 20 %, and 16 % start a new cycle, where
        apply_voltage computes and draws for all of them.

        Two implementations of it (compiled: None picks by device, True or False chooses):
        - On the CPU, memsim.pulse_kernel: a compiled loop per cell over the pulses, the cells spread over
          min(torch.get_num_threads(), numba's) threads, COMPILED_CHUNK cells per call. Each cell draws from a
          random stream of its own, so the result depends on neither the thread count nor the chunks.
        - Elsewhere (CUDA), torch over the switching cells (_SwitchingBlock): every cell keeps the two voltages
          between which a pulse leaves it alone, its SET bound (US, or -NEVER in LRS) and its RESET bound (the
          RESET threshold, or NEVER in HRS); a pulse compares each cell's voltage with them, and only the cells
          it switches are gathered, updated and written back (index_select / index_copy_). Compaction rather
          than masks, because masks would compute and draw for every cell on every pulse, as apply_voltage
          does; its price is one host synchronization per pulse (the three counts of cells that SET, RESET and
          start a cycle, read at once), none per cell.
        The paper model's 50-pulse pre-cycling on 2 CPU cores: README, "What the paper's condition costs".

        Both equal apply_voltage pulse by pulse in distribution, not draw for draw (apply_voltage draws 4
        normals for every cell on every pulse; these only for the cells that start a cycle, from other streams).
        Without cycle-to-cycle variation (no draws matter) all three agree cell by cell, up to the last bits of
        pow() and of the summation order.
        """
        voltages = torch.as_tensor(voltages, dtype=torch.float32, device=self.device)
        if voltages.ndim != 2 or voltages.shape[1] == 0:
            raise ValueError(f"voltages must be [pulses, groups], got shape {tuple(voltages.shape)}")
        if group is not None and (group.shape != (self.n,) or group.dtype != torch.int64):
            raise ValueError(f"group must be int64 of shape ({self.n},), got {group.dtype} {tuple(group.shape)}")
        if compiled is None:
            compiled = self.device.type == "cpu"
        if compiled and self.device.type != "cpu":
            raise ValueError(f"the compiled pulse loop runs on the CPU; these cells are on {self.device}")
        tables = _pulse_tables(voltages, self.params)
        if compiled:
            self._apply_pulses_compiled(tables.contiguous(), group, progress)
            return self
        block = _SwitchingBlock(self.state, self.params, self._at_umax)
        for volts, table in zip(voltages, tables, strict=True):
            block.pulse(volts, table, group, self.generator)
            if progress is not None:
                progress(self.n)
        block.store()
        return self

    def _apply_pulses_compiled(
        self, tables: torch.Tensor, group: torch.Tensor | None, progress: Callable[[int], object] | None
    ) -> None:
        """apply_pulses by memsim.pulse_kernel, COMPILED_CHUNK cells per call; one seed from the generator per
        call of apply_pulses, the cells' streams told apart by their index. The loop checks no index, so the
        groups are checked here (the torch path's indexing raises by itself)."""
        if group is not None and group.numel() and not 0 <= int(group.min()) <= int(group.max()) < tables.shape[1]:
            raise ValueError(
                f"group must index the {tables.shape[1]} voltage columns, got values from {int(group.min())} "
                f"to {int(group.max())}"
            )
        s, p = self.state, self.params
        seed = np.uint64(int(torch.randint(2**62, (), generator=self.generator)))
        scalars = np.array([p.umax, p.eta, p.g_llrs, p.g_hhrs, *(float(i) for i in self._at_umax)], np.float32)
        cells = np.empty(0, np.int64) if group is None else group.numpy()
        threads = numba.get_num_threads()
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]
        try:
            for start in range(0, self.n, COMPILED_CHUNK):
                stop = min(self.n, start + COMPILED_CHUNK)
                pulse_kernel.apply_pulses(
                    tables.numpy(),
                    cells,
                    s.history.numpy(),
                    s.mu_sigma.numpy(),
                    s.y.numpy(),
                    s.r.numpy(),
                    s.reset_threshold.numpy(),
                    s.reset_coefs.numpy(),
                    s.cycle_count.numpy(),
                    s.in_hrs.numpy(),
                    s.in_lrs.numpy(),
                    p.var_lags.numpy(),
                    p.var_noise.numpy(),
                    p.gamma.numpy(),
                    p.llrs.numpy(),
                    p.hhrs.numpy(),
                    scalars,
                    seed,
                    start,
                    stop,
                )
                if progress is not None:
                    progress((stop - start) * tables.shape[0])
        finally:
            numba.set_num_threads(threads)

    def current(self, u: torch.Tensor | float) -> torch.Tensor:
        """Noiseless current in A at u volts (scalar or per cell)."""
        return _current(self.state.r, _boundary_currents(self._voltage(u), self.params))

    def read(self, u: torch.Tensor | float = 0.2, noise: str | bool = True) -> torch.Tensor:
        """Current in A at u volts with read noise: a mode name ("physical", "paper", "none") or a bool."""
        u = self._voltage(u)
        current = _current(self.state.r, _boundary_currents(u, self.params))
        model = read_noise(noise)
        if model is None:
            return current
        return current + model.std(current, u) * self._randn(self.n)

    def read_state(self, noise: str | bool) -> torch.Tensor:
        """The state r as a read at the model's U0 sees it, with read noise (read()'s modes): the current read
        and inverted through the cell's I-V (write-verify's read); without noise, r itself."""
        if read_noise(noise) is None:
            return self.r
        u0 = torch.tensor(self.params.u0, device=self.device)
        return _r_of_current(self.read(u0, noise), _boundary_currents(u0, self.params))

    def resistance(self) -> torch.Tensor:
        """Noiseless resistance U0 / I(U0) in ohm."""
        u0 = torch.tensor(self.params.u0, device=self.device)
        return u0 / _current(self.state.r, _boundary_currents(u0, self.params))

    def _voltage(self, u: torch.Tensor | float) -> torch.Tensor:
        """Volts as float32 on our device: 0-d for one voltage (broadcast, polynomials evaluated once)."""
        u = torch.as_tensor(u, dtype=torch.float32, device=self.device)
        if u.ndim != 0 and u.shape != (self.n,):
            raise ValueError(f"voltage must be a scalar or have shape ({self.n},), got {tuple(u.shape)}")
        return u

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator, device=self.device)


def _apply_pulse(
    s: CellState, u: torch.Tensor, at_u: Curves, at_umax: Curves, innovations: torch.Tensor, p: DeviceParams
) -> None:
    """One pulse of u volts on the cells of s, updated in place, in the order of the reference.

    at_u, at_umax: the boundary currents at u and at Umax; innovations: [4, cells] normal draws.

    Selections use lerp with 0/1 weights (exact for finite values, and much faster than torch.where
    with a bool mask on the CPU); torch.where only where the unselected branch may be infinite.
    """
    set_ = ~s.in_lrs & (u <= s.y[US])
    reset = ~s.in_hrs & (u > s.reset_threshold)
    full_reset = reset & (u >= p.umax)
    new_cycle = s.in_lrs & reset

    set_w = set_.float()
    s.r.lerp_(r_of_resistance(s.y[LRS], p), set_w)
    s.in_lrs |= set_
    s.in_hrs &= ~set_
    s.reset_threshold.lerp_(s.y[UR], set_w)

    _next_cycle(s, new_cycle.float(), innovations, p)

    # Transition curve from (UR, I(UR)) in the current state to the new cycle's HRS at Umax. Cells not
    # starting a curve may divide by zero here (UR = Umax after a full RESET).
    i_start = _current(s.r, _boundary_currents(s.reset_threshold, p))
    i_end = _current(r_of_resistance(s.y[HRS], p), at_umax)
    a = (i_start - i_end) / torch.abs(p.umax - s.reset_threshold) ** p.eta
    torch.where(new_cycle & ~full_reset, torch.stack((a, i_end)), s.reset_coefs, out=s.reset_coefs)

    s.in_lrs &= ~reset
    s.reset_threshold.lerp_(u.expand_as(s.reset_threshold), reset.float())

    # A partial RESET moves r along the curve; inverting it divides by zero at 0 V.
    i_transition = s.reset_coefs[0] * torch.abs(p.umax - u) ** p.eta + s.reset_coefs[1]
    torch.where(reset & ~full_reset, _r_of_current(i_transition, at_u), s.r, out=s.r)

    s.in_hrs |= full_reset
    s.r.lerp_(r_of_resistance(s.y[HRS], p), full_reset.float())


def _pulse_tables(voltages: torch.Tensor, p: DeviceParams) -> torch.Tensor:
    """[pulses, groups, 6]: per pulse and group, u, whether a RESET there is partial (u < Umax; 1 or 0),
    |Umax - u|^eta, the boundary currents at u, and the RESET bound it leaves (u, or NEVER after a full RESET):
    computed once per voltage rather than once per cell, with _apply_pulse's operations."""
    partial = voltages < p.umax
    i_llrs, i_hhrs = _boundary_currents(voltages, p)
    columns = (
        voltages,
        partial.float(),
        torch.abs(p.umax - voltages) ** p.eta,
        i_llrs,
        i_hhrs,
        torch.where(partial, voltages, NEVER),
    )
    return torch.stack(columns, -1)


class _SwitchingBlock:
    """Cells of a CellArray as apply_pulses works on them: views of their state, updated in place, plus each
    cell's SET and RESET bounds (which stand for in_lrs and in_hrs until store()), and, from the first new
    cycle on, a row-major copy of their device parameters (a new cycle reads a cell's 8 in one row)."""

    def __init__(self, state: CellState, params: DeviceParams, at_umax: Curves):
        self.state, self.p, self.at_umax = state, params, at_umax
        self.set_bound = torch.where(state.in_lrs, -NEVER, state.y[US])
        self.reset_bound = torch.where(state.in_hrs, NEVER, state.reset_threshold)
        self.boundary = _stacked(params.llrs, params.hhrs)
        self.mu_sigma: torch.Tensor | None = None

    def store(self) -> None:
        """Write the states that the bounds stand for back into the cells."""
        self.state.in_lrs.copy_(self.set_bound == -NEVER)
        self.state.in_hrs.copy_(self.reset_bound == NEVER)

    def pulse(
        self, volts: torch.Tensor, table: torch.Tensor, group: torch.Tensor | None, generator: torch.Generator | None
    ) -> None:
        """One pulse: volts [groups] and their _pulse_tables() rows [groups, 6], group [n] (None: one group).
        In _apply_pulse's order: SET, then the new cycles, then every RESET (the new cycles' with the new HRS)."""
        u = volts[0] if group is None else volts
        set_cells, reset_cells, new_cycle = _switching_cells(u, group, self.set_bound, self.reset_bound)
        if set_cells.numel():
            self._set(set_cells)
        if new_cycle.numel():
            self._start_cycles(new_cycle, _per_cell(table, group, new_cycle)[:, PARTIAL] > 0, generator)
        if reset_cells.numel():
            self._reset(reset_cells, _per_cell(table, group, reset_cells))

    def _set(self, cells: torch.Tensor) -> None:
        """SET: r jumps to the cycle's LRS, and the cycle's UR becomes the RESET threshold."""
        s = self.state
        ur = s.y[UR].index_select(0, cells)
        s.r.index_copy_(0, cells, r_of_resistance(s.y[LRS].index_select(0, cells), self.p))
        s.reset_threshold.index_copy_(0, cells, ur)
        self.reset_bound.index_copy_(0, cells, ur)
        self.set_bound.index_fill_(0, cells, -NEVER)

    def _start_cycles(self, cells: torch.Tensor, partial: torch.Tensor, generator: torch.Generator | None) -> None:
        """Cells leaving LRS: their next VAR vector, shifted into the history, the new cycle's features, and
        (where the RESET is partial) the transition curve from their RESET threshold to the new HRS at Umax;
        the rest of their RESET follows in _reset."""
        s, p = self.state, self.p
        if self.mu_sigma is None:
            self.mu_sigma = s.mu_sigma.T.contiguous()  # [n, 8]
        innovations = torch.empty(N_FEATURES, cells.numel(), device=p.device).normal_(generator=generator)
        # the history and, after it, the next vector: its last 4p columns are the shifted history
        rows = torch.empty(cells.numel(), s.history.shape[1] + N_FEATURES, device=p.device)
        history = torch.index_select(s.history, 0, cells, out=rows[:, :-N_FEATURES])
        x = torch.addmm(p.var_noise @ innovations, p.var_lags, history.T)  # [4, cells]
        rows[:, -N_FEATURES:] = x.T
        s.history.index_copy_(0, cells, rows[:, N_FEATURES:])
        s.cycle_count.index_add_(0, cells, torch.ones_like(cells, dtype=torch.int32))
        y = _features(x, self.mu_sigma.index_select(0, cells).T, p)
        s.y.index_copy_(1, cells, y)
        threshold = s.reset_threshold.index_select(0, cells)
        i_start = _current(s.r.index_select(0, cells), _stacked_values(self.boundary, threshold))
        i_end = _current(r_of_resistance(y[HRS], p), self.at_umax)
        a = (i_start - i_end) / torch.abs(p.umax - threshold) ** p.eta
        coefs = torch.where(partial, torch.stack((a, i_end)), s.reset_coefs.index_select(1, cells))
        s.reset_coefs.index_copy_(1, cells, coefs)

    def _reset(self, cells: torch.Tensor, pulse: torch.Tensor) -> None:
        """RESET at u (pulse: the cells' _pulse_tables() rows): partial, r moves along the transition curve to
        the RESET threshold u; full (u >= Umax), r reaches the cycle's HRS and the cell is in HRS."""
        s = self.state
        coefs = s.reset_coefs.index_select(1, cells)
        i_transition = coefs[0] * pulse[:, DISTANCE] + coefs[1]
        r_partial = _r_of_current(i_transition, (pulse[:, LLRS_AT_U], pulse[:, HHRS_AT_U]))
        r_full = r_of_resistance(s.y[HRS].index_select(0, cells), self.p)
        s.r.index_copy_(0, cells, torch.where(pulse[:, PARTIAL] > 0, r_partial, r_full))
        s.reset_threshold.index_copy_(0, cells, pulse[:, VOLTS])
        self.reset_bound.index_copy_(0, cells, pulse[:, RESET_BOUND_AFTER])
        self.set_bound.index_copy_(0, cells, s.y[US].index_select(0, cells))


def _switching_cells(
    u: torch.Tensor, group: torch.Tensor | None, set_bound: torch.Tensor, reset_bound: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The indices of the cells a pulse SETs, RESETs, and makes start a new cycle (RESETs from LRS), in
    increasing order: u volts (0-d), or per group (u [groups] with the cells' group [n]). One host
    synchronization in all on CUDA: the three counts read at once, then nonzero_static of known size
    (torch.nonzero synchronizes once per call)."""
    volts = u if group is None else u.index_select(0, group)
    can_reset = volts > reset_bound
    masks = (volts <= set_bound, can_reset, can_reset & (set_bound == -NEVER))
    counts = torch.stack([mask.sum() for mask in masks]).tolist()
    set_cells, reset_cells, new_cycle = (
        torch.nonzero_static(mask, size=count).squeeze(1) for mask, count in zip(masks, counts, strict=True)
    )
    return set_cells, reset_cells, new_cycle


def _per_cell(table: torch.Tensor, group: torch.Tensor | None, cells: torch.Tensor) -> torch.Tensor:
    """The pulse's _pulse_tables() rows of some cells, [cells, 6]."""
    if group is None:
        return table[0].expand(cells.numel(), -1)
    return table.index_select(0, group.index_select(0, cells))


def _stacked(*polynomials: torch.Tensor) -> torch.Tensor:
    """Polynomials (highest power first) as the columns of one [degree + 1, count] matrix, the shorter ones padded
    with leading zeros, for _stacked_values."""
    length = max(poly.numel() for poly in polynomials)
    return torch.stack([torch.nn.functional.pad(poly, (length - poly.numel(), 0)) for poly in polynomials], 1)


def _stacked_values(coefficients: torch.Tensor, x: torch.Tensor) -> Curves:
    """The values at x of the polynomials of _stacked(), by polyval's Horner steps in one buffer [count, x]: the
    same numbers as polyval of each (a leading zero gives 0 * x + c = c), half the tensor operations."""
    value = coefficients[0][:, None].expand(-1, x.numel()).clone()
    for c in coefficients[1:]:
        value.mul_(x).add_(c[:, None])
    return value[0], value[1]


def _next_cycle(s: CellState, weight: torch.Tensor, innovations: torch.Tensor, p: DeviceParams) -> None:
    """Start a new cycle where weight is 1: the next VAR vector, shifted into the history, and its features."""
    x = p.var_noise @ innovations + (s.history @ p.var_lags.T).T  # [4, cells]
    w = weight[:, None]
    s.history[:, :-N_FEATURES] = torch.lerp(s.history[:, :-N_FEATURES], s.history[:, N_FEATURES:], w)
    s.history[:, -N_FEATURES:].lerp_(x.T, w)
    s.cycle_count += weight.to(torch.int32)
    s.y.lerp_(_features(x, s.mu_sigma, p), weight)


def _features(
    x: torch.Tensor, mu_sigma: torch.Tensor, p: DeviceParams, out: torch.Tensor | None = None
) -> torch.Tensor:
    """y = mu + sigma * Gamma(x), with the HRS feature from log10 ohm to ohm (into `out` if given)."""
    return _transform(x, mu_sigma, p.gamma, [f == HRS for f in range(N_FEATURES)], out)


def _transform(
    x: torch.Tensor, mu_sigma: torch.Tensor, gamma: torch.Tensor, in_log10: list[bool], out: torch.Tensor | None = None
) -> torch.Tensor:
    """y = mu + sigma * Gamma(x) for F features (x [F, n], mu_sigma [2F, n]: mu, then sigma; gamma [F, deg+1]),
    the features marked in_log10 from log10 ohm to ohm."""
    features = x.shape[0]
    transformed = torch.zeros_like(x)
    for column in gamma.T:
        transformed.mul_(x).add_(column[:, None])
    y = torch.addcmul(mu_sigma[:features], mu_sigma[features:], transformed, out=out)
    for row, log10 in enumerate(in_log10):
        if log10:
            torch.pow(10, y[row], out=y[row])
    return y


def partial_reset(
    r: torch.Tensor, reset_threshold: torch.Tensor, next_hrs: torch.Tensor, u: torch.Tensor, p: DeviceParams
) -> torch.Tensor:
    """The state after one partial RESET at u volts (reset_threshold < u < Umax) of cells in LRS at state r whose
    RESET begins at reset_threshold: r moves along the transition curve I = a |Umax - U|^eta + c from the cell's
    current at its threshold to its next cycle's HRS (next_hrs, ohm) at Umax, as _apply_pulse's partial RESET."""
    i_start = _current(r, _boundary_currents(reset_threshold, p))
    i_end = _current(r_of_resistance(next_hrs, p), _boundary_currents(torch.tensor(p.umax, device=r.device), p))
    a = (i_start - i_end) / torch.abs(p.umax - reset_threshold) ** p.eta
    return _r_of_current(a * torch.abs(p.umax - u) ** p.eta + i_end, _boundary_currents(u, p))


def r_of_resistance(resistance: torch.Tensor, p: DeviceParams) -> torch.Tensor:
    return (p.g_llrs - 1 / resistance) / (p.g_llrs - p.g_hhrs)


Curves = tuple[torch.Tensor, torch.Tensor]


def _boundary_currents(u: torch.Tensor, p: DeviceParams) -> Curves:
    """Currents of the two boundary states at u volts: (LLRS, HHRS)."""
    return polyval(p.llrs, u), polyval(p.hhrs, u)


def _r_of_current(current: torch.Tensor, at_u: Curves) -> torch.Tensor:
    """The r whose I-V curve passes through (u, current)."""
    i_llrs, i_hhrs = at_u
    return (current - i_llrs) / (i_hhrs - i_llrs)


def _current(r: torch.Tensor, at_u: Curves) -> torch.Tensor:
    """The I-V mixture of the two boundary states at state r."""
    i_llrs, i_hhrs = at_u
    return (1 - r) * i_llrs + r * i_hhrs
