"""Transcript normalization: KsponSpeech markup, policies, and clear rejections."""

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kwav2vec.text.normalize import NormalizationResult, NormalizerConfig, TranscriptError, normalize

SPELLING = NormalizerConfig(form="spelling")
PHONETIC = NormalizerConfig(form="phonetic")

# raw KsponSpeech-style line, expected spelling form, expected phonetic form
KSPON_TABLE = [
    # the KoSpeech README example: noise tags, filler, repetition, dual transcription with "%"
    (
        "b/ 아/ 모+ 몬 소리야 (70%)/(칠 십 퍼센트) 확률이라니 n/",
        "아 모 몬 소리야 70 확률이라니",
        "아 모 몬 소리야 칠 십 퍼센트 확률이라니",
    ),
    ("(3시)/(세 시)에 만나자.", "3시에 만나자", "세 시에 만나자"),
    ("o/ (SNS)/(에스 엔 에스)*에 올렸어?", "SNS에 올렸어", "에스 엔 에스에 올렸어"),
    ("l/ 진짜? 웃기다 l/", "진짜 웃기다", "진짜 웃기다"),
    ("그+ 그 사람이 u/ 했대", "그 그 사람이 했대", "그 그 사람이 했대"),
    ("음/ 그러니까/ 내 말은,", "음 그러니까 내 말은", "음 그러니까 내 말은"),
    ("(2020년)/(이천 이십 년) (1월)/(일 월)에", "2020년 1월에", "이천 이십 년 일 월에"),
    # nested pair: resolved innermost first
    ("((1)/(일) 번)/(일 번) 출구로 나와", "1 번 출구로 나와", "일 번 출구로 나와"),
    # adjacent pairs with no space between them
    ("(1)/(한)(2)/(두) 개만 줘", "12 개만 줘", "한두 개만 줘"),
    # spaces around the middle slash
    ("(PC) / (피씨)방 가자", "PC방 가자", "피씨방 가자"),
    # noise tag inside both sides of a pair
    ("(b/ 3개)/(b/ 세 개) 주세요", "3개 주세요", "세 개 주세요"),
    # repetition and filler markers right after a pair
    ("(1)/(일)+ (1)/(일)층이야", "1 1층이야", "일 일층이야"),
    ("(OK)/(오케이)/ 알았어", "OK 알았어", "오케이 알았어"),
    # two noise tags glued together
    ("b/n/ 네 알겠습니다.", "네 알겠습니다", "네 알겠습니다"),
    # unclear word marker and sentence punctuation
    ("그 사람*이 뭐라고 했어!", "그 사람이 뭐라고 했어", "그 사람이 뭐라고 했어"),
    # "#" in the spelling form is punctuation
    ("(C#)/(씨 샵) 배우고 싶어", "C 배우고 싶어", "씨 샵 배우고 싶어"),
    # irregular whitespace and an ellipsis
    ("  아니   그게\t아니라…  ", "아니 그게 아니라", "아니 그게 아니라"),
    # a filler word after a Latin word: only token-initial "x/" is a noise tag
    ("(pub)/(펍)/ 가자", "pub 가자", "펍 가자"),
]


@pytest.mark.parametrize(("line", "spelling", "phonetic"), KSPON_TABLE)
def test_kspon_table(line, spelling, phonetic):
    assert normalize(line, SPELLING).text == spelling
    assert normalize(line, PHONETIC).text == phonetic


def test_changes_explain_what_happened():
    result = normalize("b/ (3시)/(세 시)에 만나+ 만나자. n/", PHONETIC)
    joined = "\n".join(result.changes)
    assert "noise tags removed: b/ n/" in joined
    assert "'(3시)/(세 시)' -> '세 시'" in joined
    assert "markers removed: +" in joined
    assert "punctuation removed: ." in joined
    assert result.reason is None and not result.dropped


def test_clean_line_has_no_changes():
    assert normalize("안녕하세요 반갑습니다") == NormalizationResult("안녕하세요 반갑습니다", None, [])


def test_nfc_is_applied_and_reported():
    decomposed = unicodedata.normalize("NFD", "한국어")
    result = normalize(decomposed)
    assert result.text == "한국어"
    assert any("NFC" in c for c in result.changes)


def test_format_characters_are_removed():
    assert normalize("\ufeff안녕\u200b하세요").text == "안녕하세요"


@pytest.mark.parametrize(
    ("line", "config", "reason", "shown"),
    [
        ("3시에 만나", NormalizerConfig(digits="error"), "digits", "'3'"),
        ("(SNS)/(에스 엔 에스)에", NormalizerConfig(form="spelling", latin="error"), "latin", "'S'"),
        ("漢字 공부", NormalizerConfig(), "unsupported", "'漢'"),
        ("ひらがな 공부", NormalizerConfig(), "unsupported", "'ひ'"),
        ("ㅋㅋ 진짜", NormalizerConfig(), "unsupported", "compatibility jamo"),
        ("(3시)/(세 시 에", NormalizerConfig(), "malformed", "unpaired ("),
        ("3 漢", NormalizerConfig(digits="drop"), "unsupported", "'漢'"),  # error beats drop
    ],
)
def test_error_policy_raises_naming_characters_and_line(line, config, reason, shown):
    with pytest.raises(TranscriptError) as info:
        normalize(line, config)
    assert isinstance(info.value, ValueError)
    assert info.value.reason == reason
    assert shown in str(info.value)
    assert repr(line) in str(info.value)


