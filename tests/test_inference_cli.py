"""`kwav2vec transcribe` and `kwav2vec evaluate` end to end on a tiny random checkpoint.

The checkpoint, audio files and manifest are made here: a random HierarchicalFineTuner whose
heads favour blank (short hypotheses, quick beams), files of several formats/rates/channels, and
a manifest whose references hold syllables outside the syllable vocabulary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from kwav2vec.data.audio import load_audio
from kwav2vec.data.manifest import read_manifest
from kwav2vec.inference import evaluate, transcribe
from kwav2vec.inference.predict import load_finetuner
from kwav2vec.inference.report import TSV_COLUMNS, read_tsv
from kwav2vec.lit.checkpoint_io import save_module_checkpoint
from kwav2vec.lit.finetune import HierarchicalFineTuner
from kwav2vec.metrics import cer, jamo_error_rate, normalize_for_scoring, oov_recovery, swer, wer
from kwav2vec.text.vocab import Vocabulary

REPO = Path(__file__).resolve().parents[1]
# The syllable vocabulary's texts; the references also use 뷁, 똠 and 햏, which it lacks.
VOCAB_TEXTS = ["안녕 하세요", "반갑 습니다", "감사 합니다", "모델 변수"]
REFERENCES = ["안녕 하세요", "반갑 습니다 뷁", "감사 합니다", "모델 변수 똠", "하세요 반갑", "햏 안녕"]
TINY = dict(
    encoder_layers=1, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
    conv_pos=8, conv_pos_groups=4, final_dim=16,
    conv_feature_layers="[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2",
)
ALL_DECODERS = ["greedy", "greedy:syllable", "beam", "beam:syllable", "joint:union", "joint:rescore"]


def noise(seconds: float, rate: int, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal((int(seconds * rate), channels))).astype(np.float32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random tiny fine-tuner, saved as Lightning's checkpointing does (through on_save_checkpoint)."""
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    Vocabulary.grapheme().save(folder / "vocab_grapheme.json")
    Vocabulary.syllables_from_texts(VOCAB_TEXTS).save(folder / "vocab_syllable.json")
    model = HierarchicalFineTuner(
        model="tiny", model_overrides=TINY, syllable_layers=1, layerdrop=0.0,
        grapheme_vocabulary=str(folder / "vocab_grapheme.json"),
        syllable_vocabulary=str(folder / "vocab_syllable.json"),
    )
    with torch.no_grad():  # favour blank: short hypotheses, quick beam searches
        model.grapheme_head.proj.bias[0] = 1.0
        model.syllable_head.proj.bias[0] = 3.0
    return Path(save_module_checkpoint(model, folder / "tiny.ckpt"))


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory) -> list[Path]:
    """WAV stereo 22.05 kHz, FLAC 8 kHz, OGG 44.1 kHz, headerless 16 kHz PCM."""
    folder = tmp_path_factory.mktemp("audio")
    files = [
        (folder / "stereo 22k.wav", noise(0.7, 22050, 2, 1), 22050),
        (folder / "mono_8k.flac", noise(0.5, 8000, 1, 2), 8000),
        (folder / "mono_44k.ogg", noise(0.6, 44100, 1, 3), 44100),
    ]
    for path, data, rate in files:
        sf.write(path, data, rate)
    pcm = folder / "raw_16k.pcm"
    (noise(0.4, 16000, 1, 4)[:, 0] * 32767).astype("<i2").tofile(pcm)
    return [p for p, _, _ in files] + [pcm]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("manifest")
    lines = []
    for i, ref in enumerate(REFERENCES):
        data = noise(0.3 + 0.15 * i, 16000, 1, 10 + i)  # lengths differ: batches of different sizes
        sf.write(folder / f"utt{i}.flac", data, 16000)
        lines.append({"id": f"utt{i}", "audio": f"utt{i}.flac", "num_samples": len(data),
                      "sample_rate": 16000, "text": ref, "norm": ref})
    path = folder / "test.jsonl"
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return path


def single_utterance_greedy(checkpoint: Path, manifest: Path) -> dict[str, dict[str, str]]:
    """Greedy transcripts of each utterance forwarded alone: {head: {id: text}}."""
    model = load_finetuner(str(checkpoint))
    out: dict[str, dict[str, str]] = {"grapheme": {}, "syllable": {}}
    for e in read_manifest(manifest):
        wav = load_audio(e.path)
        for head, texts in model.transcribe(wav[None], torch.tensor([len(wav)])).items():
            out[head][e.id] = normalize_for_scoring(texts[0])
    return out


