"""Exact CTC log-likelihoods of many candidate transcripts at once (the joint decoder's rescoring).

`rescore` asks each head "how likely is this exact label sequence?" for every candidate of every
utterance in a batch: up to a few hundred candidates per utterance whose labels are mostly
shared, since n-best lists differ in a few places. `torch.nn.functional.ctc_loss(reduction="none")`
over all of them is exact but costs T·N·(2·L_max + 1) scalar updates.

Here each utterance's candidates are merged into a prefix trie and the CTC forward recursion
runs once over the trie's states. A candidate's lattice is exactly the path from the root to its
last node and a node's forward variables depend only on its ancestors, so every shared prefix is
computed once and each result is still the exact CTC log-likelihood. Each node has two states,
its label and the blank after it (a root has only the leading blank):

    label(v)_t = logsumexp(label(v)_{t-1}, blank(u)_{t-1}, label(u)_{t-1} if c_u != c_v) + lp_t(c_v)
    blank(v)_t = logsumexp(blank(v)_{t-1}, label(v)_{t-1}) + lp_t(blank)        (u = parent of v)
    log p(y) = logaddexp(label(end)_{T-1}, blank(end)_{T-1})

The loop runs over frames, each step a handful of vectorised ops over the nodes of all
utterances of all heads: one computation per batch, on the log-probs' device. Nodes are sorted
by depth so frame t only touches nodes of depth <= t + 1, and only the (frame, label) columns the
tries use are copied out of the log-probs. Measured on 1 CPU thread, T ≈ 200, a 2,000-syllable
and the 70-jamo head: 8 utterances × 200 candidates (~100 jamo each) 0.7 s against 5 s for
`ctc_loss`; 32 utterances × 3 candidates 76 ms against 350 ms. The many small ops suffer from
intra-op threading on a busy machine (4.7 s instead of 0.7 s with 2 threads under load).

That is the log-space pass (`_forward_log`). Up to PROBABILITY_MAX_FRAMES frames the same
recursion runs on float64 probabilities in the tries' insertion order (`_forward_probability`:
no log-sum-exp, no gather of the parents' states), exact above a stated underflow floor, with
the few candidates below it rescored in log space: on the demo model's n-best lists (beam 100,
both heads, 60 test utterances in `evaluate`'s batches, 9,096 candidates, 1 thread, 2026-12-03)
0.28 s against 0.54 s for the float32 log-space pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

NEG_INF = float("-inf")
EMISSION_CHUNK = 16  # frames whose emissions are gathered in one op
# _forward_probability: log of float64's smallest normal number, and the relative precision asked of
# a candidate above the floor; past PROBABILITY_MAX_FRAMES (40 s) most candidates would fall below
# the floor (-0.2 nats a frame is a weak model's), so the log-space pass is used from the start.
LOG_TINY = math.log(2.2250738585072014e-308)
LOG_PRECISION = math.log(1e-12)
PROBABILITY_MAX_FRAMES = 2000


def check_emissions(
    log_probs: Tensor, lengths: Tensor, *, name: str = "log_probs", vocab_size: int | None = None
) -> None:
    """Raise ValueError naming the shape when `log_probs` (B, T, V) and `lengths` (B,) disagree."""
    if log_probs.dim() != 3:
        raise ValueError(f"{name} must be (B, T, V) log-probabilities, got shape {tuple(log_probs.shape)}")
    B, T, V = log_probs.shape
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(
            f"lengths must be (B,) = ({B},) for {name} of shape {tuple(log_probs.shape)}, "
            f"got {tuple(lengths.shape)}"
        )
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be an integer tensor, got {lengths.dtype}")
    if B and (int(lengths.min()) < 0 or int(lengths.max()) > T):
        raise ValueError(
            f"lengths must lie in [0, T={T}] for {name} of shape {tuple(log_probs.shape)}, got {lengths.tolist()}"
        )
    if vocab_size is not None and V != vocab_size:
        raise ValueError(f"{name} has V={V} columns but its vocabulary has {vocab_size} tokens")


def _as_key(labels: Sequence[int]) -> str | None:
    """Label ids as one string (id i as chr(i)); None when an id is negative."""
    if labels and min(labels) < 0:
        return None
    return "".join(map(chr, labels))


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix (binary search on C-level slice comparisons)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class _Trie:
    """Prefix tries of the candidates of every utterance of every head, as flat node lists.

    Built from each utterance's sorted candidates: a candidate shares with its predecessor in
    sorted order exactly the prefix it shares with the trie so far, so only its remaining labels
    become new nodes (list slicing instead of one dict lookup per label).
    """

    def __init__(self) -> None:
        self.parent: list[int] = []  # node index of the parent (a root is its own parent)
        self.label: list[int] = []  # label id (-1 for a root)
        self.depth: list[int] = []  # number of labels from the root
        self.utterance: list[int] = []  # row of the head's log_probs
        self.head: list[int] = []
        self.end: list[int] = []  # last node of each candidate, in input order

    def add(
        self, head: int, nested: Sequence[Sequence[Sequence[int] | str]], vocab_size: int, blank_id: int
    ) -> int:
        """Insert one head's candidates (id lists, or keys: id i as chr(i), see
        `Vocabulary.encode_key`); returns how many candidates were added."""
        added = 0
        blank, limit = chr(blank_id), chr(vocab_size)
        for b, candidates in enumerate(nested):
            keys = [c if isinstance(c, str) else _as_key(c) for c in candidates]
            for key, candidate in zip(keys, candidates, strict=True):
                if key is None or (key and (max(key) >= limit or blank in key)):
                    labels = [ord(c) for c in candidate] if isinstance(candidate, str) else list(candidate)
                    raise ValueError(
                        f"candidate {labels} of utterance {b}: labels must be ids in "
                        f"[0, {vocab_size}) other than the blank id {blank_id}"
                    )
            root = len(self.parent)
            self.parent.append(root)
            self.label.append(-1)
            self.depth.append(0)
            node_of = {"": root}
            previous, path = "", []  # path[i]: node of previous[: i + 1]
            for key in sorted(set(keys) - {""}):
                shared = _common_prefix(previous, key)
                first, size = len(self.parent), len(key) - shared
                self.parent.append(path[shared - 1] if shared else root)
                self.parent.extend(range(first, first + size - 1))
                self.label.extend(map(ord, key[shared:]))
                self.depth.extend(range(shared + 1, len(key) + 1))
                path = path[:shared] + list(range(first, first + size))
                node_of[key] = path[-1]
                previous = key
            count = len(self.parent) - root
            self.utterance.extend([b] * count)
            self.head.extend([head] * count)
            self.end.extend(node_of[key] for key in keys)
            added += len(keys)
        return added


def ctc_log_likelihood_heads(
    heads: Sequence[tuple[Tensor, Tensor, Sequence[Sequence[Sequence[int] | str]], int]],
    *,
    log_domain: bool = False,
) -> list[Tensor]:
    """log p(y | x) under CTC for the candidates of several heads in one computation.

    `heads`: tuples (log_probs (B, T, V), lengths (B,), candidates, blank id), where candidates
    holds one list of label-id sequences per utterance (or of their keys, `Vocabulary.encode_key`).
    Heads may differ in B, T and V but must share a device. Returns one (N_h,) tensor per head (N_h = its number of candidates,
    utterance-major order), float32 (float64 for float64 input). Candidates CTC cannot emit in the
    available frames (too many labels, or repeats needing blanks, for T) get -inf. Computed in
    float64 on probabilities (`_forward_probability`), or all in log space if `log_domain`.
    """
    if not heads:
        return []
    devices = {log_probs.device for log_probs, *_ in heads}
    if len(devices) != 1:
        raise ValueError(f"all heads must be on one device, got {sorted(map(str, devices))}")
    (device,) = devices
    dtype = torch.float64 if any(h[0].dtype == torch.float64 for h in heads) else torch.float32
    trie, counts = _Trie(), []
    for index, (log_probs, lengths, nested, blank_id) in enumerate(heads):
        check_emissions(log_probs, lengths)
        if len(nested) != log_probs.shape[0]:
            raise ValueError(
                f"need one candidate list per utterance: B={log_probs.shape[0]}, got {len(nested)} lists"
            )
        counts.append(trie.add(index, nested, log_probs.shape[2], blank_id))

    def per_node(values: Sequence[int]) -> Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    # Nodes sorted by depth: at frame t only nodes of depth <= t + 1 can be reached, a prefix.
    depth = per_node(trie.depth)
    order = torch.argsort(depth, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=device)
    reachable = torch.bincount(depth).cumsum(0).tolist()  # reachable[d]: nodes of depth <= d
    head, utterance = per_node(trie.head)[order], per_node(trie.utterance)[order]
    parent, label = rank[per_node(trie.parent)[order]], per_node(trie.label)[order]
    is_root = label < 0
    # Skipping the blank between two labels is only allowed when they differ (CTC's repeat rule).
    # The probability pass needs float64's range; the log-space pass runs in the input's precision.
    use_log = log_domain or max(h[0].shape[1] for h in heads) > PROBABILITY_MAX_FRAMES
    compute = dtype if use_log else torch.float64
    skip_penalty = torch.zeros(len(order), dtype=compute, device=device)
    skip_penalty.masked_fill_(is_root[parent] | (label[parent] == label), NEG_INF)

    # Emission table (frames, columns): one column per (head, utterance, label) some node uses,
    # blanks included, instead of the full (B, T, V) tensors (V ~ 2,000 for syllables); the last
    # column is -inf, read by roots as their (impossible) label emission.
    first_row = torch.tensor([0] + [h[0].shape[0] for h in heads]).cumsum(0).tolist()
    width = max(h[0].shape[2] for h in heads)
    row = per_node(first_row[:-1])[head] + utterance  # (nodes,) utterance row over all heads
    key_blank = row * width + per_node([h[3] for h in heads])[head]
    key_label = torch.where(is_root, key_blank, row * width + label)
    keys, column = torch.unique(torch.cat((key_label, key_blank)), return_inverse=True)
    max_frames = max(h[0].shape[1] for h in heads)
    table = torch.zeros(max_frames, len(keys) + 1, dtype=compute, device=device)
    table[:, -1] = NEG_INF
    for index, (log_probs, *_rest) in enumerate(heads):
        mine = torch.nonzero((keys >= first_row[index] * width) & (keys < first_row[index + 1] * width))[:, 0]
        b, c = (keys[mine] // width - first_row[index]), keys[mine] % width
        table[: log_probs.shape[1], mine] = log_probs.detach()[b, :, c].to(compute).t()
    columns = torch.stack((torch.where(is_root, len(keys), column[: len(order)]), column[len(order) :]))

    # Each candidate's score is read right after its utterance's last frame.
    frames = [int(n) for h in heads for n in h[1].tolist()]  # valid frames per (head, utterance)
    end = rank[per_node(trie.end)]
    end_frames = [frames[first_row[trie.head[v]] + trie.utterance[v]] for v in trie.end]
    read_after: dict[int, list[int]] = {}
    for position, n in enumerate(end_frames):
        read_after.setdefault(n, []).append(position)
    last = max(end_frames, default=0)
    with torch.inference_mode():
        if use_log:
            scores = _forward_log(parent=parent, skip_penalty=skip_penalty, is_root=is_root, table=table,
                                  columns=columns, reachable=reachable, end=end, read_after=read_after, last=last)
        else:
            # Insertion order, in which each candidate's new labels are consecutive nodes.
            scores = _forward_probability(
                parent=per_node(trie.parent), allowed=torch.isfinite(skip_penalty)[rank].double(),
                is_root=is_root[rank], table=table, columns=columns[:, rank], end=per_node(trie.end),
                read_after=read_after, last=last,
            )
            # See _forward_probability: below this floor a candidate may have lost paths to
            # underflow (or CTC cannot emit it at all); those few are scored again in log space.
            floor = LOG_TINY + math.log(2 * len(order) * max(last, 1)) - LOG_PRECISION
            lost = (scores < floor).nonzero()[:, 0].tolist()
            if lost:
                scores[lost] = _in_log_space(heads, lost).to(scores.dtype)
    return list(scores.to(dtype).split(counts))


def _in_log_space(heads: Sequence[tuple[Tensor, Tensor, Sequence, int]], positions: list[int]) -> Tensor:
    """`ctc_log_likelihood_heads` in log space for only the candidates at `positions` (ascending,
    in the flat head-major, utterance-major order of the results), concatenated in that order."""
    where = [(h, b, i) for h, (_, _, nested, _) in enumerate(heads) for b, cands in enumerate(nested)
             for i in range(len(cands))]
    subsets: list[list[list]] = [[[] for _ in nested] for _, _, nested, _ in heads]
    for p in positions:
        h, b, i = where[p]
        subsets[h][b].append(heads[h][2][b][i])
    parts = ctc_log_likelihood_heads(
        [(lp, lengths, subset, blank) for (lp, lengths, _, blank), subset in zip(heads, subsets, strict=True)],
        log_domain=True,
    )
    return torch.cat(parts)


def _forward_log(
    *, parent: Tensor, skip_penalty: Tensor, is_root: Tensor, table: Tensor, columns: Tensor,
    reachable: list[int], end: Tensor, read_after: dict[int, list[int]], last: int,
) -> Tensor:
    """The trie's CTC forward pass in log space (in the table's dtype): each candidate's log-likelihood, (N,)."""
    scores = table.new_full((end.shape[0],), NEG_INF)
    # Row 0: label states, row 1: blank states. Before frame 0 only the empty prefix (a root's
    # blank) has probability 1. Frames past an utterance's end update its nodes with padding
    # emissions; harmless, as their scores were already read and other tries never look at them.
    state = table.new_full((2, parent.shape[0]), NEG_INF)
    state[1].masked_fill_(is_root, 0.0)
    n = -1
    for t in range(last + 1):
        if t in read_after:
            index = torch.tensor(read_after[t], dtype=torch.long, device=end.device)
            scores[index] = torch.logaddexp(*state[:, end[index]])
        if t == last:
            break
        if t % EMISSION_CHUNK == 0:
            emissions = _emissions(table, columns, reachable, t, last)
        if n != reachable[min(t + 1, len(reachable) - 1)]:  # views change only while n grows
            n = reachable[min(t + 1, len(reachable) - 1)]
            up_index, skip_n, now, now_label = parent[:n], skip_penalty[:n], state[:, :n], state[0, :n]
        up_label, up_blank = state.index_select(1, up_index).unbind(0)
        via_parent = torch.logaddexp(up_blank, up_label.add_(skip_n))
        torch.logaddexp(now, torch.stack((via_parent, now_label)), out=now)
        now.add_(emissions[t % EMISSION_CHUNK, :, :n])
    return scores


