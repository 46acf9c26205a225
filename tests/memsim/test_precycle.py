"""Pre-cycling through CellArray.apply_pulses, which computes and draws only for the cells a pulse switches (by
the compiled loop of memsim.pulse_kernel on the CPU, by torch on CUDA; both checked here), against the plain path
that computes every cell on every pulse (apply_voltage; for programming, memsim.validation.pulse_by_pulse): the
same cells in distribution, cell by cell where no draw matters.

Distributions are compared by the two-sample Kolmogorov-Smirnov statistic against its asymptotic critical value
at alpha = 1e-4 (fixed seeds: deterministic, and a false alarm of 1 in 10,000 per comparison); counts by a
two-proportion z-test at |z| < 4.5 (alpha about 7e-6).
"""

import contextlib
import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

import memsim
import memsim.device
import memsim.pulse_kernel
from memsim.crossbar import PRECYCLE_VOLTAGE, _program_by_pulses, device_params, program
from memsim.device import HRS, PARTIAL, RESET_BOUND_AFTER, UR, US, VOLTS, CellArray
from memsim.pulse_kernel import normals
from memsim.validation.pulse_by_pulse import program_pulse_by_pulse

CELLS, GROUPS = 1 << 14, 8  # per path: 8 arrays of 2,048 cells, each array one voltage per pulse
ALPHA = 1e-4


def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """sup |F_a - F_b| of the two samples' empirical distribution functions."""
    a, b = (np.sort(x.double().cpu().numpy()) for x in (a, b))
    values = np.concatenate((a, b))
    cdf_a = np.searchsorted(a, values, side="right") / a.size
    cdf_b = np.searchsorted(b, values, side="right") / b.size
    return float(np.abs(cdf_a - cdf_b).max())


def ks_critical(n: int, m: int, alpha: float = ALPHA) -> float:
    """The asymptotic critical value of ks_statistic for samples of n and m (conservative where values tie)."""
    return math.sqrt(-math.log(alpha / 2) / 2 * (n + m) / (n * m))


def z_score(count_a: int, count_b: int, n: int) -> float:
    """Two-proportion z statistic of count_a and count_b successes, out of n each."""
    pooled = (count_a + count_b) / (2 * n)
    spread = math.sqrt(2 * pooled * (1 - pooled) / n) or 1.0
    return (count_a - count_b) / n / spread


