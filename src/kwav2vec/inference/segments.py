"""A long file's log-prob stream cut at pauses: memory bounded by one segment, a word break at each pause.

The windows of a long file (chunking.py) hand over their kept frames in order. Holding the whole
file's log-probabilities until its end makes memory grow with its length (both heads of the demo
model: 50 frames/s x (70 + 337) outputs x 4 bytes, 0.27 GiB an hour, plus the decoders' copies;
bench/longform.py measured 987 MiB at 1 minute and 2322 MiB at 60). Instead the stream is cut where
the model is silent: a run of at least `min_pause` frames on which every head's best label is blank.
The cut goes at the run's middle frame; the segment before it is decoded at once and its log-probs
are dropped. Without such a pause for `max_segment` frames, the stream is cut at the most certainly
blank frame of the open segment's second half, so an open segment never exceeds `max_segment`.

Why the result is the continuous stream's, up to the word breaks:
- greedy labels are per frame, so the concatenated segments' tokens are exactly the stream's (a cut
  falls on a blank frame, which separates tokens anyway);
- a beam search's prefixes all end in blank on a frame where blank is every head's best label, up
  to the mass of the other labels, so it nearly factorises there; the n-best of the file is then the
  exact k-best of the segments' n-best lists combined (`combine`);
- a pause is a word break. The demo model, trained on single short utterances, emits no word
  boundary across silences between them (bench/longform.py, 2026-12-02: 1 of 60 utterance onsets
  had a word starting there), so the joined stream glued words across every pause.
`min_pause = 0` turns cutting off: one segment per file, decoded when its last window is in.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import torch
from torch import Tensor

from kwav2vec.decoding.beam import Hypothesis
from kwav2vec.inference.chunking import FRAME_SECONDS, Window

DEFAULT_PAUSE_SECONDS = 0.3  # see the README's long-recordings figures (bench/longform.py --pauses)
# A segment is re-encoded alone (predict.py), so one at most this long must cost no more than a
# first-pass window (20 s + 2 x 2 s of context): a random BASE model peaked 124 MiB higher on one 30 s
# segment than on four 24 s windows (live memory, 2026-12-03). The demo's joined test utterances
# (2-4 s between 0.3-0.7 s pauses) are cut at pauses long before either limit.
DEFAULT_MAX_SEGMENT_SECONDS = 20.0


@dataclass(frozen=True)
class SegmentConfig:
    """Frames: `min_pause` of all-blank best labels cut the stream (0: never), `max_segment` at most
    in one segment."""

    min_pause: int
    max_segment: int

    @classmethod
    def from_seconds(cls, pause_seconds: float, max_segment_seconds: float) -> SegmentConfig:
        if pause_seconds < 0:
            raise ValueError(f"--pause-seconds must be >= 0 (0: no cutting), got {pause_seconds}")
        min_pause = round(pause_seconds / FRAME_SECONDS)
        if pause_seconds > 0 and min_pause < 2:
            raise ValueError(f"--pause-seconds must be 0 or at least {2 * FRAME_SECONDS} s (two frames), "
                             f"got {pause_seconds}")
        max_segment = round(max_segment_seconds / FRAME_SECONDS)
        if min_pause and max_segment < 2 * min_pause:
            raise ValueError(f"--max-segment-seconds ({max_segment_seconds}) must be at least twice "
                             f"--pause-seconds ({pause_seconds})")
        return cls(min_pause, max_segment if min_pause else 0)


@dataclass
class Segment:
    """Frames [start, start + frames) of file `index`; log_probs: head -> (frames, V) or None."""

    index: int
    start: int
    log_probs: dict[str, Tensor | None]
    last: bool  # the file's last segment: its results are complete after this one

    @property
    def frames(self) -> int:
        return next(lp.shape[0] for lp in self.log_probs.values() if lp is not None)


@dataclass
class _Open:
    """One file's state: the next window expected, windows that came early, the open segment."""

    next_window: int = 0
    early: dict[int, tuple[Window, dict]] = field(default_factory=dict)
    start: int = 0  # file frame of the open segment's first frame
    parts: list[dict[str, Tensor | None]] = field(default_factory=list)


