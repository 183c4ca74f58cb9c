"""Per-rank classification metrics: top-1, top-k, mistake severity, hierarchical distance @k, CRM.

Mistake severity is the mean taxonomic (LCA) distance between the predicted
and the true class over the *wrong* top-1 predictions (1 means "wrong species,
right genus", 2 "wrong genus, right family", ...); ``mistakes`` is how many
wrong predictions it rests on. Hierarchical distance @k is the mean LCA
distance of the top-k predictions to the truth over *all* samples (right
ones count 0), as in "Making Better Mistakes" (Bertinetto et al., 2020).
With ``crm=True`` the conditional-risk-minimising decision (the class with the
least expected LCA distance under the model's probabilities,
`Taxonomy.crm_predict`) is scored next to the argmax.

Samples whose label is null at a rank are not counted at that rank; the null
class is never predicted. Top-k (and hdist@k) is NaN ("n/a") where a rank has
at most k real classes. Distances come from the taxonomy's ancestors table
(O(B * k * R) per update, no K x K matrix). Counts are kept as sums on the
logits' device, so an update never syncs with the host and `reduce_()` does
one all_reduce for every rank at once. On CPU the top-k of every rank comes from
one C pass (`taxaug._native.top_k`; tied logits at the k-th place go to the lower
class there, either way in torch.topk elsewhere).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.distributed as dist

from taxaug import _native
from taxaug.taxonomy import Taxonomy

__all__ = ["RankMetrics"]

_SHARED_TOPK = 512  # ranks with at most this many classes share one top-k call
_DIRECT_TOPK = 2048  # ranks with at most this many classes take a plain top-k, the rest one through block maxima

# columns of the per-rank sum table (all integer counts; hdistk sums the distances of all top-k picks)
_COLUMNS = ("n", "top1", "topk", "mistakes", "severity", "hdist1", "hdistk",
            "crm_top1", "crm_mistakes", "crm_severity", "crm_hdist1")


class RankMetrics:
    """Accumulates index targets against logits, rank by rank.

    ``compute()`` keys: ``top1``, ``top5`` (top-`topk`), ``severity``,
    ``mistakes``, ``mistakes_by_distance`` ({"1": count, ...}: the top-1 mistakes at each LCA
    distance), ``hdist@1``, ``hdist@5`` (@`topk`), ``n``; with ``crm=True``
    also ``crm_top1``, ``crm_severity``, ``crm_mistakes``, ``crm_hdist@1``.
    """

    def __init__(self, taxonomy: Taxonomy, *, topk: int = 5, crm: bool = False):
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.taxonomy = taxonomy
        self.ranks = list(taxonomy.rank_names)
        self.null_index = taxonomy.null_index
        self.topk = int(topk)
        self.crm = bool(crm)
        self.num_classes = dict(taxonomy.num_classes)
        # the named columns, then the top-1 mistakes at each LCA distance 1..R
        self.sums = torch.zeros(len(self.ranks), len(_COLUMNS) + len(self.ranks), dtype=torch.float64)
        self._tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def reset(self) -> None:
        self.sums.zero_()

    @torch.no_grad()
    def update(self, logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> None:
        """Add one batch. Each rank costs a top-k; the rest runs once for all ranks stacked (classes of every
        rank numbered in one range, distances from one stacked level-group chain)."""
        rows = [i for i, r in enumerate(self.ranks) if r in targets and r in logits]
        for i in rows:
            if targets[self.ranks[i]].ndim != 1:
                raise ValueError(f"metrics need index targets (B,) for rank {self.ranks[i]!r}; got shape "
                                 f"{tuple(targets[self.ranks[i]].shape)}")
        if not rows:
            return
        scores = [logits[self.ranks[i]].detach() for i in rows]
        device = scores[0].device
        every = len(rows) == len(self.ranks)  # the usual case: no index op
        offsets = self._tables_on(device)[1] if every else self._tables_on(device)[1][rows]
        t = torch.stack([targets[self.ranks[i]] for i in rows]).to(device, torch.long)
        pred = None
        if self.crm:
            pred = torch.stack([self.taxonomy.crm_predict(torch.softmax(s.float(), dim=1), self.ranks[i])
                                for i, s in zip(rows, scores)]) + offsets[:, None]
        table = self._row_sums(self._tops(scores) + offsets[:, None, None], t + offsets[:, None],
                               t != self.null_index, pred)
        if self.sums.device != table.device:  # accumulate where the logits are: no host sync per batch
            self.sums = self.sums.to(table.device)
        if every:
            self.sums += table
        else:
            self.sums[rows] += table

    def _tables_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """On `device`: the level-group chain `_group_chain`, each rank's first class id in it, and the
        distances 1..R."""
        if self._tables is None or self._tables[0].device != device:
            up, offsets = self._group_chain()
            self._tables = (torch.from_numpy(up).to(device), torch.from_numpy(offsets).to(device),
                            torch.arange(1, len(self.ranks) + 1, device=device))
        return self._tables

    def _group_chain(self) -> tuple[np.ndarray, np.ndarray]:
        """Every rank's `Taxonomy.level_groups` as one map: each (rank, level) numbers its groups in its own id
        range, ``up[g]`` is group g's group one level up, and a rank's last level goes to one shared id that
        maps to itself (no distance above the top). O(sum of group counts), far smaller than the (K, R) tables,
        so the lookups of an update touch little memory. Returns (up, each rank's id of its class 0)."""
        tables = [self.taxonomy.level_groups(r) for r in self.ranks]
        sizes = [g.max(axis=0) + 1 for g in tables]  # every rank has a class (the null one)
        starts = np.cumsum([0] + [int(n) for s in sizes for n in s])
        top = int(starts[-1])  # the shared id above every rank's top level
        up = np.full(top + 1, top, dtype=np.int64)
        first, at = [], 0
        for groups in tables:
            first.append(int(starts[at]))
            for m in range(groups.shape[1] - 1):
                up[starts[at + m] + groups[:, m]] = starts[at + m + 1] + groups[:, m + 1]
            at += groups.shape[1]
        return up, np.array(first, dtype=np.int64)

    def _row_sums(self, top: torch.Tensor, t: torch.Tensor, valid: torch.Tensor,
                  pred: torch.Tensor | None) -> torch.Tensor:
        """(ranks, columns) sums of this batch from (ranks, B, k) top-k, (ranks, B) class ids in
        `_group_chain`, their validity and the CRM decisions. The LCA distance of a pick is the number of
        levels at which its group differs from the truth's. A right prediction is at distance 0, so the
        distance of the wrong ones sums to the distance of all."""
        up, _, distances = self._tables_on(top.device)
        picks = top if pred is None else torch.cat([top, pred[..., None]], dim=-1)
        chain = [torch.cat([picks, t[..., None]], dim=-1)]
        for _ in range(len(self.ranks) - 1):
            chain.append(up.take(chain[-1]))
        groups = torch.stack(chain)  # (R levels, ranks, B, picks + truth)
        dist = (groups[..., :-1] != groups[..., -1:]).sum(dim=0, dtype=torch.int32)
        hit = picks == t[..., None]
        valid = valid.float()
        right = hit[..., 0] * valid
        wrong = valid - right
        d1 = dist[..., 0] * valid
        cols = [valid, right, hit[..., :self.topk].any(dim=-1) * valid, wrong, d1, d1,
                dist[..., :self.topk].sum(dim=-1) * valid]
        if pred is not None:
            crm_right = hit[..., -1] * valid
            d_crm = dist[..., -1] * valid
            cols += [crm_right, valid - crm_right, d_crm, d_crm]
        else:
            cols += [torch.zeros_like(valid)] * 4
        by_distance = (dist[..., :1] == distances) * wrong[..., None]
        table = torch.cat([torch.stack(cols, dim=-1), by_distance], dim=-1)
        return table.sum(dim=1).double()  # integer counts: exact in float32 while B * topk * R < 2**24

    def _tops(self, scores: list[torch.Tensor]) -> torch.Tensor:
        """(ranks, B, topk) best real classes per rank, best first; a rank with at most `topk` real classes
        repeats its best guess (its top-k is n/a). On CPU one C kernel pass takes every rank
        (`taxaug._native.top_k`); otherwise ranks with few classes share one padded top-k call (a call's
        fixed cost exceeds their whole work) and the others take `_top`."""
        counts = [self.topk if s.shape[1] - 1 > self.topk else 1 for s in scores]  # top-k n/a: the best only
        fast = _native.top_k(scores, counts, self.topk, self.null_index)
        if fast is not None:
            return fast
        small = [j for j, s in enumerate(scores) if self.topk < s.shape[1] - 1 <= _SHARED_TOPK]
        out: list[torch.Tensor | None] = [None] * len(scores)
        if len(small) > 1:
            width = max(scores[j].shape[1] for j in small)
            padded = scores[small[0]].new_full((len(small), scores[small[0]].shape[0], width), float("-inf"))
            for n, j in enumerate(small):
                padded[n, :, : scores[j].shape[1]] = scores[j]
            padded[:, :, self.null_index] = float("-inf")
            top = padded.topk(self.topk, dim=2).indices
            for n, j in enumerate(small):
                out[j] = top[n]
        for j, s in enumerate(scores):
            if out[j] is None:
                top = self._top(s, counts[j])
                short = self.topk - top.shape[1]
                out[j] = torch.cat([top, top[:, :1].expand(-1, short)], dim=1) if short else top
        return torch.stack(out)  # type: ignore[arg-type]

    def _top(self, scores: torch.Tensor, k: int) -> torch.Tensor:
        """(B, k) indices of the k best real classes (the null class skipped), best first."""
        size = scores.shape[1]
        if size > 1 and self.null_index in (0, size - 1):  # a view without the null column: no copy
            first = 1 if self.null_index == 0 else 0
            return _topk_indices(scores[:, first:first + size - 1], k) + first
        top = scores.topk(min(k + 1, size), dim=1).indices
        last_null = (top == self.null_index).to(torch.uint8).argsort(dim=1, stable=True)
        return top.gather(1, last_null)[:, :k]

    def reduce_(self) -> None:
        """Sum the counts over all processes (no-op outside torch.distributed)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            backend = dist.get_backend()
            device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
            buf = self.sums.to(device)
            dist.all_reduce(buf)
            self.sums = buf

    def compute(self) -> dict[str, dict[str, float]]:
        """Per rank the metrics listed in the class docstring; rates in [0, 1], NaN where undefined."""
        out = {}
        for i, r in enumerate(self.ranks):
            row = self.sums[i].cpu().tolist()
            s = dict(zip(_COLUMNS, row))
            n = s["n"]
            has_k = self.num_classes[r] - 1 > self.topk
            m = {
                "top1": _ratio(s["top1"], n),
                "top5": _ratio(s["topk"], n) if has_k else math.nan,
                "severity": _severity(s["severity"], s["mistakes"], n),
                "mistakes": int(s["mistakes"]),
                "hdist@1": _ratio(s["hdist1"], n),
                "hdist@5": _ratio(s["hdistk"], n * self.topk) if has_k else math.nan,
                "mistakes_by_distance": {str(d): int(c) for d, c in  # a class at rank i is at most R - i away
                                         enumerate(row[len(_COLUMNS):len(_COLUMNS) + len(self.ranks) - i], 1)},
                "n": int(n),
            }
            if self.crm:
                m.update({"crm_top1": _ratio(s["crm_top1"], n),
                          "crm_severity": _severity(s["crm_severity"], s["crm_mistakes"], n),
                          "crm_mistakes": int(s["crm_mistakes"]), "crm_hdist@1": _ratio(s["crm_hdist1"], n)})
            out[r] = m
        return out

    def chance(self) -> dict[str, float]:
        """Top-1 accuracy of a uniform guess over the real classes, per rank."""
        return {r: 1.0 / max(self.num_classes[r] - 1, 1) for r in self.ranks}


def _topk_indices(scores: torch.Tensor, k: int, block: int = 64) -> torch.Tensor:
    """``scores.topk(k, dim=1).indices`` through block maxima: the k best lie in the k blocks with the best
    maxima, so one max pass over (B, K) and a top-k over k * block candidates replace a top-k over K
    (2-3x faster on CPU at 10k-100k classes; below ~2k classes a plain top-k is faster). Ties may be ordered
    differently."""
    batch, size = scores.shape
    blocks = size // block
    if blocks <= k or size <= _DIRECT_TOPK:
        return scores.topk(k, dim=1).indices
    main = scores[:, : blocks * block].unflatten(1, (blocks, block))
    best = main.amax(dim=2).topk(k, dim=1, sorted=False).indices  # any order: only the set matters
    cand = main.gather(1, best[:, :, None].expand(batch, k, block)).flatten(1)
    index = (best[:, :, None] * block + torch.arange(block, device=scores.device)).flatten(1)
    if size > blocks * block:
        cand = torch.cat([cand, scores[:, blocks * block:]], dim=1)
        index = torch.cat([index, torch.arange(blocks * block, size, device=scores.device).expand(batch, -1)], dim=1)
    return index.gather(1, cand.topk(k, dim=1).indices)


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _severity(total: float, mistakes: float, n: float) -> float:
    """Mean distance of the mistakes; 0 when every counted prediction was right, NaN with nothing counted."""
    return total / mistakes if mistakes else (0.0 if n else math.nan)
