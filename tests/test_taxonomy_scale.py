"""Structured taxonomy ops (no K x K) against dense references built here, and their memory at 100k species."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from taxaug import Taxonomy
from tests.strategies import ragged_trees, soft_rows

ROOT = Path(__file__).resolve().parents[1]


def dense_ancestors(tax: Taxonomy, k: int) -> torch.Tensor:
    cols = [np.arange(tax.num_classes[tax.rank_names[k]])]
    for j in range(k, len(tax.rank_names) - 1):
        cols.append(tax.parent_array(j)[cols[-1]])
    return torch.from_numpy(np.stack(cols, axis=1))


def dense_distance(tax: Taxonomy, k: int) -> torch.Tensor:
    """Ranks climbed until two classes share a known ancestor; R - k if never; 0 on the diagonal."""
    anc = dense_ancestors(tax, k)
    levels = anc.shape[1]
    dist = torch.full((anc.shape[0], anc.shape[0]), levels, dtype=torch.long)
    for m in reversed(range(levels)):
        col = anc[:, m]
        shared = (col[:, None] == col[None, :]) & (col[:, None] != tax.null_index)
        dist = torch.where(shared, torch.tensor(m), dist)
    return dist.fill_diagonal_(0)


def dense_smoothing(tax: Taxonomy, k: int, alpha: float, beta: float) -> torch.Tensor:
    """Keep 1 - alpha, spread alpha by exp(-beta d) over the other real classes; null row identity."""
    dist = dense_distance(tax, k).double()
    size = dist.shape[0]
    weights = torch.exp(-beta * dist)
    weights.fill_diagonal_(0)
    weights[:, tax.null_index] = 0
    totals = weights.sum(1, keepdim=True)
    spread = torch.where(totals > 0, weights / totals.clamp_min(1e-300), torch.zeros_like(weights))
    keep = torch.where(totals.squeeze(1) > 0, torch.tensor(1.0 - alpha, dtype=torch.float64), 1.0)
    matrix = spread * (1.0 - keep)[:, None]
    matrix[range(size), range(size)] = keep
    matrix[tax.null_index] = 0
    matrix[tax.null_index, tax.null_index] = 1
    return matrix


def dense_parents(tax: Taxonomy, k: int) -> torch.Tensor:
    out = torch.zeros(tax.num_classes[tax.rank_names[k]], tax.num_classes[tax.rank_names[k + 1]], dtype=torch.float64)
    out[range(out.shape[0]), torch.from_numpy(tax.parent_array(k))] = 1
    return out


@given(ragged_trees(), st.data())
def test_pair_distances_match_the_dense_reference(tree, data):
    for k, rank in enumerate(tree.rank_names):
        ref = dense_distance(tree, k)
        assert torch.equal(tree.distance_matrix(rank), ref)
        size = ref.shape[0]
        a = torch.tensor(data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=8)))
        b = torch.tensor(data.draw(st.lists(st.integers(0, size - 1), min_size=len(a), max_size=len(a))))
        assert torch.equal(tree.pair_distance(rank, a, b), ref[a, b])


@given(ragged_trees(), st.floats(0, 1), st.floats(0, 3), st.data())
def test_smoothing_matches_the_dense_reference(tree, alpha, beta, data):
    for k, rank in enumerate(tree.rank_names):
        ref = dense_smoothing(tree, k, alpha, beta)
        targets = data.draw(soft_rows(ref.shape[0]))
        assert torch.allclose(tree.smooth(targets, rank, alpha, beta), targets @ ref, atol=1e-12)
        assert torch.allclose(tree.smooth(targets.float(), rank, alpha, beta), (targets @ ref).float(), atol=1e-6)
        assert torch.allclose(tree.smoothing_matrix(rank, alpha, beta), ref.float(), atol=1e-6)


@given(ragged_trees(), st.data())
def test_expected_distance_and_crm_match_brute_force(tree, data):
    for k, rank in enumerate(tree.rank_names):
        dist = dense_distance(tree, k).double()
        if dist.shape[0] < 2:
            continue  # no real class to decide for
        probs = data.draw(soft_rows(dist.shape[0]))
        expected = probs @ dist.T
        assert torch.allclose(tree.expected_distance(probs, rank), expected, atol=1e-12)
        chosen = tree.crm_predict(probs, rank)
        real = expected.clone()
        real[:, tree.null_index] = float("inf")
        assert bool((chosen != tree.null_index).all())
        assert torch.allclose(expected.gather(1, chosen[:, None]).squeeze(1), real.min(1).values, atol=1e-12)


@given(ragged_trees(max_ranks=4), st.data())
def test_consistency_and_lift_match_the_dense_parent_matrix(tree, data):
    batch = data.draw(st.integers(1, 3))
    targets = {r: data.draw(soft_rows(tree.num_classes[r], max_batch=batch, min_batch=batch))
               for r in tree.rank_names}
    worst = 0.0
    for k in range(len(tree.rank_names) - 1):
        child, parent = tree.rank_names[k], tree.rank_names[k + 1]
        lifted = targets[child] @ dense_parents(tree, k)
        assert torch.allclose(tree.lift(targets[child], child), lifted, atol=1e-12)
        worst = max(worst, float((lifted - targets[parent]).abs().max()))
    assert tree.consistency_error(targets) == pytest.approx(worst, abs=1e-12)


def test_dense_conveniences_refuse_large_trees_with_the_size_in_the_message():
    tax = Taxonomy(["s", "g"], {"s": 20_000, "g": 3}, [np.arange(20_000) % 3])
    with pytest.raises(ValueError, match=r"distance_matrix refuses rank 's' with K=20000: .* needs 3052 MiB"):
        tax.distance_matrix("s")
    with pytest.raises(ValueError, match=r"smoothing_matrix refuses rank 's' with K=20000"):
        tax.smoothing_matrix("s", 0.1)
    assert tax.parent_matrix("s").shape == (20_000, 3)  # 20000 x 3 is small
    tax.dense_limit_bytes = 1000
    with pytest.raises(ValueError, match=r"parent_matrix refuses rank 's' with K=20000: a dense 20000x3"):
        tax.parent_matrix("s")


def test_null_class_must_keep_a_null_parent():
    with pytest.raises(ValueError, match=r"gives the null class 0 the parent 2"):
        Taxonomy(["s", "g"], {"s": 3, "g": 3}, [np.array([2, 1, 1])])


def test_scheduled_alpha_reuses_one_cached_norm_per_beta():
    tax = Taxonomy(["s", "g", "f"], {"s": 50, "g": 8, "f": 3}, [np.r_[0, np.arange(49) % 7 + 1], np.r_[0, np.arange(7) % 2 + 1]])
    targets = torch.nn.functional.one_hot(torch.arange(50) % 50, 50).float()
    tax.smooth(targets, "s", 0.05)
    used = tax._cache.size_bytes
    for alpha in np.linspace(0.0, 0.5, 40):
        out = tax.smooth(targets, "s", float(alpha))
        assert torch.allclose(out.sum(1), torch.ones(50), atol=1e-5)
    assert tax._cache.size_bytes == used
    tax.smooth(targets, "s", 0.1, beta=2.0)  # a new beta adds one norm vector of K float64 + K bool
    assert tax._cache.size_bytes == used + 50 * 9


def test_cache_is_bounded_by_bytes():
    tax = Taxonomy(["s", "g"], {"s": 1000, "g": 5}, [np.r_[0, np.arange(999) % 4 + 1]])
    tax._cache.max_bytes = 40_000
    targets = torch.rand(2, 1000, dtype=torch.float64)
    for beta in np.linspace(0.1, 3.0, 20):
        tax.smooth(targets, "s", 0.1, float(beta))
        assert tax._cache.size_bytes <= 40_000
    assert torch.allclose(tax.smooth(targets, "s", 0.1, 1.0), targets @ dense_smoothing(tax, 0, 0.1, 1.0))


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, torch
    from taxaug import Taxonomy
    from taxaug_train.losses import HierarchicalLoss
    from taxaug_train.metrics import RankMetrics

    torch.set_num_threads(1)
    sizes = [100_000, 30_000, 10_000, 3_000, 1_000, 300, 50]
    names = [f"L{i}" for i in range(7)]
    rng = np.random.default_rng(0)
    parents = [np.r_[0, rng.integers(0, sizes[k + 1], sizes[k] - 1)] for k in range(6)]  # some unknown parents
    tax = Taxonomy(names, dict(zip(names, sizes)), parents)
    batch = 64
    species = torch.from_numpy(rng.integers(0, sizes[0], batch))
    targets = tax.expand(names[0], species)
    logits = {r: torch.randn(batch, k, requires_grad=True) for r, k in tax.num_classes.items()}
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    soft = torch.nn.functional.one_hot(species, sizes[0]).float()
    for alpha in (0.1, 0.2, 0.3):
        tax.smooth(soft, names[0], alpha, 1.0)
    metrics = RankMetrics(tax, crm=True)
    metrics.update({r: l.detach() for r, l in logits.items()}, targets)
    loss, _ = HierarchicalLoss(tax, taxonomy_smoothing=0.1)(logits, targets)
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"extra_mib": (peak - base) / 1024, "finite": bool(torch.isfinite(loss))}))
""")


