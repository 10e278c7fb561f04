"""Metrics: jiwer as the CER/WER oracle, hand-made sWER/jamo/OOV cases, input validation."""

import math
import unicodedata

import jiwer
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kwav2vec.metrics import (
    cer,
    jamo_error_rate,
    normalize_for_scoring,
    oov_recovery,
    oov_recovery_counts,
    space_normalize,
    swer,
    wer,
)
from kwav2vec.text.vocab import Vocabulary

# A small alphabet makes collisions (and so matches, substitutions and spacing variants) likely.
korean = st.text(alphabet="가나다라 ", max_size=20)
non_empty_korean = korean.filter(lambda s: s.strip())
corpora = st.integers(1, 4).flatmap(
    lambda n: st.tuples(
        st.lists(non_empty_korean, min_size=n, max_size=n), st.lists(korean, min_size=n, max_size=n)
    )
)


@settings(max_examples=150, deadline=None)
@given(corpora)
def test_cer_and_wer_agree_with_jiwer(corpus):
    refs, hyps = corpus
    nrefs = [normalize_for_scoring(r) for r in refs]
    nhyps = [normalize_for_scoring(h) for h in hyps]
    assert cer(refs, hyps) == pytest.approx(jiwer.cer(nrefs, nhyps))
    assert wer(refs, hyps) == pytest.approx(jiwer.wer(nrefs, nhyps))


def test_cer_counts_spaces_and_weights_by_length():
    assert cer(["가나 다"], ["가나다"]) == pytest.approx(1 / 4)  # one deleted space out of 4 characters
    assert cer(["가", "가나다라"], ["나", "가나다라"]) == pytest.approx(1 / 5)  # corpus-level, not a mean
    assert cer(["가나"], ["가나다라마"]) == pytest.approx(3 / 2)  # insertions can exceed 1


def test_scoring_normalizes_nfc_and_whitespace():
    jamo = unicodedata.normalize("NFD", "한국")  # what a grapheme model emits before composition
    assert cer(["한국 사람"], [f"  {jamo}   사람 "]) == 0.0
    assert wer(["한국 사람"], [f"{jamo}\t사람"]) == 0.0


def espnet_space_normalize(ref: str, hyp: str) -> str:
    """Direct transcription of ESPnet's get_norm_text with "▁"-marked character tokens."""

    def tokens(text):
        return " ".join("▁" + text.strip().replace(" ", "▁")).replace("▁ ", "▁").split()

    hyps, refs = tokens(hyp), tokens(ref)
    plain = [t.replace("▁", "") for t in hyps], [t.replace("▁", "") for t in refs]
    hlen, rlen = len(hyps), len(refs)
    score = [[r if h == 0 else 0 for r in range(rlen + 1)] for h in range(hlen + 1)]
    for h in range(1, hlen + 1):
        score[h][0] = h
        for r in range(1, rlen + 1):
            score[h][r] = min(
                score[h - 1][r - 1] + (plain[0][h - 1] != plain[1][r - 1]),
                score[h - 1][r] + 1,
                score[h][r - 1] + 1,
            )
    out, h, r = [], hlen, rlen
    while h > 0 or r > 0:
        if h == 0:
            nh, nr = h, r - 1
        elif r == 0:
            nh, nr = h - 1, r
        else:
            sub = score[h - 1][r - 1] + (plain[0][h - 1] != plain[1][r - 1])
            ins, dele = score[h - 1][r] + 1, score[h][r - 1] + 1
            if sub <= min(ins, dele):
                nh, nr = h - 1, r - 1
            elif ins < dele:
                nh, nr = h - 1, r
            else:
                nh, nr = h, r - 1
        c_hyp = hyps[nh] if nh != h else ""
        c_ref = refs[nr] if nr != r else ""
        if c_hyp != c_ref and c_hyp.replace("▁", "") == c_ref.replace("▁", ""):
            c_hyp = c_ref
        if c_hyp:
            out.append(c_hyp)
        h, r = nh, nr
    return "".join(reversed(out)).replace("▁", " ").strip()


