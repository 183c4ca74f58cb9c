"""Batched image augmentations as algorithms: AutoAugment, RandAugment, TrivialAugment, AugMix, RandomErasing.

Each wraps a batched policy of `taxaug.functional` (per-sample op choice and
magnitudes, uint8 or float, any device). By default they run at
AFTER_DATALOADER on the batch's device (`where="device"`); with
`where="loader"` the engine leaves the batch alone and the data loader calls
`batch_transform` instead (`Engine.loader_transforms()` lists them), the
algorithm then only reads the schedule position at BATCH_START. Eval batches
are never touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from taxaug import functional as F
from taxaug.algorithms._common import (
    check_choice,
    check_int,
    check_pair,
    check_real,
    training_batch,
)
from taxaug.algorithms.base import Algorithm
from taxaug.algorithms.events import Event
from taxaug.algorithms.registry import register
from taxaug.algorithms.schedules import Schedule, as_schedule
from taxaug.algorithms.state import State
from taxaug.functional._validate import check_images

__all__ = ["AugMix", "AutoAugment", "RandAugment", "RandomErasing", "TrivialAugment"]

ProbSpec = float | dict | Schedule
WHERE = ("device", "loader")


def _check_fill(fill: Any) -> Any:
    if fill is None:
        return None
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        return fill
    if isinstance(fill, Sequence) and not isinstance(fill, str) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in fill):
        return list(fill)
    raise TypeError(f"fill must be None, a number or a list of per-channel numbers, got {fill!r}")


class _ImageAugmentation(Algorithm):
    """Shared machinery: where it runs, per-sample probability, dry-run validation of arguments."""

    def _setup_image(self, *, prob: ProbSpec, where: str) -> None:
        self.prob = as_schedule(prob, "prob", low=0.0, high=1.0)
        self.where = check_choice(where, "where", WHERE)
        # loader side: only follow the schedule position at BATCH_START; never touch the engine's batch
        self.events = frozenset({Event.BATCH_START if self.where == "loader" else Event.AFTER_DATALOADER})
        self._position: tuple[int, int | None] = (0, None)
        self._validate_by_dry_run()

    def _validate_by_dry_run(self) -> None:
        """Run the op once on a tiny batch so bad arguments fail at construction, with the op's message."""
        probe = torch.zeros(2, 3, 16, 16)
        self._op(probe, torch.Generator().manual_seed(0), self._op_value(0, 1))

    def _op(self, images: torch.Tensor, generator: torch.Generator, step_value: float) -> torch.Tensor:
        raise NotImplementedError

    def _op_value(self, step: int, max_steps: int | None) -> float:
        """Subclass hook: a scheduled argument of the op at this position (unused by default)."""
        return 1.0

    def apply(self, event: Event, state: State) -> None:
        self._note_position(state)
        self._position = (int(state.step), state.max_steps)
        if event is Event.BATCH_START:  # loader-side: only follow the schedule position
            return
        batch = training_batch(state, self.key)
        images = self._augment(batch.images, state.step, state.max_steps)
        if images is not batch.images:
            state.batch = batch.replace(images=images)

    def batch_transform(self, batch: Any) -> Any:
        """Augment a MixBatch or an image tensor outside the engine (loader side), at the last seen step."""
        step, max_steps = self._position
        if isinstance(batch, torch.Tensor):
            return self._augment(check_images(batch, "batch"), step, max_steps)
        if isinstance(batch, F.MixBatch):
            images = self._augment(batch.images, step, max_steps)
            return batch if images is batch.images else batch.replace(images=images)
        raise TypeError(f"{self.key}: batch_transform takes a MixBatch or a (B, C, H, W) tensor, got {batch!r}")

    def _augment(self, images: torch.Tensor, step: int, max_steps: int | None) -> torch.Tensor:
        p = self.prob.value(step, max_steps)
        if p <= 0.0:
            return images
        value = self._op_value(step, max_steps)
        if p >= 1.0:
            return self._op(images, self.generator, value)
        chosen = F.rand((images.shape[0],), generator=self.generator, device=images.device) < p
        augmented = self._op(images, self.generator, value)
        return torch.where(chosen.view(-1, 1, 1, 1), augmented, images)

    def extra_state(self) -> dict[str, Any]:
        return {"position": list(self._position)}

    def load_extra_state(self, state: Any) -> None:
        step, max_steps = state.get("position", (0, None))
        self._position = (int(step), max_steps)


@register("auto_augment")
class AutoAugment(_ImageAugmentation):
    """AutoAugment on the whole batch, one sub-policy drawn per sample (imagenet, cifar10 or svhn policy)."""


    def __init__(self, *, policy: str = "imagenet", fill: float | list[float] | None = None,
                 interpolation: str = "nearest", prob: ProbSpec = 1.0, where: str = "device") -> None:
        super().__init__()
        self.policy = check_choice(policy, "policy", ("imagenet", "cifar10", "svhn"))
        self.fill = _check_fill(fill)
        self.interpolation = interpolation
        self._setup_image(prob=prob, where=where)

    def _op(self, images, generator, value):
        return F.auto_augment(images, self.policy, generator=generator, fill=self.fill,
                              interpolation=self.interpolation)


