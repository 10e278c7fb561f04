"""Batches by total padded audio samples, with length bucketing, sharded over ranks, resumable.

fairseq's `max_tokens` idea: a batch holds as many utterances as fit in `max_samples_per_batch`
*padded* samples (batch size x longest utterance), so short utterances come in big batches and
long ones in small batches, and memory per step stays flat. Bucketing (packing utterances in
length order) keeps utterances of a batch alike, so padding stays a few percent instead of about a
third for random batches.

Epochs: the batches are packed once (deterministically from `seed`); each epoch shuffles their
order with a generator seeded by (seed, epoch). Packing once is what fairseq does for audio, and it
keeps the number of batches the same in every epoch, which Lightning relies on (it reads the
length once) and which keeps the ranks of a distributed run in step.

Ranks: every rank builds the same global batch list and takes every `world_size`-th batch starting
at its rank, so ranks see disjoint batches. When the count does not divide evenly, `uneven="pad"`
(default) gives every rank ceil(N / world_size) batches by repeating the first batches of the
epoch's order (a few utterances are seen twice per epoch), `uneven="drop"` gives floor(N /
world_size) (a few utterances are skipped this epoch, different ones each epoch when shuffling).
Equal counts matter: a rank with one batch more would wait forever in DDP's gradient all-reduce.

Resuming: `state_dict()` records (epoch, batches handed out this epoch); after `load_state_dict`
the next iteration yields exactly the batches that were not handed out yet. A DataLoader prefetches
batches from its sampler, so inside a DataLoader use `ResumableDataLoader.state_dict()`, which
counts the batches the training loop actually received.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist

log = logging.getLogger(__name__)

UNEVEN_POLICIES = ("pad", "drop")


def distributed_rank_and_size(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): the given values, else torch.distributed's when initialised, else (0, 1)."""
    initialised = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    return rank, world_size


def pack_batches(
    lengths: np.ndarray, order: np.ndarray, max_samples_per_batch: int, max_batch_size: int | None = None,
    max_squared: int | None = None,
) -> list[np.ndarray]:
    """Greedy packing of `order` into batches whose padded size (count x longest) stays within
    `max_samples_per_batch` and, when given, count x longest^2 (what attention costs) within
    `max_squared`. An utterance over a budget gets a batch of its own."""
    batches: list[np.ndarray] = []
    start, longest = 0, 0
    for pos, idx in enumerate(order):
        n = pos - start
        new_longest = max(longest, int(lengths[idx]))
        full = max_batch_size is not None and n >= max_batch_size
        squared = max_squared is not None and (n + 1) * new_longest ** 2 > max_squared
        if n and (full or squared or new_longest * (n + 1) > max_samples_per_batch):
            batches.append(order[start:pos])
            start, new_longest = pos, int(lengths[idx])
        longest = new_longest
    if start < len(order):
        batches.append(order[start:])
    return batches


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int] | np.ndarray) -> float:
    """Fraction of the padded samples of `batches` that are padding: 1 - real / (count x longest)."""
    lengths = np.asarray(lengths)
    real = padded = 0
    for b in batches:
        lens = lengths[np.asarray(b, dtype=np.int64)]
        real += int(lens.sum())
        padded += int(lens.max()) * len(lens) if len(lens) else 0
    return 1.0 - real / padded if padded else 0.0


