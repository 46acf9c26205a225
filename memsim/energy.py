"""An energy estimate of a chip's inference, per crossbar layer and input vector, beside a digital baseline.

What the simulation knows exactly is measured: the power the cells dissipate during each read pulse, sum over
cells of v I = v^2 g(v; r), from the same conductance model as the read (a product of the rows' v^2 base(v) and
v^2 delta(v) with each row's count of cells and sum of r: no per-cell tensor). Everything else is counted
(DAC and ADC conversions, digital additions and multiplies, weight reads) and priced with EnergyCosts,
per-operation figures from published sources cited field by field. These are estimates: the costs are the
assumptions, every one can be overridden, and each chip's energy is also given under the most and the least
favourable costs of COST_BOUNDS.

The machine priced is the one the chip's CrossbarConfig.input_scheme simulates (crossbar.read_inputs), per layer
and input vector of P read pulses (crossbar.reads_per_vector: 1 for amplitude inputs, 2 x magnitude bits for
bit-serial ones):
- crossbar: P x read_seconds x the mean power of the layer's cells per pulse over the pulses measured;
- DAC: one conversion per row of every array and pulse (each array has its own row drivers, as in ISAAC): for
  amplitude inputs a dac_bits DAC (dac_energy), for bit-serial ones a one-bit DAC (dac_joules_per_bit);
- ADC: one conversion per tile row, bit plane, column and pulse at adc_energy(p + r) (Walden's figure of merit up
  to adc_thermal_bits, 4x per bit above);
- accumulate: one digital addition per ADC output, at the accumulator's width (p + r plus the bits the sum over
  tiles and planes adds, and for bit-serial inputs the shifts and the phases');
- correction: with per-column calibration, each ADC output's (code - offset) x inverse gain: one subtraction
  and one multiply by a CORRECTION_GAIN_BITS factor;
- digital baseline: the same layer as integer multiply-accumulates at the weight and input widths (multiplier
  energy scaling with the product of the widths, adder energy with the width), plus reading each weight from an
  SRAM of the size that holds all crossbar layers' weights (sram_energy_per_bit, Horowitz's figures by size)
  or, the DRAM variant, from DRAM. Output scaling and bias, common to both, are left out of both.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from memsim.convert import memristor_layers, run_instrumented
from memsim.crossbar import reads_per_vector

PICO = 1e-12
# M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, 45 nm, 0.9 V.
HOROWITZ_ADD_8BIT = 0.03 * PICO  # 8-bit integer add
HOROWITZ_MULTIPLY_8BIT = 0.2 * PICO  # 8-bit integer multiply
# a 64-bit read from an SRAM of 8 KB, 32 KB and 1 MB; and from DRAM, 1.3-2.6 nJ (the lower figure)
HOROWITZ_SRAM_64BIT = ((8 * 1024, 10 * PICO), (32 * 1024, 20 * PICO), (1024 * 1024, 100 * PICO))
HOROWITZ_DRAM_64BIT = 1300 * PICO
# ISAAC (A. Shafiee et al., ISCA 2016), Table I, per in-situ multiply-accumulate unit (32 nm): 8 ADCs of 8 bits
# at 1.2 GS/s draw 16 mW, so one conversion costs 2 mW / 1.2 GS/s = 1.67 pJ; 8 x 128 one-bit DACs draw 4 mW,
# one per crossbar row, each converting once per 100 ns read cycle: 0.39 pJ per conversion.
ISAAC_ADC_8BIT = 16e-3 / 8 / 1.2e9
ISAAC_DAC_1BIT = 4e-3 / (8 * 128) * 100e-9
# B. Murmann's ADC survey: the best designs' Walden figure of merit, 0.67 fJ per conversion step up to about
# 0.4 GS/s (docs/sources.md)
MURMANN_BEST_STEP = 0.67e-15
# The per-column correction's inverse gain as a fixed-point factor of this many bits (an assumption: enough for
# gains fitted to a few parts in 10^4, memsim.crossbar.fit_columns)
CORRECTION_GAIN_BITS = 16
AMPLITUDE_DACS = ("linear", "binary_weighted")


@dataclasses.dataclass(frozen=True)
class EnergyCosts:
    """Per-operation energies (joules), the read time and the assumptions between them, each with its source."""

    # ADC: Walden's figure of merit, E = this x 2^bits up to adc_thermal_bits; default ISAAC's 8-bit ADC, 1.67 pJ /
    # 2^8 = 6.5 fJ per step. (The best designs of B. Murmann's ADC survey reach below 1 fJ per step.)
    adc_joules_per_step: float = ISAAC_ADC_8BIT / 2**8
    # Above this many bits an ADC's energy is set by thermal noise and grows 4x per bit: the survey's energy
    # envelope is a floor plus k 4^ENOB (bmurmann/ADC-survey, plots/energy_plot.ipynb); the change from 2x to 4x
    # per bit lies at about 10-12 bits (B. Murmann, "The race for the extra decibel", IEEE Solid-State Circuits
    # Magazine 7(3), 2015).
    adc_thermal_bits: int = 10
    # The resolution above which a converter at the read's rate (one conversion per 10 ns pulse and column) is
    # counted as an idealization: an assumption (check it against the survey's data, xls/ADCsurvey_latest.xlsx:
    # the largest SNDR_plot among designs with fsnyq >= 1e8).
    published_adc_bits: int = 12
    # A one-bit DAC conversion (one row pulse): ISAAC's. A bit-serial input makes one per row and pulse.
    dac_joules_per_bit: float = ISAAC_DAC_1BIT
    # An amplitude DAC of b bits: "linear", b one-bit conversions' energy (a current-steering or R-2R DAC whose
    # energy grows with its bits); "binary_weighted", 2^(b-1) of them (a binary-weighted capacitive DAC: its
    # capacitance, and so its switching energy, doubles with each bit).
    amplitude_dac: str = "linear"
    # How long a read pulse drives the rows: 10 ns, NeuroSim's default read pulse (readPulseWidth,
    # NeuroSIM/Param.cpp); ISAAC's read cycle is 100 ns.
    read_seconds: float = 10e-9
    add_joules_per_bit: float = HOROWITZ_ADD_8BIT / 8  # ripple-carry addition: linear in the width
    multiply_joules_per_bit2: float = HOROWITZ_MULTIPLY_8BIT / 64  # array multiplier: the product of the widths
    # The digital baseline's weight reads: None, from an SRAM sized to hold every crossbar layer's weights
    # (sram_energy_per_bit); a number overrides it.
    sram_joules_per_bit: float | None = None
    dram_joules_per_bit: float = HOROWITZ_DRAM_64BIT / 64

    def __post_init__(self) -> None:
        if self.amplitude_dac not in AMPLITUDE_DACS:
            raise ValueError(
                f"EnergyCosts.amplitude_dac must be one of {list(AMPLITUDE_DACS)}, got {self.amplitude_dac!r}"
            )
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "amplitude_dac" or (value is None and f.name == "sram_joules_per_bit"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"EnergyCosts.{f.name} must be a number >= 0, got {value!r}")

    def adc_energy(self, bits: int) -> float:
        """One conversion of a `bits` ADC: Walden's 2^bits up to adc_thermal_bits, then 4x per bit."""
        walden_bits = min(bits, self.adc_thermal_bits)
        return self.adc_joules_per_step * 2**walden_bits * 4 ** (bits - walden_bits)

    def dac_energy(self, bits: int) -> float:
        """One conversion of an amplitude DAC of `bits` (amplitude_dac)."""
        return self.dac_joules_per_bit * (bits if self.amplitude_dac == "linear" else 2 ** (bits - 1))