@pytest.mark.parametrize(
    ("line", "config", "reason"),
    [
        ("3시에 만나", NormalizerConfig(digits="drop"), "digits"),
        ("(SNS)/(에스 엔 에스)에", NormalizerConfig(form="spelling", latin="drop"), "latin"),
        ("漢字 공부", NormalizerConfig(unsupported="drop"), "unsupported"),
        ("(3시)/(세 시 에", NormalizerConfig(malformed="drop"), "malformed"),
    ],
)
def test_drop_policy_returns_none_with_reason(line, config, reason):
    result = normalize(line, config)
    assert result.text is None and result.dropped
    assert result.reason == reason
    assert result.detail and result.changes[-1].startswith(f"dropped ({reason})")


def test_phonetic_form_avoids_a_digit_drop():
    config = NormalizerConfig(form="phonetic", digits="error", latin="error")
    assert normalize("(SNS)/(에스 엔 에스)에 (3)/(세) 번", config).text == "에스 엔 에스에 세 번"


@pytest.mark.parametrize("line", ["", "   ", "b/ n/ l/", "...?!", "(1)/()"])
def test_empty_after_normalization_raises(line):
    with pytest.raises(TranscriptError, match="empty") as info:
        normalize(line, PHONETIC)
    assert info.value.reason == "empty"


@pytest.mark.parametrize("value", [None, 3, b"bytes", ["a"]])
def test_non_string_raises(value):
    with pytest.raises(TranscriptError) as info:
        normalize(value)
    assert info.value.reason == "not-a-string"
    assert type(value).__name__ in str(info.value)


def test_markup_off_treats_markers_as_punctuation():
    assert normalize("(3시)/(세 시) b/ 가요", NormalizerConfig(markup=False)).text == "3시세 시 b 가요"


def test_config_is_validated_and_frozen():
    with pytest.raises(ValueError, match="form"):
        NormalizerConfig(form="orthographic")
    with pytest.raises(ValueError, match="digits"):
        NormalizerConfig(digits="spell-out")
    with pytest.raises(ValueError, match="unsupported"):
        NormalizerConfig(unsupported="keep")
    with pytest.raises(AttributeError):
        NormalizerConfig().form = "spelling"


@given(st.text(max_size=60))
def test_output_is_clean_or_rejected(line):
    try:
        result = normalize(line, NormalizerConfig(unsupported="drop", malformed="drop"))
    except TranscriptError as error:
        assert error.reason == "empty"
        return
    if result.text is None:
        assert result.reason in ("unsupported", "malformed")
        return
    text = result.text
    assert text and text == unicodedata.normalize("NFC", text)
    assert text == " ".join(text.split())
    assert not any(unicodedata.category(c)[0] in "PSC" for c in text)


def test_cli_prints_one_line_per_input_line(tmp_path, capsys):
    from kwav2vec.text.cli import main

    source = tmp_path / "lines.txt"
    source.write_text("b/ (3시)/(세 시)에 만나.\n漢字\n\n(SNS)/(에스 엔 에스)\n", encoding="cp949")
    assert main([str(source), "--encoding", "cp949"]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[0] == "세 시에 만나"
    assert lines[1].startswith(f"REJECTED[unsupported] {source}:2:") and "'漢'" in lines[1]
    assert lines[2].startswith("REJECTED[empty]")
    assert lines[3] == "에스 엔 에스"
    assert "4 lines, 2 rejected" in out.err

    assert (
        main(
            [str(source), "--encoding", "cp949", "--form", "spelling", "--latin", "drop", "--output", "jamo"]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "3 ᄉ ᅵ ᄋ ᅦ | ᄆ ᅡ ᆫ ᄂ ᅡ"
    assert lines[3].startswith("REJECTED[latin]")


def test_cli_trn_lines_keep_their_id_and_bad_encoding_names_the_line(tmp_path, capsys):
    from kwav2vec.text.cli import main

    trn = tmp_path / "train.trn"
    trn.write_text("KsponSpeech_000001.pcm :: 가나 다\n", encoding="utf-8")
    assert main([str(trn), "--trn", "--output", "syllables"]) == 0
    assert capsys.readouterr().out == "KsponSpeech_000001.pcm :: 가 나 | 다\n"
    cp949 = tmp_path / "cp949.txt"
    cp949.write_bytes("안녕\n".encode("cp949"))
    assert main([str(cp949)]) == 2
    assert f"{cp949}:1: not valid utf-8" in capsys.readouterr().err