def _forward_probability(
    *, parent: Tensor, allowed: Tensor, is_root: Tensor, table: Tensor, columns: Tensor, end: Tensor,
    read_after: dict[int, list[int]], last: int,
) -> Tensor:
    """The same forward pass on probabilities (float64) instead of log-probabilities: * and +
    instead of log-sum-exp, and no gather of the parents' states, since the nodes are in the
    trie's insertion order, where a node's parent is the node before it except at the first new
    label of each candidate (and at roots): the parents' states are a shifted slice, patched at
    those few nodes. `allowed`: 1 where the blank before a node may be skipped, else 0.

    Exactness: states are true probabilities (<= 1), so a state is lost to float64 only when it is
    below 2.2e-308 (then flushed or denormal). Whatever follows a state is a probability <= 1, so
    over 2 · nodes · frames states a candidate loses less than 2 · nodes · frames · 2.2e-308 in
    absolute probability, and every candidate above the caller's floor (that bound times 10^12,
    about -650 nats) is exact to float64 rounding; the rest are rescored in log space. A few
    seconds of speech put n-best lists far above it, minutes do not: hence log space past
    PROBABILITY_MAX_FRAMES.
    """
    n = parent.shape[0]
    scores = table.new_full((end.shape[0],), NEG_INF)
    patched = (parent != torch.arange(n, device=parent.device) - 1).nonzero()[:, 0]  # roots included
    patched_parent, patched_allowed = parent[patched], allowed[patched]
    probabilities = table.exp()
    state = table.new_zeros((2, n))  # row 0: label states, row 1: blank states
    state[1].masked_fill_(is_root, 1.0)
    label_state, blank_state = state.unbind(0)
    via_parent = table.new_empty(n)
    flat_columns, emissions = columns.reshape(-1), table.new_empty(2 * n)
    for t in range(last + 1):
        if t in read_after:
            index = torch.tensor(read_after[t], dtype=torch.long, device=end.device)
            scores[index] = state.index_select(1, end[index]).sum(0).log_()
        if t == last:
            break
        # One frame's emissions, into one buffer: a chunk of frames would be tens of MB, written
        # and read back from memory, where one frame stays in cache.
        torch.index_select(probabilities[t], 0, flat_columns, out=emissions)
        # via_parent(v) = blank(u) + allowed(v) · label(u), u = parent(v): the shifted slice, then
        # the patch (roots' labels emit nothing, so what a root gets here does not matter).
        torch.mul(label_state[:-1], allowed[1:], out=via_parent[1:]).add_(blank_state[:-1])
        via_parent.index_copy_(0, patched, blank_state.index_select(0, patched_parent).addcmul_(
            label_state.index_select(0, patched_parent), patched_allowed))
        blank_state.add_(label_state)
        label_state.add_(via_parent)
        state.mul_(emissions.view(2, n))
    return scores


