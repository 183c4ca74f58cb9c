"""Group-aware pairing: who may be mixed with whom."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from taxaug import _native
from taxaug.functional._validate import check_generator, check_group_ids, check_targets
from taxaug.functional.random import randperm

__all__ = ["exclude_null_samples", "ingroup_permutation"]


def ingroup_permutation(
    group_ids: torch.Tensor,
    *,
    min_group_size: int = 2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random partner for each sample, inside its own group.

    ``perm[i] == i`` exactly when ``group_ids[i]`` is negative (-1: never mix)
    or i's group has fewer than ``max(min_group_size, 2)`` members. Inside every
    other group, ``perm`` is a derangement: a random cycle through the group's
    members. Vectorised (shuffle, stable sort by group, shift by one within the
    group); no host sync, any device.
    """
    check_group_ids(group_ids)
    check_generator(generator)
    if isinstance(min_group_size, bool) or not isinstance(min_group_size, int) or min_group_size < 1:
        raise ValueError(f"min_group_size must be an int >= 1, got {min_group_size!r}")
    size = group_ids.shape[0]
    device = group_ids.device
    positions = torch.arange(size, device=device)
    if size < 2:
        return positions.clone()
    # A random order inside each group: shuffle first, then a stable sort by group id.
    shuffled = randperm(size, generator=generator, device=device)
    if device.type == "cpu" and _native.available():  # the same perm, without ~20 small torch ops
        perm = _native.ingroup_perm(group_ids, shuffled, max(min_group_size, 2))
        if perm is not None:
            return perm
    order = shuffled[torch.sort(group_ids[shuffled], stable=True).indices]
    sorted_ids = group_ids[order]
    starts_here = torch.ones(size, dtype=torch.bool, device=device)
    starts_here[1:] = sorted_ids[1:] != sorted_ids[:-1]
    ends_here = torch.ones(size, dtype=torch.bool, device=device)
    ends_here[:-1] = starts_here[1:]
    start = torch.cummax(torch.where(starts_here, positions, torch.zeros_like(positions)), dim=0).values
    end = torch.where(ends_here, positions, torch.full_like(positions, size)).flip(0).cummin(dim=0).values.flip(0)
    count = end - start + 1
    eligible = (sorted_ids >= 0) & (count >= max(min_group_size, 2))
    partner_pos = torch.where(eligible, start + (positions - start + 1) % count, positions)
    perm = torch.empty_like(order)
    perm[order] = order[partner_pos]
    return perm


def _null_rows(target: torch.Tensor, null_index: int) -> torch.Tensor:
    if target.ndim == 1:
        return target == null_index
    if not 0 <= null_index < target.shape[1]:
        raise ValueError(f"null_index {null_index} outside the {target.shape[1]} classes of a dense target")
    return target[:, null_index] > 0


def exclude_null_samples(
    group_ids: torch.Tensor,
    targets: Mapping[str, torch.Tensor],
    *,
    null_task_keys: Iterable[str] | None = None,
    null_index: int = 0,
) -> torch.Tensor:
    """New group ids with -1 for every sample whose label is null in any of `null_task_keys`.

    Index targets are null where they equal ``null_index``; dense targets where
    the null class carries any mass. ``null_task_keys=None`` checks every task.
    The input is never mutated.
    """
    check_group_ids(group_ids)
    check_targets(targets, group_ids.shape[0])
    keys = list(targets) if null_task_keys is None else list(null_task_keys)
    unknown = [k for k in keys if k not in targets]
    if unknown:
        raise ValueError(f"null_task_keys names task(s) {unknown} not in targets; targets have {sorted(targets)}")
    null = torch.zeros_like(group_ids, dtype=torch.bool)
    for key in keys:
        null |= _null_rows(targets[key], null_index).to(group_ids.device)
    return group_ids.masked_fill(null, -1)
