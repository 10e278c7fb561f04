"""Transcript normalization for Korean ASR, including KsponSpeech markup.

Output text is NFC, single-spaced, without punctuation, and made only of Hangul syllables plus
(depending on the policies) digits and Latin letters.

KsponSpeech transcription markup (AI Hub "한국어 음성 전사규칙 v1.0"), as handled by the public
recipes we compared (KoSpeech / K-wav2vec ``preprocess.py``, ESPnet ``egs2/ksponspeech``
``local/get_transcriptions.py``):

- ``(A)/(B)`` dual transcription: A is the orthographic ("spelling") form, B what was said
  ("phonetic"), e.g. ``(3시)/(세 시)``, ``(SNS)/(에스 엔 에스)``. We keep one side. Spaces around
  the middle slash are tolerated (ESPnet does the same). Nested pairs are resolved innermost
  first; a parenthesis left over afterwards is malformed markup (ESPnet skips such lines).
- ``o/ n/ u/ b/ l/`` noise tags (overlap, noise, unintelligible, breath, laughter): removed.
  They are only recognised at the start of a token, so a word that merely ends in one of these
  letters before a filler slash is not eaten (ESPnet replaces the pairs anywhere in the line).
- ``/`` after a word marks a filler, ``+`` a repetition, ``*`` an unclear word: the marker is
  removed and the word kept (ESPnet's "disfluent" transcription, KoSpeech/K-wav2vec likewise).

Punctuation and symbols (Unicode categories P* and S*, e.g. ``. , ? ! % # ~``) are deleted
without inserting a space, as the K-wav2vec preprocessing does; invisible format characters
(zero-width space, BOM) too. Then every remaining character must be a Hangul syllable, a
digit, a Latin letter or whitespace; anything else (Hanja, Kana, standalone Hangul
compatibility jamo such as ``ㅋㅋ`` or ``ㄱ``, orphan conjoining jamo, other scripts) is
"unsupported". Compatibility jamo are not mapped to conjoining jamo because the mapping is
ambiguous (ㄱ may be an initial or a final) and a lone letter is not a pronounceable syllable.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Literal

from kwav2vec.text.hangul import is_compatibility_jamo, is_syllable

Form = Literal["spelling", "phonetic"]
Policy = Literal["keep", "drop", "error"]
RejectPolicy = Literal["drop", "error"]

_FORMS = ("spelling", "phonetic")
_POLICIES = ("keep", "drop", "error")
_REJECT_POLICIES = ("drop", "error")

# (A)/(B) with no parenthesis inside A or B: repeated application resolves nesting innermost first.
_DUAL = re.compile(r"\(([^()]*)\)\s*/\s*\(([^()]*)\)")
# A noise tag is one of the five letters plus "/" at the start of a token (line start, after
# whitespace, a parenthesis or another marker, as in "b/n/").
_NOISE_TAG = re.compile(r"(?<![^\s(/+*])([onubl])/")
_MARKERS = "/+*"


class TranscriptError(ValueError):
    """A transcript that cannot be normalized; `reason` is a short code for counting rejects.

    Codes: "not-a-string", "empty", "digits", "latin", "unsupported", "malformed".
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class NormalizerConfig:
    """What to do with KsponSpeech markup and with characters outside Hangul."""

    # Which side of "(A)/(B)": "spelling" keeps A (orthography, may contain digits/Latin),
    # "phonetic" keeps B (what was actually said; the usual choice for acoustic training).
    form: Form = "phonetic"
    # Digits (any Unicode number, e.g. "3", "²", "①"): keep them, drop the utterance, or raise.
    digits: Policy = "keep"
    # Latin letters (ASCII and full-width): keep them (case unchanged), drop the utterance, or raise.
    latin: Policy = "keep"
    # Any other script or standalone jamo: drop the utterance or raise (never kept, see module doc).
    unsupported: RejectPolicy = "error"
    # Unparseable markup (unpaired parentheses): drop the utterance or raise.
    malformed: RejectPolicy = "error"
    # Interpret KsponSpeech markup; False treats "( ) / + *" as plain punctuation (other corpora).
    markup: bool = True

    def __post_init__(self) -> None:
        for name, allowed in (
            ("form", _FORMS),
            ("digits", _POLICIES),
            ("latin", _POLICIES),
            ("unsupported", _REJECT_POLICIES),
            ("malformed", _REJECT_POLICIES),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"NormalizerConfig.{name}={value!r}: expected one of {allowed}")


@dataclass(frozen=True)
class NormalizationResult:
    """The normalized text, or None with a `reason` code when a "drop" policy removed the line."""

    text: str | None
    reason: str | None = None
    changes: list[str] = field(default_factory=list)  # human-readable, in the order applied
    detail: str | None = None  # for a dropped line: which characters or markup caused it

    @property
    def dropped(self) -> bool:
        return self.text is None


class _Rejected(Exception):
    """Internal: a rule rejected the line; `policy` decides between dropping and raising."""

    def __init__(self, reason: str, detail: str, policy: str) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.policy = reason, detail, policy


