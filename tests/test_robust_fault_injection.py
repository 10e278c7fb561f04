"""Fault injection on the real training command (issue 16): `kwav2vec finetune fit` on tiny data,
killed with SIGKILL at random points 10 times in a row and resumed each time with `--ckpt_path last`,
ends with exactly the weights of an uninterrupted run; after every kill a checkpoint that verifies
exists and is no older than the one before. Plus: a full disk during a save leaves the previous
checkpoint valid and says what happened; damaged checkpoints are refused by resume, `evaluate`,
`transcribe` and `convert`, each naming the file.

The runs are forked from a forkserver that imported everything once (tests/robust_train_child.py)."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import robust_train_child
import torch
from robust_utils import finetune_corpus

from kwav2vec.checkpoints.integrity import CheckpointError, newest_intact, read_checkpoint

TOTAL = 36  # optimizer steps of the whole run (4.5 epochs of 8 batches)
EVERY = 2  # steps between periodic saves
KILLS = 10

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _argv(root: Path, manifest: Path) -> list[str]:
    return [
        "--model.model", "tiny", "--model.model_overrides", '{"encoder_layers": 2}', "--model.syllable_layers", "1",
        "--model.lr", "1e-3", "--model.total_steps", str(TOTAL), "--model.mask_prob", "0.3",
        "--model.mask_length", "5", "--model.mask_channel_length", "16",
        "--data.train_manifest", str(manifest), "--data.max_samples_per_batch", "24000", "--data.seed", "3",
        "--trainer.max_steps", str(TOTAL), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1",
        "--checkpoint.dirpath", str(root / "ckpt"), "--checkpoint.every_n_train_steps", str(EVERY),
        "--ckpt_path", "last",
    ]


@pytest.fixture(scope="module")
def forkserver():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(robust_train_child.PRELOAD)
    return ctx


def _start(ctx, root: Path, manifest: Path, fail_saves_after: int | None = None):
    root.mkdir(parents=True, exist_ok=True)
    proc = ctx.Process(target=robust_train_child.finetune,
                       args=(str(root), _argv(root, manifest), str(root / "log.txt"), fail_saves_after))
    proc.start()
    return proc


def _log(root: Path) -> str:
    return (root / "log.txt").read_text(errors="replace")[-3000:] if (root / "log.txt").exists() else ""


def _newest_save(folder: Path) -> float:
    times = []
    for path in folder.glob("*.ckpt") if folder.is_dir() else []:
        try:
            times.append(path.stat().st_mtime)
        except FileNotFoundError:  # the run rotates its step-N saves: one listed can be gone by stat()
            continue
    return max(times, default=0.0)


def _step(path: Path) -> int:
    return int(read_checkpoint(path, weights_only=False)["global_step"])


def test_sigkill_ten_times_and_resume_gives_the_uninterrupted_weights(tmp_path, forkserver):
    manifest = finetune_corpus(tmp_path / "data")
    full = _start(forkserver, tmp_path / "full", manifest)  # the reference runs beside the killed ones
    rng = random.Random(16)
    run, steps = tmp_path / "killed", []
    for kill in range(KILLS):
        before = _newest_save(run / "ckpt")
        proc = _start(forkserver, run, manifest)
        deadline = time.monotonic() + 60
        while _newest_save(run / "ckpt") <= before and proc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.is_alive(), f"life {kill} ended by itself (exit {proc.exitcode}):\n{_log(run)}"
        assert _newest_save(run / "ckpt") > before, f"life {kill} saved nothing in 60 s:\n{_log(run)}"
        time.sleep(rng.uniform(0.0, 0.4))  # anywhere in the next save interval, saves included
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
        assert proc.exitcode == -signal.SIGKILL
        # never left without a resumable checkpoint, and never one older than before the kill
        good, _ = newest_intact([run / "ckpt"])
        assert good is not None, sorted(p.name for p in (run / "ckpt").iterdir())
        steps.append(_step(good))
        assert steps == sorted(steps) and steps[-1] < TOTAL, steps
    proc = _start(forkserver, run, manifest)
    proc.join(120)
    full.join(120)
    assert full.exitcode == 0, _log(tmp_path / "full")
    assert proc.exitcode == 0, _log(run)
    assert steps[0] >= EVERY and len(set(steps)) > 1, steps  # the kills came at different points

    resumed = read_checkpoint(run / "ckpt" / "last.ckpt", weights_only=False)
    reference = read_checkpoint(tmp_path / "full" / "ckpt" / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == reference["global_step"] == TOTAL
    assert resumed["state_dict"].keys() == reference["state_dict"].keys()
    for name, value in reference["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], value, rtol=0, atol=0, msg=name)
    # the periodic files are named for what they are
    assert sorted(p.name for p in (run / "ckpt").glob("*.ckpt")) == ["last.ckpt", f"step-{TOTAL}.ckpt"]


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, forkserver):
    """The writer raises ENOSPC half-way through the second round of saves (step-4.ckpt, after
    step-2.ckpt and last.ckpt): the run stops with an error naming the file, and the checkpoints of
    step 2 still verify."""
    manifest = finetune_corpus(tmp_path / "data")
    root = tmp_path / "run"
    proc = _start(forkserver, root, manifest, fail_saves_after=2)
    proc.join(120)
    log = _log(root)
    assert proc.exitcode != 0, log
    good, _ = newest_intact([root / "ckpt"])
    assert f"writing {root / 'ckpt' / 'step-4.ckpt'} failed: No space left on device" in log, log
    assert f"the newest intact checkpoint beside it is {good}" in log, log
    assert good is not None and _step(good) == EVERY, sorted(p.name for p in (root / "ckpt").iterdir())
    assert not [p for p in (root / "ckpt").iterdir() if p.name.endswith(".tmp")]


def _damage(path: Path) -> None:
    """Flips bytes inside the largest tensor's data (the zip stores tensors uncompressed)."""
    blob = torch.load(path, weights_only=False, map_location="cpu")
    tensors = [(k, v) for k, v in blob["state_dict"].items() if v.numel() > 1000]
    _, big = max(tensors, key=lambda kv: kv[1].numel())
    data = bytearray(path.read_bytes())
    needle = big.contiguous().view(torch.uint8).numpy().tobytes()[:64]
    at = data.find(needle)
    assert at > 0
    for i in range(at + 100, at + 200):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_refused_by_every_reader(tmp_path, capsys):
    from robust_utils import finetune_data, finetuner, trainer

    from kwav2vec.checkpoints import cli as convert_cli
    from kwav2vec.inference import evaluate, transcribe
    from kwav2vec.lit.checkpoint_io import AtomicCheckpointIO

    manifest = finetune_corpus(tmp_path / "data")
    module, data = finetuner(2), finetune_data(manifest)
    t = trainer(tmp_path, 2, plugins=[AtomicCheckpointIO()])
    t.fit(module, datamodule=data)
    good, bad = tmp_path / "good.ckpt", tmp_path / "bad.ckpt"
    t.save_checkpoint(good)
    t.save_checkpoint(bad)
    os.utime(good, (time.time() - 60, time.time() - 60))
    _damage(bad)

    # resume
    with pytest.raises(CheckpointError, match="damaged") as err:
        trainer(tmp_path, 3, plugins=[AtomicCheckpointIO()]).fit(finetuner(3), datamodule=finetune_data(manifest),
                                                                  ckpt_path=str(bad))
    assert str(bad) in str(err.value) and f"newest intact checkpoint beside it is {good}" in str(err.value)
    # transcribe, evaluate
    wav = tmp_path / "data" / "audio" / "u000.wav"
    for main, args in ((transcribe.main, [str(bad), str(wav)]), (evaluate.main, [str(bad), str(manifest)])):
        assert main(args) != 0
        msg = capsys.readouterr().err
        assert str(bad) in msg and "damaged" in msg, msg
    # convert: a converted checkpoint damaged the same way
    from kwav2vec.checkpoints.format import ConvertedCheckpoint, save_converted

    backbone = module.backbone
    converted = tmp_path / "conv.ckpt"
    save_converted(ConvertedCheckpoint(module.config, backbone.state_dict()), converted)
    blob = bytearray(converted.read_bytes())
    w = backbone.state_dict()["encoder.layers.0.fc1.weight"].contiguous().view(torch.uint8).numpy().tobytes()
    at = blob.find(w[:64])
    blob[at + 10 : at + 20] = bytes(10)
    converted.write_bytes(bytes(blob))
    assert convert_cli.main(["--to", "hf", str(converted), str(tmp_path / "hf")]) == 1
    msg = capsys.readouterr().err
    assert str(converted) in msg and "damaged" in msg, msg
    assert not (tmp_path / "hf").exists()
