"""BucketBatchSampler: padding, budget, sharding over ranks, determinism, mid-epoch resume
(also through ResumableDataLoader with worker processes)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from kwav2vec.data.loader import ResumableDataLoader
from kwav2vec.data.sampler import BucketBatchSampler, pack_batches, padding_fraction

SR = 16000


def realistic_lengths(n: int = 2000, seed: int = 0) -> np.ndarray:
    """Utterance lengths like read/spontaneous speech corpora: lognormal, median 3.5 s, 1-15 s."""
    seconds = np.clip(np.random.default_rng(seed).lognormal(np.log(3.5), 0.4, n), 1.0, 15.0)
    return (seconds * SR).astype(np.int64)


def test_bucketed_padding_is_small_random_is_about_a_third():
    lengths = realistic_lengths()
    budget = 40 * SR  # 40 s of padded audio per batch: about 10 utterances
    bucketed = BucketBatchSampler(lengths, budget, seed=0)
    random = BucketBatchSampler(lengths, budget, bucketing=False, seed=0)
    pad_b = padding_fraction(bucketed.epoch_batches(), lengths)
    pad_r = padding_fraction(random.epoch_batches(), lengths)
    assert pad_b <= 0.10, pad_b
    assert 0.25 <= pad_r <= 0.5, pad_r
    # Random batches with exactly the bucketed batch sizes are no better.
    perm = np.random.default_rng(1).permutation(len(lengths))
    sizes = [len(b) for b in bucketed.batches]
    same_sizes = np.split(perm, np.cumsum(sizes)[:-1])
    assert padding_fraction(same_sizes, lengths) >= 0.25


def test_budget_cap_and_singletons():
    lengths = np.array([100, 100, 100, 250, 900, 90, 95, 2000])
    batches = pack_batches(lengths, np.argsort(lengths, kind="stable"), 300)
    for b in batches:
        assert len(b) == 1 or len(b) * lengths[b].max() <= 300
    assert [len(b) for b in batches] == [3, 2, 1, 1, 1]  # 90 95 100 | 100 100 | 250 | 900 | 2000
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))  # 2000 > budget: alone
    capped = pack_batches(np.full(10, 10), np.arange(10), 10_000, max_batch_size=4)
    assert [len(b) for b in capped] == [4, 4, 2]


def test_one_rank_sees_every_utterance_once_per_epoch():
    lengths = realistic_lengths(300)
    sampler = BucketBatchSampler(lengths, 30 * SR, seed=3)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        seen = [i for b in sampler for i in b]
        assert sorted(seen) == list(range(300))
        assert len(list(sampler)) == len(sampler)


def test_deterministic_for_seed_and_epoch():
    lengths = realistic_lengths(300)

    def run(seed, epoch):
        s = BucketBatchSampler(lengths, 30 * SR, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert run(0, 1) == run(0, 1)
    assert run(0, 1) != run(0, 2)
    assert run(0, 1) != run(1, 1)
    # Without shuffling the order is the length order, the same every epoch.
    s = BucketBatchSampler(lengths, 30 * SR, shuffle=False)
    first = list(s)
    s.set_epoch(5)
    assert list(s) == first and lengths[first[0]].max() <= lengths[first[-1]].min()


@pytest.mark.parametrize("uneven", ["pad", "drop"])
def test_two_ranks_see_disjoint_batches_with_equal_counts(uneven):
    # A corpus size whose batch count is odd, so the uneven policy matters.
    n = next(n for n in range(301, 400) if len(BucketBatchSampler(realistic_lengths(n), 30 * SR).batches) % 2)
    lengths = realistic_lengths(n)
    samplers = [BucketBatchSampler(lengths, 30 * SR, seed=7, rank=r, world_size=2, uneven=uneven) for r in range(2)]
    total = len(samplers[0].batches)
    for epoch in range(2):
        per_rank = []
        for s in samplers:
            s.set_epoch(epoch)
            per_rank.append(list(s))
        assert len(per_rank[0]) == len(per_rank[1]) == len(samplers[0])
        ids = [{i for b in batches for i in b} for batches in per_rank]
        if uneven == "drop":
            assert len(per_rank[0]) == total // 2
            assert not ids[0] & ids[1]
        else:
            assert len(per_rank[0]) == total // 2 + 1
            # The only overlap is the one batch repeated to even out the counts.
            repeated = per_rank[1][-1]
            assert ids[0] & ids[1] == set(repeated)
            assert ids[0] | ids[1] == set(range(n))


def test_rank_must_fit_world_size():
    with pytest.raises(ValueError, match="rank 2 is not in"):
        BucketBatchSampler([1, 2, 3], 10, rank=2, world_size=2)


def test_resume_from_mid_epoch_state_yields_exactly_the_remaining_batches():
    lengths = realistic_lengths(400)
    full = BucketBatchSampler(lengths, 30 * SR, seed=11)
    full.set_epoch(3)
    expected = list(full)

    first = BucketBatchSampler(lengths, 30 * SR, seed=11)
    first.set_epoch(3)
    taken = list(itertools.islice(iter(first), 7))
    state = first.state_dict()
    assert state["position"] == 7 and state["epoch"] == 3

    resumed = BucketBatchSampler(lengths, 30 * SR, seed=11)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # Lightning sets the same epoch again after restoring: position kept
    rest = list(resumed)
    assert taken + rest == expected
    # The next epoch starts from its beginning.
    resumed.set_epoch(4)
    assert len(list(resumed)) == len(resumed)


def test_resume_refuses_a_state_from_another_setup():
    lengths = realistic_lengths(200)
    state = BucketBatchSampler(lengths, 30 * SR, seed=1).state_dict()
    with pytest.raises(ValueError, match="checkpoint has seed=1, this run has 2"):
        BucketBatchSampler(lengths, 30 * SR, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="world_size"):
        BucketBatchSampler(lengths, 30 * SR, seed=1, rank=0, world_size=2).load_state_dict(state)


class _Ids(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        index, _epoch = key
        return {"index": index}


def _ids_collate(items):
    return {"ids": [it["index"] for it in items], "skipped": []}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_state_counts_batches_received_not_prefetched(num_workers):
    lengths = realistic_lengths(200)

    def loader():
        sampler = BucketBatchSampler(lengths, 30 * SR, seed=5)
        return ResumableDataLoader(_Ids(200), sampler, _ids_collate, num_workers=num_workers)

    expected = [b["ids"] for b in loader()]
    first = loader()
    it = iter(first)
    taken = [next(it)["ids"] for _ in range(5)]  # workers have prefetched more than 5 by now
    state = first.state_dict()
    assert state["sampler"]["position"] == 5
    del it
    second = loader()
    second.load_state_dict(state)
    assert taken + [b["ids"] for b in second] == expected
    assert torch.utils.data.get_worker_info() is None


def _rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        sampler = BucketBatchSampler(realistic_lengths(301), 30 * SR, seed=9)  # rank and size from the group
        sampler.set_epoch(1)
        np.save(f"{out_dir}/rank{rank}.npy", np.array([sampler.rank, sampler.world_size, len(sampler),
                                                        *[i for b in sampler for i in b]]))
    finally:
        dist.destroy_process_group()


def test_rank_and_world_size_come_from_torch_distributed(tmp_path):
    import torch.multiprocessing as mp

    # fork: the children only build index lists, and spawn would re-import torch (seconds per process).
    mp.start_processes(_rank_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="fork")
    got = [np.load(tmp_path / f"rank{r}.npy") for r in range(2)]
    assert [g[:2].tolist() for g in got] == [[0, 2], [1, 2]] and got[0][2] == got[1][2]
    expected = [BucketBatchSampler(realistic_lengths(301), 30 * SR, seed=9, rank=r, world_size=2) for r in range(2)]
    for r in range(2):
        expected[r].set_epoch(1)
        assert got[r][3:].tolist() == [i for b in expected[r] for i in b]


def test_pack_batches_can_bound_the_squared_length_too():
    lengths = np.array([10, 10, 30, 30, 30])
    order = np.arange(5)
    assert [b.tolist() for b in pack_batches(lengths, order, 1000)] == [[0, 1, 2, 3, 4]]
    # at most two 30s (2 x 900 <= 2000 < 3 x 900); padded samples alone would allow all five
    assert [b.tolist() for b in pack_batches(lengths, order, 1000, max_squared=2000)] == [[0, 1], [2, 3], [4]]
