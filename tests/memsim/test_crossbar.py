"""Crossbar mapping and reads: exact in the ideal limit, and equal in distribution to a per-cell read."""

import math

import pytest
import torch
from torch import nn

import memsim
from memsim.crossbar import CellPairs, adc, adc_step, dac, integer_weights, tile_reads

IDEAL = memsim.CrossbarConfig(device="ideal", dac_bits=None, adc_precision_bits=None, adc_range_bits=None)


def fake_quantized(linear, bits):
    q, scale = integer_weights(linear.weight, memsim.CrossbarConfig(weight_bits=bits).max_level)
    return lambda x: x @ (q * scale).T + linear.bias.detach()


@pytest.mark.parametrize(
    "bits, levels", [(1.5, 2), (2, 2), (3, 2), (5, 2), (8, 2), (3, 3), (3, 4), (4, 8), (5, 4), (8, 3), (8, 16)]
)
def test_ideal_crossbar_reproduces_the_fake_quantized_layer(bits, levels, device):
    torch.manual_seed(0)
    linear = nn.Linear(300, 70).to(device)  # 300 inputs: three tiles, the last zero-padded
    config = memsim.CrossbarConfig(**{**vars(IDEAL), "weight_bits": bits, "levels_per_cell": levels})
    layer = memsim.MemristorLinear.from_linear(linear, config)
    x = torch.randn(5, 9, 300, device=device)
    expected = fake_quantized(linear, bits)(x)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_three_bit_weights_use_four_cells_each():
    layer = memsim.MemristorLinear.from_linear(nn.Linear(128, 128), IDEAL)
    assert layer.r.numel() == 4 * 128 * 128
    assert memsim.CrossbarConfig(weight_bits=8).planes == 7 and memsim.CrossbarConfig(weight_bits=1.5).planes == 1


@pytest.mark.parametrize("bits, levels, planes", [(3, 4, 1), (3, 3, 2), (4, 8, 1), (5, 4, 2), (8, 16, 2), (8, 3, 5)])
def test_multi_level_cells_need_fewer_planes(bits, levels, planes):
    assert memsim.CrossbarConfig(weight_bits=bits, levels_per_cell=levels).planes == planes


def per_cell_read(layer, x, noise, reads=1):
    """Brute force: every cell read by the device model itself at its own row voltage, then summed."""
    two, in_padded, planes, out = layer.r.shape
    batch = x.shape[0]
    cells = memsim.CellArray(batch * layer.r.numel())
    cells.state.r.copy_(layer.r.reshape(-1).repeat(batch))
    return torch.stack([_sum_cells(layer, x, cells, noise) for _ in range(reads)])


def _sum_cells(layer, x, cells, noise):
    config = layer.config
    two, in_padded, planes, out = layer.r.shape
    batch = x.shape[0]
    input_range = x.abs().amax() if float(layer.input_range) == 0 else layer.input_range
    v = nn.functional.pad(dac(x, input_range, config), (0, in_padded - x.shape[-1]))
    u = v[:, None, :, None, None].expand(batch, two, in_padded, planes, out).reshape(-1)
    current = cells.read(u, noise=noise).view(batch, two, in_padded, planes, out)
    present = layer.column_presence()
    if present is not None:  # cells of tiles that do not exist read nothing
        current = current * present.repeat_interleave(config.tile_size, 0)[:, None, :]
    column = (current[:, 0] - current[:, 1]).view(batch, -1, config.tile_size, planes, out).sum(2)  # per tile
    column = adc(column / layer.read_model.unit_current, config) * adc_step(config)
    shift_add = (column.sum(1) * 2.0 ** torch.arange(planes)[:, None]).sum(1)
    return shift_add * input_range * layer.weight_scale + layer.bias


# How a read splits its work (TILE_BATCH_ELEMENTS, READ_PART_ELEMENTS): few inputs read all their tiles in one
# batched GEMM; many, a tile at a time; very many, in parts of the inputs.
READ_PLANS = {
    "all tiles at once": (2**18, 2**21),
    "a tile at a time": (1, 2**21),
    "an input at a time": (2**18, 1),
}