# Changes to the costs that make a chip cheaper ("low": the survey's best ADCs, the thermal regime from 12 bits) and
# dearer ("high": the thermal regime from 10 bits, binary-weighted amplitude DACs), within what the sources support.
# They replace those fields of the costs given: with the defaults they bracket them, with costs of one's own they
# need not. A bit-serial chip has no amplitude DAC, so its "high" is the defaults' estimate.
COST_BOUNDS: dict[str, dict[str, Any]] = {
    "low": {"adc_joules_per_step": MURMANN_BEST_STEP, "adc_thermal_bits": 12},
    "high": {"adc_thermal_bits": 10, "amplitude_dac": "binary_weighted"},
}


def sram_energy_per_bit(capacity_bytes: float) -> float:
    """Joules per bit read from an SRAM of this capacity: Horowitz's 64-bit reads (8 KB 10 pJ, 32 KB 20 pJ, 1 MB
    100 pJ) interpolated in log energy over log capacity; below 8 KB the 8 KB figure, beyond 1 MB the last
    segment extended (an extrapolation: Horowitz gives no larger SRAM)."""
    sizes = [math.log(size) for size, _ in HOROWITZ_SRAM_64BIT]
    energies = [math.log(energy / 64) for _, energy in HOROWITZ_SRAM_64BIT]
    x = math.log(max(capacity_bytes, HOROWITZ_SRAM_64BIT[0][0]))
    segment = sum(1 for size in sizes[1:-1] if x >= size)
    slope = (energies[segment + 1] - energies[segment]) / (sizes[segment + 1] - sizes[segment])
    return math.exp(energies[segment] + slope * (x - sizes[segment]))


