"""Chip-in-the-loop tuning: only what stays digital changes, and the loss falls."""

import torch

import memsim
from asr.chips import tunable, tune
from asr.model import ConformerCTC, ModelConfig
from asr.quant import CROSSBAR_LAYERS, QuantConfig, quantize


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
