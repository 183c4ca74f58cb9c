"""Mixing algorithms: group-aware (selective) Mixup/CutMix and their plain forms.

All of them act at AFTER_DATALOADER on `state.batch` (a MixBatch on the
training device), draw whether to mix **once per batch** from the `prob`
schedule (never again inside), and leave eval batches alone. With
`interpolate_loss=True` the images and metadata are mixed but the targets are
kept; at AFTER_LOSS the loss is recomputed against both target sets and
blended per sample by lam (Composer's `interpolate_loss`, for dict targets).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from taxaug import functional as F
from taxaug.algorithms._common import (
    check_bool,
    check_int,
    check_pair,
    check_real,
    check_str_list,
    training_batch,
)
from taxaug.algorithms.base import Algorithm
from taxaug.algorithms.events import Event
from taxaug.algorithms.registry import register
from taxaug.algorithms.schedules import Schedule, as_schedule
from taxaug.algorithms.state import State

__all__ = ["CutMix", "Mix", "MixUp", "SelectiveCutMix", "SelectiveMix", "SelectiveMixup"]

ProbSpec = float | dict | Schedule


def _unpacked(result: F.MixResult, **extra: Any) -> tuple[F.MixBatch, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(batch, perm, lam, extra) of a mix; `extra` gains the op that ran ("mixup" or "cutmix") and its boxes."""
    extra["op"] = "mixup" if result.boxes is None else "cutmix"
    if result.boxes is not None:
        extra["boxes"] = result.boxes
    return result.batch, result.perm, result.lam, extra


def _check_components(components: Any) -> list[tuple[int, int]] | None:
    if components is None:
        return None
    if isinstance(components, (str, bytes)) or not isinstance(components, Sequence):
        raise TypeError(f"aux_components must be a list of [name, width] pairs, got {components!r}")
    return F.aux_chunks_from_components(components)


def _check_num_classes(num_classes: Any) -> dict[str, int] | None:
    if num_classes is None:
        return None
    if not isinstance(num_classes, Mapping):
        raise TypeError(f"num_classes must be a dict task -> number of classes, got {num_classes!r}")
    for key, k in num_classes.items():
        check_int(k, f"num_classes[{key!r}]", low=1)
    return dict(num_classes)


def _per_sample(loss: Any, who: str) -> torch.Tensor:
    if isinstance(loss, tuple):
        loss = loss[0]
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"{who}: state.loss_fn must return a tensor (or a tuple starting with one), got {loss!r}")
    return loss


