"""CellArray.apply_pulses on the CPU as one compiled loop per cell (numba): every pulse of a cell, its switching
and its new cycles, with the cell's state in registers.

Why a compiled loop: pre-cycling (the paper's protocol, 50 pulses of one uniform [-2, 2] V draw per array) starts a
new cycle in about 16 % of the cells on every pulse. Vectorized over the switching cells (device._SwitchingBlock,
the torch path CUDA takes), each new cycle gathers and scatters the cell's 40-float VAR history, its device
parameters and its state, and some 30 tensor operations run per pulse: on this project's 2-core machine that path
(with a numpy search and a thread per block of cells) spent 195-202 s of the paper model's 236-245 s instance
pre-cycling. Here a cell's history stays in cache while its pulses run, and only the cells' own arithmetic remains:
53-57 s (README, "What the paper's condition costs").

The physics is device._SwitchingBlock's, step for step in float32 (its docstrings say why each step is so), up to
the order of sums and fused multiply-adds (fastmath's reassoc and contract): per pulse, the SET, RESET and
new-cycle decisions from the state before the pulse; then the SET, the new cycle (the VAR step, the features, the
transition curve where the RESET is partial) and the RESET.

Random numbers: one SplitMix64 sequence per call (Steele, Lea and Flood, "Fast splittable pseudorandom number
generators", OOPSLA 2014), started from a hash of the call's seed, and split by jumping ahead: cell c draws the
sequence's words c x 2^32, c x 2^32 + 1, ..., so no two cells of a call share a word (a cell draws a few words
per pulse, far below 2^32). Normals by the ziggurat (_normal). So the result does not depend on the thread count
or on how cells are split into calls, and equals the torch path in distribution, not draw for draw
(tests/memsim/test_precycle.py: Kolmogorov-Smirnov on the cells' state after 50 and 500 pulses, the innovations'
covariance within and between cells, and cell for cell where no draw matters).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from memsim.params import N_FEATURES

# Columns of device._pulse_tables(): what a pulse of u volts does to a cell it RESETs, the same for every cell of a
# group (here, where both implementations of apply_pulses read them).
VOLTS, PARTIAL, DISTANCE, LLRS_AT_U, HHRS_AT_U, RESET_BOUND_AFTER = range(6)
# Volts beyond any pulse: the SET bound of a cell in LRS is -NEVER, the RESET bound of a cell in HRS +NEVER (finite,
# so that bounds compare and copy like any voltage).
NEVER = 1e30

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@numba.njit(inline="always")
def _mix(z: np.uint64) -> np.uint64:
    """SplitMix64's output function: a bijection of 64-bit words whose outputs pass BigCrush."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@numba.njit(inline="always")
def _uniform(state: np.uint64) -> tuple[np.uint64, float]:
    """The next state and a uniform in (0, 1) from its word's 52 high bits (m + 1/2 over 2^52: exact, never 0 or
    1)."""
    state = state + _GOLDEN
    return state, ((_mix(state) >> np.uint64(12)) + 0.5) * (1.0 / 4503599627370496.0)


@numba.njit(inline="always")
def _stream(seed: np.uint64, cell: int) -> np.uint64:
    """The state before cell's first draw in a call seeded `seed`: its sequence's position cell x 2^32."""
    return _mix(seed) + (np.uint64(cell) << np.uint64(32)) * _GOLDEN


def _ziggurat_tables(layers: int, tail_start: float, area: float) -> tuple[np.ndarray, np.ndarray]:
    """The layer edges x[0..layers] of the ziggurat of exp(-x^2 / 2) (x[0] the base layer's equivalent width,
    x[1] the tail's start, x[layers] = 0; every layer of area `area`) and, per layer, the part of it inside the
    curve for sure, x[i + 1] / x[i]."""
    edges = np.empty(layers + 1)
    edges[0], edges[1] = area / math.exp(-0.5 * tail_start**2), tail_start
    for i in range(2, layers):
        edges[i] = math.sqrt(-2.0 * math.log(area / edges[i - 1] + math.exp(-0.5 * edges[i - 1] ** 2)))
    edges[layers] = 0.0
    return edges, edges[1:] / edges[:-1]


