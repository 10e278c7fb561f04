"""Reading foreign `torch.save` files without their code and without running any of theirs.

fairseq checkpoints pickle more than tensors: the legacy `args` (an argparse.Namespace), sometimes
OmegaConf containers, meters, numpy scalars of the training state. Loading them normally needs fairseq
installed and `weights_only=False` (arbitrary code execution from a downloaded file). Instead we load
with torch's restricted `weights_only` unpickler and allowlist each foreign class under its own name
as an inert stand-in (`Opaque`): it records what the pickle hands it and does nothing else. Only
`argparse.Namespace` is the real class. OmegaConf containers are turned back into plain dicts/lists.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from typing import Any

import torch

_UNSUPPORTED = re.compile(r"GLOBAL (\S+) was not an allowed global")
_MAX_ROUNDS = 64  # distinct foreign classes we are willing to stand in for


class Opaque:
    """Stand-in for a class we do not import: keeps constructor args and pickled state, runs nothing."""

    _qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = super().__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<opaque {self._qualname}>"


def _stand_in(qualname: str) -> tuple[type, str]:
    if qualname == "argparse.Namespace":
        return argparse.Namespace, qualname
    module, _, name = qualname.rpartition(".")
    cls = type(name or "Opaque", (Opaque,), {"_qualname": qualname, "__module__": module or "opaque"})
    return cls, qualname


def plain(obj: Any) -> Any:
    """Opaque OmegaConf nodes -> dicts, lists and values; containers converted recursively."""
    if isinstance(obj, Opaque):
        state = obj.state
        if isinstance(state, dict):
            if "_content" in state:  # DictConfig / ListConfig
                return plain(state["_content"])
            if "_val" in state:  # ValueNode
                return plain(state["_val"])
        return obj
    if isinstance(obj, argparse.Namespace):
        return argparse.Namespace(**{k: plain(v) for k, v in vars(obj).items()})
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    return obj


def load_foreign(path: str | os.PathLike, expected: str) -> Any:
    """`torch.load` of a foreign checkpoint on the CPU, unknown classes as `Opaque` stand-ins.

    Args:
        path: the file.
        expected: what the file should be, for messages (e.g. "a fairseq wav2vec 2.0 checkpoint (.pt)").
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, expected {expected}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (expected {expected})")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: empty file (0 bytes), expected {expected}")
    names: set[str] = set()
    try:
        names.update(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - legacy (non-zip) files: discovered one by one below
        pass
    for _ in range(_MAX_ROUNDS):
        try:
            with torch.serialization.safe_globals([_stand_in(n) for n in sorted(names)]):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            found = set(_UNSUPPORTED.findall(str(e))) - names
            if not found:
                what = "cannot unpickle it safely" if "GLOBAL" in str(e) else "not a torch checkpoint"
                raise ValueError(f"{path}: {what} (expected {expected}): {str(e).splitlines()[0]}") from e
            names |= found
        except Exception as e:  # noqa: BLE001 - torch raises many kinds for a file that is no checkpoint
            raise ValueError(f"{path}: not a torch checkpoint (expected {expected}): "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    raise ValueError(f"{path}: more than {_MAX_ROUNDS} foreign classes pickled inside (expected {expected})")