def random_pulses(pulses: int, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's pre-cycling voltages, uniform in +-2 V per array and pulse, and each cell's array."""
    generator = torch.Generator().manual_seed(seed)
    voltages = torch.rand(pulses, GROUPS, generator=generator) * 2 * PRECYCLE_VOLTAGE - PRECYCLE_VOLTAGE
    return voltages, torch.arange(CELLS) % GROUPS


@contextlib.contextmanager
def one_thread():
    """Run the pulse-by-pulse reference in one thread, so that its time does not hang on what else runs on the
    cores: its operations on a few thousand cells each split over two OpenMP threads, which wait on each other
    many times over when another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def pulse_by_pulse(cells: CellArray, voltages: torch.Tensor, group: torch.Tensor) -> CellArray:
    with one_thread():
        for volts in voltages:
            cells.apply_voltage(volts[group])
    return cells


def observed(cells: CellArray) -> dict[str, torch.Tensor]:
    s = cells.state
    return {
        "r": s.r,
        "US": s.y[US],
        "UR": s.y[UR],
        "HRS": s.y[HRS],
        "reset threshold": s.reset_threshold,
        "cycle count": s.cycle_count.float(),
    }


IMPLEMENTATIONS = {"compiled": True, "torch": False}  # apply_pulses(compiled=...): the CPU's loop, CUDA's path


@pytest.fixture(scope="module", params=[(p, i) for i in IMPLEMENTATIONS for p in (50, 500)], ids=str)
def both_paths(request):
    """The same pulses on two independent arrays of fresh cells: pulse by pulse, and through apply_pulses."""
    pulses, implementation = request.param
    voltages, group = random_pulses(pulses)
    plain = pulse_by_pulse(CellArray(CELLS, generator=torch.Generator().manual_seed(1)), voltages, group)
    sparse = CellArray(CELLS, generator=torch.Generator().manual_seed(2))
    return plain, sparse.apply_pulses(voltages, group, compiled=IMPLEMENTATIONS[implementation])


@pytest.mark.parametrize("quantity", ["r", "US", "UR", "HRS", "reset threshold", "cycle count"])
def test_sparse_pulses_equal_pulse_by_pulse_in_distribution(both_paths, quantity):
    plain, sparse = (observed(cells)[quantity] for cells in both_paths)
    assert ks_statistic(plain, sparse) < ks_critical(CELLS, CELLS)


def test_sparse_pulses_leave_as_many_cells_in_lrs_and_hrs(both_paths):
    plain, sparse = (cells.state for cells in both_paths)
    for state in ("in_lrs", "in_hrs"):
        counts = [int(getattr(s, state).sum()) for s in (plain, sparse)]
        assert abs(z_score(*counts, CELLS)) < 4.5, (state, counts)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_the_distribution_test_sees_a_wrong_reset_bound(monkeypatch, implementation):
    """The comparison has power: a path whose cells, partly RESET at u volts, RESET again above u - 0.3 V (not
    only above u) fails it after 50 pulses."""
    tables = memsim.device._pulse_tables

    def too_low(voltages, params):
        table = tables(voltages, params)
        partial = table[..., PARTIAL] > 0
        table[..., RESET_BOUND_AFTER] = torch.where(partial, table[..., VOLTS] - 0.3, table[..., RESET_BOUND_AFTER])
        return table

    monkeypatch.setattr(memsim.device, "_pulse_tables", too_low)
    voltages, group = random_pulses(50)
    plain = pulse_by_pulse(CellArray(CELLS, generator=torch.Generator().manual_seed(1)), voltages, group)
    wrong = CellArray(CELLS, generator=torch.Generator().manual_seed(2))
    wrong.apply_pulses(voltages, group, compiled=IMPLEMENTATIONS[implementation])
    assert ks_statistic(plain.r, wrong.r) > 2 * ks_critical(CELLS, CELLS)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_without_cycle_variation_sparse_pulses_equal_pulse_by_pulse_cell_by_cell(device, implementation):
    """No draw matters without cycle-to-cycle variation, so the paths give the same cells: the same states and
    cycle counts, the same numbers up to the last bits of pow() and of the order of sums."""
    compiled = IMPLEMENTATIONS[implementation]
    if compiled and device != "cpu":
        pytest.skip("the compiled loop runs on the CPU")
    params = device_params(memsim.CrossbarConfig(cycle_variation=False))
    voltages, group = (t.to(device) for t in random_pulses(200))
    cells = [CellArray(CELLS, params=params, generator=torch.Generator(device).manual_seed(3)) for _ in range(2)]
    for warm_up in (-2.0, 1.2):  # start from a mix of LRS, HRS and partly RESET cells
        for c in cells:
            c.apply_voltage(torch.where(group < GROUPS // 2, warm_up, 0.0))
    plain = pulse_by_pulse(cells[0], voltages, group)
    with one_thread():
        plain.apply_voltage(2.0)
    sparse = cells[1].apply_pulses(voltages, group, compiled=compiled)
    sparse.apply_pulses(torch.tensor([[2.0]], device=device), compiled=compiled)
    for name in ("in_lrs", "in_hrs", "cycle_count", "reset_threshold"):
        assert torch.equal(getattr(plain.state, name), getattr(sparse.state, name)), name
    for name in ("r", "y", "reset_coefs", "history"):
        torch.testing.assert_close(getattr(sparse.state, name), getattr(plain.state, name), rtol=2e-6, atol=1e-7)


def test_precycled_programming_matches_the_pulse_by_pulse_reference():
    """crossbar.program's failed and read-disturbable cells agree with programming every pulse on every cell.
    A SET at -0.7 V leaves a third of the ones failed; both runs draw the same voltages and device parameters
    (one seed), so they differ only in the cycles the pulses give the cells."""
    config = memsim.CrossbarConfig(precycle_pulses=50, verify_retries=0, set_voltage=-0.7)
    contents = (torch.rand(2, 256, 2, 128, generator=torch.Generator().manual_seed(4)) < 0.4).to(torch.uint8)
    new = program(contents, config, torch.Generator().manual_seed(5))
    with one_thread():
        reference = program_pulse_by_pulse(contents, config, torch.Generator().manual_seed(5))
    ones = int(contents.sum())
    assert 0.2 * ones < reference.failed < 0.5 * ones and reference.read_disturbable > 1000
    assert abs(z_score(new.failed, reference.failed, ones)) < 4.5, (new.failed, reference.failed)
    counts = new.read_disturbable, reference.read_disturbable
    assert abs(z_score(*counts, contents.numel())) < 4.5, counts
    on = contents.bool()
    for cells in (on, ~on):
        assert ks_statistic(new.r[cells], reference.r[cells]) < ks_critical(int(cells.sum()), int(cells.sum()))


def test_neither_threads_nor_chunks_change_the_compiled_loops_cells(monkeypatch):
    """Each cell draws from a stream of its own, so the compiled loop gives the same cells on 1 or 2 threads and
    in calls of any number of cells."""
    voltages, group = random_pulses(30)
    threads = torch.get_num_threads()
    states = []
    try:
        for count, chunk in ((1, 1 << 16), (2, 1 << 16), (2, 3000)):
            monkeypatch.setattr(memsim.device, "COMPILED_CHUNK", chunk)
            torch.set_num_threads(count)
            states.append(CellArray(CELLS, generator=torch.Generator().manual_seed(8)).apply_pulses(voltages, group))
    finally:
        torch.set_num_threads(threads)
    for other in states[1:]:
        for name, value in vars(states[0].state).items():
            assert torch.equal(value, getattr(other.state, name)), name


def test_the_compiled_loops_normals_are_standard_normal():
    """The ziggurat's normals (memsim.pulse_kernel): its top layer has the others' area (the tail start and the
    area fit each other), mean, variance, skew and kurtosis within 4.5 standard errors, the Kolmogorov-Smirnov
    distance to the normal CDF below its critical value, and as many normals beyond the base layer's start and
    beyond 4 and 4.5 as there should be (the tail's shape)."""
    top = memsim.pulse_kernel.ZIGGURAT_EDGES[-2]
    assert top * (1 - math.exp(-0.5 * top**2)) == pytest.approx(memsim.pulse_kernel.ZIGGURAT_AREA, rel=1e-6)
    n = 1 << 22
    z = torch.from_numpy(normals(np.uint64(11), 5, n))
    for moment, expected, variance in ((1, 0.0, 1.0), (2, 1.0, 2.0), (3, 0.0, 15.0), (4, 3.0, 96.0)):
        assert abs(float((z**moment).mean()) - expected) < 4.5 * math.sqrt(variance / n), moment
    cdf = 0.5 * (1 + torch.erf(z.sort().values / math.sqrt(2)))
    steps = torch.arange(n + 1, dtype=torch.float64) / n
    distance = float(torch.maximum(steps[1:] - cdf, cdf - steps[:-1]).max())
    assert distance < math.sqrt(-math.log(ALPHA / 2) / (2 * n))
    for beyond in (memsim.pulse_kernel.ZIGGURAT_TAIL, 4.0, 4.5):
        expected = n * math.erfc(beyond / math.sqrt(2))
        assert abs(int((z.abs() > beyond).sum()) - expected) < 4.5 * math.sqrt(expected), beyond


def test_the_compiled_loop_draws_independent_standard_innovations_for_every_cell():
    """Without the VAR's lags a new cycle's vector is var_noise @ e, so e comes back from the history: standard
    normal, uncorrelated within a cell and with the next cell's (which would share shifted draws if the streams
    overlapped)."""
    params = memsim.device.cached_params()
    params = dataclasses.replace(params, var_lags=torch.zeros_like(params.var_lags))
    n = 1 << 16
    cells = CellArray(n, params=params, generator=torch.Generator().manual_seed(12))
    cells.apply_pulses(torch.tensor([[-2.0], [2.0]]))  # SET, then RESET from LRS: one new cycle each
    started = cells.state.cycle_count == 1
    assert int(started.sum()) > 0.99 * n
    e = torch.linalg.solve(params.var_noise.double(), cells.state.history[:, -4:].double().T)[:, started]
    count = e.shape[1]
    assert float(e.mean(1).abs().max()) < 4.5 / math.sqrt(count)
    covariance = e @ e.T / count
    assert float((covariance.diagonal() - 1).abs().max()) < 4.5 * math.sqrt(2 / count)
    assert float((covariance - torch.diag(covariance.diagonal())).abs().max()) < 4.5 / math.sqrt(count)
    neighbours = e[:, :-1] @ e[:, 1:].T / (count - 1)
    assert float(neighbours.abs().max()) < 4.5 / math.sqrt(count)


def test_the_compiled_loop_takes_the_vars_lags_in_order():
    """Cells at a stationary cycle have whole histories; with the innovations' factor set to 0 (after they are
    drawn) no draw matters, so the compiled loop and pulse-by-pulse cells agree cell by cell, the VAR's lags
    included: at most a few cells in a thousand whose SET threshold lies within rounding of a pulse may differ."""
    params = memsim.device.cached_params()
    cells = [CellArray(4096, generator=torch.Generator().manual_seed(13), stationary=True) for _ in range(2)]
    for c in cells:
        c.params = dataclasses.replace(params, var_noise=torch.zeros_like(params.var_noise))
    voltages, _ = random_pulses(30)
    group = torch.arange(4096) % GROUPS
    plain = pulse_by_pulse(cells[0], voltages, group)
    compiled = cells[1].apply_pulses(voltages, group, compiled=True)
    same = (plain.state.cycle_count == compiled.state.cycle_count) & (plain.state.in_lrs == compiled.state.in_lrs)
    assert int((~same).sum()) <= 4 and int(compiled.state.cycle_count.sum()) > 4096 * 4
    for name in ("r", "history"):
        torch.testing.assert_close(getattr(compiled.state, name)[same], getattr(plain.state, name)[same])
    torch.testing.assert_close(compiled.state.y[:, same], plain.state.y[:, same])


def test_the_compiled_loop_checks_the_groups():
    cells = CellArray(10)
    for wrong in (2, -1):
        group = torch.zeros(10, dtype=torch.int64)
        group[3] = wrong
        with pytest.raises(ValueError, match="group must index the 2 voltage columns"):
            cells.apply_pulses(torch.zeros(3, 2), group, compiled=True)


def test_the_compiled_loop_refuses_cuda_cells():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cells = CellArray(10, device="cuda")
    with pytest.raises(ValueError, match="runs on the CPU"):
        cells.apply_pulses(torch.zeros(3, 1), compiled=True)


def test_voltages_and_groups_are_checked():
    cells = CellArray(10)
    with pytest.raises(ValueError, match="voltages must be"):
        cells.apply_pulses(torch.zeros(3))
    with pytest.raises(ValueError, match="group must be"):
        cells.apply_pulses(torch.zeros(3, 2), torch.zeros(10, dtype=torch.int32))


def test_programming_reports_every_precycling_pulse_and_each_layer_without_changing_them():
    config = memsim.CrossbarConfig(precycle_pulses=20, verify_retries=0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    events: list[memsim.ProgrammingProgress] = []
    timer = memsim.ProgrammingTimer(then=events.append)
    chip = memsim.convert(copy.deepcopy(model), config, torch.Generator().manual_seed(0), progress=timer)
    layers = [e for e in events if e.phase == "program"]
    assert [(e.layer, e.done, e.total) for e in layers] == [("0", 1, 2), ("2", 2, 2)]
    for name in ("0", "2"):
        done = [e.done for e in events if e.phase == "precycle" and e.layer == name]
        assert done == sorted(done) and done[-1] == 20
        assert all(e.total == 20 for e in events if e.phase == "precycle")
    assert 0 < timer.precycle_seconds <= timer.seconds and timer.other_seconds >= 0
    quiet = memsim.convert(copy.deepcopy(model), config, torch.Generator().manual_seed(0))
    for loud, silent in zip(chip.modules(), quiet.modules(), strict=True):
        if isinstance(loud, memsim.MemristorLinear):
            assert torch.equal(loud.r, silent.r)


def test_a_new_cycle_shifts_its_vector_into_the_history_and_takes_its_features(device):
    """A SET, then a RESET from LRS: every cell that RESETs starts one cycle, whose VAR vector joins the end of
    its history (the rest moving up one) and gives its features."""
    cells = CellArray(CELLS, generator=torch.Generator(device).manual_seed(9))
    cells.apply_pulses(*(t.to(device) for t in random_pulses(30)))
    before, count = cells.state.history.clone(), cells.state.cycle_count.clone()
    cells.apply_pulses(torch.tensor([[-2.0], [1.2]], device=device))
    started = cells.state.cycle_count == count + 1
    history = cells.state.history[started]
    assert int(started.sum()) > CELLS // 2
    assert torch.equal(history[:, :-4], before[started][:, 4:])
    features = memsim.device._features(history[:, -4:].T, cells.state.mu_sigma[:, started], cells.params)
    torch.testing.assert_close(cells.state.y[:, started], features)


def test_stationary_cells_are_cells_after_many_cycles_in_distribution():
    # A history drawn from the VAR's stationary distribution (memsim.device.stationary_covariance) against
    # cells cycled 200 times from their first cycle: the current cycle's four features, and the next cycle's
    # (which reads the whole drawn history). Fresh cells differ (the first cycle's LRS spread is narrower).
    n = 1 << 13
    stationary = CellArray(n, generator=torch.Generator().manual_seed(0), stationary=True)
    fresh = CellArray(n, generator=torch.Generator().manual_seed(1))
    cycled = CellArray(n, generator=torch.Generator().manual_seed(2))
    for _ in range(200):
        cycled.apply_voltage(-2.0).apply_voltage(2.0)
    for _ in range(2):
        for feature in ("hrs", "us", "lrs", "ur"):
            a, b = getattr(stationary, feature), getattr(cycled, feature)
            assert ks_statistic(a, b) < ks_critical(n, n), feature
        stationary.apply_voltage(-2.0).apply_voltage(2.0)
        cycled.apply_voltage(-2.0).apply_voltage(2.0)
    assert float(fresh.lrs.std()) < 0.93 * float(cycled.lrs.std())  # 230 against 260 ohm


def test_stationary_cells_program_alike_in_closed_form_and_pulse_by_pulse():
    # The closed form draws a stationary cycle's features from their marginals, the pulse path whole stationary
    # histories: the programmed states agree in distribution, and differ from first-cycle cells.
    contents = torch.rand(2, 128, 1, 128, generator=torch.Generator().manual_seed(0)) < 0.5
    config = memsim.CrossbarConfig(stationary_cells=True)
    closed = program(contents, config, torch.Generator().manual_seed(1)).r
    pulsed = _program_by_pulses(contents, config, torch.Generator().manual_seed(2)).r  # CellArray, pulse by pulse
    fresh = program(contents, memsim.CrossbarConfig(), torch.Generator().manual_seed(3)).r
    n = int(contents.sum())
    assert ks_statistic(closed[contents], pulsed[contents]) < ks_critical(n, n)
    assert float(fresh[contents].std()) < 0.93 * float(closed[contents].std())  # the LRS: the first cycle's narrower
