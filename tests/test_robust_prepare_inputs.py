"""Issue 16, data preparation: every candidate file accounted for, TSV columns by name, and a
`prepare` that accepts nothing leaves the previous outputs exactly as they were. Each test here
failed on the code before it (see the bad-input matrix in tests/test_robust_bad_inputs.py)."""

from __future__ import annotations

import logging
import os

import pytest
from test_data_utils import read_jsonl, write_flac, write_jsonl, write_pcm, write_wav

from kwav2vec.cli import main as kwav2vec
from kwav2vec.data.corpora.folder import folder_candidates
from kwav2vec.data.corpora.kspon import ksponspeech_candidates
from kwav2vec.data.corpora.tsv import tsv_candidates
from kwav2vec.data.corpora.zeroth import zeroth_candidates
from kwav2vec.data.dataset import LabeledAudioDataset, SkippedItem
from kwav2vec.data.manifest import read_manifest
from kwav2vec.data.prepare import PrepareError, PrepareOptions, build_vocabularies, prepare_corpus
from kwav2vec.text.normalize import NormalizerConfig

PLAIN = PrepareOptions(progress=False, normalizer=NormalizerConfig(markup=False, unsupported="drop"))


def _rejects(out, split="train"):
    return {r["id"]: r["reason"] for r in read_jsonl(out / f"{split}.rejects.jsonl")}


# ------------------------------------------------------------------------------------- TSV/CSV
def test_tsv_header_columns_are_found_by_name_and_others_kept_as_metadata(tmp_path):
    write_wav(tmp_path / "a.wav", 16000)
    write_wav(tmp_path / "b.wav", 16000, seed=1)
    (tmp_path / "list.tsv").write_text("speaker\ttranscript\tduration\taudio\n"
                                       "spk01\t균형 있는 문장\t3.29\ta.wav\nspk02\t두 번째\t1.00\tb.wav\n", encoding="utf-8")
    prepare_corpus(tsv_candidates(tmp_path / "list.tsv"), tmp_path / "out", "train", PLAIN, corpus="tsv", source="")
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert [(r["id"], r["norm"], r["meta"]) for r in rows] == [
        ("a", "균형 있는 문장", {"speaker": "spk01", "duration": "3.29"}),
        ("b", "두 번째", {"speaker": "spk02", "duration": "1.00"})]
    # the vocabulary is built from the transcripts only
    assert "3" not in (tmp_path / "out" / "vocab_grapheme.json").read_text(encoding="utf-8").split('"tokens"')[1]


def test_csv_extra_columns_with_a_header_are_not_appended_to_the_transcript(tmp_path):
    write_wav(tmp_path / "a.wav", 16000)
    (tmp_path / "list.csv").write_text("path,text,speaker\na.wav,안녕 하세요,spk01\n", encoding="utf-8")
    (c,) = tsv_candidates(tmp_path / "list.csv")
    assert c.text == "안녕 하세요" and c.meta == {"speaker": "spk01"}


