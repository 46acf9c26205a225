"""MemristorLinear: an nn.Linear whose matrix product runs on simulated crossbar tiles."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from memsim.config import CrossbarConfig
from memsim.crossbar import (
    LEVEL_BINS_PER_STEP,
    CellPairs,
    ColumnCalibration,
    ReadModel,
    RowFactors,
    adc_step,
    cell_pairs,
    column_test_reads,
    column_test_voltages,
    dac,
    device_params,
    digit_planes,
    fit_columns,
    fit_lines,
    integer_weights,
    level_histogram,
    read_inputs,
    reads_per_vector,
    tile_reads,
    typical_read_voltage,
    zero_volt_factors,
)
from memsim.crossbar import program as program_cells
from memsim.disturb import row_bounds, switch
from memsim.progress import ProgressCallback
from memsim.relaxation import RELAXATION_MODELS, relax


class MemristorLinear(nn.Module):
    """y = crossbar(DAC(x)) * input_range * weight_scale + bias, with the bias added digitally.

    Buffers (saved by state_dict, so a programmed chip can be stored and restored exactly):
    `r` [2, in_padded, planes, out], the state variable of every positive/negative cell (with read_time > 0, as
    relaxed by then: relax());
    `weight_scale` [out] (per-tensor scales repeated; per-channel scales are applied digitally too);
    `input_range` (the input magnitude mapped to v_read; 0 = unset: each batch's max-abs);
    `failed_cells`, the cells that would not SET; `read_disturbable_cells`, those a read could switch;
    with calibration="per_column" or drift compensation, `column_gain` and `column_offset` [tiles, planes, out],
    the digital correction fitted after programming (and at the read time: relax()); with levels_per_cell > 2,
    what programming cost and gave:
    `pulse_histogram` [pulse_budget + 1] (cells per number of programming pulses), `level_failures` [levels]
    (cells per stored level that missed it) and `level_histogram` (crossbar.level_histogram); for a grouped
    convolution's matrix (memsim.conv), `column_present` [row tiles, out], the columns of each row of tiles
    that hold weights: only those are connected, read and converted, and only tiles with one of them exist.
    With read_disturb, `disturb_threshold` (memsim.disturb's threshold of every cell, as r) and
    `read_switched_cells`, the cells reads have switched since programming.
    `output_quant`: a quantizer the source layer applied to its output (a quantization-aware layer's
    `output_quant` module), kept after the crossbar and the bias. `weights_held`: the matrix entries that hold
    weights, the multiply-accumulates a digital layer does per input vector (in x out, fewer for a grouped
    convolution's block-diagonal matrix).
    """

    r: torch.Tensor
    weight_scale: torch.Tensor
    input_range: torch.Tensor
    failed_cells: torch.Tensor
    read_disturbable_cells: torch.Tensor
    column_gain: torch.Tensor
    column_offset: torch.Tensor
    pulse_histogram: torch.Tensor
    level_failures: torch.Tensor
    level_histogram: torch.Tensor
    disturb_threshold: torch.Tensor
    read_switched_cells: torch.Tensor
    column_present: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        config: CrossbarConfig,
        bias: bool = True,
        generator: torch.Generator | None = None,
        column_present: torch.Tensor | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features, self.config = in_features, out_features, config
        self.generator = generator  # read noise; None: torch's default generator
        padded = math.ceil(in_features / config.tile_size) * config.tile_size
        self.register_buffer("r", torch.ones(2, padded, config.planes, out_features))
        self.register_buffer("weight_scale", torch.ones(out_features))  # per output column
        self.register_buffer("input_range", torch.zeros(()))
        self.register_buffer("failed_cells", torch.zeros((), dtype=torch.int64))
        self.register_buffer("read_disturbable_cells", torch.zeros((), dtype=torch.int64))
        self._tile_columns: list[torch.Tensor] | None = None  # per row of tiles, its present columns' indices
        if column_present is None:
            self.column_present = None
        else:
            self.register_buffer("column_present", column_present.bool())
            self._tile_columns = [torch.nonzero(row).flatten() for row in column_present.bool()]
        if config.corrects_columns:
            self.register_buffer("column_gain", torch.ones(padded // config.tile_size, config.planes, out_features))
            self.register_buffer("column_offset", torch.zeros_like(self.column_gain))
        if config.read_disturb:
            self.register_buffer("disturb_threshold", torch.zeros_like(self.r))
            self.register_buffer("read_switched_cells", torch.zeros((), dtype=torch.int64))
        if config.levels_per_cell > 2:
            levels = config.levels_per_cell
            self.register_buffer("pulse_histogram", torch.zeros(config.pulse_budget + 1, dtype=torch.int64))
            self.register_buffer("level_failures", torch.zeros(levels, dtype=torch.int64))
            self.register_buffer(
                "level_histogram", torch.zeros(levels, levels * LEVEL_BINS_PER_STEP, dtype=torch.int64)
            )
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.output_quant: nn.Module | None = None
        self.weights_held = in_features * out_features
        self.read_model = ReadModel(config)
        self.input_levels: int | None = None  # a quantization-aware source's activation quantizer (see dac)
        self.calibrating = False
        # Instruments that watch reads (None: off): what each tile's ADC is about to convert (converters.py),
        # and the energy the cells dissipate (energy.py).
        self.adc_probe: Callable[[torch.Tensor], object] | None = None
        self.energy_meter: Callable[[torch.Tensor, MemristorLinear], object] | None = None

    @classmethod
    def from_linear(
        cls,
        linear: Any,
        config: CrossbarConfig,
        generator: torch.Generator | None = None,
        program: bool = True,
        progress: ProgressCallback | None = None,
    ) -> MemristorLinear:
        """Map and program a trained layer: a plain nn.Linear (per-tensor scale max|W| / max_level), or a
        quantization-aware linear exposing integer_weight() and weight_scale, and input_scale and input_bits if
        it quantizes its inputs (any module with these attributes: duck-typed, hence `Any`); `column_present`,
        if it has one, marks the columns of each row of tiles that hold weights. program=False maps without
        programming (every cell stays in HRS): a shell to load a saved chip's state_dict into, in a fraction of
        the time. progress: called with programming's ProgrammingProgress events (memsim.progress)."""
        weight = linear.weight.detach()
        present = getattr(linear, "column_present", None)
        layer = cls(linear.in_features, linear.out_features, config, linear.bias is not None, generator, present)
        layer.to(weight.device)
        layer.weights_held = getattr(linear, "weights_held", layer.weights_held)
        if hasattr(linear, "integer_weight"):
            q = linear.integer_weight().detach()
            scale = torch.as_tensor(linear.weight_scale).detach().reshape(-1)  # per-tensor or per-channel
            if q.abs().max() > config.max_level:
                raise ValueError(
                    f"the layer's integer weights reach {int(q.abs().max())}, beyond the "
                    f"{config.weight_bits}-bit crossbar's +-{config.max_level}"
                )
        else:
            q, scale = integer_weights(weight, config.max_level)
        if hasattr(linear, "input_scale"):
            # The activation quantizer's full scale maps to v_read: a DAC of input_bits reproduces it. Without
            # keep_input_quantizer the DAC alone quantizes the raw activations over that full scale.
            levels = 2 ** (int(linear.input_bits) - 1) - 1
            layer.input_levels = levels if config.keep_input_quantizer else None
            layer.input_range.copy_(torch.as_tensor(linear.input_scale).detach() * levels)
        if program:
            cells = digit_planes(q, config.planes, config.tile_size, config.levels_per_cell)
            programmed = program_cells(cells, config, generator, progress)
            layer.r.copy_(programmed.r)
            layer.failed_cells.fill_(programmed.failed)
            layer.read_disturbable_cells.fill_(programmed.read_disturbable)
            if programmed.disturb_threshold is not None:
                layer.disturb_threshold.copy_(programmed.disturb_threshold)
            if programmed.pulses is not None and programmed.failed_by_level is not None:
                pulses = programmed.pulses.reshape(-1).long()
                layer.pulse_histogram.copy_(torch.bincount(pulses, minlength=config.pulse_budget + 1))
                layer.level_failures.copy_(programmed.failed_by_level)
                layer.level_histogram.copy_(level_histogram(layer.r, cells, config.levels_per_cell, layer.read_model))
            if config.wired:  # the arrays' transfer matrices, once, as part of programming (cell_pairs caches them)
                layer.cell_pairs()
            if config.calibration == "per_column":
                gain, offset = fit_columns(cells, layer.cell_pairs().difference, layer.read_model, config, generator)
                layer.column_gain.copy_(gain)
                layer.column_offset.copy_(offset)
            if config.read_time > 0:
                layer.relax(generator)
        output_quant = getattr(linear, "output_quant", None)
        if isinstance(output_quant, nn.Module):
            layer.output_quant = output_quant
        layer.weight_scale.copy_(scale.expand(linear.out_features))
        if layer.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        return layer

    @torch.no_grad()
    def relax(self, generator: torch.Generator | None = None) -> None:
        """The cells as they read config.read_time seconds after programming (memsim.relaxation), and the drift
        compensation: the chip reads its columns' test inputs (crossbar.column_test_voltages) before and after, fits
        the reads after on those before (one least-squares gain through the origin per layer, "global"; a gain and
        an offset per tile, plane and column, "per_column"), and folds the fit into the column correction, so that
        the corrected outputs read as at programming: with a calibration (gain g, offset o) already there, an
        output c after drift a x + b reads (c - (b + a o)) / (a g)."""
        config = self.config
        v_typical = torch.tensor(typical_read_voltage(config), device=self.r.device)
        base, delta = (float(c) for c in self.read_model.conductances(v_typical))
        model = RELAXATION_MODELS[config.relaxation]
        compensation = config.drift_compensation
        tests = before = None
        if compensation != "none":
            tests = column_test_voltages(config, generator, self.r.device)
            before = column_test_reads(tests, self.cell_pairs().difference, self.read_model, config)
        read = self.read_model
        self.r.copy_(relax(self.r, base, delta, read.r_on, read.r_off, config.read_time, model, generator))
        if tests is None or before is None:
            return
        after = column_test_reads(tests, self.cell_pairs().difference, self.read_model, config)
        if compensation == "global":
            gain = (after * before).sum() / before.square().sum().clamp_min(torch.finfo(before.dtype).tiny)
            offset = torch.zeros((), device=gain.device)
        else:
            gain, offset = (fitted.view_as(self.column_gain) for fitted in fit_lines(before, after))
        self.column_offset.mul_(gain).add_(offset)
        self.column_gain.mul_(gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = self.respond(x.reshape(-1, self.in_features).float())
        return y.view(*shape[:-1], self.out_features)

    def respond(
        self,
        x: torch.Tensor,
        rows: Callable[[torch.Tensor], torch.Tensor] | None = None,
        read: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The layer's outputs [N, out] for inputs x [N, in]; or, with `rows` and `read`, for the rows rows(x) of
        any tensor x, which read(v) reads from the voltages v of x (a convolution: memsim.conv_read): the DAC,
        the read, the scaling and the digital output; when gradients are wanted, with the gradient of the
        chip's mean path (through_mean_path)."""
        input_range = self.range_of(x)
        with torch.no_grad():
            y = read_inputs(read or self.read, dac(x, input_range, self.config, self.input_levels), self.config)
        y = y * (input_range * self.weight_scale)
        if torch.is_grad_enabled() and x.requires_grad:
            y = self.through_mean_path(x if rows is None else rows(x), y)
        return self.digital_output(y)

    def through_mean_path(self, x: torch.Tensor, y: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """y, the chip's read of inputs x [N, in] (or of the matrix's `rows` only) scaled to the layer's output
        units, with the gradient of its mean path: x @ effective_weight().T x weight_scale (straight through the
        DAC, the ADC and the noise), so digital layers before and after a chip can be trained against it."""
        mean = (x @ self.effective_weight()[:, rows].T) * self.weight_scale
        return mean + (y - mean).detach()

    def effective_weight(self) -> torch.Tensor:
        """[out, in]: what the programmed cells hold, in weight levels: per weight, the place-weighted difference
        of its cells' chord conductances at the typical read voltage (crossbar.typical_read_voltage), through the
        wires if they have resistance, relative to one level step, and with per-column calibration divided by its
        column's gain (its offset adds to every input alike: no weight's). q itself on an ideal chip. Cached until
        read_key() or the calibration's gains change."""
        config = self.config
        per_column = config.corrects_columns
        gains = (self.column_gain.data_ptr(), self.column_gain._version) if per_column else ()
        key = (*self.read_key(), config.calibration, *gains)
        if getattr(self, "_effective_key", None) != key:
            v = torch.tensor(typical_read_voltage(config), device=self.r.device)
            _, delta = self.read_model.conductances(v)
            places = torch.tensor([float(config.levels_per_cell**k) for k in range(config.planes)], device=v.device)
            difference = self.cell_pairs().difference.unflatten(-1, (config.planes, self.out_features))
            if per_column:  # [in padded, planes, out] / [tiles, 1, planes, out]
                difference = (difference.unflatten(0, (-1, config.tile_size)) / self.column_gain[:, None]).flatten(0, 1)
            pairs = torch.einsum("ipo,p->oi", difference, places)[:, : self.in_features]
            self._effective = pairs * (config.v_read * delta / self.read_model.unit_current)
            self._effective_key = key
        return self._effective

    def range_of(self, x: torch.Tensor) -> torch.Tensor:
        """The input magnitude the DAC maps to v_read: the stored range, else this batch's max-abs (which a
        calibration pass keeps the largest of)."""
        batch_range = x.detach().abs().amax().clamp_min(torch.finfo(x.dtype).tiny)
        if self.calibrating:
            self.input_range.copy_(torch.maximum(self.input_range, batch_range))
        return torch.where(self.input_range > 0, self.input_range, batch_range)

    def read(self, v: torch.Tensor, first_tile: int = 0) -> torch.Tensor:
        """The ADC outputs [N, out] (in units of one programmed pair) of voltages v [N, in]; or, from row tile
        `first_tile` on, of voltages v [N, k] on the k rows from that tile's first: only the tiles holding them
        are read (their outputs summed digitally, as all tiles' are), so a matrix's rows can be read in parts."""
        if self.energy_meter is not None:
            if (first_tile, v.shape[1]) != (0, self.in_features):
                raise ValueError("an energy meter measures whole reads only: read all rows at once")
            self.energy_meter(v, self)
        y = self.read_factors(self.read_model.row_factors(v, self.factor_unit()), first_tile)
        if self.config.read_disturb:
            self.disturb(v.amin(0), v.amax(0), first_tile * self.config.tile_size)
        return y

    @torch.no_grad()
    def disturb(self, lowest: torch.Tensor, highest: torch.Tensor, first_row: int = 0) -> None:
        """Read disturb (memsim.disturb) of a read whose rows first_row..first_row+k saw voltages down to lowest [k]
        and up to highest [k]: the cells those voltages switch, counted in `read_switched_cells`. Only the rows whose
        voltages reach their bound (the highest SET threshold of their cells not in LRS, the lowest RESET threshold
        of those in LRS) are looked at, cell by cell: one comparison per row, and a host synchronization to find
        them."""
        rows = slice(first_row, first_row + lowest.numel())
        if getattr(self, "_bounds_key", None) != self._threshold_key():
            self._bounds = row_bounds(self.disturb_threshold)
        settable, resettable = (bound[rows] for bound in self._bounds)
        reached = torch.nonzero((lowest <= settable) | (highest > resettable)).squeeze(1)  # disturb may sync
        if reached.numel() == 0:
            self._bounds_key = self._threshold_key()
            return
        chosen = reached + first_row
        r, threshold = self.r.index_select(1, chosen), self.disturb_threshold.index_select(1, chosen)
        params = device_params(self.config).to(self.r.device)
        switched = switch(
            r, threshold, lowest[reached], highest[reached], params, self.config.stationary_cells, self.generator
        )
        self.r.index_copy_(1, chosen, r)
        self.disturb_threshold.index_copy_(1, chosen, threshold)
        for bound, chosen_bound in zip(self._bounds, row_bounds(threshold), strict=True):
            bound.index_copy_(0, chosen, chosen_bound)
        self._bounds_key = self._threshold_key()
        self.read_switched_cells += switched

    def _threshold_key(self) -> tuple:
        """What changes whenever the disturb thresholds do from outside disturb() (programming, load_state_dict)."""
        return (self.disturb_threshold.data_ptr(), self.disturb_threshold._version)

    def factor_unit(self) -> float:
        """The current that row factors are measured in (ReadModel.row_factors): one ADC step."""
        return self.read_model.unit_current * adc_step(self.config)

    def read_factors(self, factors: RowFactors, first_tile: int = 0) -> torch.Tensor:
        """read() of input vectors given by their row factors (ReadModel.row_factors in factor_unit()) [N, k]
        each: the rows from tile `first_tile`'s first on."""
        tile = self.config.tile_size
        last_tile = first_tile + math.ceil(factors[0].shape[1] / tile)
        columns = None
        if self.config.corrects_columns:
            parts = slice(first_tile, last_tile)
            columns = ColumnCalibration(self.column_gain[parts], self.column_offset[parts])
        tile_columns = self.tile_columns()
        rows = slice(first_tile * tile, last_tile * tile)
        difference, total = self.cell_pairs()
        return tile_reads(
            factors,
            CellPairs(difference[rows], total[rows]),
            self.config.planes,
            self.config,
            self.generator,
            columns,
            self.adc_probe,
            None if tile_columns is None else tile_columns[first_tile:last_tile],
            self.padding_factors(factors[0].shape[-1]),
        )

    def padding_factors(self, rows: int) -> RowFactors | None:
        """The row factors of the 0 V padding rows of a read of `rows` of the matrix's rows (None: they fill their
        tiles)."""
        if rows % self.config.tile_size == 0:
            return None
        return zero_volt_factors(self.read_model, self.factor_unit(), self.r)

    def programming_key(self) -> tuple:
        """What changes whenever the programmed cells do (programming, load_state_dict, a move to another device):
        the key of everything cached from them."""
        return (self.r.data_ptr(), self.r._version, self.r.device)

    def read_key(self) -> tuple:
        """programming_key and the settings cell_pairs makes the read's matrices with: the wires, the input scheme
        and v_read (the typical read voltage). Neither the converters nor the calibration are among them: set_adc
        and a column fit leave the transfer matrices as they are."""
        c = self.config
        return (*self.programming_key(), c.wire_resistance, c.input_scheme, c.v_read)

    def cell_pairs(self) -> CellPairs:
        """The programmed pairs as the read uses them (crossbar.cell_pairs), cached until read_key() changes."""
        key = self.read_key()
        if getattr(self, "_pairs_key", None) != key:
            self._pairs, self._pairs_key = cell_pairs(self.r, self.read_model, self.config), key
        return self._pairs

    def partial_response(self, x: torch.Tensor, first_row: int) -> torch.Tensor:
        """The scaled product [N, out] of inputs x [N, k] with the matrix's rows first_row..first_row+k, without the
        bias: what the tiles holding those rows add to the layer's output (digital_output(sum of the parts) is the
        output). first_row must start a row tile, and the DAC's range must be fixed (input_range set): a part's
        voltages may not depend on the other parts' inputs. An LSTM reads its input rows for all time steps at once
        this way, and only the recurrent rows step by step."""
        tile = self.config.tile_size
        if first_row % tile:
            raise ValueError(f"a partial read starts at a row tile: row {first_row} is not a multiple of {tile}")
        with torch.no_grad():
            v = dac(x, self.input_range, self.config, self.input_levels)
            y = read_inputs(lambda pulse: self.read(pulse, first_row // tile), v, self.config)
        y = y * (self.input_range * self.weight_scale)
        if torch.is_grad_enabled() and x.requires_grad:
            y = self.through_mean_path(x, y, slice(first_row, first_row + x.shape[1]))
        return y

    def digital_output(self, y: torch.Tensor) -> torch.Tensor:
        """The scaled read to the layer's output: the bias added, and the source's output quantizer, if any."""
        if self.bias is not None:
            y = y + self.bias
        return y if self.output_quant is None else self.output_quant(y)

    def column_presence(self) -> torch.Tensor | None:
        """[row tiles, out]: whether each column is connected in each row of tiles (None: all of them)."""
        return self.column_present

    def tile_columns(self) -> list[torch.Tensor] | None:
        """Per row of tiles, the indices of its connected columns, on the layer's device (None: all of them)."""
        if self._tile_columns is not None and self._tile_columns[0].device != self.r.device:
            self._tile_columns = [columns.to(self.r.device) for columns in self._tile_columns]
        return self._tile_columns

    def _existing_tiles(self) -> torch.Tensor:
        """[row tiles, column tiles]: the tiles that have at least one connected column."""
        tile = self.config.tile_size
        present = self.column_present
        if present is None:
            return torch.ones(math.ceil(self.in_features / tile), math.ceil(self.out_features / tile), dtype=torch.bool)
        padded = torch.nn.functional.pad(present.cpu(), (0, -self.out_features % tile))
        return padded.view(present.shape[0], -1, tile).any(2)

    def tiles(self) -> int:
        """Tiles of the layer's matrix that exist on the chip (each a differential pair per plane)."""
        return int(self._existing_tiles().sum())

    def conversions(self) -> tuple[int, int]:
        """DAC and ADC conversions per input vector: per read pulse, one DAC conversion per row of every array that
        exists (each array has its own row drivers) and one ADC conversion per connected column, plane and row of
        tiles; times the pulses a vector takes (crossbar.reads_per_vector: 14 for bit-serial 8-bit inputs)."""
        c = self.config
        tile, planes, pulses = c.tile_size, c.planes, reads_per_vector(c)
        in_tiles = math.ceil(self.in_features / tile)
        rows_per_tile = torch.tensor([min(tile, self.in_features - i * tile) for i in range(in_tiles)])
        dac = int((self._existing_tiles().long().sum(1) * rows_per_tile).sum()) * 2 * planes
        if self.column_present is None:
            return pulses * dac, pulses * in_tiles * planes * self.out_features
        return pulses * dac, pulses * int(self.column_present.sum()) * planes

    def set_adc(self, precision_bits: int | None, range_bits: int | None) -> None:
        """Give this layer its own ADC (step 2^-precision_bits, clipping at +-2^(range_bits - 1); None: ideal).
        The ADC acts only when reading: the programmed cells stay as they are."""
        self.config = self.config.with_adc_bits(precision_bits, range_bits)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, weight_bits={c.weight_bits}, "
            f"device={c.device}, tile_size={c.tile_size}, dac_bits={c.dac_bits}, "
            f"adc=({c.adc_precision_bits}, {c.adc_range_bits}), read_noise={c.read_noise}, calibration={c.calibration}"
            + (f", wire_ohms={c.wire_resistance}" if c.wired else "")
        )