# Marsaglia and Tsang's 128 layers ("The ziggurat method for generating random variables", J. Stat. Software 5,
# 2000), with Doornik's independent layer bits ("An improved ziggurat method to generate normal random samples",
# 2005): 97 % of the normals cost one 64-bit word, a table lookup and a compare (the mean of ZIGGURAT_INSIDE).
ZIGGURAT_TAIL, ZIGGURAT_AREA = 3.442619855899, 9.91256303526217e-3
ZIGGURAT_EDGES, ZIGGURAT_INSIDE = _ziggurat_tables(128, ZIGGURAT_TAIL, ZIGGURAT_AREA)


@numba.njit(inline="always")
def _normal(state: np.uint64) -> tuple[np.uint64, float]:
    """The next state and a standard normal, by the ziggurat: a layer from the word's 7 low bits, a signed position
    in it from its 52 high ones; the wedges and the tail (Marsaglia's exact tail method) by rejection."""
    while True:
        state = state + _GOLDEN
        bits = _mix(state)
        layer = bits & np.uint64(127)
        u = ((bits >> np.uint64(12)) + 0.5) * (2.0 / 4503599627370496.0) - 1.0
        if abs(u) < ZIGGURAT_INSIDE[layer]:
            return state, u * ZIGGURAT_EDGES[layer]
        if layer == 0:
            while True:
                state, a = _uniform(state)
                state, b = _uniform(state)
                x = np.log(a) / ZIGGURAT_TAIL
                if -2.0 * np.log(b) >= x * x:
                    return state, (x - ZIGGURAT_TAIL) if u < 0 else (ZIGGURAT_TAIL - x)
        x = u * ZIGGURAT_EDGES[layer]
        outer = np.exp(-0.5 * (ZIGGURAT_EDGES[layer] ** 2 - x * x))
        inner = np.exp(-0.5 * (ZIGGURAT_EDGES[layer + 1] ** 2 - x * x))
        state, a = _uniform(state)
        if inner + a * (outer - inner) < 1.0:
            return state, x


@numba.njit
def normals(seed: np.uint64, cell: int, count: int) -> np.ndarray:
    """`count` normals of cell's stream in a call seeded `seed` (the kernel's generator, for its tests)."""
    out = np.empty(count)
    state = _stream(seed, cell)
    for k in range(count):
        state, out[k] = _normal(state)
    return out


@numba.njit(inline="always")
def _horner(coefficients: np.ndarray, x: np.float32) -> np.float32:
    value = coefficients[0]
    for k in range(1, coefficients.shape[0]):
        value = value * x + coefficients[k]
    return value


