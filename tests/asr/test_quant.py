import copy
import dataclasses
from dataclasses import asdict

import pytest
import torch
from torch import nn

import memsim
from asr import checkpoint, settings
from asr.chips import ChipFolder
from asr.model import ConformerCTC, ModelConfig, ctc_loss
from asr.model.attention import SelfAttention
from asr.pipeline import graph
from asr.quant import (
    CROSSBAR_LAYERS,
    InputQuantizer,
    QuantConfig,
    QuantConv1d,
    QuantLinear,
    fake_quantize,
    max_level,
    quantize,
    quantized_layers,
)


def test_levels_per_bit_width():
    assert [max_level(b) for b in (1.5, 2, 3, 4, 8)] == [1, 1, 3, 7, 127]
    for bad in (1, 2.5, 0, True, "3"):
        with pytest.raises(ValueError):
            max_level(bad)


@pytest.mark.parametrize("bits", [1.5, 3, 4])
def test_minmax_weights_are_exact_integer_levels_times_the_max_over_qmax(bits):
    torch.manual_seed(0)
    layer = QuantLinear.from_linear(nn.Linear(16, 8), QuantConfig(weight_bits=bits))
    q, scale, qmax = layer.integer_weight(), layer.weight_scale, max_level(bits)
    assert scale.shape == () and scale == layer.weight.abs().max() / qmax
    assert torch.equal(q, q.round()) and q.abs().max() == qmax
    assert set(q.unique().tolist()) <= set(range(-qmax, qmax + 1))
    assert torch.equal(layer.weight_quant(layer.weight), q * scale)


def test_per_channel_scales_reach_the_top_level_in_every_row():
    torch.manual_seed(0)
    layer = QuantLinear.from_linear(nn.Linear(16, 8), QuantConfig(weight_bits=3, per_channel=True))
    assert layer.weight_scale.shape == (8, 1)
    assert torch.equal(layer.integer_weight().abs().amax(dim=1), torch.full((8,), 3.0))


def test_input_quantizer_tracks_the_running_max_and_freezes_in_eval():
    quant = InputQuantizer(bits=8)
    x = torch.tensor([0.5, -2.0, 1.0])
    y = quant(x)
    assert quant.scale == 2.0 / 127
    assert torch.equal(y, (x / quant.scale).round() * quant.scale)
    quant(torch.tensor([1.0]))
    assert quant.max_abs == 2.0  # a running max never shrinks
    quant.eval()
    assert quant(torch.tensor([5.0])) == 2.0  # beyond the range: clipped, range unchanged
    assert quant.max_abs == 2.0


def test_input_quantizer_ema():
    quant = InputQuantizer(bits=8, momentum=0.25)
    quant(torch.tensor([4.0]))
    quant(torch.tensor([8.0]))
    assert quant.max_abs == 4.0 + 0.25 * (8.0 - 4.0)


def test_straight_through_gradients():
    x = torch.tensor([-3.0, -0.26, 0.1, 0.74, 2.0], requires_grad=True)
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    (fake_quantize(x, torch.tensor(0.5), qmax=3) * upstream).sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 2.0, 3.0, 4.0, 0.0]))  # zero only where clipped


def test_weight_gradient_is_the_float_gradient_at_the_quantized_point():
    torch.manual_seed(0)
    layer = QuantLinear.from_linear(nn.Linear(6, 4), QuantConfig(weight_bits=3))
    x, upstream = torch.randn(5, 6), torch.randn(5, 4)
    (layer(x) * upstream).sum().backward()
    x_q = layer.input_quant.eval()(x)
    assert torch.allclose(layer.weight.grad, upstream.T @ x_q, atol=1e-6)


def test_lsq_step_gradient():
    torch.manual_seed(0)
    layer = QuantLinear.from_linear(nn.Linear(8, 4), QuantConfig(weight_bits=3, weight_scale="lsq"))
    w, step, qmax = layer.weight.detach(), layer.weight_quant.step.detach(), 3
    assert torch.allclose(step, 2 * w.abs().mean() / qmax**0.5)
    layer.weight_quant(layer.weight).sum().backward()
    v = w / step
    expected = torch.where(v.abs() <= qmax, v.round() - v, v.sign() * qmax).sum() / (w.numel() * qmax) ** 0.5
    assert torch.allclose(layer.weight_quant.step.grad, expected)


