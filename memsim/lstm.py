"""LSTMs on crossbars: LinearLSTM, an nn.LSTM whose gate products are linear layers, and MemristorLSTM, the same
with those layers on crossbar tiles.

Per layer and direction, one linear layer holds [W_ih | W_hh] ([4 x hidden, input + hidden]) and the sum of the
two biases, so each time step is one matrix product of [x_t; h_(t-1)]: one crossbar read per step and direction.
Both directions of a layer step together. On crossbars, when the input rows fill row tiles of their own, those
tiles read all time steps' inputs at once and only the recurrent rows' tiles read step by step
(MemristorLinear.partial_response); and when no gradient is wanted, the two directions' step reads are one
stacked read (their matrices differ, but the tiles' GEMMs, noise and ADC run as one batch). The gate
nonlinearities and the cell state stay digital. Because the gates
are ordinary linear layers, memsim.convert maps them as it maps any linear layer, and a quantization-aware model
can swap them for its own quantization-aware linear layers.
"""

from __future__ import annotations

import typing

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from memsim.config import CrossbarConfig
from memsim.crossbar import CellPairs, ColumnCalibration, dac, read_inputs, tile_reads
from memsim.layers import MemristorLinear
from memsim.progress import ProgressCallback


class LinearLSTM(nn.Module):
    """A drop-in for nn.LSTM (layers, bidirectional, batch_first, dropout between layers; no projections) whose
    gates of layer k and direction d come from `cells[k][d]`, a linear layer of [x_t; h_(t-1)].

    forward(x, hx=None, lengths=None): x [T, B, input] ([B, T, input] with batch_first) or a PackedSequence;
    `lengths` [B], if given, marks the padding (as a PackedSequence does): states stop at each sequence's end,
    the reverse direction starts at it, and padded outputs are 0. Returns (output, (h_n, c_n)) as nn.LSTM."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
    ):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first, self.dropout, self.bidirectional = batch_first, dropout, bidirectional
        directions = 2 if bidirectional else 1
        self.cells = nn.ModuleList(
            nn.ModuleList(
                nn.Linear((input_size if k == 0 else directions * hidden_size) + hidden_size, 4 * hidden_size, bias)
                for _ in range(directions)
            )
            for k in range(num_layers)
        )

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM) -> LinearLSTM:
        """The same function as a trained nn.LSTM: each cell holds [W_ih | W_hh] and b_ih + b_hh."""
        if lstm.proj_size:
            raise ValueError(f"an LSTM with projections (proj_size={lstm.proj_size}) is not supported")
        layer = cls(
            lstm.input_size,
            lstm.hidden_size,
            lstm.num_layers,
            lstm.bias,
            lstm.batch_first,
            float(lstm.dropout),
            lstm.bidirectional,
        )
        layer.to(next(lstm.parameters()).device)
        trained = dict(lstm.named_parameters())
        for k, directions in enumerate(layer.gates()):
            for d, cell in enumerate(directions):
                suffix = f"l{k}" + ("_reverse" if d else "")
                gate = typing.cast(nn.Linear, cell)
                weight = torch.cat([trained[f"weight_ih_{suffix}"], trained[f"weight_hh_{suffix}"]], 1)
                gate.weight.data.copy_(weight.detach())
                if lstm.bias:
                    gate.bias.data.copy_((trained[f"bias_ih_{suffix}"] + trained[f"bias_hh_{suffix}"]).detach())
        return layer

    def gates(self) -> list[list[nn.Module]]:
        """The gate layers, [layer][direction]."""
        return [list(typing.cast(nn.ModuleList, directions)) for directions in self.cells]

    def forward(
        self,
        inputs: torch.Tensor | PackedSequence,
        hx: tuple[torch.Tensor, torch.Tensor] | None = None,
        lengths: torch.Tensor | None = None,
    ):
        packed = isinstance(inputs, PackedSequence)
        if isinstance(inputs, PackedSequence):
            x, lengths = pad_packed_sequence(inputs)  # [T, B, input] in the original order, lengths on the CPU
        else:
            x = inputs.transpose(0, 1) if self.batch_first else inputs
        steps, batch = x.shape[:2]
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=x.device)
        directions = 2 if self.bidirectional else 1
        if hx is None:
            zeros = x.new_zeros(self.num_layers * directions, batch, self.hidden_size)
            hx = (zeros, zeros)
        h_n, c_n = [], []
        for k, cells in enumerate(self.gates()):
            layer_states = slice(k * directions, (k + 1) * directions)
            x, h, c = _run_layer(cells, x, lengths, (hx[0][layer_states], hx[1][layer_states]))
            h_n.append(h)
            c_n.append(c)
            if self.dropout and self.training and k < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout)
        state_n = (torch.cat(h_n), torch.cat(c_n))
        if packed and lengths is not None:
            return pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False), state_n
        return (x.transpose(0, 1) if self.batch_first else x), state_n

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, batch_first={self.batch_first}, "
            f"bidirectional={self.bidirectional}"
        )


def _run_layer(
    cells: list[nn.Module],
    x: torch.Tensor,
    lengths: torch.Tensor | None,
    state: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer over x [T, B, input], its directions (the reverse one on each sequence reversed) stepped together:
    outputs [T, B, directions x hidden] and the final (h, c), [directions, B, hidden] each."""
    inputs = [x, _reverse(x, lengths)][: len(cells)]
    gates_at = _step_gates(cells, inputs)
    h, c = state
    outputs = []
    for t in range(x.shape[0]):
        i, f, g, o = gates_at(t, h).chunk(4, -1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        if lengths is None:
            h, c = h_new, c_new
            outputs.append(h_new)
        else:  # past its end a sequence keeps its state and outputs 0 (no host sync: a mask on the device)
            valid = (t < lengths)[:, None]
            h, c = torch.where(valid, h_new, h), torch.where(valid, c_new, c)
            outputs.append(h_new * valid)
    y = torch.stack(outputs, 1)  # [directions, T, B, hidden]
    in_time_order = [y[0], _reverse(y[1], lengths)] if len(cells) == 2 else [y[0]]
    return torch.cat(in_time_order, 2), h, c


def _step_gates(cells: list[nn.Module], inputs: list[torch.Tensor]) -> typing.Callable[..., torch.Tensor]:
    """The gates of one layer's directions at step t, as a function of (t, h [directions, B, hidden]) ->
    [directions, B, 4 x hidden]; inputs[d] [T, B, input] is direction d's sequence. Reads ahead what it can
    (_reads_inputs_ahead), and the two directions' step reads as one when it can (_reads_paired)."""
    width = inputs[0].shape[-1]
    ahead = [_read_ahead(cell, x) for cell, x in zip(cells, inputs, strict=True)]
    if len(cells) == 2 and _reads_paired(cells):
        memristors = typing.cast(list[MemristorLinear], cells)
        if ahead[0] is not None and ahead[1] is not None:
            read, ahead_both = _PairedRead(memristors, width), torch.stack([ahead[0], ahead[1]])
            return lambda t, h: _digital_outputs(memristors, ahead_both[:, t] + read(h))
        read, sequences = _PairedRead(memristors, 0), torch.stack(inputs)
        return lambda t, h: _digital_outputs(memristors, read(torch.cat([sequences[:, t], h], -1)))

    def gates_at(t: int, h: torch.Tensor) -> torch.Tensor:
        gates = []
        for d, (cell, x, x_read) in enumerate(zip(cells, inputs, ahead, strict=True)):
            if x_read is None:
                gates.append(cell(torch.cat([x[t], h[d]], 1)))
            else:
                memristor = typing.cast(MemristorLinear, cell)
                gates.append(memristor.digital_output(x_read[t] + memristor.partial_response(h[d], width)))
        return torch.stack(gates)

    return gates_at


def _read_ahead(cell: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The input rows' part of the gates for every step of x [T, B, input] at once, [T, B, 4 x hidden] (None where
    the cell cannot read ahead)."""
    if not _reads_inputs_ahead(cell, x.shape[-1]):
        return None
    assert isinstance(cell, MemristorLinear)
    return cell.partial_response(x.reshape(-1, x.shape[-1]), 0).view(*x.shape[:2], -1)


def _digital_outputs(cells: list[MemristorLinear], y: torch.Tensor) -> torch.Tensor:
    """Each direction's scaled read y [directions, B, 4 x hidden] to its gates: its bias and output quantizer."""
    return torch.stack([cell.digital_output(part) for cell, part in zip(cells, y, strict=True)])


def _fixed_and_unobserved(cell: nn.Module) -> bool:
    """A gate layer on crossbars with a fixed DAC range (set, and not being calibrated: a calibration pass must see
    every input), no instrument that wants whole reads (an energy meter, or a forward hook such as
    memsim.layer_errors') and no read disturb: its reads can be split into parts and batched."""
    return (
        isinstance(cell, MemristorLinear)
        and not cell.calibrating
        and cell.energy_meter is None
        and not cell.config.read_disturb  # every step's read disturbs before the next one reads
        and not (cell._forward_hooks or cell._forward_pre_hooks)
        and bool(cell.input_range > 0)  # once per layer and direction, not per step
    )


def _reads_inputs_ahead(cell: nn.Module, inputs: int) -> bool:
    """Whether a gate layer on crossbars can read its input rows (W_ih x_t) for all steps before the recurrence:
    they fill whole row tiles of their own, and its reads can be split (_fixed_and_unobserved). Exact: each tile's
    read is independent of the others', and the tiles' outputs are summed digitally either way."""
    return _fixed_and_unobserved(cell) and inputs % typing.cast(MemristorLinear, cell).config.tile_size == 0


def _reads_paired(cells: list[nn.Module]) -> bool:
    """Whether both directions' step reads can be one stacked read: both on crossbars of one configuration and
    input quantizer, their reads splittable (_fixed_and_unobserved), no ADC probe (it would see both layers as
    one) and no gradient wanted (the stacked read has no mean path to train through)."""
    if torch.is_grad_enabled() or not all(_fixed_and_unobserved(cell) for cell in cells):
        return False
    forward, reverse = typing.cast(list[MemristorLinear], cells)
    return (
        forward.config == reverse.config
        and forward.input_levels == reverse.input_levels
        and forward.adc_probe is None
        and reverse.adc_probe is None
    )


class _PairedRead:
    """Both directions' step reads as one stacked crossbar read (crossbar.tile_reads over [2, ...]): the rows from
    `first_row` (the start of a row tile) on of both gate matrices, each with its own DAC range, output scale and
    column calibration, as partial_response reads them one at a time. The read noise comes from the forward
    direction's generator. The stacked cell pairs are copied once per forward, not per step."""

    def __init__(self, cells: list[MemristorLinear], first_row: int):
        self.layer = cells[0]
        rows = slice(first_row, None)
        pairs = [c.cell_pairs() for c in cells]
        self.pairs = CellPairs(
            torch.stack([p.difference[rows] for p in pairs]), torch.stack([p.total[rows] for p in pairs])
        )
        self.ranges = torch.stack([c.input_range for c in cells]).view(-1, 1, 1)
        self.scales = torch.stack([c.input_range * c.weight_scale for c in cells])[:, None, :]
        self.columns = None
        self.padding = self.layer.padding_factors(self.layer.in_features - first_row)
        if self.layer.config.corrects_columns:
            tiles = slice(first_row // self.layer.config.tile_size, None)
            gain, offset = (
                torch.stack([getattr(c, name)[tiles] for c in cells]) for name in ("column_gain", "column_offset")
            )
            self.columns = ColumnCalibration(gain, offset)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The scaled partial products [2, B, out] of each direction's inputs x [2, B, k] with its rows."""
        layer, config = self.layer, self.layer.config
        read = read_inputs(self._read, dac(x, self.ranges, config, layer.input_levels), config)
        return read * self.scales

    def _read(self, v: torch.Tensor) -> torch.Tensor:
        """Both directions' ADC outputs [2, B, out] of one pulse of voltages v [2, B, k]."""
        layer, config = self.layer, self.layer.config
        factors = layer.read_model.row_factors(v, layer.factor_unit())
        return tile_reads(
            factors, self.pairs, config.planes, config, layer.generator, self.columns, None, None, self.padding
        )


def _reverse(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Each sequence of x [T, B, F] reversed within its own length (padding stays where it is)."""
    if lengths is None:
        return x.flip(0)
    t = torch.arange(x.shape[0], device=x.device)[:, None]
    index = torch.where(t < lengths, lengths - 1 - t, t)  # [T, B]
    return x.gather(0, index[:, :, None].expand_as(x))


class MemristorLSTM(LinearLSTM):
    """A LinearLSTM whose gate layers are MemristorLinear: from_lstm() maps and programs an nn.LSTM (or any
    LinearLSTM, including one with quantization-aware gate layers) onto crossbars."""

    @classmethod
    def from_lstm(  # type: ignore[override]
        cls,
        lstm: nn.LSTM | LinearLSTM,
        config: CrossbarConfig,
        generator: torch.Generator | None = None,
        program: bool = True,
        progress: ProgressCallback | None = None,
    ) -> MemristorLSTM:
        """progress: as MemristorLinear.from_linear's, for each gate matrix (one per layer and direction)."""
        source = lstm if isinstance(lstm, LinearLSTM) else LinearLSTM.from_lstm(lstm)
        first = source.gates()[0][0]
        layer = cls(
            source.input_size,
            source.hidden_size,
            source.num_layers,
            getattr(first, "bias", None) is not None,
            source.batch_first,
            source.dropout,
            source.bidirectional,
        )
        layer.cells = nn.ModuleList(
            nn.ModuleList(
                MemristorLinear.from_linear(cell, config, generator, program, progress) for cell in directions
            )
            for directions in source.gates()
        )
        return layer
