"""Per-rank classification metrics: top-1, top-5 and mistake severity.

Mistake severity is the mean taxonomic (LCA) distance between the predicted
and the true class over the *wrong* top-1 predictions: 1 means "wrong species,
right genus", 2 "wrong genus, right family", and so on. Samples whose label
is null at a rank are not counted at that rank; the null class is never
predicted. Counts are kept as sums so they reduce exactly across processes
(`reduce_()` does one all_reduce for every rank at once).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist

from taxaug.taxonomy import Taxonomy

__all__ = ["RankMetrics"]

# columns of the per-rank sum table
_N, _TOP1, _TOP5, _WRONG, _DIST = range(5)


class RankMetrics:
    """Accumulates index targets against logits, rank by rank."""

    def __init__(self, taxonomy: Taxonomy, *, topk: int = 5):
        self.ranks = list(taxonomy.rank_names)
        self.null_index = taxonomy.null_index
        self.topk = topk
        self.distances = {r: taxonomy.distance_matrix(r).float() for r in self.ranks}
        self.num_classes = dict(taxonomy.num_classes)
        self.sums = torch.zeros(len(self.ranks), 5, dtype=torch.float64)

    def reset(self) -> None:
        self.sums.zero_()

    @torch.no_grad()
    def update(self, logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> None:
        for i, r in enumerate(self.ranks):
            if r not in targets or r not in logits:
                continue
            t = targets[r]
            if t.ndim != 1:
                raise ValueError(f"metrics need index targets (B,) for rank {r!r}; got shape {tuple(t.shape)}")
            scores = logits[r].detach().float().clone()
            t = t.to(scores.device).long()
            scores[:, self.null_index] = float("-inf")
            valid = t != self.null_index
            k = min(self.topk, self.num_classes[r] - 1)
            top = scores.topk(max(k, 1), dim=1).indices
            hit1 = (top[:, 0] == t) & valid
            hitk = (top == t[:, None]).any(dim=1) & valid
            wrong = valid & ~hit1
            if self.distances[r].device != scores.device:
                self.distances[r] = self.distances[r].to(scores.device)
            d = self.distances[r][top[:, 0], t]
            row = torch.stack([valid.sum(), hit1.sum(), hitk.sum(), wrong.sum(), (d * wrong).sum()]).double()
            if self.sums.device != row.device:  # accumulate where the logits are: no host sync per batch
                self.sums = self.sums.to(row.device)
            self.sums[i] += row

    def reduce_(self) -> None:
        """Sum the counts over all processes (no-op outside torch.distributed)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            backend = dist.get_backend()
            device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
            buf = self.sums.to(device)
            dist.all_reduce(buf)
            self.sums = buf

    def compute(self) -> dict[str, dict[str, float]]:
        """{rank: {top1, top5, severity, n}}; rates in [0, 1], NaN where undefined."""
        out = {}
        for i, r in enumerate(self.ranks):
            n, c1, c5, w, d = self.sums[i].cpu().tolist()
            out[r] = {
                "top1": c1 / n if n else float("nan"),
                "top5": c5 / n if n else float("nan"),
                "severity": d / w if w else (0.0 if n else float("nan")),
                "n": int(n),
            }
        return out

    def chance(self) -> dict[str, float]:
        """Top-1 accuracy of a uniform guess over the real classes, per rank."""
        return {r: 1.0 / max(self.num_classes[r] - 1, 1) for r in self.ranks}
