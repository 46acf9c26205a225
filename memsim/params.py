"""Synaptogen device parameters: the fitted model read from its JSON file into float32 tensors.

The default file is the one shipped inside the `synaptogen` package (fitted to ~3 million measured
switching cycles); it is located through importlib.resources, never copied.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from importlib import resources
from pathlib import Path

import torch

FEATURES = ("HRS", "US", "LRS", "UR")  # row order of every feature vector
N_FEATURES = len(FEATURES)
MAX_VAR_ORDER = 10


class ParamsError(ValueError):
    """A parameter file that cannot be used; the message names the file and the entry."""


@dataclasses.dataclass(frozen=True)
class DeviceParams:
    """Everything the cell model needs, as float32 tensors on one device.

    Polynomials are stored highest power first (numpy.polyval order).
    """

    path: str
    var_order: int
    umax: float  # highest RESET voltage of the measurement: a pulse >= umax resets fully
    u0: float  # voltage that defines resistance, R = u0 / I(u0)
    eta: float  # curvature of the partial-reset transition curve
    hhrs: torch.Tensor  # I-V polynomial of the highest-resistance boundary state (r = 1)
    llrs: torch.Tensor  # I-V polynomial of the lowest-resistance boundary state (r = 0)
    gamma: torch.Tensor  # [4, deg+1] per-feature non-linear transform polynomials
    gmm_weights: torch.Tensor  # [K] device-to-device mixture weights
    gmm_means: torch.Tensor  # [K, 8] means of (mu, sigma) of the cycle-to-cycle process
    gmm_chol: torch.Tensor  # [K, 8, 8] lower Cholesky factors of the mixture covariances
    var_noise: torch.Tensor  # [4, 4] VAR innovation matrix (L)
    var_lags: torch.Tensor  # [4, 4p] VAR lag matrices [A_p ... A_1]: oldest lag first

    g_hhrs: float  # chord conductance of the HHRS boundary at u0
    g_llrs: float  # chord conductance of the LLRS boundary at u0

    @property
    def device(self) -> torch.device:
        return self.hhrs.device

    def to(self, device: torch.device | str | None) -> DeviceParams:
        if device is None or torch.device(device) == self.device:
            return self
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)

    def without_device_variation(self) -> DeviceParams:
        """Every device drawn at the mixture's mean (mu, sigma): one component, no spread (an ablation)."""
        weights = self.gmm_weights / self.gmm_weights.sum()
        mean = (weights[:, None] * self.gmm_means).sum(0, keepdim=True)
        return dataclasses.replace(
            self, gmm_weights=torch.ones_like(weights[:1]), gmm_means=mean, gmm_chol=torch.zeros_like(self.gmm_chol[:1])
        )

    def without_cycle_variation(self) -> DeviceParams:
        """A VAR process that stays at 0: each device repeats the cycle mu + sigma Gamma(0) (an ablation)."""
        return dataclasses.replace(
            self, var_noise=torch.zeros_like(self.var_noise), var_lags=torch.zeros_like(self.var_lags)
        )


def polyval(coefficients: torch.Tensor, x: torch.Tensor | float) -> torch.Tensor:
    """Horner evaluation, highest power first, in the dtype of `coefficients`, in place on one buffer: with a fresh
    tensor per step, the read's row factors took a third of a stride-2 convolution's read (the README's speed
    section gives the profile and the command)."""
    x = torch.as_tensor(x, dtype=coefficients.dtype, device=coefficients.device)
    value = coefficients[0].expand_as(x).clone()
    for c in coefficients[1:]:
        value.mul_(x).add_(c)
    return value


def _chord_conductance(polynomial: torch.Tensor, u0: float) -> float:
    return float(polyval(polynomial, u0) / torch.tensor(u0, dtype=torch.float32))


def default_params_path() -> Path:
    """The parameter file shipped with the reference `synaptogen` package."""
    return Path(str(resources.files("synaptogen").joinpath("default_params.json")))


def load_params(path: str | Path | None = None, p: int = MAX_VAR_ORDER) -> DeviceParams:
    """Read a Synaptogen parameter JSON; `p` picks the VAR order (1..10) and its own fit `VAR_00p`."""
    if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= MAX_VAR_ORDER:
        raise ParamsError(f"VAR order p must be an integer from 1 to {MAX_VAR_ORDER}, got {p!r}")
    path = Path(path) if path is not None else default_params_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ParamsError(f"{path}: cannot read parameter file ({error.strerror or error})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ParamsError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a JSON object of named parameters")
    return _params_from_json(raw, path, p)


@functools.lru_cache(maxsize=8)
def cached_params(path: str | None = None, p: int = MAX_VAR_ORDER) -> DeviceParams:
    """load_params, read once per file and VAR order (the result is never modified)."""
    return load_params(path, p)


def _params_from_json(raw: dict, path: Path, p: int) -> DeviceParams:
    def entry(key: str, shape: tuple | None = None) -> torch.Tensor:
        if key not in raw:
            raise ParamsError(f"{path}: missing entry {key!r}")
        try:
            value = torch.tensor(raw[key], dtype=torch.float32)
        except (TypeError, ValueError):
            raise ParamsError(f"{path}: entry {key!r} is not a number or a rectangular array") from None
        if shape is not None and tuple(value.shape) != shape:
            raise ParamsError(f"{path}: entry {key!r} has shape {tuple(value.shape)}, expected {shape}")
        if not torch.isfinite(value).all():
            raise ParamsError(f"{path}: entry {key!r} holds a non-finite value")
        return value

    gamma = entry("γ")
    if gamma.ndim != 2 or gamma.shape[0] != N_FEATURES:
        raise ParamsError(f"{path}: entry 'γ' has shape {tuple(gamma.shape)}, expected ({N_FEATURES}, degree+1)")
    weights = entry("wk")
    if weights.ndim != 1 or (weights <= 0).any():
        raise ParamsError(f"{path}: entry 'wk' must be a list of positive mixture weights")
    k = weights.numel()
    width = 2 * N_FEATURES
    means = entry("μDtD", (width, k)).T.contiguous()
    # The file stores the K lower-triangular factors side by side: column block k is component k.
    chol = entry("LDtD", (width, width * k)).reshape(width, k, width).permute(1, 0, 2).contiguous()
    var_key = f"VAR_{p:03d}"
    var = entry(var_key, (N_FEATURES, N_FEATURES * (p + 1)))
    for key in ("HHRS", "LLRS"):
        if entry(key).ndim != 1:
            raise ParamsError(f"{path}: entry {key!r} must be a list of polynomial coefficients")
    u0 = float(entry("U₀", ()))
    hhrs, llrs = entry("HHRS"), entry("LLRS")
    return DeviceParams(
        path=str(path),
        var_order=p,
        umax=float(entry("Umax", ())),
        u0=u0,
        eta=float(entry("η", ())),
        g_hhrs=_chord_conductance(hhrs, u0),
        g_llrs=_chord_conductance(llrs, u0),
        hhrs=hhrs,
        llrs=llrs,
        gamma=gamma,
        gmm_weights=weights,
        gmm_means=means,
        gmm_chol=chol,
        var_noise=var[:, :N_FEATURES].contiguous(),
        var_lags=var[:, N_FEATURES:].contiguous(),
    )
