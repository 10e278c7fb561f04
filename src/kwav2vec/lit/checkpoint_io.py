"""Checkpoint writes that a killed process cannot leave half-written.

A checkpoint is first written to a temporary file in the same directory, flushed and fsynced, then
moved over the destination with `os.replace`, which is atomic on POSIX file systems. A process killed
at any point leaves either the previous checkpoint or the new one, never a truncated file under the
final name. (Lightning's own writer goes through fsspec, whose guarantees depend on the file system
implementation and version; we do not rely on them for local paths.)

A killed writer does leave its temporary file behind (`.<name>.<host>.<pid>.<random>.tmp`, never
matched by `*.ckpt`). The next save to the same name removes such leftovers of processes of this
host that no longer run; a concurrent writer's file (a live process) is left alone.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


def _temp_prefix(path: Path, pid: int | None = None) -> str:
    """`.<name>.<host>.` and, given a pid, `<pid>.` after it: temp files of this host's writers."""
    host = f".{path.name}.{socket.gethostname()}."
    return host if pid is None else f"{host}{pid}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(path: str | os.PathLike) -> list[str]:
    """Deletes temporary files that killed writers of this host left beside `path`; returns them."""
    path = Path(path)
    prefix = _temp_prefix(path)
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(".tmp")):
            continue
        pid = entry.name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                os.unlink(entry.path)
                removed.append(entry.path)
            except FileNotFoundError:  # another process cleaned it up first
                pass
    return removed


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj, path)`, atomically: temp file + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(path, os.getpid()), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Leave no temporary file behind; the destination is untouched.
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO plugin: local checkpoints are written with `atomic_torch_save`.

    Remote paths (s3://, gs://, ...) fall back to Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint got storage_options={storage_options!r}; "
                "this plugin does not take any"
            )
        if not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, path)
