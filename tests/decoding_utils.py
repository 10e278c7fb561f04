"""Hand-made CTC emissions shared by the tests/test_decoding_*.py files."""

from __future__ import annotations

import math

import torch

from kwav2vec.text.vocab import Vocabulary

BLANK = 0

# The syllable vocabulary of the joint tests: "뷁" is not in it, the grapheme vocabulary spells it.
SYLLABLE_TEXTS = ["안녕 하세요", "반갑 습니다", "감사 합니다"]


def vocabularies() -> tuple[Vocabulary, Vocabulary]:
    return Vocabulary.grapheme(), Vocabulary.syllables_from_texts(SYLLABLE_TEXTS)


def peaked(path: list[int], vocab_size: int, peak: float) -> torch.Tensor:
    """(T, V) log-probs: frame t puts `peak` on path[t], the rest spread evenly over the others."""
    probs = torch.full((len(path), vocab_size), (1.0 - peak) / (vocab_size - 1))
    probs[torch.arange(len(path)), torch.tensor(path, dtype=torch.long)] = peak
    return probs.log()


def aligned_paths(text: str, grapheme: Vocabulary, syllable: Vocabulary) -> tuple[list[int], list[int]]:
    """Frame paths of both heads for one text, on shared frames.

    Each jamo gets a frame followed by a blank; the syllable head emits its syllable (or <unk>)
    on the first frame of the syllable's span and blanks on the rest.
    """
    g_path, s_path = [], []
    for unit in text:
        jamo = grapheme.encode(unit) if unit != " " else [grapheme.word_boundary_id]
        span = 2 * len(jamo)
        for j in jamo:
            g_path += [j, BLANK]
        s_token = syllable.word_boundary_id if unit == " " else syllable.encode(unit)[0]
        s_path += [s_token] + [BLANK] * (span - 1)
    return g_path, s_path


def pad_batch(rows: list[torch.Tensor], fill: float = math.nan) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (T_b, V) rows into (B, T, V); padding frames hold `fill` (NaN: must never be read)."""
    T = max(r.shape[0] for r in rows)
    out = torch.full((len(rows), T, rows[0].shape[1]), fill, dtype=rows[0].dtype)
    for b, r in enumerate(rows):
        out[b, : r.shape[0]] = r
    return out, torch.tensor([r.shape[0] for r in rows])


def random_log_probs(generator: torch.Generator, T: int, V: int, sharpness: float = 3.0) -> torch.Tensor:
    """(T, V) log-probs with a few plausible tokens per frame, blank favoured."""
    logits = sharpness * torch.randn(T, V, generator=generator)
    logits[:, BLANK] += sharpness
    return logits.log_softmax(-1)
