"""Soft-target cross-entropy per rank, with null masking and taxonomy-aware smoothing.

Targets may be class indices ``(B,)`` or dense rows ``(B, K)`` (what the
mixing algorithms return). The null class (index 0 by default) means
"unknown at this rank": a sample's null share is not trained at all. Its
remaining mass is renormalised over the real classes and the sample's loss is
weighted by that mass, so a fully-null sample contributes nothing and a
half-null mixed sample contributes half. Each rank's loss is a mean over the
samples with a known label; the total is ``sum_r w_r * loss_r / sum_r w_r``
over the ranks present in the batch.

Taxonomy-aware smoothing is ``Taxonomy.smooth(targets, rank, alpha, beta)``
(``targets @ M`` computed level by level over the ancestors, no K x K matrix;
never an argmax), so mixed targets are smoothed as mixtures.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from taxaug.taxonomy import Taxonomy

__all__ = ["HierarchicalLoss", "dense_targets", "soft_cross_entropy"]


def _check_indices(target: torch.Tensor, num_classes: int, rank: str) -> torch.Tensor:
    if target.is_floating_point():
        raise TypeError(f"targets[{rank!r}] is 1-D float; index targets must be integer, dense ones (B, K)")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(
            f"targets[{rank!r}] holds indices outside [0, {num_classes}) (min {int(target.min())}, "
            f"max {int(target.max())})"
        )
    return target.long()


def dense_targets(target: torch.Tensor, num_classes: int, rank: str = "target") -> torch.Tensor:
    """Index or dense targets -> float (B, K) rows."""
    if target.ndim == 1:
        return torch.nn.functional.one_hot(_check_indices(target, num_classes, rank), num_classes).float()
    if target.ndim == 2 and target.shape[1] == num_classes:
        return target.float()
    raise ValueError(f"targets[{rank!r}] must be (B,) indices or (B, {num_classes}) dense, got {tuple(target.shape)}")


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample ``-sum_c target_c * log_softmax(logits)_c`` (float32 math)."""
    return -(target * torch.log_softmax(logits.float(), dim=1)).sum(dim=1)


class HierarchicalLoss(nn.Module):
    """Weighted sum of per-rank soft cross-entropies; returns ``(total, {rank: loss})``."""

    def __init__(
        self,
        taxonomy: Taxonomy,
        *,
        rank_weights: Mapping[str, float] | None = None,
        taxonomy_smoothing: float = 0.0,
        taxonomy_smoothing_beta: float = 1.0,
        label_smoothing: float = 0.0,
        null_index: int | None = None,
    ):
        super().__init__()
        self.ranks = list(taxonomy.rank_names)
        self.num_classes = dict(taxonomy.num_classes)
        weights = dict(rank_weights or {})
        unknown = sorted(set(weights) - set(self.ranks))
        if unknown:
            raise ValueError(f"rank_weights names rank(s) {unknown} not in the taxonomy {self.ranks}")
        self.rank_weights = {r: float(weights.get(r, 1.0)) for r in self.ranks}
        self.null_index = taxonomy.null_index if null_index is None else int(null_index)
        self.label_smoothing = float(label_smoothing)
        self.taxonomy_smoothing = float(taxonomy_smoothing)
        self.taxonomy_smoothing_beta = float(taxonomy_smoothing_beta)
        self.taxonomy = taxonomy

    def _prepare(self, rank: str, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(renormalised real-class target, per-sample weight = known mass)."""
        k = self.num_classes[rank]
        t = dense_targets(target, k, rank)
        known = (1.0 - t[:, self.null_index]).clamp_min(0.0)
        t = t.clone()
        t[:, self.null_index] = 0.0
        t = t / known.clamp_min(1e-12).unsqueeze(1)
        if self.taxonomy_smoothing > 0:
            t = self.taxonomy.smooth(t, rank, self.taxonomy_smoothing, self.taxonomy_smoothing_beta)
        if self.label_smoothing > 0:
            real = torch.ones_like(t)
            real[:, self.null_index] = 0
            t = (1 - self.label_smoothing) * t + self.label_smoothing * real / real.sum(dim=1, keepdim=True)
        return t, known

    def _index_terms(self, rank: str, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`_prepare` + `soft_cross_entropy` for unsmoothed index targets, without a dense (B, K) target."""
        target = _check_indices(target, self.num_classes[rank], rank)
        known = target != self.null_index
        ce = torch.nn.functional.cross_entropy(logits.float(), target, reduction="none")
        return torch.where(known, ce, torch.zeros_like(ce)), known.float()

    def rank_terms(
        self, logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{rank: (per-sample cross-entropy (B,), per-sample known mass (B,))} for the ranks in `targets`."""
        terms = {}
        for r in self.ranks:
            if r not in targets:
                continue
            if r not in logits:
                raise KeyError(f"the model produced no logits for rank {r!r}; it produced {sorted(logits)}")
            target = targets[r].to(logits[r].device)
            if target.ndim == 1 and self.taxonomy_smoothing == 0 and self.label_smoothing == 0:
                terms[r] = self._index_terms(r, logits[r], target)
                continue
            t, known = self._prepare(r, target)
            terms[r] = (soft_cross_entropy(logits[r], t), known)
        if not terms:
            raise ValueError(f"targets name none of the model's ranks {self.ranks}; got {sorted(targets)}")
        return terms

    def per_sample(self, logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per-sample losses (B,) whose mean is the batch loss of `forward` (for ``State.loss_fn``).

        Sample i's share of rank r is ``w_r / W * ce_ri * known_ri * B / sum_j known_rj``, so the
        mean over the batch is exactly the weighted sum of the per-rank masked means.
        """
        return self._combine(self.rank_terms(logits, targets))[0]

    def _combine(self, terms):
        weight_sum = sum(self.rank_weights[r] for r in terms)
        per_sample = None
        per_rank = {}
        for r, (ce, known) in terms.items():
            denom = known.sum().clamp_min(1e-12)
            per_rank[r] = (ce * known).sum() / denom
            share = ce * known * (ce.shape[0] / denom) * (self.rank_weights[r] / max(weight_sum, 1e-12))
            per_sample = share if per_sample is None else per_sample + share
        return per_sample, per_rank

    def forward(
        self, logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        per_sample, per_rank = self._combine(self.rank_terms(logits, targets))
        return per_sample.mean(), per_rank
