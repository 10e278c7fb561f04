"""Jamo decomposition: exact round trip, agreement with NFKD and the `jamo` package."""

import unicodedata

import jamo
from hypothesis import given
from hypothesis import strategies as st

from kwav2vec.text.hangul import (
    FINALS,
    INITIALS,
    MEDIALS,
    MODERN_JAMO,
    NUM_SYLLABLES,
    SYLLABLE_BASE,
    WORD_BOUNDARY,
    compose,
    decompose,
    is_compatibility_jamo,
    is_syllable,
    jamo_tokens,
)

ALL_SYLLABLES = "".join(chr(SYLLABLE_BASE + i) for i in range(NUM_SYLLABLES))


def test_jamo_inventory():
    assert (len(INITIALS), len(MEDIALS), len(FINALS)) == (19, 21, 27)
    assert len(set(MODERN_JAMO)) == 67
    assert WORD_BOUNDARY == "|"


def test_every_syllable_round_trips_and_matches_nfkd_and_jamo_package():
    assert len(ALL_SYLLABLES) == 11_172
    decomposed = decompose(ALL_SYLLABLES)
    # Oracles: NFKD (what K-wav2vec uses) and the `jamo` package give the same code points.
    assert decomposed == unicodedata.normalize("NFKD", ALL_SYLLABLES)
    assert decomposed == jamo.h2j(ALL_SYLLABLES)
    assert compose(decomposed) == ALL_SYLLABLES
    # Syllable by syllable too, so one syllable cannot swallow its neighbour's jamo.
    for syllable in ALL_SYLLABLES:
        parts = decompose(syllable)
        assert 2 <= len(parts) <= 3 and compose(parts) == syllable


def test_decompose_emits_only_the_67_modern_jamo():
    assert set(decompose(ALL_SYLLABLES)) == set(MODERN_JAMO)


def test_initial_and_final_consonants_are_distinct():
    assert decompose("각") == "\u1100\u1161\u11a8"  # ᄀ ᅡ ᆨ: onset and coda differ


def test_other_characters_pass_through_unchanged():
    text = "ㄱ ㅋㅋ abc 123 漢字 ﬁ Ａ"
    assert decompose(text) == text  # NFKD would rewrite ㄱ, ﬁ and Ａ
    assert compose(text) == text


def test_orphan_jamo_are_left_alone():
    orphans = "\u11a8\u1161\u1100"  # final, medial, initial: no valid initial+medial run
    assert compose(orphans) == orphans
    assert compose("\u1100\u1161" + "\u11a8\u11a8") == "각\u11a8"


def test_predicates():
    assert is_syllable("가") and is_syllable("힣") and not is_syllable("ㄱ") and not is_syllable("가나")
    assert is_compatibility_jamo("ㄱ") and is_compatibility_jamo("ㅏ") and not is_compatibility_jamo("\u1100")


def test_jamo_tokens_use_word_boundary():
    assert jamo_tokens("  가 나 ") == ["\u1100", "\u1161", "|", "\u1102", "\u1161"]


hangul_text = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=SYLLABLE_BASE, max_codepoint=SYLLABLE_BASE + NUM_SYLLABLES - 1),
        st.just(" "),
    ),
    max_size=40,
)


@given(hangul_text)
def test_random_hangul_text_round_trips(text):
    assert compose(decompose(text)) == text
    assert decompose(compose(decompose(text))) == decompose(text)