def test_tsv_without_header_and_three_columns_is_an_error_naming_the_line(tmp_path, capsys):
    write_wav(tmp_path / "a.wav", 16000)
    (tmp_path / "list.tsv").write_text("a.wav\t첫 문장\n a.wav\t안녕\tspk01\n", encoding="utf-8")
    out = tmp_path / "out"
    assert kwav2vec(["prepare", "tsv", str(tmp_path / "list.tsv"), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'list.tsv'}:2: 3 columns" in err and "--columns" in err, err
    assert not out.exists() or not any(out.iterdir())


def test_prepare_tsv_columns(tmp_path, capsys):
    """README: `kwav2vec prepare tsv list.tsv --out data/mine --columns path,text,speaker`."""
    write_wav(tmp_path / "a.wav", 16000)
    (tmp_path / "list.tsv").write_text("a.wav\t안녕 하세요\tspk01\n", encoding="utf-8")
    out = tmp_path / "mine"
    assert kwav2vec(["prepare", "tsv", str(tmp_path / "list.tsv"), "--out", str(out), "--columns", "path,text,speaker",
                     "--no-progress"]) == 0
    assert [(r["norm"], r["meta"]) for r in read_jsonl(out / "train.jsonl")] == [("안녕 하세요", {"speaker": "spk01"})]
    assert "1 of 1 utterances accepted" in capsys.readouterr().out


def test_tsv_row_with_an_empty_path_is_a_reject_naming_the_line(tmp_path):
    write_wav(tmp_path / "a.wav", 16000)
    (tmp_path / "list.tsv").write_text("path\ttext\na.wav\t안녕 하세요\n\t주인 없는 문장\n", encoding="utf-8")
    prepare_corpus(tsv_candidates(tmp_path / "list.tsv"), tmp_path / "out", "train", PLAIN, corpus="tsv", source="")
    (reject,) = read_jsonl(tmp_path / "out" / "train.rejects.jsonl")
    assert reject["id"] == "list.tsv:3" and reject["reason"] == "listing:empty-path"
    assert f"{tmp_path / 'list.tsv'}:3" in reject["detail"]


# ---------------------------------------------------------------------------- folder, Zeroth, Kspon
def test_folder_dangling_and_looping_symlinks_are_rejects(tmp_path):
    src = tmp_path / "src"
    write_wav(src / "good.wav", 16000)
    (src / "good.txt").write_text("좋은 문장", encoding="utf-8")
    os.symlink(src / "gone.wav", src / "dangling.wav")
    (src / "dangling.txt").write_text("없는 파일", encoding="utf-8")
    os.symlink(src / "loop_b.wav", src / "loop_a.wav")
    os.symlink(src / "loop_a.wav", src / "loop_b.wav")
    report = prepare_corpus(folder_candidates(src), tmp_path / "out", "train", PLAIN, corpus="folder", source=str(src))
    assert report.total == 4 and report.accepted == 1
    assert _rejects(tmp_path / "out") == {"dangling": "audio:dangling-symlink", "loop_a": "audio:symlink-loop",
                                          "loop_b": "audio:symlink-loop"}


def test_zeroth_tab_separated_lines_parse_and_malformed_lines_are_rejects(tmp_path):
    chapter = tmp_path / "zeroth" / "003" / "106"
    for i in range(2):
        write_flac(chapter / f"106_003_{i:04d}.flac", 24000, seed=i)
    (chapter / "106_003.trans.txt").write_text(
        "106_003_0000\t안녕하세요 반갑습니다\n106_003_0001 두 번째 문장\n안녕하세요 아이디 없는 줄\n", encoding="utf-8")
    prepare_corpus(zeroth_candidates(tmp_path / "zeroth", "all"), tmp_path / "out", "train", PLAIN, corpus="zeroth",
                   source="")
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert [(r["id"], r["norm"]) for r in rows] == [("106_003_0000", "안녕하세요 반갑습니다"),
                                                    ("106_003_0001", "두 번째 문장")]
    (reject,) = read_jsonl(tmp_path / "out" / "train.rejects.jsonl")
    assert reject["reason"] == "listing:malformed-line" and "106_003.trans.txt:3" in reject["detail"]


def test_ksponspeech_wav_named_pcm_is_a_reject(tmp_path):
    folder = tmp_path / "kspon" / "KsponSpeech_01" / "KsponSpeech_0001"
    write_pcm(folder / "KsponSpeech_000001.pcm", 16000)
    (folder / "KsponSpeech_000001.txt").write_bytes("진짜 피씨엠".encode("cp949"))
    wav = write_wav(tmp_path / "x.wav", 16000, seed=3)
    (folder / "KsponSpeech_000002.pcm").write_bytes(wav.read_bytes())
    (folder / "KsponSpeech_000002.txt").write_bytes("이름만 피씨엠".encode("cp949"))
    prepare_corpus(ksponspeech_candidates(tmp_path / "kspon"), tmp_path / "out", "train", PLAIN, corpus="ksponspeech",
                   source="")
    assert [r["id"] for r in read_jsonl(tmp_path / "out" / "train.jsonl")] == ["KsponSpeech_000001"]
    (reject,) = read_jsonl(tmp_path / "out" / "train.rejects.jsonl")
    assert reject["reason"] == "audio:format-mismatch" and "RIFF" in reject["detail"]


# ------------------------------------------------------------------- nothing accepted: nothing changed
def _good_outputs(tmp_path):
    src, out = tmp_path / "good", tmp_path / "out"
    for i in range(2):
        write_wav(src / f"g{i}.wav", 16000, seed=i)
        (src / f"g{i}.txt").write_text("좋은 문장", encoding="utf-8")
    assert kwav2vec(["prepare", "folder", str(src), "--out", str(out), "--no-progress"]) == 0
    return out, {p.name: p.read_bytes() for p in out.iterdir()}


@pytest.mark.parametrize("case", ["no audio", "no transcripts", "all rejected"])
def test_a_prepare_that_accepts_nothing_leaves_the_previous_outputs_untouched(tmp_path, capsys, case):
    out, before = _good_outputs(tmp_path)
    assert sorted(before) == ["train.jsonl", "train.rejects.jsonl", "train.report.json", "vocab_grapheme.json",
                              "vocab_syllable.json"]
    src = tmp_path / "bad"
    src.mkdir()
    if case == "no audio":
        (src / "notes.txt").write_text("no audio here")
    elif case == "no transcripts":
        write_wav(src / "x.wav", 16000)
        write_wav(src / "y.wav", 16000, seed=1)
    else:
        (src / "x.wav").write_bytes(b"")
        (src / "x.txt").write_text("빈 파일", encoding="utf-8")
        write_wav(src / "y.wav", 16000)
        (src / "y.txt").write_text("!!!", encoding="utf-8")
    capsys.readouterr()
    assert kwav2vec(["prepare", "folder", str(src), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    expected = {"no audio": f"no audio found in {src}", "no transcripts": "no transcripts: none of the 2 audio files",
                "all rejected": "all 2 utterances"}[case]
    assert expected in err and "nothing written" in err, err
    if case == "all rejected":
        assert "audio:empty 1" in err and "transcript:empty 1" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # byte for byte, nothing left over


def test_prepare_corpus_raises_prepare_error(tmp_path):
    with pytest.raises(PrepareError, match="no audio found"):
        prepare_corpus([], tmp_path / "out", "dev", PLAIN, corpus="tsv", source="empty.tsv")
    assert not (tmp_path / "out" / "dev.jsonl").exists()


# ------------------------------------------------------------------------------- lying num_samples
def test_a_manifest_entry_whose_num_samples_lies_is_skipped_and_named(tmp_path, caplog):
    text = "안녕 하세요"
    write_wav(tmp_path / "a.wav", 16000)
    write_wav(tmp_path / "b.wav", 3200, seed=1)  # 0.2 s, the manifest claims 2 s
    manifest = write_jsonl(tmp_path / "train.jsonl", [
        {"id": "honest", "audio": "a.wav", "num_samples": 16000, "norm": text},
        {"id": "liar", "audio": "b.wav", "num_samples": 32000, "norm": text}])
    graphemes, syllables = build_vocabularies([text])
    ds = LabeledAudioDataset(read_manifest(manifest), graphemes, syllables)
    assert not isinstance(ds[0], SkippedItem)
    item = ds[1]
    assert isinstance(item, SkippedItem) and item.id == "liar" and item.reason == "length-mismatch"
    assert "32000" in item.detail and "3200 samples" in item.detail and item.path == str(tmp_path / "b.wav")
    assert ds.skipped == {"length-mismatch": 1}
    # the training loader names it when it drops it
    from robust_utils import finetune_data

    graphemes.save(tmp_path / "vocab_grapheme.json")
    syllables.save(tmp_path / "vocab_syllable.json")
    data = finetune_data(manifest, shuffle=False)
    data.setup("fit")
    with caplog.at_level(logging.WARNING, logger="kwav2vec.data.loader"):
        ids = [uid for batch in data.train_dataloader() for uid in batch["ids"]]
    assert "liar" not in ids and "honest" in ids
    assert "skipped utterance liar" in caplog.text and "length-mismatch" in caplog.text, caplog.text