@register("rand_augment")
class RandAugment(_ImageAugmentation):
    """RandAugment on the whole batch: `num_ops` ops per sample at `magnitude` (of `num_magnitude_bins`).

    `magnitude` may be a schedule (e.g. ramped up over training); `magnitude_std` adds per-sample noise
    (`inf`: uniform in [0, magnitude]).
    """


    def __init__(self, *, num_ops: int = 2, magnitude: float | dict | Schedule = 9, num_magnitude_bins: int = 31,
                 magnitude_std: float = 0.0, fill: float | list[float] | None = None,
                 interpolation: str = "nearest", prob: ProbSpec = 1.0, where: str = "device") -> None:
        super().__init__()
        self.num_ops = check_int(num_ops, "num_ops", low=0)
        self.num_magnitude_bins = check_int(num_magnitude_bins, "num_magnitude_bins", low=2)
        self.magnitude = as_schedule(magnitude, "magnitude", low=0.0, high=self.num_magnitude_bins - 1)
        self.magnitude_std = check_real(magnitude_std, "magnitude_std", low=0.0)
        self.fill = _check_fill(fill)
        self.interpolation = interpolation
        self._setup_image(prob=prob, where=where)

    def _op_value(self, step: int, max_steps: int | None) -> float:
        return self.magnitude.value(step, max_steps)

    def _op(self, images, generator, value):
        return F.rand_augment(images, self.num_ops, value, num_magnitude_bins=self.num_magnitude_bins,
                              magnitude_std=self.magnitude_std, generator=generator, fill=self.fill,
                              interpolation=self.interpolation)


@register("trivial_augment")
class TrivialAugment(_ImageAugmentation):
    """TrivialAugment (wide) on the whole batch: one op per sample at a uniformly drawn magnitude."""


    def __init__(self, *, num_magnitude_bins: int = 31, fill: float | list[float] | None = None,
                 interpolation: str = "nearest", prob: ProbSpec = 1.0, where: str = "device") -> None:
        super().__init__()
        self.num_magnitude_bins = check_int(num_magnitude_bins, "num_magnitude_bins", low=2)
        self.fill = _check_fill(fill)
        self.interpolation = interpolation
        self._setup_image(prob=prob, where=where)

    def _op(self, images, generator, value):
        return F.trivial_augment_wide(images, num_magnitude_bins=self.num_magnitude_bins, generator=generator,
                                      fill=self.fill, interpolation=self.interpolation)


@register("augmix")
class AugMix(_ImageAugmentation):
    """AugMix (AugmentAndMix) on the whole batch: `width` chains of `depth` ops, mixed by Dirichlet/Beta weights.

    `depth=-1` draws a depth in {1, 2, 3} per chain; `severity` in 1..10 bounds op intensity;
    `augmentation_set` is "all", "safe" (without ops that overlap ImageNet-C corruptions) or "original".
    """


    def __init__(self, *, severity: int = 3, width: int = 3, depth: int = -1, alpha: float = 1.0,
                 augmentation_set: str = "all", fill: float | list[float] | None = None,
                 interpolation: str = "nearest", prob: ProbSpec = 1.0, where: str = "device") -> None:
        super().__init__()
        self.severity = check_int(severity, "severity", low=1, high=10)
        self.width = check_int(width, "width", low=1)
        self.depth = check_int(depth, "depth", low=-1)
        if self.depth == 0:
            raise ValueError("depth must be -1 (random in {1, 2, 3}) or >= 1, got 0")
        self.alpha = check_real(alpha, "alpha", low=0.0, low_open=True)
        self.augmentation_set = check_choice(augmentation_set, "augmentation_set", ("all", "safe", "original"))
        self.fill = _check_fill(fill)
        self.interpolation = interpolation
        self._setup_image(prob=prob, where=where)

    def _op(self, images, generator, value):
        return F.augmix(images, severity=self.severity, width=self.width, depth=self.depth, alpha=self.alpha,
                        augmentation_set=self.augmentation_set, generator=generator, fill=self.fill,
                        interpolation=self.interpolation)


@register("random_erasing")
class RandomErasing(_ImageAugmentation):
    """Random Erasing on the whole batch: each sample erased with probability `p` (a number or a schedule).

    `scale` and `ratio` bound the erased area (fraction of the image) and aspect ratio; `mode` fills with a
    constant `value` (a number or one per channel, "const"), uniform noise per pixel over the image's range
    ("rand") or normal noise per pixel ("pixel"); up to `count` boxes per sample.
    """


    def __init__(self, *, p: ProbSpec = 0.25, scale: list[float] = (0.02, 0.33), ratio: list[float] = (0.3, 3.3),
                 mode: str = "const", value: float | list[float] = 0.0, count: int = 1, max_attempts: int = 10,
                 where: str = "device") -> None:
        super().__init__()
        self.p = as_schedule(p, "p", low=0.0, high=1.0)
        self.scale = check_pair(scale, "scale", low=0.0, high=1.0)
        self.ratio = check_pair(ratio, "ratio", low=0.0)
        if self.ratio[0] <= 0:
            raise ValueError(f"ratio must be > 0, got {list(ratio)}")
        self.mode = check_choice(mode, "mode", ("const", "rand", "pixel"))
        self.value = _check_fill(value)
        if self.value is None:
            raise TypeError("value must be a number or a list of per-channel numbers, got None")
        self.count = check_int(count, "count", low=1)
        self.max_attempts = check_int(max_attempts, "max_attempts", low=1)
        self._setup_image(prob=1.0, where=where)

    def _op_value(self, step: int, max_steps: int | None) -> float:
        return self.p.value(step, max_steps)

    def _augment(self, images: torch.Tensor, step: int, max_steps: int | None) -> torch.Tensor:
        p = self.p.value(step, max_steps)
        if p <= 0.0:
            return images
        return self._op(images, self.generator, p)

    def _op(self, images, generator, value):
        return F.random_erasing(images, p=value, scale=self.scale, ratio=self.ratio, mode=self.mode,
                                value=self.value, count=self.count, max_attempts=self.max_attempts,
                                generator=generator)
