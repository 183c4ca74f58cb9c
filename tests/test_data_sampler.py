"""GroupedBatchSampler: sizes, grouping, coverage, determinism, distributed disjointness."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from taxaug.data import GroupedBatchSampler


def _gids(draw_sizes: list[int], unknown: int, seed: int) -> np.ndarray:
    ids = np.concatenate([np.full(s, g, dtype=np.int64) for g, s in enumerate(draw_sizes)] +
                         [np.full(unknown, -1, dtype=np.int64)])
    return np.random.default_rng(seed).permutation(ids)


group_sizes = st.lists(st.integers(1, 12), min_size=0, max_size=12)


def _build(gids, batch_size, **kw) -> GroupedBatchSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GroupedBatchSampler(gids, batch_size, **kw)


@given(sizes=group_sizes, unknown=st.integers(0, 6), batch=st.integers(1, 9),
       mode=st.sampled_from(["strict-group", "mixed-pairs", "standard"]), seed=st.integers(0, 5),
       epoch=st.integers(0, 3))
def test_single_replica_covers_every_sample_once(sizes, unknown, batch, mode, seed, epoch):
    gids = _gids(sizes, unknown, seed)
    if gids.size == 0 or (mode == "mixed-pairs" and batch < 2):
        return
    s = _build(gids, batch, mode=mode, seed=seed)
    s.set_epoch(epoch)
    batches = list(s)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(gids.size))  # every sample exactly once: nothing dropped
    assert len(batches) == len(s)
    eff = s.batch_size
    assert all(len(b) == eff for b in batches[:-1])
    assert 1 <= len(batches[-1]) <= eff


@given(sizes=group_sizes, unknown=st.integers(0, 6), batch=st.integers(2, 9), seed=st.integers(0, 5))
def test_strict_group_full_batches_and_mixed_pairs(sizes, unknown, batch, seed):
    gids = _gids(sizes, unknown, seed)
    if gids.size == 0:
        return
    strict = _build(gids, batch, mode="strict-group", seed=seed)
    batches = strict.batches(0)
    # a group with at least `batch` members yields that many single-group batches
    expected_pure = sum(s // batch for s in sizes if s >= 2)
    pure = [b for b in batches if len(b) == batch and len(set(gids[b])) == 1 and gids[b][0] >= 0]
    assert len(pure) >= expected_pure
    pairs = _build(gids, batch, mode="mixed-pairs", seed=seed)
    eff = pairs.batch_size
    assert eff % 2 == 0
    counts = {g: s for g, s in enumerate(sizes)}
    for b in pairs.batches(0):
        g = gids[b]
        # members of a pairable group arrive in pairs inside a batch, except a group's odd leftover
        for gid in set(g[g >= 0].tolist()):
            in_batch = int((g == gid).sum())
            if counts[gid] >= 2 and counts[gid] % 2 == 0:
                assert in_batch % 2 == 0


@given(sizes=group_sizes, unknown=st.integers(0, 6), batch=st.integers(1, 7), replicas=st.integers(1, 4),
       mode=st.sampled_from(["strict-group", "mixed-pairs", "standard"]), epoch=st.integers(0, 2))
def test_replicas_disjoint_equal_length_and_cover(sizes, unknown, batch, replicas, mode, epoch):
    gids = _gids(sizes, unknown, 1)
    if gids.size == 0 or (mode == "mixed-pairs" and batch < 2):
        return
    per_rank = []
    for r in range(replicas):
        s = _build(gids, batch, mode=mode, seed=3, num_replicas=replicas, rank=r)
        s.set_epoch(epoch)
        got = list(s)
        assert len(got) == len(s)
        per_rank.append(got)
    assert len({len(b) for b in per_rank}) == 1  # equal length per rank
    seen = [i for got in per_rank for b in got for i in b]
    assert len(seen) == len(set(seen))  # disjoint, at most once
    skipped = _build(gids, batch, mode=mode, num_replicas=replicas).num_skipped_per_epoch
    assert len(seen) == gids.size - skipped
    assert skipped < replicas


def test_deterministic_under_seed_and_epoch():
    gids = _gids([5, 7, 3, 9, 1], 4, 0)
    a = GroupedBatchSampler(gids, 4, mode="mixed-pairs", seed=7)
    b = GroupedBatchSampler(gids, 4, mode="mixed-pairs", seed=7)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    c = GroupedBatchSampler(gids, 4, mode="mixed-pairs", seed=8)
    assert list(c) != list(b)


def test_odd_batch_in_mixed_pairs_rounds_down_with_warning():
    gids = _gids([6, 6], 0, 0)
    with pytest.warns(UserWarning, match="rounded down to 4"):
        s = GroupedBatchSampler(gids, 5, mode="mixed-pairs")
    assert s.batch_size == 4
    assert [len(b) for b in s] == [4, 4, 4]
    with pytest.raises(ValueError, match="batch_size >= 2"):
        GroupedBatchSampler(gids, 1, mode="mixed-pairs")


def test_unpairable_fill_by_default_and_exclude_reports():
    gids = np.array([0, 0, 1, -1, 2, 2, 2, -1])  # group 1 is a singleton
    s = GroupedBatchSampler(gids, 2, mode="mixed-pairs")
    assert s.num_unpairable == 3
    assert sorted(i for b in s for i in b) == list(range(8))
    with pytest.warns(UserWarning, match="3 of 8 samples cannot be paired"):
        ex = GroupedBatchSampler(gids, 2, mode="mixed-pairs", unpairable="exclude")
    got = sorted(i for b in ex for i in b)
    assert got == [0, 1, 4, 5, 6]
    assert len(ex) == 3


def test_min_group_size_makes_small_groups_unpairable():
    gids = np.array([0, 0, 1, 1, 1, 1])
    s = GroupedBatchSampler(gids, 2, mode="strict-group", min_group_size=3, unpairable="fill")
    assert s.num_unpairable == 2


def test_strict_group_batches_hold_one_group():
    gids = np.repeat(np.arange(4), 8)
    s = GroupedBatchSampler(gids, 4, mode="strict-group", seed=2)
    batches = list(s)
    assert len(batches) == 8
    assert all(len(set(gids[b].tolist())) == 1 for b in batches)


def test_bad_arguments_fail_loudly():
    with pytest.raises(ValueError, match="mode must be one of"):
        GroupedBatchSampler([0, 0], 2, mode="pairs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rank < num_replicas"):
        GroupedBatchSampler([0, 0], 2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match=">= -1"):
        GroupedBatchSampler([0, -3], 2)
    with pytest.raises(TypeError, match="integer"):
        GroupedBatchSampler([0.5, 1.0], 2)


def test_few_leftovers_across_replicas_are_skipped_with_warning():
    gids = np.zeros(9, dtype=np.int64)
    with pytest.warns(UserWarning, match="cannot be spread over 4 replicas"):
        s = GroupedBatchSampler(gids, 2, mode="standard", num_replicas=4)
    assert s.num_skipped_per_epoch == 1
    assert len(s) == 1


@pytest.mark.parametrize("mode", ["strict-group", "mixed-pairs"])
def test_sparse_group_ids_are_compacted_within_a_memory_bound(mode):
    import tracemalloc

    # Groups 10**9 and 2**40 (3 and 4 members), one singleton group 7 and one unknown: tables sized by
    # max(id) + 1 would need terabytes.
    gids = np.array([10**9] * 3 + [2**40] * 4 + [7, -1], dtype=np.int64)
    tracemalloc.start()
    try:
        s = _build(gids, 2, mode=mode, seed=1)
        batches = list(s)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(gids.size))
    assert s.num_unpairable == 2  # the singleton and the unknown
    for b in batches:  # every full batch of a pairable group pairs within that group
        if len(b) == 2 and all(gids[i] in (10**9, 2**40) for i in b) and mode == "strict-group":
            assert gids[b[0]] == gids[b[1]]


def test_compacted_ids_give_the_same_batches_as_dense_ids():
    dense = np.array([0, 0, 1, 1, 1, 2, 2, -1, 0, 2], dtype=np.int64)
    sparse = np.where(dense >= 0, (dense + 1) * 2**40, -1)
    for mode in ("strict-group", "mixed-pairs"):
        a, b = _build(dense, 3, mode=mode, seed=4), _build(sparse, 3, mode=mode, seed=4)
        a.set_epoch(2), b.set_epoch(2)
        assert list(a) == list(b)


def test_a_distributed_sampler_argument_gives_the_replica_split():
    from torch.utils.data import DistributedSampler

    gids = _gids([5, 7, 4], 2, seed=0)
    data = list(range(gids.size))
    for rank in (0, 1):
        given = _build(gids, 4, seed=3, sampler=DistributedSampler(data, num_replicas=2, rank=rank, shuffle=False))
        explicit = _build(gids, 4, seed=3, num_replicas=2, rank=rank)
        assert (given.num_replicas, given.rank) == (2, rank)
        assert list(given) == list(explicit)


def test_a_sampler_in_place_of_group_ids_names_the_fix():
    """What Lightning does under DDP with a loader built outside a *_dataloader hook: sampler passed positionally."""
    from torch.utils.data import DistributedSampler

    with pytest.raises(TypeError, match=r"group_ids must be the \(N,\) group ids, got a DistributedSampler; .*"
                                        r"train_dataloader\(\) hook"):
        GroupedBatchSampler(DistributedSampler(list(range(8)), num_replicas=2, rank=0), batch_size=4, drop_last=False)
    with pytest.raises(ValueError, match=r"num_replicas=4, rank=1 disagree with the sampler's \(2, 0\)"):
        GroupedBatchSampler(np.zeros(8, dtype=np.int64), 4, num_replicas=4, rank=1,
                            sampler=DistributedSampler(list(range(8)), num_replicas=2, rank=0))
