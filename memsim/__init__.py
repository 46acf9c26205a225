"""memsim: memristor crossbar simulation on the Synaptogen device model, in PyTorch."""

from memsim.config import ADC_PRESETS, CrossbarConfig
from memsim.convert import calibrate, convert, format_summary, summary
from memsim.device import CellArray, draw_device_parameters
from memsim.layers import MemristorLinear
from memsim.noise import READ_NOISE_MODES, ReadNoise, read_noise
from memsim.params import DeviceParams, ParamsError, load_params

__all__ = [
    "ADC_PRESETS",
    "CellArray",
    "CrossbarConfig",
    "DeviceParams",
    "MemristorLinear",
    "ParamsError",
    "READ_NOISE_MODES",
    "ReadNoise",
    "calibrate",
    "convert",
    "draw_device_parameters",
    "format_summary",
    "load_params",
    "read_noise",
    "summary",
]
