"""Model-like CTC outputs of both heads for real transcripts, when no trained checkpoint is at hand.

Frames are shared by the heads as a hierarchical model's are: every jamo of a text gets
`FRAMES_PER_JAMO` frames (about 3 s for 15 syllables at 20 ms a frame), the jamo on the first and
blanks after it; the syllable head emits its syllable (or `<unk>`) on the first frame of the
syllable's span, and `|` where the grapheme head does. Logits = `confidence` on the path's label
+ a blank bias + Gaussian noise, plus on label frames a few confusable competitors `gap` below
the path (random labels, fixed per utterance): "peaky" outputs are a well-trained model's (one
token per frame, few live beams), "flat" ones a weakly trained model's (several tokens above
pyctcdecode's -5 threshold per frame and many beams within 10 nats of the best).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kwav2vec.text.vocab import Vocabulary

FRAMES_PER_JAMO = 3


@dataclass(frozen=True)
class Style:
    confidence: float  # logit of the path's label
    noise: float  # std of the Gaussian logit noise
    competitors: int  # confusable labels on each label frame
    gap: float  # how far (logits) below the path label they sit
    blank_bias: float  # extra logit of blank on every frame


STYLES = {
    "peaky": Style(confidence=14.0, noise=1.0, competitors=1, gap=5.0, blank_bias=10.0),
    "flat": Style(confidence=8.0, noise=1.0, competitors=2, gap=1.0, blank_bias=7.5),
}


def _head_paths(text: str, grapheme: Vocabulary, syllable: Vocabulary) -> tuple[list[int], list[int]]:
    g_path: list[int] = []
    s_path: list[int] = []
    for unit in text:
        jamo = [grapheme.word_boundary_id] if unit == " " else grapheme.encode(unit)
        for j in jamo:
            g_path += [j] + [grapheme.blank_id] * (FRAMES_PER_JAMO - 1)
        s_token = syllable.word_boundary_id if unit == " " else syllable.encode(unit)[0]
        s_path += [s_token] + [syllable.blank_id] * (FRAMES_PER_JAMO * len(jamo) - 1)
    return g_path, s_path


def _log_probs(paths: list[list[int]], V: int, style: Style, generator: torch.Generator) -> torch.Tensor:
    T = max(len(p) for p in paths)
    logits = style.noise * torch.randn(len(paths), T, V, generator=generator)
    logits[:, :, 0] += style.blank_bias
    for b, path in enumerate(paths):
        ids = torch.tensor(path + [0] * (T - len(path)))
        logits[b, torch.arange(T), ids] += style.confidence
        label_frames = torch.nonzero(ids != 0)[:, 0]
        if style.competitors and len(label_frames):
            rivals = torch.randint(3, V, (len(label_frames), style.competitors), generator=generator)
            rows = label_frames[:, None].expand_as(rivals)
            logits[b, rows, rivals] += style.confidence - style.gap
    return logits.log_softmax(-1)


def model_like(
    texts: Sequence[str], grapheme: Vocabulary, syllable: Vocabulary, style: str | Style, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grapheme log-probs (B, T, Vg), syllable log-probs (B, T, Vs), frames (B,)) for `texts`."""
    if isinstance(style, str):
        style = STYLES[style]
    generator = torch.Generator().manual_seed(seed)
    paths = [_head_paths(t, grapheme, syllable) for t in texts]
    g = _log_probs([p[0] for p in paths], len(grapheme), style, generator)
    s = _log_probs([p[1] for p in paths], len(syllable), style, generator)
    return g, s, torch.tensor([len(p[0]) for p in paths])