class BucketBatchSampler:
    """Yields lists of dataset indices; see the module docstring for the policy.

    Args:
        lengths: length of every utterance in samples (after any cropping), indexed like the dataset.
        max_samples_per_batch: budget of padded samples per batch (fairseq `max_tokens`).
        max_batch_size: optional cap on utterances per batch (fairseq `batch_size`).
        bucketing: pack in length order (True) or in a random order (False, a baseline).
        shuffle: shuffle the batch order every epoch (training); False keeps length order.
        seed: seeds packing tie-breaks and every epoch's shuffle.
        rank, world_size: default from torch.distributed when initialised, else 0 and 1.
        uneven: "pad" (repeat batches) or "drop" when the batches do not divide over the ranks.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        max_samples_per_batch: int,
        *,
        max_batch_size: int | None = None,
        bucketing: bool = True,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        uneven: str = "pad",
    ) -> None:
        if max_samples_per_batch <= 0:
            raise ValueError(f"max_samples_per_batch must be > 0, got {max_samples_per_batch}")
        if max_batch_size is not None and max_batch_size <= 0:
            raise ValueError(f"max_batch_size must be > 0 or None, got {max_batch_size}")
        if uneven not in UNEVEN_POLICIES:
            raise ValueError(f"uneven must be one of {UNEVEN_POLICIES}, got {uneven!r}")
        self.lengths = np.asarray(lengths, dtype=np.int64)  # (N,)
        if self.lengths.ndim != 1:
            raise ValueError(f"lengths must be 1-D, got shape {tuple(self.lengths.shape)}")
        self.max_samples_per_batch = int(max_samples_per_batch)
        self.max_batch_size = max_batch_size
        self.bucketing, self.shuffle, self.seed, self.uneven = bucketing, shuffle, int(seed), uneven
        self.rank, self.world_size = distributed_rank_and_size(rank, world_size)

        tie_break = np.random.default_rng(self.seed).permutation(len(self.lengths))
        # lexsort sorts by the last key first: by length, equal lengths in a seeded random order.
        order = np.lexsort((tie_break, self.lengths)) if bucketing else tie_break
        self.batches = pack_batches(self.lengths, order, self.max_samples_per_batch, max_batch_size)
        oversized = int((self.lengths > self.max_samples_per_batch).sum())
        if oversized:
            log.warning("%d utterances are longer than max_samples_per_batch=%d; each gets a batch of its own",
                        oversized, self.max_samples_per_batch)
        n, w = len(self.batches), self.world_size
        self.num_batches = math.ceil(n / w) if uneven == "pad" else n // w  # per rank, every epoch
        if self.num_batches == 0 and n:
            log.warning("%d batches over %d ranks with uneven='drop' leaves every rank without batches", n, w)

        self.epoch = 0
        self._resume_at = 0  # batches to skip at the start of the next iteration (after load_state_dict)
        self._position = 0  # batches handed out in the current epoch

    # Lightning calls `set_epoch` on `dataloader.batch_sampler.sampler`, not on the batch sampler.
    @property
    def sampler(self) -> BucketBatchSampler:
        return self

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle. Moving to another epoch forgets a pending resume position;
        setting the same epoch again (Lightning does so after restoring) keeps it."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self._resume_at = self._position = 0

    def epoch_batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches of an epoch, in order (deterministic for seed, epoch, rank, world size)."""
        epoch = self.epoch if epoch is None else epoch
        n, w = len(self.batches), self.world_size
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            order = np.arange(n)
        if self.uneven == "pad" and n % w:
            order = np.concatenate([order, order[: w - n % w]])
        mine = order[self.rank :: w][: self.num_batches]
        return [self.batches[i].tolist() for i in mine]

    @property
    def resume_position(self) -> int:
        """Batches of the current epoch the next iteration will skip."""
        return self._resume_at

    def __iter__(self) -> Iterator[list[int]]:
        start, self._resume_at = self._resume_at, 0
        batches = self.epoch_batches()
        self._position = start
        for batch in batches[start:]:
            self._position += 1
            yield batch

    def __len__(self) -> int:
        return self.num_batches

    def state_dict(self, position: int | None = None) -> dict:
        """Where this epoch stands. `position` overrides the batches-handed-out count (the
        DataLoader passes the batches its consumer actually received)."""
        return {
            "epoch": self.epoch,
            "position": self._position if position is None else int(position),
            "seed": self.seed,
            "num_batches": self.num_batches,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue an epoch: the next iteration starts after `state["position"]` batches.

        Raises ValueError when the state comes from a different setup (seed, world size, number of
        batches), because a position in another batch list would silently replay or skip data."""
        for key in ("world_size", "seed", "num_batches"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume the batch sampler: checkpoint has {key}={state[key]}, this run has "
                    f"{getattr(self, key)} (the data, batch settings or number of processes changed)"
                )
        position = int(state["position"])
        if not 0 <= position <= self.num_batches:
            raise ValueError(f"resume position {position} is outside [0, {self.num_batches}]")
        self.epoch = int(state["epoch"])
        self._resume_at = self._position = position