@pytest.fixture(params=list(READ_PLANS))
def read_plan(request, monkeypatch):
    tile_batch, part = READ_PLANS[request.param]
    monkeypatch.setattr(memsim.crossbar, "TILE_BATCH_ELEMENTS", tile_batch)
    monkeypatch.setattr(memsim.crossbar, "READ_PART_ELEMENTS", part)
    return request.param


@pytest.mark.parametrize("adc_bits", [(None, None), (4, 10)])
def test_gemm_read_matches_per_cell_read_in_distribution(adc_bits, read_plan):
    torch.manual_seed(1)
    config = memsim.CrossbarConfig(
        tile_size=16, read_noise="paper", adc_precision_bits=adc_bits[0], adc_range_bits=adc_bits[1]
    )
    layer = memsim.MemristorLinear.from_linear(nn.Linear(40, 6), config, generator=torch.Generator().manual_seed(2))
    x = torch.randn(3, 40)
    reads = 600
    ours = torch.stack([layer(x) for _ in range(reads)])
    brute = per_cell_read(layer, x, "paper", reads)
    pooled_std = torch.sqrt((ours.var(0) + brute.var(0)) / 2)
    assert float(pooled_std.min()) > 0
    # Means agree within 4 standard errors; standard deviations within 15 %.
    assert bool(((ours.mean(0) - brute.mean(0)).abs() <= 4 * pooled_std * math.sqrt(2 / reads)).all())
    torch.testing.assert_close(ours.std(0), brute.std(0), rtol=0.15, atol=0)


def test_noiseless_gemm_read_equals_per_cell_read_exactly(read_plan):
    config = memsim.CrossbarConfig(tile_size=16, read_noise="none", adc_precision_bits=None, adc_range_bits=None)
    layer = memsim.MemristorLinear.from_linear(nn.Linear(40, 6), config, generator=torch.Generator().manual_seed(2))
    x = torch.randn(3, 40)
    torch.testing.assert_close(layer(x), per_cell_read(layer, x, "none")[0], rtol=1e-5, atol=1e-6)


def test_the_noise_variance_of_every_adc_input_is_the_sum_over_its_cells(monkeypatch, read_plan):
    """Exactly, not in distribution: each ADC input's variance is sum over its tile's rows of BW (4 kT + 2 q |v|)
    x (g_pos + g_neg), both arrays' cells at their row's voltage, with the last tile's 8 padding rows at 0 V
    (which only add thermal noise: too little to show in a sampled comparison)."""
    torch.manual_seed(6)
    config = memsim.CrossbarConfig(tile_size=16, adc_precision_bits=None, adc_range_bits=None)
    layer = memsim.MemristorLinear.from_linear(nn.Linear(40, 6), config, torch.Generator().manual_seed(2))
    x = torch.randn(3, 40)
    variances = []
    original = memsim.crossbar.to_codes
    monkeypatch.setattr(
        memsim.crossbar,
        "to_codes",
        lambda y, variance, *a, **k: variances.append(variance.clone()) or original(y, variance, *a, **k),
    )
    layer(x)
    parts, tiles = [], []  # the reads of each part of the inputs: batches of tiles, 3 tiles in all
    for variance in variances:
        tiles.append(variance)
        if sum(t.shape[-3] for t in tiles) == 3:
            parts.append(torch.cat(tiles, -3))
            tiles = []
    ours = torch.cat(parts, -2)  # [tiles, N, planes x out]
    two, in_padded, planes, out = layer.r.shape
    v = nn.functional.pad(dac(x, x.abs().amax(), config), (0, in_padded - 40))  # [N, rows], padding at 0 V
    base, delta = layer.read_model.conductances(v)
    g = base[:, None, :, None, None] + layer.r[None] * delta[:, None, :, None, None]  # [N, 2, rows, planes, out]
    per_cell = layer.read_model.noise.variance_per_siemens(v)[:, None, :, None, None] * g
    expected = per_cell.sum(1).unflatten(1, (-1, 16)).sum(2) / layer.factor_unit() ** 2  # [N, tiles, planes, out]
    expected = expected.flatten(2).transpose(0, 1)
    assert ours.shape == expected.shape == (3, 3, 12)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=0)


