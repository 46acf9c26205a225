"""CrossbarConfig: everything that defines a simulated crossbar chip, validated on construction."""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from typing import Any

from memsim.noise import READ_NOISE_MODES
from memsim.params import MAX_VAR_ORDER
from memsim.relaxation import RELAXATION_MODELS

# The paper's ADC settings (precision bits p, range bits r): step 2^-p, clipping at +-2^(r-1).
ADC_PRESETS = {"high_precision": (8, 10), "reasonable": (4, 4)}
DEVICES = ("synaptogen", "ideal")
DAC_GRIDS = ("symmetric", "paper")
VERIFY_SCHEMES = ("centred", "first_past")
INPUT_SCHEMES = ("amplitude", "bit_serial")
CALIBRATIONS = ("nominal", "paper", "per_column")
DRIFT_COMPENSATIONS = ("none", "global", "per_column")
# What CrossbarConfig.only() can keep, each one a way the chip differs from the digital layer.
NON_IDEALITIES = (
    "device_variation",
    "cycle_variation",
    "iv_nonlinearity",
    "read_noise",
    "dac",
    "adc",
    "wires",
    "relaxation",
    "read_disturb",
)


@dataclasses.dataclass(frozen=True)
class CrossbarConfig:
    weight_bits: float = 3  # 1.5 (ternary) or an integer 2..8; symmetric levels +-(2^(b-1)-1)
    levels_per_cell: int = 2  # conductance levels of a cell: 2 = binary; 3..16 are programmed and verified
    tile_size: int = 128  # rows and columns of one crossbar array
    # Ohms of one wire segment (one cell pitch) along a row and along a column: both 0 (ideal wires, the default)
    # or both > 0. Rows are driven from before column 0, columns sensed at virtual ground past the last row
    # (memsim.ir_drop). Per technology node: memsim.ir_drop.segment_resistance (NeuroSim 1.4's interconnect):
    # a passive crossbar's segment is 0.42 ohm at 45 nm, 0.93 at 22 nm, 2.8 at 7 nm.
    row_wire_resistance: float = 0.0
    column_wire_resistance: float = 0.0
    dac_bits: int | None = 8  # input quantization, symmetric; None: ideal DAC
    v_read: float = 0.6  # volts of a full-scale input
    adc_precision_bits: int | None = 8  # step 2^-p in units of one programmed pair at v_read; None: ideal ADC
    adc_range_bits: int | None = 10  # clip at +-2^(r-1); None: no clipping
    read_noise: str = "physical"  # "physical" | "paper" | "none"
    device: str = "synaptogen"  # "synaptogen" | "ideal" (binary conductances, linear I-V, no noise)
    set_voltage: float = -2.0  # SET pulse for the cells that store 1 (the paper: -2 V)
    reset_voltage: float = 2.0  # full RESET of every cell before programming (the paper: +2 V)
    random_cycles: int = 0  # before programming, each cell runs a uniform 0..N full cycles (the paper's option)
    # cells start at a cycle of the cycle-to-cycle process in its stationary regime, as after many cycles of use
    # (drawn directly: device.stationary_covariance), instead of at their first cycle; the device model's
    # statistics are fitted on stationary cycles (a first cycle's LRS spread is 230 ohm, a stationary one's 260)
    stationary_cells: bool = False
    precycle_pulses: int = 0  # before programming: pulses of one uniform [-2, 2] V draw per array (the paper)
    verify_retries: int = 3  # re-SET cells that did not switch, each time verify_step volts stronger
    verify_step: float = -0.25
    # Multi-level cells (levels_per_cell > 2; crossbar.program_levels): after a SET, RESET pulses from
    # reset_start rising by reset_step up to reset_max, each followed by a read, until the read lies in the
    # level's band: verify_tolerance level steps wide, centred on the target ("centred"; every level verified,
    # verify reads with the chip's read noise), or from the target up ("first_past": the first read at or past
    # the target is kept, only middle levels verified, noiseless reads); past the band is an overshoot (SET
    # again, restart lower); pulse_budget pulses at most per cell.
    verify_scheme: str = "centred"
    reset_start: float = 0.75
    reset_step: float = 0.02
    reset_max: float = 1.4
    verify_tolerance: float = 0.25
    pulse_budget: int = 120
    dac_grid: str = "symmetric"  # "symmetric": +-(2^(b-1)-1) levels, as the activation quantizer; "paper"
    # How the DAC's codes reach the rows: "amplitude", one pulse per input vector at the code's voltage (a
    # dac_bits DAC per row, one ADC conversion per column); "bit_serial", a one-bit DAC per row (as ISAAC's), the
    # positive inputs and then the negative ones each sent as one pulse per magnitude bit of the code, every row at
    # 0 V or +v_read, one ADC conversion per column and pulse, the outputs shift-added digitally (crossbar.read_inputs)
    input_scheme: str = "amplitude"
    # A quantization-aware source's activation quantizer before the DAC (True), or the DAC alone, fed the raw
    # activations over the quantizer's full scale (False: the paper's model code, whose prep_quant replaces the
    # layers' input quantizers with identity; docs/sources.md)
    keep_input_quantizer: bool = True
    calibration: str = "nominal"  # "nominal" | "paper" (its fixed 8020 A^-1) | "per_column" (fitted per column)
    # Under amplitude inputs the cells' chord conductance depends on the voltage, so what the chip fits or
    # linearizes (per-column calibration's test inputs, uniform in +- this fraction of v_read; the wires' operating
    # point; the effective weights of noise-aware training) is taken at this fraction of v_read. A trained layer's
    # inputs mostly use a small part of the DAC's range. On a 384 -> 1536 layer with N(0, 1) inputs
    # (benchmarks/layer_error.py's two per-column conditions, 2 seeds) tests at 0.25 leave gain
    # 0.995 and residual 0.095, full-scale tests (1.0) gain 1.020 and residual 0.131; the recipe chooses it on dev.
    typical_input_fraction: float = 0.25
    # Relaxation (memsim.relaxation): the chip is read read_time seconds after programming (0: at programming,
    # nothing has changed), its cells changed as the named fit says ("wan2022" or "cmo"). drift_compensation, fitted
    # on the chip's column test reads at read_time against the same reads at programming (MemristorLinear.relax):
    # "none", "global" (one gain per layer) or "per_column" (a gain and an offset per tile, plane and column).
    read_time: float = 0.0
    relaxation: str = "wan2022"
    drift_compensation: str = "none"
    # Reads switch the cells their row voltages reach past a threshold (memsim.disturb): binary Synaptogen cells only
    read_disturb: bool = False
    # Ablation switches: False removes one non-ideality of the Synaptogen cells (see only()).
    device_variation: bool = True  # False: every device at the mixture's mean parameters
    cycle_variation: bool = True  # False: no cycle-to-cycle variation (the VAR process stays at 0)
    iv_nonlinearity: bool = True  # False: each cell ohmic at its own resistance (read at the model's U0)
    var_order: int = MAX_VAR_ORDER  # VAR order p of the device model
    params_path: str | None = None  # Synaptogen parameter JSON; None: the synaptogen package's

    def __post_init__(self):
        def fail(field: str, requirement: str):
            raise ValueError(f"CrossbarConfig.{field} must be {requirement}, got {getattr(self, field)!r}")

        bits = self.weight_bits
        if (
            isinstance(bits, bool)
            or not isinstance(bits, (int, float))
            or not (bits == 1.5 or (float(bits).is_integer() and 2 <= bits <= 8))
        ):
            fail("weight_bits", "1.5 (ternary) or an integer from 2 to 8")
        if not _is_int(self.levels_per_cell) or not 2 <= self.levels_per_cell <= 16:
            fail("levels_per_cell", "an integer from 2 to 16")
        if not _is_int(self.tile_size) or self.tile_size < 1:
            fail("tile_size", "a positive integer")
        if self.dac_bits is not None and (not _is_int(self.dac_bits) or not 2 <= self.dac_bits <= 24):
            fail("dac_bits", "an integer from 2 to 24, or None for an ideal DAC")
        for wire in ("row_wire_resistance", "column_wire_resistance"):
            value = getattr(self, wire)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                fail(wire, "ohms per cell segment, >= 0")
        if (self.row_wire_resistance == 0) != (self.column_wire_resistance == 0):
            fail(
                "column_wire_resistance",
                f"> 0 with row_wire_resistance > 0 and 0 with it 0 (row_wire_resistance={self.row_wire_resistance!r})",
            )
        if not isinstance(self.v_read, (int, float)) or not 0 < self.v_read <= 1.5:
            fail("v_read", "a voltage in (0, 1.5]")
        if self.adc_precision_bits is not None and (
            not _is_int(self.adc_precision_bits) or not 0 <= self.adc_precision_bits <= 24
        ):
            fail("adc_precision_bits", "an integer from 0 to 24, or None for an ideal ADC")
        if self.adc_range_bits is not None and (not _is_int(self.adc_range_bits) or not 1 <= self.adc_range_bits <= 32):
            fail("adc_range_bits", "an integer from 1 to 32, or None for no clipping")
        if self.read_noise not in READ_NOISE_MODES:
            fail("read_noise", f"one of {sorted(READ_NOISE_MODES)}")
        if self.device not in DEVICES:
            fail("device", f"one of {list(DEVICES)}")
        if not isinstance(self.set_voltage, (int, float)) or self.set_voltage >= 0:
            fail("set_voltage", "a negative voltage")
        if not isinstance(self.reset_voltage, (int, float)) or self.reset_voltage <= 0:
            fail("reset_voltage", "a positive voltage")
        if not _is_int(self.random_cycles) or self.random_cycles < 0:
            fail("random_cycles", "a non-negative integer")
        if not _is_int(self.precycle_pulses) or self.precycle_pulses < 0:
            fail("precycle_pulses", "a non-negative integer")
        if not _is_int(self.verify_retries) or self.verify_retries < 0:
            fail("verify_retries", "a non-negative integer")
        if not isinstance(self.verify_step, (int, float)) or self.verify_step > 0:
            fail("verify_step", "a voltage <= 0 (each retry SETs harder)")
        if not _is_int(self.var_order) or not 1 <= self.var_order <= MAX_VAR_ORDER:
            fail("var_order", f"an integer from 1 to {MAX_VAR_ORDER}")
        if not isinstance(self.reset_start, (int, float)) or not 0 < self.reset_start <= self.reset_max:
            fail("reset_start", "a voltage in (0, reset_max]")
        if not isinstance(self.reset_step, (int, float)) or self.reset_step <= 0:
            fail("reset_step", "a positive voltage")
        if not isinstance(self.verify_tolerance, (int, float)) or not 0 < self.verify_tolerance <= 0.5:
            fail("verify_tolerance", "a fraction of a level step in (0, 0.5]")
        if not _is_int(self.pulse_budget) or self.pulse_budget < 2:
            fail("pulse_budget", "an integer >= 2")
        if (
            isinstance(self.typical_input_fraction, bool)
            or not isinstance(self.typical_input_fraction, (int, float))
            or not 0 < self.typical_input_fraction <= 1
        ):
            fail("typical_input_fraction", "a fraction of v_read in (0, 1]")
        if self.verify_scheme not in VERIFY_SCHEMES:
            fail("verify_scheme", f"one of {list(VERIFY_SCHEMES)}")
        if self.dac_grid not in DAC_GRIDS:
            fail("dac_grid", f"one of {list(DAC_GRIDS)}")
        if self.input_scheme not in INPUT_SCHEMES:
            fail("input_scheme", f"one of {list(INPUT_SCHEMES)}")
        if self.input_scheme == "bit_serial" and self.dac_bits is None:
            fail(
                "dac_bits",
                "set (the bits a bit-serial input sends one at a time), not None, with input_scheme='bit_serial'",
            )
        if self.calibration not in CALIBRATIONS:
            fail("calibration", f"one of {list(CALIBRATIONS)}")
        if (
            isinstance(self.read_time, bool)
            or not isinstance(self.read_time, (int, float))
            or not 0 <= self.read_time < math.inf
        ):
            fail("read_time", "finite seconds after programming, >= 0")
        if self.relaxation not in RELAXATION_MODELS:
            fail("relaxation", f"one of {sorted(RELAXATION_MODELS)}")
        if self.drift_compensation not in DRIFT_COMPENSATIONS:
            fail("drift_compensation", f"one of {list(DRIFT_COMPENSATIONS)}")
        if self.read_disturb is True and (self.levels_per_cell != 2 or self.device != "synaptogen"):
            fail(
                "read_disturb",
                "False with multi-level cells or the ideal device (it follows binary Synaptogen cells' thresholds), "
                f"here levels_per_cell={self.levels_per_cell!r}, device={self.device!r}",
            )
        for switch in (
            "device_variation",
            "cycle_variation",
            "iv_nonlinearity",
            "keep_input_quantizer",
            "stationary_cells",
            "read_disturb",
        ):
            if not isinstance(getattr(self, switch), bool):
                fail(switch, "True or False")

    @classmethod
    def preset(cls, name: str, **overrides) -> CrossbarConfig:
        """A named chip condition, with any field overridden: "physical" (this simulator's defaults) or
        "paper" (the released code of Rossenbach et al. 2025, point by point: its read-noise constants, its
        fixed output current scaling, its DAC grid as the only input quantizer, pre-cycling, no verify;
        docs/sources.md)."""
        if name not in PRESETS:
            raise ValueError(f"unknown chip preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def only(self, kept: str | None) -> CrossbarConfig:
        """This config with every non-ideality removed but `kept` (one of NON_IDEALITIES; None keeps none).

        Removing all of them (ideal converters, no read noise, identical ohmic cells at the nominal LRS and
        HRS, ideal wires) leaves a chip that reproduces the digital layer under the nominal calibration."""
        if kept is not None and kept not in NON_IDEALITIES:
            raise ValueError(f"unknown non-ideality {kept!r}; choose one of {list(NON_IDEALITIES)} or None")
        ideal: dict[str, dict[str, Any]] = {
            "device_variation": {"device_variation": False},
            "cycle_variation": {"cycle_variation": False},
            "iv_nonlinearity": {"iv_nonlinearity": False},
            "read_noise": {"read_noise": "none"},
            # inputs exactly as the digital model's, in one pulse
            "dac": {"dac_bits": None, "keep_input_quantizer": True, "input_scheme": "amplitude"},
            "adc": {"adc_precision_bits": None, "adc_range_bits": None},
            "wires": {"row_wire_resistance": 0.0, "column_wire_resistance": 0.0},
            "relaxation": {"read_time": 0.0},
            "read_disturb": {"read_disturb": False},
        }
        changes = {field: value for name, fields in ideal.items() if name != kept for field, value in fields.items()}
        return dataclasses.replace(self, **changes)

    @property
    def wire_resistance(self) -> tuple[float, float]:
        """(row, column) ohms per cell segment: memsim.ir_drop's wire_resistance."""
        return (float(self.row_wire_resistance), float(self.column_wire_resistance))

    @property
    def corrects_columns(self) -> bool:
        """Whether each ADC output is corrected digitally per tile, plane and column (a gain and an offset): under
        per-column calibration or drift compensation."""
        return self.calibration == "per_column" or self.drift_compensation != "none"

    @property
    def wired(self) -> bool:
        """Whether the wires have resistance (IR drop is simulated)."""
        return self.row_wire_resistance > 0

    @property
    def max_level(self) -> int:
        """Largest integer weight magnitude: 2^(b-1) - 1 (1 for ternary)."""
        return 1 if self.weight_bits == 1.5 else 2 ** (int(self.weight_bits) - 1) - 1

    @property
    def planes(self) -> int:
        """Digit planes of the magnitude in base levels_per_cell (binary: b - 1; 1 for ternary)."""
        planes = 1
        while self.levels_per_cell**planes <= self.max_level:
            planes += 1
        return planes

    def with_adc(self, preset: str) -> CrossbarConfig:
        """This config with one of the paper's ADC presets: "high_precision" (8, 10) or "reasonable" (4, 4)."""
        if preset not in ADC_PRESETS:
            raise ValueError(f"unknown ADC preset {preset!r}; choose one of {sorted(ADC_PRESETS)}")
        return self.with_adc_bits(*ADC_PRESETS[preset])

    def with_adc_bits(self, precision_bits: int | None, range_bits: int | None) -> CrossbarConfig:
        """This config with an ADC of step 2^-precision_bits clipping at +-2^(range_bits - 1) (None: ideal)."""
        return dataclasses.replace(self, adc_precision_bits=precision_bits, adc_range_bits=range_bits)


def first_match(pairs: tuple[tuple[str, Any], ...], name: str) -> Any:
    """The value of the first (pattern, value) pair whose fnmatch pattern matches the layer `name`, or None."""
    return next((value for pattern, value in pairs if fnmatch.fnmatchcase(name, pattern)), None)


AdcBits = tuple[int | None, int | None]  # (precision bits, range bits); None: ideal in that respect


@dataclasses.dataclass(frozen=True)
class AdcPlan:
    """Which ADC each crossbar layer of a chip gets, in one place.

    layers: (pattern, (precision bits, range bits)) pairs: a layer whose name (as named_modules() gives it)
    matches a pattern (fnmatch; the first match wins) gets that ADC when it is converted. auto_budget_bits:
    every other layer gets an automatic split of that many bits into range and precision (allocate_adc, with
    auto_coverage), measured on calibration reads of the programmed chip: apply_adc_plan. Without either, every
    layer has its CrossbarConfig's ADC."""

    layers: tuple[tuple[str, AdcBits], ...] = ()
    auto_budget_bits: int | None = None
    auto_coverage: float = 0.999

    def __post_init__(self):
        for pattern, bits in self.layers:
            if not isinstance(pattern, str) or not isinstance(bits, tuple) or len(bits) != 2:
                raise ValueError(f"AdcPlan.layers holds (pattern, (precision bits, range bits)) pairs, got {pattern!r}")
            CrossbarConfig().with_adc_bits(*bits)  # checks the bits
        if self.auto_budget_bits is not None and (not _is_int(self.auto_budget_bits) or self.auto_budget_bits < 1):
            raise ValueError(f"AdcPlan.auto_budget_bits must be a positive integer, got {self.auto_budget_bits!r}")
        if not 0 < self.auto_coverage <= 1:
            raise ValueError(f"AdcPlan.auto_coverage must be a fraction in (0, 1], got {self.auto_coverage!r}")

    def fixed(self, name: str) -> AdcBits | None:
        """The ADC a pattern gives the layer `name`, or None if no pattern matches it."""
        return first_match(self.layers, name)


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    """A chip: its crossbar configuration, the kinds of layers it holds (convert's KINDS), its ADC plan, and the
    weight bits of layers that differ from the crossbar's (mixed precision). convert() takes one in place of a
    CrossbarConfig.

    layer_bits: (pattern, weight bits) pairs: a layer whose name matches a pattern (fnmatch; the first match
    wins) is mapped with those bits (its digit planes, cells and ADC conversions), every other layer with the
    crossbar's weight_bits; a quantization-aware layer's integer weights must fit them."""

    crossbar: CrossbarConfig
    adc: AdcPlan = AdcPlan()
    kinds: tuple[str, ...] = ("linear",)
    layer_bits: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        for pattern, bits in self.layer_bits:
            if not isinstance(pattern, str):
                raise ValueError(f"ChipSpec.layer_bits holds (pattern, weight bits) pairs, got {pattern!r}")
            try:
                dataclasses.replace(self.crossbar, weight_bits=bits)
            except ValueError as error:
                raise ValueError(f"ChipSpec.layer_bits[{pattern!r}]: {error}") from None

    def crossbar_of(self, name: str) -> CrossbarConfig:
        """The crossbar configuration the layer `name` is mapped with: its own weight bits, then its ADC."""
        bits = first_match(self.layer_bits, name)
        config = self.crossbar if bits is None else dataclasses.replace(self.crossbar, weight_bits=bits)
        fixed = self.adc.fixed(name)
        return config if fixed is None else config.with_adc_bits(*fixed)


# Named conditions for CrossbarConfig.preset(). The paper's instance k (k = 1..K) pre-cycles with k x 50
# pulses: the recipe sets precycle_pulses per instance (memsim.precycle_per_instance).
PRESETS: dict[str, dict[str, Any]] = {
    "physical": {},
    "paper": {
        "read_noise": "paper",
        "calibration": "paper",
        "dac_grid": "paper",
        "keep_input_quantizer": False,
        "precycle_pulses": 50,
        "verify_retries": 0,
        "adc_precision_bits": ADC_PRESETS["high_precision"][0],
        "adc_range_bits": ADC_PRESETS["high_precision"][1],
    },
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
