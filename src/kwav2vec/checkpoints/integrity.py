"""Checkpoint files we write carry a checksum of their contents, and every loader verifies it.

torch's zip reader does not check the CRCs it stores, so bytes flipped inside a tensor load without
complaint. Every checkpoint kwav2vec writes (Lightning checkpoints through `AtomicCheckpointIO`,
converted checkpoints through `save_converted`) is a dict that gains one key when sealed:

    "kwav2vec_integrity": {"algorithm": "sha256-contents-v1", "digest": "<hex>", "tensors": N}

The digest covers every other key: tensors by dtype, shape and raw bytes; containers, numbers and
strings by value; other objects by class name and attributes. It is computed from the object
before it is written and recomputed from what was read, so it survives the file being copied or
renamed (it lives inside it) and catches damage anywhere in the tensor data or the pickled structure.

`read_checkpoint` is the one reader of our checkpoint files: resume (`--ckpt_path`), `evaluate`,
`transcribe`, `convert --to`, `init_from`. A missing file, a directory, an empty file, a file that is
not a torch checkpoint and a damaged one each get one line naming the file and what was expected;
for a damaged or unreadable file it also names the newest intact checkpoint beside it. Files
without the key (written before this existed, or by other tools) are read with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from collections.abc import Iterable
from dataclasses import fields, is_dataclass
from enum import Enum
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

INTEGRITY_KEY = "kwav2vec_integrity"
ALGORITHM = "sha256-contents-v1"
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")
MAX_SIBLINGS_CHECKED = 8  # when naming the last good checkpoint beside a bad one: the newest few
_warned_unsealed: set[str] = set()


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names it and what was expected."""


# ------------------------------------------------------------------------------ the digest
class _Digest:
    def __init__(self) -> None:
        self.h = hashlib.sha256()  # SHA-NI makes it the fastest of hashlib's on current CPUs
        self.tensors = 0

    def tag(self, text: str) -> None:
        data = text.encode("utf-8", "surrogatepass")
        self.h.update(struct.pack("<Q", len(data)))
        self.h.update(data)

    def tensor(self, t: torch.Tensor) -> None:
        self.tensors += 1
        t = t.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        if t.is_quantized:
            t = t.int_repr()
        self.tag(f"T{t.dtype}{tuple(t.shape)}")
        t = t.cpu().contiguous()
        if t.numel():
            self.h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))

    def add(self, obj: Any, depth: int = 0) -> None:
        if depth > 64:
            self.tag("<deep>")
            return
        if obj is None or isinstance(obj, (bool, int, float, complex, str)):
            self.tag(f"{type(obj).__name__}:{obj!r}")
        elif isinstance(obj, (bytes, bytearray)):
            self.tag(f"bytes{len(obj)}")
            self.h.update(obj)
        elif isinstance(obj, torch.Tensor):
            self.tensor(obj)
        elif isinstance(obj, np.ndarray):
            self.tag(f"A{obj.dtype.str}{obj.shape}")
            if obj.dtype.hasobject:
                self.add(obj.tolist(), depth + 1)
            else:
                self.h.update(memoryview(np.ascontiguousarray(obj)).cast("B"))
        elif isinstance(obj, np.generic):
            self.tag(f"{type(obj).__name__}:{obj!r}")
        elif isinstance(obj, dict):  # insertion order: torch.save keeps it
            self.tag(f"dict{len(obj)}")
            for k, v in obj.items():
                self.add(k, depth + 1)
                self.add(v, depth + 1)
        elif isinstance(obj, (list, tuple)):
            self.tag(f"{'list' if isinstance(obj, list) else 'tuple'}{len(obj)}")
            for v in obj:
                self.add(v, depth + 1)
        elif isinstance(obj, (set, frozenset)):
            self.tag(f"set{len(obj)}")
            for v in sorted(obj, key=repr):
                self.add(v, depth + 1)
        elif isinstance(obj, (Enum, PurePath, torch.dtype, torch.device, torch.Size)):
            self.tag(f"{type(obj).__name__}:{obj!s}")
        elif is_dataclass(obj) and not isinstance(obj, type):
            self.tag(type(obj).__qualname__)
            for f in fields(obj):
                self.add(f.name, depth + 1)
                self.add(getattr(obj, f.name), depth + 1)
        elif hasattr(obj, "__dict__") and not callable(obj):  # e.g. argparse.Namespace
            self.tag(type(obj).__qualname__)
            self.add(dict(sorted(vars(obj).items())), depth + 1)
        else:  # functions, classes, objects without state we can see: their name only
            self.tag(f"<{type(obj).__qualname__}>")


def content_digest(obj: Any) -> tuple[str, int]:
    """(hex digest, number of tensors) of `obj`'s contents, as stored under INTEGRITY_KEY."""
    d = _Digest()
    d.add(obj)
    return d.h.hexdigest(), d.tensors


