"""Attention with dropout in blocks of query rows: SDPA's math with this package's dropout masks.

SDPA's CPU path draws its attention-dropout mask one element at a time; here the (B, H, T, T)
probabilities are computed in blocks of query rows small enough to stay in cache through softmax
and dropout and to come from the allocator's reused memory rather than freshly mapped pages.
"""

from __future__ import annotations

import torch

from kwav2vec.models.cpu.dropout import dropout

# Query rows per block: blocks of (B, H, rows, T) scores up to this many elements (16 MB of float32);
# allocations of 32 MB and more are mmapped anew each time.
ATTENTION_BLOCK_ELEMENTS = 2**22


def attention_with_dropout(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, p: float
) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) with dropout p, times v, in blocks of query rows.

    q, k, v: (B, H, T, hd); attn_mask: (B, 1, 1, T) bool, True = may attend, or None. Returns (B, H, T, hd).
    """
    B, H, T, head_dim = q.shape
    rows = max(1, ATTENTION_BLOCK_ELEMENTS // (B * H * T))
    q = q * head_dim**-0.5
    k_t = k.transpose(-2, -1)  # (B, H, hd, T)
    blocks = []
    for start in range(0, T, rows):
        scores = torch.matmul(q[:, :, start : start + rows], k_t)  # (B, H, rows, T)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        blocks.append(torch.matmul(dropout(scores.softmax(dim=-1), p), v))  # (B, H, rows, hd)
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=2)
