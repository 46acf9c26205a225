"""MemristorConv1d and MemristorConv2d: convolutions whose products run on crossbar tiles.

A convolution is a matrix product per output position: its weights [out, in / groups, *kernel] become a matrix
[out, in x kernel] whose row o holds output o's taps on the input axis (channel-major, as F.unfold orders the
input's patches); with groups, each group's block sits on the diagonal and the rest stores 0 (a depthwise
convolution: each channel's taps in its own rows, its output in its own column). That matrix is mapped and
programmed as a MemristorLinear (`crossbar`), with the same DAC, ADC, noise, programming and state_dict; its
columns that hold no weights in a row of tiles are not connected there (`column_present`): neither read nor
converted, and a tile with none of them does not exist.
The forward reads each patch (im2col) as one input vector of the crossbar: a dense convolution's unfolded
patches with MemristorLinear's GEMM read; a grouped one's without unfolding, its sums over a tile's rows as
convolutions over the input (memsim.conv_read).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from memsim.config import CrossbarConfig
from memsim.conv_read import TileConvolution
from memsim.crossbar import integer_weights
from memsim.layers import MemristorLinear
from memsim.progress import ProgressCallback

# A dense convolution gathers its patches' row factors in parts of at most this many elements per factor (8 MiB):
# a buffer above glibc's largest mmap threshold (32 MiB) is fresh pages at every read, and the page faults cost
# more than the copy. The paper VGG's Conv2d 128 -> 128 gathered whole (3 x 92 MB) read 1.2x slower (526 against
# 441 ms per read; the README's speed section gives the command and revision).
GATHER_PART_ELEMENTS = 2**21


class _Matrix:
    """The matrix of a convolution, as MemristorLinear.from_linear reads a quantization-aware linear."""

    def __init__(
        self,
        q: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
        column_present: torch.Tensor | None,
        held: int,
        source: Any,
    ):
        self._q, self.weight_scale, self.bias, self.column_present = q, scale, bias, column_present
        self.out_features, self.in_features = q.shape
        self.weights_held = held
        self.weight = q * scale.reshape(-1, 1) if scale.numel() > 1 else q * scale
        for name in ("input_scale", "input_bits", "output_quant"):  # a quantization-aware source's quantizers
            if hasattr(source, name):
                setattr(self, name, getattr(source, name))

    def integer_weight(self) -> torch.Tensor:
        return self._q


def columns_holding_weights(out_features: int, group_inputs: int, groups: int, tile_size: int) -> torch.Tensor | None:
    """[row tiles, out]: the columns of a grouped matrix (block_diagonal) that hold weights in each row of tiles;
    None when all do (no groups)."""
    if groups == 1:
        return None
    slots = block_diagonal(torch.ones(out_features, group_inputs), groups).T  # [inputs, outputs]
    slots = F.pad(slots, (0, 0, 0, -slots.shape[0] % tile_size))
    return slots.view(-1, tile_size, out_features).amax(1).bool()


def block_diagonal(q: torch.Tensor, groups: int) -> torch.Tensor:
    """[out, in / groups x K] per-group taps -> [out, in x K]: group g's outputs read only group g's inputs."""
    out_features, group_inputs = q.shape
    dense = q.new_zeros(out_features, groups * group_inputs)
    group_outputs = out_features // groups
    for g in range(groups):
        rows = slice(g * group_outputs, (g + 1) * group_outputs)
        dense[rows, g * group_inputs : (g + 1) * group_inputs] = q[rows]
    return dense


class MemristorConv(nn.Module):
    """What MemristorConv1d and MemristorConv2d share: the geometry, the mapping and the unfolded read."""

    dims = 2

    def __init__(
        self,
        crossbar: MemristorLinear,
        in_channels: int,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        padding: tuple[int, ...],
        dilation: tuple[int, ...],
        groups: int,
    ):
        super().__init__()
        self.crossbar = crossbar
        self.in_channels, self.out_channels = in_channels, crossbar.out_features
        self.kernel_size, self.stride, self.padding, self.dilation, self.groups = (
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
        )
        self.tile_read = TileConvolution(self)

    @classmethod
    def from_conv(
        cls,
        conv: Any,
        config: CrossbarConfig,
        generator: torch.Generator | None = None,
        program: bool = True,
        progress: ProgressCallback | None = None,
    ) -> MemristorConv:
        """Map and program a trained convolution: a plain nn.Conv1d / nn.Conv2d (per-tensor scale max|W| /
        max_level), or a quantization-aware one exposing integer_weight() and weight_scale (and input_scale,
        input_bits if it quantizes its inputs). Zero padding with integer or "valid" padding only. progress: as
        MemristorLinear.from_linear's."""
        if getattr(conv, "padding_mode", "zeros") != "zeros":
            raise ValueError(f"only zero padding maps onto crossbars, got padding_mode={conv.padding_mode!r}")
        padding = conv.padding
        if isinstance(padding, str):
            if padding != "valid":
                raise ValueError(f"padding={padding!r}: give the padding in elements (or 'valid')")
            padding = (0,) * cls.dims
        weight = conv.weight.detach()
        if hasattr(conv, "integer_weight"):
            q, scale = conv.integer_weight().detach(), torch.as_tensor(conv.weight_scale).detach().reshape(-1)
        else:
            q, scale = integer_weights(weight, config.max_level)
        taps = q.reshape(q.shape[0], -1)
        matrix = block_diagonal(taps, conv.groups)
        present = columns_holding_weights(taps.shape[0], taps.shape[1], conv.groups, config.tile_size)
        bias = None if conv.bias is None else conv.bias.detach()
        source = _Matrix(matrix, scale, bias, present, taps.numel(), conv)
        crossbar = MemristorLinear.from_linear(source, config, generator, program, progress)
        return cls(crossbar, conv.in_channels, conv.kernel_size, conv.stride, padding, conv.dilation, conv.groups)

    def patches(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """x [B, C, *spatial] -> its patches [B, positions, C x K] and the output's spatial shape."""
        padded = self._pad(x)
        return self._unfold(padded).reshape(x.shape[0], -1, self.crossbar.in_features), self._out_shape(padded)

    def _read(self, v: torch.Tensor) -> torch.Tensor:
        """The crossbar's read of the patches of padded input voltages v. The row factors act on v, each
        element once. A grouped convolution reads them as convolutions (memsim.conv_read): its patches would
        repeat each input K times for a few columns each. A dense one reads its unfolded factors with the GEMM
        read, which runs at the GEMM's speed where the grouped convolutions of a dense matrix do not
        (`python benchmarks/crossbar.py --layers-only`); the read adds the tiles' 0 V padding rows itself."""
        layer = self.crossbar
        if layer.energy_meter is not None:
            layer.energy_meter(self._unfold(v), layer)
        unit = layer.factor_unit()
        factors = layer.read_model.row_factors(v, unit)
        if self.groups > 1:
            read = self.tile_read(factors)
        else:
            reads = []
            for part in self._input_parts(v.shape, layer.in_features):
                mean, variance, common = (None if f is None else self._unfold(f[part]) for f in factors)
                assert mean is not None
                reads.append(layer.read_factors((mean, variance, common)))
            read = torch.cat(reads)
        if layer.config.read_disturb:  # each matrix row (channel, tap) sees its channel's voltages
            per_channel = v.transpose(0, 1).flatten(1)
            taps = layer.in_features // per_channel.shape[0]
            layer.disturb(per_channel.amin(1).repeat_interleave(taps), per_channel.amax(1).repeat_interleave(taps))
        return read

    def _input_parts(self, padded_shape: torch.Size, rows: int) -> Iterator[tuple[slice, ...]]:
        """Indices of the padded input [B, C, *spatial] whose patches are consecutive parts of all patches, in
        their order (sample, then position), each with at most about GATHER_PART_ELEMENTS row factors: whole
        samples, or a sample's blocks of output rows (its first spatial dimension) where a sample is larger."""
        out_shape = self._out_shape_of(padded_shape[2:])
        per_row = rows * math.prod(out_shape[1:])
        per_sample = per_row * out_shape[0]
        batch, everything = padded_shape[0], slice(None)
        if per_sample <= GATHER_PART_ELEMENTS:
            samples = max(1, GATHER_PART_ELEMENTS // per_sample)
            for first in range(0, batch, samples):
                yield (slice(first, first + samples),)
            return
        block = max(1, GATHER_PART_ELEMENTS // per_row)
        kernel, stride, dilation = self.kernel_size[0], self.stride[0], self.dilation[0]
        for sample in range(batch):
            for first in range(0, out_shape[0], block):
                last = min(first + block, out_shape[0]) - 1
                height = slice(first * stride, last * stride + dilation * (kernel - 1) + 1)
                yield (slice(sample, sample + 1), everything, height)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, [side for p in reversed(self.padding) for side in (p, p)])

    def _out_shape(self, padded: torch.Tensor) -> tuple[int, ...]:
        return self._out_shape_of(padded.shape[2:])

    def _out_shape_of(self, spatial: torch.Size) -> tuple[int, ...]:
        """The output's spatial shape for a padded input's spatial shape."""
        geometry = zip(spatial, self.kernel_size, self.stride, self.dilation, strict=True)
        return tuple((size - d * (k - 1) - 1) // s + 1 for size, k, s, d in geometry)

    def _unfold(self, padded: torch.Tensor) -> torch.Tensor:
        """An already padded [B, C, *spatial] tensor's patches as rows [B x positions, C x K], in F.unfold's
        order (channel-major taps, positions row-major). Gathered in one copy into a [C x K, B x positions]
        buffer, whose copy runs along the input's rows, and returned as its transpose (a view: the GEMMs read it
        as it lies)."""
        out_shape = self._out_shape(padded)
        if self.dims == 1:  # a 1d convolution is a 2d one over a height of 1
            padded, out_shape = padded.unsqueeze(2), (1, *out_shape)
        kernel, dilation, stride = ((1,) * (2 - self.dims) + t for t in (self.kernel_size, self.dilation, self.stride))
        batch, channels = padded.shape[:2]
        width = channels * math.prod(kernel)
        s_batch, s_channel, s_height, s_width = padded.stride()
        steps = (s_height * dilation[0], s_width * dilation[1], s_batch, s_height * stride[0], s_width * stride[1])
        patches = padded.as_strided((channels, *kernel, batch, *out_shape), (s_channel, *steps))
        out = padded.new_empty(width, batch, *out_shape)
        out.view(patches.shape).copy_(patches)
        return out.view(width, -1).T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The DAC and the read's elementwise factors act on the padded input, each element once; only then
        are they unfolded into patches, each one an input vector of the crossbar."""
        unbatched = x.dim() == self.dims + 1
        if unbatched:
            x = x.unsqueeze(0)
        padded = self._pad(x.float())
        y = self.crossbar.respond(padded, self._unfold, self._read)  # [B x positions, out]
        y = y.view(x.shape[0], -1, self.out_channels).transpose(1, 2)
        y = y.reshape(x.shape[0], self.out_channels, *self._out_shape(padded))
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}"
        )


class MemristorConv1d(MemristorConv):
    """nn.Conv1d on crossbar tiles: input [B, C, L] (or [C, L])."""

    dims = 1


class MemristorConv2d(MemristorConv):
    """nn.Conv2d on crossbar tiles: input [B, C, H, W] (or [C, H, W])."""

    dims = 2
