"""Speed perturbation of training audio (kwav2vec.data.augment): tempo and pitch scale by the
factor, the draw is fixed by (seed, epoch, index), and the dataset sizes batches and judges CTC
feasibility for every length a factor can give."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_data_utils import audio_manifest

from kwav2vec.data.augment import change_speed, check_speeds, draw_speed, length_range
from kwav2vec.data.datamodule import FinetuneDataModule
from kwav2vec.data.dataset import LabeledAudioDataset
from kwav2vec.data.manifest import read_manifest
from kwav2vec.data.prepare import build_vocabularies

TEXTS = ["안녕 하세요", "반갑 습니다", "감사 합니다"]


def peak_hz(wav: torch.Tensor) -> float:
    return float(torch.fft.rfft(wav).abs().argmax()) * 16000 / len(wav)


@pytest.mark.parametrize("factor", [0.9, 1.1, 1.25])
def test_a_factor_scales_pitch_up_and_length_down_by_itself(factor):
    t = torch.arange(16000) / 16000
    wav = torch.sin(2 * math.pi * 440 * t)
    out = change_speed(wav, factor)
    assert abs(len(out) - 16000 / factor) <= 1
    assert abs(peak_hz(out) - 440 * factor) < 2  # one FFT bin is 16000 / len(out) ~ 1 Hz
    assert change_speed(wav, 1.0) is wav


def test_factors_outside_the_range_are_refused_with_the_factor_named():
    assert check_speeds(None) == () and check_speeds([0.9, 1, 1.1]) == (0.9, 1.0, 1.1)
    for bad in (0.0, 3.0, float("nan")):
        with pytest.raises(ValueError, match="speed perturbation factors"):
            check_speeds([1.0, bad])


def test_the_draw_is_fixed_by_seed_epoch_and_index_and_uses_every_factor():
    speeds = (0.9, 1.0, 1.1)
    draws = [draw_speed(speeds, 0, epoch, 3) for epoch in range(30)]
    assert draws == [draw_speed(speeds, 0, epoch, 3) for epoch in range(30)]
    assert set(draws) == set(speeds)
    assert draws != [draw_speed(speeds, 1, epoch, 3) for epoch in range(30)]
    assert length_range(9000, speeds) == (8181, 10000) and length_range(9000, ()) == (9000, 9000)


def test_dataset_perturbs_items_reproducibly_and_sizes_batches_by_the_slowest(tmp_path):
    graphemes, syllables = build_vocabularies(TEXTS)
    entries = read_manifest(audio_manifest(tmp_path, [16000, 12000, 9000], TEXTS))
    plain = LabeledAudioDataset(entries, graphemes, syllables)
    ds = LabeledAudioDataset(entries, graphemes, syllables, speeds=(0.9, 1.0, 1.1), seed=5)
    assert ds.lengths.tolist() == [17778, 13334, 10000] and plain.lengths.tolist() == [16000, 12000, 9000]
    lengths = set()
    for epoch in range(8):
        item = ds[(1, epoch)]
        assert torch.equal(item["audio"], ds[(1, epoch)]["audio"])
        assert item["graphemes"].tolist() == plain[1]["graphemes"].tolist()  # the targets never change
        factor = draw_speed(ds.speeds, 5, epoch, 1)
        assert torch.equal(item["audio"], change_speed(plain[1]["audio"], factor))
        assert len(item["audio"]) <= ds.lengths[1]
        lengths.add(len(item["audio"]))
    assert len(lengths) > 1


def test_feasibility_is_judged_at_the_fastest_factor(tmp_path):
    graphemes, syllables = build_vocabularies(TEXTS)
    n_labels = len(graphemes.encode(TEXTS[0]))
    # just enough audio at 1.0 (one frame per label), too little when played 1.5 times as fast
    samples = 400 + 320 * (n_labels - 1)
    entries = read_manifest(audio_manifest(tmp_path, [samples], TEXTS[:1]))
    assert len(LabeledAudioDataset(entries, graphemes, syllables)) == 1
    fast = LabeledAudioDataset(entries, graphemes, syllables, speeds=(1.0, 1.5))
    assert len(fast) == 0 and fast.filtered == {"ctc-infeasible": 1}


def test_datamodule_perturbs_training_audio_only(tmp_path):
    graphemes, syllables = build_vocabularies(TEXTS)
    graphemes.save(tmp_path / "vocab_grapheme.json")
    syllables.save(tmp_path / "vocab_syllable.json")
    audio_manifest(tmp_path, [16000, 12000, 9000], TEXTS)
    audio_manifest(tmp_path, [16000, 12000], TEXTS[:2], name="dev.jsonl")
    with pytest.raises(ValueError, match="got 0.1"):
        FinetuneDataModule(str(tmp_path / "train.jsonl"), speed_perturb=[0.1])
    dm = FinetuneDataModule(str(tmp_path / "train.jsonl"), val_manifest=str(tmp_path / "dev.jsonl"),
                            speed_perturb=[0.9, 1.1], seed=2)
    dm.setup("fit")
    assert dm.datasets["train"].speeds == (0.9, 1.1) and dm.datasets["val"].speeds == ()
    train = [n for b in dm.train_dataloader() for n in b["audio_lengths"].tolist()]
    assert sorted(train) != [9000, 12000, 16000]
    val = sorted(n for b in dm.val_dataloader() for n in b["audio_lengths"].tolist())
    assert val == [12000, 16000]
    assert np.all(dm.datasets["train"].lengths >= [16000, 12000, 9000])
