"""Relaxation after programming (memsim.relaxation) and drift compensation (MemristorLinear.relax)."""

import math

import pytest
import torch

import memsim
from memsim import relaxation
from memsim.config import CrossbarConfig
from memsim.relaxation import ONE_DAY, RELAXATION_MODELS, RelaxationModel, relax


def _layer(config: CrossbarConfig, seed: int = 0) -> memsim.MemristorLinear:
    torch.manual_seed(seed)
    linear = torch.nn.Linear(256, 64)
    return memsim.MemristorLinear.from_linear(linear, config, generator=torch.Generator().manual_seed(seed))


def test_relaxation_is_off_by_default_and_changes_nothing_before_one_second():
    assert CrossbarConfig().read_time == 0
    cells = {t: _layer(CrossbarConfig(read_time=t)).r for t in (0.0, 1.0)}
    assert torch.equal(cells[0.0], cells[1.0])
    assert not torch.equal(cells[0.0], _layer(CrossbarConfig(read_time=2.0)).r)


def _conductance_change(model: str, t: float, x: float, cells: int = 200_000) -> torch.Tensor:
    """Each cell's conductance change at t, in units of the nominal LRS, for cells all at x = g / g_LRS (ohmic
    boundary curves: g = base + r delta with base 1, delta -0.9, r_on 0, r_off 1, so g_LRS = 1 and g_HRS = 0.1)."""
    base, delta = 1.0, -0.9
    r = torch.full((cells,), (x - base) / delta)
    moved = relax(r, base, delta, 0.0, 1.0, t, RELAXATION_MODELS[model], torch.Generator().manual_seed(1))
    return (moved - r) * delta


@pytest.mark.parametrize("x", [0.4, 0.7, 1.0])  # 3.8 spreads or more above 0, where no cell is clamped
@pytest.mark.parametrize("t", [3600.0, ONE_DAY, 10 * 365 * ONE_DAY])
def test_wan2022_spread_grows_as_its_variance_linear_in_log_time(x, t):
    change = _conductance_change("wan2022", t, x)
    one_second, one_day = (
        sum(c * x**i for i, c in enumerate(coefficients))
        for coefficients in (
            relaxation._WAN_STD_1S,
            relaxation._WAN_STD_1DAY,
        )
    )
    expected = math.sqrt((one_day**2 - one_second**2) * math.log(t) / math.log(ONE_DAY)) / relaxation._WAN_G_MAX
    assert abs(float(change.mean())) < 4 * expected / math.sqrt(change.numel())  # centred: no mean shift
    assert float(change.std()) == pytest.approx(expected, rel=0.01)


def test_cmo_shifts_and_spreads_every_state_alike_in_units_of_the_window():
    t = ONE_DAY
    window = 0.9  # g_LRS - g_HRS of _conductance_change's cells, in units of g_LRS
    shift = -0.08900206 * math.log(t) / (88.19 - 9.0)
    spread = math.sqrt((0.04201137 * math.log(t) + 0.41183342) ** 2 - 0.41183342**2) / (88.19 - 9.0)
    for x in (0.2, 0.9):
        change = _conductance_change("cmo", t, x)
        assert float(change.mean()) == pytest.approx(shift * window, rel=0.02)
        assert float(change.std()) == pytest.approx(spread * window, rel=0.01)


def test_no_conductance_relaxes_below_zero():
    change = _conductance_change("wan2022", 10 * 365 * ONE_DAY, 0.01)
    assert float((0.01 + change).min()) >= -1e-6  # 0, up to float32 rounding of r
    assert float(((0.01 + change) < 1e-6).float().mean()) > 0.3  # many cells would have gone below


@pytest.fixture
def proportional_drift(monkeypatch):
    """A known drift: every conductance 10 % lower at any time past 1 s, no spread."""
    monkeypatch.setitem(RELAXATION_MODELS, "minus_ten_percent", RelaxationModel(lambda x, ln_t: (-0.1 * x, 0.0), "lrs"))
    return "minus_ten_percent"


def _outputs(config: CrossbarConfig, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return _layer(config)(x)


@pytest.mark.parametrize("calibration", ["nominal", "per_column"])
@pytest.mark.parametrize("compensation", ["global", "per_column"])
def test_compensation_removes_a_known_global_drift(proportional_drift, calibration, compensation):
    exact = dict(read_noise="none", adc_precision_bits=None, adc_range_bits=None, calibration=calibration)
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(2))
    fresh = _outputs(CrossbarConfig(**exact), x)
    drifted = dict(exact, read_time=ONE_DAY, relaxation=proportional_drift)
    uncompensated = _outputs(CrossbarConfig(**drifted), x)
    compensated = _outputs(CrossbarConfig(**drifted, drift_compensation=compensation), x)

    def error(y: torch.Tensor) -> float:
        return float((y - fresh).norm() / fresh.norm())

    assert error(uncompensated) > 0.05  # the drift is there: about 10 % of the output less the bias
    assert error(compensated) < 1e-4


def test_relaxation_has_its_own_row_in_the_error_budget():
    config = CrossbarConfig(read_time=ONE_DAY)
    assert config.only("relaxation").read_time == ONE_DAY
    assert config.only("read_noise").read_time == 0
    assert "relaxation" in memsim.NON_IDEALITIES


def test_a_relaxed_layer_reads_further_from_the_digital_one_than_a_fresh_one():
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    digital = torch.nn.Linear(256, 64)(x).detach()

    def residual(config: CrossbarConfig) -> float:
        y = _outputs(config, x)
        gain = float((y * digital).sum() / digital.square().sum())
        return float((y - gain * digital).norm() / digital.norm())

    fresh, year = residual(CrossbarConfig()), residual(CrossbarConfig(read_time=365 * ONE_DAY))
    assert year > 1.05 * fresh


@pytest.mark.parametrize("field, value", [("read_time", -1.0), ("read_time", math.inf), ("relaxation", "pcm")])
def test_bad_relaxation_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"CrossbarConfig.{field}"):
        CrossbarConfig(**{field: value})
