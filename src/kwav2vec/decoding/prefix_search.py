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

How it is vectorised: every frame is a fixed handful of tensor ops over one flat list of the
whole batch's candidates (each live beam extended by each token its own utterance keeps at that
frame, so nothing is padded to the batch's widest row). Prefixes are identified by two incremental
polynomial hashes modulo primes below 2^25; a candidate's merge key is one int64 (utterance,
both hashes, label-ended flag), so a single sort groups the candidates by utterance and brings
equal keys together, and runs of equal keys are reduced with scatter (amax, then a sum of
exponentials). Pruning and the `beam_width` best are per utterance (a stable sort by score, then
by utterance, only when some utterance has more than `beam_width`). Each merged beam also keeps
its best single path (Viterbi within the beam) and a back-pointer, so every hypothesis comes with
the frame alignment of its best path; its labels are that path collapsed. Utterances are
processed longest first and their beams stay grouped by utterance, so at frame t only the
still-running ones are touched: padding frames are never read (they may hold anything, NaN
included). Within a run of frames that keep only the blank, the frames after the first are not
visited at all (`_skip_silences`: they change no ranking), which removes most of a peaky model's
frames. Batches of more than MAX_ROWS utterances are searched in parts.
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
# A merge key is one int64: utterance (12 bits) | hash 1 (25) | hash 2 (25) | label-ended (1);
# hash * base stays below 2^56.
HASH_BITS = 25
PRIMES = (33_554_393, 33_554_383)
BASES = (1_000_003, 911_382_323)
ROW_SHIFT = 2 * HASH_BITS + 1
MAX_ROWS = 1 << (63 - ROW_SHIFT)  # utterances per pass; larger batches are searched in parts


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
    key: Tensor, scores: Tensor, rows: int, limit: int, prune: float, *, ranked: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Merge equal keys, prune, keep each row's best `limit`, over a flat list of candidates.

    key: (N,) merge keys (the row in the top bits, see ROW_SHIFT); scores: (2, N) summed-path and
    best-path scores; rows: how many rows there are. Returns, for the merged beams kept, grouped
    by row (ascending) and, if `ranked`, best first within a row: the index of the candidate that
    carries each one's best path (K,), their (2, K) scores, their rows (K,), and their rank within
    the row (K,) if ranked (else None).
    """
    N = key.shape[0]
    device = key.device
    # index_select rather than x[index] throughout: a third of the cost on small CPU tensors.
    sorted_key, perm = key.sort()
    s, v = scores.index_select(1, perm).unbind(0)
    head = torch.ones(N, dtype=torch.bool, device=device)
    torch.ne(sorted_key[1:], sorted_key[:-1], out=head[1:])
    segment = head.cumsum(0) - 1
    starts = head.nonzero()[:, 0]
    S = starts.shape[0]
    peak = s.new_full((S,), NEG_INF).scatter_reduce_(0, segment, s, "amax")
    summed = s.new_zeros(S).scatter_add_(0, segment, (s - peak.index_select(0, segment)).exp_())
    merged = summed.log_().add_(peak)
    best_path = s.new_full((S,), NEG_INF).scatter_reduce_(0, segment, v, "amax")
    carrier = torch.full((S,), N, dtype=torch.long, device=device).scatter_reduce_(
        0, segment, torch.where(v == best_path.index_select(0, segment), torch.arange(N, device=device), N), "amin"
    )
    row = sorted_key.index_select(0, starts) >> ROW_SHIFT  # (S,) ascending
    if prune > NEG_INF:
        row_best = merged.new_full((rows,), NEG_INF).scatter_reduce_(0, row, merged, "amax")
        kept = (merged >= row_best.index_select(0, row) + prune).nonzero()[:, 0]
    else:
        kept = torch.arange(S, device=device)
    rank = None
    kept_row = row.index_select(0, kept)
    counts = torch.bincount(kept_row, minlength=rows)
    if ranked or int(counts.max()) > limit:
        kept = kept.index_select(0, _by_row_then_score(kept_row, merged.index_select(0, kept)))
        kept_row = row.index_select(0, kept)
        rank = torch.arange(kept.shape[0], device=device) - (counts.cumsum(0) - counts).index_select(0, kept_row)
        top = (rank < limit).nonzero()[:, 0]
        kept, kept_row, rank = kept.index_select(0, top), kept_row.index_select(0, top), rank.index_select(0, top)
    kept_scores = torch.stack((merged.index_select(0, kept), best_path.index_select(0, kept)))
    return perm.index_select(0, carrier.index_select(0, kept)), kept_scores, kept_row, rank


def _by_row_then_score(row: Tensor, score: Tensor) -> Tensor:
    """The order that sorts (N,) entries by row (ascending), then by score (descending); ties keep
    their order. float32 scores <= 0 make one sort: -score + 0.0 (no -0) is a non-negative float,
    whose bits as an int32 sort as the float does, below the row's bits in one int64."""
    if score.dtype == torch.float32 and row.numel() and bool(score.max() <= 0):
        bits = (score.neg() + 0.0).view(torch.int32).long()
        return ((row << 32) | bits).argsort(stable=True)
    order = score.argsort(descending=True, stable=True)
    return order.index_select(0, row.index_select(0, order).argsort(stable=True))


