"""Batched CTC rescoring equals torch's ctc_loss computed one candidate at a time."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from decoding_utils import pad_batch, random_log_probs

from kwav2vec.decoding.scoring import ctc_log_likelihood, ctc_log_likelihood_heads


def one_by_one(rows: list[torch.Tensor], nested: list[list[list[int]]]) -> torch.Tensor:
    scores = []
    for lp, candidates in zip(rows, nested, strict=True):
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
    """Random candidates plus awkward ones: empty, repeats, longest feasible, infeasible, shared prefixes."""
    out = [
        torch.randint(1, V, (int(n),), generator=generator).tolist()
        for n in torch.randint(1, 6, (4,), generator=generator)
    ]
    out += [[], [3, 3, 4, 3], [2] * ((T + 1) // 2), [5] * T, list(range(1, min(V, T + 2)))]
    # Shared prefixes (the trie): a prefix of others, a duplicate, a repeat at the branch point.
    out += [[3, 4], [3, 4, 4], [3, 4, 5, 1], [3], [3, 4], [3, 3], [4, 3, 3]]
    return out


@pytest.mark.parametrize("V", [7, 40])
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
    rows_b = [random_log_probs(g, T, 6) for T in (15, 8)]  # another T and V
    nested_a = [candidates_for(g, 50, 12), candidates_for(g, 50, 8)]
    nested_b = [candidates_for(g, 6, 15)[:3], candidates_for(g, 6, 8)]
    (lp_a, len_a), (lp_b, len_b) = pad_batch(rows_a), pad_batch(rows_b)
    got_a, got_b = ctc_log_likelihood_heads([(lp_a, len_a, nested_a, 0), (lp_b, len_b, nested_b, 0)])
    expected_a = one_by_one(rows_a, nested_a)
    torch.testing.assert_close(got_a, expected_a)
    torch.testing.assert_close(got_b, one_by_one(rows_b, nested_b))
    # The padded form with an owner index, rows in a shuffled order.
    flat = [(b, c) for b, cands in enumerate(nested_a) for c in cands]
    order = torch.randperm(len(flat), generator=g).tolist()
    longest = max(len(c) for _, c in flat)
    padded = torch.tensor([flat[i][1] + [0] * (longest - len(flat[i][1])) for i in order])
    got = ctc_log_likelihood(
        lp_a,
        len_a,
        padded,
        target_lengths=torch.tensor([len(flat[i][1]) for i in order]),
        owner=torch.tensor([flat[i][0] for i in order]),
    )
    torch.testing.assert_close(got, expected_a[order])


def test_float64_and_a_nonzero_blank() -> None:
    g = torch.Generator().manual_seed(1)
    rows = [random_log_probs(g, T, 9).double().roll(3, dims=-1) for T in (7, 10)]  # blank moved to id 3
    nested = [[[1, 2, 1], [5, 5], []], [[8, 1, 1, 2]]]
    log_probs, lengths = pad_batch(rows)
    got = ctc_log_likelihood(log_probs, lengths, nested, blank_id=3)
    expected = []
    for lp, candidates in zip(rows, nested, strict=True):
        for c in candidates:
            loss = F.ctc_loss(
                lp[:, None],
                torch.tensor([c]).reshape(1, -1),
                [lp.shape[0]],
                [len(c)],
                blank=3,
                reduction="none",
            )
            expected.append(-loss[0])
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.stack(expected))


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
    with pytest.raises(ValueError, match=r"candidate \[1, 0\] of utterance 0.*other than the blank id"):
        ctc_log_likelihood(torch.zeros(1, 5, 3), torch.tensor([5]), [[[1, 0]]])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ctc_log_likelihood(torch.zeros(1, 5, 3), torch.tensor([5]), [[[1, 3]]])
    with pytest.raises(ValueError, match="one candidate list per utterance"):
        ctc_log_likelihood(torch.zeros(2, 5, 3), torch.tensor([5, 5]), [[[1]]])


def near_best(lp: torch.Tensor) -> list[list[int]]:
    """The best path's labels and variants with one label dropped or changed: an n-best list's kind."""
    ids = lp.argmax(-1).tolist()
    best = [c for i, c in enumerate(ids) if c != 0 and (i == 0 or c != ids[i - 1])]
    out = [best]
    for i in range(0, len(best), max(len(best) // 8, 1)):
        out += [best[:i] + best[i + 1 :], best[:i] + [best[i] % 11 + 1] + best[i + 1 :]]
    return out


def test_scaled_probabilities_equal_the_log_domain_pass_on_long_peaky_outputs(monkeypatch) -> None:
    # Long (T = 300) and very peaky rows make the states of one trie span thousands of nats: the
    # per-trie scaling must keep every candidate near the top exact, and the rest finite.
    g = torch.Generator().manual_seed(3)
    rows = [random_log_probs(g, T, 12, sharpness=12.0) for T in (300, 180, 1)]
    nested = [candidates_for(g, 12, r.shape[0]) + near_best(r) for r in rows]
    first = [0, *torch.tensor([len(c) for c in nested]).cumsum(0).tolist()]
    near = {first[b + 1] - 1 - i for b, r in enumerate(rows) for i in range(len(near_best(r)))}  # head 0's
    log_probs, lengths = pad_batch(rows)
    heads = [(log_probs, lengths, nested, 0), (log_probs[:, :, :7].log_softmax(-1), lengths, [
        [[c % 6 + 1 for c in cand] for cand in cands] for cands in nested], 0)]
    from kwav2vec.decoding import scoring

    rescored: list[int] = []
    in_log_space = scoring._in_log_space
    monkeypatch.setattr(scoring, "_in_log_space", lambda h, p: (rescored.extend(p), in_log_space(h, p))[1])
    scaled = ctc_log_likelihood_heads(heads)
    exact = ctc_log_likelihood_heads(heads, log_domain=True)
    # The n-best-like candidates come from the scaled pass, the far-off random ones from log space.
    assert rescored and not near & set(rescored)
    for a, b in zip(scaled, exact, strict=True):
        assert torch.equal(torch.isinf(a), torch.isinf(b))
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-4)
    spread = exact[0][torch.isfinite(exact[0])]
    assert float(spread.max() - spread.min()) > 1000  # the test spans more than float64's 708 nats


def test_a_candidate_that_underflows_every_path_is_rescored_in_log_space() -> None:
    # Frames that say "1" with certainty: the candidate [2] * 10 is ~ 10 x 300 nats below [1]; in
    # the scaled pass every one of its paths underflows, and the result must still be exact.
    lp = torch.full((20, 4), -300.0, dtype=torch.float64)
    lp[:, 1] = 0.0
    lp = lp.log_softmax(-1)
    nested = [[[1], [2] * 10, [2, 3] * 5, [1, 2]]]
    got = ctc_log_likelihood(lp[None], torch.tensor([20]), nested)
    assert torch.isfinite(got).all() and float(got[1]) < -2000
    torch.testing.assert_close(got, one_by_one([lp], nested))
