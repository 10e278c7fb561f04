"""Corpus-level error rates for Korean ASR: CER, WER, sWER, jamo error rate, OOV recovery.

Every metric takes parallel lists of reference and hypothesis strings and returns
``total edits / total reference length`` over the corpus (so long utterances weigh more, as in
sclite, jiwer and the K-wav2vec scripts); rates are >= 0 and may exceed 1 with many insertions.

Both sides are first put in the form K-wav2vec's evaluation uses (``unicodedata.normalize("NFC")``
and ``" ".join(text.split())``): NFC so that jamo output of a grapheme model is compared as
syllables, and single spaces so that stray whitespace is not counted as errors. A reference that
is empty after this has no defined error rate and raises ValueError; an empty hypothesis is fine
(all deletions).

Edit distances use rapidfuzz's Levenshtein (unit costs, C++; also what jiwer uses inside), which
is exact and fast enough for whole test sets.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Collection, Sequence

from rapidfuzz.distance import Levenshtein

from kwav2vec.text.hangul import decompose
from kwav2vec.text.vocab import Vocabulary


def normalize_for_scoring(text: str) -> str:
    """NFC and single spaces, trimmed: the form both sides are scored in."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def _pairs(refs: Sequence[str], hyps: Sequence[str]) -> list[tuple[str, str]]:
    """Validate the inputs and return normalized (ref, hyp) pairs."""
    if isinstance(refs, str) or isinstance(hyps, str):
        raise TypeError("refs and hyps must be lists of strings, not a single string")
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if len(refs) == 0:
        raise ValueError("no references to score")
    pairs = []
    for i, (ref, hyp) in enumerate(zip(refs, hyps, strict=True)):
        if not isinstance(ref, str) or not isinstance(hyp, str):
            raise TypeError(
                f"utterance {i}: expected str reference and hypothesis, got "
                f"{type(ref).__name__} and {type(hyp).__name__}"
            )
        ref, hyp = normalize_for_scoring(ref), normalize_for_scoring(hyp)
        if not ref:
            raise ValueError(
                f"utterance {i}: the reference is empty, its error rate is undefined "
                f"(hypothesis {hyp!r}); remove it from the test set"
            )
        pairs.append((ref, hyp))
    return pairs


