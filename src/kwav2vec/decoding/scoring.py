"""Exact CTC log-likelihoods of many candidate transcripts, batched in one torch call.

The joint decoder's `rescore` mode asks each head "how likely is this exact label sequence?"
for every candidate of every utterance in a batch. Running `ctc_loss` once per candidate would
cost one Python round trip each; here all candidates go through a single
`torch.nn.functional.ctc_loss(..., reduction="none")` call.

Memory: a candidate only needs the blank column and the columns of its own labels, so instead of
copying the utterance's full (T, V) log-probabilities per candidate (V is about 2,000 for a
KsponSpeech syllable vocabulary) we gather a (T, 1 + L) slice and relabel the target as local
column indices. CTC only ever compares a label with its predecessor (repeats need a blank in
between), so consecutive repeats keep sharing one column and the result is exact. When the
vocabulary is smaller than the longest target (a jamo head, V ≈ 70), the full rows are used instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class PackedTargets:
    """Candidate label sequences of a batch, padded. N candidates, L the longest."""

    targets: Tensor  # (N, L) long, padded with the blank id
    lengths: Tensor  # (N,) long
    owner: Tensor  # (N,) long, index of the utterance (row of log_probs) each candidate belongs to

    def __len__(self) -> int:
        return self.targets.shape[0]


def check_emissions(log_probs: Tensor, lengths: Tensor, *, name: str = "log_probs", vocab_size: int | None = None) -> None:
    """Raise ValueError naming the shape when `log_probs` (B, T, V) and `lengths` (B,) disagree."""
    if log_probs.dim() != 3:
        raise ValueError(f"{name} must be (B, T, V) log-probabilities, got shape {tuple(log_probs.shape)}")
    B, T, V = log_probs.shape
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"lengths must be (B,) = ({B},) for {name} of shape {tuple(log_probs.shape)}, got {tuple(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be an integer tensor, got {lengths.dtype}")
    if B and (int(lengths.min()) < 0 or int(lengths.max()) > T):
        raise ValueError(f"lengths must lie in [0, T={T}] for {name} of shape {tuple(log_probs.shape)}, got {lengths.tolist()}")
    if vocab_size is not None and V != vocab_size:
        raise ValueError(f"{name} has V={V} columns but its vocabulary has {vocab_size} tokens")


def pack_targets(
    nested: Sequence[Sequence[Sequence[int]]], *, blank_id: int = 0, device: torch.device | str | None = None
) -> PackedTargets:
    """Pad per-utterance lists of candidate id sequences into one (N, L) tensor, utterance-major."""
    flat = [list(candidate) for candidates in nested for candidate in candidates]
    owner = [b for b, candidates in enumerate(nested) for _ in candidates]
    longest = max((len(c) for c in flat), default=0)
    padded = torch.full((len(flat), longest), blank_id, dtype=torch.long)
    for n, candidate in enumerate(flat):
        if candidate:
            padded[n, : len(candidate)] = torch.tensor(candidate, dtype=torch.long)
    return PackedTargets(
        targets=padded.to(device),
        lengths=torch.tensor([len(c) for c in flat], dtype=torch.long, device=device),
        owner=torch.tensor(owner, dtype=torch.long, device=device),
    )


def _candidate_emissions(log_probs: Tensor, packed: PackedTargets, blank_id: int) -> tuple[Tensor, Tensor, int]:
    """Per-candidate emissions (T, N, C) float32, targets (N, L) into those columns, and the blank column."""
    B, T, V = log_probs.shape
    targets, lengths, owner = packed.targets, packed.lengths, packed.owner
    N, L = targets.shape
    position = torch.arange(L, device=targets.device)
    real = position[None, :] < lengths[:, None]  # (N, L)
    if bool((targets[real] == blank_id).any()) or bool(((targets[real] < 0) | (targets[real] >= V)).any()):
        raise ValueError(f"candidate targets must be label ids in [0, {V}) other than the blank id {blank_id}")
    if V <= L + 1 and blank_id == 0:
        # Small vocabulary: copying the full rows is cheaper than gathering label columns.
        return log_probs.float().transpose(0, 1)[:, owner], targets, blank_id  # (T, N, V)
    targets = torch.where(real, targets, torch.full_like(targets, blank_id))
    # Local column of each position: a new column unless the label repeats its predecessor.
    new_column = torch.ones_like(targets, dtype=torch.bool)
    new_column[:, 1:] = targets[:, 1:] != targets[:, :-1]
    local = torch.cumsum(new_column.long(), dim=1)  # (N, L) in [1, L]
    columns = torch.full((N, L + 1), blank_id, dtype=torch.long, device=targets.device)
    columns.scatter_(1, local, targets)  # column 0 stays the blank; padding columns point at the blank
    frames = torch.arange(T, device=log_probs.device)
    emissions = log_probs[owner[None, :, None], frames[:, None, None], columns[None, :, :]]  # (T, N, L + 1)
    return emissions.float(), local, 0


def ctc_log_likelihood_heads(
    heads: Sequence[tuple[Tensor, Tensor, PackedTargets, int]],
) -> list[Tensor]:
    """log p(y | x) under CTC for the candidates of several heads in ONE `ctc_loss` call.

    `heads`: tuples (log_probs (B, T, V), lengths (B,), packed targets, blank id); the heads may
    differ in B, T and V. Returns one (N_h,) float32 tensor per head, on that head's device, in
    the order of its packed targets. Candidates CTC cannot emit in the available frames (too many
    labels for T) get -inf.
    """
    parts = []
    for log_probs, lengths, packed, blank_id in heads:
        check_emissions(log_probs, lengths)
        emissions, targets, blank = _candidate_emissions(log_probs, packed, blank_id)
        parts.append((emissions, targets, lengths.to(emissions.device)[packed.owner], packed.lengths, blank))
    if not parts:
        return []
    if len({p[4] for p in parts}) != 1 or len({p[0].device for p in parts}) != 1:
        # Different blank columns or devices cannot share a call; keep it one call per head.
        return [_ctc(*p) for p in parts]
    T = max(p[0].shape[0] for p in parts)
    C = max(p[0].shape[2] for p in parts)
    L = max(p[1].shape[1] for p in parts)
    # Padding frames are beyond every input length and padding columns are never a target label.
    emissions = torch.cat([F.pad(p[0], (0, C - p[0].shape[2], 0, 0, 0, T - p[0].shape[0])) for p in parts], dim=1)
    targets = torch.cat([F.pad(p[1], (0, L - p[1].shape[1])) for p in parts], dim=0)
    scores = _ctc(
        emissions, targets, torch.cat([p[2] for p in parts]), torch.cat([p[3] for p in parts]), parts[0][4]
    )
    return list(scores.split([p[0].shape[1] for p in parts]))


def _ctc(emissions: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor, blank: int) -> Tensor:
    if emissions.shape[1] == 0:
        return emissions.new_zeros(0)
    with torch.no_grad():
        loss = F.ctc_loss(
            emissions, targets, input_lengths, target_lengths, blank=blank, reduction="none", zero_infinity=False
        )
    return -loss


def ctc_log_likelihood(
    log_probs: Tensor,
    lengths: Tensor,
    targets: Sequence[Sequence[Sequence[int]]] | Tensor,
    *,
    target_lengths: Tensor | None = None,
    owner: Tensor | None = None,
    blank_id: int = 0,
) -> Tensor:
    """Exact CTC log-likelihood of each candidate: (N,) float32 on `log_probs.device`.

    log_probs: (B, T, V) log-probabilities; lengths: (B,) valid frames.
    targets: either nested lists (utterance -> candidates -> label ids; the result is utterance-major),
    or a padded (N, L) long tensor together with `target_lengths` (N,) and `owner` (N,), the
    utterance index of each row. Infeasible candidates (too long for their frames) score -inf.
    """
    if isinstance(targets, Tensor):
        if target_lengths is None or owner is None:
            raise ValueError("padded targets (N, L) need target_lengths (N,) and owner (N,)")
        if targets.dim() != 2 or target_lengths.shape != targets.shape[:1] or owner.shape != targets.shape[:1]:
            raise ValueError(
                f"targets must be (N, L) with target_lengths and owner (N,), got {tuple(targets.shape)}, "
                f"{tuple(target_lengths.shape)}, {tuple(owner.shape)}"
            )
        if owner.numel() and (int(owner.min()) < 0 or int(owner.max()) >= log_probs.shape[0]):
            raise ValueError(f"owner indices must lie in [0, B={log_probs.shape[0]}), got {owner.tolist()}")
        device = log_probs.device
        packed = PackedTargets(targets.to(device).long(), target_lengths.to(device).long(), owner.to(device).long())
    else:
        if len(targets) != log_probs.shape[0]:
            raise ValueError(f"nested targets need one candidate list per utterance: B={log_probs.shape[0]}, got {len(targets)}")
        packed = pack_targets(targets, blank_id=blank_id, device=log_probs.device)
    return ctc_log_likelihood_heads([(log_probs, lengths, packed, blank_id)])[0]
