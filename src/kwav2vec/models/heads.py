"""CTC output heads on the backbone's contextual frames (K-wav2vec's hierarchical fine-tuning).

- `GraphemeHead`: dropout + linear over the jamo vocabulary (fairseq `w2v_encoder.final_dropout` +
  `w2v_encoder.proj`).
- `SyllableHead`: N more transformer layers of the backbone's width on the backbone output, then
  dropout + linear over the syllable vocabulary (K-wav2vec `w2v_encoder.additional_layer.{i}` +
  `w2v_encoder.proj2`). The extra layers give the syllable head context to assemble syllables from
  the jamo-like evidence the shared backbone is pushed towards by the grapheme loss.

Both return raw logits (B, T, V); log-softmax (in float32) is the caller's business so that CTC and
decoding share one place where the precision is decided.
"""

from __future__ import annotations

import torch
from torch import nn

from kwav2vec.models.cpu import Dropout
from kwav2vec.models.transformer import TransformerEncoderLayer, attention_mask, init_bert_params


def _output_projection(embed_dim: int, vocab_size: int) -> nn.Linear:
    # fairseq wav2vec2_asr `Linear`: xavier-uniform weight, zero bias
    proj = nn.Linear(embed_dim, vocab_size)
    nn.init.xavier_uniform_(proj.weight)
    nn.init.zeros_(proj.bias)
    return proj


def _check_frames(x: torch.Tensor, embed_dim: int) -> None:
    if x.dim() != 3 or x.shape[-1] != embed_dim:
        raise ValueError(f"expected backbone frames (B, T, {embed_dim}), got shape {tuple(x.shape)}")


class GraphemeHead(nn.Module):
    """Dropout + linear: backbone frames (B, T, D) -> grapheme logits (B, T, V).

    Args:
        embed_dim: backbone width D.
        vocab_size: grapheme vocabulary size V (blank included).
        dropout: dropout on the frames before the projection (fairseq `final_dropout`).
    """

    def __init__(self, embed_dim: int, vocab_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"a CTC head needs at least 2 outputs (blank + 1 symbol), got vocab_size={vocab_size}")
        self.embed_dim = embed_dim
        self.dropout = Dropout(dropout)
        self.proj = _output_projection(embed_dim, vocab_size)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, D); padding_mask is accepted for symmetry with SyllableHead (frame-wise head)."""
        _check_frames(x, self.embed_dim)
        return self.proj(self.dropout(x))  # (B, T, V)


class SyllableHead(nn.Module):
    """N transformer layers + dropout + linear: backbone frames (B, T, D) -> syllable logits (B, T, V).

    Args:
        embed_dim: backbone width D (the layers keep it).
        vocab_size: syllable vocabulary size V (blank included).
        num_layers: transformer layers (K-wav2vec: 2).
        ffn_dim, num_heads, dropout, attention_dropout, activation_dropout, layer_norm_first: as the
            backbone's `TransformerEncoderLayer` (pass the backbone config's values).
        final_dropout: dropout before the projection (fairseq `final_dropout`).

    With pre-LN layers (`layer_norm_first`) a final LayerNorm follows the stack, as at the end of the
    backbone's encoder: a pre-LN stack's output is the un-normalised residual stream.
    """

    def __init__(
        self,
        embed_dim: int,
        vocab_size: int,
        num_layers: int = 2,
        ffn_dim: int = 3072,
        num_heads: int = 12,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.0,
        layer_norm_first: bool = False,
        final_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        if vocab_size < 2:
            raise ValueError(f"a CTC head needs at least 2 outputs (blank + 1 symbol), got vocab_size={vocab_size}")
        self.embed_dim = embed_dim
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(
                embed_dim, ffn_dim, num_heads, dropout, attention_dropout, activation_dropout, layer_norm_first
            )
            for _ in range(num_layers)
        )
        self.layers.apply(init_bert_params)  # as the backbone's encoder layers
        self.layer_norm = nn.LayerNorm(embed_dim) if layer_norm_first and num_layers > 0 else None
        self.dropout = Dropout(final_dropout)
        self.proj = _output_projection(embed_dim, vocab_size)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, D); padding_mask: (B, T) bool, True = padding frame. Returns (B, T, V)."""
        _check_frames(x, self.embed_dim)
        if padding_mask is not None and padding_mask.shape != x.shape[:2]:
            raise ValueError(
                f"padding_mask shape {tuple(padding_mask.shape)} does not match frames (B, T) = {tuple(x.shape[:2])}"
            )
        attn_mask = attention_mask(padding_mask, x.dtype)  # computed once for all layers
        for layer in self.layers:
            x = layer._forward(x, attn_mask)  # (B, T, D)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.proj(self.dropout(x))  # (B, T, V)
