"""What the two LightningModules (`Pretrainer`, `HierarchicalFineTuner`) share: the safety callbacks,
gradient-norm and learning-rate logging, sums over DDP ranks through the Trainer's strategy, the
AdamW construction and the length of the learning-rate schedule.

The base holds no modules and no state, so it adds nothing to a checkpoint's state dict and
`save_hyperparameters()` in a subclass's `__init__` sees only that subclass's arguments.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
import torch

from kwav2vec.lit.guards import safety_callbacks
from kwav2vec.lit.schedules import BudgetClock


class TrainingModule(pl.LightningModule):
    """Base of kwav2vec's LightningModules. Subclasses have the hyper-parameters `lr`, `betas`, `eps`,
    `weight_decay` and `total_steps` (None = the Trainer's `max_steps`)."""

    def configure_callbacks(self) -> list[pl.Callback]:
        # Always on, whoever builds the Trainer: skip non-finite steps; resume with the RNG streams
        # of an uninterrupted run.
        return safety_callbacks(self._trainer)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # gradients are unscaled here (AMP) and not yet clipped: the norm clipping acts on
        grads = [p.grad.detach() for p in self.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        self.log("train/grad_norm", norm.float(), on_step=True, on_epoch=False)
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ DDP
    def _world_size(self) -> int:
        """Processes of the run: 1 outside a Trainer."""
        return self.trainer.world_size if self._trainer is not None else 1

    def sum_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """`value` summed over all ranks (a collective: under DDP every rank must call it the same
        number of times per step); a copy, `value` itself is left as it was."""
        value = value.clone()
        if self._world_size() > 1:
            value = self.trainer.strategy.reduce(value, reduce_op="sum")
        return value

    # ------------------------------------------------------------------ optimisation
    def _total_steps(self) -> int:
        """Updates of the learning-rate schedule: `total_steps`, else the Trainer's `max_steps`."""
        if self.hparams.total_steps is not None:
            return int(self.hparams.total_steps)
        max_steps = getattr(self.trainer, "max_steps", -1) if self._trainer is not None else -1
        if max_steps is None or max_steps <= 0:
            raise ValueError(f"{type(self).__name__} needs `total_steps` or a Trainer with `max_steps` > 0 for "
                             "its learning-rate schedule")
        return int(max_steps)

    def _budget_clock(self, total: int) -> BudgetClock:
        clock = BudgetClock(total)  # a max_time cap finishes the schedule too
        clock.trainer = self._trainer
        return clock

    def _adamw(self, params: Iterable[torch.nn.Parameter] | list[dict[str, Any]]) -> torch.optim.AdamW:
        """AdamW over `params` (tensors or param groups) with the module's lr, betas, eps and weight decay."""
        hp = self.hparams
        params = list(params)
        tensors = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
        # the fused kernel is several times faster than the per-parameter loop torch uses on CPU
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in tensors)
        return torch.optim.AdamW(
            params, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps, weight_decay=hp.weight_decay, fused=fused
        )

    @staticmethod
    def _per_step(optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
        """`configure_optimizers`' answer for a scheduler stepped after every update."""
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}
