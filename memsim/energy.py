"""An energy estimate of a chip's inference, per crossbar layer and input vector, beside a digital baseline.

What the simulation knows exactly is measured: the power the cells dissipate during each read, sum over cells
of v I = v^2 g(v; r), from the same conductance model as the read (a product of the rows' v^2 base(v) and
v^2 delta(v) with each row's count of cells and sum of r: no per-cell tensor). Everything else is counted
(DAC and ADC conversions, digital additions, multiply-accumulates) and priced with EnergyCosts, per-operation
figures from published sources cited field by field. These are estimates: the costs are the assumptions,
every one can be overridden, and the report says so.

Per layer and input vector:
- crossbar: read_seconds x the mean power of the layer's cells over the vectors measured;
- DAC: one conversion per row of every array (each array has its own row drivers, as in ISAAC), at
  dac_joules_per_bit x dac_bits;
- ADC: one conversion per tile row, bit plane and column, at adc_joules_per_step x 2^(p + r) (Walden's figure of
  merit, with the ADC's p + r bits: 2^(p + r) codes);
- accumulate: one digital addition per ADC output, at the accumulator's width (p + r plus the bits the sum
  over tiles and planes adds);
- digital baseline: the same layer as integer multiply-accumulates at the weight and input widths (multiplier
  energy scaling with the product of the widths, adder energy with the width), plus reading each weight from
  SRAM. Output scaling and bias, common to both, are left out of both.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from memsim.convert import memristor_layers, run_instrumented

PICO = 1e-12
# M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, 45 nm, 0.9 V.
HOROWITZ_ADD_8BIT = 0.03 * PICO  # 8-bit integer add
HOROWITZ_MULTIPLY_8BIT = 0.2 * PICO  # 8-bit integer multiply
HOROWITZ_SRAM_64BIT = 10 * PICO  # 64-bit read from an 8 KB SRAM
# ISAAC (A. Shafiee et al., ISCA 2016), Table I, per in-situ multiply-accumulate unit (32 nm): 8 ADCs of 8 bits
# at 1.2 GS/s draw 16 mW, so one conversion costs 2 mW / 1.2 GS/s = 1.67 pJ; 8 x 128 one-bit DACs draw 4 mW,
# one per crossbar row, each converting once per 100 ns read cycle: 0.39 pJ per conversion.
ISAAC_ADC_8BIT = 16e-3 / 8 / 1.2e9
ISAAC_DAC_1BIT = 4e-3 / (8 * 128) * 100e-9


@dataclasses.dataclass(frozen=True)
class EnergyCosts:
    """Per-operation energies (joules) and the read time, each with its source."""

    # ADC: Walden's figure of merit, E = this x 2^bits; default ISAAC's 8-bit ADC, 1.67 pJ / 2^8 = 6.5 fJ per
    # step. (The best designs of B. Murmann's ADC survey reach below 1 fJ per step: docs/sources.md.)
    adc_joules_per_step: float = ISAAC_ADC_8BIT / 2**8
    # DAC: E = this x bits: a b-bit input costs what ISAAC spends on b one-bit row pulses.
    dac_joules_per_bit: float = ISAAC_DAC_1BIT
    # How long a read drives the rows: 10 ns, NeuroSim's default read pulse (readPulseWidth, NeuroSIM/Param.cpp);
    # ISAAC's read cycle is 100 ns.
    read_seconds: float = 10e-9
    add_joules_per_bit: float = HOROWITZ_ADD_8BIT / 8  # ripple-carry addition: linear in the width
    multiply_joules_per_bit2: float = HOROWITZ_MULTIPLY_8BIT / 64  # array multiplier: the product of the widths
    sram_joules_per_bit: float = HOROWITZ_SRAM_64BIT / 64

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"EnergyCosts.{f.name} must be a number >= 0, got {value!r}")


class EnergyMeter:
    """Sums, over every vector a layer reads, the power its cells dissipate: sum over cells of v^2 g(v; r)."""

    def __init__(self) -> None:
        self.watts = torch.zeros((), dtype=torch.float64)
        self.vectors = 0
        self._rows: tuple[torch.Tensor, torch.Tensor] | None = None  # per row: its cells, and their sum of r

    def __call__(self, v: torch.Tensor, layer: Any) -> None:
        if self._rows is None:  # r does not change while a chip reads
            self._rows = _row_sums(layer, v.shape[1])
            self.watts = self.watts.to(v.device)
        cells, r_sum = self._rows
        base, delta = layer.read_model.conductances(v)
        squared = v.double().square()
        self.watts += (squared * base).sum(0) @ cells + (squared * delta).sum(0) @ r_sum
        self.vectors += v.shape[0]


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
    each layer's energy per input vector (estimate()). The last row, "total", sums the layers: one vector
    through every crossbar layer."""
    meters = run_instrumented(model, run, "energy_meter", EnergyMeter)
    unread = [name for name, meter in meters.items() if meter.vectors == 0]
    if unread:
        raise ValueError(f"run(model) did not read crossbar layer(s) {unread}: no vectors to measure energy on")
    costs = costs or EnergyCosts()
    rows = [
        {"layer": name, **estimate(layer, float(meters[name].watts) / meters[name].vectors, costs)}
        for name, layer in memristor_layers(model)
    ]
    return rows + [total(rows)]


