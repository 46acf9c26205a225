"""LSTMs on crossbars: LinearLSTM, an nn.LSTM whose gate products are linear layers, and MemristorLSTM, the same
with those layers on crossbar tiles.

Per layer and direction, one linear layer holds [W_ih | W_hh] ([4 x hidden, input + hidden]) and the sum of the
two biases, so each time step is one matrix product of [x_t; h_(t-1)]: one crossbar read per step and direction
(the two directions' weights differ, so they read separately). On crossbars, when the input rows fill row tiles of
their own, those tiles read all time steps' inputs at once and only the recurrent rows' tiles read step by step
(MemristorLinear.partial_response). The gate nonlinearities and the cell state stay digital. Because the gates
are ordinary linear layers, memsim.convert maps them as it maps any linear layer, and a quantization-aware model
can swap them for its own quantization-aware linear layers.
"""

from __future__ import annotations

import typing

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from memsim.config import CrossbarConfig
from memsim.layers import MemristorLinear


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
            runs = []
            for d, cell in enumerate(cells):
                state = (hx[0][k * directions + d], hx[1][k * directions + d])
                runs.append(_run(cell, x, lengths, state, reverse=d == 1))
                h_n.append(runs[-1][1])
                c_n.append(runs[-1][2])
            x = torch.cat([output for output, _, _ in runs], 2)
            if self.dropout and self.training and k < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout)
        state_n = (torch.stack(h_n), torch.stack(c_n))
        if packed and lengths is not None:
            return pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False), state_n
        return (x.transpose(0, 1) if self.batch_first else x), state_n

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, batch_first={self.batch_first}, "
            f"bidirectional={self.bidirectional}"
        )


def _run(
    cell: nn.Module,
    x: torch.Tensor,
    lengths: torch.Tensor | None,
    state: tuple[torch.Tensor, torch.Tensor],
    reverse: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One direction of one layer over x [T, B, input]: outputs [T, B, hidden] and the final (h, c)."""
    h, c = state
    if reverse:
        x = _reverse(x, lengths)
    inputs = x.shape[-1]
    ahead = None
    if _reads_inputs_ahead(cell, inputs):  # the input rows' tiles read every step's x_t at once
        assert isinstance(cell, MemristorLinear)
        ahead = cell.partial_response(x.reshape(-1, inputs), 0).view(*x.shape[:2], -1)
    outputs = []
    for t in range(x.shape[0]):
        if ahead is None:
            gates = cell(torch.cat([x[t], h], 1))
        else:
            assert isinstance(cell, MemristorLinear)
            gates = cell.digital_output(ahead[t] + cell.partial_response(h, inputs))
        i, f, g, o = gates.chunk(4, 1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        if lengths is None:
            h, c = h_new, c_new
            outputs.append(h_new)
        else:  # past its end a sequence keeps its state and outputs 0 (no host sync: a mask on the device)
            valid = (t < lengths)[:, None]
            h, c = torch.where(valid, h_new, h), torch.where(valid, c_new, c)
            outputs.append(h_new * valid)
    y = torch.stack(outputs)
    return (_reverse(y, lengths) if reverse else y), h, c


def _reads_inputs_ahead(cell: nn.Module, inputs: int) -> bool:
    """Whether a gate layer on crossbars can read its input rows (W_ih x_t) for all steps before the recurrence:
    they fill whole row tiles of their own, the DAC's range is fixed, and no instrument wants whole reads (an
    energy meter, or a forward hook such as memsim.layer_errors'). Exact: each tile's read is independent of the
    others', and the tiles' outputs are summed digitally either way."""
    return (
        isinstance(cell, MemristorLinear)
        and inputs % cell.config.tile_size == 0
        and cell.energy_meter is None
        and not (cell._forward_hooks or cell._forward_pre_hooks)
        and bool(cell.input_range > 0)  # once per layer and direction, not per step
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
    ) -> MemristorLSTM:
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
            nn.ModuleList(MemristorLinear.from_linear(cell, config, generator, program) for cell in directions)
            for directions in source.gates()
        )
        return layer
