"""Vocabularies: fixed special ids, encode/decode, JSON round trip, OOV, pyctcdecode labels."""

import json
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyctcdecode import build_ctcdecoder

from kwav2vec.text.hangul import MODERN_JAMO, decompose
from kwav2vec.text.vocab import Vocabulary

TEXTS = ["안녕 하세요", "반갑 습니다", "안녕히 가세요", "네"]


def test_specials_have_fixed_ids():
    for vocab in (Vocabulary.grapheme(), Vocabulary.syllables_from_texts(TEXTS)):
        assert vocab.tokens[:3] == ["<blank>", "<unk>", "|"]
        assert (vocab.blank_id, vocab.pad_id, vocab.unk_id, vocab.word_boundary_id) == (0, 0, 1, 2)


def test_grapheme_vocabulary_covers_every_modern_jamo():
    vocab = Vocabulary.grapheme()
    assert vocab.kind == "grapheme" and len(vocab) == 3 + 67
    assert vocab.symbols == list(MODERN_JAMO)
    every_syllable = "".join(chr(c) for c in range(0xAC00, 0xD7A4))
    assert vocab.unk_id not in vocab.encode(every_syllable)
    assert set(decompose(every_syllable)) <= set(vocab.tokens)


def test_grapheme_extra_symbols_follow_the_jamo():
    vocab = Vocabulary.grapheme(extra_symbols="0123")
    assert vocab.symbols[-4:] == list("0123") and len(vocab) == 74
    assert vocab.decode(vocab.encode("3시")) == "3시"


def test_grapheme_encode_decode():
    vocab = Vocabulary.grapheme()
    ids = vocab.encode("각 나")
    assert [vocab.id_to_token(i) for i in ids] == ["\u1100", "\u1161", "\u11a8", "|", "\u1102", "\u1161"]
    assert vocab.decode(ids) == "각 나"
    # blanks and repeated boundaries (as CTC output may contain them) are cleaned up
    assert vocab.decode([0, 2] + ids + [0, 2, 2]) == "각 나"


def test_syllable_vocabulary_counts_order_and_min_count():
    vocab = Vocabulary.syllables_from_texts(TEXTS)
    assert vocab.kind == "syllable"
    # most frequent first ("세", "안", "녕", "요" twice), ties by code point
    assert vocab.symbols[:4] == sorted(["세", "안", "녕", "요"])
    assert vocab.counts["세"] == 2 and vocab.counts["네"] == 1
    assert Vocabulary.syllables_from_texts(list(reversed(TEXTS))) == vocab  # order-independent ids
    frequent = Vocabulary.syllables_from_texts(TEXTS, min_count=2)
    assert frequent.symbols == sorted(["세", "안", "녕", "요"])
    with pytest.raises(ValueError, match="min_count"):
        Vocabulary.syllables_from_texts(TEXTS, min_count=0)


def test_syllable_encode_decode_and_unknown():
    vocab = Vocabulary.syllables_from_texts(TEXTS)
    ids = vocab.encode("안녕 뷁")
    assert ids[:3] == [vocab.token_to_id("안"), vocab.token_to_id("녕"), vocab.word_boundary_id]
    assert ids[3] == vocab.unk_id
    assert vocab.decode(ids) == "안녕"  # <unk> is dropped
    assert vocab.tokenize(" 안녕  하세요 ") == ["안", "녕", "|", "하", "세", "요"]


@given(st.text(alphabet=st.sampled_from("안녕하세요뷁 \tabcㄱ각\u1100\u1161|<"), max_size=30))
def test_encode_key_is_encode_as_characters(text):
    for vocab in (Vocabulary.grapheme(), Vocabulary.syllables_from_texts(TEXTS)):
        assert [ord(c) for c in vocab.encode_key(text)] == vocab.encode(text)


def test_encode_key_survives_pickling():  # vocabularies travel to decoding worker processes
    vocab = pickle.loads(pickle.dumps(Vocabulary.syllables_from_texts(TEXTS)))
    assert [ord(c) for c in vocab.encode_key("안녕 뷁")] == vocab.encode("안녕 뷁")


def test_oov_rate():
    vocab = Vocabulary.syllables_from_texts(TEXTS)
    assert vocab.oov_rate("안녕 하세요") == 0.0
    assert vocab.oov_rate("안녕 뷁뷁") == pytest.approx(0.5)  # boundaries are not counted
    assert Vocabulary.grapheme().oov_rate("abc 가") == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="without tokens"):
        vocab.oov_rate("   ")


@pytest.mark.parametrize("make", [Vocabulary.grapheme, lambda: Vocabulary.syllables_from_texts(TEXTS)])
def test_json_round_trip_keeps_ids(tmp_path, make):
    vocab = make()
    path = tmp_path / "vocab.json"
    vocab.save(path)
    loaded = Vocabulary.load(path)
    assert loaded == vocab and loaded.tokens == vocab.tokens and loaded.counts == vocab.counts
    assert loaded.encode("안녕 하세요") == vocab.encode("안녕 하세요")
    assert "안" in path.read_text(encoding="utf-8") or vocab.kind == "grapheme"  # readable, not \u-escaped


def test_load_rejects_bad_files(tmp_path):
    bad_specials = tmp_path / "bad.json"
    bad_specials.write_text(
        json.dumps({"format_version": 1, "kind": "syllable", "tokens": ["|", "<unk>", "<blank>"]})
    )
    with pytest.raises(ValueError, match="first tokens"):
        Vocabulary.load(bad_specials)
    not_json = tmp_path / "broken.json"
    not_json.write_text("{")
    with pytest.raises(ValueError, match="broken.json"):
        Vocabulary.load(not_json)
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary(["가", "가"], "syllable")
    with pytest.raises(ValueError, match="kind"):
        Vocabulary(["가"], "word")


def test_decode_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="outside"):
        Vocabulary.grapheme().decode([500])


def test_ctc_labels_drive_pyctcdecode():
    vocab = Vocabulary.syllables_from_texts(TEXTS)
    labels = vocab.ctc_labels()
    assert labels[:3] == ["", "⁇", " "] and labels[3:] == vocab.symbols
    # one-hot emissions spelling "안녕 네" with blanks between repeats
    path = ["안", "<blank>", "녕", "|", "네", "네"]
    logits = np.full((len(path), len(vocab)), -10.0, dtype=np.float32)
    for frame, token in enumerate(path):
        logits[frame, vocab.tokens.index(token)] = 0.0
    assert build_ctcdecoder(labels).decode(logits) == "안녕 네"


def test_grapheme_ctc_labels_decode_to_jamo_then_compose():
    vocab = Vocabulary.grapheme()
    ids = vocab.encode("한 글")
    logits = np.full((len(ids), len(vocab)), -10.0, dtype=np.float32)
    logits[np.arange(len(ids)), ids] = 0.0
    jamo_text = build_ctcdecoder(vocab.ctc_labels()).decode(logits)
    assert jamo_text == decompose("한 글")
    assert vocab.decode(vocab.encode(jamo_text)) == "한 글"
