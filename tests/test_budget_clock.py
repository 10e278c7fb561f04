"""A schedule under a wall-clock cap finishes when the time runs out (kwav2vec.lit.schedules.BudgetClock)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from lightning.pytorch.callbacks import Timer

from kwav2vec.lit.schedules import BudgetClock, tri_stage_lambda, tri_stage_schedule


class FakeTimer(Timer):
    def __init__(self, seconds: float, elapsed: float) -> None:
        super().__init__(duration={"seconds": seconds})
        self.elapsed = elapsed

    def time_elapsed(self, stage="train") -> float:
        return self.elapsed


def clock_with(timer, world_size: int = 1, total: int = 100) -> BudgetClock:
    clock = BudgetClock(total)
    clock.trainer = SimpleNamespace(world_size=world_size, callbacks=[timer] if timer else [])
    return clock


def test_without_a_cap_the_schedule_follows_the_updates():
    clock = clock_with(None)
    assert [clock.position(s) for s in (0, 10, 99)] == [0, 10, 99]


def test_with_a_cap_the_schedule_follows_whichever_budget_is_spent_first():
    timer = FakeTimer(600, 0.0)
    clock = clock_with(timer)
    assert clock.position(7) == 7  # no time spent yet
    timer.elapsed = 300.0  # half the time, but only 20 updates: the schedule is half-way
    assert clock.position(20) == 50
    timer.elapsed = 60.0  # a fast machine: the updates lead
    assert clock.position(40) == 40
    timer.elapsed = 900.0  # past the cap: the end of the schedule, not beyond
    assert clock.position(30) == 100


def test_several_processes_keep_the_update_count():
    """Each rank's clock differs; learning rates set from them would differ and DDP replicas drift."""
    timer = FakeTimer(600, 300.0)
    assert clock_with(timer, world_size=2).position(20) == 20


def test_the_scheduler_reaches_its_final_rate_when_the_time_is_spent():
    timer = FakeTimer(60, 0.0)
    clock = clock_with(timer, total=1000)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = tri_stage_schedule(optimizer, 1000, (0.1, 0.4, 0.5), 0.01, 0.05, clock)
    expected = tri_stage_lambda(1000, (0.1, 0.4, 0.5), 0.01, 0.05)
    for step in range(1, 6):
        optimizer.step()
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] == expected(step)
    timer.elapsed = 60.0
    optimizer.step()
    scheduler.step()
    assert abs(optimizer.param_groups[0]["lr"] - 0.05) < 1e-12
