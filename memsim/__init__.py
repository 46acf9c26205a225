"""memsim: memristor crossbar simulation on the Synaptogen device model, in PyTorch."""

from memsim.allocation import Allocation, Candidate, allocate_under_budget
from memsim.config import ADC_PRESETS, NON_IDEALITIES, PRESETS, AdcPlan, ChipSpec, CrossbarConfig
from memsim.conv import MemristorConv1d, MemristorConv2d
from memsim.convert import KINDS, calibrate, convert, format_summary, level_statistics, summary
from memsim.converters import adc_settings, allocate_adc, apply_adc_plan, set_adc
from memsim.device import CellArray, draw_device_parameters
from memsim.diagnostics import layer_errors
from memsim.energy import EnergyCosts, measure_energy
from memsim.error_model import WeightErrorModel, WireWeightModel, weight_error_model
from memsim.layers import MemristorLinear
from memsim.lstm import LinearLSTM, MemristorLSTM
from memsim.noise import READ_NOISE_MODES, ReadNoise, read_noise
from memsim.params import DeviceParams, ParamsError, load_params
from memsim.progress import ProgrammingProgress, ProgrammingTimer, ProgressCallback

__all__ = [
    "ADC_PRESETS",
    "AdcPlan",
    "Allocation",
    "Candidate",
    "CellArray",
    "ChipSpec",
    "CrossbarConfig",
    "DeviceParams",
    "EnergyCosts",
    "KINDS",
    "MemristorConv1d",
    "MemristorConv2d",
    "LinearLSTM",
    "MemristorLSTM",
    "MemristorLinear",
    "NON_IDEALITIES",
    "PRESETS",
    "ParamsError",
    "ProgrammingProgress",
    "ProgrammingTimer",
    "ProgressCallback",
    "READ_NOISE_MODES",
    "ReadNoise",
    "WeightErrorModel",
    "WireWeightModel",
    "adc_settings",
    "allocate_adc",
    "allocate_under_budget",
    "apply_adc_plan",
    "calibrate",
    "convert",
    "draw_device_parameters",
    "format_summary",
    "layer_errors",
    "level_statistics",
    "load_params",
    "measure_energy",
    "read_noise",
    "set_adc",
    "summary",
    "weight_error_model",
]
