"""Batched CTC rescoring equals torch's ctc_loss computed one candidate at a time."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from decoding_utils import pad_batch, random_log_probs

from kwav2vec.decoding.scoring import ctc_log_likelihood, ctc_log_likelihood_heads, pack_targets


def one_by_one(rows: list[torch.Tensor], nested: list[list[list[int]]]) -> torch.Tensor:
    scores = []
    for lp, candidates in zip(rows, nested):
        for target in candidates:
            loss = F.ctc_loss(
                lp[:, None, :],
                torch.tensor([target], dtype=torch.long).reshape(1, -1),
                torch.tensor([lp.shape[0]]),
                torch.tensor([len(target)]),
                reduction="none",
            )
            scores.append(-loss[0])
    return torch.stack(scores)


def candidates_for(generator: torch.Generator, V: int, T: int) -> list[list[int]]:
    """Random candidates plus the awkward ones: empty, repeats, longest feasible, infeasible."""
    out = [torch.randint(1, V, (int(n),), generator=generator).tolist() for n in torch.randint(1, 6, (4,), generator=generator)]
    out += [[], [3, 3, 4, 3], [2] * ((T + 1) // 2), [5] * T, list(range(1, min(V, T + 2)))]
    return out


@pytest.mark.parametrize("V", [7, 40])  # full rows (V <= L + 1) and gathered label columns (V > L + 1)
def test_batched_scores_equal_ctc_loss_one_by_one(V: int) -> None:
    g = torch.Generator().manual_seed(V)
    rows = [random_log_probs(g, T, V) for T in (9, 14, 5)]
    log_probs, lengths = pad_batch(rows)
    nested = [candidates_for(g, V, r.shape[0]) for r in rows]
    expected = one_by_one(rows, nested)
    got = ctc_log_likelihood(log_probs, lengths, nested)
    assert torch.isinf(expected).any() and torch.isfinite(expected).any()
    torch.testing.assert_close(got, expected)


def test_padded_targets_with_owner_and_two_heads_in_one_call() -> None:
    g = torch.Generator().manual_seed(0)
    rows_a = [random_log_probs(g, T, 50) for T in (12, 8)]
    rows_b = [random_log_probs(g, T, 6) for T in (12, 8)]
    nested_a = [candidates_for(g, 50, 12), candidates_for(g, 50, 8)]
    nested_b = [candidates_for(g, 6, 12)[:3], candidates_for(g, 6, 8)]
    (lp_a, len_a), (lp_b, len_b) = pad_batch(rows_a), pad_batch(rows_b)
    packed_a, packed_b = pack_targets(nested_a), pack_targets(nested_b)
    got_a, got_b = ctc_log_likelihood_heads([(lp_a, len_a, packed_a, 0), (lp_b, len_b, packed_b, 0)])
    torch.testing.assert_close(got_a, one_by_one(rows_a, nested_a))
    torch.testing.assert_close(got_b, one_by_one(rows_b, nested_b))
    # The padded form with an owner index, in a shuffled order.
    order = torch.randperm(len(packed_a), generator=g)
    got = ctc_log_likelihood(
        lp_a, len_a, packed_a.targets[order], target_lengths=packed_a.lengths[order], owner=packed_a.owner[order]
    )
    torch.testing.assert_close(got, got_a[order])


def test_zero_frames_and_no_candidates() -> None:
    log_probs = torch.zeros(2, 3, 5).log_softmax(-1)
    got = ctc_log_likelihood(log_probs, torch.tensor([0, 3]), [[[], [1]], []])
    assert got.tolist()[0] == 0.0 and got.tolist()[1] == -math.inf
    assert ctc_log_likelihood(log_probs, torch.tensor([3, 3]), [[], []]).shape == (0,)


def test_errors_name_the_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(B, T, V\).*\(4, 5\)"):
        ctc_log_likelihood(torch.zeros(4, 5), torch.tensor([5] * 4), [[]] * 4)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T=5\]"):
        ctc_log_likelihood(torch.zeros(1, 5, 3), torch.tensor([6]), [[[1]]])
    with pytest.raises(ValueError, match="other than the blank id"):
        ctc_log_likelihood(torch.zeros(1, 5, 3), torch.tensor([5]), [[[1, 0]]])
    with pytest.raises(ValueError, match="one candidate list per utterance"):
        ctc_log_likelihood(torch.zeros(2, 5, 3), torch.tensor([5, 5]), [[[1]]])
