"""Label smoothing algorithms: uniform, and taxonomy-aware (mass spread to taxonomic neighbours).

Both act at BEFORE_LOSS on `state.batch.targets`, after every mixing step, so
they smooth soft (mixed) targets as `targets @ M` (taxonomy smoothing computes
it level by level over the ancestors, never as a K x K matrix), never via argmax. They
leave rows that are entirely null (unknown at that rank) as they are, and are
exact no-ops while their smoothing amount is 0. A mixing algorithm with
`interpolate_loss` re-reads the smoothed targets at AFTER_LOSS, so the two
compose.
"""

from __future__ import annotations

import torch

from taxaug import functional as F
from taxaug.algorithms._common import check_int, check_real, check_str_list, training_batch
from taxaug.algorithms.base import Algorithm
from taxaug.algorithms.events import Event
from taxaug.algorithms.mixing import _check_num_classes
from taxaug.algorithms.registry import register
from taxaug.algorithms.schedules import Schedule, as_schedule
from taxaug.algorithms.state import State

__all__ = ["LabelSmoothing", "TaxonomyLabelSmoothing"]

AmountSpec = float | dict | Schedule


def _null_rows(dense: torch.Tensor, null_index: int) -> torch.Tensor:
    return dense[:, null_index] >= 1.0


class _Smoothing(Algorithm):
    events = frozenset({Event.BEFORE_LOSS})

    def _selected(self, targets: dict[str, torch.Tensor], tasks: list[str] | None) -> list[str]:
        if tasks is None:
            return list(targets)
        missing = [t for t in tasks if t not in targets]
        if missing:
            raise KeyError(f"{self.key}: task(s) {missing} are not among the batch targets {sorted(targets)}")
        return tasks


@register("label_smoothing")
class LabelSmoothing(_Smoothing):
    """Uniform label smoothing of every (or the chosen) task's targets: `(1 - s) * t + s / K`.

    Args:
        smoothing: the amount s, a number or a schedule in [0, 1].
        tasks: tasks to smooth (default: all).
        null_index: rows entirely on this class (unknown label) are left as they are.
        num_classes: classes per task for index targets, if State gives none.
    """

    def __init__(self, *, smoothing: AmountSpec = 0.1, tasks: list[str] | None = None, null_index: int = 0,
                 num_classes: dict[str, int] | None = None) -> None:
        super().__init__()
        self.smoothing = as_schedule(smoothing, "smoothing", low=0.0, high=1.0)
        self.tasks = check_str_list(tasks, "tasks", allow_none=True)
        self.null_index = check_int(null_index, "null_index", low=0)
        self.num_classes = _check_num_classes(num_classes)

    def apply(self, event: Event, state: State) -> None:
        self._note_position(state)
        amount = self.smoothing.at(state)
        if amount <= 0.0:
            return
        batch = training_batch(state, self.key)
        tasks = self._selected(batch.targets, self.tasks)
        num_classes = state.resolve_num_classes(self.num_classes)
        dense = F.to_dense_targets({k: batch.targets[k] for k in tasks}, num_classes)
        targets = dict(batch.targets)
        for key, t in dense.items():
            targets[key] = torch.where(_null_rows(t, self.null_index).unsqueeze(1), t, F.smooth_targets(t, amount))
        state.batch = batch.replace(targets=targets)


@register("taxonomy_label_smoothing")
class TaxonomyLabelSmoothing(_Smoothing):
    """Taxonomy-aware smoothing: `State.taxonomy.smooth(targets, rank, alpha, beta)` (= `targets @ M`).

    Keeps `1 - alpha` on the true class and spreads `alpha` over the other real classes with weights
    `exp(-beta * LCA distance)`, O(B * K * R) per rank with no K x K matrix. `alpha` may be a schedule:
    the alpha-independent part is cached by the taxonomy (per rank and beta), so a changing alpha costs
    nothing extra. `ranks` defaults to every target that is a taxonomy rank.
    """

    def __init__(self, *, alpha: AmountSpec = 0.1, beta: float = 1.0, ranks: list[str] | None = None) -> None:
        super().__init__()
        self.alpha = as_schedule(alpha, "alpha", low=0.0, high=1.0)
        self.beta = check_real(beta, "beta", low=0.0)
        self.ranks = check_str_list(ranks, "ranks", allow_none=True)

    def apply(self, event: Event, state: State) -> None:
        self._note_position(state)
        amount = self.alpha.at(state)
        if amount <= 0.0:
            return
        taxonomy = state.taxonomy
        if taxonomy is None:
            raise ValueError(f"{self.key}: taxonomy smoothing needs State.taxonomy (a taxaug.taxonomy.Taxonomy)")
        batch = training_batch(state, self.key)
        if self.ranks is None:
            ranks = [r for r in taxonomy.rank_names if r in batch.targets]
        else:
            unknown = [r for r in self.ranks if r not in taxonomy.rank_names]
            if unknown:
                raise KeyError(f"{self.key}: rank(s) {unknown} are not in the taxonomy {list(taxonomy.rank_names)}")
            ranks = self._selected(batch.targets, self.ranks)
        dense = F.to_dense_targets({r: batch.targets[r] for r in ranks}, dict(taxonomy.num_classes))
        targets = dict(batch.targets)
        for rank, t in dense.items():
            targets[rank] = taxonomy.smooth(t, rank, amount, self.beta)
        state.batch = batch.replace(targets=targets)
