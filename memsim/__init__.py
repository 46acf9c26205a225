"""memsim: memristor crossbar simulation on the Synaptogen device model, in PyTorch."""

from memsim.device import CellArray, draw_device_parameters
from memsim.noise import READ_NOISE_MODES, ReadNoise, read_noise
from memsim.params import DeviceParams, ParamsError, load_params

__all__ = [
    "CellArray",
    "DeviceParams",
    "ParamsError",
    "READ_NOISE_MODES",
    "ReadNoise",
    "draw_device_parameters",
    "load_params",
    "read_noise",
]
