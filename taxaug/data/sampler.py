"""GroupedBatchSampler: batches shaped for in-group mixing, deterministic and distributed-aware.

Modes:

- ``"strict-group"``: each full batch holds one group only. What is left of each group after its
  full batches, plus unpairable samples, fills further batches (kept group-contiguous so the
  leftovers of one group can still pair with each other).
- ``"mixed-pairs"``: batches are made of same-group pairs; different pairs may come from different
  groups. An odd batch size is rounded down to even (with a warning).
- ``"standard"``: plain shuffled batches, no grouping.

Unpairable samples (group id -1, groups with fewer than ``min_group_size`` members) fill batches as
unmixable samples by default (``unpairable="fill"``); ``unpairable="exclude"`` leaves them out and
says how many. Every other sample appears exactly once per epoch; the final batch may be smaller
than ``batch_size`` (``drop_last=False``) so nothing is dropped.

Distributed: every replica computes the same global batch list from ``(seed, epoch)`` (no
``hash()``, no global RNG), then takes every ``num_replicas``-th full batch; the samples left over
are split into one last, smaller batch per replica. Replicas are disjoint and equal in length. If
fewer samples are left over than there are replicas, they are skipped that epoch (a different few
each epoch) with a warning, since an equal length without repeats is impossible otherwise.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from torch.utils.data import BatchSampler, Sampler

__all__ = ["GroupedBatchSampler", "SamplerMode"]


def _replicas_from(sampler: object, num_replicas: int, rank: int) -> tuple[int, int]:
    """(num_replicas, rank) taken from a DistributedSampler-like `sampler`, else the given ones."""
    if sampler is None:
        return num_replicas, rank
    theirs = (getattr(sampler, "num_replicas", None), getattr(sampler, "rank", None))
    if not all(isinstance(v, int) for v in theirs):
        raise TypeError(f"sampler must be a DistributedSampler (with num_replicas and rank) or None, got "
                        f"{type(sampler).__name__}")
    if num_replicas != 1 and (num_replicas, rank) != theirs:
        raise ValueError(f"num_replicas={num_replicas}, rank={rank} disagree with the sampler's {theirs}; give one")
    return theirs

SamplerMode = Literal["strict-group", "mixed-pairs", "standard"]
MODES = ("strict-group", "mixed-pairs", "standard")


class GroupedBatchSampler(BatchSampler):
    """Yields lists of dataset positions; use as ``batch_sampler=`` or with the prefetching loader.

    A ``torch.utils.data.BatchSampler`` subclass with a ``sampler`` argument, so a training framework
    that re-creates batch samplers with a ``DistributedSampler`` (Lightning under DDP, when the loader
    is built in a ``*_dataloader`` hook) gets a copy splitting batches over its replicas.

    Parameters
    ----------
    group_ids: (N,) int group per sample (``dataset.group_ids(rank)``; -1 = no group).
    batch_size: samples per full batch (rounded down to even in ``"mixed-pairs"``).
    mode: ``"strict-group"``, ``"mixed-pairs"`` or ``"standard"``.
    seed: base seed; the order of epoch e depends only on (seed, e).
    shuffle: shuffle samples and batches (False keeps a deterministic dataset-ordered layout).
    num_replicas, rank: distributed split (defaults: one replica).
    unpairable: ``"fill"`` (default) or ``"exclude"``.
    min_group_size: groups smaller than this (in the whole dataset) are unpairable; >= 2.
    drop_last: drop the final smaller batch (its samples are then not seen that epoch).
    sampler: optional ``DistributedSampler`` whose ``num_replicas`` and ``rank`` replace the defaults (its own
        order is not used: every replica derives the same global batches from (seed, epoch)).
    """

    def __init__(
        self,
        group_ids: Sequence[int] | np.ndarray | torch.Tensor,
        batch_size: int,
        *,
        mode: SamplerMode = "strict-group",
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        unpairable: Literal["fill", "exclude"] = "fill",
        min_group_size: int = 2,
        drop_last: bool = False,
        sampler: Sampler | None = None,
    ):
        if isinstance(group_ids, Sampler):
            raise TypeError(
                f"group_ids must be the (N,) group ids, got a {type(group_ids).__name__}; a framework re-created this "
                f"sampler without its arguments: build the DataLoader inside the LightningModule/DataModule "
                f"train_dataloader() hook (Lightning then passes sampler=...), or use Trainer(use_distributed_sampler="
                f"False) and give num_replicas and rank")
        num_replicas, rank = _replicas_from(sampler, num_replicas, rank)
        gids = _group_id_array(group_ids)
        batch_size = _checked_batch_size(batch_size, mode)
        if unpairable not in ("fill", "exclude"):
            raise ValueError(f"unpairable must be 'fill' or 'exclude', got {unpairable!r}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas=}, {rank=}")
        if min_group_size < 2:
            raise ValueError(f"min_group_size must be >= 2, got {min_group_size}")
        self.group_ids = _compact_ids(gids)
        self.batch_size = int(batch_size)
        self.mode: SamplerMode = mode
        self.seed = int(seed)
        self.shuffle = shuffle
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.unpairable = unpairable
        self.min_group_size = int(min_group_size)
        self.drop_last = drop_last
        self.epoch = 0
        self.iterated_epoch: int | None = None  # the epoch the latest iteration started with
        self._find_pairable()
        self._plan_batches()

    def _find_pairable(self) -> None:
        """Mark samples whose group has at least `min_group_size` members; count (and warn about) exclusions."""
        n = self.group_ids.shape[0]
        valid = self.group_ids >= 0
        sizes = np.bincount(self.group_ids[valid], minlength=0) if valid.any() else np.zeros(0, np.int64)
        self._pairable = valid.copy()
        self._pairable[valid] = sizes[self.group_ids[valid]] >= self.min_group_size
        if self.mode == "standard":
            self._pairable[:] = False
        self.num_unpairable = int(n - self._pairable.sum()) if self.mode != "standard" else 0
        self.num_excluded = self.num_unpairable if self.unpairable == "exclude" else 0
        if self.num_excluded:
            warnings.warn(f"GroupedBatchSampler: {self.num_excluded} of {n} samples cannot be paired (no group or "
                          f"group smaller than {self.min_group_size}) and are excluded (unpairable='exclude')",
                          stacklevel=3)
        self.num_samples_total = n - self.num_excluded

    def _plan_batches(self) -> None:
        """Full batches per replica and the samples left over (skipped when they cannot be spread)."""
        full = self.num_samples_total // self.batch_size
        self._per_rank_full = full // self.num_replicas
        self._leftover = self.num_samples_total - self._per_rank_full * self.num_replicas * self.batch_size
        self.num_skipped_per_epoch = 0
        if self.drop_last:
            self.num_skipped_per_epoch = self._leftover
        elif 0 < self._leftover < self.num_replicas:
            self.num_skipped_per_epoch = self._leftover
            warnings.warn(f"GroupedBatchSampler: {self._leftover} sample(s) per epoch cannot be spread over "
                          f"{self.num_replicas} replicas without repeats; they are skipped each epoch (a "
                          "different set each epoch). Change batch_size or the replica count to avoid this.",
                          stacklevel=3)

    # ------------------------------------------------------------------ public

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        extra = 1 if (not self.drop_last and self._leftover >= self.num_replicas) else 0
        return self._per_rank_full + extra

    def __iter__(self) -> Iterator[list[int]]:
        self.iterated_epoch = self.epoch
        for batch in self.batches(self.epoch):
            yield batch.tolist()

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This replica's batches for `epoch` as int64 arrays."""
        full, tail = self._global_batches(epoch)
        r, reps = self.rank, self.num_replicas
        mine = full[r: self._per_rank_full * reps: reps]
        if not self.drop_last:
            rest = [*full[self._per_rank_full * reps:], tail]
            left = np.concatenate(rest) if rest else np.empty(0, np.int64)
            if left.size >= reps:
                mine.append(np.array_split(left, reps)[r])
        return mine

    # ------------------------------------------------------------------ construction

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch), 0xB47C4]))

    def _perm(self, rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
        return rng.permutation(x) if self.shuffle else x

    def _grouped_order(self, rng: np.random.Generator, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`idx` reordered group by group (random group and member order); and each member's rank in its group."""
        idx = self._perm(rng, idx)
        g = self.group_ids[idx]
        keys = rng.permutation(int(g.max()) + 1) if (self.shuffle and g.size) else np.arange(int(g.max(initial=0)) + 1)
        order = np.argsort(keys[g], kind="stable") if g.size else np.empty(0, np.int64)
        idx, g = idx[order], g[order]
        starts = np.r_[0, np.flatnonzero(np.diff(g)) + 1] if g.size else np.empty(0, np.int64)
        counts = np.diff(np.r_[starts, g.size])
        within = np.arange(g.size) - np.repeat(starts, counts)
        size = np.repeat(counts, counts)
        return idx, np.stack([within, size], axis=1) if g.size else np.empty((0, 2), np.int64)

    def _global_batches(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        rng = self._rng(epoch)
        all_idx = np.arange(self.group_ids.shape[0], dtype=np.int64)
        pairable = all_idx[self._pairable]
        loose = all_idx[~self._pairable] if self.unpairable == "fill" or self.mode == "standard" else all_idx[:0]
        b = self.batch_size
        if self.mode == "standard":
            sequence = self._perm(rng, all_idx)
            pure: list[np.ndarray] = []
        elif self.mode == "strict-group":
            ordered, info = self._grouped_order(rng, pairable)
            within, size = info[:, 0], info[:, 1]
            in_pure = within < (size // b) * b
            flat = ordered[in_pure]
            pure = [flat[i:i + b] for i in range(0, flat.size, b)]
            sequence = np.concatenate([ordered[~in_pure], self._perm(rng, loose)])
        else:  # mixed-pairs
            ordered, info = self._grouped_order(rng, pairable)
            within, size = info[:, 0], info[:, 1]
            odd_last = (size % 2 == 1) & (within == size - 1)
            pairs = ordered[~odd_last].reshape(-1, 2)
            singles = self._perm(rng, np.concatenate([ordered[odd_last], loose]))
            last = singles[-1:] if singles.size % 2 else singles[:0]
            units = np.concatenate([pairs, singles[: singles.size - last.size].reshape(-1, 2)])
            units = units[self._perm(rng, np.arange(units.shape[0]))]
            sequence = np.concatenate([units.reshape(-1), last])
            pure = []
        n_full = sequence.size // b
        fill = [sequence[i * b:(i + 1) * b] for i in range(n_full)]
        full = pure + fill
        if self.shuffle and full:
            full = [full[i] for i in rng.permutation(len(full))]
        tail = sequence[n_full * b:]
        return full, tail

    def __repr__(self) -> str:
        return (f"GroupedBatchSampler(mode={self.mode!r}, batch_size={self.batch_size}, samples="
                f"{self.num_samples_total}, batches={len(self)}, replicas={self.num_replicas}, rank={self.rank}, "
                f"unpairable={self.num_unpairable} ({self.unpairable}))")


def _group_id_array(group_ids: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    """`group_ids` as a checked 1-D int64 array (-1 = no group)."""
    if isinstance(group_ids, torch.Tensor):
        group_ids = group_ids.detach().cpu().numpy()
    gids = np.asarray(group_ids)
    if gids.ndim != 1 or (gids.size and not np.issubdtype(gids.dtype, np.integer)):
        raise TypeError(f"group_ids must be a 1-D integer array, got dtype {gids.dtype} shape {gids.shape}")
    if gids.size and gids.min() < -1:
        raise ValueError(f"group_ids must be >= -1 (-1 = no group), got min {gids.min()}")
    return gids.astype(np.int64)


def _compact_ids(gids: np.ndarray) -> np.ndarray:
    """Ids renumbered 0..G-1 in order (-1 stays -1): sparse ids such as 2**40 would otherwise size
    per-group tables by the largest id."""
    valid = gids >= 0
    compact = np.full(gids.shape, -1, dtype=np.int64)
    if valid.any():
        compact[valid] = np.unique(gids[valid], return_inverse=True)[1].reshape(-1)
    return compact


def _checked_batch_size(batch_size: int, mode: str) -> int:
    """`batch_size` checked for `mode` (mixed-pairs batches hold pairs: an odd size is rounded down)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if mode == "mixed-pairs":
        if batch_size < 2:
            raise ValueError(f"mixed-pairs needs batch_size >= 2, got {batch_size}")
        if batch_size % 2:
            warnings.warn(f"mixed-pairs batches hold pairs: batch_size {batch_size} rounded down to "
                          f"{batch_size - 1}", stacklevel=3)
            batch_size -= 1
    return int(batch_size)
