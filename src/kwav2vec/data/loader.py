"""A DataLoader that can continue an epoch where a checkpoint left it, and that accounts for
utterances that failed to load.

Resuming through Lightning (2.x): the fit loop saves `state_dict()` of every train dataloader that
has `state_dict`/`load_state_dict` (its `_Stateful` check) into the checkpoint, and on restart calls
`load_state_dict()` before it calls `iter()`; it then expects the iterator to yield only the batches
not yet seen (it adds the batches already processed to its own count). A DataLoader with worker
processes runs ahead of the training loop, so the position saved here is the number of batches
this loader has *yielded* in the current epoch, not how far its sampler got.

Lightning restores dataloader states only if the train dataloader did not exist yet when the
checkpoint was loaded. Calling `trainer.estimated_stepping_batches` in `configure_optimizers`
builds it earlier, and then the restore is silently skipped. The DataModules of this package also
save the state through their own `state_dict` hook, which Lightning restores before
`configure_optimizers`, so resuming works in both cases.

Iteration is lazy: the underlying iterator (and its workers) start at the first `next()`, after
Lightning has called `set_epoch` and `load_state_dict`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator

from torch.utils.data import DataLoader, Dataset

from kwav2vec.data.dataset import SkippedItem
from kwav2vec.data.sampler import BucketBatchSampler

log = logging.getLogger(__name__)

MAX_SUBSTITUTE_TRIES = 100  # utterances tried in a row to replace a batch whose every file failed


class _EpochTaggedBatches:
    """Yields batches of `(index, epoch)` keys so datasets can seed per-item randomness by epoch."""

    def __init__(self, sampler: BucketBatchSampler) -> None:
        self.sampler = sampler  # Lightning calls set_epoch on `dataloader.batch_sampler.sampler`

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.sampler.epoch
        for batch in self.sampler:
            yield [(i, epoch) for i in batch]

    def __len__(self) -> int:
        return len(self.sampler)


class ResumableDataLoader(DataLoader):
    """DataLoader over a `BucketBatchSampler` with mid-epoch resume and skip accounting.

    Args:
        dataset: a map-style dataset; returns `SkippedItem` for utterances it cannot load.
        batch_sampler: the `BucketBatchSampler` (its epoch, position and sharding).
        collate_fn: builds a batch dict with `ids` and a `skipped` list (see `kwav2vec.data.collate`).
        pass_epoch: index the dataset with `(index, epoch)` instead of `index`.
        name: used in log lines.
        **kwargs: DataLoader options (num_workers, pin_memory, persistent_workers, ...).

    Counters, for the LightningModule to log: `skipped` (failed loads: utterances dropped because their file
    failed to load, stand-in attempts included), `skipped_reasons` (by reason), `substituted_batches` (batches whose every file
    failed, replaced by a one-utterance batch so every rank still makes the same number of steps).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_sampler: BucketBatchSampler,
        collate_fn: Callable,
        *,
        pass_epoch: bool = True,
        name: str = "train",
        **kwargs,
    ) -> None:
        self.bucket_sampler = batch_sampler
        self.pass_epoch, self.name = pass_epoch, name
        tagged = _EpochTaggedBatches(batch_sampler) if pass_epoch else batch_sampler
        super().__init__(dataset, batch_sampler=tagged, collate_fn=collate_fn, **kwargs)
        self._consumed = 0  # batches yielded in epoch `_consumed_epoch`
        self._consumed_epoch = batch_sampler.epoch
        self.skipped = 0
        self.skipped_reasons: Counter[str] = Counter()
        self.substituted_batches = 0

    def __iter__(self) -> Iterator[dict]:
        return self._iterate()

    def _iterate(self) -> Iterator[dict]:
        sampler = self.bucket_sampler
        self._consumed_epoch, self._consumed = sampler.epoch, sampler.resume_position
        for batch in super().__iter__():
            self._consumed += 1
            yield self._account(batch)

    def _account(self, batch: dict) -> dict:
        for item in batch.get("skipped", ()):
            self._count_skip(item)
        if not batch["ids"]:
            batch = self._substitute(batch)
        return batch

    def _count_skip(self, item: dict) -> None:
        self.skipped += 1
        self.skipped_reasons[item["reason"]] += 1
        log.warning("%s: skipped utterance %s, file %s: %s: %s (%d skipped so far)",
                    self.name, item["id"], item["path"], item["reason"], item["detail"], self.skipped)

    def _substitute(self, failed: dict) -> dict:
        """Every file of the batch failed: load the next readable utterances in the main process
        instead, so this rank still yields a batch (DDP ranks must take the same number of steps)."""
        n = len(self.dataset)
        start = failed["skipped"][-1]["index"] + 1 if failed["skipped"] else 0
        epoch = self.bucket_sampler.epoch
        for k in range(min(MAX_SUBSTITUTE_TRIES, n)):
            index = (start + k) % n
            item = self.dataset[(index, epoch) if self.pass_epoch else index]
            if isinstance(item, SkippedItem):
                self._count_skip(item.as_dict())
                continue
            self.substituted_batches += 1
            log.warning("%s: every file of a batch failed to load (%s); using utterance %s instead",
                        self.name, ", ".join(s["id"] for s in failed["skipped"]), item["id"])
            batch = self.collate_fn([item])
            batch["skipped"] = failed["skipped"]
            return batch
        raise RuntimeError(
            f"{self.name}: {MAX_SUBSTITUTE_TRIES} utterances in a row failed to load after a batch whose every "
            f"file failed; reasons so far: {dict(self.skipped_reasons)}. Check the manifest's audio paths."
        )

    # -- Lightning's _Stateful protocol -------------------------------------------------------------
    def state_dict(self) -> dict:
        sampler = self.bucket_sampler
        position = self._consumed if self._consumed_epoch == sampler.epoch else sampler.resume_position
        return {
            "sampler": sampler.state_dict(position=position),
            "skipped": self.skipped,
            "skipped_reasons": dict(self.skipped_reasons),
            "substituted_batches": self.substituted_batches,
        }

    def load_state_dict(self, state: dict) -> None:
        self.bucket_sampler.load_state_dict(state["sampler"])
        self._consumed_epoch, self._consumed = self.bucket_sampler.epoch, self.bucket_sampler.resume_position
        self.skipped = int(state.get("skipped", 0))
        self.skipped_reasons = Counter(state.get("skipped_reasons", {}))
        self.substituted_batches = int(state.get("substituted_batches", 0))