def test_stacked_matrices_read_as_each_alone_in_distribution(read_plan):
    """tile_reads of two matrices stacked on a leading dimension (an LSTM's two directions in one read), physical
    noise and padding rows: each matrix's outputs have the mean and the spread of its own read."""
    torch.manual_seed(4)
    config = memsim.CrossbarConfig(tile_size=16, adc_precision_bits=None, adc_range_bits=None)
    layers = [
        memsim.MemristorLinear.from_linear(nn.Linear(40, 6), config, torch.Generator().manual_seed(seed))
        for seed in (2, 3)
    ]
    factors, pairs = [], []
    for layer in layers:
        x = torch.randn(3, 40)
        rows = layer.read_model.row_factors(dac(x, x.abs().amax(), config), layer.factor_unit())
        factors.append(rows)
        pairs.append(layer.cell_pairs())
    padding = layers[0].padding_factors(40)  # 40 inputs on 48 rows: 8 padding rows at 0 V
    stacked_factors = tuple(torch.stack(parts) for parts in zip(*factors, strict=True))
    stacked_pairs = CellPairs(*(torch.stack(parts) for parts in zip(*pairs, strict=True)))
    reads = 500
    ours = torch.stack(
        [tile_reads(stacked_factors, stacked_pairs, config.planes, config, padding=padding) for _ in range(reads)]
    )
    alone = torch.stack(
        [
            torch.stack(
                [tile_reads(f, p, config.planes, config, padding=padding) for f, p in zip(factors, pairs, strict=True)]
            )
            for _ in range(reads)
        ]
    )
    assert ours.shape == alone.shape == (reads, 2, 3, 6)
    pooled_std = torch.sqrt((ours.var(0) + alone.var(0)) / 2)
    assert float(pooled_std.min()) > 0
    assert bool(((ours.mean(0) - alone.mean(0)).abs() <= 4 * pooled_std * math.sqrt(2 / reads)).all())
    torch.testing.assert_close(ours.std(0), alone.std(0), rtol=0.15, atol=0)


def test_adc_steps_and_clipping():
    config = memsim.CrossbarConfig().with_adc("reasonable")  # step 1/16, clip at +-8
    y = torch.tensor([0.03, 0.0313, -0.0937, 7.99, 8.2, -100.0])
    torch.testing.assert_close(adc(y, config) * adc_step(config), torch.tensor([0.0, 0.0625, -0.0625, 8.0, 8.0, -8.0]))
    high = memsim.CrossbarConfig().with_adc("high_precision")
    assert (high.adc_precision_bits, high.adc_range_bits) == (8, 10)
    torch.testing.assert_close(adc(torch.tensor([1000.0, 0.5 + 2**-10]), high), torch.tensor([512.0, 0.5]) * 256)


def test_reasonable_adc_clips_large_column_sums():
    torch.manual_seed(0)
    linear = nn.Linear(128, 4)
    nn.init.constant_(linear.weight, 1.0)  # every column sums all inputs: far beyond +-8
    config = memsim.CrossbarConfig(**{**vars(IDEAL), "adc_precision_bits": 4, "adc_range_bits": 4})
    layer = memsim.MemristorLinear.from_linear(linear, config)
    x = torch.ones(2, 128)
    # Each of the 2 planes of the 3-bit weight 3 saturates at 8: (8 + 2 * 8) * range * scale.
    expected = 24 * 1.0 * layer.weight_scale + linear.bias
    torch.testing.assert_close(layer(x), expected.detach().expand(2, 4))


def test_seeds_reproduce_a_chip_and_different_seeds_differ():
    linear = nn.Linear(64, 32)
    chips = [
        memsim.MemristorLinear.from_linear(linear, memsim.CrossbarConfig(), torch.Generator().manual_seed(s))
        for s in (7, 7, 8)
    ]
    assert torch.equal(chips[0].r, chips[1].r) and not torch.equal(chips[0].r, chips[2].r)


