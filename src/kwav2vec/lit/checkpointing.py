"""Which checkpoints a training run writes, and when: saves that exist when the crash comes.

Lightning 2.6's `ModelCheckpoint` with a `monitor` holds back its `every_n_train_steps` /
`train_time_interval` saves, `last.ckpt` included, until the monitored metric first exists, i.e.
until the first validation (step 175 of the demo recipe, 2000 of the KsponSpeech ones). The
training commands therefore split the one `--checkpoint.*` configuration in two callbacks:

- `PeriodicCheckpoint` (no monitor): `step-N.ckpt` (the newest one kept) and `last.ckpt` on the
  schedule given by `--checkpoint.every_n_train_steps`, `--checkpoint.train_time_interval` or
  `--checkpoint.every_n_epochs` (by default every `DEFAULT_SAVE_INTERVAL`), whatever the metrics,
  and once more when training ends;
- a monitored `ModelCheckpoint`: `best-<metric>-<value>-step<N>.ckpt`, the `save_top_k` best by
  `--checkpoint.monitor`, written at validation.

`CheckpointGapWarning` warns when the schedule could leave a run without a checkpoint for longer
than `--max_checkpoint_gap` minutes (measured step time x steps between saves), and
`resolve_last` is what `--ckpt_path last` means: the newest checkpoint of the run's folders that
reads and verifies (`checkpoints.integrity`), whichever logger version wrote it.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import time
from datetime import timedelta
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from kwav2vec.checkpoints.integrity import CheckpointError, newest_intact

log = logging.getLogger(__name__)

DEFAULT_SAVE_INTERVAL = timedelta(minutes=10)  # periodic saves when no schedule is given
DEFAULT_MAX_GAP_MINUTES = 30.0
PERIODIC_FILENAME = "step-{step}"
# ModelCheckpoint arguments that only concern one of the two callbacks
_SCHEDULE = ("every_n_train_steps", "train_time_interval", "every_n_epochs")
_BEST_ONLY = ("monitor", "mode", "save_top_k", "filename", "auto_insert_metric_name")
_PERIODIC_ONLY = (*_SCHEDULE, "save_last", "save_on_exception")


class PeriodicCheckpoint(ModelCheckpoint):
    """An unmonitored ModelCheckpoint (`step-N.ckpt` + `last.ckpt`) that also saves when training
    ends (Lightning's only writes `last.ckpt` there if it never wrote one), and that rotates out the
    `step-N.ckpt` a run resumed from once a newer one is written (Lightning keeps the file it
    resumed from forever, so every resume from a step file would leave one behind)."""

    def _should_remove_checkpoint(self, trainer: pl.Trainer, previous: str, current: str) -> bool:
        ours = (self.dirpath is not None and os.path.dirname(os.path.abspath(previous)) == os.path.abspath(self.dirpath)
                and re.fullmatch(r"step-\d+\.ckpt", os.path.basename(previous)) is not None)
        if ours and previous != current:
            return True
        return super()._should_remove_checkpoint(trainer, previous, current)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        super().on_train_end(trainer, pl_module)


def metric_slug(monitor: str) -> str:
    """`val/cer` -> `val_cer`: a metric name usable inside a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in monitor)


def split_checkpoint_config(args: dict[str, Any]) -> list[ModelCheckpoint]:
    """The callbacks for one `--checkpoint.*` configuration (ModelCheckpoint's arguments): the
    periodic one first, then the monitored one when `monitor` is set."""
    args = {k: v for k, v in args.items() if v is not None or k in ("monitor", "filename", "save_last")}
    shared = {k: v for k, v in args.items() if k not in _BEST_ONLY + _PERIODIC_ONLY}
    schedule = {k: args[k] for k in _SCHEDULE if args.get(k) is not None}
    if not schedule:
        schedule = {"train_time_interval": DEFAULT_SAVE_INTERVAL}
    periodic = PeriodicCheckpoint(
        **shared, **schedule, filename=PERIODIC_FILENAME, monitor=None, save_top_k=1, auto_insert_metric_name=False,
        save_last=args.get("save_last", True), save_on_exception=args.get("save_on_exception", False),
    )
    monitor = args.get("monitor")
    if monitor is None:
        return [periodic]
    filename = args.get("filename") or f"best-{metric_slug(monitor)}-{{{monitor}:.4f}}-step{{step}}"
    best = ModelCheckpoint(
        **shared, monitor=monitor, mode=args.get("mode", "min"), save_top_k=args.get("save_top_k", 1),
        filename=filename, auto_insert_metric_name=args.get("auto_insert_metric_name", False), save_last=False,
    )
    return [periodic, best]


