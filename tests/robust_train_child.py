"""The child process of tests/test_robust_fault_injection.py (no tests here): one `kwav2vec finetune
fit` run, forked from a multiprocessing forkserver that imported torch, Lightning and kwav2vec once
(a fresh interpreter per run would spend ~10 s importing; forking the test process itself is not
safe once it ran OpenMP regions)."""

from __future__ import annotations

import errno
import io
import os
import sys

import torch

from kwav2vec.train_cli import run

PRELOAD = ["torch", "lightning.pytorch", "kwav2vec.train_cli", "kwav2vec.lit.finetune",
           "kwav2vec.data.datamodule", "robust_train_child"]


def _fill_the_disk_after(saves: int) -> None:
    """From save number `saves` + 1 on, torch.save writes half of the bytes, then raises ENOSPC."""
    real_save, count = torch.save, [0]

    def save(obj, f, *args, **kwargs):
        count[0] += 1
        if count[0] <= saves:
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    torch.save = save  # the child's own copy of the module


def finetune(cwd: str, argv: list[str], log: str, fail_saves_after: int | None = None) -> None:
    """Runs `kwav2vec finetune fit ARGV` in `cwd`, output to `log`; exits with its exit code.
    `fail_saves_after`: the disk fills up after that many torch.save calls."""
    os.chdir(cwd)
    torch.set_num_threads(1)
    if fail_saves_after is not None:
        _fill_the_disk_after(fail_saves_after)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        code = run("finetune", ["fit", *argv])
    except BaseException as err:  # noqa: BLE001 - reported through the log and the exit code
        print(f"child failed: {type(err).__name__}: {err}", file=sys.stderr)
        code = 3
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
