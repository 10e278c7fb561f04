"""Datasets, collate and DataModules: crops, targets, filters, batch layout, and files
that fail to load during training (logged with their path, skipped, counted, never fatal)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_data_utils import audio_manifest, write_jsonl, write_pcm, write_wav

from kwav2vec.data.audio import load_audio
from kwav2vec.data.collate import collate_labeled
from kwav2vec.data.datamodule import FinetuneDataModule, PretrainDataModule
from kwav2vec.data.dataset import AudioDataset, LabeledAudioDataset, SkippedItem, ctc_min_frames
from kwav2vec.data.manifest import read_manifest
from kwav2vec.data.prepare import build_vocabularies
from kwav2vec.models.config import STANDARD_GEOMETRY, FrameGeometry, Wav2Vec2Config

TEXTS = ["안녕 하세요", "반갑 습니다", "좋은 아침 입니다", "감사 합니다", "네", "안녕"]


def test_num_frames_and_ctc_minimum():
    g = STANDARD_GEOMETRY
    assert g.num_frames(399) == 0 and g.num_frames(400) == 1 and g.num_frames(720) == 2 and g.num_frames(16000) == 49
    assert ctc_min_frames([5, 6, 7]) == 3 and ctc_min_frames([5, 5, 6, 6, 6]) == 8 and ctc_min_frames([]) == 0


def test_pretraining_crop_is_deterministic_per_seed_epoch_index(tmp_path):
    entries = read_manifest(audio_manifest(tmp_path, [8000, 3000, 300]))
    ds = AudioDataset(entries, max_sample_size=4000, min_sample_size=1000, seed=1)
    assert len(ds) == 2 and ds.filtered == {"too-short": 1}  # 300 samples: below the minimum
    assert ds.lengths.tolist() == [4000, 3000]
    a, b, c = ds[(0, 0)]["audio"], ds[(0, 0)]["audio"], ds[(0, 1)]["audio"]
    assert a.shape == (4000,) and torch.equal(a, b) and not torch.equal(a, c)
    assert ds[1]["audio"].shape == (3000,)  # not cropped
    # the audio as read: normalisation is the model's (its config's `normalize`), not the data's
    full = load_audio(entries[0].path)
    assert any(torch.equal(a, full[s : s + 4000]) for s in range(len(full) - 4000 + 1))


def test_receptive_field_is_the_floor_of_min_sample_size(tmp_path):
    entries = read_manifest(audio_manifest(tmp_path, [399, 400]))
    assert [e.id for e in AudioDataset(entries, min_sample_size=0).entries] == ["u001"]
    assert len(AudioDataset(entries, min_sample_size=0, geometry=FrameGeometry(100, 50))) == 2


def test_labeled_dataset_targets_and_ctc_feasibility(tmp_path):
    graphemes, syllables = build_vocabularies(TEXTS)
    long_text = "안녕 하세요 " * 10  # 180 jamo steps for 0.5 s = 24 frames: cannot be aligned
    manifest = audio_manifest(tmp_path, [16000, 8000, 8000], [TEXTS[0], TEXTS[1], long_text.strip()])
    ds = LabeledAudioDataset(read_manifest(manifest), graphemes, syllables)
    assert len(ds) == 2 and ds.filtered == {"ctc-infeasible": 1}
    item = ds[0]
    assert item["graphemes"].tolist() == graphemes.encode(TEXTS[0])
    assert item["syllables"].tolist() == syllables.encode(TEXTS[0])
    batch = collate_labeled([ds[0], ds[1]])
    assert batch["audio"].shape == (2, 16000) and batch["audio"][1, 8000:].abs().max() == 0
    assert batch["audio_lengths"].tolist() == [16000, 8000]
    lg = [len(graphemes.encode(t)) for t in TEXTS[:2]]
    assert batch["graphemes"].shape == (2, max(lg)) and batch["grapheme_lengths"].tolist() == lg
    assert batch["graphemes"].dtype == torch.long and batch["graphemes"][1, lg[1]:].eq(0).all()
    assert batch["syllable_lengths"].tolist() == [len(TEXTS[0]), len(TEXTS[1])]  # "|" for the space
    assert batch["texts"] == TEXTS[:2] and batch["ids"] == ["u000", "u001"] and batch["skipped"] == []


def test_empty_target_is_filtered(tmp_path):
    graphemes, syllables = build_vocabularies(TEXTS)
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "audio": "a.wav", "num_samples": 16000, "norm": "   "}])
    write_wav(tmp_path / "a.wav", 16000)
    ds = LabeledAudioDataset(read_manifest(manifest), graphemes, syllables)
    assert len(ds) == 0 and ds.filtered == {"empty-target": 1}


def _bad_files(root):
    """One broken file per audio row of the bad-input matrix, plus good neighbours."""
    rows = []
    for i in range(4):
        write_wav(root / f"good{i}.wav", 8000, seed=i)
        rows.append((f"good{i}", f"good{i}.wav"))
    (root / "zero.wav").write_bytes(b"")
    (root / "text.wav").write_text("not audio at all")
    data = write_wav(root / "cut.wav", 8000).read_bytes()
    (root / "cut.wav").write_bytes(data[:6000])
    rows += [("missing", "missing.wav"), ("zero", "zero.wav"), ("text", "text.wav"), ("cut", "cut.wav")]
    # Other rates and stereo are fine: resampled and downmixed on load.
    write_wav(root / "r8k.wav", 4000, rate=8000)
    write_wav(root / "r44k.wav", 22050, rate=44100)
    write_wav(root / "stereo.wav", 8000, channels=2)
    write_pcm(root / "silence.pcm", 8000, silent=True)
    rows += [("r8k", "r8k.wav"), ("r44k", "r44k.wav"), ("stereo", "stereo.wav"), ("silence", "silence.pcm")]
    return write_jsonl(root / "train.jsonl", [
        {"id": uid, "audio": audio, "num_samples": 8000, "norm": "안녕 하세요"} for uid, audio in rows])


def test_files_that_fail_to_load_are_logged_skipped_and_counted(tmp_path, caplog):
    manifest = _bad_files(tmp_path)
    dm = PretrainDataModule(str(manifest), max_samples_per_batch=8000 * 4, min_sample_size=400,
                            max_sample_size=8000)
    dm.setup("fit")
    with caplog.at_level(logging.WARNING, logger="kwav2vec.data.loader"):
        batches = list(dm.train_dataloader())
    seen = sorted(i for b in batches for i in b["ids"])
    assert seen == sorted(["good0", "good1", "good2", "good3", "r8k", "r44k", "stereo", "silence"])
    assert dm.skipped == 4 and dm.skipped_reasons == {"missing": 1, "empty": 1, "unreadable": 1, "truncated": 1}
    assert sum(len(b["skipped"]) for b in batches) == 4
    for name in ("missing.wav", "zero.wav", "text.wav", "cut.wav"):
        assert any(str(tmp_path / name) in r.getMessage() for r in caplog.records), name
    for b in batches:
        assert b["audio"].shape[0] == len(b["ids"]) == len(b["audio_lengths"]) > 0
        assert torch.isfinite(b["audio"]).all()
    lengths = {i: int(n) for b in batches for i, n in zip(b["ids"], b["audio_lengths"], strict=True)}
    assert lengths["r8k"] == 8000 and lengths["r44k"] == 8000 and lengths["stereo"] == 8000


def test_a_batch_whose_every_file_failed_is_replaced(tmp_path, caplog):
    write_wav(tmp_path / "ok.wav", 8000)
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "gone1", "audio": "gone1.wav", "num_samples": 8000},
        {"id": "gone2", "audio": "gone2.wav", "num_samples": 8000},
        {"id": "ok", "audio": "ok.wav", "num_samples": 8000}])
    dm = PretrainDataModule(str(manifest), max_samples_per_batch=8000, min_sample_size=400, shuffle=False)
    dm.setup("fit")
    loader = dm.train_dataloader()
    with caplog.at_level(logging.WARNING):
        batches = list(loader)
    # Three one-utterance batches: every rank must still make three steps.
    assert len(batches) == 3 and all(len(b["ids"]) == 1 for b in batches)
    # gone2 failed twice: in its own batch, and again when tried as a stand-in for gone1's batch.
    assert loader.substituted_batches == 2 and loader.skipped == 3
    assert "every file of a batch failed" in caplog.text


def test_nothing_loadable_raises_a_clear_error(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": "x", "audio": "x.wav", "num_samples": 8000}])
    dm = PretrainDataModule(str(manifest), max_samples_per_batch=8000, min_sample_size=400)
    dm.setup("fit")
    with pytest.raises(RuntimeError, match="failed to load .* Check the manifest's audio paths"):
        list(dm.train_dataloader())


def test_finetune_datamodule_batches(tmp_path):
    graphemes, syllables = build_vocabularies(TEXTS)
    graphemes.save(tmp_path / "vocab_grapheme.json")
    syllables.save(tmp_path / "vocab_syllable.json")
    lengths = [16000, 12000, 20000, 9000, 8000, 10000]
    audio_manifest(tmp_path, lengths, TEXTS)
    audio_manifest(tmp_path, lengths[:3], TEXTS[:3], name="dev.jsonl")
    dm = FinetuneDataModule(str(tmp_path / "train.jsonl"), val_manifest=str(tmp_path / "dev.jsonl"),
                            max_samples_per_batch=40000, seed=3)
    assert dm.num_graphemes == len(graphemes) and dm.num_syllables == len(syllables)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sorted(i for b in batches for i in b["ids"]) == [f"u{i:03d}" for i in range(6)]
    keys = {"ids", "audio", "audio_lengths", "graphemes", "grapheme_lengths", "syllables", "syllable_lengths",
            "texts", "skipped"}
    for b in batches:
        assert set(b) == keys
        assert b["audio"].shape[0] * b["audio"].shape[1] <= 40000
        for i, uid in enumerate(b["ids"]):
            text = TEXTS[int(uid[1:])]
            n = int(b["grapheme_lengths"][i])
            assert b["graphemes"][i, :n].tolist() == graphemes.encode(text) and b["texts"][i] == text
    val = list(dm.val_dataloader())
    assert sorted(i for b in val for i in b["ids"]) == ["u000", "u001", "u002"]
    assert dm.filtered == {"train": {}, "val": {}}


def test_datamodule_filters_with_the_attached_models_frame_geometry(tmp_path):
    """The frame geometry is the model's: a model whose conv stack makes fewer frames makes the
    datamodule leave out transcripts that no longer fit; without a model the standard one applies."""
    graphemes, syllables = build_vocabularies(TEXTS)
    graphemes.save(tmp_path / "vocab_grapheme.json")
    syllables.save(tmp_path / "vocab_syllable.json")
    audio_manifest(tmp_path, [8000] * 3, TEXTS[:3])  # 24 standard frames: enough for each
    coarse = Wav2Vec2Config(conv_feature_layers="[(8, 400, 320)] + [(8, 2, 2)] * 3")  # 2560 samples a frame
    assert coarse.frame_geometry.samples_per_frame == 2560
    plain = FinetuneDataModule(str(tmp_path / "train.jsonl"))
    plain.setup("fit")
    assert plain.geometry == STANDARD_GEOMETRY and len(plain.datasets["train"]) == 3
    attached = FinetuneDataModule(str(tmp_path / "train.jsonl"))
    attached.trainer = SimpleNamespace(lightning_module=SimpleNamespace(config=coarse))
    attached.setup("fit")
    assert attached.geometry == coarse.frame_geometry
    assert len(attached.datasets["train"]) == 0 and attached.filtered["train"] == {"ctc-infeasible": 3}


def test_audio_normalisation_is_not_a_data_option(tmp_path):
    """One owner: the model config's `normalize`; the data layer has no knob to disagree with it."""
    audio_manifest(tmp_path, [8000], TEXTS[:1])
    with pytest.raises(TypeError, match="normalize"):
        PretrainDataModule(str(tmp_path / "train.jsonl"), normalize=True)


def test_finetune_datamodule_needs_vocabularies(tmp_path):
    audio_manifest(tmp_path, [16000], TEXTS[:1])
    with pytest.raises(ValueError, match="vocab_grapheme.json"):
        FinetuneDataModule(str(tmp_path / "train.jsonl"))


def test_lengths_follow_the_crop_for_batching(tmp_path):
    entries = read_manifest(audio_manifest(tmp_path, [50000, 1000, 30000]))
    ds = AudioDataset(entries, max_sample_size=20000)
    assert np.array_equal(ds.lengths, [20000, 1000, 20000])
    assert not isinstance(ds[(0, 0)], SkippedItem)
