"""Exact key bookkeeping for checkpoint conversion.

A converter declares, for every tensor it wants, which source key holds it; `SourceState` hands the
tensors out, remembers which keys were used, and lets the converter mark the rest as deliberately
ignored (with a reason). `finish()` then fails on any source key nobody claimed, and `gather` fails
on any wanted key the source lacks or whose shape is wrong, listing all of them at once. Substring
matching (what Hugging Face's own fairseq converter does) would silently route K-wav2vec's
`additional_layer.{i}` into encoder layer i; exact names cannot.

Weight-norm parameters come in three spellings, all accepted wherever one is wanted:
- `<m>.weight_g` / `<m>.weight_v` (torch.nn.utils.weight_norm: fairseq, older transformers),
- `<m>.parametrizations.weight.original0` / `.original1` (torch.nn.utils.parametrizations: ours,
  transformers >= 4.3x, torchaudio),
- a plain `<m>.weight` (weight norm removed), split back into g = ||w|| over all dims but `dim`, v = w.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

G_NEW, V_NEW = "parametrizations.weight.original0", "parametrizations.weight.original1"
G_OLD, V_OLD = "weight_g", "weight_v"
WEIGHT_NORM_DIM = 2  # wav2vec 2.0's positional conv normalises over all dims but the kernel axis


class KeyMismatchError(ValueError):
    """Source keys that nothing claimed, wanted keys the source lacks, or shapes that differ."""


def _listing(keys: Iterable[str], limit: int = 40) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def split_weight_norm(weight: torch.Tensor, dim: int = WEIGHT_NORM_DIM) -> tuple[torch.Tensor, torch.Tensor]:
    """A plain weight -> (g, v) whose weight-norm product is exactly `weight`."""
    dims = [d for d in range(weight.dim()) if d != dim]
    g = torch.linalg.vector_norm(weight.float(), dim=dims, keepdim=True).to(weight.dtype)
    return g, weight


class SourceState:
    """A foreign state dict whose keys must each be used or explicitly ignored.

    Args:
        state: the source tensors by key.
        origin: what to call the source in messages (a file path and what was expected of it).
    """

    def __init__(self, state: Mapping[str, torch.Tensor], origin: str):
        bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
        if bad:
            raise KeyMismatchError(f"{origin}: entries that are not tensors: {_listing(bad)}")
        self.state = dict(state)
        self.origin = origin
        self.used: set[str] = set()
        self.ignored: dict[str, str] = {}  # key -> why

    def __contains__(self, key: str) -> bool:
        return key in self.state

    def keys(self) -> list[str]:
        return list(self.state)

    def take(self, key: str) -> torch.Tensor | None:
        """The tensor under `key` (weight-norm spellings resolved), marked used; None if absent."""
        if key in self.state:
            self.used.add(key)
            return self.state[key]
        for new, old in ((G_NEW, G_OLD), (V_NEW, V_OLD)):
            if key.endswith(new):
                base = key[: -len(new)]
                if base + old in self.state:
                    self.used.add(base + old)
                    return self.state[base + old]
                if base + "weight" in self.state:  # weight norm removed: split it back
                    self.used.add(base + "weight")
                    g, v = split_weight_norm(self.state[base + "weight"])
                    return g if new == G_NEW else v
        return None

    def ignore(self, keys: Iterable[str], reason: str) -> None:
        """Marks keys as deliberately not converted (they must exist)."""
        for key in keys:
            if key not in self.state:
                raise KeyError(f"{self.origin}: cannot ignore {key!r}: not in the source")
            self.ignored[key] = reason

    def ignore_prefix(self, prefix: str, reason: str) -> list[str]:
        keys = [k for k in self.state if k.startswith(prefix) and k not in self.used]
        self.ignore(keys, reason)
        return keys

    def dtype_note(self) -> list[str]:
        """A note when the source's floating tensors are not float32 (the converted file always is)."""
        dtypes = sorted({str(t.dtype).replace("torch.", "") for t in self.state.values() if t.is_floating_point()})
        return [] if dtypes in ([], ["float32"]) else [f"source tensors in {', '.join(dtypes)} were converted to float32"]

    def unclaimed(self) -> list[str]:
        return sorted(k for k in self.state if k not in self.used and k not in self.ignored)

    def finish(self) -> None:
        """Raises KeyMismatchError listing every source key neither used nor ignored."""
        left = self.unclaimed()
        if left:
            raise KeyMismatchError(
                f"{self.origin}: {len(left)} source key(s) have no place in the converted model "
                f"(unknown layer types or a different architecture?): {_listing(left)}"
            )


def gather(
    source: SourceState,
    plan: Mapping[str, str],
    shapes: Mapping[str, torch.Size],
    *,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Builds {target key: tensor} from {target key: source key}, checking every shape.

    All problems are collected and raised together: missing source keys and shape mismatches.
    Floating tensors are converted to `dtype` and copied (never views into the source's storage).
    """
    out: dict[str, torch.Tensor] = {}
    missing, wrong = [], []
    for target, src in plan.items():
        tensor = source.take(src)
        if tensor is None:
            missing.append(src)
            continue
        expected = tuple(shapes[target])
        if tuple(tensor.shape) != expected:
            wrong.append(f"{src} {tuple(tensor.shape)} (expected {expected} for {target})")
            continue
        tensor = tensor.detach().to("cpu")
        out[target] = (tensor.to(dtype) if tensor.is_floating_point() else tensor).clone().contiguous()
    problems = []
    if missing:
        problems.append(f"{len(missing)} key(s) missing: {_listing(missing)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {_listing(wrong, 10)}")
    if problems:
        raise KeyMismatchError(f"{source.origin}: " + "; ".join(problems))
    return out
