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
    optimizer: Optimizer, warmup_steps: int, total_steps: int, end_lr_ratio: float = 0.0, power: float = 1.0
) -> LambdaLR:
    return LambdaLR(optimizer, polynomial_decay_lambda(warmup_steps, total_steps, end_lr_ratio, power))


def tri_stage_schedule(
    optimizer: Optimizer,
    total_steps: int,
    phase_ratio: Sequence[float] = (0.1, 0.4, 0.5),
    init_lr_scale: float = 0.01,
    final_lr_scale: float = 0.05,
) -> LambdaLR:
    return LambdaLR(optimizer, tri_stage_lambda(total_steps, phase_ratio, init_lr_scale, final_lr_scale))
