"""ingroup_permutation and exclude_null_samples: invariants, examples, bad inputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from taxaug import functional as F

group_lists = st.lists(st.integers(-1, 5), min_size=0, max_size=40)


@given(group_lists, st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_permutation_invariants(groups, min_size, seed):
    g = torch.tensor(groups, dtype=torch.long)
    perm = F.ingroup_permutation(g, min_group_size=min_size, generator=torch.Generator().manual_seed(seed))
    size = len(groups)
    assert perm.dtype == torch.long and perm.shape == (size,)
    assert sorted(perm.tolist()) == list(range(size)), "must be a permutation"
    counts = {k: groups.count(k) for k in set(groups)}
    for i, partner in enumerate(perm.tolist()):
        stays = groups[i] == -1 or counts[groups[i]] < max(min_size, 2)
        if stays:
            assert partner == i
        else:
            assert partner != i, "derangement inside a mixable group"
            assert groups[partner] == groups[i], "partner must come from the same group"


@given(group_lists, st.integers(0, 2**31 - 1))
def test_permutation_is_seeded_and_input_untouched(groups, seed):
    g = torch.tensor(groups, dtype=torch.long)
    before = g.clone()
    a = F.ingroup_permutation(g, generator=torch.Generator().manual_seed(seed))
    b = F.ingroup_permutation(g, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(a, b)
    assert torch.equal(g, before)


def test_permutation_example_pairs_and_singletons():
    g = torch.tensor([7, 7, -1, 3, 9, 9, 9])
    perm = F.ingroup_permutation(g, generator=torch.Generator().manual_seed(3))
    assert perm[:2].tolist() == [1, 0]  # a pair can only swap
    assert perm[2] == 2 and perm[3] == 3  # -1 and a singleton stay
    assert sorted(perm[4:].tolist()) == [4, 5, 6] and all(perm[i] != i for i in (4, 5, 6))


def test_permutation_varies_with_seed():
    g = torch.zeros(12, dtype=torch.long)
    seen = {tuple(F.ingroup_permutation(g, generator=torch.Generator().manual_seed(s)).tolist()) for s in range(8)}
    assert len(seen) > 4


@pytest.mark.parametrize(
    ("group_ids", "match"),
    [
        (torch.tensor([0, 1], dtype=torch.int32), "long"),
        (torch.zeros(2, 2, dtype=torch.long), "1-D"),
        ([0, 1], "torch.Tensor"),
    ],
)
def test_permutation_bad_group_ids(group_ids, match):
    with pytest.raises((TypeError, ValueError), match="group_ids.*" + match):
        F.ingroup_permutation(group_ids)


def test_permutation_bad_min_group_size():
    with pytest.raises(ValueError, match="min_group_size"):
        F.ingroup_permutation(torch.zeros(3, dtype=torch.long), min_group_size=0)


def test_exclude_null_samples_index_and_dense():
    g = torch.tensor([4, 4, 5, 5])
    targets = {
        "taxa_L10": torch.tensor([1, 0, 2, 3]),
        "taxa_L20": torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.2, 0.8], [0.0, 1.0]]),
    }
    assert F.exclude_null_samples(g, targets).tolist() == [4, -1, -1, 5]
    assert F.exclude_null_samples(g, targets, null_task_keys=["taxa_L10"]).tolist() == [4, -1, 5, 5]
    assert F.exclude_null_samples(g, targets, null_task_keys=["taxa_L10"], null_index=3).tolist() == [4, 4, 5, -1]
    assert g.tolist() == [4, 4, 5, 5], "input must not be mutated"


def test_exclude_null_samples_unknown_key():
    with pytest.raises(ValueError, match=r"null_task_keys.*taxa_L99"):
        F.exclude_null_samples(torch.zeros(2, dtype=torch.long), {"a": torch.zeros(2, dtype=torch.long)},
                               null_task_keys=["taxa_L99"])


def test_exclude_null_samples_batch_mismatch():
    with pytest.raises(ValueError, match="batch size"):
        F.exclude_null_samples(torch.zeros(3, dtype=torch.long), {"a": torch.zeros(2, dtype=torch.long)})