ENERGY_KEYS = ("crossbar_pj", "dac_pj", "adc_pj", "accumulate_pj", "chip_pj", "digital_pj")


def estimate(layer: Any, watts: float, costs: EnergyCosts) -> dict[str, Any]:
    """Energy per input vector (picojoules) of one MemristorLinear whose cells dissipate `watts` on average per
    read, with the counts it is priced from. A converter left ideal (None bits) has no energy: its row, and the
    chip's total, are None."""
    c = layer.config
    in_tiles = math.ceil(layer.in_features / c.tile_size)
    dac_conversions, adc_conversions = layer.conversions()
    adc_bits = (
        None if c.adc_precision_bits is None or c.adc_range_bits is None else c.adc_precision_bits + c.adc_range_bits
    )
    accumulator_bits = None if adc_bits is None else adc_bits + math.ceil(math.log2(in_tiles * c.planes))
    weight_bits, input_bits = math.ceil(c.weight_bits), _input_bits(layer)
    macs = layer.weights_held  # a digital layer multiplies only the weights it has (not a grouped matrix's zeros)
    mac_bits = weight_bits + input_bits + math.ceil(math.log2(max(1, macs // layer.out_features)))
    parts: dict[str, float | None] = {
        "crossbar_pj": costs.read_seconds * watts,
        "dac_pj": None if c.dac_bits is None else dac_conversions * costs.dac_joules_per_bit * c.dac_bits,
        "adc_pj": None if adc_bits is None else adc_conversions * costs.adc_joules_per_step * 2**adc_bits,
        "accumulate_pj": None
        if accumulator_bits is None
        else adc_conversions * accumulator_bits * costs.add_joules_per_bit,
    }
    known = [value for value in parts.values() if value is not None]
    parts["chip_pj"] = sum(known) if len(known) == len(parts) else None
    parts["digital_pj"] = macs * (
        weight_bits * input_bits * costs.multiply_joules_per_bit2
        + mac_bits * costs.add_joules_per_bit
        + weight_bits * costs.sram_joules_per_bit
    )
    energies = {key: None if value is None else value / PICO for key, value in parts.items()}
    return {
        "dac_bits": c.dac_bits,
        "dac_conversions": dac_conversions,
        "adc_bits": adc_bits,
        "adc_conversions": adc_conversions,
        "macs": macs,
        "read_watts": watts,
        **energies,
    }


def total(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The layers' energies per vector summed (None where any layer's is unknown), and their counts."""
    summed: dict[str, Any] = {"layer": "total"}
    for key in ("dac_conversions", "adc_conversions", "macs", "read_watts", *ENERGY_KEYS):
        values = [row[key] for row in rows]
        summed[key] = None if any(v is None for v in values) else sum(values)
    return summed


def _input_bits(layer: Any) -> int:
    """The bits of the layer's inputs: its source's activation quantizer, else its DAC's, else 8."""
    if layer.input_levels is not None:
        return int(math.log2(layer.input_levels + 1)) + 1
    return layer.config.dac_bits or 8
