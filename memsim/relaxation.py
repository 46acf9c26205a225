"""Conductance relaxation: how programmed cells have changed when they are read `read_time` seconds later.

After programming, a filamentary ReRAM cell's conductance relaxes: each cell drifts from where write-verify left
it, and the spread of a level grows with log-time over seconds to days (Wan et al., Nature 608, 2022, Fig. 3 and
Extended Data; the relaxation data aihwkit's ReRAM noise models are fitted to). memsim draws each cell's change at
read_time once per chip (a frozen change of the programmed state, not read noise) from one of these fits, as
IBM's aihwkit ships them (aihwkit: src/aihwkit/inference/noise/reram.py; docs/sources.md):

- "wan2022" (ReRamWan2022NoiseModel; NeuRRAM's HfOx/TiOx cells, g_max 40 uS): the standard deviation of the
  conductance around its target at 1 s, 1 day and 2 days after programming, a 4th-order polynomial in g / g_max
  per time; no mean shift (the fit is centred on the target). memsim takes the variance grown after the first
  second, var(x, t) = (s_1day(x)^2 - s_1s(x)^2) ln(t / 1 s) / ln(1 day): linear in ln t, the 2-day polynomial
  (not fitted) is met within 3.5 % at every x in 0.06..1 (a spread linear in ln t instead: within 5.5 %).
- "cmo" (ReRamCMONoiseModel; IBM Zurich's CMO/HfOx cells, 9.0 to 88.19 uS in aihwkit's example 34): a mean
  shift of -0.0890 uS per unit of ln(t / 1 s) and a spread of 0.0420 ln(t / 1 s) + 0.412 uS, both independent
  of the state. memsim takes the shift and the variance grown after 1 s, (0.0420 ln t + 0.412)^2 - 0.412^2.

Scaling to the Synaptogen cell, as aihwkit scales its coefficients when a user's g_max differs from the fit's:
wan2022's conductances are fractions of g_max, here the nominal LRS (x = g / g_LRS); cmo's of its window, here
the nominal LRS minus the nominal HRS. Conductances are the chord conductances at the typical read voltage
(crossbar.typical_read_voltage); the change moves each cell's state r, so the whole I-V curve follows it.
Nothing changes before 1 s. A conductance is not let below 0 (as aihwkit clamps).

Limits: neither fit was measured on the device the Synaptogen model describes; the binary cells' HRS lies at
x of about 0.06, the low end of NeuRRAM's levels, where wan2022's polynomial has few points; and a
state-independent shift (cmo) cancels between the two arrays of a differential pair, so under it only the spread
reaches a chip's outputs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

ONE_DAY = 86400.0
RELAXATION_START = 1.0  # seconds: the fits' first time; before it no cell has changed

# aihwkit's ReRamWan2022NoiseModel: standard deviation in uS at g_max = 40 uS, coefficients of (g / g_max)^0..4
_WAN_G_MAX = 40.0
_WAN_STD_1S = (0.348, 16.030, -43.853, 45.393, -16.815)
_WAN_STD_1DAY = (0.701, 22.086, -50.773, 47.095, -16.458)
# aihwkit's ReRamCMONoiseModel (decay_dict) and the window of its example 34 (examples/34_ReRAM_inference.py:
# g_min 9.0, g_max 88.19 uS)
_CMO_WINDOW = 88.19 - 9.0
_CMO_SHIFT_PER_LN_T = -0.08900206
_CMO_STD_PER_LN_T, _CMO_STD_AT_1S = 0.04201137, 0.41183342


@dataclasses.dataclass(frozen=True)
class RelaxationModel:
    """A relaxation fit: `change(x, ln_t)` gives, for cells at x = g / g_LRS and ln(t / 1 s) >= 0, the mean shift
    and the standard deviation of their conductance change, both in units of `unit` ("lrs": the nominal LRS
    conductance; "window": the nominal LRS minus HRS)."""

    change: Callable[[torch.Tensor, float], tuple[torch.Tensor | float, torch.Tensor | float]]
    unit: str


def _polynomial(coefficients: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    """sum_i c_i x^i (lowest power first, as aihwkit lists them after reversing)."""
    value = torch.full_like(x, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        value = value * x + c
    return value


def _wan2022(x: torch.Tensor, ln_t: float) -> tuple[float, torch.Tensor]:
    grown = _polynomial(_WAN_STD_1DAY, x).square() - _polynomial(_WAN_STD_1S, x).square()
    return 0.0, grown.clamp_min(0).mul_(ln_t / math.log(ONE_DAY)).sqrt_().div_(_WAN_G_MAX)


def _cmo(x: torch.Tensor, ln_t: float) -> tuple[float, float]:
    variance = (_CMO_STD_PER_LN_T * ln_t + _CMO_STD_AT_1S) ** 2 - _CMO_STD_AT_1S**2
    return _CMO_SHIFT_PER_LN_T * ln_t / _CMO_WINDOW, math.sqrt(variance) / _CMO_WINDOW


RELAXATION_MODELS: dict[str, RelaxationModel] = {
    "wan2022": RelaxationModel(_wan2022, "lrs"),
    "cmo": RelaxationModel(_cmo, "window"),
}


def relax(
    r: torch.Tensor,
    base: float,
    delta: float,
    r_on: float,
    r_off: float,
    read_time: float,
    model: RelaxationModel,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The states r (any shape) of cells programmed at t = 0 as they read at read_time seconds: each cell's chord
    conductance g = base + r delta (at the voltage base and delta were taken at) moved by the model's shift plus its
    spread times one standard normal, r_on and r_off being the nominal LRS and HRS. A new tensor; r itself is kept
    (a chip's reference reads need its state at programming)."""
    if read_time <= RELAXATION_START:
        return r.clone()
    g = r * delta + base
    g_lrs, g_hrs = base + r_on * delta, base + r_off * delta
    shift, spread = model.change(g / g_lrs, math.log(read_time / RELAXATION_START))
    unit = g_lrs if model.unit == "lrs" else g_lrs - g_hrs
    noise = torch.randn(r.shape, generator=generator, device=r.device, dtype=r.dtype)
    g = (noise * spread + shift).mul_(unit).add_(g).clamp_min_(0)
    return (g - base) / delta