class EnergyMeter:
    """Sums, over every read pulse of a layer, the power its cells dissipate: sum over cells of v^2 g(v; r)."""

    def __init__(self) -> None:
        self.watts = torch.zeros((), dtype=torch.float64)
        self.reads = 0  # pulses times the vectors each read
        self._rows: tuple[torch.Tensor, torch.Tensor] | None = None  # per row: its cells, and their sum of r

    def __call__(self, v: torch.Tensor, layer: Any) -> None:
        if self._rows is None:  # r does not change while a chip reads
            self._rows = _row_sums(layer, v.shape[1])
            self.watts = self.watts.to(v.device)
        cells, r_sum = self._rows
        base, delta = layer.read_model.conductances(v)
        squared = v.double().square()
        self.watts += (squared * base).sum(0) @ cells + (squared * delta).sum(0) @ r_sum
        self.reads += v.shape[0]


def _row_sums(layer: Any, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per input row: how many cells it drives, and the sum of their r (only the tiles that exist)."""
    r = layer.r.double()
    planes = r.shape[2]
    per_column = (r[0] + r[1]).sum(1)  # [in_padded, out]
    present = layer.column_presence()
    if present is None:
        cells = torch.full((r.shape[1],), 2.0 * planes * r.shape[3], dtype=torch.float64, device=r.device)
    else:
        mask = present.double().repeat_interleave(layer.config.tile_size, 0)  # [in_padded, out]
        per_column = per_column * mask
        cells = 2 * planes * mask.sum(1)
    return cells[:rows], per_column.sum(1)[:rows]


@torch.no_grad()
def measure_energy(
    model: nn.Module, run: Callable[[nn.Module], Any], costs: EnergyCosts | None = None
) -> list[dict[str, Any]]:
    """Call run(model) (e.g. a loop over some batches) with an EnergyMeter on every crossbar layer, and estimate
    each layer's energy per input vector (estimate(), the digital baseline's SRAM sized to all crossbar layers'
    weights). The last row, "total", sums the layers: one vector through every crossbar layer."""
    meters = run_instrumented(model, run, "energy_meter", EnergyMeter)
    unread = [name for name, meter in meters.items() if meter.reads == 0]
    if unread:
        raise ValueError(f"run(model) did not read crossbar layer(s) {unread}: no vectors to measure energy on")
    costs = costs or EnergyCosts()
    layers = memristor_layers(model)
    weight_bytes = sum(layer.weights_held * layer.config.weight_bits / 8 for _, layer in layers)
    rows = [
        {"layer": name, **estimate(layer, float(meters[name].watts) / meters[name].reads, costs, weight_bytes)}
        for name, layer in layers
    ]
    return rows + [total(rows)]


ENERGY_KEYS = (
    "crossbar_pj",
    "dac_pj",
    "adc_pj",
    "accumulate_pj",
    "correction_pj",
    "chip_pj",
    "chip_low_pj",
    "chip_high_pj",
    "digital_pj",
    "digital_dram_pj",
)


def estimate(layer: Any, watts: float, costs: EnergyCosts, weight_bytes: float | None = None) -> dict[str, Any]:
    """Energy per input vector (picojoules) of one MemristorLinear whose cells dissipate `watts` on average per
    read pulse, with the counts it is priced from, under `costs` and under COST_BOUNDS' low and high costs
    (chip_low_pj, chip_high_pj). The digital baseline reads its weights from an SRAM of weight_bytes (None: this
    layer's weights) and, digital_dram_pj, from DRAM. A converter left ideal (None bits) has no energy: its row,
    and the chip's totals, are None."""
    c = layer.config
    parts = chip_parts(layer, watts, costs)
    bounds = {
        f"chip_{bound}_pj": _chip_total(chip_parts(layer, watts, dataclasses.replace(costs, **changes)))
        for bound, changes in COST_BOUNDS.items()
    }
    weight_bits, input_bits = math.ceil(c.weight_bits), _input_bits(layer)
    macs = layer.weights_held  # a digital layer multiplies only the weights it has (not a grouped matrix's zeros)
    mac_bits = weight_bits + input_bits + math.ceil(math.log2(max(1, macs // layer.out_features)))
    arithmetic = macs * (
        weight_bits * input_bits * costs.multiply_joules_per_bit2 + mac_bits * costs.add_joules_per_bit
    )
    sram_bytes = macs * c.weight_bits / 8 if weight_bytes is None else weight_bytes
    sram = costs.sram_joules_per_bit if costs.sram_joules_per_bit is not None else sram_energy_per_bit(sram_bytes)
    joules: dict[str, float | None] = {
        **parts,
        "chip_pj": _chip_total(parts),
        **bounds,
        "digital_pj": arithmetic + macs * weight_bits * sram,
        "digital_dram_pj": arithmetic + macs * weight_bits * costs.dram_joules_per_bit,
    }
    dac_conversions, adc_conversions = layer.conversions()
    adc_bits = _adc_bits(c)
    return {
        "input_scheme": c.input_scheme,
        "reads_per_vector": reads_per_vector(c),
        "dac_bits": c.dac_bits,
        "dac_conversions": dac_conversions,
        "adc_bits": adc_bits,
        "adc_idealized": adc_bits is not None and adc_bits > costs.published_adc_bits,
        "adc_conversions": adc_conversions,
        "macs": macs,
        "sram_bytes": sram_bytes,
        "read_watts": watts,
        **{key: None if value is None else value / PICO for key, value in joules.items()},
    }


def chip_parts(layer: Any, watts: float, costs: EnergyCosts) -> dict[str, float | None]:
    """The chip's energy per input vector by part (joules; None for an ideal converter's), for the machine of
    the layer's input scheme: P read pulses (reads_per_vector), each converting every row and column (the
    layer's conversions() per vector count them all)."""
    c = layer.config
    pulses = reads_per_vector(c)
    dac_conversions, adc_conversions = layer.conversions()
    adc_bits = _adc_bits(c)
    in_tiles = math.ceil(layer.in_features / c.tile_size)
    accumulator_bits = None
    if adc_bits is not None:
        # the sum over tiles and planes; bit-serial: shifted by up to the magnitude bits, and the phases' sign
        serial_bits = 0 if pulses == 1 else pulses // 2 + 1
        accumulator_bits = adc_bits + math.ceil(math.log2(in_tiles * c.planes)) + serial_bits
    if c.dac_bits is None:
        dac = None
    elif c.input_scheme == "bit_serial":
        dac = dac_conversions * costs.dac_joules_per_bit
    else:
        dac = dac_conversions * costs.dac_energy(c.dac_bits)
    correction: float | None = 0.0  # nominal or fixed calibration: nothing per output
    if c.corrects_columns:
        # each ADC output: minus its offset, times its inverse gain (None: an ideal ADC's width is unknown)
        correction = None
        if adc_bits is not None:
            per_output = adc_bits * (CORRECTION_GAIN_BITS * costs.multiply_joules_per_bit2 + costs.add_joules_per_bit)
            correction = adc_conversions * per_output
    return {
        "crossbar_pj": pulses * costs.read_seconds * watts,
        "dac_pj": dac,
        "adc_pj": None if adc_bits is None else adc_conversions * costs.adc_energy(adc_bits),
        "accumulate_pj": None
        if accumulator_bits is None
        else adc_conversions * accumulator_bits * costs.add_joules_per_bit,
        "correction_pj": correction,
    }


def _chip_total(parts: dict[str, float | None]) -> float | None:
    known = [value for value in parts.values() if value is not None]
    return sum(known) if len(known) == len(parts) else None


def _adc_bits(c: Any) -> int | None:
    """The ADC's bits p + r (None for an ideal ADC)."""
    if c.adc_precision_bits is None or c.adc_range_bits is None:
        return None
    return c.adc_precision_bits + c.adc_range_bits


def total(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The layers' energies per vector summed (None where any layer's is unknown), and their counts."""
    summed: dict[str, Any] = {"layer": "total"}
    for key in ("dac_conversions", "adc_conversions", "macs", "read_watts", *ENERGY_KEYS):
        values = [row[key] for row in rows]
        summed[key] = None if any(v is None for v in values) else sum(values)
    summed["adc_idealized"] = any(row["adc_idealized"] for row in rows)
    return summed


def _input_bits(layer: Any) -> int:
    """The bits of the layer's inputs: its source's activation quantizer, else its DAC's, else 8."""
    if layer.input_levels is not None:
        return int(math.log2(layer.input_levels + 1)) + 1
    return layer.config.dac_bits or 8