def test_paper_noise_is_larger_than_physical_by_the_expected_factor():
    torch.manual_seed(3)
    linear = nn.Linear(128, 16)
    x = torch.rand(4, 128)

    def output_std(noise):
        config = memsim.CrossbarConfig(read_noise=noise, adc_precision_bits=None, adc_range_bits=None)
        layer = memsim.MemristorLinear.from_linear(linear, config, torch.Generator().manual_seed(0))
        return torch.stack([layer(x) for _ in range(300)]).std(0).mean()

    ratio = float(output_std("paper") / output_std("physical"))
    physical, paper = memsim.READ_NOISE_MODES["physical"], memsim.READ_NOISE_MODES["paper"]
    # At 0.6 V shot noise dominates both modes; the ratio lies between the shot-only and the 0.2 V figure.
    shot_only = math.sqrt(paper.charge * paper.bandwidth / (physical.charge * physical.bandwidth))
    assert (
        0.8 * shot_only < ratio < 1.1 * math.sqrt(paper.variance_per_siemens(0.6) / physical.variance_per_siemens(0.6))
    )


def test_state_dict_restores_a_programmed_chip_exactly():
    linear = nn.Linear(50, 20)
    config = memsim.CrossbarConfig(read_noise="none")
    chip = memsim.convert(nn.Sequential(linear), config, generator=torch.Generator().manual_seed(1))
    other = memsim.convert(nn.Sequential(nn.Linear(50, 20)), config, generator=torch.Generator().manual_seed(2))
    x = torch.randn(4, 50)
    assert not torch.equal(chip(x), other(x))
    other.load_state_dict(chip.state_dict())
    assert torch.equal(chip(x), other(x)) and torch.equal(chip[0].r, other[0].r)


def test_an_unprogrammed_shell_takes_a_saved_chip_without_programming():
    config = memsim.CrossbarConfig(read_noise="none")
    chip = memsim.convert(nn.Sequential(nn.Linear(50, 20)), config, generator=torch.Generator().manual_seed(1))
    shell = memsim.convert(nn.Sequential(nn.Linear(50, 20)), config, program=False)
    assert torch.equal(shell[0].r, torch.ones_like(chip[0].r))  # every cell still in HRS
    shell.load_state_dict(chip.state_dict())
    x = torch.randn(4, 50)
    assert torch.equal(chip(x), shell(x))


def test_failed_sets_are_retried_and_counted():
    linear = nn.Linear(64, 64)
    weak = memsim.CrossbarConfig(set_voltage=-0.6, verify_retries=0)  # above most cells' SET threshold
    assert int(memsim.MemristorLinear.from_linear(linear, weak).failed_cells) > 1000
    retried = memsim.CrossbarConfig(set_voltage=-0.6, verify_retries=4, verify_step=-0.4)
    assert int(memsim.MemristorLinear.from_linear(linear, retried).failed_cells) == 0


def test_random_cycling_before_programming_still_programs():
    linear = nn.Linear(32, 8)
    config = memsim.CrossbarConfig(random_cycles=3, read_noise="none", adc_precision_bits=None, adc_range_bits=None)
    layer = memsim.MemristorLinear.from_linear(linear, config, torch.Generator().manual_seed(0))
    x = torch.randn(4, 32)
    error = (layer(x) - fake_quantized(linear, 3)(x)).norm() / fake_quantized(linear, 3)(x).norm()
    assert int(layer.failed_cells) == 0 and float(error) < 0.3


class QuantLinear(nn.Linear):
    """Stands in for the project's quantization-aware linear: integer weights and input scale of its own."""

    input_bits = 8

    def __init__(self):
        super().__init__(20, 5)
        self.weight_scale = torch.tensor(0.05)
        self.input_scale = torch.tensor(0.02)

    def integer_weight(self):
        return torch.round(self.weight / self.weight_scale).clamp(-3, 3)

    def forward(self, x):
        x = torch.round(x / self.input_scale).clamp(-127, 127) * self.input_scale
        return x @ (self.integer_weight() * self.weight_scale).T + self.bias


@pytest.mark.parametrize("dac_bits", [8, None])  # an ideal DAC converts the activation quantizer's codes exactly
def test_quantization_aware_layer_maps_exactly(dac_bits):
    torch.manual_seed(0)
    qat = QuantLinear()
    config = memsim.CrossbarConfig(**{**vars(IDEAL), "dac_bits": dac_bits})
    layer = memsim.MemristorLinear.from_linear(qat, config)
    x = torch.randn(6, 20)
    torch.testing.assert_close(layer(x), qat(x), rtol=1e-5, atol=1e-5)
    assert float(layer.input_range) == pytest.approx(0.02 * 127)


