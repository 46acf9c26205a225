"""Read noise of a memristor cell: Johnson (thermal) plus shot noise, in named modes."""

from __future__ import annotations

import dataclasses
import math

import torch

BOLTZMANN = 1.380649e-23  # J/K


@dataclasses.dataclass(frozen=True)
class ReadNoise:
    """Gaussian current noise with variance BW * (4 kB T |I/U| + 2 q |I|)."""

    bandwidth: float  # Hz
    charge: float  # C, the carrier charge of the shot-noise term
    temperature: float = 300.0  # K

    def variance_per_siemens(self, voltage: torch.Tensor | float) -> torch.Tensor | float:
        """Noise variance divided by the cell's chord conductance |I/U|: BW (4 kB T + 2 q |U|).

        Linear in the conductance, so the variance of a crossbar column is a matrix product."""
        thermal = 4 * BOLTZMANN * self.temperature
        if isinstance(voltage, torch.Tensor):  # in place on one buffer: an input map's temporaries are large
            return voltage.abs().mul_(2 * self.charge).add_(thermal).mul_(self.bandwidth)
        return self.bandwidth * (thermal + 2 * self.charge * abs(voltage))

    def std(self, current: torch.Tensor, voltage: torch.Tensor | float) -> torch.Tensor:
        return torch.sqrt(current.abs() / abs_safe(voltage) * self.variance_per_siemens(voltage))


def abs_safe(voltage: torch.Tensor | float) -> torch.Tensor | float:
    """|U|, with 0 V read as 1e-12 V (as the reference does) so the Johnson term stays finite."""
    if isinstance(voltage, torch.Tensor):
        return torch.where(voltage == 0, 1e-12, voltage.abs())
    return abs(voltage) or 1e-12


READ_NOISE_MODES: dict[str, ReadNoise | None] = {
    # Physical constants at a 100 MHz read bandwidth: the default.
    "physical": ReadNoise(bandwidth=1e8, charge=1.602176634e-19),
    # The constants of the paper's own simulation code (BW = 1e-8 Hz, q = e = 2.718...), which give
    # about 40x the physical noise; kept to reproduce the paper's condition.
    "paper": ReadNoise(bandwidth=1e-8, charge=math.e),
    "none": None,
}


def read_noise(mode: str | bool) -> ReadNoise | None:
    """Look a mode up by name; True means "physical" and False "none"."""
    if mode is True:
        mode = "physical"
    elif mode is False:
        mode = "none"
    if mode not in READ_NOISE_MODES:
        raise ValueError(f"unknown read noise mode {mode!r}; choose one of {sorted(READ_NOISE_MODES)}")
    return READ_NOISE_MODES[mode]
