"""The crossbar read of a grouped convolution's matrix, tile by tile, as convolutions: no patch is ever unfolded.

A convolution's matrix (memsim.conv) holds input channel c's taps on rows c x K .. c x K + K - 1 (K taps per
channel), so a row of tiles holds the taps of a window of consecutive channels, cut at the tile's edges. What
MemristorLinear.read computes per tile from a patch's row factors f (ReadModel.row_factors), a column's mean
current sum_i f_mean(i) d(i), d the pair's CellPairs.difference (r_pos(i) - r_neg(i) through ideal wires), and
its noise variance sum_i f_var(i) (r_pos(i) + r_neg(i)) +
2 f_common(i), is then a convolution of the factors over that window of channels, with the tile's cells as
its kernel (0 where a tap lies outside the tile). All rows of tiles at once: one convolution with a group per
row of tiles, whose input channels are the windows gathered from the factors. The sums are those of the
unfolded read, term by term; the unfold would copy every input element K times and is the slow part.
A padding row of the last tile is driven at 0 V: it adds no current and a constant to the variance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F

from memsim.crossbar import RowFactors, adc_step, to_codes, zero_volt_factors
from memsim.layers import MemristorLinear


class ConvolutionOnCrossbar(Protocol):
    """What a TileConvolution reads of its convolution (memsim.conv.MemristorConv): its crossbar and geometry."""

    crossbar: MemristorLinear
    in_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]


class TileKernels(NamedTuple):
    """A programmed matrix's tiles as convolution kernels, with T rows of tiles, P planes, up to M columns
    connected per row of tiles and C_w channels per window."""

    channels: torch.Tensor  # [T x C_w] the input channel of each window slot (a slot past the last repeats it)
    mean: torch.Tensor  # [T x P x M, C_w, *kernel] each tap's pair's CellPairs.difference, 0 outside the tile
    variance: torch.Tensor  # [T x P x M, C_w, *kernel] r_pos + r_neg
    rows: torch.Tensor  # [T, C_w, *kernel] 1 where a tap lies in the tile
    padding_variance: torch.Tensor  # [T, P, M] what the 0 V padding rows add to each column's variance
    columns: torch.Tensor  # [T x M] the output column of each slot; out_features for a slot with none
    connected: torch.Tensor  # [T, M] whether a slot holds a connected column


class TileConvolution:
    """MemristorLinear.read of a convolution's patches, computed as convolutions over its padded input."""

    def __init__(self, conv: ConvolutionOnCrossbar):
        self.conv = conv  # its crossbar and geometry
        self._kernels: TileKernels | None = None
        self._key: tuple | None = None

    def kernels(self) -> TileKernels:
        """The kernels of the cells as the read sees them (made again when the crossbar's read_key or read noise
        changes: programming, load_state_dict, other wires)."""
        key = (*self.conv.crossbar.read_key(), self.conv.crossbar.config.read_noise)
        if self._key != key:
            self._kernels, self._key = self._make_kernels(), key
        assert self._kernels is not None
        return self._kernels

    def _make_kernels(self) -> TileKernels:
        layer, config = self.conv.crossbar, self.conv.crossbar.config
        _, in_padded, planes, out_features = layer.r.shape
        tile, taps, in_features = config.tile_size, math.prod(self.conv.kernel_size), layer.in_features
        row_tiles = in_padded // tile
        real_rows = [min(tile, in_features - t * tile) for t in range(row_tiles)]
        first = [t * tile // taps for t in range(row_tiles)]
        last = [(t * tile + real_rows[t] - 1) // taps for t in range(row_tiles)]
        window = max(b - a + 1 for a, b in zip(first, last, strict=True))
        device = layer.r.device
        chosen = layer.tile_columns() or [torch.arange(out_features, device=device)] * row_tiles
        slots = max(c.numel() for c in chosen)
        columns = torch.full((row_tiles, slots), out_features, dtype=torch.long, device=device)
        mean = layer.r.new_zeros(row_tiles, planes, slots, window * taps)
        variance, rows = torch.zeros_like(mean), layer.r.new_zeros(row_tiles, window * taps)
        padding_variance = layer.r.new_zeros(row_tiles, planes, slots)
        zero_volts = zero_volt_factors(layer.read_model, layer.factor_unit(), layer.r)
        difference, total = (m.unflatten(-1, (planes, out_features)) for m in layer.cell_pairs())
        for t, (start, own) in enumerate(zip(first, chosen, strict=True)):
            n, real = own.numel(), real_rows[t]
            columns[t, :n] = own
            tile_rows = slice(t * tile, (t + 1) * tile)
            pair_difference, pair_total = (
                difference[tile_rows][..., own],
                total[tile_rows][..., own],
            )  # [tile, planes, n]
            offset = t * tile - start * taps  # the tile's first row within the window's taps
            taps_here = slice(offset, offset + real)
            mean[t, :, :n, taps_here] = pair_difference[:real].permute(1, 2, 0)
            variance[t, :, :n, taps_here] = pair_total[:real].permute(1, 2, 0)
            rows[t, taps_here] = 1
            if zero_volts[1] is not None and zero_volts[2] is not None and real < tile:
                padded = pair_total[real:]  # [padding rows, planes, n]
                padding_variance[t, :, :n] = zero_volts[1] * padded.sum(0) + 2 * zero_volts[2] * (tile - real)
        channels = (torch.tensor(first, device=device)[:, None] + torch.arange(window, device=device)).clamp_(
            max=self.conv.in_channels - 1
        )
        shape = (row_tiles * planes * slots, window, *self.conv.kernel_size)
        connected = columns < out_features
        return TileKernels(
            channels.flatten(),
            mean.view(shape),
            variance.view(shape),
            rows.view(row_tiles, window, *self.conv.kernel_size),
            padding_variance,
            columns.flatten(),
            connected,
        )

    def __call__(self, factors: RowFactors) -> torch.Tensor:
        """The ADC outputs [B x positions, out] (as MemristorLinear.read of the patches) of the row factors
        (ReadModel.row_factors in MemristorLinear.factor_unit()) of the padded input voltages, [B, C, *spatial]
        each. Everything before the sum over tiles stays in the convolutions' layout
        [B, T, P x M, positions]: only the result is transposed."""
        layer, config = self.conv.crossbar, self.conv.crossbar.config
        k = self.kernels()
        row_tiles, planes, slots = k.padding_variance.shape
        step = adc_step(config)
        mean_factor, variance_factor, common_factor = factors
        y = self._tiles(mean_factor, k.mean, row_tiles)  # [B, T, P x M, L]
        variance = None
        if variance_factor is not None and common_factor is not None:
            variance = self._tiles(variance_factor, k.variance, row_tiles)
            common = self._tiles(common_factor, k.rows, row_tiles)  # [B, T, 1, L]
            variance.add_(common, alpha=2).add_(k.padding_variance.view(row_tiles, -1, 1))
        correction = None
        if config.corrects_columns:
            index = k.columns.view(row_tiles, slots).clamp(max=layer.out_features - 1)
            tiles = torch.arange(row_tiles, device=mean_factor.device)[:, None]
            gain = layer.column_gain[tiles, :, index].transpose(1, 2)  # [T, P, M]
            offset = layer.column_offset[tiles, :, index].transpose(1, 2)
            correction = ((offset / step).reshape(row_tiles, -1, 1), gain.reciprocal().reshape(row_tiles, -1, 1))
        observe = None if layer.adc_probe is None else self._connected_only(layer.adc_probe, k.connected, planes)
        to_codes(y, variance, config, layer.generator, observe, correction)
        batch, positions = y.shape[0], y.shape[-1]
        per_plane = y.view(batch, row_tiles, planes, slots, positions)
        summed = per_plane[:, :, 0] * step  # plane p's place value is levels_per_cell^p ADC steps
        for plane in range(1, planes):
            summed.add_(per_plane[:, :, plane], alpha=config.levels_per_cell**plane * step)
        result = y.new_zeros(batch, layer.out_features + 1, positions)  # the last column collects the empty slots
        result.index_add_(1, k.columns, summed.reshape(batch, -1, positions))
        return result[:, :-1].transpose(1, 2).reshape(-1, layer.out_features)

    def _tiles(self, factor: torch.Tensor, kernel: torch.Tensor, row_tiles: int) -> torch.Tensor:
        """The convolution of a row factor [B, C, *spatial] with one kernel per row of tiles: [B, T, outputs,
        positions]."""
        windows = factor[:, self.kernels().channels]  # [B, T x C_w, *spatial]
        convolve = F.conv1d if len(self.conv.kernel_size) == 1 else F.conv2d
        out = convolve(windows, kernel, stride=self.conv.stride, dilation=self.conv.dilation, groups=row_tiles)
        return out.view(out.shape[0], row_tiles, -1, math.prod(out.shape[2:]))

    @staticmethod
    def _connected_only(
        observe: Callable[[torch.Tensor], object], connected: torch.Tensor, planes: int
    ) -> Callable[[torch.Tensor], object]:
        """An ADC probe that sees the connected columns' values only, of y [B, T, P x M, positions]."""

        def watch(values: torch.Tensor) -> None:
            batch, row_tiles, _, positions = values.shape
            per_slot = values.view(batch, row_tiles, planes, -1, positions).permute(0, 4, 1, 3, 2)
            observe(per_slot[:, :, connected])

        return watch
