"""A batched CTC prefix beam search in torch, on the log-probs' device, with pyctcdecode's semantics.

What is matched (pyctcdecode 0.5 `BeamSearchDecoderCTC._decode_logits`, no LM, no hotwords):

- A beam is a (prefix, ended-in-blank) pair and is ranked on its own score: pyctcdecode keys its
  beams by (text, partial word, last character), so the blank-ended and the label-ended paths of
  one prefix are two beams competing for the `beam_width` slots (a textbook prefix search ranks
  their sum). A beam's score sums the probabilities of every kept path into it.
- Prefixes are texts: a space at the start or after a space leaves the prefix as it is (it only
  makes the beam label-ended), so "ab", " ab" and "a  b" are never separate beams, and at the end
  beams whose texts differ only by a trailing space, or by how they ended, are merged.
- Per frame: the tokens with log-prob >= `token_min_logp`, plus the frame's argmax; every beam is
  extended by each of them; equal beams merged by log-sum-exp; beams more than `-beam_prune_logp`
  below the frame's best dropped; the best `beam_width` kept. The same pruning and trimming after
  the final merge. Log-probs are re-normalised (log-softmax) and clipped at log(1e-15) first.

How it is vectorised: every frame is a handful of tensor ops over (utterances, beams, tokens).
Prefixes are identified by two incremental polynomial hashes modulo primes below 2^31 (products
stay inside int64), so a (prefix, flag) key is one int64 and equal keys are merged by sorting each
utterance's candidates and reducing runs with scatter (amax, then a sum of exponentials). Each
merged beam also keeps its best single path (Viterbi within the beam) and a back-pointer, so every
hypothesis comes with the frame alignment of its best path; its labels are that path collapsed.
Utterances are processed longest first so that at frame t only the still-running ones are touched:
padding frames are never read (they may hold anything, NaN included). The tokens per frame and the
live beams are shrunk to the batch's maximum each frame (one host sync per frame).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from kwav2vec.decoding.scoring import check_emissions

NEG_INF = float("-inf")
LOG_CLIP = math.log(1e-15)  # pyctcdecode's MIN_TOKEN_CLIP_P
PRIMES = (2_147_483_647, 2_147_483_629)  # < 2^31: hash * base stays below 2^62
BASES = (1_000_003, 911_382_323)
HASH_BITS = 31


@dataclass(frozen=True)
class NBest:
    """N-best lists of a batch, best first, on the search's device (N = the most kept for any utterance)."""

    scores: Tensor  # (B, N) log-probability of each hypothesis (its kept paths summed); -inf where absent
    tokens: Tensor  # (B, N, L) label ids (no blanks, spaces normalised), padded with -1
    token_lengths: Tensor  # (B, N)
    alignment: Tensor  # (B, N, T) the best path: label (or blank) id per frame; -1 past the length / absent
    counts: Tensor  # (B,) hypotheses per utterance

    def token_lists(self) -> list[list[list[int]]]:
        """Label ids per utterance and hypothesis (one device-to-host copy)."""
        tokens, lengths, counts = self.tokens.tolist(), self.token_lengths.tolist(), self.counts.tolist()
        return [
            [row[n][: lengths[b][n]] for n in range(counts[b])] for b, row in enumerate(tokens)
        ]


