"""Subtitle and segment files from timed words: SRT, WebVTT, TSV, JSON.

Words (from `timestamps.word_times`) are grouped into segments: a new segment starts at a pause of
at least `max_pause` seconds between words, or when the segment would grow past `max_seconds`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

FORMATS = ("srt", "vtt", "tsv", "json")
DEFAULT_MAX_PAUSE = 0.5  # s of silence between words that ends a subtitle
DEFAULT_MAX_SECONDS = 6.0  # s: longer subtitles are hard to read in one go


@dataclass(frozen=True)
class Segment:
    start: float  # seconds
    end: float
    text: str
    words: tuple[dict, ...]


def segments(words: Sequence[dict], max_pause: float = DEFAULT_MAX_PAUSE,
             max_seconds: float = DEFAULT_MAX_SECONDS) -> list[Segment]:
    """Group timed words ({"word", "start", "end"}, in order) into segments."""
    out: list[Segment] = []
    current: list[dict] = []
    for w in words:
        if current and (w["start"] - current[-1]["end"] >= max_pause or w["end"] - current[0]["start"] > max_seconds):
            out.append(_segment(current))
            current = []
        current.append(w)
    if current:
        out.append(_segment(current))
    return out


def _segment(words: list[dict]) -> Segment:
    return Segment(words[0]["start"], words[-1]["end"], " ".join(w["word"] for w in words), tuple(words))


def _clock(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def render(fmt: str, segs: Sequence[Segment], source: str = "") -> str:
    """The file's text in `fmt` (one of FORMATS)."""
    if fmt == "srt":
        return "".join(f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n\n"
                       for i, s in enumerate(segs, 1))
    if fmt == "vtt":
        return "WEBVTT\n\n" + "".join(f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n\n" for s in segs)
    if fmt == "tsv":
        return "start\tend\ttext\n" + "".join(f"{s.start:.3f}\t{s.end:.3f}\t{s.text}\n" for s in segs)
    if fmt == "json":
        doc = {"source": source, "segments": [
            {"start": s.start, "end": s.end, "text": s.text, "words": list(s.words)} for s in segs]}
        return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
    raise ValueError(f"unknown subtitle format {fmt!r}: use one of {', '.join(FORMATS)}")
