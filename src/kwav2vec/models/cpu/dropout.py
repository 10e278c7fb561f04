"""Dropout whose CPU masks take one 64-bit random draw per four elements.

On CPU, `F.dropout` draws one Bernoulli sample per element through a serial generator loop, which
costs far more than the multiplication it feeds. Here each 64-bit draw of the same (seeded,
reproducible) default generator yields four 16-bit lanes, each compared with a threshold: keep
probability quantized to 1/65,536 (|error| <= 7.6e-6) and the kept values scaled by the exact
inverse of that probability, so the output stays unbiased. On other devices, and under
`plain_pytorch()`, `F.dropout` is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kwav2vec.models.cpu.switch import use_cpu_kernels

_LANES = 65536  # values of one 16-bit lane


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Zeroes each element of x with probability p and scales the rest by 1 / (1 - p); same shape."""
    if not training or p == 0.0:
        return x
    if not use_cpu_kernels(x) or p >= 1.0 or not x.is_floating_point():
        return F.dropout(x, p, training=True)
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    kept_lanes = round((1.0 - p) * _LANES)
    n = x.numel()
    # from = int64 min, to = None: the full 64-bit range, so all four int16 lanes are uniform
    lanes = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None).view(torch.int16)[:n]
    # keep where lane < kept_lanes - 32768 (probability kept_lanes / 65536 for a uniform signed lane).
    # In float arithmetic, because bool comparisons and conversions are not vectorized on CPU: the
    # lanes are integers, so lane - threshold is <= -1 where kept and >= 0 where dropped, and
    # clamping it to [-1, 0] gives exactly -1 or 0.
    scale = lanes.to(x.dtype).view(x.shape).sub_(kept_lanes - _LANES // 2).clamp_(-1.0, 0.0)
    return x * scale.mul_(-_LANES / kept_lanes)


class Dropout(nn.Module):
    """Drop-in for `nn.Dropout` (no parameters, same state dict) using the fast CPU masks above."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
