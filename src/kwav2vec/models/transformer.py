"""Transformer encoder of wav2vec 2.0 with its convolutional relative positional embedding.

Attribute names follow fairseq (`pos_conv.0`, `layers.{i}.self_attn.{q,k,v,out}_proj`,
`self_attn_layer_norm`, `fc1`, `fc2`, `final_layer_norm`, `layer_norm`) so checkpoints map 1:1.
Both layer forms: post-LN (BASE, `layer_norm_first=False`) and pre-LN ("stable layer norm", LARGE).
On CPU the dropouts, the attention with dropout and the positional convolution take the kernels of
`kwav2vec.models.cpu`; their plain PyTorch forms are `F.dropout`, SDPA and `nn.Conv1d`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from kwav2vec.models.cpu import Dropout, FFTConv1d, attention_with_dropout, dropout, plain, use_cpu_kernels


def init_bert_params(module: nn.Module) -> None:
    """fairseq's `init_bert_params`: N(0, 0.02) linear weights, zero biases (applied to the encoder)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class MultiheadSelfAttention(nn.Module):
    """Self-attention through `scaled_dot_product_attention`, with fairseq's projection names."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, T, D); attn_mask: (B, 1, 1, T) bool, True = may attend (i.e. not padding), or additive
        B, T, D = x.shape
        # three matmuls: fusing them needs a weight concatenation per step, which measured slower on CPU
        q, k, v = (proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))  # each (B, H, T, hd)
        p = self.dropout if self.training else 0.0
        if p > 0.0 and use_cpu_kernels(x):
            # SDPA's CPU path draws its dropout mask one element at a time (kwav2vec.models.cpu.attention)
            y = attention_with_dropout(q, k, v, attn_mask, p)  # (B, H, T, hd)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(B, T, D)
        return self.out_proj(y)


class TransformerEncoderLayer(nn.Module):
    """One wav2vec 2.0 transformer block (fairseq `TransformerSentenceEncoderLayer`).

    Args:
        embed_dim: model width D.
        ffn_dim: hidden width of the feed-forward block.
        num_heads: attention heads.
        dropout: residual dropout (after attention and after fc2).
        attention_dropout: dropout on attention weights.
        activation_dropout: dropout after the FFN activation.
        layer_norm_first: pre-LN ("stable layer norm") when True, post-LN (BASE) when False.
    """

    def __init__(
        self,
        embed_dim: int,
        ffn_dim: int,
        num_heads: int,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.0,
        layer_norm_first: bool = False,
    ):
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.self_attn = MultiheadSelfAttention(embed_dim, num_heads, attention_dropout)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(activation_dropout)
        self.dropout3 = Dropout(dropout)
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.final_layer_norm = nn.LayerNorm(embed_dim)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout3(self.fc2(self.dropout2(F.gelu(self.fc1(x)))))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, D); padding_mask: (B, T) bool, True = padding. Returns (B, T, D)."""
        if x.dim() != 3:
            raise ValueError(f"expected x of shape (B, T, D), got {tuple(x.shape)}")
        if padding_mask is not None and padding_mask.shape != x.shape[:2]:
            raise ValueError(f"padding_mask shape {tuple(padding_mask.shape)} does not match x (B, T) = {tuple(x.shape[:2])}")
        return self._forward(x, attention_mask(padding_mask, x.dtype))

    def _forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.dropout1(self.self_attn(self.self_attn_layer_norm(x), attn_mask))
            return x + self._ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x + self.dropout1(self.self_attn(x, attn_mask)))
        return self.final_layer_norm(x + self._ffn(x))


def attention_mask(padding_mask: torch.Tensor | None, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """(B, T) True=pad -> (B, 1, 1, T) True=attend for SDPA; None when nothing is padded (faster kernel).

    Under `plain_pytorch()` (where the graph must not depend on the batch's values: always a mask)
    the mask is additive instead, 0 / -inf in `dtype`, the same softmax: the ONNX exporter writes a
    boolean mask's attention with an IsNaN + Where guard after each softmax (for rows with no key
    left): 0.068 s in onnxruntime's profile of the int8 BASE graph, which went from 0.54-0.56 to
    0.46-0.48 s without it (4 x 4 s, 2 threads, 2026-12-03). No row here is without a key (every
    utterance has a frame)."""
    if padding_mask is None:
        return None
    if plain():
        return torch.zeros(padding_mask.shape, dtype=dtype, device=padding_mask.device).masked_fill(
            padding_mask, float("-inf"))[:, None, None, :]
    if not bool(padding_mask.any()):
        return None
    return ~padding_mask[:, None, None, :]


class SamePad(nn.Module):
    """Drops the extra frame an even kernel with padding k//2 produces, keeping T frames."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T + remove)
        return x[:, :, : -self.remove] if self.remove else x


def make_conv_pos(embed_dim: int, kernel: int, groups: int) -> nn.Sequential:
    """fairseq `make_conv_pos`: weight-normalised grouped conv (norm over dim 2), SamePad, GELU."""
    conv = FFTConv1d(embed_dim, embed_dim, kernel_size=kernel, padding=kernel // 2, groups=groups)
    nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4.0 / (kernel * embed_dim)))
    nn.init.zeros_(conv.bias)
    conv = weight_norm(conv, name="weight", dim=2)
    return nn.Sequential(conv, SamePad(kernel), nn.GELU())


class TransformerEncoder(nn.Module):
    """Positional conv + transformer layers (+ final LN placement by layer form).

    Args mirror the Wav2Vec2Config fields of the same names.
    """

    def __init__(
        self,
        embed_dim: int,
        ffn_dim: int,
        num_layers: int,
        num_heads: int,
        conv_pos: int = 128,
        conv_pos_groups: int = 16,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.0,
        layer_norm_first: bool = False,
        layerdrop: float = 0.0,
    ):
        super().__init__()
        self.dropout = dropout
        self.layerdrop = layerdrop
        self.layer_norm_first = layer_norm_first
        self.pos_conv = make_conv_pos(embed_dim, conv_pos, conv_pos_groups)
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(
                embed_dim, ffn_dim, num_heads, dropout, attention_dropout, activation_dropout, layer_norm_first
            )
            for _ in range(num_layers)
        )
        self.layer_norm = nn.LayerNorm(embed_dim)
        self.layers.apply(init_bert_params)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, D); padding_mask: (B, T) bool True = padding. Returns (B, T, D)."""
        if padding_mask is not None:
            # zero padded frames so the positional conv sees what it would for the utterance alone
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = dropout(x, self.dropout, self.training)
        attn_mask = attention_mask(padding_mask, x.dtype)
        # LayerDrop: one draw per layer, made up front to avoid a host sync per layer
        keep = torch.rand(len(self.layers)) >= self.layerdrop if self.training and self.layerdrop > 0 else None
        for i, layer in enumerate(self.layers):
            if keep is None or keep[i]:
                x = layer._forward(x, attn_mask)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x
