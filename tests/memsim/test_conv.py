"""Convolutions on crossbars: exact in the ideal limit, equal in distribution to a per-cell read, and counted by
the tiles that exist."""

import math

import pytest
import torch
import torch.nn.functional as F
from test_crossbar import per_cell_read
from torch import nn

import memsim
import memsim.conv
import memsim.conv_read
import memsim.crossbar
from memsim.conv import columns_holding_weights
from memsim.converters import RangeProbe
from memsim.crossbar import integer_weights

IDEAL = memsim.CrossbarConfig(
    device="ideal", dac_bits=None, adc_precision_bits=None, adc_range_bits=None, weight_bits=4, tile_size=16
)
CONVS = {
    "depthwise 1d": (nn.Conv1d(20, 20, 7, padding=3, groups=20), (3, 20, 50)),
    "grouped 1d, stride and dilation": (nn.Conv1d(8, 6, 3, stride=2, dilation=2, groups=2), (2, 8, 31)),
    "2d, stride and padding": (nn.Conv2d(3, 5, 3, stride=2, padding=1), (2, 3, 17, 13)),
    "depthwise 2d": (nn.Conv2d(4, 8, (3, 2), padding=(1, 0), groups=4), (2, 4, 9, 6)),
}


@pytest.mark.parametrize("name", CONVS)
def test_an_ideal_chip_reproduces_the_fake_quantized_convolution(name):
    torch.manual_seed(0)
    conv, shape = CONVS[name]
    layer = memsim.convert(conv, IDEAL, kinds=["conv"])
    x = torch.randn(shape)
    q, scale = integer_weights(conv.weight, IDEAL.max_level)
    expected = conv._conv_forward(x, q * scale, conv.bias).detach()
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    torch.testing.assert_close(layer(x[0]), expected[0], rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    x.requires_grad_(True)  # gradients pass along the mean path: on an ideal chip, the digital convolution's
    layer(x).square().sum().backward()
    on_chip, x.grad = x.grad, None
    conv._conv_forward(x, q * scale, conv.bias).square().sum().backward()
    torch.testing.assert_close(on_chip, x.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("part_elements", "parts_2d", "parts_1d"),
    [(2**21, 1, 1), (4100, 2, 1), (500, 15, 3), (1, 27, 42)],
    ids=["whole", "samples together", "blocks of output rows", "one output row each"],
)
def test_a_dense_convolution_read_in_gathered_parts_reads_as_one_gather(monkeypatch, part_elements, parts_2d, parts_1d):
    """A dense convolution gathers its patches' row factors a part at a time (GATHER_PART_ELEMENTS): several
    samples together, one sample, or a sample's blocks of output rows; on a noiseless physical chip the outputs
    are those of one gather. The 2d conv: 27 rows on 2 tiles (32 rows) x 7 output columns = 224 factors per output
    row, 9 rows per sample; the 1d: 32 x 14 outputs = 448 per sample; 3 samples each."""
    config = memsim.CrossbarConfig(tile_size=16, read_noise="none", adc_precision_bits=None, adc_range_bits=None)
    convs = [(nn.Conv2d(3, 5, 3, stride=2, padding=1), (3, 3, 17, 13), parts_2d)]
    convs.append((nn.Conv1d(6, 4, 3, stride=2, dilation=2), (3, 6, 31), parts_1d))
    reads = []
    original = memsim.MemristorLinear.read_factors
    monkeypatch.setattr(
        memsim.MemristorLinear,
        "read_factors",
        lambda self, factors, first_tile=0: reads.append(1) or original(self, factors, first_tile),
    )
    for conv, shape, parts in convs:
        torch.manual_seed(0)
        layer = memsim.convert(conv, config, torch.Generator().manual_seed(0), kinds=["conv"])
        x = torch.randn(shape)
        with torch.no_grad():
            monkeypatch.setattr(memsim.conv, "GATHER_PART_ELEMENTS", 2**30)
            whole = layer(x)
            monkeypatch.setattr(memsim.conv, "GATHER_PART_ELEMENTS", part_elements)
            reads.clear()
            parted = layer(x)
        assert len(reads) == parts
        torch.testing.assert_close(parted, whole, rtol=1e-5, atol=1e-6 * float(whole.abs().max()))


def test_a_depthwise_convolution_connects_only_the_columns_that_hold_its_weights():
    # 16 channels x 3 taps on 8 x 8 tiles: 48 rows in 6 row tiles, channel c on rows 3c..3c+2 and column c. Row
    # tile 0 (rows 0-7) holds channels 0-2, tile 1 (rows 8-15) channels 2-5, tile 2 channels 5-7; tiles 3-5 the
    # same for channels 8-15, whose columns lie in column tile 1: 6 of the 12 tiles exist.
    present = columns_holding_weights(16, 3, 16, 8)
    assert [torch.nonzero(row).flatten().tolist() for row in present] == [
        [0, 1, 2],
        [2, 3, 4, 5],
        [5, 6, 7],
        [8, 9, 10],
        [10, 11, 12, 13],
        [13, 14, 15],
    ]
    conv = memsim.convert(nn.Conv1d(16, 16, 3, groups=16), memsim.CrossbarConfig(tile_size=8), kinds=["conv"])
    (row, total) = memsim.summary(nn.Sequential(conv))
    planes = 2  # 3 bits
    assert (row["tiles"], row["cells"]) == (6, 6 * 2 * planes * 8 * 8)
    assert row["adc_conversions"] == 20 * planes  # one per connected column, plane and row of tiles
    assert conv.crossbar.conversions()[0] == 48 * 2 * planes  # each row drives the one tile it has


def test_the_noisy_read_of_a_convolution_matches_a_per_cell_read_in_distribution():
    torch.manual_seed(1)
    # tile 5: 24 rows in 5 row tiles, each channel's taps cut at some tile edge, one padding row at 0 V
    config = memsim.CrossbarConfig(tile_size=5, read_noise="paper", adc_precision_bits=None, adc_range_bits=None)
    conv = memsim.MemristorConv1d.from_conv(
        nn.Conv1d(8, 8, 3, padding=1, groups=8), config, generator=torch.Generator().manual_seed(2)
    )
    assert conv.crossbar.column_present is not None and not bool(conv.crossbar.column_present.all())
    x = torch.randn(1, 8, 2)
    reads = 600
    ours = torch.stack([conv(x)[0].T for _ in range(reads)])  # [reads, positions, channels]
    patches, _ = conv.patches(x)
    brute = per_cell_read(conv.crossbar, patches[0], "paper", reads)
    pooled_std = torch.sqrt((ours.var(0) + brute.var(0)) / 2)
    assert float(pooled_std.min()) > 0
    assert bool(((ours.mean(0) - brute.mean(0)).abs() <= 4 * pooled_std * math.sqrt(2 / reads)).all())
    torch.testing.assert_close(ours.std(0), brute.std(0), rtol=0.15, atol=0)


@pytest.mark.parametrize("name", CONVS)
def test_the_patches_are_those_of_f_unfold(name):
    conv, shape = CONVS[name]
    layer = memsim.convert(conv, IDEAL, kinds=["conv"])
    x = torch.randn(shape)
    padded = F.pad(x, [side for p in reversed(conv.padding) for side in (p, p)])
    two_d = padded if conv.weight.dim() == 4 else padded.unsqueeze(2)
    lift = (1,) * (4 - conv.weight.dim())  # a 1d convolution's geometry over a height of 1
    kernel, dilation, stride = (lift + t for t in (conv.kernel_size, conv.dilation, conv.stride))
    columns = F.unfold(two_d, kernel, dilation, 0, stride)  # [B, C x K, positions]
    assert torch.equal(layer.patches(x)[0], columns.transpose(1, 2))


@pytest.mark.parametrize("name", ["depthwise 1d", "2d, stride and padding", "depthwise 2d"])
def test_the_convolution_read_equals_the_crossbar_read_of_the_unfolded_patches(name):
    """Without noise, term by term: per-column calibration, padding rows, and what an ADC probe sees. A grouped
    convolution reads as convolutions (memsim.conv_read), a dense one its unfolded row factors."""
    torch.manual_seed(0)
    conv, shape = CONVS[name]
    config = memsim.CrossbarConfig(
        tile_size=16, read_noise="none", calibration="per_column", adc_precision_bits=None, adc_range_bits=None
    )
    layer = memsim.convert(conv, config, torch.Generator().manual_seed(0), kinds=["conv"])
    assert layer.crossbar.in_features % config.tile_size  # the last tile has padding rows
    x = torch.randn(shape)
    patches, out_shape = layer.patches(x)
    probes = [RangeProbe(torch.device("cpu")) for _ in range(2)]
    layer.crossbar.adc_probe = probes[0]
    ours = layer(x)
    layer.crossbar.adc_probe = probes[1]
    unfolded = layer.crossbar(patches).transpose(1, 2).reshape(ours.shape)
    torch.testing.assert_close(ours, unfolded, rtol=1e-5, atol=1e-5 * float(unfolded.abs().max()))
    assert torch.equal(probes[0].counts, probes[1].counts)


@pytest.mark.parametrize("name", ["depthwise 1d", "2d, stride and padding"])
def test_the_convolution_read_gives_each_adc_the_mean_and_noise_variance_of_the_unfolded_read(monkeypatch, name):
    """With physical noise: every connected column's mean current and variance per row of tiles, padding rows
    (thermal noise at 0 V) included, as the crossbar's read of the unfolded patches computes them."""
    torch.manual_seed(0)
    conv, shape = CONVS[name]
    config = memsim.CrossbarConfig(tile_size=16, adc_precision_bits=None, adc_range_bits=None)
    layer = memsim.convert(conv, config, torch.Generator().manual_seed(0), kinds=["conv"])
    assert layer.crossbar.in_features % config.tile_size  # the last tile has padding rows
    x = torch.randn(shape)
    seen: dict[str, list] = {"conv": [], "unfolded": []}
    for module, key in ((memsim.conv_read, "conv"), (memsim.crossbar, "unfolded")):
        original = module.to_codes
        monkeypatch.setattr(
            module,
            "to_codes",
            lambda y, v, *a, _f=original, _k=key, **k: seen[_k].append((y.clone(), v.clone())) or _f(y, v, *a, **k),
        )
    layer(x)
    ours = seen["unfolded"][:]
    seen["unfolded"].clear()
    layer.crossbar(layer.patches(x)[0])
    tiles, planes = layer.crossbar.tile_columns(), config.planes
    if tiles is None:  # a dense convolution: the GEMM read of its unfolded factors, [tiles, B x L, planes x out]
        assert not seen["conv"]
        for part in (0, 1):  # the mean and the variance of every tile's ADC inputs
            mine, theirs = (torch.cat([read[part] for read in reads], -3) for reads in (ours, seen["unfolded"]))
            assert mine.shape[-3] == math.ceil(layer.crossbar.in_features / 16)
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6 * float(theirs.abs().max()))
        return
    (mean, variance) = seen["conv"][0]
    assert len(seen["unfolded"]) == len(tiles)  # every row of tiles holds some column
    for t, columns in enumerate(tiles):
        n = columns.numel()
        for mine, theirs in zip((mean, variance), seen["unfolded"][t], strict=True):
            mine = mine[:, t].transpose(1, 2).reshape(-1, planes, mine.shape[2] // planes)[:, :, :n]  # [B x L, ...]
            tolerance = 1e-6 * float(theirs.abs().max())
            torch.testing.assert_close(mine, theirs.view(-1, planes, n), rtol=1e-5, atol=tolerance)


def test_convert_maps_each_kind_only_when_asked_and_a_mixed_chip_reloads_bit_exactly():
    def model():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.Flatten(1), nn.Linear(4 * 6 * 6, 5), nn.Conv1d(1, 2, 3), nn.LSTM(5, 3)
        )

    linear_only = memsim.convert(model(), memsim.CrossbarConfig())
    assert [type(m).__name__ for m in linear_only] == ["Conv2d", "Flatten", "MemristorLinear", "Conv1d", "LSTM"]
    kinds = ["linear", "conv", "lstm"]
    chip = memsim.convert(model(), memsim.CrossbarConfig(), torch.Generator().manual_seed(3), kinds=kinds)
    names = ["MemristorConv2d", "Flatten", "MemristorLinear", "MemristorConv1d", "MemristorLSTM"]
    assert [type(m).__name__ for m in chip] == names
    shell = memsim.convert(model(), memsim.CrossbarConfig(), kinds=kinds, program=False)
    shell.load_state_dict(chip.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(chip.state_dict().values(), shell.state_dict().values(), strict=True))
    grouped = memsim.convert(
        nn.Sequential(nn.Conv1d(16, 16, 3, groups=16)), memsim.CrossbarConfig(tile_size=8), kinds=["conv"]
    )
    assert "0.crossbar.column_present" in grouped.state_dict()
    with pytest.raises(ValueError, match=r"unknown layer kind\(s\) \['gru'\]"):
        memsim.convert(model(), memsim.CrossbarConfig(), kinds=["gru"])


def test_unsupported_padding_is_refused_by_name():
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        memsim.MemristorConv1d.from_conv(nn.Conv1d(2, 2, 3, padding=1, padding_mode="reflect"), IDEAL)
    with pytest.raises(ValueError, match="padding='same': give the padding in elements"):
        memsim.MemristorConv1d.from_conv(nn.Conv1d(2, 2, 3, padding="same"), IDEAL)
