"""Greedy (best-path) CTC decoding, batched in torch: argmax, collapse repeats, drop blanks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from kwav2vec.decoding.scoring import check_emissions

if TYPE_CHECKING:
    from kwav2vec.text.vocab import Vocabulary


def best_path_ids(log_probs: Tensor, lengths: Tensor, blank_id: int = 0) -> list[list[int]]:
    """Collapsed best-path label ids per utterance (repeats merged, blanks removed).

    log_probs: (B, T, V); lengths: (B,) valid frames. The whole batch is processed with tensor
    ops; Python only splits the final flat id list.
    """
    check_emissions(log_probs, lengths)
    best = log_probs.argmax(dim=-1)  # (B, T)
    B, T = best.shape
    valid = torch.arange(T, device=best.device)[None, :] < lengths.to(best.device)[:, None]  # (B, T)
    changed = torch.ones_like(valid)
    changed[:, 1:] = best[:, 1:] != best[:, :-1]
    keep = valid & changed & (best != blank_id)  # (B, T)
    flat = best[keep].tolist()
    out, start = [], 0
    for count in keep.sum(dim=1).tolist():
        out.append(flat[start : start + count])
        start += count
    return out


def greedy_decode(log_probs: Tensor, lengths: Tensor, vocab: Vocabulary) -> list[str]:
    """Best-path transcript per utterance: NFC syllables, single spaces, no leading/trailing space.

    A grapheme head's jamo are recomposed into syllables by `vocab.decode`. Repeated word
    boundaries (``| <blank> |``) are squeezed to one space, as pyctcdecode does.
    """
    check_emissions(log_probs, lengths, vocab_size=len(vocab))
    return [" ".join(vocab.decode(ids).split()) for ids in best_path_ids(log_probs, lengths, vocab.blank_id)]
