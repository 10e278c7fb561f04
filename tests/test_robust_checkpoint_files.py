"""Issue 16 (and 15's loader half): the checkpoint files every reader gets, and the checkpoints a run
writes. An empty file, a directory, a file that is no checkpoint and a damaged one get one line
naming the file and what was expected from `transcribe`, `evaluate`, `convert`, resume and
`init_from`; the content checksum catches damage; periodic saves happen before the monitored metric
exists, with names that say what they are; a schedule that saves too rarely is warned about;
`--ckpt_path last` takes the newest checkpoint that verifies, in any logger version."""

from __future__ import annotations

import os
import re
import time
from datetime import timedelta

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from robust_utils import finetune_corpus, finetune_data, finetuner, one_thread, trainer  # noqa: F401

from kwav2vec.checkpoints import cli as convert_cli
from kwav2vec.checkpoints.integrity import (
    INTEGRITY_KEY,
    CheckpointError,
    newest_intact,
    read_checkpoint,
    seal,
    verify,
)
from kwav2vec.inference import evaluate, transcribe
from kwav2vec.lit.checkpoint_io import AtomicCheckpointIO
from kwav2vec.lit.checkpointing import (
    DEFAULT_SAVE_INTERVAL,
    CheckpointGapWarning,
    PeriodicCheckpoint,
    checkpoint_folders,
    resolve_last,
    split_checkpoint_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------- the checksum
def test_seal_and_verify_round_trip_through_a_file_and_catch_a_changed_value(tmp_path):
    blob = {"state_dict": {"w": torch.randn(5, 3), "b": torch.zeros(3, dtype=torch.bfloat16)}, "step": 7,
            "hp": {"name": "x", "ratio": [0.1, 0.4], "none": None}, "rng": (1, 2.5, "MT")}
    sealed = seal(blob)
    assert INTEGRITY_KEY not in blob and sealed[INTEGRITY_KEY]["tensors"] == 2
    torch.save(sealed, tmp_path / "x.ckpt")
    back = read_checkpoint(tmp_path / "x.ckpt")
    assert back.keys() == blob.keys() and torch.equal(back["state_dict"]["w"], blob["state_dict"]["w"])
    for change in (lambda b: b["state_dict"]["w"].view(-1).__setitem__(4, 1e9), lambda b: b["hp"].update(name="y")):
        copy = torch.load(tmp_path / "x.ckpt", weights_only=True)
        change(copy)
        with pytest.raises(CheckpointError, match="damaged"):
            verify(copy, "x.ckpt")


# --------------------------------------------------------------- bad files for every reader
def _bad_files(tmp_path):
    files = {"empty": tmp_path / "empty.ckpt", "directory": tmp_path / "folder.ckpt", "text": tmp_path / "text.ckpt"}
    files["empty"].write_bytes(b"")
    files["directory"].mkdir()
    files["text"].write_text("this is not a checkpoint\n")
    return files


EXPECT = {"empty": "empty file (0 bytes)", "directory": "is a directory", "text": "not a readable torch checkpoint"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return finetune_corpus(tmp_path_factory.mktemp("corpus") / "data")


@pytest.mark.parametrize("kind", list(EXPECT))
def test_transcribe_evaluate_and_convert_name_a_bad_file_in_one_line(tmp_path, capsys, corpus, kind):
    path = _bad_files(tmp_path)[kind]
    wav = corpus.parent / "audio" / "u000.wav"
    for main, args in ((transcribe.main, [str(path), str(wav)]), (evaluate.main, [str(path), str(corpus)]),
                       (convert_cli.main, ["--to", "hf", str(path), str(tmp_path / "hf")])):
        assert main(args) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err and EXPECT[kind] in err and "expected" in err, err


@pytest.mark.parametrize("kind", list(EXPECT))
def test_init_from_and_resume_name_a_bad_file(tmp_path, corpus, kind):
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(CheckpointError, match=re.escape(EXPECT[kind])) as err:
        finetuner(2, init_from=str(path))
    assert str(path) in str(err.value)
    t = trainer(tmp_path, 1, plugins=[AtomicCheckpointIO()])
    with pytest.raises(CheckpointError, match=re.escape(EXPECT[kind])) as err:
        t.fit(finetuner(1), datamodule=finetune_data(corpus), ckpt_path=str(path))
    assert str(path) in str(err.value) and "resume" in str(err.value)


def test_a_missing_init_from_says_it_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        finetuner(2, init_from=str(tmp_path / "nope.ckpt"))


# ------------------------------------------------------------------ which checkpoints are written
def test_the_checkpoint_configuration_splits_into_periodic_and_best():
    defaults = {"monitor": "val/cer", "mode": "min", "save_last": True, "save_top_k": 1, "filename": None,
                "every_n_train_steps": None, "train_time_interval": None, "every_n_epochs": None, "dirpath": None}
    periodic, best = split_checkpoint_config(defaults)
    assert isinstance(periodic, PeriodicCheckpoint) and periodic.monitor is None and periodic.save_last
    assert periodic.filename == "step-{step}" and periodic._train_time_interval == DEFAULT_SAVE_INTERVAL
    assert best.monitor == "val/cer" and not best.save_last and best._every_n_train_steps == 0
    assert best.format_checkpoint_name({"val/cer": torch.tensor(0.25), "step": torch.tensor(175)}).endswith(
        "best-val_cer-0.2500-step175.ckpt")
    periodic, best = split_checkpoint_config(defaults | {"every_n_train_steps": 10})
    assert periodic._every_n_train_steps == 10 and periodic._train_time_interval is None
    assert best._every_n_train_steps == 0
    (only,) = split_checkpoint_config(defaults | {"monitor": None})
    assert isinstance(only, PeriodicCheckpoint)


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.w(batch).pow(2).mean()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(40, 4), batch_size=4)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Files(pl.Callback):
    def __init__(self, folder) -> None:
        self.folder, self.seen = folder, {}

    def on_train_batch_start(self, trainer, *args) -> None:
        files = sorted(p.name for p in self.folder.glob("*.ckpt")) if self.folder.is_dir() else []
        self.seen[trainer.global_step] = files


def test_periodic_saves_happen_before_the_monitored_metric_exists(tmp_path):
    """Lightning's own ModelCheckpoint(monitor=...) writes nothing until the metric exists."""
    args = {"monitor": "val/cer", "mode": "min", "save_last": True, "save_top_k": 1, "dirpath": str(tmp_path / "ck"),
            "every_n_train_steps": 2}
    files = _Files(tmp_path / "ck")
    t = pl.Trainer(max_steps=7, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                   callbacks=[*split_checkpoint_config(args), files], plugins=[AtomicCheckpointIO()])
    t.fit(_Tiny())
    assert files.seen[3] == ["last.ckpt", "step-2.ckpt"] and files.seen[5] == ["last.ckpt", "step-4.ckpt"]
    # and once more at the end of training, step 7 not being on the schedule
    assert sorted(p.name for p in (tmp_path / "ck").glob("*.ckpt")) == ["last.ckpt", "step-7.ckpt"]
    assert read_checkpoint(tmp_path / "ck" / "last.ckpt", weights_only=False)["global_step"] == 7


def _gap_run(tmp_path, periodic, max_minutes):
    gap = CheckpointGapWarning(periodic, max_minutes, probe_steps=3)
    t = pl.Trainer(max_steps=8, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=False, callbacks=[gap], default_root_dir=tmp_path)
    t.fit(_Tiny())
    return gap


def test_a_schedule_that_could_leave_the_run_unsaved_too_long_is_warned_about(tmp_path):
    rare = PeriodicCheckpoint(dirpath=tmp_path / "a", every_n_train_steps=10**7)
    with pytest.warns(UserWarning, match=r"checkpoints every 1e\+07 steps, about .* min .* --max_checkpoint_gap"):
        _gap_run(tmp_path, rare, 30)
    hourly = PeriodicCheckpoint(dirpath=tmp_path / "b", train_time_interval=timedelta(hours=1))
    with pytest.warns(UserWarning, match="checkpoints every 60 min"):
        _gap_run(tmp_path, hourly, 30)
    with pytest.warns(UserWarning, match="no periodic checkpoints"):
        _gap_run(tmp_path, None, 30)
    frequent = PeriodicCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=2)
    assert _gap_run(tmp_path, frequent, 30).warning is None


