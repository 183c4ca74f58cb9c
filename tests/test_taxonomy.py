"""Taxonomy: building, conflicts, parent matrices, distances, smoothing."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from taxaug import Taxonomy, TaxonomyConflictError
from tests.strategies import RANKS, trees

SPECIES = np.array([1, 2, 3, 4, 1, 0, 5])
GENUS = np.array([1, 1, 2, 2, 1, 2, 0])
FAMILY = np.array([1, 1, 1, 1, 1, 1, 0])


def small() -> Taxonomy:
    return Taxonomy.from_labels({"s": SPECIES, "g": GENUS, "f": FAMILY})


def test_from_labels_builds_parent_tables():
    t = small()
    assert t.num_classes == {"s": 6, "g": 3, "f": 2}
    assert t.parent_array("s").tolist() == [0, 1, 1, 2, 2, 0]  # species 5 never seen with a genus -> null
    assert t.parent_matrix("g").tolist() == [[1, 0], [0, 1], [0, 1]]
    assert t.lineage("s", 3) == {"s": 3, "g": 2, "f": 1}


def test_every_conflict_is_reported():
    labels = {"s": np.array([1, 1, 2, 2, 2, 3]), "g": np.array([1, 2, 1, 2, 2, 1])}
    with pytest.raises(TaxonomyConflictError) as info:
        Taxonomy.from_labels(labels)
    conflicts = info.value.conflicts
    assert {(c.child, c.parents, c.counts) for c in conflicts} == {(1, (1, 2), (1, 1)), (2, (1, 2), (1, 2))}
    assert "s class 1" in str(info.value) and "s class 2" in str(info.value)
    with pytest.warns(UserWarning, match="most frequent parent"):
        majority = Taxonomy.from_labels(labels, on_conflict="majority")
    assert majority.parent_array("s")[2] == 2 and len(majority.conflicts) == 2


def test_from_parents_matches_from_labels():
    t = Taxonomy.from_parents(["s", "g", "f"], {"s": 6, "g": 3, "f": 2}, [{1: 1, 2: 1, 3: 2, 4: 2}, [0, 1, 1]])
    assert np.array_equal(t.parent_array("s"), small().parent_array("s"))
    assert np.array_equal(t.parent_array("g"), small().parent_array("g"))


def test_distance_matrix_example():
    d = small().distance_matrix("s")
    assert d[1, 2] == 1 and d[1, 3] == 2 and d[3, 4] == 1 and d[1, 1] == 0
    assert d[5, 1] == 3 and d[0, 1] == 3  # no known common ancestor: one past the coarsest rank


@given(trees(), st.floats(0, 1), st.floats(0, 3))
def test_smoothing_matrix_properties(tree, alpha, beta):
    for rank in RANKS:
        m = tree.smoothing_matrix(rank, alpha, beta)
        size = tree.num_classes[rank]
        assert torch.allclose(m.sum(1), torch.ones(size), atol=1e-5)
        assert bool((m >= 0).all())
        assert torch.equal(m[0], torch.nn.functional.one_hot(torch.tensor(0), size).float())
        assert bool((m[1:, 0] == 0).all()), "no smoothing mass on the null class"
        if size > 2:
            assert torch.allclose(m.diagonal()[1:], torch.full((size - 1,), 1 - alpha), atol=1e-6)
            d = tree.distance_matrix(rank)
            # closer relatives never get less mass than farther ones
            for i in range(1, size):
                others = [j for j in range(1, size) if j != i]
                order = sorted(others, key=lambda j: int(d[i, j]))
                masses = [float(m[i, j]) for j in order]
                assert all(a >= b - 1e-7 for a, b in itertools.pairwise(masses))


def test_smoothing_without_relatives_is_uniform():
    t = Taxonomy.from_parents(["s", "g"], {"s": 4, "g": 4}, [[0, 1, 2, 3]])
    m = t.smoothing_matrix("s", alpha=0.3, beta=5.0)
    assert torch.allclose(m[1], torch.tensor([0.0, 0.7, 0.15, 0.15]))


def test_smooth_uses_soft_targets_not_argmax():
    t = small()
    soft = torch.tensor([[0.0, 0.6, 0.4, 0.0, 0.0, 0.0]])
    m = t.smoothing_matrix("s", 0.2, 1.0)
    assert torch.allclose(t.smooth(soft, "s", 0.2, 1.0), soft @ m)
    assert not torch.allclose(t.smooth(soft, "s", 0.2, 1.0), m[1:2])


def test_bad_inputs():
    with pytest.raises(ValueError, match="same length"):
        Taxonomy.from_labels({"s": np.array([1, 2]), "g": np.array([1])})
    with pytest.raises(ValueError, match="unknown rank 'x'"):
        small().parent_matrix("x")
    with pytest.raises(ValueError, match="coarsest rank"):
        small().parent_matrix("f")
    with pytest.raises(TypeError, match="integer class indices"):
        Taxonomy.from_labels({"s": np.array([0.5, 1.0])})
    with pytest.raises(ValueError, match="alpha must be in"):
        small().smoothing_matrix("s", alpha=1.5)
    with pytest.raises(ValueError, match=r"dense float \(B, 6\)"):
        small().smooth(torch.tensor([1, 2]), "s")


def _reference_parent_table(child: np.ndarray, parent: np.ndarray, size: int) -> tuple[np.ndarray, set]:
    """Row-wise unique of (child, parent) pairs; majority parent, ties to the smaller parent index."""
    known = (child != 0) & (parent != 0)
    pairs, counts = np.unique(np.stack([child[known], parent[known]], axis=1), axis=0, return_counts=True)
    table = np.zeros(size, dtype=np.int64)
    conflicts = set()
    for kid in np.unique(pairs[:, 0]):
        rows = pairs[:, 0] == kid
        best = np.flatnonzero(counts[rows] == counts[rows].max())[0]
        table[kid] = pairs[rows][best, 1]
        if rows.sum() > 1:
            conflicts.add((int(kid), tuple(int(p) for p in pairs[rows, 1]), tuple(int(c) for c in counts[rows])))
    return table, conflicts


@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 4)), min_size=1, max_size=40))
def test_from_labels_one_dimensional_keys_match_row_unique(rows):
    child, parent = np.array(rows).T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tax = Taxonomy.from_labels({"s": child, "g": parent}, on_conflict="majority")
    table, conflicts = _reference_parent_table(child, parent, tax.num_classes["s"])
    assert np.array_equal(tax.parent_array("s"), table)
    assert {(c.child, c.parents, c.counts) for c in tax.conflicts} == conflicts