@pytest.mark.parametrize(
    ("ref", "hyp", "expected_hyp", "expected_swer"),
    [
        ("나는 학교에 간다", "나 는학교 에 간다", "나는 학교에 간다", 0.0),
        ("아버지가 방에 들어가신다", "아버지 가방에 들어가신다", "아버지가 방에 들어가신다", 0.0),
        # a substituted character keeps the hypothesis's own spacing
        ("나는 학교에", "너는학교에", "너는 학교에", 1 / 2),
        # an inserted character keeps its own spacing too
        ("학교에 간다", "학교에 안 간다", "학교에 안 간다", 1 / 2),
        ("가 가", "가", "가", 1 / 2),
        ("가나", "", "", 1.0),
    ],
)
def test_swer_hand_made(ref, hyp, expected_hyp, expected_swer):
    assert space_normalize(ref, hyp) == expected_hyp
    assert space_normalize(ref, hyp) == espnet_space_normalize(ref, hyp)
    assert swer([ref], [hyp]) == pytest.approx(expected_swer)


def test_swer_is_at_most_wer_for_pure_spacing_errors():
    refs, hyps = ["그래서 뭐 했어", "오늘 날씨 좋다"], ["그래 서뭐했어", "오늘날씨 좋다"]
    assert wer(refs, hyps) > 0.5 and swer(refs, hyps) == 0.0 and cer(refs, hyps) > 0.0


@settings(max_examples=150, deadline=None)
@given(non_empty_korean, korean)
def test_space_normalize_matches_espnet_transcription(ref, hyp):
    assert space_normalize(ref, hyp) == espnet_space_normalize(
        normalize_for_scoring(ref), normalize_for_scoring(hyp)
    )
    # only spacing changes, never characters
    assert space_normalize(ref, hyp).replace(" ", "") == hyp.replace(" ", "")


def test_jamo_error_rate():
    # 각 -> 간: one final consonant of 3 jamo wrong
    assert jamo_error_rate(["각"], ["간"]) == pytest.approx(1 / 3)
    # spacing is ignored by default, counted with keep_spaces
    assert jamo_error_rate(["가 나"], ["가나"]) == 0.0
    assert jamo_error_rate(["가 나"], ["가나"], keep_spaces=True) == pytest.approx(1 / 5)
    assert jamo_error_rate(["한국"], [unicodedata.normalize("NFD", "한국")]) == 0.0


def test_oov_recovery():
    known = {"안", "녕", "하", "세", "요"}
    refs = ["안녕 뷁 하세요", "똠얌 세요"]
    hyps = ["안녕 뷁 하세요", "땀얌 세요"]  # 뷁 and 얌 recovered, 똠 missed
    assert oov_recovery_counts(refs, hyps, known) == (2, 3)
    assert oov_recovery(refs, hyps, known) == pytest.approx(2 / 3)
    vocab = Vocabulary.syllables_from_texts(["안녕 하세요"])
    assert oov_recovery(refs, hyps, vocab) == pytest.approx(2 / 3)
    # a hypothesis that has the syllable at the wrong place does not count as recovered
    assert oov_recovery(["뷁 안녕"], ["안녕 뷁"], known) == 0.0
    assert math.isnan(oov_recovery(["안녕"], ["하세요"], known))  # no OOV syllable in the refs


@pytest.mark.parametrize("metric", [cer, wer, swer, jamo_error_rate])
def test_invalid_inputs_raise_clear_errors(metric):
    with pytest.raises(ValueError, match="utterance 1: the reference is empty"):
        metric(["가", "  "], ["가", "나"])
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        metric(["가", "나"], ["가"])
    with pytest.raises(ValueError, match="no references"):
        metric([], [])
    with pytest.raises(TypeError, match="lists of strings"):
        metric("가나", "가나")
    with pytest.raises(TypeError, match="utterance 0"):
        metric([None], ["가"])


def test_oov_recovery_rejects_empty_reference():
    with pytest.raises(ValueError, match="reference is empty"):
        oov_recovery([""], ["가"], set())