# --------------------------------------------------------------------------- --ckpt_path last
def _lightning_file(path, step):
    torch.save(seal({"global_step": step, "state_dict": {"w": torch.full((300,), float(step))}}), path)


def test_newest_intact_skips_a_damaged_newer_file(tmp_path):
    for i, name in enumerate(["step-2.ckpt", "step-4.ckpt", "last.ckpt"]):
        _lightning_file(tmp_path / name, 2 * (i + 1))
        os.utime(tmp_path / name, (time.time() - 100 + i, time.time() - 100 + i))
    data = bytearray((tmp_path / "last.ckpt").read_bytes())
    at = data.find(torch.full((300,), 6.0).numpy().tobytes()[:64])
    data[at + 8] ^= 0xFF
    (tmp_path / "last.ckpt").write_bytes(bytes(data))
    good, skipped = newest_intact([tmp_path])
    assert good == tmp_path / "step-4.ckpt"
    assert len(skipped) == 1 and str(tmp_path / "last.ckpt") in skipped[0] and "damaged" in skipped[0]


def test_ckpt_path_last_looks_in_every_logger_version(tmp_path):
    logger = CSVLogger(tmp_path / "runs", name="finetune")
    old = tmp_path / "runs" / "finetune" / "version_0" / "checkpoints"
    old.mkdir(parents=True)
    _lightning_file(old / "last.ckpt", 4)
    (tmp_path / "runs" / "finetune" / "version_1").mkdir()  # a later run that saved nothing
    t = pl.Trainer(logger=logger, callbacks=[PeriodicCheckpoint()], default_root_dir=tmp_path, accelerator="cpu")
    assert str(old) in checkpoint_folders(t)
    assert resolve_last(t) == str(old / "last.ckpt")
    (old / "last.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        resolve_last(t)


def test_finetune_fit_max_checkpoint_gap(tmp_path, corpus, monkeypatch):
    """README: `kwav2vec finetune fit ... --checkpoint.train_time_interval 2:00:00 --max_checkpoint_gap 30`
    warns at the start; the periodic checkpoint is still written at the end (last.ckpt, step-N.ckpt)."""
    from kwav2vec.train_cli import run

    monkeypatch.chdir(tmp_path)
    argv = ["fit", "--model.model", "tiny", "--model.model_overrides", '{"encoder_layers": 1}',
            "--model.syllable_layers", "1", "--data.train_manifest", str(corpus),
            "--data.max_samples_per_batch", "24000", "--trainer.max_steps", "2", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--checkpoint.dirpath", str(tmp_path / "ck"), "--checkpoint.train_time_interval", "2:00:00",
            "--max_checkpoint_gap", "30"]
    with pytest.warns(UserWarning, match="checkpoints every 120 min: a crash can lose that much"):
        assert run("finetune", argv) == 0
    assert sorted(p.name for p in (tmp_path / "ck").glob("*.ckpt")) == ["last.ckpt", "step-2.ckpt"]
