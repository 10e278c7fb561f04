"""Convolutional feature encoder: raw 16 kHz waveform -> one feature vector every 20 ms.

Module layout mirrors fairseq's `ConvFeatureExtractionModel` so state-dict keys map 1:1:
`conv_layers.{i}.0` is the convolution, `.1` a (zero) dropout, `.2` the norm when there is one
(GroupNorm on layer 0 in "default" mode, `Sequential(TransposeLast, LayerNorm, TransposeLast)` in
"layer_norm" mode, hence keys `conv_layers.{i}.2.1.weight`), then GELU.

One deliberate difference from fairseq: the "default"-mode group norm (one group per channel, i.e.
statistics over *time*) only looks at each utterance's own frames. fairseq and Hugging Face include the
zero padding of a batch in those statistics, so a padded utterance gets different features than the
same utterance alone; for unpadded input the two are identical.

Layout: outside `plain_pytorch()` the convolutions run as im2col + matmul on time-major (B, T, C)
activations (`kwav2vec.models.cpu.conv`), and without autograd on CPU one utterance at a time;
`_forward_plain` is fairseq's conv1d on (B, C, T). Same weights, same results up to float rounding.
The output is (B, T, C) either way, not fairseq's (B, C, T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kwav2vec.models.config import FrameGeometry
from kwav2vec.models.cpu import conv_as_matmul, per_utterance, plain, use_cpu_kernels


class TransposeLast(nn.Module):
    """(B, C, T) <-> (B, T, C); a module so that fairseq's `Sequential` indices (and keys) line up."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-2, -1)


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (as fairseq's), cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


class MaskedFp32GroupNorm(nn.GroupNorm):
    """fairseq's Fp32GroupNorm(dim, dim): per-channel normalisation over time, in float32.

    With `lengths`, each utterance's statistics cover its first `lengths[b]` frames only, so padding
    does not change the features of the real frames.
    """

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:  # x: (B, C, T)
        if self.num_groups != self.num_channels:
            raise ValueError("MaskedFp32GroupNorm supports one group per channel only (fairseq's setting)")
        xf = x.float()
        # the unmasked fused kernel when nothing is padded (a branch on values: not under plain_pytorch())
        if lengths is None or (not plain() and bool((lengths == x.shape[-1]).all())):
            w = self.weight.float() if self.weight is not None else None
            b = self.bias.float() if self.bias is not None else None
            return F.group_norm(xf, self.num_groups, w, b, self.eps).type_as(x)
        # Six passes over the (B, C, T) activations (the encoder's largest, 512 x 3.2 kHz at BASE)
        # instead of ten: the masked sums as matrix products with the (B, T, 1) mask, and the
        # normalisation and affine map folded into one scale and shift per (utterance, channel).
        # The variance stays two-pass (of x - mean), as exact as before.
        valid = (torch.arange(x.shape[-1], device=x.device) < lengths[:, None]).to(xf.dtype).unsqueeze(-1)  # (B, T, 1)
        count = lengths.to(xf.dtype).clamp(min=1).view(-1, 1, 1)
        mean = torch.bmm(xf, valid) / count  # (B, C, 1)
        centred = xf - mean
        var = torch.bmm(centred * centred, valid) / count  # biased, as group_norm
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight.float().view(1, -1, 1)
            return (centred * scale + self.bias.float().view(1, -1, 1)).type_as(x)
        return (centred * scale).type_as(x)


def _block(n_in: int, n_out: int, kernel: int, stride: int, norm: str, conv_bias: bool) -> nn.Sequential:
    conv = nn.Conv1d(n_in, n_out, kernel, stride=stride, bias=conv_bias)
    nn.init.kaiming_normal_(conv.weight)
    if norm == "layer":
        return nn.Sequential(
            conv, nn.Dropout(0.0), nn.Sequential(TransposeLast(), Fp32LayerNorm(n_out), TransposeLast()), nn.GELU()
        )
    if norm == "group":
        return nn.Sequential(conv, nn.Dropout(0.0), MaskedFp32GroupNorm(n_out, n_out, affine=True), nn.GELU())
    return nn.Sequential(conv, nn.Dropout(0.0), nn.GELU())


def conv_output_lengths(lengths: torch.Tensor, conv_layers: list[tuple[int, int, int]]) -> torch.Tensor:
    """floor((L - kernel) / stride) + 1 through every layer (no padding); may be <= 0 for short input."""
    out = lengths.long()
    for _, kernel, stride in conv_layers:
        out = torch.div(out - kernel, stride, rounding_mode="floor") + 1
    return out


class ConvFeatureEncoder(nn.Module):
    """Waveforms (B, S) -> features (B, T, C) and their frame lengths (B,).

    Args:
        conv_layers: [(channels, kernel, stride), ...] (fairseq `conv_feature_layers`).
        mode: "default" (group norm on the first layer only) or "layer_norm" (layer norm in every block).
        conv_bias: bias in the convolutions.
    """

    def __init__(self, conv_layers: list[tuple[int, int, int]], mode: str = "default", conv_bias: bool = False):
        super().__init__()
        if mode not in ("default", "layer_norm"):
            raise ValueError(f"mode must be 'default' or 'layer_norm', got {mode!r}")
        self.layer_specs = [tuple(layer) for layer in conv_layers]
        self.mode = mode
        self.conv_layers = nn.ModuleList()
        in_dim = 1
        for i, (dim, kernel, stride) in enumerate(self.layer_specs):
            norm = "layer" if mode == "layer_norm" else ("group" if i == 0 else "none")
            self.conv_layers.append(_block(in_dim, dim, kernel, stride, norm, conv_bias))
            in_dim = dim

    @property
    def receptive_field(self) -> int:
        """Samples needed for one output frame (400 for BASE: 25 ms)."""
        return FrameGeometry.of(self.layer_specs).receptive_field

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return conv_output_lengths(lengths, self.layer_specs)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, S) waveforms; lengths: (B,) samples. Returns features (B, T, C) and frame lengths (B,)."""
        if plain():
            return self._forward_plain(x, lengths)
        if use_cpu_kernels(x) and not torch.is_grad_enabled() and x.shape[0] > 1:
            # frozen or inference: one utterance at a time reuses memory (kwav2vec.models.cpu.conv)
            return per_utterance(self._forward, x, lengths)
        return self._forward(x, lengths)

    def _forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        channels_first = False
        for i, (block, (_, kernel, stride)) in enumerate(zip(self.conv_layers, self.layer_specs, strict=True)):
            if lengths is not None:
                lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
            conv, norm, act = block[0], block[2], block[-1]
            if isinstance(norm, MaskedFp32GroupNorm):
                # per-channel statistics over time: the fused group-norm kernel wants (B, C, T)
                x = conv(x.unsqueeze(1)) if i == 0 else conv(x.transpose(1, 2))  # (B, C, T)
                x = act(norm(x, lengths))
                channels_first = True
                continue
            x = conv_as_matmul(x.unsqueeze(-1) if i == 0 else x, conv, channels_first)  # (B, T, C)
            channels_first = False
            if isinstance(norm, nn.Sequential):  # (TransposeLast, Fp32LayerNorm, TransposeLast): keys only
                x = norm[1](x)  # time-major already: layer norm over the contiguous channels
            x = act(x)
        if channels_first:
            x = x.transpose(1, 2)
        return x, lengths  # (B, T, C), (B,)

    def _forward_plain(self, x: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Under `plain_pytorch()`: fairseq's own layout, `conv1d` on (B, C, T) and each block's norm
        module as it stands (no im2col, no per-utterance loop); the same weights and results as `_forward`."""
        x = x.unsqueeze(1)  # (B, 1, S)
        for block, (_, kernel, stride) in zip(self.conv_layers, self.layer_specs, strict=True):
            if lengths is not None:
                lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
            conv, norm, act = block[0], block[2], block[-1]
            x = conv(x)  # (B, C, T)
            if isinstance(norm, MaskedFp32GroupNorm):
                x = norm(x, lengths)
            elif isinstance(norm, nn.Sequential):  # TransposeLast, Fp32LayerNorm, TransposeLast
                x = norm(x)
            x = act(x)
        return x.transpose(1, 2), lengths  # (B, T, C), (B,)