def _skip_silences(
    width: Tensor, start: Tensor, is_blank_of: Tensor, value_of: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Drop the frames the search need not visit: within a run of frames that keep only the blank,
    every frame after the first. After the first, every beam ends in a blank, so such a frame
    extends nothing and merges nothing; it adds its blank log-prob to every beam of its utterance
    alike, which changes no ranking or pruning. Its log-prob is added to the run's first frame
    instead (in place, in `value_of`), which is the same sum. Most frames of a peaky model are
    such (the demo model: 54% of the grapheme head's, 83% of the syllable head's).

    width, start: (B, T) entries per frame (0 past an utterance's end). Returns the kept frames'
    (B, T') width and start (left-aligned, 0 beyond), kept frames per utterance (B,), and each
    kept frame's index in the input (B, T').
    """
    B, T = width.shape
    lone_blank = (width == 1) & is_blank_of[start.clamp(0, max(is_blank_of.shape[0] - 1, 0))] if is_blank_of.numel() \
        else torch.zeros_like(width, dtype=torch.bool)
    skip = torch.zeros_like(lone_blank)
    skip[:, 1:] = lone_blank[:, 1:] & lone_blank[:, :-1]
    visit = (width > 0) & ~skip  # every valid frame keeps at least its argmax
    if bool(skip.any()):
        frame = torch.arange(T, device=width.device).expand(B, T)
        owner = torch.where(visit, frame, 0).cummax(1).values  # the run's first frame
        b, t = skip.nonzero(as_tuple=True)
        value_of.index_add_(0, start[b, owner[b, t]], value_of[start[b, t]])
    kept = visit.sum(1)
    b, t = visit.nonzero(as_tuple=True)  # row-major: frames ascending within a row
    j = torch.arange(b.shape[0], device=width.device) - (kept.cumsum(0) - kept)[b]
    size = (B, int(kept.max()) if B else 0)
    kept_width, kept_start, source = (torch.zeros(size, dtype=torch.long, device=width.device) for _ in range(3))
    kept_width[b, j], kept_start[b, j], source[b, j] = width[b, t], start[b, t], t
    return kept_width, kept_start, kept, source


def _labels(alignment: Tensor, appended: Tensor, space_id: int | None) -> tuple[Tensor, Tensor]:
    """Label ids of the hypotheses, (B, N, L) padded with -1, and lengths (B, N): the labels their best
    paths (T, B, N, time-major) append to the prefix at the frames marked in `appended` (T, B, N),
    without a trailing space (pyctcdecode's text rules; no leading space or space after a space is
    ever appended)."""
    T, B, N = alignment.shape
    where = appended.view(T, B * N).t().nonzero()  # (K, 2) hypothesis-major, frames ascending
    hypothesis = where[:, 0]
    lengths = torch.bincount(hypothesis, minlength=B * N)
    position = torch.arange(where.shape[0], device=alignment.device) - (lengths.cumsum(0) - lengths)[hypothesis]
    labels = alignment.view(T, B * N)[where[:, 1], hypothesis]
    L = int(lengths.max()) if lengths.numel() else 0
    out = torch.full((B * N, L), -1, dtype=torch.long, device=alignment.device)
    out[hypothesis, position] = labels
    if space_id is not None and L:
        ends = out.gather(1, (lengths - 1).clamp_min(0)[:, None])[:, 0] == space_id
        out[ends.nonzero()[:, 0], lengths[ends] - 1] = -1
        lengths = lengths - ends.long()
        L = int(lengths.max())
    return out[:, :L].view(B, N, L), lengths.view(B, N)


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
    keep_n = beam_width if nbest is None else min(nbest, beam_width)
    options = dict(beam_width=beam_width, prune=beam_prune_logp, token_min_logp=token_min_logp, keep_n=keep_n,
                   blank_id=blank_id, space_id=space_id)
    B = log_probs.shape[0]
    if B <= MAX_ROWS:
        return _search(log_probs, lengths, **options)
    # The utterance index must fit its bits of the merge key.
    return _concatenate([_search(log_probs[i : i + MAX_ROWS], lengths[i : i + MAX_ROWS], **options)
                         for i in range(0, B, MAX_ROWS)])


def _concatenate(parts: list[NBest]) -> NBest:
    """One NBest from those of consecutive parts of a batch (lists padded to the longest)."""
    N = max(p.scores.shape[1] for p in parts)
    L = max(p.tokens.shape[2] for p in parts)

    def pad(x: Tensor, value: float, last: int | None = None) -> Tensor:
        # (B, N) or (B, N, X) to (B, N_max[, last]): every part shares T, so only N and L grow.
        widths = [0, N - x.shape[1]] if x.dim() == 2 else [0, (last or x.shape[2]) - x.shape[2], 0, N - x.shape[1]]
        return torch.nn.functional.pad(x, widths, value=value)

    return NBest(
        scores=torch.cat([pad(p.scores, NEG_INF) for p in parts]),
        tokens=torch.cat([pad(p.tokens, -1, L) for p in parts]),
        token_lengths=torch.cat([pad(p.token_lengths, 0) for p in parts]),
        alignment=torch.cat([pad(p.alignment, -1) for p in parts]),
        counts=torch.cat([p.counts for p in parts]),
    )


def _search(
    log_probs: Tensor, lengths: Tensor, *, beam_width: int, prune: float, token_min_logp: float, keep_n: int,
    blank_id: int, space_id: int | None,
) -> NBest:
    """`ctc_prefix_beam_search` of at most MAX_ROWS utterances."""
    B, T, V = log_probs.shape
    device = log_probs.device
    dtype = torch.float64 if log_probs.dtype == torch.float64 else torch.float32
    lengths = lengths.to(device=device, dtype=torch.long)
    if B == 0:
        empty = torch.zeros(0, keep_n, dtype=torch.long, device=device)
        return NBest(
            torch.zeros(0, keep_n, dtype=dtype, device=device), empty[..., None][..., :0], empty,
            torch.zeros(0, keep_n, T, dtype=torch.long, device=device), empty[:, 0],
        )
    with torch.inference_mode():
        # log-softmax and clipping only where read: log p = x - logsumexp(x) is compared, not
        # written out (the argmax is the input's, the same), and only the kept values are clipped.
        x = log_probs.detach().to(dtype)
        lse = x.logsumexp(-1, keepdim=True)  # (B, T, 1)
        # Tokens per (utterance, frame): those above token_min_logp plus the argmax, as one flat
        # list (frame-major, token ids ascending within a frame); frame (b, t) owns entries
        # start[b, t] .. start[b, t] + width[b, t] - 1. Padding frames hold anything (NaN
        # included) and own no entries.
        valid = torch.arange(T, device=device)[None, :, None] < lengths[:, None, None]  # (B, T, 1)
        keep = (x >= lse + token_min_logp).scatter_(-1, x.argmax(-1, keepdim=True), True) & valid
        entries = keep.view(-1).nonzero()[:, 0]
        token_of = entries % V
        value_of = (x.view(-1)[entries] - lse.view(-1)[entries // V]).clamp_min_(LOG_CLIP)
        width = torch.bincount(entries // V, minlength=B * T).view(B, T)
        start = width.view(-1).cumsum(0).view(B, T) - width
        del x, lse, keep, valid
        is_blank_of = token_of == blank_id
        width, start, kept, source = _skip_silences(width, start, is_blank_of, value_of)
        # Frame-major, rows sorted by (searched) length from here on: (T', B).
        order = torch.argsort(kept, descending=True, stable=True)
        frames = kept[order].tolist()  # descending
        start = start[order].t().contiguous()
        width = width[order].t().contiguous()
        primes = torch.tensor(PRIMES, device=device)[:, None]
        bases = torch.tensor(BASES, device=device)[:, None]

        def rows(t: int) -> int:  # utterances with more than t frames (a prefix: sorted descending)
            return B - bisect.bisect_right(frames[::-1], t)

        # The beams of every running utterance in one list, grouped by row (ascending): row, (2, K)
        # summed and best-path scores, (2, K) prefix hashes, (2, K) hashes of the prefix before its
        # last label (for the final merge, which ignores a trailing space), last emitted label
        # (blank id after a blank), last label of the prefix (-1: empty).
        row = torch.arange(B, device=device)
        score = torch.zeros(2, B, dtype=dtype, device=device)
        full = torch.zeros(2, B, dtype=torch.long, device=device)
        before_last = torch.zeros_like(full)
        last = torch.full((B,), blank_id, dtype=torch.long, device=device)
        tail = torch.full((B,), -1, dtype=torch.long, device=device)
        # Per searched frame (K_t,): each beam's parent in frame t-1's list, the label (or blank) it
        # emitted at frame t, whether that label extended the prefix.
        parents: list[Tensor] = []
        emitted: list[Tensor] = []
        appended: list[Tensor] = []
        scores = torch.full((B, keep_n), NEG_INF, dtype=dtype, device=device)
        pointer = torch.zeros(B, keep_n, dtype=torch.long, device=device)  # into the last frame's list

        def finish(first: int) -> None:
            # pyctcdecode's end of utterance: merge beams by text (trailing space and flag ignored).
            trimmed = full[:, first:]
            if space_id is not None:
                trimmed = torch.where(tail[first:] == space_id, before_last[:, first:], trimmed)
            key = (row[first:] << ROW_SHIFT) | (trimmed[0] << (HASH_BITS + 1)) | (trimmed[1] << 1)
            beam, top, r, rank = _merge(key, score[:, first:], B, keep_n, prune, ranked=True)
            scores[r, rank] = top[0]
            pointer[r, rank] = beam + first

        active = B
        for t in range(frames[0]):
            n = rows(t)
            if n < active:  # rows n.. have ended: their beams are the end of the list
                cut = int(torch.searchsorted(row, n))
                finish(cut)
                row, score, full, before_last, last, tail = (
                    x[..., :cut] for x in (row, score, full, before_last, last, tail)
                )
                active = n
            # Candidates: each beam extended by each token its row keeps at frame t.
            counts = width[t].index_select(0, row)
            beam_of = torch.repeat_interleave(counts)  # (C,) the beam each candidate extends
            first = start[t].index_select(0, row) - (counts.cumsum(0) - counts)  # per beam: entry - candidate
            entry = torch.arange(beam_of.shape[0], device=device) + first.index_select(0, beam_of)
            c, v = token_of.index_select(0, entry), value_of.index_select(0, entry)
            stay = is_blank_of.index_select(0, entry) | (c == last.index_select(0, beam_of))  # blank, or a repeat
            if space_id is not None:  # a space at the start or after a space: the text is unchanged
                before = tail.index_select(0, beam_of)
                stay |= (c == space_id) & ((before == -1) | (before == space_id))
            h = full.index_select(1, beam_of)
            h = torch.where(stay, h, (h * bases + (c + 1)) % primes)
            key = (row.index_select(0, beam_of) << ROW_SHIFT) | (h[0] << (HASH_BITS + 1)) | (h[1] << 1) | (c != blank_id)
            index, score, row, _ = _merge(
                key, score.index_select(1, beam_of) + v, active, beam_width, prune, ranked=False
            )
            parent, label = beam_of.index_select(0, index), c.index_select(0, index)
            extended = ~stay.index_select(0, index)
            if space_id is not None:
                before_last = torch.where(extended, full.index_select(1, parent), before_last.index_select(1, parent))
            full = h.index_select(1, index)
            tail = torch.where(extended, label, tail.index_select(0, parent))
            last = label
            parents.append(parent)
            emitted.append(label)
            appended.append(extended)
        finish(0)

        # Back-pointers from each utterance's last searched frame (rows sorted by length); the
        # alignment and the appended-label marks are written time-major, (T', B, N), rows in the
        # caller's order, so that each frame's write is one contiguous block.
        inverse = torch.argsort(order)
        present = scores > NEG_INF
        N = max(int(present.sum(1).max()), 1)
        scores, pointer, present = scores[:, :N], pointer[:, :N].contiguous(), present[:, :N]
        searched = len(parents)
        alignment = torch.full((searched, B, N), -1, dtype=torch.long, device=device)
        extensions = torch.zeros(searched, B, N, dtype=torch.bool, device=device)
        for t in reversed(range(searched)):
            n = rows(t)
            p = pointer[:n]
            alignment[t].index_copy_(0, order[:n], emitted[t].take(p))
            extensions[t].index_copy_(0, order[:n], appended[t].take(p))
            pointer[:n] = parents[t].take(p)
        present = present[inverse]
        extensions &= present
        tokens_out, token_lengths = _labels(alignment, extensions, space_id)
        # Back to the input's frames: the skipped ones are blanks of every hypothesis.
        full_alignment = torch.full((B, N, T), -1, dtype=torch.long, device=device)
        full_alignment.masked_fill_((torch.arange(T, device=device) < lengths[:, None])[:, None] & present[..., None],
                                    blank_id)
        b, j = (torch.arange(source.shape[1], device=device) < kept[:, None]).nonzero(as_tuple=True)
        full_alignment[b, :, source[b, j]] = alignment[j, b].masked_fill_(~present[b], -1)
        return NBest(
            scores=scores[inverse],
            tokens=tokens_out,
            token_lengths=token_lengths,
            alignment=full_alignment,
            counts=present.sum(1),
        )