class StreamSegmenter:
    """Turns each long file's windows (in any order) into closed segments, in file order.

    blank_ids: head -> its vocabulary's blank id (the heads the model has).
    """

    def __init__(self, config: SegmentConfig, blank_ids: dict[str, int]) -> None:
        self.config, self.blank_ids = config, blank_ids
        self._files: dict[int, _Open] = {}

    def add(self, index: int, window: Window, log_probs: dict[str, Tensor | None]) -> list[Segment]:
        """log_probs: head -> (T_w, V) of this window. Returns the segments this window closed."""
        state = self._files.setdefault(index, _Open())
        kept = {h: None if lp is None else lp[window.keep_from: window.keep_to].clone() for h, lp in log_probs.items()}
        state.early[window.number] = (window, kept)
        out: list[Segment] = []
        while state.next_window in state.early:
            w, part = state.early.pop(state.next_window)
            state.parts.append(part)
            state.next_window += 1
            last = state.next_window == w.count
            out += self._cut(index, state, final=last)
            if last:
                del self._files[index]
                seen = out[-1].start + out[-1].frames
                if seen != w.total_frames:
                    raise RuntimeError(f"segmented {seen} frames of file {index}, expected {w.total_frames}")
        return out

    def drop(self, index: int) -> None:
        """Forget a file (one of its blocks failed to load)."""
        self._files.pop(index, None)

    def pending(self) -> list[int]:
        """Files with frames not yet handed out as segments (none once every file's last window came)."""
        return sorted(self._files)

    def _cut(self, index: int, state: _Open, final: bool) -> list[Segment]:
        if not self.config.min_pause and not final:
            return []  # no cutting: join the windows once, at the end (not once per window)
        heads = [h for h in state.parts[0] if state.parts[0][h] is not None]
        open_lp = {h: torch.cat([p[h] for p in state.parts]) if h in heads else None for h in state.parts[0]}
        state.parts = [open_lp]
        out: list[Segment] = []
        cfg = self.config
        while cfg.min_pause:
            frames = open_lp[heads[0]].shape[0]
            blank = torch.ones(frames, dtype=torch.bool)
            for h in heads:
                blank &= open_lp[h].argmax(dim=-1) == self.blank_ids[h]
            cut = _pause_cut(blank, cfg.min_pause)
            if cut is None and frames > cfg.max_segment:
                # no pause for too long: the second half's frame where blank is most certain in every head
                lo, hi = cfg.max_segment // 2, cfg.max_segment
                certainty = sum(open_lp[h][lo:hi, self.blank_ids[h]] for h in heads)
                cut = lo + int(torch.argmax(certainty))
            if cut is None or cut >= frames:
                break
            out.append(Segment(index, state.start, {h: None if lp is None else lp[:cut] for h, lp in open_lp.items()},
                               last=False))
            open_lp = {h: None if lp is None else lp[cut:].clone() for h, lp in open_lp.items()}
            state.parts, state.start = [open_lp], state.start + cut
        if final:
            out.append(Segment(index, state.start, open_lp, last=True))
        return out


def _pause_cut(blank: Tensor, min_pause: int) -> int | None:
    """The middle frame of the first run of >= min_pause True values in `blank` (T,) with frames on
    both sides (a run at either end is silence before or after speech, or may still grow); None if none."""
    values = blank.tolist()
    run_start = None
    for t, b in enumerate(values):
        if b and run_start is None:
            run_start = t
        elif not b and run_start is not None:
            if t - run_start >= min_pause and run_start > 0:
                return run_start + (t - run_start) // 2
            run_start = None
    return None


# -------------------------------------------------------------------------------------- joining
def combine(nbests: list[list[Hypothesis]], k: int) -> list[Hypothesis]:
    """The k best hypotheses of the file from its segments' n-best lists (each best first): every
    choice of one hypothesis per segment, text = the non-empty texts joined by spaces, score and
    details summed; exact k-best by a lazy frontier over rank vectors."""
    lists = [hyps for hyps in nbests if hyps]
    if not lists:
        return []
    if k == 1 or all(len(hyps) == 1 for hyps in lists):
        return [_joined([hyps[0] for hyps in lists])]

    def total(ranks: tuple[int, ...]) -> float:
        return sum(lists[s][r].score for s, r in enumerate(ranks))

    start = (0,) * len(lists)
    heap, seen, out = [(-total(start), start)], {start}, []
    while heap and len(out) < k:
        _, ranks = heapq.heappop(heap)
        out.append(_joined([lists[s][r] for s, r in enumerate(ranks)]))
        for s in range(len(lists)):
            if ranks[s] + 1 < len(lists[s]):
                nxt = ranks[:s] + (ranks[s] + 1,) + ranks[s + 1:]
                if nxt not in seen:
                    seen.add(nxt)
                    heapq.heappush(heap, (-total(nxt), nxt))
    return out


def _joined(hyps: list[Hypothesis]) -> Hypothesis:
    details: dict[str, float] = {}
    for h in hyps:
        for key, value in h.details.items():
            details[key] = details.get(key, 0.0) + value
    return Hypothesis(" ".join(h.text for h in hyps if h.text), sum(h.score for h in hyps), details)


def shift_words(words: list[dict], seconds: float) -> list[dict]:
    """Word (and syllable) times of a segment moved to the file's clock."""
    def moved(item: dict) -> dict:
        out = {**item, "start": round(item["start"] + seconds, 3), "end": round(item["end"] + seconds, 3)}
        if "syllables" in item:
            out["syllables"] = [moved(s) for s in item["syllables"]]
        return out

    return [moved(w) for w in words]