def _emissions(table: Tensor, columns: Tensor, reachable: list[int], t: int, last: int) -> Tensor:
    """The emissions of frames t .. t + EMISSION_CHUNK - 1 for the label and blank states of the
    nodes reachable by then, in one gather: (chunk, 2, nodes)."""
    stop = min(t + EMISSION_CHUNK, last)
    chunk_width = reachable[min(stop, len(reachable) - 1)]
    emissions = table[t:stop].index_select(1, columns[:, :chunk_width].reshape(-1))
    return emissions.view(stop - t, 2, chunk_width)


def ctc_log_likelihood(
    log_probs: Tensor,
    lengths: Tensor,
    targets: Sequence[Sequence[Sequence[int]]] | Tensor,
    *,
    target_lengths: Tensor | None = None,
    owner: Tensor | None = None,
    blank_id: int = 0,
) -> Tensor:
    """Exact CTC log-likelihood of each candidate, (N,), on `log_probs.device`.

    log_probs: (B, T, V) log-probabilities; lengths: (B,) valid frames.
    targets: nested lists (utterance -> candidates -> label ids; the result is utterance-major),
    or a padded (N, L) tensor with `target_lengths` (N,) and `owner` (N,), the utterance index of
    each row (the result follows the rows). Infeasible candidates score -inf.
    """
    if not isinstance(targets, Tensor):
        return ctc_log_likelihood_heads([(log_probs, lengths, targets, blank_id)])[0]
    if target_lengths is None or owner is None:
        raise ValueError("padded targets (N, L) need target_lengths (N,) and owner (N,)")
    if targets.dim() != 2 or target_lengths.shape != targets.shape[:1] or owner.shape != targets.shape[:1]:
        raise ValueError(
            f"targets must be (N, L) with target_lengths and owner (N,), got {tuple(targets.shape)}, "
            f"{tuple(target_lengths.shape)}, {tuple(owner.shape)}"
        )
    B = log_probs.shape[0]
    owners = owner.tolist()
    if owners and not 0 <= min(owners) <= max(owners) < B:
        raise ValueError(f"owner indices must lie in [0, B={B}), got {owners}")
    # Group rows by utterance, score, and put the scores back in row order.
    nested: list[list[list[int]]] = [[] for _ in range(B)]
    slot: list[tuple[int, int]] = []
    for ids, n, b in zip(targets.tolist(), target_lengths.tolist(), owners, strict=True):
        slot.append((b, len(nested[b])))
        nested[b].append(ids[:n])
    scores = ctc_log_likelihood_heads([(log_probs, lengths, nested, blank_id)])[0]
    start = [0] + torch.tensor([len(c) for c in nested]).cumsum(0).tolist()
    return scores[torch.tensor([start[b] + i for b, i in slot], dtype=torch.long, device=scores.device)]
