"""RankMetrics (severity, mistakes, hdist@k, top-k n/a, CRM) against a dense reference built here."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from taxaug import Taxonomy, _native
from taxaug_train.metrics import RankMetrics
from tests.strategies import ragged_trees
from tests.test_taxonomy_scale import dense_distance


def dense_rank_metrics(tax: Taxonomy, k: int, logits: torch.Tensor, t: torch.Tensor, topk: int) -> dict:
    dist = dense_distance(tax, k).double()
    size = logits.shape[1]
    scores = logits.clone()
    scores[:, tax.null_index] = float("-inf")
    top = scores.argsort(dim=1, descending=True)[:, : max(1, min(topk, size - 1))]
    valid = t != tax.null_index
    n = int(valid.sum())
    pred = top[:, 0]
    wrong = valid & (pred != t)
    d_top = dist[top, t[:, None]]
    risk = torch.softmax(logits.double(), dim=1) @ dist.T
    risk[:, tax.null_index] = float("inf")
    crm = risk.argmin(dim=1)
    crm_wrong = valid & (crm != t)

    def mean(x, mask):
        return float(x[mask].mean()) if mask.any() else math.nan

    def severity(x, mask):
        return float(x[mask].mean()) if mask.any() else (0.0 if n else math.nan)

    has_k = size - 1 > topk
    levels = len(tax.rank_names) - k  # a class at rank k is at most this far from any other
    by_distance = {str(d): int((wrong & (dist[pred, t] == d)).sum()) for d in range(1, levels + 1)}
    return {
        "mistakes_by_distance": by_distance,
        "n": n, "top1": mean((pred == t).double(), valid), "mistakes": int(wrong.sum()),
        "top5": mean((top == t[:, None]).any(1).double(), valid) if has_k else math.nan,
        "severity": severity(dist[pred, t], wrong), "hdist@1": mean(d_top[:, 0], valid),
        "hdist@5": mean(d_top.mean(1), valid) if has_k else math.nan,
        "crm_top1": mean((crm == t).double(), valid), "crm_mistakes": int(crm_wrong.sum()),
        "crm_severity": severity(dist[crm, t], crm_wrong), "crm_hdist@1": mean(dist[crm, t], valid),
    }, risk


def _updated(metrics: RankMetrics, logits: dict, targets: dict, batch: int) -> dict:
    for part in (slice(0, 4), slice(4, batch)):  # sums over several updates
        metrics.update({r: x[part].float() for r, x in logits.items()}, {r: t[part] for r, t in targets.items()})
    return metrics.compute()


def _both_top_k_paths(compute):
    """compute() with the C top-k kernel and with the torch code; asserts both agree, returns one."""
    fast = compute()
    with _native.disabled():
        reference = compute()
    for rank, values in fast.items():
        for key, value in values.items():
            other = reference[rank][key]
            assert value == other or (isinstance(value, float) and math.isnan(value) and math.isnan(other)), (rank, key)
    return fast


@given(ragged_trees(max_ranks=4), st.integers(0, 2**31 - 1), st.integers(1, 3))
def test_metrics_match_the_dense_reference(tree, seed, topk):
    g = torch.Generator().manual_seed(seed)
    batch = 10
    logits = {r: torch.randn(batch, k, generator=g, dtype=torch.float64) * 3 for r, k in tree.num_classes.items()}
    targets = {r: torch.randint(0, k, (batch,), generator=g) for r, k in tree.num_classes.items()}
    got = _both_top_k_paths(lambda: _updated(RankMetrics(tree, topk=topk, crm=True), logits, targets, batch))
    for k, rank in enumerate(tree.rank_names):
        expected, risk = dense_rank_metrics(tree, k, logits[rank], targets[rank], topk)
        if tree.num_classes[rank] > 2:  # the float32 CRM decision equals the float64 one unless two risks nearly tie
            two = risk.topk(2, dim=1, largest=False).values
            assume(bool(((two[:, 1] - two[:, 0]) > 1e-4).all()))
        for key, value in expected.items():
            if isinstance(value, dict):
                assert got[rank][key] == value, (rank, key)
                assert sum(value.values()) == got[rank]["mistakes"]
            else:
                assert got[rank][key] == pytest.approx(value, abs=1e-6, nan_ok=True), (rank, key)


def test_example_severity_mistakes_and_hdist():
    # species 1, 2 in genus 1; species 3 in genus 2; both genera in family 1; species 4 has no genus
    tax = Taxonomy(["s", "g", "f"], {"s": 5, "g": 3, "f": 2}, [[0, 1, 1, 2, 0], [0, 1, 1]])
    logits = torch.full((4, 5), -5.0)
    logits[0, 1] = logits[1, 2] = logits[2, 3] = logits[3, 4] = 5.0  # right, sibling, cousin, stranger
    logits[:, 0] = 50.0  # the null class is never predicted
    m = RankMetrics(tax, topk=2, crm=False)
    m.update({"s": logits}, {"s": torch.tensor([1, 1, 1, 1])})
    out = m.compute()["s"]
    assert out["n"] == 4 and out["mistakes"] == 3 and out["top1"] == 0.25
    assert out["severity"] == pytest.approx((1 + 2 + 3) / 3)
    assert out["hdist@1"] == pytest.approx((0 + 1 + 2 + 3) / 4)
    assert "crm_top1" not in out


def test_top_k_is_not_available_with_at_most_k_real_classes():
    tax = Taxonomy(["s", "g"], {"s": 6, "g": 2}, [[0, 1, 1, 1, 1, 1]])
    logits = torch.randn(3, 6)
    for topk, defined in ((5, False), (4, True)):
        m = RankMetrics(tax, topk=topk)
        m.update({"s": logits}, {"s": torch.tensor([1, 2, 3])})
        out = m.compute()["s"]
        assert math.isnan(out["top5"]) is not defined and math.isnan(out["hdist@5"]) is not defined
        assert not math.isnan(out["top1"])


def test_crm_prefers_the_safe_genus_over_a_split_one():
    # genus 1 holds species 1 and 2, genus 2 holds species 3; p = (0.3, 0.3, 0.4): argmax says 3, CRM says 1 or 2
    tax = Taxonomy(["s", "g"], {"s": 4, "g": 3}, [[0, 1, 1, 2]])
    probs = torch.tensor([[0.0, 0.3, 0.3, 0.4]])
    assert tax.crm_predict(probs, "s").item() == 1
    m = RankMetrics(tax, topk=1, crm=True)
    m.update({"s": probs.log()}, {"s": torch.tensor([2])})
    out = m.compute()["s"]
    assert out["top1"] == 0.0 and out["severity"] == 2.0  # argmax: wrong genus
    assert out["crm_top1"] == 0.0 and out["crm_severity"] == 1.0 and out["crm_mistakes"] == 1


@pytest.mark.parametrize("null_index", [0, 2, 5])
def test_null_class_anywhere_is_never_predicted(null_index):
    # 6 classes at the fine rank, the null one at `null_index`; real classes split over two parents
    first, second = [c for c in range(6) if c != null_index][:2]
    parents = [first, first, first, second, second, second]
    parents[null_index] = null_index
    tax = Taxonomy(["s", "g"], {"s": 6, "g": 6}, [parents], null_index=null_index)
    g = torch.Generator().manual_seed(null_index)
    logits = torch.randn(16, 6, generator=g, dtype=torch.float64)
    logits[:, null_index] += 10.0  # the null class would win every argmax and top-k
    t = torch.randint(0, 6, (16,), generator=g)
    expected, _ = dense_rank_metrics(tax, 0, logits, t, 3)
    got = _both_top_k_paths(lambda: _updated(RankMetrics(tax, topk=3, crm=True), {"s": logits}, {"s": t}, 16))["s"]
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


@pytest.mark.parametrize("size", [7, 320, 1000, 2049, 4097])
def test_blocked_top_k_equals_top_k(size):
    from taxaug_train.metrics import _topk_indices

    scores = torch.randn(9, size, generator=torch.Generator().manual_seed(size))
    view = scores[:, 1:]  # the strided view the metrics pass (null column 0 skipped)
    for k in (1, 5):
        assert torch.equal(_topk_indices(view, k), view.topk(k, dim=1).indices)
