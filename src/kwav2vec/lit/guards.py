"""Skip optimizer steps whose loss or gradients are not finite, count them, and stop a run that
keeps producing them.

One check covers both cases: a non-finite loss back-propagates into non-finite gradients, so the
gradients are inspected right before the optimizer step (after AMP unscaling). A skipped step sets
every gradient to None, which torch optimizers treat as "no update" (not even weight decay or
momentum), so nothing of the bad batch is applied.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
import torch.distributed as dist

from kwav2vec.lit.rng_state import RNGStateCallback

log = logging.getLogger(__name__)


def _gather_ids(ids: list[str]) -> list[str]:
    """The utterance ids of this step on every rank. Gradients are all-reduced before the check, so
    every rank sees the same non-finite gradients and calls this together; the culprit may be any
    rank's batch."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ids
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, ids)
    return [f"{uid} (rank {rank})" for rank, rank_ids in enumerate(gathered) for uid in rank_ids]


class NonFiniteStepsError(RuntimeError):
    """Raised after too many consecutive non-finite steps."""


class NonFiniteGuard(pl.Callback):
    """Skip and count steps with non-finite gradients.

    Args:
        max_consecutive: stop the run with `NonFiniteStepsError` after this many skipped steps in a
            row. Under 16-bit mixed precision the first steps can overflow while the grad scaler
            calibrates; those are skipped by the scaler anyway and counted here too, so keep this
            comfortably above a handful.
    """

    def __init__(self, max_consecutive: int = 20) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.skipped_total = 0
        self.consecutive = 0
        self._batch_ids: Sequence[str] = ()
        self._streak: list[
            tuple[int, Sequence[str]]
        ] = []  # (step, utterance ids) of the skipped steps in a row

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Cleared at each optimizer step, so with gradient accumulation this holds every utterance
        # that fed the coming step.
        ids = batch.get("ids", ()) if isinstance(batch, dict) else ()
        self._batch_ids = [*self._batch_ids, *ids]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = (
            bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True
        )  # one sync
        if finite:
            self.consecutive = 0
            self._streak = []
        else:
            self.skipped_total += 1
            self.consecutive += 1
            ids = _gather_ids(list(self._batch_ids))
            self._streak = [*self._streak, (trainer.global_step, ids)][-self.max_consecutive :]
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
            log.warning(
                "non-finite loss or gradient at step %d: optimizer step skipped (%d in a row, %d in "
                "total); utterances: %s",
                trainer.global_step,
                self.consecutive,
                self.skipped_total,
                ", ".join(ids) or "(no ids in batch)",
            )
        pl_module.log("train/skipped_nonfinite", float(self.skipped_total), on_step=True, reduce_fx="max")
        self._batch_ids = ()
        if self.consecutive >= self.max_consecutive:
            steps = "; ".join(
                f"step {step}: {', '.join(ids) or '(no ids in batch)'}" for step, ids in self._streak
            )
            raise NonFiniteStepsError(
                f"{self.consecutive} consecutive optimizer steps had non-finite loss or gradients "
                f"(last at step {trainer.global_step}); utterances of these steps: {steps}. Lower the "
                "learning rate, use bf16 instead of 16-mixed, or check these inputs."
            )

    def state_dict(self) -> dict:
        return {"skipped_total": self.skipped_total, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped_total = int(state_dict["skipped_total"])
        self.consecutive = int(state_dict["consecutive"])


def safety_callbacks(trainer: pl.Trainer | None) -> list[pl.Callback]:
    """The callbacks our LightningModules always run (from `configure_callbacks`): the non-finite
    guard and the RNG state keeper for exact resume. One the Trainer already has (e.g. a guard with
    another `max_consecutive`) is kept instead: Lightning would otherwise replace it with ours."""
    present = [type(c) for c in trainer.callbacks] if trainer is not None else []
    return [cls() for cls in (NonFiniteGuard, RNGStateCallback) if not any(issubclass(p, cls) for p in present)]