def test_smoothing_metrics_and_loss_on_a_100k_species_tree_stay_within_a_memory_bound():
    """One dense K x K float32 at 100k is 40 GB; the bound is 64 batch x 100k rows of a handful of tensors."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, timeout=300,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["finite"]
    assert result["extra_mib"] < 400, result


def test_structured_ops_name_the_bad_argument():
    tax = Taxonomy(["s", "g"], {"s": 4, "g": 2}, [[0, 1, 1, 1]])
    with pytest.raises(ValueError, match=r"probs must be dense float \(B, 4\) for rank 's', got shape \(2, 3\)"):
        tax.crm_predict(torch.rand(2, 3), "s")
    with pytest.raises(ValueError, match=r"targets must be dense float \(B, 4\).*torch.int64"):
        tax.smooth(torch.ones(2, 4, dtype=torch.long), "s")
    with pytest.raises(ValueError, match=r"f must give a weight for each distance 0..2 at rank 's', got 2"):
        tax.distance_transform(torch.rand(2, 4), "s", [0.0, 1.0])
    with pytest.raises(ValueError, match=r"beta must be >= 0, got -1"):
        tax.smooth(torch.rand(2, 4), "s", 0.1, -1)


def test_taxonomy_pickles_and_rebuilds_its_cache():
    # DataLoader workers under spawn and Lightning checkpoints pickle the taxonomy; its cache goes empty
    tax = Taxonomy(["s", "g", "f"], {"s": 7, "g": 4, "f": 3}, [np.array([0, 1, 1, 2, 3, 3, 0]), np.array([0, 1, 2, 2])])
    targets = torch.rand(3, 7, dtype=torch.float64)
    before = tax.smooth(targets, "s", 0.2)
    copy = pickle.loads(pickle.dumps(tax))
    assert copy._cache.size_bytes == 0 and copy._cache.max_bytes == tax._cache.max_bytes
    assert torch.equal(copy.smooth(targets, "s", 0.2), before)
    assert np.array_equal(copy.ancestors("s"), tax.ancestors("s"))