def seal(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy of `checkpoint` with its digest under INTEGRITY_KEY (the argument is unchanged)."""
    if not isinstance(checkpoint, dict):
        raise TypeError(f"only dict checkpoints can be sealed, got {type(checkpoint).__name__}")
    body = {k: v for k, v in checkpoint.items() if k != INTEGRITY_KEY}
    digest, tensors = content_digest(body)
    return {**body, INTEGRITY_KEY: {"algorithm": ALGORITHM, "digest": digest, "tensors": tensors}}


def verify(blob: Any, origin: str, foreign: bool = False) -> dict[str, Any] | Any:
    """`blob` without INTEGRITY_KEY if its digest matches; CheckpointError if it does not.

    Returns `blob` unchanged when it carries no digest (a warning is logged once per file, unless
    `foreign`: a file of another tool, which never has one)."""
    if not isinstance(blob, dict) or INTEGRITY_KEY not in blob:
        if not foreign and origin not in _warned_unsealed:
            _warned_unsealed.add(origin)
            log.warning("%s: no kwav2vec checksum inside (written by another tool or an older kwav2vec): "
                        "its contents cannot be verified", origin)
        return blob
    stored = blob[INTEGRITY_KEY]
    body = {k: v for k, v in blob.items() if k != INTEGRITY_KEY}
    if not isinstance(stored, dict) or stored.get("algorithm") != ALGORITHM:
        algorithm = stored.get("algorithm") if isinstance(stored, dict) else stored
        raise CheckpointError(f"{origin}: unknown checksum algorithm {algorithm!r} (this kwav2vec checks {ALGORITHM})")
    digest, tensors = content_digest(body)
    if digest != stored.get("digest"):
        raise CheckpointError(
            f"{origin}: damaged: its contents no longer match the checksum stored when it was written "
            f"({tensors} tensors read, {stored.get('tensors')} written)"
        )
    return body


# ------------------------------------------------------------------------------ reading
def read_checkpoint(path: str | os.PathLike, expected: str = "a kwav2vec checkpoint (.ckpt)", *,
                    map_location: Any = "cpu", weights_only: bool | None = True, mmap: bool = False,
                    beside: bool = True, foreign: bool = False) -> Any:
    """Reads and verifies one checkpoint file -> its contents (without INTEGRITY_KEY).

    Raises FileNotFoundError for a missing file and CheckpointError (a ValueError) for a directory,
    an empty file, a file torch cannot read and a damaged file, each naming `path` and `expected`
    (and, with `beside`, the newest intact checkpoint in the same folder). `foreign`: a file another
    tool wrote (no checksum expected, none warned about).
    """
    name = os.fspath(path)
    if os.path.isdir(name):
        inside = sorted(p.name for p in Path(name).iterdir() if p.suffix in CHECKPOINT_SUFFIXES)[:5]
        hint = f"; it holds {', '.join(inside)}: give one of them" if inside else ""
        raise CheckpointError(f"{name}: is a directory, expected {expected}{hint}")
    if not os.path.exists(name):
        raise FileNotFoundError(f"{name}: does not exist (expected {expected})")
    if os.path.getsize(name) == 0:
        raise CheckpointError(f"{name}: empty file (0 bytes), expected {expected}{_beside(name, beside)}")
    try:
        blob = _torch_load(name, map_location, weights_only, mmap)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a file that is no checkpoint
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{name}: not a readable torch checkpoint (expected {expected}; "
                              f"{type(err).__name__}: {first}){_beside(name, beside)}") from err
    try:
        return verify(blob, name, foreign)
    except CheckpointError as err:
        raise CheckpointError(f"{err}{_beside(name, beside)}") from None


def _torch_load(name: str, map_location: Any, weights_only: bool | None, mmap: bool) -> Any:
    try:
        return torch.load(name, map_location=map_location, weights_only=weights_only, mmap=mmap)
    except RuntimeError as err:
        if not mmap or "mmap" not in str(err):
            raise
        return torch.load(name, map_location=map_location, weights_only=weights_only)  # legacy format


def _candidates(folders: Iterable[str | os.PathLike], exclude: str | None = None) -> list[Path]:
    seen, found = set(), []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            real = os.path.realpath(p)
            if p.suffix in CHECKPOINT_SUFFIXES and p.is_file() and not p.name.startswith(".") and real not in seen:
                if exclude is None or real != os.path.realpath(exclude):
                    seen.add(real)
                    found.append(p)
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"), reverse=True)


def newest_intact(folders: Iterable[str | os.PathLike], exclude: str | None = None,
                  limit: int | None = None) -> tuple[Path | None, list[str]]:
    """The most recently written checkpoint in `folders` that reads and verifies, and the
    (newer) files that did not, each as "path: reason"."""
    skipped = []
    for p in _candidates(folders, exclude)[:limit]:
        try:
            read_checkpoint(p, weights_only=None, mmap=True, beside=False)
            return p, skipped
        except (OSError, CheckpointError) as err:
            skipped.append(str(err))
    return None, skipped


def describe_intact_beside(name: str | os.PathLike) -> str:
    """"; the newest intact checkpoint beside it is X" (or "; no intact checkpoint beside it")."""
    return _beside(os.fspath(name), True)


def _beside(name: str, enabled: bool) -> str:
    if not enabled:
        return ""
    good, _ = newest_intact([os.path.dirname(os.path.abspath(name))], exclude=name, limit=MAX_SIBLINGS_CHECKED)
    if good is None:
        return "; no intact checkpoint beside it"
    return f"; the newest intact checkpoint beside it is {good}"