class _Mixing(Algorithm):
    """Shared machinery: probability schedule, once-per-batch draw, densifying, loss interpolation."""

    def _setup_mixing(self, *, prob: ProbSpec, interpolate_loss: bool, num_classes: Any,
                      aux_components: Any) -> None:
        self.prob = as_schedule(prob, "prob", low=0.0, high=1.0)
        self.interpolate_loss = check_bool(interpolate_loss, "interpolate_loss")
        self.num_classes = _check_num_classes(num_classes)
        self.aux_chunks = _check_components(aux_components)
        self.mixed_batches = 0
        # matched by the base class's set lookup, the cheapest test for the many events this ignores
        self.events = frozenset({Event.AFTER_DATALOADER, *([Event.AFTER_LOSS] if self.interpolate_loss else [])})

    def apply(self, event: Event, state: State) -> None:
        if event is Event.AFTER_LOSS:
            self._interpolate(state)
            return
        self._note_position(state)
        batch = training_batch(state, self.key)
        p = self.prob.at(state)
        info: dict[str, Any] = {"mixed": False, "prob": p}
        state.scratch[self.key] = info
        if p <= 0.0:
            return
        if p < 1.0 and float(F.rand((1,), generator=self.generator)[0]) >= p:
            return
        num_classes = self._num_classes(batch, state)
        mixed, perm, lam, extra = self._mix(batch, state, num_classes)
        if self.interpolate_loss:
            mixed = mixed.replace(targets=batch.targets)
        state.batch = mixed
        self.mixed_batches += 1
        info.update(mixed=True, perm=perm, lam=lam, **extra)

    def _mix(self, batch: F.MixBatch, state: State, num_classes: dict[str, int] | None):
        raise NotImplementedError

    def _num_classes(self, batch: F.MixBatch, state: State) -> dict[str, int] | None:
        num_classes = state.resolve_num_classes(self.num_classes)
        needs = [k for k, t in batch.targets.items() if t.ndim == 1 and (num_classes is None or k not in num_classes)]
        if needs:
            raise ValueError(
                f"{self.key}: targets {needs} are class indices, so their number of classes is needed to mix "
                f"them; pass num_classes={{task: K}}, or set State.num_classes or State.taxonomy"
            )
        return num_classes

    def _interpolate(self, state: State) -> None:
        info = state.scratch.get(self.key)
        if not info or not info.get("mixed"):
            return
        if state.loss_fn is None:
            raise RuntimeError(
                f"{self.key}: interpolate_loss=True needs state.loss_fn(outputs, targets) -> per-sample loss (B,) "
                f"to recompute the loss against the partners' targets"
            )
        perm, lam = info["perm"], info["lam"]
        targets = state.batch.targets
        partner_targets = {k: v.index_select(0, perm.to(v.device)) for k, v in targets.items()}
        own = _per_sample(state.loss_fn(state.outputs, targets), self.key)
        partner = _per_sample(state.loss_fn(state.outputs, partner_targets), self.key)
        if own.ndim == 1 and own.shape[0] == perm.shape[0]:
            w = lam.to(device=own.device, dtype=own.dtype)
            state.loss = (w * own + (1.0 - w) * partner).mean()
        elif own.ndim == 0:
            # Unmixed samples have identical losses on both sides, so one shared lam is exact for a
            # scalar loss as long as every mixed sample has the same lam.
            mixed = perm != torch.arange(perm.shape[0], device=perm.device)
            values = lam[mixed]
            if values.numel() == 0:
                return
            if float(values.max() - values.min()) > 1e-6:
                raise ValueError(
                    f"{self.key}: lam differs between samples (CutMix boxes, per-sample lam), so a scalar loss "
                    f"cannot be interpolated; make state.loss_fn return per-sample losses (reduction='none')"
                )
            w = float(values[0])
            state.loss = w * own + (1.0 - w) * partner
        else:
            raise ValueError(
                f"{self.key}: state.loss_fn returned shape {tuple(own.shape)}; expected per-sample losses "
                f"({perm.shape[0]},) or a scalar"
            )
        info["loss_interpolated"] = True

    def extra_state(self) -> dict[str, Any]:
        return {"mixed_batches": self.mixed_batches}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.mixed_batches = int(state.get("mixed_batches", 0))


