"""Target helpers: index targets to dense probabilities, smoothing, mixing by lam."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from taxaug import _memory
from taxaug.functional._validate import check_targets, describe

__all__ = ["mix_targets", "smooth_targets", "to_dense_targets"]


def _dense_one(target: torch.Tensor, num_classes: int | None, key: str, dtype: torch.dtype,
               one_hot: bool = True) -> torch.Tensor:
    """Dense (B, K) rows of one task; for index targets, zeros instead of one-hot rows if not `one_hot`."""
    if target.ndim == 2:
        if num_classes is not None and target.shape[1] != num_classes:
            raise ValueError(f"targets[{key!r}] has {target.shape[1]} classes but num_classes says {num_classes}")
        return target.to(dtype)
    if num_classes is None:
        raise ValueError(
            f"targets[{key!r}] holds class indices, so num_classes[{key!r}] is needed to make it dense"
        )
    if target.device.type == "cpu" and target.numel():
        low, high = int(target.min()), int(target.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"targets[{key!r}] holds class index {high if high >= num_classes else low} outside "
                f"[0, {num_classes}); num_classes[{key!r}] = {num_classes}"
            )
    dense = _memory.empty((target.shape[0], num_classes), dtype=dtype, device=target.device).zero_()
    return dense if not one_hot else dense.scatter_(1, target.long().unsqueeze(1), 1.0)


def to_dense_targets(
    targets: Mapping[str, torch.Tensor],
    num_classes: Mapping[str, int] | int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Every task as dense (B, K) probabilities: indices become one-hot, dense targets are kept.

    ``num_classes`` is per task (a dict) or one int for all tasks; it is only
    needed for index targets. Indices outside [0, K) raise (checked on CPU).
    """
    if not targets:
        return {}
    size = next(iter(targets.values())).shape[0]
    check_targets(targets, size)
    return {key: _dense_one(target, _classes_of(num_classes, key), key, dtype) for key, target in targets.items()}


def _classes_of(num_classes: Mapping[str, int] | int | None, key: str) -> int | None:
    if num_classes is not None and not isinstance(num_classes, (int, Mapping)):
        raise TypeError(f"num_classes must be a dict task -> int or an int, got {describe(num_classes)}")
    return num_classes if isinstance(num_classes, int) or num_classes is None else num_classes.get(key)


def smooth_targets(targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Uniform label smoothing of dense (B, K) rows: ``(1 - s) * t + s / K``. Rows keep summing to 1."""
    if targets.ndim != 2 or not targets.is_floating_point():
        raise ValueError(f"targets must be dense float (B, K), got {describe(targets)}")
    s = float(smoothing)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
    return targets * (1.0 - s) + s / targets.shape[1]


def mix_targets(
    targets: Mapping[str, torch.Tensor],
    perm: torch.Tensor,
    lam: torch.Tensor,
    num_classes: Mapping[str, int] | int | None = None,
) -> dict[str, torch.Tensor]:
    """``lam * t + (1 - lam) * t[perm]`` for every task, with the same per-sample lam on each."""
    if not targets:
        return {}
    size = next(iter(targets.values())).shape[0]
    check_targets(targets, size)
    weight = lam.to(torch.float32)
    out = {}
    for key, source in targets.items():
        # index targets: zeros, then the two entries of each row; no one-hot rows to gather and blend
        t = _dense_one(source, _classes_of(num_classes, key), key, torch.float32, one_hot=False)
        perm_t, w = perm.to(t.device), weight.to(device=t.device, dtype=t.dtype)
        if source.ndim == 1:
            out[key] = _mix_indices(t, source.to(t.device).long(), perm_t, w)
        else:
            out[key] = torch.lerp(t.index_select(0, perm_t), t, w.unsqueeze(1))
    return out


def _mix_indices(zeros: torch.Tensor, index: torch.Tensor, perm: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The lerp of one-hot rows, written entry by entry: lam on i's class, 1 - lam on its partner's,
    exactly 1 where both share the class (bit for bit what ``torch.lerp`` gives)."""
    own, partner = index.unsqueeze(1), index.index_select(0, perm).unsqueeze(1)
    own_value = torch.where(own == partner, torch.ones_like(w).unsqueeze(1), w.unsqueeze(1))
    zeros.scatter_(1, partner, (1.0 - w).unsqueeze(1))
    return zeros.scatter_(1, own, own_value)
