"""State: everything the training loop shares with the algorithms.

The loop owns the State and updates its fields around each event (see
docs/algorithms.md, "Driving the engine from your own loop"); algorithms read
it and may replace `batch`, `loss` or `outputs`. Algorithm-private per-batch
data lives in `scratch[algorithm.key]` so loggers can read it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:  # imported lazily: the functional core and taxonomy load after this module
    from taxaug.functional.mixing import MixBatch
    from taxaug.taxonomy import Taxonomy

__all__ = ["State"]


@attrs.define(kw_only=True, eq=False)
class State:
    """Mutable training-loop state handed to every algorithm on every event.

    Attributes:
        model, optimizer: the loop's objects (algorithms that need them read them; none of the
            augmentations do).
        batch: the current training batch as a `taxaug.MixBatch` (images, targets dict, aux, aux_mask).
            Set it before AFTER_DATALOADER; algorithms may replace it with a new MixBatch.
        outputs: model outputs, set after the forward pass (before AFTER_FORWARD).
        loss: the loss tensor, set after computing it (before AFTER_LOSS); algorithms may replace it.
        loss_fn: `loss_fn(outputs, targets_dict) -> per-sample loss (B,)`; needed only by algorithms
            that recompute the loss (mixing with `interpolate_loss=True`).
        step: optimizer steps completed before the current batch (0 on the first batch).
        epoch: 0-based epoch index.
        batch_in_epoch: 0-based index of the current batch inside the epoch.
        samples_seen: training samples consumed before the current batch.
        max_steps: total optimizer steps of the run, if known (fraction-based schedules need it).
        training: False while evaluating; training augmentations never touch an eval batch.
        taxonomy: the run's `Taxonomy`, if any (taxonomy smoothing needs it; mixing reads
            `num_classes` from it).
        num_classes: classes per task (index 0 = null), used to densify index targets; falls back to
            `taxonomy.num_classes`.
        scratch: per-algorithm private data for the current batch, keyed by `Algorithm.key`.
    """

    model: Any = None
    optimizer: Any = None
    batch: MixBatch | None = None
    outputs: Any = None
    loss: Any = None
    loss_fn: Callable[[Any, dict], Any] | None = None
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples_seen: int = 0
    max_steps: int | None = None
    training: bool = True
    taxonomy: Taxonomy | None = None
    num_classes: dict[str, int] | None = None
    scratch: dict[str, Any] = attrs.field(factory=dict)

    @property
    def progress(self) -> float:
        """Continuous fraction of training done, `step / max_steps` clipped to [0, 1] (0 when unknown)."""
        if not self.max_steps:
            return 0.0
        return min(max(self.step / self.max_steps, 0.0), 1.0)

    def resolve_num_classes(self, override: dict[str, int] | None = None) -> dict[str, int] | None:
        """Classes per task: an explicit override, else `num_classes`, else the taxonomy's, else None."""
        if override is not None:
            return dict(override)
        if self.num_classes is not None:
            return dict(self.num_classes)
        if self.taxonomy is not None:
            return dict(self.taxonomy.num_classes)
        return None