class _Selective(_Mixing):
    """Group-aware mixing: partners come from the same group at the current `group_levels` entry."""

    def _setup_selective(self, *, prob: ProbSpec, interpolate_loss: bool, num_classes: Any,
                         aux_components: Any, **group_settings: Any) -> None:
        """Mixing settings (probability, loss interpolation, classes, metadata) plus grouping settings."""
        self._setup_mixing(prob=prob, interpolate_loss=interpolate_loss, num_classes=num_classes,
                           aux_components=aux_components)
        self._setup_groups(**group_settings)

    def _setup_groups(self, *, group_levels: Any, level_switch_steps: Any, level_switch_epochs: Any,
                      min_group_size: Any, exclude_null: Any, null_task_keys: Any, null_index: Any,
                      per_sample_lam: Any) -> None:
        self.group_levels = check_str_list(group_levels, "group_levels")
        if level_switch_steps is not None and level_switch_epochs is not None:
            raise ValueError("give level_switch_steps or level_switch_epochs, not both")
        switches = level_switch_steps if level_switch_steps is not None else level_switch_epochs
        self.switch_unit = "epochs" if level_switch_epochs is not None else "steps"
        name = f"level_switch_{self.switch_unit}"
        if switches is None:
            switches = []
        if not isinstance(switches, Sequence) or isinstance(switches, str):
            raise TypeError(f"{name} must be a list of ints, got {switches!r}")
        switches = [check_int(s, f"{name} entry", low=0) for s in switches]
        if len(switches) != len(self.group_levels) - 1:
            raise ValueError(
                f"group_levels {self.group_levels} has {len(self.group_levels)} level(s), so {name} needs "
                f"{len(self.group_levels) - 1} switch point(s) (the {self.switch_unit} at which each next level "
                f"starts), got {switches}"
            )
        if any(b <= a for a, b in itertools.pairwise(switches)):
            raise ValueError(f"{name} must be strictly increasing, got {switches}")
        self.level_switches = switches
        self.min_group_size = check_int(min_group_size, "min_group_size", low=2)
        self.exclude_null = check_bool(exclude_null, "exclude_null")
        self.null_task_keys = check_str_list(null_task_keys, "null_task_keys", allow_none=True)
        if self.null_task_keys is not None and not self.exclude_null:
            raise ValueError(f"null_task_keys={self.null_task_keys} has no effect with exclude_null=False; "
                             f"drop it or set exclude_null=True")
        self.null_index = check_int(null_index, "null_index", low=0)
        self.per_sample_lam = check_bool(per_sample_lam, "per_sample_lam")

    def level_at(self, state: State) -> str:
        """The grouping level in force at the state's step (or epoch)."""
        position = state.epoch if self.switch_unit == "epochs" else state.step
        return self.group_levels[bisect.bisect_right(self.level_switches, position)]

    def group_ids(self, batch: F.MixBatch, state: State) -> tuple[str, torch.Tensor]:
        level = self.level_at(state)
        if level not in batch.targets:
            raise KeyError(
                f"{self.key}: group level {level!r} is not among the batch targets {sorted(batch.targets)}; "
                f"group_levels must name tasks of the batch"
            )
        target = batch.targets[level]
        if target.ndim == 1:
            ids = target.long()
        else:
            # Dense targets (e.g. after an earlier mix): a one-hot row keeps its class as group; a soft row
            # already mixes two classes at this level and is never mixed again.
            peak, cls = target.max(dim=1)
            ids = torch.where(peak >= 1.0 - 1e-6, cls, torch.full_like(cls, -1))
        if self.exclude_null:
            ids = F.exclude_null_samples(ids, batch.targets, null_task_keys=self.null_task_keys,
                                         null_index=self.null_index)
        return level, ids

    def _mix_with(self, batch: F.MixBatch, state: State, num_classes: dict[str, int] | None, **op: Any):
        """F.selective_mix on this batch's group ids; `op` picks alphas, switch_prob, boxes."""
        level, ids = self.group_ids(batch, state)
        result = F.selective_mix(batch, ids, per_sample_lam=self.per_sample_lam, min_group_size=self.min_group_size,
                                 aux_chunks=self.aux_chunks, num_classes=num_classes, generator=self.generator,
                                 **op)
        return _unpacked(result, level=level)


@register("selective_mixup")
class SelectiveMixup(_Selective):
    """Mixup only between samples of the same taxonomic group, metadata hard-picked chunk by chunk.

    Args:
        group_levels: task(s) whose class indices define the groups (finest rank keeps every mixed target
            a single valid lineage); several levels need `level_switch_steps` or `level_switch_epochs`.
        alpha: lam ~ Beta(alpha, alpha), one per batch (or per sample with `per_sample_lam`).
        prob: probability of mixing a batch, a number or a schedule (drawn once per batch).
        min_group_size: groups smaller than this are left unmixed.
        exclude_null / null_task_keys / null_index: samples null in any of those tasks are never mixed.
        aux_components: metadata layout `[[name, width], ...]`; each component is taken whole from one side.
        interpolate_loss: mix images only and interpolate the loss (needs `state.loss_fn`).
        num_classes: classes per task, if neither State.num_classes nor State.taxonomy gives them.
    """

    def __init__(self, *, group_levels: str | list[str] = "taxa_L10", alpha: float = 0.8,
                 prob: ProbSpec = 1.0, level_switch_steps: list[int] | None = None,
                 level_switch_epochs: list[int] | None = None, min_group_size: int = 2,
                 exclude_null: bool = True, null_task_keys: list[str] | None = None, null_index: int = 0,
                 aux_components: list | None = None, per_sample_lam: bool = False,
                 interpolate_loss: bool = False, num_classes: dict[str, int] | None = None) -> None:
        super().__init__()
        self.alpha = check_real(alpha, "alpha", low=0.0, low_open=True)
        self._setup_selective(prob=prob, interpolate_loss=interpolate_loss, num_classes=num_classes,
                              aux_components=aux_components, group_levels=group_levels,
                              level_switch_steps=level_switch_steps, level_switch_epochs=level_switch_epochs,
                              min_group_size=min_group_size, exclude_null=exclude_null,
                              null_task_keys=null_task_keys, null_index=null_index, per_sample_lam=per_sample_lam)

    def _mix(self, batch, state, num_classes):
        return self._mix_with(batch, state, num_classes, mixup_alpha=self.alpha, switch_prob=0.0)


