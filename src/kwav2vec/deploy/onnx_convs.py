"""The conv feature encoder as matrix products on time-major activations, for the int8 ONNX graph.

onnxruntime has no fast int8 convolution for dynamic quantization (`ConvInteger` ran the BASE graph
in 1.8 s against 0.66 s with float32 convolutions, 2026-12-03), but its int8 `MatMul` is fast, and
the feature encoder's convolutions (about half of the int8 graph's time while they stayed float32)
are matrix products once the input is cut into stride-sized blocks, with no im2col copy:

    y[t] = sum_{j < k} W_j x[s t + j]                      (kernel k, stride s, x time-major (T, C))
         = [W_0 .. W_{s-1}] . x[s t : s t + s]           (block t: a reshape of x, no copy)
           + sum_{s <= j < k} W_j x[s t + j]              (the taps past the block: strided slices of x)

For wav2vec 2.0's layers: (2, 2) is one product; (10, 5) two, its last five taps being the next
block (again a reshape); (3, 2) two, its third tap one strided slice (x[2::2], half the input, copied)
and a half-size product. Measured on one (512 -> 512, k 3, s 2) layer over 4 x 12,801 frames, 2 threads
(2026-12-03): `Conv` float32 0.161 s; the two products 0.198 s in float32 and 0.067 s int8 (with
the third tap folded into one zero-padded product instead: 0.093 s int8). So the float32 export
keeps `Conv` and only the int8 export is built from this module.

The first layer's product (its input is the waveform, 1 channel: 10 multiply-adds per output) stays
float32 in the int8 graph (see `onnx_export.quantize_int8`): int8 would round the audio itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kwav2vec.models.feature_encoder import ConvFeatureEncoder, MaskedFp32GroupNorm

IM2COL_MAX_TAPS = 64  # C_in x k up to this: one product over the concatenated taps (the first layer)


class BlockConv(nn.Module):
    """One `Conv1d` (no padding, dilation 1, groups 1) as products over stride-sized blocks.

    x (B, T, C_in) -> (B, T_out, C_out), T_out = (T - k) // s + 1 (>= 1).

    Where C_in x k is small (the first layer: 1 x 10) the block and the taps past it are concatenated
    (a copy of about k / s times the input, small there) and multiplied once: two products would each
    write the large (B, T_out, C_out) output and an Add read both (BASE, 4 x 4 s: 0.056 s for
    the first layer as two products and their sum, 0.017 s as one).
    """

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        if conv.padding != (0,) or conv.dilation != (1,) or conv.groups != 1:
            raise ValueError("BlockConv takes the feature encoder's convolutions: no padding, dilation or groups")
        self.kernel, self.stride = k, s = conv.kernel_size[0], conv.stride[0]
        w = conv.weight.detach()  # (C_out, C_in, k)
        # the block takes taps [0, s) (none when k < s: T_out blocks of s frames need not fit in T
        # frames then), the rest [s, k); rows ordered (tap, input channel), as time-major frames flatten
        self.in_block = s if k >= s else 0
        self.concat = conv.in_channels * k <= IM2COL_MAX_TAPS
        groups = [(0, k)] if self.concat else [(0, self.in_block), (self.in_block, k)]
        weights = [w[:, :, lo:hi].permute(2, 1, 0).reshape(-1, w.shape[0]).contiguous() for lo, hi in groups]
        self.weights = nn.ParameterList(nn.Parameter(x, requires_grad=False) for x in weights if x.numel())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def _inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[block (B, T_out, s C_in)] (when k >= s) + [taps past it (B, T_out, (k - s) C_in)] (when k > s)."""
        B, T, C = x.shape
        k, s = self.kernel, self.stride
        t_out = (T - k) // s + 1
        parts = [x[:, : s * t_out].reshape(B, t_out, s * C)] if self.in_block else []
        if k == 2 * s:  # the taps past the block are the next block: s (t_out + 1) <= T when k = 2 s
            parts.append(x[:, s : s * (t_out + 1)].reshape(B, t_out, s * C))
        elif k > self.in_block:  # tap j of output t is frame s t + j: a strided slice per tap
            taps = [x[:, j : j + s * (t_out - 1) + 1 : s] for j in range(self.in_block, k)]
            parts.append(taps[0] if len(taps) == 1 else torch.cat(taps, dim=-1))
        return parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = self._inputs(x)
        if self.concat:
            y = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)) @ self.weights[0]
        else:
            y = parts[0] @ self.weights[0]
            for part, w in zip(parts[1:], self.weights[1:], strict=True):
                y = y + part @ w
        return y if self.bias is None else y + self.bias


def masked_group_norm_time_major(norm: MaskedFp32GroupNorm, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`MaskedFp32GroupNorm` (statistics over each utterance's own frames) on x (B, T, C)."""
    valid = (torch.arange(x.shape[1], device=x.device) < lengths[:, None]).to(x.dtype).unsqueeze(1)  # (B, 1, T)
    count = lengths.to(x.dtype).clamp(min=1).view(-1, 1, 1)
    mean = torch.bmm(valid, x) / count  # (B, 1, C)
    centred = x - mean
    scale = torch.rsqrt(torch.bmm(valid, centred * centred) / count + norm.eps)  # biased, as group_norm
    if norm.affine:
        return centred * (scale * norm.weight) + norm.bias
    return centred * scale


class BlockConvFeatureEncoder(nn.Module):
    """A `ConvFeatureEncoder`'s eval-mode forward with every convolution a `BlockConv`, time-major
    throughout: waveforms (B, S) and lengths (B,) -> features (B, T, C) and frame lengths (B,),
    equal to `ConvFeatureEncoder` up to float rounding (tested)."""

    def __init__(self, encoder: ConvFeatureEncoder) -> None:
        super().__init__()
        self.layer_specs = list(encoder.layer_specs)
        self.convs = nn.ModuleList(BlockConv(block[0]) for block in encoder.conv_layers)
        # a block is (conv, dropout, norm, GELU) or (conv, dropout, GELU); the norm is a
        # MaskedFp32GroupNorm or Sequential(TransposeLast, Fp32LayerNorm, TransposeLast)
        norms = [block[2] if len(block) == 4 else nn.Identity() for block in encoder.conv_layers]
        self.norms = nn.ModuleList(n[1] if isinstance(n, nn.Sequential) else n for n in norms)
        self.receptive_field = encoder.receptive_field

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.unsqueeze(-1)  # (B, S, 1)
        for conv, norm, (_, kernel, stride) in zip(self.convs, self.norms, self.layer_specs, strict=True):
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
            x = conv(x)  # (B, T, C)
            if isinstance(norm, MaskedFp32GroupNorm):
                x = masked_group_norm_time_major(norm, x, lengths)
            else:
                x = norm(x)  # Fp32LayerNorm over channels, or identity
            x = F.gelu(x)
        return x, lengths
