"""Chip-in-the-loop tuning: only what stays digital changes, and the loss falls."""

import torch

import memsim
from asr.chips import (
    PROBE_SECONDS,
    PreparedChip,
    prepared_state,
    read_switches,
    reads_per_second,
    start_split,
    tunable,
    tune,
)
from asr.model import ConformerCTC, ModelConfig
from asr.quant import CROSSBAR_LAYERS, QuantConfig, quantize, quantized_layers


def test_tuning_changes_only_biases_norms_and_the_output_layer_and_lowers_the_loss():
    torch.manual_seed(0)
    dims = dict(vocab_size=10, frontend="conv2d", d_model=16, n_layers=2, n_heads=2, d_ff=32, kernel_size=3)
    model = quantize(ConformerCTC(ModelConfig(**dims)), QuantConfig(weight_bits=3))
    feats, feat_lens = torch.randn(4, 60, 80), torch.tensor([60, 55, 50, 41])
    model(feats, feat_lens)  # input ranges
    memsim.convert(model, memsim.CrossbarConfig(), torch.Generator().manual_seed(1), include=CROSSBAR_LAYERS)
    batch = {
        "feats": feats,
        "feat_lens": feat_lens,
        "tokens": torch.randint(1, 10, (4, 5)),
        "token_lens": torch.full((4,), 5),
    }
    before = {k: v.clone() for k, v in model.state_dict().items()}
    chosen = {id(p) for p in tunable(model)}
    names = {name for name, p in model.named_parameters() if id(p) in chosen}
    assert "head.weight" in names and "blocks.0.ff1.w1.bias" in names and "blocks.0.ff1.norm.weight" in names
    assert not any(name.endswith(".weight") and ".ff1.w" in name for name in names)
    losses = tune(model, [batch], steps=4, lr=1e-2)
    assert losses[-1] < losses[0]
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= names | {k for k in before if "running" in k or "num_batches" in k}
    assert all(torch.equal(before[k], after[k]) for k in before if k.endswith(".r"))  # the cells stay programmed
    assert not any(p.requires_grad for p in model.parameters())


def test_each_crossbar_layer_is_counted_by_the_vectors_it_reads_per_second_of_audio():
    """Energy and ADC conversions per second of audio weigh each layer by its own reads: a frontend convolution
    reads one vector per output position of the spectrogram, the encoder's layers one per encoder frame."""
    torch.manual_seed(0)
    dims = dict(vocab_size=10, frontend="conv2d", d_model=16, n_layers=1, n_heads=2, d_ff=32, kernel_size=3)
    config = QuantConfig(weight_bits=3, quantize_depthwise=True, quantize_frontend=True)
    model = quantize(ConformerCTC(ModelConfig(**dims)), config).eval()
    kinds = ("linear", "conv")
    memsim.convert(model, memsim.CrossbarConfig(device="ideal"), include=quantized_layers(model, kinds), kinds=kinds)
    reads = reads_per_second(model)
    frames = PROBE_SECONDS * 100
    encoder = int(model.output_lengths(torch.tensor([frames]))[0]) / PROBE_SECONDS
    assert reads["blocks.0.ff1.w1"] == reads["blocks.0.conv.depthwise.crossbar"] == encoder
    assert model.frontend.convs[0].stride == (2, 2)  # 3x3, stride 2 over [frames, 80 mel bins]
    assert reads["frontend.convs.0.crossbar"] == ((frames - 3) // 2 + 1) * ((80 - 3) // 2 + 1) / PROBE_SECONDS


def test_progress_bars_follow_the_layers_and_each_layers_pre_cycling(capsys):
    from asr.chips import ProgressBars
    from memsim import ProgrammingProgress

    bars = ProgressBars("program instance 0")
    for layer in ("a", "b"):
        for done in (0.5, 1.0, 2.0):
            bars(ProgrammingProgress("precycle", layer, done, 2, 0.1))
        bars(ProgrammingProgress("program", layer, 1 + (layer == "b"), 2, 0.3))
    assert bars.layers is not None and bars.layers.n == 2 and bars.pulses is None
    assert "program instance 0: 100%" in capsys.readouterr().err


def test_each_split_starts_from_the_prepared_chip_and_its_passes_carry_read_disturb():
    torch.manual_seed(0)
    dims = dict(vocab_size=10, frontend="conv2d", d_model=16, n_layers=1, n_heads=2, d_ff=32, kernel_size=3)
    model = quantize(ConformerCTC(ModelConfig(**dims)), QuantConfig(weight_bits=3)).eval()
    feats, feat_lens = torch.randn(4, 60, 80) * 3, torch.tensor([60, 55, 50, 41])
    model(feats, feat_lens)  # input ranges
    config = memsim.CrossbarConfig(read_disturb=True)
    generator = torch.Generator().manual_seed(1)
    memsim.convert(model, config, generator, include=CROSSBAR_LAYERS)
    chip = PreparedChip(model, generator, seed=1, program_seconds=0.0, tuning=None)
    prepared = prepared_state(model)
    assert prepared and read_switches(model) == {"read_switched_cells": 0}
    batches = {"dev": [{"feats": feats, "feat_lens": feat_lens}], "test": [{"feats": -feats, "feat_lens": feat_lens}]}
    counts = {}
    for passes in (1, 2):
        for split in ("dev", "test"):
            start_split(chip, prepared, split, passes, batches.__getitem__)
            counts[split, passes] = read_switches(model)["read_switched_cells"]
    assert counts["dev", 1] > 0 and counts["test", 1] > 0  # each split's own reads, from the prepared chip
    assert counts["dev", 2] >= counts["dev", 1]  # a second pass carries the first one's switches
    start_split(chip, prepared, "dev", 0, batches.__getitem__)
    assert read_switches(model) == {"read_switched_cells": 0}
    assert all(torch.equal(model.get_buffer(name), value) for name, value in prepared.items())