@register("selective_cutmix")
class SelectiveCutMix(_Selective):
    """CutMix only between samples of the same taxonomic group; targets mixed by the exact kept area.

    Args as SelectiveMixup, plus `minmax` (each box side drawn uniformly in [low, high] x the image side,
    ignoring the drawn lam, as timm; the targets use the box's exact area) and
    `per_sample_boxes` (one box per sample, default, or one box for the batch).
    """

    def __init__(self, *, group_levels: str | list[str] = "taxa_L10", alpha: float = 1.0,
                 prob: ProbSpec = 1.0, minmax: list[float] | None = None, per_sample_boxes: bool = True,
                 level_switch_steps: list[int] | None = None, level_switch_epochs: list[int] | None = None,
                 min_group_size: int = 2, exclude_null: bool = True, null_task_keys: list[str] | None = None,
                 null_index: int = 0, aux_components: list | None = None, per_sample_lam: bool = False,
                 interpolate_loss: bool = False, num_classes: dict[str, int] | None = None) -> None:
        super().__init__()
        self.alpha = check_real(alpha, "alpha", low=0.0, low_open=True)
        self.minmax = None if minmax is None else check_pair(minmax, "minmax", low=0.0, high=1.0)
        self.per_sample_boxes = check_bool(per_sample_boxes, "per_sample_boxes")
        self._setup_selective(prob=prob, interpolate_loss=interpolate_loss, num_classes=num_classes,
                              aux_components=aux_components, group_levels=group_levels,
                              level_switch_steps=level_switch_steps, level_switch_epochs=level_switch_epochs,
                              min_group_size=min_group_size, exclude_null=exclude_null,
                              null_task_keys=null_task_keys, null_index=null_index, per_sample_lam=per_sample_lam)

    def _mix(self, batch, state, num_classes):
        return self._mix_with(batch, state, num_classes, cutmix_alpha=self.alpha, switch_prob=1.0,
                              minmax=self.minmax, per_sample_boxes=self.per_sample_boxes)


@register("selective_mix")
class SelectiveMix(_Selective):
    """Selective Mixup or Selective CutMix, one of the two per mixed batch (CutMix with `switch_prob`)."""

    def __init__(self, *, group_levels: str | list[str] = "taxa_L10", mixup_alpha: float = 0.8,
                 cutmix_alpha: float = 1.0, switch_prob: float = 0.5, prob: ProbSpec = 1.0,
                 cutmix_minmax: list[float] | None = None, per_sample_boxes: bool = True,
                 level_switch_steps: list[int] | None = None, level_switch_epochs: list[int] | None = None,
                 min_group_size: int = 2, exclude_null: bool = True, null_task_keys: list[str] | None = None,
                 null_index: int = 0, aux_components: list | None = None, per_sample_lam: bool = False,
                 interpolate_loss: bool = False, num_classes: dict[str, int] | None = None) -> None:
        super().__init__()
        self.mixup_alpha = check_real(mixup_alpha, "mixup_alpha", low=0.0, low_open=True)
        self.cutmix_alpha = check_real(cutmix_alpha, "cutmix_alpha", low=0.0, low_open=True)
        self.switch_prob = check_real(switch_prob, "switch_prob", low=0.0, high=1.0)
        self.cutmix_minmax = None if cutmix_minmax is None else check_pair(cutmix_minmax, "cutmix_minmax",
                                                                           low=0.0, high=1.0)
        self.per_sample_boxes = check_bool(per_sample_boxes, "per_sample_boxes")
        self._setup_selective(prob=prob, interpolate_loss=interpolate_loss, num_classes=num_classes,
                              aux_components=aux_components, group_levels=group_levels,
                              level_switch_steps=level_switch_steps, level_switch_epochs=level_switch_epochs,
                              min_group_size=min_group_size, exclude_null=exclude_null,
                              null_task_keys=null_task_keys, null_index=null_index, per_sample_lam=per_sample_lam)

    def _mix(self, batch, state, num_classes):
        return self._mix_with(batch, state, num_classes, mixup_alpha=self.mixup_alpha,
                              cutmix_alpha=self.cutmix_alpha, switch_prob=self.switch_prob,
                              minmax=self.cutmix_minmax, per_sample_boxes=self.per_sample_boxes)


