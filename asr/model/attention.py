"""Multi-head self-attention with its projections as nn.Linear layers, optionally with relative positions.

The query/key/value projection is one fused `in_proj` (d -> 3d) and the output projection `out_proj`
(d -> d): both are weight-times-activation products that a crossbar can hold. The score and value
products (activation times activation) stay digital and go through `scaled_dot_product_attention`, or,
when asr.quant has made them low-precision, through `explicit_attention`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def relative_positions(length: int, dim: int, device=None) -> torch.Tensor:
    """Sinusoidal embeddings [2T-1, dim] of the relative positions T-1, T-2, ..., -(T-1)."""
    pos = torch.arange(length - 1, -length, -1, device=device, dtype=torch.float32)
    inv_freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angles = pos[:, None] * inv_freq[None, :]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)


def rel_shift(scores: torch.Tensor) -> torch.Tensor:
    """[..., T, 2T-1] scores against relative positions (T-1 .. -(T-1)) -> [..., T, T] by key.

    Query i and key j have relative position i - j, found at column T-1-i+j: a strided view, no copy.
    """
    t = scores.size(-2)
    scores = scores.contiguous()
    *lead, _, width = scores.shape
    stride = list(scores.stride())
    return scores.as_strided((*lead, t, t), (*stride[:-2], width - 1, 1), scores.storage_offset() + t - 1)


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor,
    dropout_p: float = 0.0,
    weights_quant: nn.Module | None = None,
) -> torch.Tensor:
    """scaled_dot_product_attention written out, so the attention weights can be quantized: `attn_mask` is a
    bool mask (True: attend) or a float bias added to the scores, `weights_quant` acts on the softmax output.

    The weights are quantized before the dropout, so the quantizer sees the range that evaluation sees.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.size(-1))
    if attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    else:
        scores = scores + attn_mask
    weights = scores.softmax(dim=-1)
    if weights_quant is not None:
        weights = weights_quant(weights)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return torch.matmul(weights, v)


class SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention; `rel_pos=True` adds Transformer-XL relative positions (ESPnet's
    RelPositionMultiHeadedAttention: a bias-free `pos_proj` and the learned biases u and v).

    `q_quant`, `k_quant`, `v_quant` and `weights_quant` are None (float attention) unless asr.quant.quantize
    sets them: the first three act on the projected queries, keys and values (before the position biases are
    added), the last on the attention weights, which needs `explicit_attention` instead of SDPA.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float, attn_dropout: float, rel_pos: bool):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.attn_dropout = attn_dropout
        self.norm = nn.LayerNorm(d_model)
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        if rel_pos:
            d_head = d_model // n_heads
            self.pos_proj: nn.Linear | None = nn.Linear(d_model, d_model, bias=False)
            self.pos_bias_u = nn.Parameter(torch.zeros(n_heads, 1, d_head))
            self.pos_bias_v = nn.Parameter(torch.zeros(n_heads, 1, d_head))
            nn.init.xavier_uniform_(self.pos_bias_u)
            nn.init.xavier_uniform_(self.pos_bias_v)
        else:
            self.pos_proj = None
        self.q_quant: nn.Module | None = None
        self.k_quant: nn.Module | None = None
        self.v_quant: nn.Module | None = None
        self.weights_quant: nn.Module | None = None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, -1).transpose(1, 2)  # [B, H, T, d_head]

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x [B, T, d]; valid [B, T] bool, True on real frames."""
        b, t, d = x.shape
        projected = map(self._heads, self.in_proj(self.norm(x)).chunk(3, dim=-1))
        quants = (self.q_quant, self.k_quant, self.v_quant)
        q, k, v = (h if quant is None else quant(h) for h, quant in zip(projected, quants, strict=True))
        mask = valid[:, None, None, :]
        if self.pos_proj is not None:
            p = self._heads(self.pos_proj(relative_positions(t, d, x.device).to(x.dtype)).unsqueeze(0))
            scale = 1.0 / math.sqrt(q.size(-1))
            bias = rel_shift(torch.matmul(q + self.pos_bias_v, p.transpose(-1, -2))) * scale
            mask = bias.masked_fill(~mask, float("-inf"))
            q = q + self.pos_bias_u
        dropout = self.attn_dropout if self.training else 0.0
        if self.weights_quant is None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        else:
            y = explicit_attention(q, k, v, mask, dropout, self.weights_quant)
        return self.dropout(self.out_proj(y.transpose(1, 2).reshape(b, t, d)))
