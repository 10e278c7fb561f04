"""Hangul syllables <-> conjoining jamo.

K-wav2vec's grapheme units are the NFKD decomposition of Hangul syllables: every precomposed
syllable (U+AC00..U+D7A3) becomes an initial consonant (U+1100..U+1112), a medial vowel
(U+1161..U+1175) and optionally a final consonant (U+11A8..U+11C2). Initial and final
consonants are *different* code points (ᄀ U+1100 vs ᆨ U+11A8), so the model can tell a
syllable's onset from its coda without extra position symbols.

Only precomposed syllables are touched; every other character passes through unchanged. This is
deliberately narrower than ``unicodedata.normalize("NFKD", text)``, which would also rewrite
compatibility jamo (ㄱ U+3131 -> ᄀ U+1100, always as an *initial*), full-width letters,
ligatures and so on. Standalone compatibility jamo are ambiguous (ㄱ could be an onset or a
coda), so this module leaves them alone and `kwav2vec.text.normalize` rejects them as
unsupported characters.
"""

from __future__ import annotations

import re
import unicodedata

WORD_BOUNDARY = "|"  # grapheme/syllable token standing for a space between words

# Unicode's Hangul syllable arithmetic (The Unicode Standard, ch. 3.12 "Conjoining Jamo Behavior").
SYLLABLE_BASE = 0xAC00
NUM_INITIALS = 19  # ᄀ..ᄒ  U+1100..U+1112
NUM_MEDIALS = 21  # ᅡ..ᅵ  U+1161..U+1175
NUM_FINALS = 28  # "no final" + 27 finals ᆨ..ᇂ U+11A8..U+11C2
NUM_SYLLABLES = NUM_INITIALS * NUM_MEDIALS * NUM_FINALS  # 11,172
SYLLABLE_LAST = SYLLABLE_BASE + NUM_SYLLABLES - 1  # U+D7A3

INITIALS: tuple[str, ...] = tuple(chr(0x1100 + i) for i in range(NUM_INITIALS))
MEDIALS: tuple[str, ...] = tuple(chr(0x1161 + i) for i in range(NUM_MEDIALS))
FINALS: tuple[str, ...] = tuple(chr(0x11A8 + i) for i in range(NUM_FINALS - 1))
MODERN_JAMO: tuple[str, ...] = INITIALS + MEDIALS + FINALS  # the 67 jamo decompose() can emit

# str.translate table: one entry per syllable, built once (about 11k entries, a few ms).
# NFD of a precomposed syllable is exactly its conjoining jamo (NFKD gives the same for these).
_DECOMPOSE_TABLE: dict[int, str] = {
    cp: unicodedata.normalize("NFD", chr(cp)) for cp in range(SYLLABLE_BASE, SYLLABLE_LAST + 1)
}
# A modern initial + medial (+ optional final): exactly the sequences decompose() produces.
_JAMO_SYLLABLE = re.compile("[\u1100-\u1112][\u1161-\u1175][\u11a8-\u11c2]?")


def is_syllable(char: str) -> bool:
    """True for one of the 11,172 precomposed Hangul syllables (가..힣)."""
    return len(char) == 1 and SYLLABLE_BASE <= ord(char) <= SYLLABLE_LAST


def is_compatibility_jamo(char: str) -> bool:
    """True for Hangul Compatibility Jamo (ㄱ U+3131 .. ㆎ U+318E), the standalone letters."""
    return len(char) == 1 and 0x3131 <= ord(char) <= 0x318E


def decompose(text: str) -> str:
    """Replace every precomposed Hangul syllable by its conjoining jamo; keep everything else.

    >>> [hex(ord(c)) for c in decompose("각")]
    ['0x1100', '0x1161', '0x11a8']
    """
    return text.translate(_DECOMPOSE_TABLE)


def compose(text: str) -> str:
    """Inverse of `decompose`: join each initial+medial(+final) jamo run into its syllable.

    Exact inverse on any text without pre-existing conjoining jamo (for example NFC text):
    ``compose(decompose(s)) == s``. Orphan jamo (a final with no syllable before it, a lone
    initial, ...) are left as they are, which is what a CTC grapheme model's output may contain.
    Only the matched runs are composed, so other characters are never renormalized.
    """
    return _JAMO_SYLLABLE.sub(_compose_match, text)


def _compose_match(match: re.Match[str]) -> str:
    jamo = match.group(0)
    initial = ord(jamo[0]) - 0x1100
    medial = ord(jamo[1]) - 0x1161
    final = ord(jamo[2]) - 0x11A7 if len(jamo) == 3 else 0
    return chr(SYLLABLE_BASE + (initial * NUM_MEDIALS + medial) * NUM_FINALS + final)


def jamo_tokens(text: str) -> list[str]:
    """Grapheme tokens of `text`: the jamo of `decompose(text)`, spaces as `WORD_BOUNDARY`.

    Runs of whitespace become a single boundary and leading/trailing whitespace is dropped,
    because the word boundary is a separator, not a character of its own.
    """
    return list(WORD_BOUNDARY.join(decompose(word) for word in text.split()))