def _rate(pairs: list[tuple[Sequence, Sequence]]) -> float:
    errors = sum(Levenshtein.distance(ref, hyp) for ref, hyp in pairs)
    return errors / sum(len(ref) for ref, _ in pairs)


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Character error rate with spaces counted as characters (as K-wav2vec's infer script)."""
    return _rate(_pairs(refs, hyps))


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Word error rate, words split on whitespace."""
    return _rate([(ref.split(), hyp.split()) for ref, hyp in _pairs(refs, hyps)])


def swer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Space-normalized WER: WER after giving the hypothesis the reference's word spacing.

    Korean spacing is loosely standardised, so plain WER punishes spacing variants. The
    KsponSpeech paper's sWER (ESPnet recipe, see `space_normalize`) re-spaces each hypothesis
    where its characters align with the reference's, then scores WER as usual.
    """
    pairs = _pairs(refs, hyps)
    return _rate([(ref.split(), space_normalize(ref, hyp).split()) for ref, hyp in pairs])


def space_normalize(ref: str, hyp: str) -> str:
    """The hypothesis with the reference's spacing wherever their characters align.

    A re-implementation of ESPnet's ``egs2/ksponspeech/asr1/local/get_space_normalized_hyps.py``
    (ETRI, Jeong-Uk Bang; used by ``egs/ksponspeech/asr1/local/score_sclite.sh`` for sWER):
    each non-space character is a token that remembers whether a word starts at it ("▁" there);
    hypothesis and reference tokens are aligned by Levenshtein on the characters alone (Kaldi's
    align-text, ties prefer substitution/match, then deletion over insertion); a hypothesis
    token matched to an equal reference character takes the reference's word-start flag;
    substituted and inserted characters keep the hypothesis's own spacing. ESPnet then scores
    with sclite, whose weighted alignment can count a few errors differently in rare ties; we
    score with the plain Levenshtein distance like every other metric here.
    K-wav2vec's copy of this function treats spaces as separate tokens instead, which can give
    slightly different results when a space is aligned against a character.
    """
    ref_chars, ref_starts = _char_tokens(normalize_for_scoring(ref))
    hyp_chars, hyp_starts = _char_tokens(normalize_for_scoring(hyp))
    rows, cols = len(hyp_chars), len(ref_chars)
    # scores[h][r]: cost of aligning hyp[:h] with ref[:r] (ESPnet's orientation)
    scores = [[0] * (cols + 1) for _ in range(rows + 1)]
    scores[0] = list(range(cols + 1))
    for h in range(1, rows + 1):
        row, above = scores[h], scores[h - 1]
        row[0] = h
        hyp_char = hyp_chars[h - 1]
        for r in range(1, cols + 1):
            row[r] = min(above[r - 1] + (hyp_char != ref_chars[r - 1]), above[r] + 1, row[r - 1] + 1)
    starts = list(hyp_starts)
    h, r = rows, cols
    while h > 0 and r > 0:
        diagonal = scores[h - 1][r - 1] + (hyp_chars[h - 1] != ref_chars[r - 1])
        insertion, deletion = scores[h - 1][r] + 1, scores[h][r - 1] + 1
        if diagonal <= min(insertion, deletion):
            if hyp_chars[h - 1] == ref_chars[r - 1]:
                starts[h - 1] = ref_starts[r - 1]
            h, r = h - 1, r - 1
        elif insertion < deletion:
            h -= 1
        else:
            r -= 1
    # Whatever is left (h > 0 xor r > 0) is pure insertions or deletions: spacing unchanged.
    return "".join(
        (" " if start and i else "") + char
        for i, (char, start) in enumerate(zip(hyp_chars, starts, strict=True))
    )


def _char_tokens(text: str) -> tuple[list[str], list[bool]]:
    """Non-space characters and, for each, whether a word starts there."""
    chars, starts = [], []
    for word in text.split():
        chars.extend(word)
        starts.extend([True] + [False] * (len(word) - 1))
    return chars, starts


def jamo_error_rate(refs: Sequence[str], hyps: Sequence[str], *, keep_spaces: bool = False) -> float:
    """Edit distance over conjoining jamo (`decompose`) divided by the reference's jamo count.

    By default spaces are removed first, so the rate measures spelling only (spacing is what
    CER vs. sWER already show); ``keep_spaces=True`` counts spaces as symbols, like the grapheme
    head's `|` targets. Non-Hangul characters count as one symbol each.
    """
    pairs = _pairs(refs, hyps)
    join = " ".join if keep_spaces else "".join
    return _rate([(decompose(join(ref.split())), decompose(join(hyp.split()))) for ref, hyp in pairs])


def oov_recovery_counts(
    refs: Sequence[str], hyps: Sequence[str], known_syllables: Collection[str] | Vocabulary
) -> tuple[int, int]:
    """(recovered, total) reference occurrences of syllables outside `known_syllables`.

    An occurrence is recovered when a minimum-edit character alignment (spaces included, as
    for CER) matches it to the same character in the hypothesis.
    """
    known = set(known_syllables.symbols) if isinstance(known_syllables, Vocabulary) else set(known_syllables)
    recovered = total = 0
    for ref, hyp in _pairs(refs, hyps):
        oov = [i for i, char in enumerate(ref) if char != " " and char not in known]
        if not oov:
            continue
        total += len(oov)
        matched: set[int] = set()
        for op in Levenshtein.opcodes(ref, hyp):
            if op.tag == "equal":
                matched.update(range(op.src_start, op.src_end))
        recovered += sum(i in matched for i in oov)
    return recovered, total


def oov_recovery(
    refs: Sequence[str], hyps: Sequence[str], known_syllables: Collection[str] | Vocabulary
) -> float:
    """Share of reference syllables unseen in training (not in `known_syllables`) recognised correctly.

    `known_syllables` is typically the training syllable vocabulary (a `Vocabulary` or its
    symbols). Returns NaN when the references contain no such syllable: the rate is undefined
    there, and NaN keeps a metrics summary honest instead of reporting 0 or 1.
    """
    recovered, total = oov_recovery_counts(refs, hyps, known_syllables)
    return recovered / total if total else math.nan
