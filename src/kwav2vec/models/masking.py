"""Span masking and distractor sampling, vectorised over the batch (no Python loop per utterance).

Semantics follow fairseq's `compute_mask_indices` ("static" spans, overlaps allowed) and
`Wav2Vec2Model.sample_negatives`:
- each utterance of `n` real frames draws `int(mask_prob * n / mask_length + u)` span starts
  (u ~ U[0, 1) for probabilistic rounding), at least `min_masks`, distinct, uniformly among the first
  `n - mask_length` frames; spans are clipped to the utterance, so padding is never masked.
  mask_prob is thus the fraction of *starts*: 0.65 with span 10 masks about 49% of frames.
- `require_same_masks`: frames are randomly unmasked until every utterance has as many masked frames
  as the least-masked one (needed so the masked frames of a batch form a (B, M, C) tensor).
- distractors of masked frame m of an utterance are drawn uniformly (with replacement) from the *other*
  masked frames of the same utterance: never the positive itself, never padding.
"""

from __future__ import annotations

import torch


def compute_mask_indices(
    shape: tuple[int, int],
    lengths: torch.Tensor | None,
    mask_prob: float,
    mask_length: int,
    *,
    min_masks: int = 0,
    require_same_masks: bool = True,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random span mask of `shape` (B, T) as a bool tensor (True = masked).

    Args:
        shape: (batch, length along the masked axis).
        lengths: (B,) real lengths (frames beyond are padding and never masked); None = all of T.
        mask_prob: fraction of positions chosen as span starts.
        mask_length: span length.
        min_masks: minimum number of spans per row.
        require_same_masks: equalise the number of masked positions across rows (fairseq default).
        generator: optional torch.Generator for reproducible masks (on `device`).
    """
    B, T = shape
    if mask_length < 1:
        raise ValueError(f"mask_length must be >= 1, got {mask_length}")
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.long, device=device)
    else:
        device = lengths.device
        if lengths.shape != (B,):
            raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
        lengths = lengths.long()
        if bool((lengths > T).any()) or bool((lengths < 0).any()):
            raise ValueError(f"lengths {lengths.tolist()} must lie in [0, {T}]")
    if mask_prob <= 0 or B == 0 or T == 0:
        return torch.zeros(B, T, dtype=torch.bool, device=device)

    u = torch.rand(B, device=device, generator=generator, dtype=torch.float64)
    num = (mask_prob * lengths.double() / mask_length + u).long().clamp(min=min_masks)  # (B,) spans
    # candidate starts: fairseq's `sz - min_len`, shrunk to num + 1 when spans would not fit
    candidates = torch.where(lengths - mask_length <= num, num + 1, lengths - mask_length)
    width = max(T, int(candidates.max()))
    k = int(num.max())
    if k == 0:
        return torch.zeros(B, T, dtype=torch.bool, device=device)
    # a uniform random subset of `num[b]` distinct starts among `candidates[b]`: the top-scoring
    # candidates under i.i.d. uniform scores, invalid columns scored below every valid one
    scores = torch.rand(B, width, device=device, generator=generator)
    scores = scores.masked_fill(torch.arange(width, device=device) >= candidates[:, None], -1.0)
    starts = scores.topk(k, dim=1).indices  # (B, k), random order
    positions = starts.unsqueeze(-1) + torch.arange(mask_length, device=device)  # (B, k, L)
    keep = (torch.arange(k, device=device) < num[:, None]).unsqueeze(-1) & (positions < lengths[:, None, None])
    rows = torch.arange(B, device=device)[:, None, None].expand_as(positions)
    mask = torch.zeros(B, T, dtype=torch.bool, device=device)
    mask[rows[keep], positions[keep]] = True

    if require_same_masks and B > 1:
        counts = mask.sum(1)
        target = int(counts.min())
        if bool((counts > target).any()):
            # keep a uniform random subset of `target` masked positions in every row
            scores = torch.rand(B, T, device=device, generator=generator).masked_fill(~mask, -1.0)
            kept = scores.topk(target, dim=1).indices
            mask = torch.zeros_like(mask).scatter_(1, kept, True)
    return mask


def apply_channel_mask(
    x: torch.Tensor, prob: float, length: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero random spans of channels, the same channels for every frame of an utterance. x: (B, T, C)."""
    B, _, C = x.shape
    channel_mask = compute_mask_indices((B, C), None, prob, length, device=x.device, generator=generator)
    return x.masked_fill(channel_mask.unsqueeze(1), 0.0)


def sample_negatives(
    batch: int,
    num_masked: int,
    num_negatives: int,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Distractor indices (B, M, K) into each utterance's M masked frames, never the positive itself."""
    if num_masked < 2:
        raise ValueError(
            f"need at least 2 masked frames per utterance to draw distractors, got {num_masked} "
            "(utterances too short for the mask settings?)"
        )
    idx = torch.randint(0, num_masked - 1, (batch, num_masked, num_negatives), device=device, generator=generator)
    # shifting draws at or above the positive keeps the distribution uniform over the other frames
    return idx + (idx >= torch.arange(num_masked, device=device)[None, :, None]).long()