def test_synaptogen_cells_without_any_non_ideality_map_a_quantization_aware_layer_exactly():
    torch.manual_seed(0)
    qat = QuantLinear()
    layer = memsim.MemristorLinear.from_linear(qat, memsim.CrossbarConfig().only(None), torch.Generator())
    x = torch.randn(6, 20)
    torch.testing.assert_close(layer(x), qat(x), rtol=1e-4, atol=1e-4)


def test_convert_nested_model_with_include_and_exclude():
    model = nn.Sequential(nn.Linear(8, 8), nn.Sequential(nn.ReLU(), nn.Linear(8, 8)), nn.Linear(8, 2))
    converted = memsim.convert(model, IDEAL, exclude=["2"])
    assert isinstance(converted[0], memsim.MemristorLinear) and isinstance(converted[1][1], memsim.MemristorLinear)
    assert type(converted[2]) is nn.Linear
    only = memsim.convert(nn.Sequential(nn.Linear(8, 8), nn.Sequential(nn.Linear(8, 8))), IDEAL, include="1.*")
    assert type(only[0]) is nn.Linear and isinstance(only[1][0], memsim.MemristorLinear)
    rows = memsim.summary(converted)
    assert [r["layer"] for r in rows] == ["0", "1.1", "total"]
    assert rows[-1]["cells"] == 2 * (2 * 2 * 128 * 128) and rows[-1]["adc_conversions"] == 2 * 2 * 8


def test_calibrate_sets_input_ranges_from_batches():
    model = memsim.convert(nn.Sequential(nn.Linear(4, 4)), IDEAL)
    memsim.calibrate(model, [torch.ones(2, 4), 3 * torch.ones(1, 4)])
    assert float(model[0].input_range) == 3.0
    # A calibrated layer clips larger inputs at its range.
    assert torch.allclose(model(10 * torch.ones(1, 4)), model(3 * torch.ones(1, 4)))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("weight_bits", 2.5, "1.5 \\(ternary\\) or an integer"),
        ("weight_bits", 9, "from 2 to 8"),
        ("tile_size", 0, "positive integer"),
        ("dac_bits", 1, "from 2 to 24"),
        ("v_read", 2.0, "\\(0, 1.5\\]"),
        ("read_noise", "loud", "one of"),
        ("device", "pcm", "synaptogen"),
        ("set_voltage", 1.0, "negative"),
        ("var_order", 11, "from 1 to 10"),
    ],
)
def test_bad_config_is_named(field, value, message):
    with pytest.raises(ValueError, match=f"CrossbarConfig.{field} must be .*{message}.*got {value!r}"):
        memsim.CrossbarConfig(**{field: value})


def test_unknown_adc_preset():
    with pytest.raises(ValueError, match="'fast'"):
        memsim.CrossbarConfig().with_adc("fast")


def test_integer_weights_beyond_the_crossbar_are_refused():
    qat = QuantLinear()
    with pytest.raises(ValueError, match="beyond the 1.5-bit crossbar"):
        memsim.MemristorLinear.from_linear(qat, memsim.CrossbarConfig(weight_bits=1.5))


def test_per_channel_weight_scales_are_applied_per_output():
    torch.manual_seed(0)
    qat = QuantLinear()
    qat.weight_scale = torch.linspace(0.01, 0.05, 5)[:, None]
    config = memsim.CrossbarConfig(**{**vars(IDEAL), "dac_bits": 8})
    x = torch.randn(6, 20)
    torch.testing.assert_close(memsim.MemristorLinear.from_linear(qat, config)(x), qat(x), rtol=1e-5, atol=1e-5)


