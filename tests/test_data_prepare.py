"""Corpus preparers on tiny trees in each corpus's layout: expected manifests, rejects with reasons,
reports, vocabularies, fairseq import/export, and the `kwav2vec prepare` command."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from test_data_utils import read_jsonl, write_flac, write_pcm, write_wav

from kwav2vec.cli import main as kwav2vec
from kwav2vec.data.corpora.folder import folder_candidates
from kwav2vec.data.corpora.kspon import ksponspeech_candidates
from kwav2vec.data.corpora.tsv import tsv_candidates
from kwav2vec.data.corpora.zeroth import zeroth_candidates
from kwav2vec.data.fairseq_manifest import write_fairseq_manifest
from kwav2vec.data.manifest import ManifestEntry, read_manifest
from kwav2vec.data.prepare import PrepareOptions, prepare_corpus
from kwav2vec.text.normalize import NormalizerConfig
from kwav2vec.text.vocab import Vocabulary

QUIET = PrepareOptions(progress=False)
KSPON = PrepareOptions(progress=False, normalizer=NormalizerConfig(unsupported="drop", malformed="drop"))
PLAIN = PrepareOptions(progress=False, normalizer=NormalizerConfig(markup=False, unsupported="drop"))
LONG_TEXT = "가나다라마바사아자차카타파하 " * 6  # about 250 jamo steps


def _by_id(rows):
    return {r["id"]: r for r in rows}


def _kspon_tree(src):
    train = src / "KsponSpeech_01" / "KsponSpeech_0001"
    utts = {  # id: (samples, transcript or None for no .txt, silent)
        "KsponSpeech_000001": (32000, "o/ 아 그래서 (3시)/(세 시)에 만나자고 했어", False),
        "KsponSpeech_000002": (16000, "b/ n/", False),  # only noise tags
        "KsponSpeech_000003": (16000, None, False),  # no transcript file
        "KsponSpeech_000004": (16000, "조용한 방", True),
        "KsponSpeech_000005": (200, "짧아", False),  # under the receptive field
        "KsponSpeech_000006": (4800, LONG_TEXT, False),  # 0.3 s for 250 jamo
        "KsponSpeech_000008": (24000, "안녕하세요 여러분+ 반갑습니다/", False),
    }
    for uid, (n, text, silent) in utts.items():
        write_pcm(train / f"{uid}.pcm", n, silent=silent)
        if text is not None:
            (train / f"{uid}.txt").write_bytes(text.encode("cp949") + b"\r\n")
    cut = write_pcm(train / "KsponSpeech_000007.pcm", 1000)
    cut.write_bytes(cut.read_bytes()[:-1])
    (train / "KsponSpeech_000007.txt").write_bytes("잘린 파일".encode("cp949"))
    for split, uid, text in (("eval_clean", "KsponSpeech_E00001", "깨끗한 평가 문장"),
                             ("eval_other", "KsponSpeech_E03001", "(SNS)/(에스 엔 에스) 어려운 평가")):
        folder = src / "KsponSpeech_eval" / split
        write_pcm(folder / f"{uid}.pcm", 32000)
        (folder / f"{uid}.txt").write_bytes(text.encode("cp949"))


def test_ksponspeech_tree_pcm_and_cp949(tmp_path):
    src, out = tmp_path / "KsponSpeech", tmp_path / "out"
    _kspon_tree(src)
    report = prepare_corpus(ksponspeech_candidates(src, "train"), out, "train", KSPON, corpus="ksponspeech",
                            source=str(src))
    manifest = _by_id(read_jsonl(out / "train.jsonl"))
    assert sorted(manifest) == ["KsponSpeech_000001", "KsponSpeech_000008"]
    first = manifest["KsponSpeech_000001"]
    assert first["norm"] == "아 그래서 세 시에 만나자고 했어"
    assert first["text"] == "o/ 아 그래서 (3시)/(세 시)에 만나자고 했어"
    assert first["num_samples"] == 32000 and first["sample_rate"] == 16000
    assert manifest["KsponSpeech_000008"]["norm"] == "안녕하세요 여러분 반갑습니다"
    rejects = {r["id"]: r["reason"] for r in read_jsonl(out / "train.rejects.jsonl")}
    assert rejects == {
        "KsponSpeech_000002": "transcript:empty",
        "KsponSpeech_000003": "transcript:missing",
        "KsponSpeech_000004": "audio:silent",
        "KsponSpeech_000005": "audio:too-short",
        "KsponSpeech_000006": "ctc-infeasible",
        "KsponSpeech_000007": "audio:truncated",
    }
    saved = json.loads((out / "train.report.json").read_text())
    assert saved["total"] == 8 and saved["accepted"] == 2 and saved["rejected"] == 6
    assert saved["rejects_by_reason"]["ctc-infeasible"] == 1 and saved["notes"]["encoding:cp949"] == 3
    assert report.summary().startswith("ksponspeech train: 2 of 8 utterances accepted")
    # Vocabularies beside the training manifest, from its normalized texts.
    syllables = Vocabulary.load(out / "vocab_syllable.json")
    assert syllables.kind == "syllable" and "세" in syllables.tokens and "3" not in syllables.tokens
    assert Vocabulary.load(out / "vocab_grapheme.json") == Vocabulary.grapheme()
    # The manifest reads back and resolves to the corpus files.
    assert read_manifest(out / "train.jsonl")[0].path == str(src / "KsponSpeech_01/KsponSpeech_0001/KsponSpeech_000001.pcm")

    spelling = PrepareOptions(progress=False, normalizer=NormalizerConfig(form="spelling"))
    prepare_corpus(ksponspeech_candidates(src, "eval_other"), out, "eval_other", spelling, corpus="k", source="")
    assert read_jsonl(out / "eval_other.jsonl")[0]["norm"] == "SNS 어려운 평가"
    assert not (out / "eval_other.rejects.jsonl").read_text()  # written, empty
    prepare_corpus(ksponspeech_candidates(src, "eval_clean"), out, "eval_clean", KSPON, corpus="k", source="")
    assert [r["id"] for r in read_jsonl(out / "eval_clean.jsonl")] == ["KsponSpeech_E00001"]


def test_ksponspeech_trn_script_lists(tmp_path):
    src, out = tmp_path / "KsponSpeech", tmp_path / "out"
    _kspon_tree(src)
    scripts = src / "KsponSpeech_scripts"
    scripts.mkdir()
    (scripts / "eval_clean.trn").write_bytes(
        "KsponSpeech_eval/eval_clean/KsponSpeech_E00001.pcm :: 스크립트 쪽 문장\n".encode("cp949"))
    (scripts / "dev.trn").write_text(
        "/old/mount/KsponSpeech_01/KsponSpeech_0001/KsponSpeech_000008.pcm :: 개발 세트 문장\n"
        "KsponSpeech_01/KsponSpeech_0001/KsponSpeech_999999.pcm :: 없는 파일\n", encoding="utf-8")
    prepare_corpus(ksponspeech_candidates(src, "eval_clean"), out, "eval_clean", KSPON, corpus="k", source="")
    assert read_jsonl(out / "eval_clean.jsonl")[0]["norm"] == "스크립트 쪽 문장"
    prepare_corpus(ksponspeech_candidates(src, "dev"), out, "dev", KSPON, corpus="k", source="")
    assert [(r["id"], r["norm"]) for r in read_jsonl(out / "dev.jsonl")] == [("KsponSpeech_000008", "개발 세트 문장")]
    assert [r["reason"] for r in read_jsonl(out / "dev.rejects.jsonl")] == ["audio:missing"]
    with pytest.raises(ValueError, match="dev is defined only by"):
        list(ksponspeech_candidates(tmp_path, "dev"))
    (scripts / "bad.trn").write_text("no separator here\n")
    with pytest.raises(ValueError, match=r"bad\.trn:1: expected 'path :: transcript'"):
        list(ksponspeech_candidates(src, "x", scripts / "bad.trn"))


def test_zeroth_tree(tmp_path):
    src, out = tmp_path / "zeroth", tmp_path / "out"
    chapter = src / "train_data_01" / "003" / "106"
    for i in range(3):
        write_flac(chapter / f"106_003_{i:04d}.flac", 24000, seed=i)
    (chapter / "106_003.trans.txt").write_text(
        "106_003_0000 안녕하세요 반갑습니다\n106_003_0001 漢字 문장\n106_003_0002\n106_003_0003 파일 없음\n",
        encoding="utf-8")
    write_flac(src / "test_data_01" / "001" / "1" / "1_001_0000.flac", 16000)
    (src / "test_data_01" / "001" / "1" / "1_001.trans.txt").write_text("1_001_0000 시험 문장\n")
    prepare_corpus(zeroth_candidates(src, "train"), out, "train", PLAIN, corpus="zeroth", source="")
    rows = read_jsonl(out / "train.jsonl")
    assert [(r["id"], r["norm"], r["num_samples"]) for r in rows] == [("106_003_0000", "안녕하세요 반갑습니다", 24000)]
    assert {r["id"]: r["reason"] for r in read_jsonl(out / "train.rejects.jsonl")} == {
        "106_003_0001": "transcript:unsupported", "106_003_0002": "transcript:missing", "106_003_0003": "audio:missing"}
    prepare_corpus(zeroth_candidates(src, "test"), out, "test", PLAIN, corpus="zeroth", source="")
    assert [r["id"] for r in read_jsonl(out / "test.jsonl")] == ["1_001_0000"]
    assert not (out / "test.report.json").read_text().count('"syllable"')  # no vocab for a test split


def _folder_tree(src):
    def wav(name, text, **kw):
        write_wav(src / f"{name}.wav", kw.pop("n", 16000), **kw)
        if text is not None:
            (src / f"{name}.txt").write_text(text, encoding="utf-8")

    wav("a", "첫 번째 문장")
    write_flac(src / "sub" / "b.flac", 16000)
    (src / "sub" / "b.txt").write_bytes("두 번째 문장".encode("cp949"))
    wav("c8k", "팔 킬로헤르츠", n=8000, rate=8000)
    wav("d44k", "사십사 킬로헤르츠 스테레오", n=44100, rate=44100, channels=2)
    wav("g", None)  # no transcript
    wav("h", "!!! ... ?")  # punctuation only
    wav("i", "これは日本語です")  # another script
    wav("k", LONG_TEXT, n=4800)  # transcript longer than the audio allows
    (src / "e.wav").write_text("plain text pretending to be audio")
    (src / "e.txt").write_text("가짜 오디오")
    (src / "f.wav").write_bytes(b"")
    (src / "f.txt").write_text("빈 파일")
    data = write_wav(src / "j.wav", 16000).read_bytes()
    (src / "j.wav").write_bytes(data[: len(data) // 3])
    (src / "j.txt").write_text("잘린 파일")


FOLDER_REJECTS = {"e": "audio:unreadable", "f": "audio:empty", "g": "transcript:missing", "h": "transcript:empty",
                  "i": "transcript:unsupported", "j": "audio:truncated", "k": "ctc-infeasible"}


def test_folder_with_bad_input_matrix(tmp_path):
    src, out = tmp_path / "folder", tmp_path / "out"
    _folder_tree(src)
    report = prepare_corpus(folder_candidates(src), out, "train", PLAIN, corpus="folder", source=str(src))
    rows = _by_id(read_jsonl(out / "train.jsonl"))
    assert sorted(rows) == ["a", "c8k", "d44k", "sub/b"]
    assert rows["c8k"]["num_samples"] == 16000 and rows["c8k"]["sample_rate"] == 8000
    assert rows["d44k"]["num_samples"] == 16000 and rows["d44k"]["sample_rate"] == 44100
    assert rows["sub/b"]["norm"] == "두 번째 문장"
    rejects = read_jsonl(out / "train.rejects.jsonl")
    assert {r["id"]: r["reason"] for r in rejects} == FOLDER_REJECTS
    assert all(r["detail"] and r["audio"].startswith(str(src)) for r in rejects)
    assert report.notes["resampled:8000"] == 1 and report.notes["resampled:44100"] == 1
    assert report.notes["downmixed:2"] == 1

    # Unlabeled (pretraining): transcripts are not read, so only audio problems reject.
    report = prepare_corpus(folder_candidates(src), out, "unlab", PrepareOptions(progress=False, unlabeled=True),
                            corpus="folder", source=str(src))
    rows = _by_id(read_jsonl(out / "unlab.jsonl"))
    assert sorted(rows) == ["a", "c8k", "d44k", "g", "h", "i", "k", "sub/b"]
    assert all("norm" not in r and "text" not in r for r in rows.values())
    assert report.rejects_by_reason == {"audio:empty": 1, "audio:truncated": 1, "audio:unreadable": 1}


def test_tsv_and_csv_listings(tmp_path):
    audio = tmp_path / "audio"
    write_wav(audio / "x.wav", 16000)
    write_wav(audio / "y.wav", 16000, seed=2)
    (tmp_path / "list.tsv").write_text(
        f"path\ttext\naudio/x.wav\t안녕 하세요\n{audio / 'y.wav'}\t반갑 습니다\naudio/nope.wav\t없는 파일\n"
        "audio/x.wav\t중복 아이디\n", encoding="utf-8")
    prepare_corpus(tsv_candidates(tmp_path / "list.tsv"), tmp_path / "out", "train", PLAIN, corpus="tsv", source="")
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert [(r["id"], r["norm"]) for r in rows] == [("audio/x", "안녕 하세요"), (str(audio / "y")[1:], "반갑 습니다")]
    assert {r["id"]: r["reason"] for r in read_jsonl(tmp_path / "out" / "train.rejects.jsonl")} == {
        "audio/nope": "audio:missing", "audio/x": "duplicate-id"}

    (tmp_path / "list.csv").write_text('audio/x.wav,"쉼표, 들어간 문장"\n', encoding="utf-8")
    prepare_corpus(tsv_candidates(tmp_path / "list.csv"), tmp_path / "out", "csv", PLAIN, corpus="tsv", source="")
    assert read_jsonl(tmp_path / "out" / "csv.jsonl")[0]["norm"] == "쉼표 들어간 문장"


def test_fairseq_import_and_export(tmp_path):
    wavs = [write_wav(tmp_path / "c" / f"{i}.wav", 16000, seed=i) for i in range(2)]
    entries = [ManifestEntry(str(i), str(w), 16000, norm=t, path=str(w))
               for i, (w, t) in enumerate(zip(wavs, ["하나 둘", "셋 넷"], strict=True))]
    write_fairseq_manifest(entries, tmp_path / "fs", "train", root=tmp_path / "c")
    code = kwav2vec(["prepare", "fairseq", str(tmp_path / "fs" / "train.tsv"), "--out", str(tmp_path / "out"),
                     "--no-progress", "--fairseq"])
    assert code == 0
    assert [(r["id"], r["norm"]) for r in read_jsonl(tmp_path / "out" / "train.jsonl")] == [("0", "하나 둘"), ("1", "셋 넷")]
    assert (tmp_path / "out" / "train.ltr").read_text() == (tmp_path / "fs" / "train.ltr").read_text()
    assert (tmp_path / "out" / "train.tsv").read_text() == (tmp_path / "fs" / "train.tsv").read_text()


def test_prepare_command(tmp_path, capsys):
    src, out = tmp_path / "folder", tmp_path / "out"
    _folder_tree(src)
    assert kwav2vec(["prepare", "folder", str(src), "--out", str(out), "--no-progress", "--workers", "2",
                     "--vocab-min-count", "2"]) == 0
    printed = capsys.readouterr().out
    assert "folder train: 4 of 11 utterances accepted" in printed
    assert "rejected audio:truncated" in printed and "note     resampled:8000" in printed
    assert {r["id"]: r["reason"] for r in read_jsonl(out / "train.rejects.jsonl")} == FOLDER_REJECTS
    # Syllables seen once are left to <unk>.
    accepted = "".join(r["norm"] for r in read_jsonl(out / "train.jsonl")).replace(" ", "")
    twice = {c for c, n in Counter(accepted).items() if n >= 2}
    assert "첫" not in twice and {"번", "째", "사"} <= twice
    assert set(Vocabulary.load(out / "vocab_syllable.json").tokens[3:]) == twice

    assert kwav2vec(["prepare", "folder", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert kwav2vec(["prepare", "ksponspeech", str(src), "--out", str(out), "--split", "dev"]) == 2
    with pytest.raises(SystemExit):
        kwav2vec(["prepare", "--help"])
    assert "ksponspeech" in capsys.readouterr().out
