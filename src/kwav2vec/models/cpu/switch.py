"""The one switch between the CPU speed kernels and the model's plain PyTorch path.

Every place where the model may take a kernel of this package asks `use_cpu_kernels(x)`; the two
shortcuts taken on the data (the group norm without a mask when no utterance is padded, no attention
mask when no frame is) ask `plain()`. `plain_pytorch()` turns all of them off: the model then runs
the operators of fairseq's layout (`conv1d` on (B, C, T), `F.dropout`, SDPA, masks always applied)
with no branch on tensor values, which is what an exporter (`torch.onnx.export`, `torch.export`)
can trace into one graph that is valid for every batch and length.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_plain = False  # set only by plain_pytorch()


def use_cpu_kernels(x: torch.Tensor) -> bool:
    """Whether the CPU speed kernels apply to a computation on `x`: on CPU, outside `plain_pytorch()`."""
    return x.device.type == "cpu" and not _plain


def plain() -> bool:
    """True inside `plain_pytorch()`: no kernel and no shortcut that branches on tensor values."""
    return _plain


@contextmanager
def plain_pytorch() -> Iterator[None]:
    """Runs the model on its plain PyTorch path inside the block (not thread-safe: a global flag)."""
    global _plain
    before = _plain
    _plain = True
    try:
        yield
    finally:
        _plain = before