@numba.njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
def apply_pulses(
    tables: np.ndarray,  # [pulses, groups, 6] float32: device._pulse_tables()
    group: np.ndarray,  # [n] int64, or [0] for one group
    history: np.ndarray,  # [n, 4p] float32
    mu_sigma: np.ndarray,  # [8, n] float32
    y: np.ndarray,  # [4, n] float32
    r: np.ndarray,  # [n] float32
    reset_threshold: np.ndarray,  # [n] float32
    reset_coefs: np.ndarray,  # [2, n] float32
    cycle_count: np.ndarray,  # [n] int32
    in_hrs: np.ndarray,  # [n] bool
    in_lrs: np.ndarray,  # [n] bool
    var_lags: np.ndarray,  # [4, 4p] float32
    var_noise: np.ndarray,  # [4, 4] float32
    gamma: np.ndarray,  # [4, degree + 1] float32
    llrs: np.ndarray,  # boundary polynomials, highest power first, float32
    hhrs: np.ndarray,
    scalars: np.ndarray,  # float32: umax, eta, g_llrs, g_hhrs, I_LLRS(umax), I_HHRS(umax)
    seed: np.uint64,
    start: int,
    stop: int,
) -> None:
    """Every pulse of `tables` on cells start..stop, in place (cell indices also number the random streams)."""
    umax, eta, g_llrs, g_hhrs, llrs_at_umax, hhrs_at_umax = (
        scalars[0],
        scalars[1],
        scalars[2],
        scalars[3],
        scalars[4],
        scalars[5],
    )
    g_span = g_llrs - g_hhrs
    never = np.float32(NEVER)
    one = np.float32(1.0)
    ten = np.float32(10.0)
    width = history.shape[1]
    pulses = tables.shape[0]
    grouped = group.shape[0] > 0
    for cell in numba.prange(start, stop):
        state = _stream(seed, cell)
        g = group[cell] if grouped else 0
        lrs = in_lrs[cell]
        hrs = in_hrs[cell]
        set_bound = -never if lrs else y[1, cell]
        reset_bound = never if hrs else reset_threshold[cell]
        cell_r = r[cell]
        threshold = reset_threshold[cell]
        coef_a = reset_coefs[0, cell]
        coef_c = reset_coefs[1, cell]
        for k in range(pulses):
            u = tables[k, g, VOLTS]
            sets = u <= set_bound
            resets = u > reset_bound
            if not (sets or resets):
                continue
            new_cycle = resets and set_bound == -never
            if sets:
                cell_r = (g_llrs - one / y[2, cell]) / g_span
                threshold = y[3, cell]
                reset_bound = threshold
                set_bound = -never
            if new_cycle:
                state, n0 = _normal(state)
                state, n1 = _normal(state)
                state, n2 = _normal(state)
                state, n3 = _normal(state)
                e0, e1, e2, e3 = np.float32(n0), np.float32(n1), np.float32(n2), np.float32(n3)
                x0 = var_noise[0, 0] * e0 + var_noise[0, 1] * e1 + var_noise[0, 2] * e2 + var_noise[0, 3] * e3
                x1 = var_noise[1, 0] * e0 + var_noise[1, 1] * e1 + var_noise[1, 2] * e2 + var_noise[1, 3] * e3
                x2 = var_noise[2, 0] * e0 + var_noise[2, 1] * e1 + var_noise[2, 2] * e2 + var_noise[2, 3] * e3
                x3 = var_noise[3, 0] * e0 + var_noise[3, 1] * e1 + var_noise[3, 2] * e2 + var_noise[3, 3] * e3
                for j in range(width):
                    h = history[cell, j]
                    x0 += var_lags[0, j] * h
                    x1 += var_lags[1, j] * h
                    x2 += var_lags[2, j] * h
                    x3 += var_lags[3, j] * h
                for j in range(width - N_FEATURES):
                    history[cell, j] = history[cell, j + N_FEATURES]
                history[cell, width - 4] = x0
                history[cell, width - 3] = x1
                history[cell, width - 2] = x2
                history[cell, width - 1] = x3
                y[0, cell] = ten ** (mu_sigma[0, cell] + mu_sigma[4, cell] * _horner(gamma[0], x0))
                y[1, cell] = mu_sigma[1, cell] + mu_sigma[5, cell] * _horner(gamma[1], x1)
                y[2, cell] = mu_sigma[2, cell] + mu_sigma[6, cell] * _horner(gamma[2], x2)
                y[3, cell] = mu_sigma[3, cell] + mu_sigma[7, cell] * _horner(gamma[3], x3)
                cycle_count[cell] += 1
                if tables[k, g, PARTIAL] > 0:
                    i_llrs = _horner(llrs, threshold)
                    i_hhrs = _horner(hhrs, threshold)
                    i_start = (one - cell_r) * i_llrs + cell_r * i_hhrs
                    r_hrs = (g_llrs - one / y[0, cell]) / g_span
                    i_end = (one - r_hrs) * llrs_at_umax + r_hrs * hhrs_at_umax
                    coef_a = (i_start - i_end) / np.abs(umax - threshold) ** eta
                    coef_c = i_end
            if resets:
                if tables[k, g, PARTIAL] > 0:
                    i_transition = coef_a * tables[k, g, DISTANCE] + coef_c
                    i_llrs = tables[k, g, LLRS_AT_U]
                    cell_r = (i_transition - i_llrs) / (tables[k, g, HHRS_AT_U] - i_llrs)
                else:
                    cell_r = (g_llrs - one / y[0, cell]) / g_span
                threshold = u
                reset_bound = tables[k, g, RESET_BOUND_AFTER]
                set_bound = y[1, cell]
        r[cell] = cell_r
        reset_threshold[cell] = threshold
        reset_coefs[0, cell] = coef_a
        reset_coefs[1, cell] = coef_c
        in_lrs[cell] = set_bound == -never
        in_hrs[cell] = reset_bound == never
