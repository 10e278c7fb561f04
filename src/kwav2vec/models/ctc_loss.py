"""CTC losses of the hierarchical fine-tuner: per-head CTC with explicit feasibility, and the
multi-task combination `λ·CTC_syllable + (1 − λ)·CTC_grapheme`.

Feasibility: CTC can only align a target of length L with r adjacent repeats (each repeat needs a
blank between its two copies) to at least L + r frames. `F.ctc_loss(zero_infinity=True)` would turn
the infinite loss of a shorter input into a silent 0; here such utterances are found *before* the
loss, masked out of it and reported, so a caller can count them instead of training on nothing.

Normalisation (fairseq's default, `sentence_avg=False`): a head's loss is the sum of its
per-utterance negative log-likelihoods over the feasible utterances divided by their number of
target tokens. The sum and the token count are returned separately so a caller can normalise by a
token count gathered over all ranks (see `HierarchicalFineTuner`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def ctc_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits of any dtype -> (B, T, V) float32 log-probabilities, autocast disabled
    (half-precision log-softmax and CTC overflow on long utterances)."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return logits.float().log_softmax(dim=-1)


def ctc_min_frames(targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """(B,) frames CTC needs for each target: its length plus its adjacent repeats.

    targets: (B, L) long, padded beyond target_lengths (B,).
    """
    L = targets.shape[1]
    if L < 2:
        return target_lengths.clone()
    inside = torch.arange(1, L, device=targets.device) < target_lengths[:, None]  # (B, L-1)
    repeats = ((targets[:, 1:] == targets[:, :-1]) & inside).sum(dim=1)  # (B,)
    return target_lengths + repeats


@dataclass
class CTCTerms:
    """One head's CTC over a batch (all tensors on the logits' device, no host sync)."""

    loss_sum: torch.Tensor  # () float32: summed per-utterance losses of the feasible utterances
    ntokens: torch.Tensor  # () long: target tokens of the feasible utterances
    infeasible: torch.Tensor  # (B,) bool: target does not fit the frames (excluded from loss_sum)
    per_utterance: torch.Tensor  # (B,) float32 losses, 0 where infeasible


def ctc_terms(
    log_probs: torch.Tensor,
    frame_lengths: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    blank_id: int = 0,
) -> CTCTerms:
    """CTC of one head.

    Args:
        log_probs: (B, T, V) float32 log-probabilities (`ctc_log_probs`).
        frame_lengths: (B,) valid frames.
        targets: (B, L) long token ids, padded (with the blank id) beyond `target_lengths`.
        target_lengths: (B,) long.
        blank_id: the vocabulary's blank (0 for kwav2vec vocabularies).
    """
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be (B, T, V), got shape {tuple(log_probs.shape)}")
    B, T, V = log_probs.shape
    if log_probs.dtype != torch.float32:
        raise ValueError(f"log_probs must be float32 (use ctc_log_probs), got {log_probs.dtype}")
    if targets.dim() != 2 or targets.shape[0] != B:
        raise ValueError(f"targets must be (B={B}, L), got shape {tuple(targets.shape)}")
    if frame_lengths.shape != (B,) or target_lengths.shape != (B,):
        raise ValueError(
            f"frame_lengths and target_lengths must be ({B},), got {tuple(frame_lengths.shape)} and "
            f"{tuple(target_lengths.shape)}"
        )
    if not 0 <= blank_id < V:
        raise ValueError(f"blank_id {blank_id} outside the vocabulary of size {V}")
    device = log_probs.device
    frame_lengths = frame_lengths.to(device=device, dtype=torch.long)
    target_lengths = target_lengths.to(device=device, dtype=torch.long)
    targets = targets.to(device=device, dtype=torch.long)
    if targets.shape[1] == 0:  # every target empty: ctc_loss wants at least one column
        targets = targets.new_full((B, 1), blank_id)

    feasible = ctc_min_frames(targets, target_lengths) <= frame_lengths  # (B,)
    with torch.autocast(device_type=device.type, enabled=False):
        losses = F.ctc_loss(
            log_probs.transpose(0, 1),  # (T, B, V)
            targets,
            frame_lengths,
            target_lengths,
            blank=blank_id,
            reduction="none",  # (B,) summed over each utterance's frames, not divided by its length
            zero_infinity=True,  # belt and braces: infeasible ones are masked out below anyway
        )
    losses = losses.float() * feasible  # multiply (not index) so the graph and shapes stay static
    return CTCTerms(
        loss_sum=losses.sum(),
        ntokens=(target_lengths * feasible).sum(),
        infeasible=~feasible,
        per_utterance=losses,
    )


def multitask_ctc_loss(
    mtl_weight: float,
    syllable: torch.Tensor | None,
    grapheme: torch.Tensor | None,
) -> torch.Tensor:
    """λ·syllable + (1 − λ)·grapheme, λ = `mtl_weight` in [0, 1].

    λ = 1 returns the syllable loss itself and λ = 0 the grapheme loss itself (the other may then be
    None: its head is not built), so the single-task baselines are exactly single-task CTC.
    """
    if not 0.0 <= mtl_weight <= 1.0:
        raise ValueError(f"mtl_weight must lie in [0, 1], got {mtl_weight}")
    if mtl_weight < 1.0 and grapheme is None:
        raise ValueError(f"mtl_weight={mtl_weight} needs the grapheme loss")
    if mtl_weight > 0.0 and syllable is None:
        raise ValueError(f"mtl_weight={mtl_weight} needs the syllable loss")
    if mtl_weight == 1.0:
        return syllable
    if mtl_weight == 0.0:
        return grapheme
    return mtl_weight * syllable + (1.0 - mtl_weight) * grapheme