@register("mix")
class Mix(SelectiveMix):
    """The group-agnostic twin of `selective_mix`: same arguments, defaults and draws, any partner.

    Only null exclusion is kept (with `exclude_null`, samples null in `null_task_keys` stay unmixed,
    as in `selective_mix`); `group_levels` and its switch points are accepted and not used, so an
    A/B config changes one word. With every sample in one group both draw the same numbers.
    """

    def group_ids(self, batch: F.MixBatch, state: State) -> tuple[str | None, torch.Tensor]:
        ids = torch.zeros(batch.batch_size, dtype=torch.long, device=batch.device)
        if self.exclude_null:
            ids = F.exclude_null_samples(ids, batch.targets, null_task_keys=self.null_task_keys,
                                         null_index=self.null_index)
        return None, ids


class _Plain(_Mixing):
    """Plain (group-agnostic) Mixup or CutMix through F.mix: one lam per batch unless `per_sample_lam`."""

    def _mix_plain(self, batch: F.MixBatch, num_classes: dict[str, int] | None, **op: Any):
        result = F.mix(batch, per_sample_lam=self.per_sample_lam, aux_chunks=self.aux_chunks,
                       num_classes=num_classes, generator=self.generator, **op)
        return _unpacked(result)


@register("mixup")
class MixUp(_Plain):
    """Plain Mixup over the whole batch (partners form a derangement); alpha and lam per batch as
    in `selective_mixup` (`per_sample_lam=True` draws one lam per sample)."""

    def __init__(self, *, alpha: float = 0.8, prob: ProbSpec = 1.0, per_sample_lam: bool = False,
                 aux_components: list | None = None, interpolate_loss: bool = False,
                 num_classes: dict[str, int] | None = None) -> None:
        super().__init__()
        self.alpha = check_real(alpha, "alpha", low=0.0, low_open=True)
        self.per_sample_lam = check_bool(per_sample_lam, "per_sample_lam")
        self._setup_mixing(prob=prob, interpolate_loss=interpolate_loss, num_classes=num_classes,
                           aux_components=aux_components)

    def _mix(self, batch, state, num_classes):
        return self._mix_plain(batch, num_classes, mixup_alpha=self.alpha, switch_prob=0.0)


@register("cutmix")
class CutMix(_Plain):
    """Plain CutMix over the whole batch; targets mixed by the exact fraction of own pixels kept.
    The requested lam is drawn once per batch as in `selective_cutmix` (`per_sample_lam=True`: per sample)."""

    def __init__(self, *, alpha: float = 1.0, prob: ProbSpec = 1.0, per_sample_boxes: bool = True,
                 per_sample_lam: bool = False, aux_components: list | None = None,
                 interpolate_loss: bool = False, num_classes: dict[str, int] | None = None) -> None:
        super().__init__()
        self.alpha = check_real(alpha, "alpha", low=0.0, low_open=True)
        self.per_sample_boxes = check_bool(per_sample_boxes, "per_sample_boxes")
        self.per_sample_lam = check_bool(per_sample_lam, "per_sample_lam")
        self._setup_mixing(prob=prob, interpolate_loss=interpolate_loss, num_classes=num_classes,
                           aux_components=aux_components)

    def _mix(self, batch, state, num_classes):
        return self._mix_plain(batch, num_classes, cutmix_alpha=self.alpha, switch_prob=1.0,
                               per_sample_boxes=self.per_sample_boxes)
