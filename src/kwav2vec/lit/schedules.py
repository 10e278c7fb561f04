"""Learning-rate schedules as `LambdaLR` multipliers of the peak lr, stepped once per optimizer update.

- `polynomial_decay_*`: fairseq `polynomial_decay` (wav2vec 2.0 pretraining): linear warmup to the peak,
  then (1 - progress)**power decay to `end_lr_ratio * peak` at `total_steps`, constant after.
- `tri_stage_*`: fairseq `tri_stage` (wav2vec 2.0 fine-tuning): linear warmup from `init_lr_scale * peak`,
  hold at the peak, exponential decay to `final_lr_scale * peak`, constant after. Phases are fractions of
  `total_steps` (fairseq's `phase_ratio`, default [0.1, 0.4, 0.5]).

The multiplier functions take the number of updates already made (0 for the first update), which is
what `LambdaLR` passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class BudgetClock:
    """Where a run with a wall-clock cap (`Trainer(max_time=...)`) stands, counted in updates.

    A schedule written in updates assumes the run reaches `total_steps`. Under a time cap on a slower
    or busier machine it does not: the run stops at the peak learning rate, mid-schedule, and keeps
    weights that never saw the decay (measured on the CPU demo recipe: a loaded machine cut
    fine-tuning at 471 of 850 updates). With a cap, the schedule's position is therefore
    max(updates made, total_steps x elapsed / max_time): whichever of the two budgets runs out first
    finishes the schedule. Without a cap, or with several processes (each rank would read its own
    clock and set its own learning rate, and DDP replicas would drift apart), it is the update count.

    Elapsed time is Lightning's Timer's, which is checkpointed, so a resumed run continues the clock.
    """

    def __init__(self, total_steps: int) -> None:
        self.total_steps = int(total_steps)
        self.trainer = None

    def _timer(self):
        trainer = self.trainer
        if trainer is None or getattr(trainer, "world_size", 1) != 1:
            return None
        from lightning.pytorch.callbacks import Timer

        return next((cb for cb in trainer.callbacks if isinstance(cb, Timer) and cb._duration), None)

    def position(self, step: int) -> int:
        """The update count the schedule should be at after `step` updates."""
        timer = self._timer()
        if timer is None:
            return step
        elapsed = timer.time_elapsed("train")
        return max(step, min(self.total_steps, int(self.total_steps * elapsed / timer._duration)))

    def wrap(self, factor: Callable[[int], float]) -> Callable[[int], float]:
        return lambda step: factor(self.position(step))


def polynomial_decay_lambda(
    warmup_steps: int, total_steps: int, end_lr_ratio: float = 0.0, power: float = 1.0
) -> Callable[[int], float]:
    """Multiplier for update `step`: (step + 1) / warmup_steps during warmup (no wasted zero-lr first
    step), then polynomial decay from 1 to `end_lr_ratio` at `total_steps`."""
    if warmup_steps < 0 or total_steps <= 0 or warmup_steps > total_steps:
        raise ValueError(f"need 0 <= warmup_steps <= total_steps and total_steps > 0, got {warmup_steps}, {total_steps}")
    if not 0.0 <= end_lr_ratio <= 1.0:
        raise ValueError(f"end_lr_ratio must lie in [0, 1], got {end_lr_ratio}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if step >= total_steps:
            return end_lr_ratio
        remaining = 1.0 - (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return (1.0 - end_lr_ratio) * remaining**power + end_lr_ratio

    return factor


def tri_stage_lambda(
    total_steps: int,
    phase_ratio: Sequence[float] = (0.1, 0.4, 0.5),
    init_lr_scale: float = 0.01,
    final_lr_scale: float = 0.05,
) -> Callable[[int], float]:
    """fairseq `TriStageLRSchedule` with `phase_ratio`, as a multiplier of the peak lr."""
    if len(phase_ratio) != 3 or abs(sum(phase_ratio) - 1.0) > 1e-6 or min(phase_ratio) < 0:
        raise ValueError(f"phase_ratio must be three non-negative fractions summing to 1, got {list(phase_ratio)}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0.0 < final_lr_scale <= 1.0:
        raise ValueError(f"final_lr_scale must lie in (0, 1], got {final_lr_scale}")
    warmup = int(total_steps * phase_ratio[0])
    hold = int(total_steps * phase_ratio[1])
    decay = int(total_steps * phase_ratio[2])
    warmup_rate = (1.0 - init_lr_scale) / warmup if warmup else 0.0
    decay_factor = -math.log(final_lr_scale) / decay if decay else 0.0

    def factor(step: int) -> float:
        if step < warmup:
            return init_lr_scale + warmup_rate * step
        if step < warmup + hold:
            return 1.0
        if step <= warmup + hold + decay:
            return math.exp(-decay_factor * (step - warmup - hold))
        return final_lr_scale

    return factor


def polynomial_decay_schedule(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, end_lr_ratio: float = 0.0, power: float = 1.0,
    clock: BudgetClock | None = None,
) -> LambdaLR:
    factor = polynomial_decay_lambda(warmup_steps, total_steps, end_lr_ratio, power)
    return LambdaLR(optimizer, clock.wrap(factor) if clock is not None else factor)


def tri_stage_schedule(
    optimizer: Optimizer,
    total_steps: int,
    phase_ratio: Sequence[float] = (0.1, 0.4, 0.5),
    init_lr_scale: float = 0.01,
    final_lr_scale: float = 0.05,
    clock: BudgetClock | None = None,
) -> LambdaLR:
    factor = tri_stage_lambda(total_steps, phase_ratio, init_lr_scale, final_lr_scale)
    return LambdaLR(optimizer, clock.wrap(factor) if clock is not None else factor)

