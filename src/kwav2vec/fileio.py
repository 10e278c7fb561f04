"""The one way kwav2vec writes a file it must not leave half-written: checkpoints, converted
checkpoints, exported models, manifests, rejects, reports, vocabularies, subtitles.

The data goes to a temporary file in the destination's folder, is flushed and fsynced, then moved
over the destination with `os.replace` (atomic on POSIX file systems), and the folder is fsynced so
the rename itself survives a power cut. A process killed at any point, or a disk that fills up
half-way, leaves the previous file or the new one under the final name, never a mixture.

A killed writer does leave its temporary file behind (`.<name>.<host>.<pid>.<random>.tmp`, never
matched by `*.ckpt` or `*.jsonl`). The next write to the same name removes such leftovers of
processes of this host that no longer run; a concurrent writer's file (a live process) is left alone.
A writer that fails with an exception removes its own temporary file.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def temp_prefix(path: Path, pid: int | None = None) -> str:
    """`.<name>.<host>.` and, given a pid, `<pid>.` after it: temp files of this host's writers."""
    host = f".{path.name}.{socket.gethostname()}."
    return host if pid is None else f"{host}{pid}."


def pid_alive(pid: int) -> bool:
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
    prefix = temp_prefix(path)
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(".tmp")):
            continue
        pid = entry.name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            try:
                os.unlink(entry.path)
                removed.append(entry.path)
            except FileNotFoundError:  # another process cleaned it up first
                pass
    return removed


def fsync_dir(folder: str | os.PathLike) -> None:
    """Makes renames and removals in `folder` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None,
                newline: str | None = None) -> Iterator[IO[Any]]:
    """`open(path, mode)` for writing, atomically: the file appears under `path` complete, or not at all.

    An OSError while writing (e.g. ENOSPC) is re-raised with the same errno and a message naming
    `path` and saying that the previous file there was left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path, os.getpid()), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide manifests from the user's group
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _unlink(tmp)
        kept = "the previous file there is unchanged" if path.exists() else "nothing was written there"
        raise OSError(err.errno, f"writing {path} failed: {err.strerror or err}; {kept}") from err
    except BaseException:
        _unlink(tmp)
        raise
    fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _unlink(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass


def atomic_move(src: str | os.PathLike, path: str | os.PathLike) -> None:
    """Puts a file that another library wrote complete under `src` (an exporter, a quantizer that
    only take a file name) in place at `path` the way `atomic_open` does: `src` is fsynced, moved
    over `path` with `os.replace`, and the folder fsynced. `src` must be on `path`'s file system
    (write it into a temporary folder beside `path`)."""
    path = Path(path)
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(src, path)
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8, "\\n" line ends whatever the platform."""
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj, path)`, atomically."""
    import torch  # here: the data-preparation commands that use this module need no torch import

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
