"""The one reader of model files (`kwav2vec.checkpoints.reader`): `finetune fit --model.init_from X`
and `load_finetuner` read each file once, whatever kind it is (converted import, Pretrainer or
fine-tuner checkpoint), and every kind comes back as the same bundle."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
import torch
from test_finetune import TEST_OVERRIDES, TEXTS, make_batch, make_model
from test_finetune_trainer import loader, quiet, trainer

from kwav2vec import cli
from kwav2vec.checkpoints.format import ConvertedCheckpoint, save_converted
from kwav2vec.checkpoints.reader import read_model_checkpoint
from kwav2vec.inference.predict import load_finetuner
from kwav2vec.lit.finetune import HierarchicalFineTuner
from kwav2vec.lit.pretrain import Pretrainer
from kwav2vec.models.config import preset
from kwav2vec.models.wav2vec2 import Wav2Vec2Model

REPO = Path(__file__).resolve().parents[1]
# one CPU update of the demo recipe, no validation: enough to build the model, set up and train
ONE_STEP = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
            "--trainer.precision", "32-true", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--data.num_workers", "0", "--data.pin_memory", "false", "--data.max_samples_per_batch", "100000"]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """A converted backbone file, a Pretrainer checkpoint and a fine-tuner checkpoint (tiny models)."""
    root = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    cfg = preset("tiny", **TEST_OVERRIDES)
    files = {"converted": root / "converted.ckpt", "pretrainer": root / "pre.ckpt", "finetuner": root / "ft.ckpt"}
    save_converted(ConvertedCheckpoint(cfg, Wav2Vec2Model(cfg).state_dict(), source="test"), files["converted"])
    pre = Pretrainer(model="tiny", model_overrides=TEST_OVERRIDES, warmup_steps=1, total_steps=1)
    batch = make_batch(TEXTS[:2], seconds=1.0)
    fit = trainer(limit_val_batches=0)
    quiet(fit.fit, pre, loader([{k: batch[k] for k in ("ids", "audio", "audio_lengths")}]))
    fit.save_checkpoint(files["pretrainer"])
    fine = make_model(0.5)
    fit = trainer()
    quiet(fit.fit, fine, loader([make_batch()]))
    fit.save_checkpoint(files["finetuner"])
    return files


@pytest.fixture
def torch_loads(monkeypatch) -> Counter:
    """Every `torch.load` from here on, counted by the real path of the file it read."""
    loads: Counter = Counter()
    real = torch.load

    def counting(f, *args, **kwargs):
        loads[os.path.realpath(f) if isinstance(f, (str, os.PathLike)) else repr(f)] += 1
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    return loads


@pytest.mark.parametrize("kind", ["converted", "pretrainer", "finetuner"])
def test_finetune_fit_from_init_from_loads_the_file_once(model_files, torch_loads, tmp_path, monkeypatch, kind):
    (tmp_path / "conf").symlink_to(REPO / "conf")
    (tmp_path / "data").symlink_to(REPO / "data")  # conf/data/demo.yaml names data/demo/...
    monkeypatch.chdir(tmp_path)
    path = model_files[kind]
    argv = ["finetune", "fit", "--config", "conf/finetune/demo.yaml", "--config", "conf/data/demo.yaml",
            "--model.init_from", str(path), *ONE_STEP]
    try:
        code = quiet(cli.main, argv)
    except SystemExit as e:
        code = int(e.code or 0)
    assert code == 0
    assert list((tmp_path / "runs").rglob("*.ckpt")), "the run did not train and save"
    assert torch_loads == Counter({os.path.realpath(path): 1})


@pytest.mark.parametrize("kind", ["converted", "pretrainer", "finetuner"])
def test_every_kind_is_one_bundle(model_files, torch_loads, kind):
    bundle = read_model_checkpoint(model_files[kind])
    assert bundle.kind == kind and torch_loads == Counter({os.path.realpath(model_files[kind]): 1})
    assert bundle.config.encoder_embed_dim == preset("tiny", **TEST_OVERRIDES).encoder_embed_dim
    model = Wav2Vec2Model(bundle.config)
    missing = model.load_state_dict(bundle.state_dict, strict=False).missing_keys
    # a fine-tuner has dropped the pretraining-only modules; the others have them all
    assert all(k.startswith(("quantizer.", "project_q.", "final_proj.")) for k in missing)
    assert bool(missing) == (kind == "finetuner")
    assert set(bundle.heads) == ({"grapheme", "syllable"} if kind == "finetuner" else set())


def test_load_finetuner_reads_once_and_equals_lightnings_loader(model_files, torch_loads):
    ours = load_finetuner(str(model_files["finetuner"]))
    assert torch_loads == Counter({os.path.realpath(model_files["finetuner"]): 1})
    theirs = quiet(HierarchicalFineTuner.load_from_checkpoint, model_files["finetuner"], map_location="cpu")
    assert not ours.training and dict(ours.hparams) == dict(theirs.hparams)
    assert ours.grapheme_vocab == theirs.grapheme_vocab and ours.syllable_vocab == theirs.syllable_vocab
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_a_checkpoint_of_the_old_layout_still_loads_resumes_and_initialises(model_files, tmp_path):
    """Fine-tuner checkpoints written before the fine-tuner held a HierarchicalCTC keep the backbone
    and heads at the top level (`backbone.`, `grapheme_head.`, `syllable_head.`)."""
    blob = torch.load(model_files["finetuner"], map_location="cpu", weights_only=True)
    renames = {"model.backbone.": "backbone.", "model.heads.grapheme.": "grapheme_head.",
               "model.heads.syllable.": "syllable_head."}

    def old_name(key: str) -> str:
        new = next(p for p in renames if key.startswith(p))
        return renames[new] + key[len(new):]

    blob["state_dict"] = {old_name(k): v for k, v in blob["state_dict"].items()}
    old = tmp_path / "old.ckpt"
    torch.save(blob, old)

    current = load_finetuner(str(model_files["finetuner"]))
    for loaded in (load_finetuner(str(old)),
                   quiet(HierarchicalFineTuner.load_from_checkpoint, old, map_location="cpu")):
        assert loaded.state_dict().keys() == current.state_dict().keys()
        for key, value in current.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)
    a, b = read_model_checkpoint(old), read_model_checkpoint(model_files["finetuner"])
    assert a.kind == b.kind == "finetuner" and a.config == b.config and a.state_dict.keys() == b.state_dict.keys()
    assert {h: x.state_dict.keys() for h, x in a.heads.items()} == {h: x.state_dict.keys() for h, x in b.heads.items()}
    again = make_model(1.0, model="base", init_from=str(old))  # init_from: the backbone
    torch.testing.assert_close(again.backbone.state_dict()["encoder.layers.0.fc1.weight"],
                               current.backbone.state_dict()["encoder.layers.0.fc1.weight"], rtol=0, atol=0)
    # a resume (--ckpt_path) restores the weights and the optimizer state, then trains on
    resumed = make_model(0.5)
    fit = trainer(2)
    quiet(fit.fit, resumed, loader([make_batch()]), ckpt_path=str(old))
    assert fit.global_step == 2
