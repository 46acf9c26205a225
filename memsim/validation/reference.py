"""The reference numpy `synaptogen` package behind the CellArray interface, for side-by-side checks.

Two defects of the numpy port are corrected on construction so that it follows the Julia original,
as memsim does: fresh cells start in HRS (the port leaves them in neither state, with undefined reset
coefficients), and the RESET threshold is a copy, not a view into the feature array (a RESET pulse
would otherwise overwrite the cycle's UR feature).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from synaptogen import synaptogen as reference


def seed_reference(seed: int) -> None:
    """Make the reference's draws reproducible: it draws from one unseeded module-level generator."""
    rng = np.random.default_rng(seed)
    reference.randn = partial(rng.standard_normal, dtype=np.float32)
    reference.rand = partial(rng.random, dtype=np.float32)


class ReferenceCells:
    def __init__(self, n: int, p: int = 10, params_path: str | None = None):
        path = params_path or reference.default_param_fp
        self.params = reference.load_params(path, p=p)
        self.cells = reference.CellArrayCPU(n, self.params)
        self.cells.inHRS[:] = True
        self.cells.UR = self.cells.UR.copy()
        self.cells.resetCoefs[:] = 0
        self.n = n

    def apply_voltage(self, u) -> ReferenceCells:
        if isinstance(u, torch.Tensor):
            u = u.cpu().numpy()
        reference.applyVoltage(self.cells, u)
        return self

    def read(self, u: float = 0.2, noise: bool = True) -> torch.Tensor:
        if noise:
            return torch.from_numpy(reference.Iread(self.cells, u).copy())
        return torch.from_numpy(reference.I(self.cells, np.float32(u)))

    def resistance(self) -> torch.Tensor:
        u0 = self.params.U0
        return torch.from_numpy(u0 / reference.I(self.cells, u0))

    @property
    def us(self) -> torch.Tensor:
        return torch.from_numpy(reference.US(self.cells).copy())

    @property
    def ur(self) -> torch.Tensor:
        return torch.from_numpy(reference.UR(self.cells).copy())

    def state_bytes(self) -> int:
        return sum(v.nbytes for v in vars(self.cells).values() if isinstance(v, np.ndarray))