def test_eval_forward_is_the_contract_formula():
    torch.manual_seed(0)
    layer = QuantLinear.from_linear(nn.Linear(16, 8), QuantConfig(weight_bits=3))
    layer(3 * torch.randn(32, 16))  # observe an input range
    layer.eval()
    x = 4 * torch.randn(10, 16)
    s, qmax = layer.input_scale, 2 ** (layer.input_bits - 1) - 1
    expected = nn.functional.linear(
        s * (x / s).clamp(-qmax, qmax).round(), layer.integer_weight() * layer.weight_scale, layer.bias
    )
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)


# Ideal cells and converters with the DAC of the 8-bit activation quantizer: the exact mapping.
IDEAL_CHIP = memsim.CrossbarConfig(
    weight_bits=3,
    tile_size=16,
    device="ideal",
    read_noise="none",
    dac_bits=8,
    adc_precision_bits=None,
    adc_range_bits=None,
)


def test_an_ideal_crossbar_reproduces_the_quantized_layer():
    torch.manual_seed(0)
    layer = QuantLinear.from_linear(nn.Linear(40, 24), QuantConfig(weight_bits=3))
    layer(torch.randn(64, 40))
    layer.eval()
    crossbar = memsim.MemristorLinear.from_linear(layer, IDEAL_CHIP)
    x = torch.randn(20, 40)
    torch.testing.assert_close(crossbar(x), layer(x), rtol=1e-4, atol=1e-4)


# All of quant=paper's options (configs/quant/paper.yaml).
PAPER = QuantConfig(
    weight_bits=3,
    weight_scale="running_max",
    output_bits=8,
    quantize_attention=True,
    quantize_depthwise=True,
    depthwise_io_bits=8,
)


def small_conformer(**options) -> ConformerCTC:
    """A 2 x 16 Conformer-CTC with 10 output units."""
    dims = dict(vocab_size=10, frontend="conv2d", d_model=16, n_layers=2, n_heads=2, d_ff=32, kernel_size=3)
    return ConformerCTC(ModelConfig(**dims, **options))


