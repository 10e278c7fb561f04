"""Random number generator states in checkpoints, so that a resumed run draws the same masks,
distractors, Gumbel noise and dropout as an uninterrupted one.

Lightning saves model, optimizer, scheduler, loop and dataloader states, but not the global RNG
states (torch CPU and CUDA, numpy, python `random`). Without them a run resumed from a mid-epoch
checkpoint sees the same batches but draws different random numbers, so its losses differ.

Random numbers are also drawn *between* training batches, and not in the same places in an
uninterrupted and a resumed run: a torch DataLoader draws its workers' base seed from the global
torch generator every time an iterator is created (each epoch, and once more when a run resumes),
the sanity-check and validation loops create iterators too. So `RNGStateCallback` makes the
training steps' random stream independent of them: it snapshots the states at the end of every
training batch and puts the snapshot back at the start of the next one. Checkpoints store the last
snapshot; a resumed run puts it back at its first training batch. Draws made between batches still
happen, they just do not shift the training steps' draws.

Every rank has its own states; they are gathered into the checkpoint (written by rank 0) and each
rank takes its own back. States are stored as tensors, ints and strings, so checkpoints still load
with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

STATE_FORMAT = 1


def collect_rng_states() -> dict[str, Any]:
    """This process's RNG states: torch CPU (and CUDA when available), numpy legacy global, python."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of `collect_rng_states`."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    keys = n["keys"].numpy() if isinstance(n["keys"], torch.Tensor) else np.asarray(n["keys"])
    np.random.set_state((n["kind"], keys.astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class RNGStateCallback(pl.Callback):
    """Carries the RNG states from one training batch to the next and through checkpoints (see the
    module docstring). Return it from the LightningModule's `configure_callbacks` or pass it to the
    Trainer. Costs a copy of a few KB of generator state per batch."""

    def __init__(self) -> None:
        self._snapshot: dict[str, Any] | None = None  # this rank's states at the end of the last batch
        self._pending: list[dict[str, Any]] | None = None  # every rank's states from a checkpoint

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._snapshot = collect_rng_states()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is not None:
            per_rank, self._pending = self._pending, None
            rank, world = _rank_and_world()
            if len(per_rank) != world:
                log.warning(
                    "checkpoint holds RNG states of %d processes, this run has %d: random draws (masks, "
                    "dropout) will not continue exactly as in the interrupted run",
                    len(per_rank),
                    world,
                )
            if rank < len(per_rank):
                self._snapshot = per_rank[rank]
        if self._snapshot is not None:
            set_rng_states(self._snapshot)

    def state_dict(self) -> dict[str, Any]:
        # Lightning builds the checkpoint dict on every rank (only rank 0 writes it), so every rank
        # takes part in this gather.
        mine = self._snapshot if self._snapshot is not None else collect_rng_states()
        _, world = _rank_and_world()
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, mine)
        else:
            gathered = [mine]
        return {"format": STATE_FORMAT, "per_rank": gathered}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        per_rank = state_dict.get("per_rank")
        if state_dict.get("format") != STATE_FORMAT or not isinstance(per_rank, list):
            raise ValueError(
                f"unrecognised RNG state in the checkpoint (format {state_dict.get('format')!r})"
            )
        self._pending = per_rank