def test_multi_level_cells_are_programmed_to_their_levels_and_verified():
    config = memsim.CrossbarConfig(levels_per_cell=4)
    contents = torch.randint(0, 4, (2, 128, 1, 24), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    programmed = memsim.crossbar.program(contents, config, torch.Generator().manual_seed(1))
    r_on, r_off = memsim.crossbar.nominal_r(memsim.crossbar.device_params(config))
    level = (r_off - programmed.r) / ((r_off - r_on) / 3)  # in level steps: HRS 0, LRS 3
    half_band = config.verify_tolerance / 2 + 0.01  # centred bands, read with the physical (small) read noise
    for j in (1, 2):  # verified middle levels: centred on their targets, within the band
        reached = level[contents == j]
        assert float(reached.mean()) == pytest.approx(j, abs=0.02)
        assert float((reached - j).abs().quantile(0.99)) <= half_band
    assert float(level[contents == 3].mean()) == pytest.approx(3, abs=0.05)  # the top level, verified too
    assert float(level[contents == 0].quantile(0.99)) <= half_band  # the HRS under its ceiling
    assert programmed.failed <= 2 and programmed.pulses is not None
    assert float(programmed.pulses[contents == 2].float().mean()) > 2
    again = memsim.crossbar.program(contents, config, torch.Generator().manual_seed(1))
    assert torch.equal(again.r, programmed.r)


def test_first_past_verify_keeps_the_first_read_past_the_target():
    # The earlier scheme, kept for the results it made: a middle level lands about half a pulse's step past its
    # target (fewer level steps), the lowest and top levels are not verified.
    config = memsim.CrossbarConfig(levels_per_cell=4, verify_scheme="first_past")
    contents = torch.randint(0, 4, (2, 128, 1, 24), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    programmed = memsim.crossbar.program(contents, config, torch.Generator().manual_seed(1))
    r_on, r_off = memsim.crossbar.nominal_r(memsim.crossbar.device_params(config))
    level = (r_off - programmed.r) / ((r_off - r_on) / 3)
    for j in (1, 2):
        reached = level[contents == j]
        assert float(reached.mean()) < j - 0.03 and float((j - reached).max()) <= config.verify_tolerance + 0.01
    assert programmed.pulses is not None and int(programmed.pulses[contents == 0].max()) == 0
    centred = memsim.crossbar.program(
        contents, memsim.CrossbarConfig(levels_per_cell=4), torch.Generator().manual_seed(1)
    )
    centred_level = (r_off - centred.r) / ((r_off - r_on) / 3)
    for j in (0, 3):  # verifying the lowest and top levels narrows their spread
        assert float(centred_level[contents == j].std()) < float(level[contents == j].std())


def test_multi_level_chips_need_fewer_cells_and_conversions_and_report_their_pulses():
    linear = nn.Linear(128, 32)
    binary, four = (
        memsim.MemristorLinear.from_linear(linear, memsim.CrossbarConfig(levels_per_cell=levels), torch.Generator())
        for levels in (2, 4)
    )
    rows = [memsim.summary(layer)[0] for layer in (binary, four)]
    assert rows[1]["planes"] == 1 and rows[0]["planes"] == 2
    assert 2 * rows[1]["cells"] == rows[0]["cells"] and 2 * rows[1]["adc_conversions"] == rows[0]["adc_conversions"]
    assert (
        rows[1]["pulses_mean"] > 0 and rows[1]["pulses_max"] >= rows[1]["pulses_p99"] and "pulses_mean" not in rows[0]
    )
    assert "pulses_p99" in memsim.format_summary(memsim.summary(four))
    x = torch.randn(16, 128)
    digital = fake_quantized(linear, 3)(x)
    assert float((four(x) - digital).norm() / digital.norm()) < 0.3


@pytest.mark.parametrize("levels", range(2, 17))
def test_digit_planes_recompose_every_weight(levels):
    for bits in (1.5, 2, 3, 4, 5, 6, 7, 8):
        config = memsim.CrossbarConfig(weight_bits=bits, levels_per_cell=levels)
        q = torch.arange(-config.max_level, config.max_level + 1).repeat(3, 1)  # [3, 2 max + 1]
        cells = memsim.crossbar.digit_planes(q, config.planes, 128, levels).long()
        assert int(cells.max()) < levels
        place = levels ** torch.arange(config.planes)
        recomposed = ((cells[0] - cells[1]) * place[None, :, None]).sum(1)[: q.shape[1]]  # [in, out]
        assert torch.equal(recomposed, q.T)


def test_a_reset_ladder_up_to_the_full_reset_voltage_is_refused():
    with pytest.raises(ValueError, match="CrossbarConfig.reset_max must lie below"):
        memsim.crossbar.program(
            torch.ones(2, 128, 1, 4, dtype=torch.uint8), memsim.CrossbarConfig(levels_per_cell=4, reset_max=1.5)
        )


def test_multi_level_programming_counts_failures_per_level_and_histograms_the_read_levels():
    config = memsim.CrossbarConfig(levels_per_cell=4, pulse_budget=4)  # too few pulses for most middle cells
    contents = torch.randint(0, 4, (2, 128, 1, 24), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    programmed = memsim.crossbar.program(contents, config, torch.Generator().manual_seed(1))
    failed = programmed.failed_by_level
    assert failed is not None and int(failed[0]) < int(failed[1]) and int(failed.sum()) == programmed.failed
    assert int(failed[1]) > 0.5 * int((contents == 1).sum())  # level 1 needs the most RESET pulses

    model = memsim.crossbar.ReadModel(config)
    histogram = memsim.crossbar.level_histogram(programmed.r, contents, 4, model)
    assert histogram.sum(1).tolist() == [int((contents == j).sum()) for j in range(4)]
    read = memsim.crossbar.read_levels(programmed.r, 4, model.r_on, model.r_off)
    in_bins = histogram.argmax(1).double() / memsim.crossbar.LEVEL_BINS_PER_STEP - 0.5  # each level's mode
    assert abs(float(in_bins[0]) - float(read[contents == 0].median())) < 0.2


def test_level_statistics_sum_a_models_multi_level_layers():
    config = memsim.CrossbarConfig(levels_per_cell=4)
    model = nn.Sequential(nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 16))
    memsim.convert(model, config, torch.Generator().manual_seed(0))
    stats = memsim.level_statistics(model)
    assert stats is not None and stats["levels_per_cell"] == 4
    layers = [m for m in model if isinstance(m, memsim.MemristorLinear)]
    cells = sum(layer.r.numel() for layer in layers)
    assert sum(map(sum, stats["histogram"])) == cells and len(stats["histogram_edges"]) == 4 * 20 + 1
    pulses = torch.cat([layer.pulse_histogram[None] for layer in layers]).sum(0)
    mean = float((pulses * torch.arange(pulses.numel())).sum() / pulses.sum())
    assert stats["pulses"]["pulses_mean"] == pytest.approx(mean, abs=0.01)
    assert memsim.summary(model)[-1]["pulses_max"] == stats["pulses"]["pulses_max"]
    assert memsim.level_statistics(nn.Sequential(nn.Linear(4, 4))) is None


def test_a_selection_of_cells_is_a_copy_that_pulses_on_its_own():
    cells = memsim.CellArray(100, generator=torch.Generator().manual_seed(0))
    chosen = cells.select(torch.tensor([3, 7, 50]))
    torch.testing.assert_close(chosen.r, cells.r[[3, 7, 50]])
    chosen.apply_voltage(-2.0)
    assert bool((chosen.r < cells.r[[3, 7, 50]]).all()) and len(chosen) == 3  # SET: towards LRS, r falls
    torch.testing.assert_close(cells.r, memsim.CellArray(100, generator=torch.Generator().manual_seed(0)).r)


def test_gradients_pass_a_chip_along_its_mean_path():
    torch.manual_seed(0)
    linear = nn.Linear(40, 6)
    ideal = memsim.MemristorLinear.from_linear(linear, IDEAL)
    q, scale = integer_weights(linear.weight, IDEAL.max_level)
    torch.testing.assert_close(ideal.effective_weight(), q, rtol=1e-5, atol=1e-5)
    x = torch.randn(3, 40, requires_grad=True)
    ideal(x).sum().backward()
    torch.testing.assert_close(x.grad, (q * scale).sum(0).expand(3, 40), rtol=1e-5, atol=1e-6)
    chip = memsim.MemristorLinear.from_linear(linear, memsim.CrossbarConfig(), torch.Generator().manual_seed(1))
    x.grad = None
    chip(x).sum().backward()
    torch.testing.assert_close(x.grad, (chip.effective_weight() * chip.weight_scale[:, None]).sum(0).expand(3, 40))
    effective = chip.effective_weight() / q.clamp(min=1)
    assert 0.9 < float(effective[q > 0].mean()) < 1.0  # the cells' gain on a weight, about 0.95