# ------------------------------------------------------------------------------------ transcribe
def test_transcribe_prints_path_and_text_per_file_in_order(checkpoint, audio_files, capsys):
    code = transcribe.main([str(checkpoint), *map(str, audio_files), "--decoder", "greedy", "--batch-size", "2"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in audio_files]
    # the same text as the model's own greedy transcription of the loaded audio
    model = load_finetuner(str(checkpoint))
    for path, line in zip(audio_files, lines, strict=True):
        wav = load_audio(path)
        expected = model.transcribe(wav[None], torch.tensor([len(wav)]))["grapheme"][0]
        assert line.split("\t", 1)[1] == " ".join(expected.split())


def test_transcribe_json_gives_nbest_with_scores(checkpoint, audio_files, capsys):
    code = transcribe.main([str(checkpoint), *map(str, audio_files[:2]), "--decoder", "joint",
                            "--joint-mode", "rescore", "--beam-width", "8", "--nbest", "3", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert doc["decoder"] == "joint-rescore" and doc["errors"] == []
    assert [r["path"] for r in doc["results"]] == [str(p) for p in audio_files[:2]]
    for result in doc["results"]:
        nbest = result["nbest"]
        assert 1 <= len(nbest) <= 3
        assert result["text"] == nbest[0]["text"]
        scores = [h["score"] if h["score"] is not None else -float("inf") for h in nbest]
        assert scores == sorted(scores, reverse=True)
        assert set(nbest[0]["details"]) >= {"grapheme", "syllable"}
        assert result["seconds"] == pytest.approx(sf.info(result["path"]).duration, abs=0.01)


def test_transcribe_names_unreadable_files_and_still_transcribes_the_rest(checkpoint, audio_files, tmp_path, capsys):
    bad = tmp_path / "not_audio.wav"
    bad.write_bytes(b"this is not a RIFF file at all")
    missing = tmp_path / "missing.flac"
    code = transcribe.main([str(checkpoint), str(bad), str(audio_files[1]), str(missing)])
    captured = capsys.readouterr()
    assert code == 1
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == [str(audio_files[1])]
    assert f"cannot read {bad}: unreadable" in captured.err
    assert f"cannot read {missing}: missing" in captured.err


def test_a_clip_shorter_than_one_frame_gets_an_empty_transcript_and_a_warning(checkpoint, audio_files, tmp_path,
                                                                              capsys):
    short = tmp_path / "short.wav"
    sf.write(short, noise(300 / 16000, 16000, 1, 5), 16000)  # 300 samples < the 400 one frame needs
    for decoder in (["--decoder", "greedy"], ["--decoder", "joint", "--beam-width", "4"]):
        code = transcribe.main([str(checkpoint), str(audio_files[0]), str(short), *decoder, "--batch-size", "4"])
        captured = capsys.readouterr()
        assert code == 1  # one file had a problem
        lines = captured.out.splitlines()
        assert [line.split("\t")[0] for line in lines] == [str(audio_files[0]), str(short)]
        assert lines[1] == f"{short}\t"
        assert f"warning: {short}: 300 samples" in captured.err and "shorter than one frame" in captured.err
        assert "Traceback" not in captured.err
    assert transcribe.main([str(checkpoint), str(short), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["results"][0]["text"] == "" and "shorter than one frame" in doc["results"][0]["warning"]


def test_evaluate_scores_a_too_short_clip_as_empty_and_writes_its_outputs(checkpoint, manifest, tmp_path, capsys):
    entries = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()[:2]]
    for e in entries:
        e["audio"] = str(manifest.parent / e["audio"])
    sf.write(tmp_path / "tiny.flac", noise(200 / 16000, 16000, 1, 6), 16000)
    entries.append({"id": "tiny", "audio": str(tmp_path / "tiny.flac"), "num_samples": 200, "sample_rate": 16000,
                    "text": "안녕", "norm": "안녕"})
    path = tmp_path / "with_short.jsonl"
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries), encoding="utf-8")
    out = tmp_path / "eval"
    code = evaluate.main([str(checkpoint), str(path), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "tiny.flac (utterance tiny)" in err and "shorter than one frame" in err
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert [c["id"] for c in summary["too_short"]] == ["tiny"] and summary["scored"] == 3
    rows = read_tsv(out / "greedy-grapheme.tsv")
    assert rows[-1]["id"] == "tiny" and rows[-1]["hyp"] == "" and int(rows[-1]["char_errors"]) == 2


def test_transcribe_rejects_a_file_that_is_not_a_checkpoint(audio_files, tmp_path, capsys):
    fake = tmp_path / "fake.ckpt"
    torch.save({"weights": torch.zeros(2)}, fake)
    assert transcribe.main([str(fake), str(audio_files[0])]) == 2
    err = capsys.readouterr().err
    assert str(fake) in err and "not a HierarchicalFineTuner checkpoint" in err


# ------------------------------------------------------------------------------------- evaluate
def test_evaluate_writes_tsv_and_summary_that_agree_with_kwav2vec_metrics(checkpoint, manifest, tmp_path, capsys):
    out = tmp_path / "eval"
    code = evaluate.main([str(checkpoint), str(manifest), "--decoder", *ALL_DECODERS, "--beam-width", "8",
                          "--batch-size", "2", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    names = ["greedy-grapheme", "greedy-syllable", "beam-grapheme", "beam-syllable", "joint-union", "joint-rescore"]
    assert list(summary["decoders"]) == names
    assert summary["scored"] == summary["utterances"] == len(REFERENCES) and summary["skipped"] == []
    known = Vocabulary.load(checkpoint.parent / "vocab_syllable.json").symbols
    assert summary["known_syllables"] == len(known)
    greedy = single_utterance_greedy(checkpoint, manifest)
    for name in names:
        assert name in printed  # the table
        rows = read_tsv(out / summary["decoders"][name]["tsv"])
        assert [r["id"] for r in rows] == [f"utt{i}" for i in range(len(REFERENCES))]
        assert [r["ref"] for r in rows] == REFERENCES
        refs, hyps = [r["ref"] for r in rows], [r["hyp"] for r in rows]
        m = summary["decoders"][name]
        assert m["cer"] == pytest.approx(cer(refs, hyps))
        assert m["cer"] == pytest.approx(sum(int(r["char_errors"]) for r in rows) / sum(int(r["ref_chars"]) for r in rows))
        assert m["wer"] == pytest.approx(wer(refs, hyps))
        assert m["swer"] == pytest.approx(swer(refs, hyps))
        assert m["jamo_error_rate"] == pytest.approx(jamo_error_rate(refs, hyps))
        assert m["oov_syllables"] == 3  # 뷁, 똠, 햏
        assert m["oov_recovery"] == pytest.approx(oov_recovery(refs, hyps, known))
        timing = summary["decoders"][name]["timing"]
        assert timing["decode_seconds"] > 0 and timing["total_rtf"] > timing["decode_rtf"] > 0
        if name.startswith("greedy"):  # batched through the predict loop == each utterance alone
            assert hyps == [greedy[name.split("-")[1]][r["id"]] for r in rows]
    # the union shares the single-head searches: its time includes both of theirs
    t = {n: summary["decoders"][n]["timing"]["decode_seconds"] for n in names}
    assert t["joint-union"] >= t["beam-grapheme"] + t["beam-syllable"]


def test_evaluate_reports_unreadable_audio_and_scores_the_rest(checkpoint, manifest, tmp_path, capsys):
    entries = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()[:3]]
    for e in entries:  # absolute paths: this manifest lives elsewhere
        e["audio"] = str(manifest.parent / e["audio"])
    entries[0] |= {"id": "broken", "audio": str(tmp_path / "gone.flac")}
    bad_manifest = tmp_path / "with_broken.jsonl"
    bad_manifest.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries), encoding="utf-8")
    out = tmp_path / "eval"
    code = evaluate.main([str(checkpoint), str(bad_manifest), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "gone.flac" in err and "broken" in err
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert [s["id"] for s in summary["skipped"]] == ["broken"] and summary["scored"] == 2
    assert [r["id"] for r in read_tsv(out / "greedy-grapheme.tsv")] == ["utt1", "utt2"]
    assert read_tsv(out / "greedy-grapheme.tsv")[0].keys() == set(TSV_COLUMNS)


def test_evaluate_two_processes_each_utterance_exactly_once(checkpoint, manifest, tmp_path):
    """`--trainer.strategy ddp --trainer.devices 2` on the CPU (gloo): two ranks, disjoint shards,
    gathered once on rank 0; the transcripts equal each utterance decoded alone."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    env.pop("MASTER_PORT", None)  # Lightning picks a free port
    proc = subprocess.run(
        [sys.executable, "-m", "kwav2vec.cli", "evaluate", str(checkpoint), str(manifest),
         "--decoder", "greedy", "greedy:syllable", "joint:rescore", "--beam-width", "4", "--batch-size", "1",
         "--out", str(out), "--no-progress",
         "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("utterances,") == 1  # only rank 0 reports
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["world_size"] == 2
    ranks = summary["ranks"]
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    assert all(r["utterances"] == 3 for r in ranks)  # 6 one-utterance batches, 3 per rank
    greedy = single_utterance_greedy(checkpoint, manifest)
    for name in ("greedy-grapheme", "greedy-syllable", "joint-rescore"):
        rows = read_tsv(out / f"{name}.tsv")
        assert [r["id"] for r in rows] == [f"utt{i}" for i in range(len(REFERENCES))]
        if name.startswith("greedy"):
            assert [r["hyp"] for r in rows] == [greedy[name.split("-")[1]][r["id"]] for r in rows]