def normalize(line: str, config: NormalizerConfig = NormalizerConfig()) -> NormalizationResult:
    """Normalize one transcript line; see the module docstring for the rules.

    Raises `TranscriptError` for a non-string, for characters under an "error" policy and for a
    line that is empty after normalization (e.g. only noise tags). The message quotes the line.
    """
    if not isinstance(line, str):
        raise TranscriptError(
            "not-a-string", f"expected a transcript string, got {type(line).__name__}: {line!r:.80}"
        )
    changes: list[str] = []
    try:
        text = _normalize(line, config, changes)
    except _Rejected as rejected:
        if rejected.policy == "drop":
            changes.append(f"dropped ({rejected.reason}): {rejected.detail}")
            return NormalizationResult(None, rejected.reason, changes, rejected.detail)
        raise TranscriptError(rejected.reason, f"{rejected.detail} in line {line!r}") from None
    if not text:
        raise TranscriptError("empty", f"transcript is empty after normalization: {line!r}")
    return NormalizationResult(text, None, changes)


def _normalize(line: str, config: NormalizerConfig, changes: list[str]) -> str:
    text = unicodedata.normalize("NFC", line)
    if text != line:
        changes.append("unicode: NFC recomposed characters")
    if " ".join(text.split()) != text:
        changes.append("whitespace: collapsed runs and trimmed ends")
    if config.markup:
        # Noise tags first: "(b/ 3시)/(b/ 세 시)" then resolves like a plain dual transcription.
        text = _remove_noise_tags(text, changes)
        text = _resolve_dual(text, config, changes)
        text = _remove_chars(text, _MARKERS, "markers", changes)
    text = _remove_punctuation(text, changes)
    _check_characters(text, config)
    return " ".join(text.split())


def _remove_noise_tags(text: str, changes: list[str]) -> str:
    tags = [m.group(0) for m in _NOISE_TAG.finditer(text)]
    if tags:
        changes.append("noise tags removed: " + " ".join(tags))
    return _NOISE_TAG.sub(" ", text)


def _resolve_dual(text: str, config: NormalizerConfig, changes: list[str]) -> str:
    keep = 1 if config.form == "spelling" else 2

    def pick(match: re.Match[str]) -> str:
        chosen = match.group(keep)
        changes.append(f"dual transcription {match.group(0)!r} -> {chosen.strip()!r} ({config.form})")
        return chosen  # verbatim: in "(3시)/(세 시)에" the particle stays attached to the word

    while True:
        resolved = _DUAL.sub(pick, text)
        if resolved == text:
            break
        text = resolved
    leftover = sorted({c for c in text if c in "()"})
    if leftover:
        raise _Rejected(
            "malformed", f"unpaired {' '.join(leftover)} in dual transcription markup", config.malformed
        )
    return text


def _remove_chars(text: str, chars: str, label: str, changes: list[str]) -> str:
    found = [c for c in chars if c in text]
    if found:
        changes.append(f"{label} removed: " + " ".join(found))
        text = text.translate({ord(c): None for c in chars})
    return text


def _remove_punctuation(text: str, changes: list[str]) -> str:
    removed: dict[str, None] = {}  # ordered set
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if category[0] in "PS":
            removed[char] = None
        elif category == "Cf":  # zero-width space, BOM, joiners: invisible, never spoken
            removed[f"U+{ord(char):04X}"] = None
        else:
            kept.append(char)
    if removed:
        changes.append("punctuation removed: " + " ".join(removed))
    return "".join(kept)


def _check_characters(text: str, config: NormalizerConfig) -> None:
    """Apply the policies; an "error" anywhere wins over a "drop" so nothing is silently lost."""
    found: dict[str, dict[str, None]] = {"unsupported": {}, "digits": {}, "latin": {}}
    for char in text:
        if is_syllable(char) or char.isspace():
            continue
        category = unicodedata.category(char)
        if category[0] == "N":
            found["digits"][char] = None
        elif category[0] == "L" and "LATIN" in unicodedata.name(char, ""):
            found["latin"][char] = None
        else:
            found["unsupported"][char] = None
    policies = {"unsupported": config.unsupported, "digits": config.digits, "latin": config.latin}
    rejections = [
        _Rejected(reason, _describe(reason, list(chars)), policies[reason])
        for reason, chars in found.items()
        if chars and policies[reason] != "keep"
    ]
    for rejection in rejections:
        if rejection.policy == "error":
            raise rejection
    if rejections:
        raise rejections[0]


def _describe(reason: str, chars: list[str]) -> str:
    shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in chars[:10])
    more = f" and {len(chars) - 10} more" if len(chars) > 10 else ""
    text = {"unsupported": "unsupported characters", "digits": "digits", "latin": "Latin letters"}[reason]
    hint = ""
    if any(is_compatibility_jamo(c) for c in chars):
        hint = " (standalone Hangul compatibility jamo are not syllables)"
    return f"{text} {shown}{more}{hint}"
