"""The feature encoder's kernels: convolution as im2col + matmul, and one utterance at a time.

im2col: on time-major (B, T, C) activations a convolution (no padding, no dilation, groups 1) is a
concatenation of slices of x times the reshaped weight. Against oneDNN's conv1d on (B, C, T) this is
faster on CPU forward and backward, and the layer norms that follow then act on contiguous channels
with no transposes. Same weights (`conv.weight` reshaped), same results up to float rounding.

Per utterance: without autograd (a frozen encoder, inference) the first layers' activations (512
channels at 3.2 kHz for BASE) of one utterance come from memory the allocator reuses, where a
batch-sized tensor is freshly mapped pages every batch. Every utterance is normalised over its own
frames either way, so the features are those of the batched pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Encode = Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]]


def conv_as_matmul(x: torch.Tensor, conv: nn.Conv1d, channels_first: bool = False) -> torch.Tensor:
    """`conv` (no padding, no dilation, groups 1) applied as im2col + matmul.

    x: (B, T, C_in) time-major, or (B, C_in, T) with `channels_first`. Returns (B, T_out, C_out).
    """
    if channels_first:
        x = x.transpose(1, 2).contiguous()  # (B, T, C_in)
    cols = _columns(x, conv.kernel_size[0], conv.stride[0])  # (B, T_out, k * C_in), tap-major
    C_out, C_in, kernel = conv.weight.shape
    weight = conv.weight.permute(0, 2, 1).reshape(C_out, kernel * C_in)  # the columns' (tap, channel) order
    return F.linear(cols, weight, conv.bias)


def _columns(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """im2col of time-major x (B, T, C) -> (B, T_out, kernel * C), column j * C + c = x[:, t * stride + j, c].

    Built from slices rather than `unfold`: `stride` consecutive taps at once are a plain reshape of
    x, and the backward pass of slices and a concatenation is a copy, where `unfold`'s backward
    scatter-adds every column (slower on CPU).
    """
    B, T, C = x.shape
    T_out = (T - kernel) // stride + 1
    pieces, tap = [], 0
    while tap < kernel:
        if tap + stride <= kernel and tap + stride * T_out <= T:  # taps tap..tap+stride-1: a view of x
            pieces.append(x[:, tap : tap + stride * T_out].reshape(B, T_out, stride * C))
            tap += stride
        else:  # one tap: every stride-th frame
            pieces.append(x[:, tap : tap + stride * (T_out - 1) + 1 : stride])
            tap += 1
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)


def per_utterance(encode: Encode, x: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`encode(x, lengths)` one utterance of the batch at a time, the results concatenated.

    x: (B, S) waveforms; lengths: (B,) samples or None. Returns (B, T, C) features and (B,) frames.
    """
    outputs = [encode(x[i : i + 1], None if lengths is None else lengths[i : i + 1]) for i in range(x.shape[0])]
    features = torch.cat([features for features, _ in outputs])
    return features, None if lengths is None else torch.cat([frames for _, frames in outputs])
