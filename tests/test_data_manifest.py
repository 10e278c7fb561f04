"""JSONL and fairseq manifests: round trips and the manifest rows of the bad-input matrix."""

from __future__ import annotations

import os

import pytest
from test_data_utils import write_jsonl, write_wav

from kwav2vec.data.fairseq_manifest import (
    letters,
    read_fairseq_manifest,
    text_from_letters,
    write_fairseq_manifest,
)
from kwav2vec.data.manifest import ManifestEntry, ManifestError, read_manifest, write_manifest

ROW = {"id": "a", "audio": "audio/a.wav", "num_samples": 16000, "sample_rate": 16000, "text": "안녕!", "norm": "안녕"}


def test_round_trip_resolves_paths_against_the_manifest_folder(tmp_path):
    entries = [ManifestEntry(**ROW), ManifestEntry("b", "/abs/b.flac", 8000, 8000)]
    write_manifest(tmp_path / "m.jsonl", entries)
    got = read_manifest(tmp_path / "m.jsonl")
    assert [e.to_json() for e in got] == [e.to_json() for e in entries]
    assert got[0].path == str(tmp_path / "audio" / "a.wav") and got[1].path == "/abs/b.flac"
    assert got[1].text is None and got[1].norm is None
    assert "안녕" in (tmp_path / "m.jsonl").read_text(encoding="utf-8")  # not \\u-escaped


def test_line_that_is_not_json_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [ROW, "", "{'id': 'b'}"])
    with pytest.raises(ManifestError, match=r"m\.jsonl:3: not JSON") as err:
        read_manifest(path)
    assert err.value.line == 3


@pytest.mark.parametrize(
    "row, message",
    [
        ({k: v for k, v in ROW.items() if k != "num_samples"}, "missing field 'num_samples'"),
        (ROW | {"num_samples": "16000"}, "'num_samples' must be int"),
        (ROW | {"num_samples": True}, "'num_samples' must be int"),
        (ROW | {"num_samples": -1}, "num_samples must be >= 0"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_ill_formed_lines(tmp_path, row, message):
    path = write_jsonl(tmp_path / "m.jsonl", [ROW | {"id": "ok"}, row if isinstance(row, dict) else str(row)])
    with pytest.raises(ManifestError, match=rf"m\.jsonl:2: .*{message}"):
        read_manifest(path)


def test_duplicate_ids_and_missing_norm(tmp_path):
    with pytest.raises(ManifestError, match="duplicate id 'a' \\(first on line 1\\)"):
        read_manifest(write_jsonl(tmp_path / "d.jsonl", [ROW, ROW]))
    unlabeled = write_jsonl(tmp_path / "u.jsonl", [{k: ROW[k] for k in ("id", "audio", "num_samples")}])
    assert read_manifest(unlabeled)[0].sample_rate == 16000
    with pytest.raises(ManifestError, match="u.jsonl:1: utterance 'a' has no 'norm'"):
        read_manifest(unlabeled, require_norm=True)


def test_manifest_pointing_outside_its_root(tmp_path):
    path = write_jsonl(tmp_path / "sub" / "m.jsonl", [ROW | {"audio": "../../etc/passwd"}])
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: audio path '\.\./\.\./etc/passwd' points outside"):
        read_manifest(path)
    # Explicit ways out: allow it, or move the root.
    assert read_manifest(path, allow_outside_root=True)[0].path == os.path.normpath(tmp_path / "../etc/passwd")
    ok = write_jsonl(tmp_path / "sub" / "ok.jsonl", [ROW])
    assert read_manifest(ok, audio_root=tmp_path / "store")[0].path == str(tmp_path / "store" / "audio" / "a.wav")
    # A sibling folder whose name merely starts with the root's name is still outside.
    sneaky = write_jsonl(tmp_path / "r" / "m.jsonl", [ROW | {"audio": "../r2/a.wav"}])
    with pytest.raises(ManifestError, match="points outside"):
        read_manifest(sneaky)


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "none.jsonl")


def test_letters_round_trip():
    assert letters("안녕 하세요") == "ᄋ ᅡ ᆫ ᄂ ᅧ ᆼ | ᄒ ᅡ ᄉ ᅦ ᄋ ᅭ |"
    assert text_from_letters(letters("안녕 하세요")) == "안녕 하세요"
    assert text_from_letters("H E L L O | W O R L D |") == "HELLO WORLD"


def test_fairseq_write_then_read(tmp_path):
    wavs = [write_wav(tmp_path / "corpus" / "spk" / f"{i}.wav", 1600 * (i + 1)) for i in range(3)]
    texts = ["안녕 하세요", "반갑 습니다", "좋은 아침"]
    entries = [ManifestEntry(f"spk/{i}", str(w), 1600 * (i + 1), norm=t, path=str(w))
               for i, (w, t) in enumerate(zip(wavs, texts, strict=True))]
    files = write_fairseq_manifest(entries, tmp_path / "fs", "train", root=tmp_path / "corpus")
    assert [f.name for f in files] == ["train.tsv", "train.ltr", "train.wrd"]
    tsv = (tmp_path / "fs" / "train.tsv").read_text().splitlines()
    assert tsv[0] == str(tmp_path / "corpus") and tsv[1] == "spk/0.wav\t1600"

    back = read_fairseq_manifest(tmp_path / "fs" / "train.tsv")
    assert [(e.id, e.path, e.num_samples, e.text) for e in back] == [
        (f"spk/{i}", str(wavs[i]), 1600 * (i + 1), texts[i]) for i in range(3)]
    (tmp_path / "fs" / "train.wrd").unlink()  # falls back to the letters
    assert [e.text for e in read_fairseq_manifest(tmp_path / "fs" / "train.tsv")] == texts


def test_fairseq_errors(tmp_path):
    (tmp_path / "a.tsv").write_text(f"{tmp_path}\nx.wav\t100\ny.wav\n")
    with pytest.raises(ManifestError, match=r"a\.tsv:3: expected 'path<TAB>nframes'"):
        read_fairseq_manifest(tmp_path / "a.tsv")
    (tmp_path / "b.tsv").write_text(f"{tmp_path}\nx.wav\t100\n")
    (tmp_path / "b.wrd").write_text("one\ntwo\n")
    with pytest.raises(ManifestError, match="2 transcripts for 1 audio lines"):
        read_fairseq_manifest(tmp_path / "b.tsv")
