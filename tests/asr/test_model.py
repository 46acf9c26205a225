import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from asr.model import ConformerCTC, Conv2dSubsampling, ModelConfig, VGGSubsampling, count_parameters, ctc_loss
from asr.model.attention import SelfAttention, explicit_attention, rel_shift, relative_positions
from asr.tokenizer import BLANK_ID


def tiny_config(**overrides) -> ModelConfig:
    base = dict(
        vocab_size=12,
        frontend="conv2d",
        d_model=32,
        n_layers=2,
        n_heads=4,
        d_ff=64,
        kernel_size=5,
        dropout=0.0,
        attn_dropout=0.0,
        pos_enc="relative",
    )
    return ModelConfig(**{**base, **overrides})


@pytest.mark.parametrize(
    "frontend, shortest",
    [
        (lambda: VGGSubsampling(80, 8, channels=(4, 8)), 1),  # lengths do not depend on the widths
        (lambda: Conv2dSubsampling(80, 8), 7),
    ],
    ids=["vgg", "conv2d"],
)
def test_frontend_output_length_function_matches_the_frames_it_produces(frontend, shortest):
    torch.manual_seed(0)
    module = frontend().eval()
    for t in range(shortest, 48):
        with torch.no_grad():
            frames = module(torch.randn(1, t, 80)).size(1)
        assert frames == module.output_lengths(torch.tensor([t])).item(), t


def test_rel_shift_puts_each_relative_position_under_its_key():
    t = 6
    scores = torch.randn(2, 3, t, 2 * t - 1)
    shifted = rel_shift(scores)
    for i in range(t):
        for j in range(t):  # column k of the input holds relative position t-1-k, and i - j = t-1-k
            assert torch.equal(shifted[..., i, j], scores[..., i, t - 1 - i + j])


@pytest.mark.parametrize("pos_enc", ["none", "relative"])
def test_padding_does_not_change_the_outputs_of_real_frames(pos_enc):
    torch.manual_seed(0)
    model = ConformerCTC(tiny_config(pos_enc=pos_enc, conv_norm="layer")).eval()
    block = model.blocks[0]
    x = torch.randn(1, 20, 32)
    padded = torch.cat([x, 100 * torch.randn(1, 9, 32)], dim=1)
    valid = torch.arange(29)[None] < 20
    with torch.no_grad():
        alone = block(x, torch.ones(1, 20, dtype=torch.bool))
        batched = block(padded, valid)[:, :20]
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pos_enc", ["none", "relative"])
def test_every_weight_matmul_in_the_model_runs_inside_an_nn_linear(pos_enc, monkeypatch):
    """All matmul FLOPs are nn.Linear FLOPs plus the attention's activation-by-activation products, so a
    converter that swaps nn.Linear modules maps every weight product; the only convolutions in the
    Conformer blocks are depthwise (digital by design)."""
    # two visible matmuls instead of SDPA, so the FLOP counter sees them on every backend
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", explicit_attention)
    torch.manual_seed(0)
    model = ConformerCTC(tiny_config(pos_enc=pos_enc)).eval()
    linear_flops = []

    def count(module, inputs, output):
        rows = inputs[0].numel() // module.in_features
        linear_flops.append(2 * rows * module.in_features * module.out_features)

    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(count)
    b, t = 2, 50
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        _, lengths = model(torch.randn(b, t, 80), torch.tensor([t, 41]))
    frames = model.output_lengths(torch.tensor(t)).item()
    per_head = 2 * b * model.cfg.n_heads * frames * (model.cfg.d_model // model.cfg.n_heads)
    attention = per_head * 2 * frames + (per_head * (2 * frames - 1) if pos_enc == "relative" else 0)
    matmul = sum(
        n for op, n in counter.get_flop_counts()["Global"].items() if str(op) in ("aten.mm", "aten.addmm", "aten.bmm")
    )
    assert matmul == sum(linear_flops) + model.cfg.n_layers * attention
    convs = [m for m in model.blocks.modules() if isinstance(m, nn.Conv1d | nn.Conv2d)]
    assert convs and all(c.groups == c.in_channels == c.out_channels for c in convs)


def test_paper_config_has_about_42M_parameters():
    model = ConformerCTC(ModelConfig(vocab_size=500))  # the dataclass defaults are the paper's architecture
    assert 41.5e6 < count_parameters(model) < 42.5e6


def overfit(steps: int = 60) -> list[float]:
    """Train a tiny model on one fixed batch; returns the loss after each step."""
    torch.manual_seed(0)
    model = ConformerCTC(tiny_config(d_model=64, dropout=0.1))
    features = torch.randn(4, 64, 80)
    lengths = torch.tensor([64, 60, 52, 40])
    tokens = torch.randint(1, 12, (4, 6))
    token_lengths = torch.tensor([6, 5, 4, 3])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        logits, out_lengths = model(features, lengths)
        loss = ctc_loss(logits, out_lengths, tokens, token_lengths, model.blank)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_model_overfits_a_tiny_batch():
    losses = overfit()
    assert losses[-1] < 0.05 * losses[0], losses[::10]


def test_outputs_are_the_tokenizer_units_with_blank_first():
    model = ConformerCTC(tiny_config())
    logits, _ = model(torch.randn(1, 30, 80), torch.tensor([30]))
    assert model.blank == BLANK_ID == 0 and logits.size(-1) == 12


def sdpa_attention(attn: SelfAttention, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """SelfAttention.forward as it was before quantizers existed: the reference for its float path."""
    b, t, d = x.shape
    q, k, v = map(attn._heads, attn.in_proj(attn.norm(x)).chunk(3, dim=-1))
    mask = valid[:, None, None, :]
    if attn.pos_proj is not None:
        p = attn._heads(attn.pos_proj(relative_positions(t, d)).unsqueeze(0))
        bias = rel_shift(torch.matmul(q + attn.pos_bias_v, p.transpose(-1, -2))) * (1.0 / math.sqrt(q.size(-1)))
        mask = bias.masked_fill(~mask, float("-inf"))
        q = q + attn.pos_bias_u
    y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn.out_proj(y.transpose(1, 2).reshape(b, t, d))


@pytest.mark.parametrize("rel_pos", [False, True], ids=["none", "relative"])
def test_attention_without_quantizers_is_sdpa_and_the_explicit_path_matches_it(rel_pos):
    torch.manual_seed(0)
    attn = SelfAttention(32, 4, dropout=0.1, attn_dropout=0.1, rel_pos=rel_pos).eval()
    x, valid = torch.randn(3, 17, 32), torch.arange(17)[None] < torch.tensor([[17], [12], [5]])
    with torch.no_grad():
        sdpa = attn(x, valid)
        assert torch.equal(sdpa, sdpa_attention(attn, x, valid))
        attn.weights_quant = nn.Identity()  # a quantizer that changes nothing: the explicit path
        torch.testing.assert_close(attn(x, valid), sdpa, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bool_mask", [True, False], ids=["bool", "float"])
def test_explicit_attention_is_scaled_dot_product_attention(bool_mask):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 9, 8).unbind(0)
    mask = torch.rand(2, 4, 9, 9) > 0.3
    mask[..., 0] = True  # every query attends somewhere
    if not bool_mask:
        mask = torch.randn(2, 4, 9, 9).masked_fill(~mask, float("-inf"))
    expected = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(explicit_attention(q, k, v, mask), expected, rtol=1e-5, atol=1e-6)
