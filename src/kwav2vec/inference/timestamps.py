"""Word (and syllable) times from the CTC alignment of the chosen hypothesis.

Frame t of the encoder covers 16 kHz samples [320 t, 320 t + 400): its time is t × 20 ms. A token
emitted on frames a..b (its run in the alignment, repeats merged) spans [a × 0.02, (b + 1) × 0.02) s;
a word spans from its first token's start to its last token's end. Blanks between words are pauses.

Which alignment:
- greedy decoders: the best path itself (the alignment greedy decoding picked);
- beam decoders: the Viterbi (forced) alignment of the hypothesis on its head's log-probs;
- joint decoders: a joint hypothesis is a text, not a path. It is aligned on the grapheme head, which
  spells any syllable and places onsets better: on the joined demo test set (bench/longform.py,
  2026-12-02) 57 of 60 utterance onsets came within 0.2 s on the grapheme alignment against 51-52 on
  the syllable head's. Syllable times are those of each syllable's jamo run; the syllable head's own
  alignment is used only when the model has no grapheme head. `times_from` names the head.
Forced alignment costs T × (2L + 1) steps and bytes; above `MAX_ALIGN_CELLS` (a long file decoded
by a beam) the head's best path gives the times instead and `times_from` says "<head> best path".
"""

from __future__ import annotations

import torch
import torchaudio.functional as AF
from torch import Tensor

from kwav2vec.inference.chunking import FRAME_SECONDS
from kwav2vec.text.hangul import decompose
from kwav2vec.text.vocab import Vocabulary

MAX_ALIGN_CELLS = 200_000_000  # T × (2L + 1): about 200 MB of back-pointers


def token_spans(path: Tensor, blank_id: int) -> list[tuple[int, int, int]]:
    """(token id, first frame, last frame) of each emitted token of a frame-label path (T,)."""
    spans: list[tuple[int, int, int]] = []
    prev = blank_id
    for t, label in enumerate(path.tolist()):
        if label != blank_id and label == prev:
            spans[-1] = (label, spans[-1][1], t)
        elif label != blank_id:
            spans.append((label, t, t))
        prev = label
    return spans


def words_from_spans(spans: list[tuple[int, int, int]], vocab: Vocabulary, syllables: bool) -> list[dict]:
    """Group token spans into words at the word-boundary token: [{"word", "start", "end"} (+
    "syllables": [{"text", "start", "end"}] when `syllables`)], seconds rounded to the millisecond."""
    words, current = [], []

    def close() -> None:
        if not current:
            return
        text = vocab.decode([tok for tok, _, _ in current]).strip()
        if text:
            word = {"word": text, "start": _sec(current[0][1]), "end": _sec(current[-1][2] + 1)}
            if syllables and vocab.kind == "syllable":
                word["syllables"] = [{"text": vocab.id_to_token(tok), "start": _sec(a), "end": _sec(b + 1)}
                                     for tok, a, b in current]
            elif syllables:
                groups = _jamo_groups(text, current)
                if groups is not None:
                    word["syllables"] = groups
            words.append(word)
        current.clear()

    for span in spans:
        if span[0] == vocab.word_boundary_id:
            close()
        else:
            current.append(span)
    close()
    return words


def _jamo_groups(word: str, spans: list[tuple[int, int, int]]) -> list[dict] | None:
    """Syllable times of a word aligned on jamo: each syllable of `word` (the composed text of the
    spans) spans its jamo's runs. None when the word's jamo do not match the spans one for one."""
    sizes = [len(decompose(ch)) for ch in word]
    if sum(sizes) != len(spans):
        return None
    out, i = [], 0
    for ch, n in zip(word, sizes, strict=True):
        out.append({"text": ch, "start": _sec(spans[i][1]), "end": _sec(spans[i + n - 1][2] + 1)})
        i += n
    return out


def _sec(frame: int) -> float:
    return round(frame * FRAME_SECONDS, 3)


def forced_path(log_probs: Tensor, ids: list[int], blank_id: int) -> Tensor:
    """Viterbi frame labels (T,) of the token sequence `ids` on log-probs (T, V)."""
    targets = torch.tensor([ids], dtype=torch.int32)
    path, _ = AF.forced_align(log_probs[None].float(), targets, blank=blank_id)
    return path[0]


def word_times(
    decoder: str, text: str, log_probs: dict[str, Tensor | None], vocabs: dict[str, Vocabulary]
) -> tuple[list[dict], str]:
    """(words with times, what they come from) for `decoder`'s best text on one file's log-probs
    (head -> (T, V), valid frames only)."""
    kind, variant = decoder.split("-")
    if kind == "joint":
        head = "grapheme" if log_probs.get("grapheme") is not None else "syllable"
    else:
        head = variant
    lp, vocab = log_probs[head], vocabs[head]
    assert lp is not None
    syllables = head == "syllable" or kind == "joint"
    ids = [i for i in vocab.encode(text)]
    best = lp.argmax(dim=-1)
    if kind == "greedy" or not ids:
        path, source = best, f"{head} best path"
    elif lp.shape[0] * (2 * len(ids) + 1) > MAX_ALIGN_CELLS:
        path, source = best, f"{head} best path"
    else:
        try:
            path, source = forced_path(lp, ids, vocab.blank_id), f"{head} alignment"
        except RuntimeError:  # more tokens than frames allow: the text cannot be aligned on this head
            path, source = best, f"{head} best path"
    if kind == "greedy":
        source = f"{head} alignment"  # the best path is greedy's own alignment
    return words_from_spans(token_spans(path, vocab.blank_id), vocab, syllables), source