class CheckpointGapWarning(Callback):
    """Warns (once) when the periodic schedule could leave the run without a checkpoint for longer
    than `max_minutes`: at the start for a time interval or no schedule at all, after `probe_steps`
    steps for a schedule in steps or epochs (steps between saves x the measured time a step)."""

    def __init__(self, periodic: ModelCheckpoint | None, max_minutes: float = DEFAULT_MAX_GAP_MINUTES,
                 probe_steps: int = 20) -> None:
        self.periodic, self.max_minutes, self.probe_steps = periodic, max_minutes, probe_steps
        self.warned = False  # measured (or warned) once: nothing more to do
        self.warning: str | None = None  # the warning given, if any
        self._start: tuple[int, float] | None = None

    def _warn(self, text: str) -> None:
        self.warned = True
        self.warning = text
        rank_zero_warn(f"{text}: a crash can lose that much training (warning above --max_checkpoint_gap "
                       f"{self.max_minutes:g} min; lower --checkpoint.every_n_train_steps or set "
                       "--checkpoint.train_time_interval)")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        p = self.periodic
        if p is None or (p._every_n_train_steps < 1 and p._every_n_epochs < 1 and p._train_time_interval is None):
            self._warn("no periodic checkpoints are configured, the run may go unsaved until it ends")
        elif p._train_time_interval is not None and p._train_time_interval.total_seconds() > 60 * self.max_minutes:
            self._warn(f"checkpoints every {p._train_time_interval.total_seconds() / 60:g} min")

    def steps_between_saves(self, trainer: pl.Trainer) -> float | None:
        p = self.periodic
        if p is None or p._train_time_interval is not None:
            return None
        if p._every_n_train_steps >= 1:
            return float(p._every_n_train_steps)
        if p._every_n_epochs >= 1:
            batches = trainer.num_training_batches if p._should_save_on_train_epoch_end(trainer) else trainer.val_check_batch
            return float(batches) * p._every_n_epochs / max(1, trainer.accumulate_grad_batches)
        return None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.warned:
            return
        now, step = time.monotonic(), trainer.global_step
        if self._start is None:
            if step >= 2:  # the first steps are slow (allocations, compilation): not measured
                self._start = (step, now)
            return
        done = step - self._start[0]
        if done < self.probe_steps:
            return
        self.warned = True  # measured once
        between = self.steps_between_saves(trainer)
        if between is None or between == float("inf"):
            return
        minutes = between * (now - self._start[1]) / done / 60
        if minutes > self.max_minutes:
            self._warn(f"checkpoints every {between:g} steps, about {minutes:.0f} min at the "
                       f"{(now - self._start[1]) / done:.2f} s a step measured")


def checkpoint_folders(trainer: pl.Trainer) -> list[str]:
    """Where this run's checkpoints are, and earlier runs' of the same logger (all its versions)."""
    folders: list[str] = []
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath is not None:
            folders.append(os.fspath(cb.dirpath))
        elif trainer.loggers:
            logger = trainer.loggers[0]
            save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
            folders += sorted(glob.glob(os.path.join(glob.escape(os.fspath(save_dir)), glob.escape(str(logger.name)),
                                                     "*", "checkpoints")))
        else:
            folders.append(os.path.join(trainer.default_root_dir, "checkpoints"))
    return list(dict.fromkeys(folders))


def resolve_last(trainer: pl.Trainer) -> str | None:
    """`--ckpt_path last`: the newest checkpoint in `checkpoint_folders` that reads and verifies;
    None (a warning: the run starts fresh) when there is none; CheckpointError when every one is
    damaged. Newer files that fail are named in a warning."""
    folders = checkpoint_folders(trainer)
    good, skipped = newest_intact(folders)
    for reason in skipped:
        rank_zero_warn(f"--ckpt_path last: skipping {reason}")
    if good is None and skipped:
        raise CheckpointError(f"--ckpt_path last: no intact checkpoint in {', '.join(folders)} "
                              f"({len(skipped)} damaged or unreadable)")
    if good is None:
        rank_zero_warn(f"--ckpt_path last: no checkpoint in {', '.join(folders) or 'the run folder'}; "
                       "starting from scratch")
        return None
    log.info("--ckpt_path last: resuming from %s", good)
    return str(good)