def test_quantize_swaps_exactly_the_crossbar_layers():
    model = small_conformer(pos_enc="relative")
    float_names = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    quantize(model, QuantConfig(weight_bits=3))
    quantized = {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    per_block = {
        "ff1.w1",
        "ff1.w2",
        "ff2.w1",
        "ff2.w2",
        "attn.in_proj",
        "attn.out_proj",
        "conv.pointwise1",
        "conv.pointwise2",
    }
    assert quantized == {f"blocks.{i}.{n}" for i in range(2) for n in per_block}
    assert float_names - quantized == {"frontend.out", "head", "blocks.0.attn.pos_proj", "blocks.1.attn.pos_proj"}
    assert CROSSBAR_LAYERS == QuantConfig().include


def test_quantize_does_nothing_for_float_and_rejects_patterns_that_match_nothing():
    model = nn.Sequential(nn.Linear(2, 2))
    assert quantize(model, QuantConfig(weight_bits=None))[0].__class__ is nn.Linear
    with pytest.raises(ValueError, match="no nn.Linear layer matches"):
        quantize(model, QuantConfig(weight_bits=3, include=("encoder.*",)))


def digital_and_chip_outputs(model: ConformerCTC, chip, **convert_options) -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh quantized Conformer's logits on two random utterances, digital and then converted (in place) onto
    `chip` with convert_options; its input ranges observed on the same batch first."""
    features, lengths = torch.randn(2, 40, 80), torch.tensor([40, 31])
    model(features, lengths)  # observe input ranges
    model.eval()
    with torch.no_grad():
        digital, _ = model(features, lengths)
        memsim.convert(model, chip, **convert_options)
        analog, _ = model(features, lengths)
    return digital, analog


@pytest.mark.parametrize("config", [QuantConfig(weight_bits=3), PAPER], ids=["qat", "paper"])
def test_memsim_maps_a_quantized_conformer_exactly_on_ideal_crossbars(config):
    torch.manual_seed(0)
    model = small_conformer(dropout=0.0, attn_dropout=0.0)
    quantize(model, config)
    digital, analog = digital_and_chip_outputs(model, IDEAL_CHIP, include=CROSSBAR_LAYERS)
    assert sum(isinstance(m, memsim.MemristorLinear) for m in model.modules()) == 16
    torch.testing.assert_close(analog, digital, rtol=1e-4, atol=1e-4)


def on_grid(x: torch.Tensor, scale: torch.Tensor, qmax: int) -> bool:
    """Whether x holds only the levels scale * {-qmax, ..., qmax}."""
    levels = x / scale
    return bool(torch.allclose(levels, levels.round(), atol=1e-4) and levels.abs().max() <= qmax + 1e-4)


def test_quant_config_checks_output_bits_as_input_bits():
    assert QuantConfig().output_bits is None
    for bad in (1, 2.5, 17):
        for name in ("input_bits", "output_bits"):
            with pytest.raises(ValueError, match=name):
                QuantConfig(**{name: bad})
    assert QuantConfig(output_bits=8).output_bits == 8


def test_output_quantizer_follows_the_bias_observes_in_training_and_freezes_in_eval():
    torch.manual_seed(0)
    assert QuantLinear.from_linear(nn.Linear(4, 4), QuantConfig()).output_quant is None
    layer = QuantLinear.from_linear(nn.Linear(16, 8), QuantConfig(weight_bits=3, output_bits=8))
    assert isinstance(layer.output_quant, InputQuantizer) and "output_quant.max_abs" in layer.state_dict()
    x = torch.randn(32, 16)
    y = layer(x)
    float_y = nn.functional.linear(layer.input_quant(x), layer.weight_quant(layer.weight), layer.bias)
    assert layer.output_quant.max_abs == float_y.abs().max()  # the range of the biased output
    assert on_grid(y, layer.output_quant.scale, 127) and y.abs().max() == float_y.abs().max()
    layer(x / 4)
    assert layer.output_quant.max_abs == float_y.abs().max()  # a running max
    layer.eval()
    seen = layer.output_quant.max_abs.clone()
    y = layer(10 * x)
    assert layer.output_quant.max_abs == seen and on_grid(y, layer.output_quant.scale, 127)
    assert y.abs().max() == seen  # clipped at the range seen in training


@pytest.mark.parametrize("bits", [1.5, 3])
def test_attention_quantizers_put_queries_keys_values_and_weights_on_the_weight_grid(bits):
    torch.manual_seed(0)
    model = small_conformer(attn_dropout=0.0, pos_enc="relative")
    quantize(model, QuantConfig(weight_bits=bits, quantize_attention=True))
    seen = {}

    def keep(name):
        def hook(module, inputs, output):
            seen[name] = (inputs[0], output, module.scale.clone())

        return hook

    attn = model.blocks[1].attn
    for name in ("q_quant", "k_quant", "v_quant", "weights_quant"):
        quant = getattr(attn, name)
        assert isinstance(quant, InputQuantizer) and quant.qmax == max_level(bits)
        quant.register_forward_hook(keep(name))
    model(torch.randn(2, 40, 80), torch.tensor([40, 31]))
    for name, (x, y, scale) in seen.items():
        assert on_grid(y, scale, max_level(bits)), name
        assert scale == x.abs().max() / max_level(bits), name  # its range: the running max of this batch
    probabilities, quantized, _ = seen["weights_quant"]
    torch.testing.assert_close(probabilities.sum(-1), torch.ones_like(probabilities[..., 0]))  # the softmax
    assert set(quantized.unique().tolist()) - {0.0} and not torch.equal(quantized, probabilities)


def test_depthwise_weights_are_fake_quantized_under_their_old_names():
    torch.manual_seed(0)
    model = small_conformer()
    float_keys = set(model.state_dict())
    quantize(model, QuantConfig(weight_bits=3, quantize_depthwise=True))
    keys = set(model.state_dict())
    assert float_keys <= keys and all(k.endswith(".input_quant.max_abs") for k in keys - float_keys)
    conv = model.blocks[0].conv.depthwise
    assert isinstance(conv, QuantConv1d) and conv.groups == conv.in_channels == 16
    used = []
    conv.register_forward_hook(lambda module, inputs, output: used.append((inputs[0], output)))
    model(torch.randn(2, 40, 80), torch.tensor([40, 31]))
    x, y = used[0]
    w = conv.weight_quant(conv.weight)
    assert on_grid(w, conv.weight.abs().max() / 3, 3) and w.abs().max() == conv.weight.abs().max()
    torch.testing.assert_close(y, nn.functional.conv1d(x, w, conv.bias, padding=1, groups=16), rtol=0, atol=1e-6)


def test_depthwise_io_quantizers_quantize_its_input_and_output_and_a_chip_maps_them_exactly():
    torch.manual_seed(0)
    model = quantize(small_conformer(), QuantConfig(weight_bits=3, quantize_depthwise=True, depthwise_io_bits=8))
    conv = model.blocks[0].conv.depthwise
    model(torch.randn(2, 40, 80), torch.tensor([40, 31]))  # training: the quantizers' ranges
    model.eval()
    x = torch.randn(2, 16, 12)
    with torch.no_grad():
        y = conv(x)
    assert conv.input_bits == 8 and float(conv.input_scale) > 0
    assert on_grid(y, conv.output_quant.scale, 127)
    used = []
    conv.register_forward_hook(lambda module, inputs, output: used.append(inputs[0]))
    conv(x)
    assert torch.equal(used[0], x)  # the module's own input quantizer, not the caller, quantizes
    chip = memsim.convert(copy.deepcopy(conv), dataclasses.replace(IDEAL_CHIP, tile_size=48), kinds=["conv"])
    assert float(chip.crossbar.input_range) == pytest.approx(float(conv.input_scale) * 127)
    torch.testing.assert_close(chip(x), y, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="depthwise_io_bits .* set quantize_depthwise"):
        QuantConfig(weight_bits=3, depthwise_io_bits=8)
    assert not hasattr(
        quantize(small_conformer(), QuantConfig(weight_bits=3, quantize_depthwise=True)).blocks[0].conv.depthwise,
        "input_scale",
    )


def test_by_default_attention_and_depthwise_stay_float():
    model = quantize(small_conformer(pos_enc="relative"), QuantConfig(weight_bits=3))
    for attn in (m for m in model.modules() if isinstance(m, SelfAttention)):
        assert attn.q_quant is attn.k_quant is attn.v_quant is attn.weights_quant is None
    assert not any(isinstance(m, QuantConv1d) for m in model.modules())
    with pytest.raises(ValueError, match="quantize_attention: the model has no SelfAttention"):
        quantize(nn.Sequential(nn.Linear(2, 2)), QuantConfig(weight_bits=3, quantize_attention=True, include=("0",)))


@pytest.mark.parametrize("pos_enc", ["none", "relative"])
def test_a_model_with_all_paper_options_trains_and_round_trips_through_a_checkpoint(pos_enc, tmp_path):
    torch.manual_seed(0)
    model_config = dict(vocab_size=10, frontend="conv2d", d_model=16, n_layers=2, n_heads=2, d_ff=32, kernel_size=3)
    model_config.update(dropout=0.2, conv_norm="layer", pos_enc=pos_enc)
    model = quantize(ConformerCTC(ModelConfig(**model_config)), PAPER)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    features, lengths = torch.randn(2, 40, 80), torch.tensor([40, 31])
    tokens, token_lengths = torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([3, 2])
    logits, out_lengths = model(features, lengths)
    loss = ctc_loss(logits, out_lengths, tokens, token_lengths, model.blank)
    loss.backward()
    assert torch.isfinite(loss)
    quantized = [m for m in model.modules() if isinstance(m, QuantLinear | QuantConv1d)]
    assert len(quantized) == 2 * 9
    for module in quantized:
        assert torch.isfinite(module.weight.grad).all() and module.weight.grad.abs().sum() > 0
    optimizer.step()
    path = tmp_path / "final.pt"
    checkpoint.save({"meta": {"model": model_config, "quant": asdict(PAPER)}, "model": model.state_dict()}, path)
    loaded = checkpoint.load_model(path)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(features, lengths)[0], model(features, lengths)[0])


def test_quant_paper_config_is_all_paper_options(make_cfg):
    s = settings.load(make_cfg("quant=paper", "model=paper"))
    from_yaml = asdict(s.quant_config(True))  # the include and exclude tuples come back as lists
    assert from_yaml == asdict(PAPER) | {"include": list(CROSSBAR_LAYERS), "exclude": []}
    assert s.system_name(True) == "paper-w3"
    assert s.model.dropout == 0.2 and s.model.conv_norm == "layer"


def test_running_max_weight_scale_keeps_the_largest_weight_seen_in_training():
    layer = QuantLinear.from_linear(nn.Linear(8, 4), QuantConfig(weight_bits=3, weight_scale="running_max"))
    first = float(layer.weight.detach().abs().max())
    assert float(layer.weight_scale) == pytest.approx(first / 3)  # before training: the current weights
    layer.train()(torch.randn(2, 8))
    with torch.no_grad():
        layer.weight.mul_(0.5)
    layer(torch.randn(2, 8))
    assert float(layer.weight_scale) == pytest.approx(first / 3)  # shrunk weights keep the running max
    with torch.no_grad():
        layer.weight.mul_(4)
    layer.eval()(torch.randn(2, 8))
    assert float(layer.weight_scale) == pytest.approx(first / 3)  # evaluation does not update it
    layer.train()(torch.randn(2, 8))
    assert float(layer.weight_scale) == pytest.approx(2 * first / 3)
    assert (layer.integer_weight().abs() <= 3).all()


CHIP_TABLE = asdict(memsim.weight_error_model(memsim.CrossbarConfig(weight_bits=3), samples=256))
NOISY = {
    "gauss": QuantConfig(weight_bits=3, noise="gauss", noise_std=0.1),
    "chip": QuantConfig(weight_bits=3, noise="chip", noise_table=CHIP_TABLE),
}


@pytest.mark.parametrize("kind", NOISY)
def test_weight_noise_acts_only_in_training_and_only_on_the_crossbar_layers(kind):
    torch.manual_seed(0)
    config = NOISY[kind]
    model = quantize(small_conformer(), QuantConfig(**{**asdict(config), "quantize_depthwise": True}))
    layer = model.get_submodule("blocks.0.ff1.w1")
    depthwise = model.get_submodule("blocks.0.conv.depthwise")
    layer.train(), depthwise.train()
    clean = layer.integer_weight() * layer.weight_scale
    first, second = layer.weight_quant(layer.weight), layer.weight_quant(layer.weight)
    assert not torch.equal(first, clean) and not torch.equal(first, second)  # fresh draws every step
    assert torch.equal(depthwise.weight_quant(depthwise.weight), depthwise.weight_quant(depthwise.weight))
    layer.eval()
    assert torch.equal(layer.weight_quant(layer.weight), clean)
    layer.train()
    torch.manual_seed(5)
    again = layer.weight_quant(layer.weight)
    torch.manual_seed(5)
    assert torch.equal(layer.weight_quant(layer.weight), again)  # the seed fixes the draws


def test_weight_noise_has_the_configured_size_and_passes_gradients_straight_through():
    torch.manual_seed(0)
    layer = QuantLinear.from_linear(nn.Linear(256, 256), NOISY["gauss"])
    layer.weight_quant.noise = NOISY["gauss"].weight_noise((256, 256))
    layer.train()
    noisy = layer.weight_quant(layer.weight)
    deviation = float(((noisy.detach() - layer.integer_weight() * layer.weight_scale) / layer.weight_scale).std())
    assert deviation == pytest.approx(0.1 * 3, rel=0.02)  # noise_std x the weight range, in integer steps
    noisy.sum().backward()
    assert torch.equal(layer.weight.grad, (layer.weight.abs() <= 3 * layer.weight_scale).float())
    chip = QuantLinear.from_linear(nn.Linear(256, 256), NOISY["chip"])
    chip.weight_quant.noise = NOISY["chip"].weight_noise((256, 256))
    chip.train()
    q = chip.integer_weight()
    drawn = chip.weight_quant(chip.weight).detach() / chip.weight_scale
    mean = torch.tensor(CHIP_TABLE["mean"]).mean(1)
    assert float(drawn[q == 3].mean()) == pytest.approx(float(mean[6]), abs=0.02)  # the chip's gain on +3


def test_a_noise_aware_model_maps_exactly_on_an_ideal_chip_and_keeps_its_table_in_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = quantize(small_conformer(dropout=0.0, attn_dropout=0.0), NOISY["chip"])
    digital, analog = digital_and_chip_outputs(model, IDEAL_CHIP, include=CROSSBAR_LAYERS)
    torch.testing.assert_close(analog, digital, rtol=1e-4, atol=1e-4)
    assert QuantConfig(**asdict(NOISY["chip"])).noise_table == CHIP_TABLE  # what the checkpoint's meta rebuilds


def test_the_recipe_measures_the_chip_noise_table_from_its_memsim_settings(make_cfg):
    s = settings.load(make_cfg("+experiment=mini", "quant.noise=chip", "memsim.read_noise=paper"))
    table = s.quant_config(True).noise_table
    assert table is not None and table["levels"] == [-3, -2, -1, 0, 1, 2, 3]
    assert max(table["read_noise"][6]) > 0.02  # the paper's read noise, not the physical one
    assert s.system_name(True) == "w3a8-chipnoise"
    with pytest.raises(ValueError, match="noise must be one of"):
        QuantConfig(noise="white")
    with pytest.raises(ValueError, match="noise=chip needs noise_table"):
        QuantConfig(noise="chip")


def test_a_blstm_model_quantizes_its_gate_layers_and_maps_exactly_on_ideal_crossbars():
    torch.manual_seed(0)
    model = ConformerCTC(ModelConfig(vocab_size=10, frontend="conv2d", d_model=32, n_layers=2, encoder="blstm"))
    features, lengths = torch.randn(3, 60, 80), torch.tensor([60, 50, 33])
    model.eval()
    with torch.no_grad():
        float_logits, _ = model(features, lengths)
    quantize(model, QuantConfig(weight_bits=8))
    assert quantized_layers(model) == [f"lstm.cells.{k}.{d}" for k in range(2) for d in range(2)]
    model.train()
    model(features, lengths)  # observe input ranges
    model.eval()
    with torch.no_grad():
        digital, _ = model(features, lengths)
        torch.testing.assert_close(digital, float_logits, rtol=0, atol=0.02)  # 8 bits: close to the float LSTM
        memsim.convert(model, dataclasses.replace(IDEAL_CHIP, weight_bits=8), include=quantized_layers(model))
        analog, _ = model(features, lengths)
    torch.testing.assert_close(analog, digital, rtol=1e-4, atol=1e-4)


def test_everything_but_the_output_layer_maps_exactly_on_an_ideal_chip(make_cfg):
    """quant=qat_all: the linear layers, the depthwise convolutions and the whole frontend on the chip."""
    s = settings.load(make_cfg("+experiment=mini", "quant=qat_all", "memsim.kinds=[linear,conv]"))
    config = s.quant.build()
    depthwise_only = settings.load(make_cfg("+experiment=mini", "quant=qat_depthwise", "memsim.kinds=[linear,conv]"))
    assert (s.system_name(True), depthwise_only.system_name(True)) == ("w3a8-all", "w3a8-dw")  # tables tell them apart
    torch.manual_seed(0)
    model = quantize(small_conformer(dropout=0.0, attn_dropout=0.0), config)
    kinds = ("linear", "conv")
    names = quantized_layers(model, kinds)
    assert {"frontend.convs.0", "frontend.convs.2", "frontend.out", "blocks.0.conv.depthwise"} <= set(names)
    digital, analog = digital_and_chip_outputs(
        model, dataclasses.replace(IDEAL_CHIP, dac_bits=None), include=names, kinds=kinds
    )
    assert isinstance(model.frontend.convs[0], memsim.MemristorConv2d)
    torch.testing.assert_close(analog, digital, rtol=1e-4, atol=1e-4)


def test_settings_added_later_keep_the_identity_of_models_made_before_them(make_cfg):
    s = settings.load(make_cfg("+experiment=mini"))
    quant, model = graph.model_output(s, True).settings["quant"], graph.model_output(s, True).settings["model"]
    assert not {"noise", "noise_std", "noise_table", "quantize_frontend"} & set(quant) and "encoder" not in model
    noisy = settings.load(make_cfg("+experiment=mini", "quant.noise=gauss"))
    assert graph.model_output(noisy, True).settings["quant"]["noise_std"] == 0.05


WIRE_FIELDS = ("row_wire_resistance", "column_wire_resistance")


def test_wire_aware_training_sees_the_effective_weights_of_the_chips_wires_and_its_identity_only_them(make_cfg):
    """quant.noise=wires trains against memsim.WireWeightModel of the `memsim` chip's nominal self: each layer its
    own model, only in training; the model's identity holds the chip's wires, not its converters or noise."""
    wires = ("quant.noise=wires", "memsim.row_wire_resistance=2.78", "memsim.column_wire_resistance=2.78")
    s = settings.load(make_cfg("+experiment=mini", *wires))
    config = s.quant_config(True)
    assert config.noise_chip is not None and config.noise_chip["row_wire_resistance"] == 2.78
    assert s.system_name(True) == "w3a8-wires"
    other_adc = settings.load(make_cfg("+experiment=mini", *wires, "memsim.adc=reasonable", "memsim.read_noise=paper"))
    assert other_adc.quant_config(True) == config  # converters and read noise do not change what the wires do
    torch.manual_seed(0)
    model = quantize(small_conformer(), QuantConfig(**{**asdict(config), "include": ("blocks.*.ff1.w1",)}))
    first, second = (model.get_submodule(f"blocks.{k}.ff1.w1") for k in (0, 1))
    assert first.weight_quant.noise is not second.weight_quant.noise  # a layer's own state, in the state dict
    assert "blocks.0.ff1.w1.weight_quant.noise.effective" in model.state_dict()
    first.train()
    clean = (first.integer_weight() * first.weight_scale).detach()
    trained_on = first.weight_quant(first.weight).detach()
    assert 0.0 < float((trained_on - clean).norm() / clean.norm()) < 0.5
    first.eval()
    assert torch.equal(first.weight_quant(first.weight), clean)
    with pytest.raises(ValueError, match="noise=wires needs noise_chip"):
        QuantConfig(noise="wires")
    with pytest.raises(ValueError, match="noise=wires needs noise_chip"):  # ideal wires: nothing to train against
        QuantConfig(noise="wires", noise_chip={**config.noise_chip, **dict.fromkeys(WIRE_FIELDS, 0.0)})


MIXED = {"blocks.*.ff[12].w[12]": 1.5, "blocks.1.attn.*": 5}


def test_layer_bits_reach_the_layers_they_name_and_a_mixed_chip_maps_them_exactly():
    """quant.layer_bits gives the feed-forward layers ternary weights and block 1's attention projections 5 bits;
    the other crossbar layers keep weight_bits. The chip (memsim.ChipSpec.layer_bits) maps each with its own bits:
    digit planes, cells and all, so an ideal chip computes what the mixed QAT model does."""
    torch.manual_seed(0)
    model = quantize(small_conformer(dropout=0.0, attn_dropout=0.0), QuantConfig(weight_bits=3, layer_bits=MIXED))
    bits = {name: m.weight_bits for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert {n for n, b in bits.items() if b == 1.5} == {
        f"blocks.{i}.ff{f}.w{w}" for i in (0, 1) for f in (1, 2) for w in (1, 2)
    }
    assert {n for n, b in bits.items() if b == 5} == {"blocks.1.attn.in_proj", "blocks.1.attn.out_proj"}
    assert {b for n, b in bits.items() if not n.endswith(("w1", "w2")) and "blocks.1.attn" not in n} == {3}
    for name, layer in model.named_modules():
        if isinstance(layer, QuantLinear):
            assert float(layer.integer_weight().abs().max()) == max_level(layer.weight_bits), name
    chip = memsim.ChipSpec(IDEAL_CHIP, layer_bits=tuple(MIXED.items()))
    digital, analog = digital_and_chip_outputs(model, chip, include=CROSSBAR_LAYERS)
    planes = {row["layer"]: (row["weight_bits"], row["planes"]) for row in memsim.summary(model)[:-1]}
    assert planes["blocks.0.ff1.w1"] == (1.5, 1) and planes["blocks.1.attn.in_proj"] == (5, 4)
    assert planes["blocks.0.attn.in_proj"] == (3, 2)
    torch.testing.assert_close(analog, digital, rtol=1e-4, atol=1e-4)


def test_layer_bits_are_checked_and_leave_uniform_models_as_they_were(make_cfg):
    with pytest.raises(ValueError, match=r"layer_bits\['blocks.\*'\]"):
        QuantConfig(weight_bits=3, layer_bits={"blocks.*": 17})
    with pytest.raises(ValueError, match="mixed precision trains with noise=gauss or none"):
        QuantConfig(weight_bits=3, layer_bits={"blocks.*": 4}, noise="chip", noise_table={})
    with pytest.raises(ValueError, match=r"layer_bits pattern\(s\) \['encoder.\*'\] match no crossbar layer"):
        quantize(small_conformer(), QuantConfig(weight_bits=3, layer_bits={"encoder.*": 4}))
    with pytest.raises(ValueError, match=r"weight-bits pattern\(s\) \['encoder.\*'\] match no converted layer"):
        memsim.convert(nn.Sequential(nn.Linear(4, 4)), memsim.ChipSpec(IDEAL_CHIP, layer_bits=(("encoder.*", 4),)))
    with pytest.raises(ValueError, match=r"ChipSpec.layer_bits\['x'\]"):
        memsim.ChipSpec(IDEAL_CHIP, layer_bits=(("x", 9),))
    uniform = settings.load(make_cfg("+experiment=mini"))
    mixed = settings.load(make_cfg("+experiment=mini", "++quant.layer_bits={blocks.*.ff*:1.5}"))
    assert "layer_bits" not in graph.model_output(uniform, True).settings["quant"]
    assert "layer_bits" not in graph.chip_output(uniform, graph.model_output(uniform, True)).settings
    assert graph.model_output(mixed, True).settings["quant"]["layer_bits"] == {"blocks.*.ff*": 1.5}
    chip = graph.chip_output(mixed, graph.model_output(mixed, True))
    assert ChipFolder.from_settings(chip.settings).chip.layer_bits == (("blocks.*.ff*", 1.5),)
    assert (uniform.system_name(True), mixed.system_name(True)) == ("w3a8", "w3a8-mixed")


def test_quant_qat_pos_puts_the_position_projections_on_an_ideal_chip_exactly(make_cfg):
    """quant=qat_pos: the relative-position projections are crossbar layers too (the positional-encoding
    follow-up's setting), the model is named w3a8-pos, and an ideal chip computes what it does."""
    s = settings.load(make_cfg("+experiment=mini", "quant=qat_pos"))
    assert s.system_name(True) == "w3a8-pos"
    torch.manual_seed(0)
    model = quantize(small_conformer(pos_enc="relative", dropout=0.0, attn_dropout=0.0), s.quant.build())
    names = quantized_layers(model)
    assert {"blocks.0.attn.pos_proj", "blocks.1.attn.pos_proj"} <= set(names) and len(names) == 18
    digital, analog = digital_and_chip_outputs(model, IDEAL_CHIP, include=names)
    assert isinstance(model.blocks[1].attn.pos_proj, memsim.MemristorLinear)
    torch.testing.assert_close(analog, digital, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["minmax", "running_max", "lsq"])
def test_a_trained_layer_at_other_bits_quantizes_the_same_range_to_their_levels(mode):
    torch.manual_seed(0)
    layer = QuantLinear.from_linear(nn.Linear(16, 8), QuantConfig(weight_bits=3, weight_scale=mode))
    layer.train()
    layer(torch.randn(4, 16))  # observe the input range (and the running maximum)
    layer.eval()
    same = layer.at_bits(3)
    assert torch.equal(same.integer_weight(), layer.integer_weight())
    for bits, top in ((4, 7), (1.5, 1)):
        other = layer.at_bits(bits)
        q = other.integer_weight()
        assert other.weight_bits == bits and q.abs().max() <= top and torch.equal(q, q.round())
        assert mode == "lsq" or q.abs().max() == top  # a max-based range holds the largest weight at the top level
        torch.testing.assert_close(other.weight_scale * top, layer.weight_scale * 3)  # the same range
    assert layer.weight_bits == 3 and layer.weight_quant.qmax == 3  # the trained layer is left as it was
    chip = memsim.CrossbarConfig(weight_bits=4, device="ideal", read_noise="none", adc_precision_bits=None)
    x = torch.randn(5, 16)
    with torch.no_grad():
        digital = layer.at_bits(4)(x)
        analog = memsim.MemristorLinear.from_linear(layer.at_bits(4), dataclasses.replace(chip, dac_bits=8))(x)
    torch.testing.assert_close(analog, digital, rtol=1e-4, atol=1e-4)
