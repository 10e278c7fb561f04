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

`ErrorCounts` holds the numerators and denominators of every rate at once, so they can be summed
over batches and ranks and turned into rates at the end: validation (`lit/evaluation.py`) and
`kwav2vec evaluate` (`inference/report.py`) count with it, each pair normalised and each distance
computed once. The rate functions below give the same numbers for one list of pairs.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Collection, Sequence
from dataclasses import astuple, dataclass, fields

import torch
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


def _jamo(text: str, keep_spaces: bool = False) -> str:
    """`text` (in scoring form) as conjoining jamo, spaces dropped unless `keep_spaces`."""
    return decompose((" " if keep_spaces else "").join(text.split()))


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
    return _rate([(ref.split(), _space_normalized(ref, hyp).split()) for ref, hyp in pairs])


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
    return _space_normalized(normalize_for_scoring(ref), normalize_for_scoring(hyp))


def _space_normalized(ref: str, hyp: str) -> str:
    """`space_normalize` of two strings already in scoring form."""
    ref_chars, ref_starts = _char_tokens(ref)
    hyp_chars, hyp_starts = _char_tokens(hyp)
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
    return _rate([(_jamo(ref, keep_spaces), _jamo(hyp, keep_spaces)) for ref, hyp in pairs])


def oov_recovery_counts(
    refs: Sequence[str], hyps: Sequence[str], known_syllables: Collection[str] | Vocabulary
) -> tuple[int, int]:
    """(recovered, total) reference occurrences of syllables outside `known_syllables`.

    An occurrence is recovered when a minimum-edit character alignment (spaces included, as
    for CER) matches it to the same character in the hypothesis.
    """
    known = _known_set(known_syllables)
    recovered = total = 0
    for ref, hyp in _pairs(refs, hyps):
        r, t = _oov_pair(ref, hyp, known)
        recovered, total = recovered + r, total + t
    return recovered, total


def _known_set(known_syllables: Collection[str] | Vocabulary) -> set[str]:
    return set(known_syllables.symbols) if isinstance(known_syllables, Vocabulary) else set(known_syllables)


def _oov_pair(ref: str, hyp: str, known: set[str]) -> tuple[int, int]:
    """(recovered, total) OOV syllables of one pair in scoring form (see `oov_recovery_counts`)."""
    oov = [i for i, char in enumerate(ref) if char != " " and char not in known]
    if not oov:
        return 0, 0
    matched: set[int] = set()
    for op in Levenshtein.opcodes(ref, hyp):
        if op.tag == "equal":
            matched.update(range(op.src_start, op.src_end))
    return sum(i in matched for i in oov), len(oov)


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


# ---------------------------------------------------------------------------------------- counts
@dataclass
class ErrorCounts:
    """Edit counts of a set of utterances, both sides in scoring form (`normalize_for_scoring`): the
    numerators and denominators of the corpus rates, summed with `+` over batches (and over ranks
    with `to_tensor` / `from_tensor`), so the rates weigh characters, not batches.

        counts = ErrorCounts().add(refs, hyps, known_syllables)   # or ErrorCounts.of(ref, hyp)
        counts.rates()  # {"cer": ..., "wer": ..., "swer": ..., "jer": ..., "oov_recovery": ...}
    """

    utterances: int = 0
    empty_refs: int = 0  # references empty after normalisation: no defined rate, not counted
    char_errors: int = 0  # CER: spaces are characters
    ref_chars: int = 0
    word_errors: int = 0  # WER
    ref_words: int = 0
    spaced_word_errors: int = 0  # sWER (hypothesis re-spaced by `space_normalize`), over ref_words
    jamo_errors: int = 0  # jamo error rate (spaces dropped), over ref_jamo
    ref_jamo: int = 0
    oov_recovered: int = 0  # reference syllables outside the known ones that came out right
    oov_total: int = 0  # (both 0 when no known syllables were given)

    @classmethod
    def of(cls, ref: str, hyp: str, known: set[str] | None = None) -> ErrorCounts:
        """The counts of one utterance whose `ref` (non-empty) and `hyp` are in scoring form;
        `known`: the known syllables, for the OOV counts."""
        ref_words, hyp_words = ref.split(), hyp.split()
        ref_jamo = _jamo(ref)
        recovered, total = _oov_pair(ref, hyp, known) if known is not None else (0, 0)
        return cls(
            utterances=1, char_errors=Levenshtein.distance(ref, hyp), ref_chars=len(ref),
            word_errors=Levenshtein.distance(ref_words, hyp_words), ref_words=len(ref_words),
            spaced_word_errors=Levenshtein.distance(ref_words, _space_normalized(ref, hyp).split()),
            jamo_errors=Levenshtein.distance(ref_jamo, _jamo(hyp)), ref_jamo=len(ref_jamo),
            oov_recovered=recovered, oov_total=total,
        )

    @classmethod
    def chars(cls, ref: str, hyp: str) -> ErrorCounts:
        """Only the CER counts of one pair in scoring form (what weight tuning compares; the others
        stay 0)."""
        return cls(utterances=1, char_errors=Levenshtein.distance(ref, hyp), ref_chars=len(ref))

    def add(self, refs: Sequence[str], hyps: Sequence[str],
            known_syllables: Collection[str] | Vocabulary | None = None, *,
            refs_normalized: bool = False) -> ErrorCounts:
        """Adds the pairs (any form: each side is normalised here, once; `refs_normalized`: the
        caller already put the references in scoring form, e.g. once for several heads); references
        empty after normalisation are counted in `empty_refs` only. Returns self."""
        known = _known_set(known_syllables) if known_syllables is not None else None
        for ref, hyp in zip(refs, hyps, strict=True):
            ref = ref if refs_normalized else normalize_for_scoring(ref)
            if not ref:
                self.empty_refs += 1
                continue
            self += ErrorCounts.of(ref, normalize_for_scoring(hyp), known)
        return self

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def __iadd__(self, other: ErrorCounts) -> ErrorCounts:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def to_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(len(fields),) float64 (exact for counts below 2**53), for a sum over ranks."""
        return torch.tensor(astuple(self), dtype=torch.float64, device=device)

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> ErrorCounts:
        return cls(*(int(round(v)) for v in values.tolist()))

    def rates(self) -> dict[str, float]:
        """cer, wer, swer, jer and oov_recovery; NaN where the denominator is 0 (no utterance, or
        no OOV syllable)."""
        def rate(num: int, den: int) -> float:
            return num / den if den else math.nan

        return {"cer": rate(self.char_errors, self.ref_chars), "wer": rate(self.word_errors, self.ref_words),
                "swer": rate(self.spaced_word_errors, self.ref_words), "jer": rate(self.jamo_errors, self.ref_jamo),
                "oov_recovery": rate(self.oov_recovered, self.oov_total)}
