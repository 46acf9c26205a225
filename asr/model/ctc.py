"""CTC models: a frontend, an encoder (Conformer blocks, or a bidirectional LSTM), a linear output layer to the
tokenizer's units plus blank.

Output index convention (asr.tokenizer's): output i is unit id i, and id 0 (`model.blank`) is the CTC
blank, so the output layer has Tokenizer.vocab_size units and decoders pass ids to the tokenizer unchanged.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from asr.model.conformer import ConformerBlock
from asr.model.frontend import FRONTENDS
from asr.tokenizer import BLANK_ID

ENCODERS = ("conformer", "blstm")


@dataclass
class ModelConfig:
    """Architecture; the `configs/model/*.yaml` files hold these fields, vocab_size comes from the tokenizer."""

    vocab_size: int  # output units including the blank (asr.tokenizer.Tokenizer.vocab_size)
    n_mels: int = 80
    frontend: str = "vgg"  # "vgg" (the paper) | "conv2d"
    d_model: int = 384
    n_layers: int = 12
    n_heads: int = 4
    d_ff: int = 1536
    kernel_size: int = 31
    dropout: float = 0.1
    attn_dropout: float = 0.1
    pos_enc: str = "none"  # "none" (the paper) | "relative"
    conv_norm: str = "batch"  # "batch" | "layer"
    # "conformer", or "blstm": n_layers bidirectional LSTM layers of d_model / 2 units per direction (the
    # Conformer's n_heads, d_ff, kernel_size, pos_enc, conv_norm and attn_dropout then do not apply)
    encoder: str = "conformer"

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {list(ENCODERS)}, got {self.encoder!r}")
        if self.encoder == "blstm" and self.d_model % 2:
            raise ValueError(f"a blstm encoder needs an even d_model (two directions), got {self.d_model}")
        if self.frontend not in FRONTENDS:
            raise ValueError(f"frontend must be one of {sorted(FRONTENDS)}, got {self.frontend!r}")
        if self.pos_enc not in ("none", "relative"):
            raise ValueError(f"pos_enc must be 'none' or 'relative', got {self.pos_enc!r}")
        if self.conv_norm not in ("batch", "layer"):
            raise ValueError(f"conv_norm must be 'batch' or 'layer', got {self.conv_norm!r}")
        for name in ("vocab_size", "n_mels", "d_model", "n_layers", "n_heads", "d_ff", "kernel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        for name in ("dropout", "attn_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")


class ConformerCTC(nn.Module):
    """The CTC model of a ModelConfig: Conformer blocks (`blocks`) or, with encoder="blstm", a bidirectional LSTM
    (`lstm`: an nn.LSTM, which quantization turns into a memsim.LinearLSTM with quantization-aware gates)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.blank = BLANK_ID
        self.frontend = FRONTENDS[cfg.frontend](cfg.n_mels, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        conformer = cfg.encoder == "conformer"
        self.blocks = nn.ModuleList(
            ConformerBlock(
                cfg.d_model,
                cfg.n_heads,
                cfg.d_ff,
                cfg.kernel_size,
                cfg.dropout,
                cfg.attn_dropout,
                cfg.pos_enc == "relative",
                cfg.conv_norm,
            )
            for _ in range(cfg.n_layers if conformer else 0)
        )
        self.lstm: nn.Module | None = None
        self.lstm_norm: nn.Module | None = None
        if not conformer:
            # A fresh frontend's output is small (std 0.11 on the mini corpus's features of std 1.0), and an LSTM
            # fed it as is stays on CTC's all-blank plateau: 8 epochs of the mini recipe left its dev loss at
            # 123, where the Conformer (whose blocks normalize their inputs) was at 22. Normalized, it leaves
            # the plateau in its 6th epoch (dev loss 115 after 6 epochs, 106 after 7, 39.6 after 20).
            self.lstm_norm = nn.LayerNorm(cfg.d_model)
            dropout = cfg.dropout if cfg.n_layers > 1 else 0.0
            self.lstm = nn.LSTM(
                cfg.d_model, cfg.d_model // 2, cfg.n_layers, batch_first=True, dropout=dropout, bidirectional=True
            )
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.frontend.output_lengths(lengths)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features [B, T, n_mels], lengths [B] -> logits [B, T', vocab_size], output lengths [B]."""
        x = self.dropout(self.frontend(features))
        out_lengths = self.output_lengths(lengths)
        valid = torch.arange(x.size(1), device=x.device)[None, :] < out_lengths[:, None]
        for block in self.blocks:
            x = block(x, valid)
        if self.lstm_norm is not None:
            x = self.lstm_norm(x)
        if isinstance(self.lstm, nn.LSTM):  # packed: the fused kernel stops at each sequence's end
            packed = pack_padded_sequence(x, out_lengths.cpu(), batch_first=True, enforce_sorted=False)
            x = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=x.size(1))[0]
            x = self.dropout(x)
        elif self.lstm is not None:  # a memsim.LinearLSTM: lengths on the device
            x = self.dropout(self.lstm(x, lengths=out_lengths)[0])
        return self.head(x), out_lengths


def ctc_loss(
    logits: torch.Tensor, lengths: torch.Tensor, tokens: torch.Tensor, token_lengths: torch.Tensor, blank: int
) -> torch.Tensor:
    """CTC loss summed over utterances and divided by the batch size (as ESPnet), computed in float32.

    Utterances too short for their labels give zero loss and gradient instead of inf (zero_infinity).
    """
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # [T, B, V]
    loss = F.ctc_loss(log_probs, tokens, lengths, token_lengths, blank=blank, reduction="sum", zero_infinity=True)
    return loss / logits.size(0)


def infeasible(lengths: torch.Tensor, tokens: torch.Tensor, token_lengths: torch.Tensor) -> torch.Tensor:
    """Per utterance, True where CTC cannot align the labels to the frames: it needs one frame per label and
    one more (a blank) between two equal labels in a row. The loss drops these utterances (zero_infinity)."""
    positions = torch.arange(1, tokens.size(1), device=tokens.device)
    repeats = ((tokens[:, 1:] == tokens[:, :-1]) & (positions < token_lengths[:, None])).sum(1)
    return lengths < token_lengths + repeats


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
