"""Atomic checkpoint writes: a process killed while saving leaves the previous checkpoint loadable
and nothing partial under the final name; the Trainer writes through `AtomicCheckpointIO`."""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import sys
import time

import lightning.pytorch as pl
import pytest
import torch
from robust_utils import one_thread  # noqa: F401 (fixture)

from kwav2vec.checkpoints.integrity import read_checkpoint
from kwav2vec.lit import checkpoint_io
from kwav2vec.lit.checkpoint_io import AtomicCheckpointIO, atomic_torch_save

pytestmark = pytest.mark.usefixtures("one_thread")


def _killed_writer(path: str, half_written) -> None:
    """Runs in a forked child: saves a first checkpoint, then a second one whose torch.save writes
    half of its bytes and hangs, setting `half_written` so the test can SIGKILL it right there."""
    plugin = AtomicCheckpointIO()
    plugin.save_checkpoint({"step": 1, "w": torch.arange(200_000.0)}, path)
    real_save = torch.save

    def half_then_hang(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        half_written.set()
        time.sleep(120)

    torch.save = half_then_hang  # this is the child's own copy of the module
    plugin.save_checkpoint({"step": 2, "w": -torch.arange(200_000.0)}, path)
    os._exit(0)  # never reached


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_sigkill_during_a_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    # fork, not a fresh interpreter: the child needs no second import of torch and Lightning
    ctx = multiprocessing.get_context("fork")
    half_written = ctx.Event()
    proc = ctx.Process(target=_killed_writer, args=(str(path), half_written))
    proc.start()
    try:
        assert half_written.wait(timeout=120), (
            f"the writer did not get to its second save (exit code {proc.exitcode})"
        )
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == -signal.SIGKILL

    # The final name holds the complete first checkpoint; the half-written bytes are in a temp file.
    blob = torch.load(path, weights_only=True)
    assert blob["step"] == 1 and torch.equal(blob["w"], torch.arange(200_000.0))
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".tmp")] == ["last.ckpt"]
    (tmp,) = _leftovers(tmp_path)
    assert tmp.startswith(".last.ckpt.") and f".{proc.pid}." in tmp
    assert 0 < (tmp_path / tmp).stat().st_size < path.stat().st_size

    # The next save to that name removes the dead writer's leftover.
    AtomicCheckpointIO().save_checkpoint({"step": 3}, path)
    # (read_checkpoint: verifies the checksum the plugin seals every checkpoint with, and drops it)
    assert read_checkpoint(path) == {"step": 3} and _leftovers(tmp_path) == []


def test_a_live_writers_temp_file_is_left_alone(tmp_path):
    path = tmp_path / "x.ckpt"
    mine = tmp_path / f"{checkpoint_io._temp_prefix(path, os.getppid())}abc.tmp"  # the parent process: alive
    mine.write_bytes(b"partial")
    atomic_torch_save({"a": 1}, path)
    assert mine.exists() and torch.load(path, weights_only=True) == {"a": 1}


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.w(batch).pow(2).mean()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(8, 4), batch_size=4)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_saves_go_through_the_atomic_writer(tmp_path, monkeypatch):
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(_Tiny())
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    before = path.read_bytes()

    real_save = torch.save

    def half_then_fail(obj, f, *args, **kwargs):  # e.g. the disk filled up half-way
        real_save({"junk": torch.zeros(1000)}, f)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        trainer.save_checkpoint(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and _leftovers(tmp_path) == []
    assert torch.load(path, weights_only=False)["global_step"] == 1


def test_the_training_command_installs_the_atomic_writer(tmp_path, monkeypatch):
    from kwav2vec.data.datamodule import PretrainDataModule
    from kwav2vec.lit.pretrain import Pretrainer
    from kwav2vec.train_cli import KWav2VecCLI

    monkeypatch.setattr(sys, "argv", ["kwav2vec pretrain"])
    (tmp_path / "train.jsonl").write_text("")  # the datamodule checks that its manifests exist
    cli = KWav2VecCLI(
        Pretrainer,
        PretrainDataModule,
        run=False,
        save_config_callback=None,
        args=[
            "--model.model",
            "tiny",
            "--data.train_manifest",
            str(tmp_path / "train.jsonl"),
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
    )
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