def _merge(
    keys: Tensor, scores: Tensor, vscores: Tensor, limit: int, prune: float, *, ranked: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Merge equal keys per row, prune, keep the best `limit`.

    keys, scores, vscores: (R, N) candidate keys, summed-path scores, best-path scores.
    Returns (R, K) merged scores (-inf where absent; best first if `ranked` or if more than
    `limit` had to be chosen), their best-path scores, and the index (into N) of the candidate
    that carries each merged beam's best path. K is as small as the row with most beams allows.
    """
    R, N = keys.shape
    device = keys.device
    sorted_keys, perm = keys.sort(dim=1)
    s = scores.gather(1, perm).reshape(-1)
    v = vscores.gather(1, perm).reshape(-1)
    head = torch.ones(R, N, dtype=torch.bool, device=device)
    head[:, 1:] = sorted_keys[:, 1:] != sorted_keys[:, :-1]
    segment = (head.cumsum(1) - 1 + torch.arange(R, device=device)[:, None] * N).reshape(-1)  # (R·N,)
    peak = torch.full((R * N,), NEG_INF, dtype=s.dtype, device=device).scatter_reduce(0, segment, s, "amax")
    safe = peak.clamp_min(torch.finfo(s.dtype).min)  # empty segments: no -inf - -inf
    total = torch.zeros_like(peak).scatter_add_(0, segment, (s - safe[segment]).exp())
    merged = (total.log() + safe).view(R, N)  # empty segments: log 0 = -inf
    best_path = torch.full_like(peak, NEG_INF).scatter_reduce(0, segment, v, "amax")
    position = torch.arange(R * N, device=device)
    carrier = torch.full((R * N,), R * N, dtype=torch.long, device=device).scatter_reduce(
        0, segment, torch.where(v == best_path[segment], position, R * N), "amin"
    )
    if prune > NEG_INF:
        merged = merged.masked_fill(merged < merged.amax(1, keepdim=True) + prune, NEG_INF)
    segments = int(head.sum(1).max())  # merged beams sit at the front of each row
    if segments <= limit and not ranked:  # everything fits: no ranking (order only matters at the end)
        top, index = merged[:, :segments], torch.arange(segments, device=device).expand(R, segments)
    else:
        top, index = merged.topk(min(limit, N), dim=1)
        live = max(int((top > NEG_INF).sum(1).max()), 1)
        top, index = top[:, :live], index[:, :live]
    carrier = carrier.view(R, N).gather(1, index).clamp_max(R * N - 1) % N
    return top, best_path.view(R, N).gather(1, index), perm.gather(1, carrier)


def _compact(keep: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """The kept entries of each row of (..., T), moved to the front: (..., L) padded with -1, and counts."""
    lengths = keep.sum(-1)
    L = int(lengths.max()) if lengths.numel() else 0
    slot = torch.where(keep, keep.cumsum(-1) - 1, L)  # dropped entries go to a spare column
    out = torch.full((*values.shape[:-1], L + 1), -1, dtype=torch.long, device=values.device)
    out.scatter_(-1, slot, torch.where(keep, values, -1))
    return out[..., :L], lengths


def _collapse(alignment: Tensor, blank_id: int, space_id: int | None) -> tuple[Tensor, Tensor]:
    """Labels of best paths (B, N, T) -> (B, N, L) ids padded with -1, and lengths (B, N).

    CTC collapse (repeats merged, blanks and padding dropped), then pyctcdecode's text rules on
    the collapsed labels: no leading or trailing space, no space after a space.
    """
    previous = torch.nn.functional.pad(alignment, (1, 0), value=-1)[..., :-1]
    labels, lengths = _compact((alignment >= 0) & (alignment != blank_id) & (alignment != previous), alignment)
    if space_id is None:
        return labels, lengths
    space = labels == space_id
    word = (labels >= 0) & ~space
    after_space = torch.nn.functional.pad(space, (1, 0), value=True)[..., :-1]  # the start counts as a space
    word_later = word.flip(-1).cumsum(-1).flip(-1) > 0
    return _compact(word | (space & ~after_space & word_later), labels)


def ctc_prefix_beam_search(
    log_probs: Tensor,
    lengths: Tensor,
    *,
    beam_width: int = 100,
    beam_prune_logp: float = -10.0,
    token_min_logp: float = -5.0,
    nbest: int | None = None,
    blank_id: int = 0,
    space_id: int | None = None,
) -> NBest:
    """N-best lists of a batch by CTC prefix beam search (see the module docstring).

    log_probs: (B, T, V) log-probabilities (or logits: they are log-softmaxed); lengths: (B,) valid
    frames. `space_id`: the word-boundary label (pyctcdecode's " "), None if there is none.
    `nbest` caps the returned lists (None: up to `beam_width`). Scores are float32 (float64 for
    float64 input). An utterance with no frames gets one empty hypothesis with score 0.
    """
    check_emissions(log_probs, lengths)
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    B, T, V = log_probs.shape
    device = log_probs.device
    dtype = torch.float64 if log_probs.dtype == torch.float64 else torch.float32
    keep_n = beam_width if nbest is None else min(nbest, beam_width)
    lengths = lengths.to(device=device, dtype=torch.long)
    if B == 0:
        empty = torch.zeros(0, keep_n, dtype=torch.long, device=device)
        return NBest(
            torch.zeros(0, keep_n, dtype=dtype, device=device), empty[..., None][..., :0], empty,
            torch.zeros(0, keep_n, T, dtype=torch.long, device=device), empty[:, 0],
        )
    with torch.inference_mode():
        order = torch.argsort(lengths, descending=True, stable=True)
        frames = lengths[order].tolist()  # descending
        valid = torch.arange(T, device=device)[None, :] < lengths[order][:, None]  # (B, T), sorted rows
        lp = torch.where(valid[..., None], log_probs.detach()[order].to(dtype), 0.0)
        lp = lp.log_softmax(-1).clamp_min(LOG_CLIP)
        # Tokens per frame: those above token_min_logp plus the argmax (the top-1 of topk).
        count = ((lp >= token_min_logp).sum(-1).clamp_min(1) * valid).amax(0)  # (T,)
        width = count.tolist()
        values, tokens = lp.topk(max(width, default=1), dim=-1)  # (B, T, M), best first
        values = torch.where(
            (values >= token_min_logp) | (torch.arange(values.shape[-1], device=device) == 0), values, NEG_INF
        )

        def rows(t: int) -> int:  # utterances with more than t frames (a prefix: sorted descending)
            return B - bisect.bisect_right(frames[::-1], t)

        # Beam state, (rows, K): summed and best-path scores, prefix hashes (full, and without a
        # trailing space, for the final merge), last emitted label (blank id after a blank), last
        # label of the prefix (-1: empty).
        score = torch.zeros(B, 1, dtype=dtype, device=device)
        vscore = torch.zeros_like(score)
        h1, h2, n1, n2 = (torch.zeros(B, 1, dtype=torch.long, device=device) for _ in range(4))
        last = torch.full((B, 1), blank_id, dtype=torch.long, device=device)
        tail = torch.full((B, 1), -1, dtype=torch.long, device=device)
        parents: list[Tensor] = []  # per frame (rows_t, K_t): beam index at frame t-1
        emitted: list[Tensor] = []  # per frame (rows_t, K_t): label or blank emitted at frame t
        finals: list[tuple[int, Tensor, Tensor]] = []  # (first row, final scores, beam index at last frame)

        def finish(start: int, stop: int) -> None:
            # pyctcdecode's end of utterance: merge beams by text (trailing space and flag ignored).
            key = (n1[start:stop] << HASH_BITS) | n2[start:stop]
            top, _, beam = _merge(
                key, score[start:stop], vscore[start:stop], beam_width, beam_prune_logp, ranked=True
            )
            finals.append((start, top[:, :keep_n], beam[:, :keep_n]))

        active = B
        for t in range(frames[0] if B else 0):
            n = rows(t)
            if n < active:
                finish(n, active)
                score, vscore, h1, h2, n1, n2, last, tail = (
                    x[:n] for x in (score, vscore, h1, h2, n1, n2, last, tail)
                )
                active = n
            m, K = width[t], score.shape[1]
            v, c = values[:n, t, :m], tokens[:n, t, :m]  # (n, m)
            cand = c[:, None, :].expand(n, K, m)
            stay = (cand == blank_id) | (cand == last[..., None])  # blank, or a repeat collapsed by CTC
            if space_id is not None:  # a space at the start or after a space: the text is unchanged
                stay |= (cand == space_id) & ((tail == -1) | (tail == space_id))[..., None]
            e1 = torch.where(stay, h1[..., None], (h1[..., None] * BASES[0] + cand + 1) % PRIMES[0])
            e2 = torch.where(stay, h2[..., None], (h2[..., None] * BASES[1] + cand + 1) % PRIMES[1])
            key = ((e1 << HASH_BITS) | e2) << 1 | (cand != blank_id)  # (prefix, label-ended)
            top, vtop, index = _merge(
                key.view(n, -1),
                (score[..., None] + v[:, None, :]).view(n, -1),
                (vscore[..., None] + v[:, None, :]).view(n, -1),
                beam_width,
                beam_prune_logp,
                ranked=False,
            )
            parent, label = index // m, c.gather(1, index % m)
            extended = ~stay.view(n, -1).gather(1, index)
            if space_id is None:
                no_trail1, no_trail2 = e1.view(n, -1).gather(1, index), e2.view(n, -1).gather(1, index)
            else:  # the hash without a trailing space: the parent's full hash when a space was appended
                after_space = extended & (label == space_id)
                no_trail1 = torch.where(after_space, h1.gather(1, parent), e1.view(n, -1).gather(1, index))
                no_trail2 = torch.where(after_space, h2.gather(1, parent), e2.view(n, -1).gather(1, index))
                keep_old = ~extended
                no_trail1 = torch.where(keep_old, n1.gather(1, parent), no_trail1)
                no_trail2 = torch.where(keep_old, n2.gather(1, parent), no_trail2)
            h1, h2 = e1.view(n, -1).gather(1, index), e2.view(n, -1).gather(1, index)
            n1, n2 = no_trail1, no_trail2
            tail = torch.where(extended, label, tail.gather(1, parent))
            score, vscore, last = top, vtop, label
            parents.append(parent)
            emitted.append(label)
        finish(0, active)

        # Final lists (rows sorted by length), then back-pointers from each utterance's last frame.
        N = max(f[1].shape[1] for f in finals) if finals else keep_n
        scores = torch.full((B, N), NEG_INF, dtype=dtype, device=device)
        pointer = torch.zeros(B, N, dtype=torch.long, device=device)
        for start, top, beam in finals:
            scores[start : start + top.shape[0], : top.shape[1]] = top
            pointer[start : start + top.shape[0], : top.shape[1]] = beam
        alignment = torch.full((B, N, T), -1, dtype=torch.long, device=device)
        for t in reversed(range(len(parents))):
            n = parents[t].shape[0]
            p = pointer[:n]
            alignment[:n, :, t] = emitted[t].gather(1, p)
            pointer[:n] = parents[t].gather(1, p)
        present = scores > NEG_INF
        alignment.masked_fill_(~present[..., None], -1)
        tokens_out, token_lengths = _collapse(alignment, blank_id, space_id)
        inverse = torch.argsort(order)
        return NBest(
            scores=scores[inverse],
            tokens=tokens_out[inverse],
            token_lengths=token_lengths[inverse],
            alignment=alignment[inverse],
            counts=present.sum(1)[inverse],
        )
