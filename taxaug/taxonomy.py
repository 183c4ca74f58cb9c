"""Taxonomy: the tree over ranks, built once from label columns.

Ranks are ordered finest to coarsest (e.g. species ``taxa_L10``, genus
``taxa_L20``, family ``taxa_L30``). Classes at every rank are contiguous
indices with ``null_index`` (0) meaning "unknown at this rank".

The core representation is the ancestors table ``(K, R)`` per rank (column m:
each class's ancestor m ranks up) plus, derived from it once, the nested
groups of classes within LCA distance m of each other. Everything else is
computed from these without a K x K tensor: LCA distances of given pairs
(O(pairs * R)), taxonomy smoothing of soft targets and expected LCA distances
(level-by-level scatter/gather, O(B * K * R) at most), consistency of targets
with the parent relation (scatter-add to parents, O(B * K)). The dense
``distance_matrix`` / ``smoothing_matrix`` / ``parent_matrix`` remain for
small trees and refuse above ``Taxonomy.dense_limit_bytes``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import attrs
import numpy as np
import torch

from taxaug import _memory
from taxaug.cache import LRUCache


@attrs.frozen
class Conflict:
    """A class at `rank` seen with more than one parent at the next rank."""

    rank: str
    child: int
    parents: tuple[int, ...]
    counts: tuple[int, ...]

    def __str__(self) -> str:
        seen = ", ".join(f"{p} ({c} row{'s' if c != 1 else ''})" for p, c in zip(self.parents, self.counts))
        return f"{self.rank} class {self.child} has parents {seen}"


class TaxonomyConflictError(ValueError):
    """Raised with every conflict found, not just the first. ``conflicts`` are in class indices; ``lines``
    describe the first 20 (by default in class indices too; a dataset passes its file's taxon ids and names)."""

    SHOWN = 20

    def __init__(self, conflicts: Sequence[Conflict], lines: Sequence[str] | None = None):
        self.conflicts = tuple(conflicts)
        self.lines = tuple(lines) if lines is not None else tuple(str(c) for c in self.conflicts[:self.SHOWN])
        shown = "\n  ".join(self.lines[:self.SHOWN])
        more = f"\n  ... and {len(self.conflicts) - self.SHOWN} more" if len(self.conflicts) > self.SHOWN else ""
        super().__init__(
            f"labels do not form a tree: {len(self.conflicts)} class(es) have more than one parent:\n  "
            f"{shown}{more}\nFix the label columns, or pass on_conflict='majority' to keep each child's "
            "most frequent parent."
        )


def _as_index_array(values: object, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"labels[{name!r}] must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"labels[{name!r}] must hold integer class indices, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"labels[{name!r}] holds negative class indices (min {arr.min()}); indices start at 0")
    # integer columns stay as they are (no whole-column int64 copy); uint64 does not mix with int64
    return arr if arr.dtype.kind in "iu" and arr.dtype != np.uint64 else arr.astype(np.int64)


_LOW = (torch.float16, torch.bfloat16)


def _check_smoothing(alpha: float, beta: float) -> None:
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if float(beta) < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")


def _parent_table(name: str, child: np.ndarray, parent: np.ndarray, n_child: int, n_parent: int,
                  null_index: int) -> tuple[np.ndarray, list[Conflict]]:
    """Majority parent of every child class, and the children seen with several parents.

    Pairs are counted through one 1-D int64 key ``child * n_parent + parent``
    (a sort of N integers, not a row-wise unique of an (N, 2) array).
    """
    known = (child != null_index) & (parent != null_index)
    keys = child[known].astype(np.int64)
    keys *= n_parent
    keys += parent[known]
    keys, counts = np.unique(keys, return_counts=True)
    kids, dads = np.divmod(keys, n_parent)
    table = np.full(n_child, null_index, dtype=np.int64)
    conflicts = []
    if keys.size:
        # keys are sorted by child then parent; runs of one child with several parents are conflicts
        starts = np.flatnonzero(np.r_[True, kids[1:] != kids[:-1]])
        runs = np.diff(np.r_[starts, keys.size])
        for start, length in zip(starts[runs > 1], runs[runs > 1]):
            seg = slice(start, start + length)
            conflicts.append(Conflict(name, int(kids[start]), tuple(int(p) for p in dads[seg]),
                                      tuple(int(c) for c in counts[seg])))
        # majority parent per child: order by (child, -count) and take each child's first row
        order = np.lexsort((-counts, kids))
        first = order[np.r_[True, kids[order][1:] != kids[order][:-1]]]
        table[kids[first]] = dads[first]
    return table, conflicts


class Taxonomy:
    """A tree of classes over ranks, finest first.

    ``parents[k][c]`` is the class at rank ``k + 1`` of class ``c`` at rank
    ``k`` (the null class maps to null; a class whose parent is never seen
    maps to null too).
    """

    #: the dense conveniences (distance_matrix, smoothing_matrix, parent_matrix) refuse above this size
    dense_limit_bytes: int = 256 * 2**20
    #: derived structure (ancestors, level groups, smoothing norms per beta) kept per taxonomy, in bytes
    cache_limit_bytes: int = 256 * 2**20

    def __init__(
        self,
        rank_names: Sequence[str],
        num_classes: Mapping[str, int],
        parents: Sequence[np.ndarray],
        *,
        null_index: int = 0,
        conflicts: Sequence[Conflict] = (),
    ):
        self.rank_names: tuple[str, ...] = tuple(rank_names)
        if len(self.rank_names) == 0:
            raise ValueError("rank_names must name at least one rank")
        if len(set(self.rank_names)) != len(self.rank_names):
            raise ValueError(f"rank_names must be unique, got {self.rank_names}")
        missing = [r for r in self.rank_names if r not in num_classes]
        if missing:
            raise ValueError(f"num_classes lacks rank(s) {missing}; it has {sorted(num_classes)}")
        self.num_classes: dict[str, int] = {r: int(num_classes[r]) for r in self.rank_names}
        if len(parents) != len(self.rank_names) - 1:
            raise ValueError(
                f"parents must hold one array per rank transition ({len(self.rank_names) - 1}), got {len(parents)}"
            )
        self.null_index = int(null_index)
        self.conflicts: tuple[Conflict, ...] = tuple(conflicts)
        checked = []
        for k, arr in enumerate(parents):
            child, parent = self.rank_names[k], self.rank_names[k + 1]
            arr = np.asarray(arr, dtype=np.int64)
            if arr.shape != (self.num_classes[child],):
                raise ValueError(
                    f"parents[{k}] ({child} -> {parent}) must have shape ({self.num_classes[child]},), got {arr.shape}"
                )
            if arr.size and (arr.min() < 0 or arr.max() >= self.num_classes[parent]):
                raise ValueError(
                    f"parents[{k}] ({child} -> {parent}) holds indices outside [0, {self.num_classes[parent]})"
                )
            if 0 <= self.null_index < arr.size and arr[self.null_index] != self.null_index:
                raise ValueError(
                    f"parents[{k}] ({child} -> {parent}) gives the null class {self.null_index} the parent "
                    f"{arr[self.null_index]}; map it to {self.null_index} (unknown at {child!r} stays unknown at {parent!r})"
                )
            checked.append(arr)
        self._parents = tuple(checked)
        self._cache = LRUCache(self.cache_limit_bytes)

    # ------------------------------------------------------------------ build

    @classmethod
    def from_labels(
        cls,
        labels: Mapping[str, object],
        *,
        null_index: int = 0,
        num_classes: Mapping[str, int] | None = None,
        on_conflict: Literal["raise", "majority"] = "raise",
    ) -> Taxonomy:
        """Build from per-rank label columns (finest first, in mapping order).

        Each column holds contiguous class indices for the same N rows. A child
        seen with two different known parents is a conflict; every conflict is
        reported (``TaxonomyConflictError``) unless ``on_conflict="majority"``,
        which keeps each child's most frequent parent and warns.
        """
        if on_conflict not in ("raise", "majority"):
            raise ValueError(f"on_conflict must be 'raise' or 'majority', got {on_conflict!r}")
        if not isinstance(labels, Mapping) or len(labels) == 0:
            raise ValueError("labels must be a non-empty mapping rank name -> class index array")
        names = list(labels)
        arrays = [_as_index_array(labels[n], n) for n in names]
        lengths = {n: a.shape[0] for n, a in zip(names, arrays)}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"label columns must have the same length, got {lengths}")
        sizes = {}
        for n, a in zip(names, arrays):
            observed = int(a.max()) + 1 if a.size else 1
            observed = max(observed, null_index + 1)
            given = None if num_classes is None else num_classes.get(n)
            if given is not None and given < observed:
                raise ValueError(f"num_classes[{n!r}] = {given} but labels hold index {observed - 1}")
            sizes[n] = int(given) if given is not None else observed

        parents, conflicts = [], []
        for k in range(len(names) - 1):
            table, found = _parent_table(names[k], arrays[k], arrays[k + 1], sizes[names[k]],
                                         sizes[names[k + 1]], null_index)
            parents.append(table)
            conflicts += found
        if conflicts and on_conflict == "raise":
            raise TaxonomyConflictError(conflicts)
        if conflicts:
            warnings.warn(
                f"{len(conflicts)} class(es) had several parents; kept the most frequent parent of each "
                f"(first: {conflicts[0]})",
                stacklevel=2,
            )
        return cls(names, sizes, parents, null_index=null_index, conflicts=conflicts)

    @classmethod
    def from_parents(
        cls,
        rank_names: Sequence[str],
        num_classes: Mapping[str, int],
        parents: Sequence[Mapping[int, int] | Sequence[int] | np.ndarray],
        *,
        null_index: int = 0,
    ) -> Taxonomy:
        """Build from an explicit parent map per rank transition (dict child -> parent, or an array)."""
        tables = []
        for k, p in enumerate(parents):
            if k + 1 >= len(rank_names):
                break
            size = int(num_classes[rank_names[k]])
            if isinstance(p, Mapping):
                table = np.full(size, null_index, dtype=np.int64)
                for child, parent in p.items():
                    if not 0 <= int(child) < size:
                        raise ValueError(f"parents[{k}] names child {child} outside [0, {size}) at {rank_names[k]}")
                    table[int(child)] = int(parent)
            else:
                table = np.asarray(p, dtype=np.int64)
            tables.append(table)
        return cls(rank_names, num_classes, tables, null_index=null_index)

    # ------------------------------------------------------------------ lookups

    def rank_index(self, rank: str | int) -> int:
        if isinstance(rank, int):
            if not 0 <= rank < len(self.rank_names):
                raise ValueError(f"rank index {rank} outside [0, {len(self.rank_names)})")
            return rank
        if rank not in self.rank_names:
            raise ValueError(f"unknown rank {rank!r}; ranks are {list(self.rank_names)}")
        return self.rank_names.index(rank)

    def parent_array(self, rank: str | int) -> np.ndarray:
        """Parent index at the next coarser rank for every class at `rank`."""
        k = self.rank_index(rank)
        if k == len(self.rank_names) - 1:
            raise ValueError(f"{self.rank_names[k]!r} is the coarsest rank; it has no parent rank")
        return self._parents[k]

    def parent_matrix(self, rank: str | int, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dense 0/1 matrix ``A[k->k+1]`` (K_k, K_{k+1}), row c one-hot at c's parent; small trees only.

        The index form is `parent_array`; `lift` applies A by scatter-add.
        """
        k = self.rank_index(rank)
        table = torch.from_numpy(self.parent_array(k))
        self._check_dense("parent_matrix", k, self.num_classes[self.rank_names[k + 1]], dtype.itemsize)
        out = torch.zeros(self.num_classes[self.rank_names[k]], self.num_classes[self.rank_names[k + 1]], dtype=dtype)
        out[torch.arange(table.numel()), table] = 1
        return out

    @property
    def parent_matrices(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.parent_matrix(k) for k in range(len(self.rank_names) - 1))

    def ancestors(self, rank: str | int) -> np.ndarray:
        """(K_rank, R - k) array: column m is each class's ancestor m ranks up (column 0 is itself)."""
        k = self.rank_index(rank)
        key = ("ancestors", k)
        table = self._cache.get(key)
        if table is None:
            cols = [np.arange(self.num_classes[self.rank_names[k]], dtype=np.int64)]
            for j in range(k, len(self.rank_names) - 1):
                cols.append(self._parents[j][cols[-1]])
            table = np.stack(cols, axis=1)
            table.flags.writeable = False
            self._cache.put(key, table)
        return table

    def lineage(self, rank: str | int, index: int) -> dict[str, int]:
        """The class and all its ancestors, keyed by rank name."""
        k = self.rank_index(rank)
        size = self.num_classes[self.rank_names[k]]
        if not 0 <= int(index) < size:
            raise ValueError(f"class index {index} outside [0, {size}) at rank {self.rank_names[k]!r}")
        row = self.ancestors(k)[int(index)]
        return {self.rank_names[k + m]: int(row[m]) for m in range(row.shape[0])}

    def expand(self, rank: str | int, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """Class indices at `rank` -> index targets at that rank and every coarser one."""
        k = self.rank_index(rank)
        rows = self._ancestors_on(k, indices.device)[indices.long()]
        return {self.rank_names[k + m]: rows[:, m] for m in range(rows.shape[1])}

    # ------------------------------------------------------------------ structure derived from ancestors

    def _levels(self, k: int) -> tuple[np.ndarray, ...]:
        """Group maps of rank k: ``maps[m]`` sends each level-m group to its level-(m+1) group.

        Level 0 groups are the classes; the level-m group of a class is the set
        of classes within LCA distance m of it: its ancestor m ranks up when
        that is known, else its level-(m-1) group carried up unchanged (so a
        class with an unknown parent is nobody's relative above its last known
        ancestor, exactly as the LCA distance has it). Built once per rank,
        O(K * R log K).
        """
        key = ("levels", k)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        anc = self.ancestors(k)
        prev = np.arange(anc.shape[0], dtype=np.int64)
        maps = []
        for m in range(1, anc.shape[1]):
            col = anc[:, m]
            width = self.num_classes[self.rank_names[k + m]]
            _, group = np.unique(np.where(col != self.null_index, col, width + prev), return_inverse=True)
            up = np.empty(int(prev.max()) + 1, dtype=np.int64)
            up[prev] = group
            maps.append(up)
            prev = group.astype(np.int64, copy=False)
        out = tuple(maps)
        self._cache.put(key, out)
        return out

    def level_groups(self, rank: str | int) -> np.ndarray:
        """(K, R-k) int64: column m is each class's level-m group (column 0: the class itself).

        Two classes are within LCA distance m exactly when they share column m,
        and groups nest, so their distance is the number of columns in which they
        differ (what `pair_distance` computes).
        """
        k = self.rank_index(rank)
        cols = [np.arange(self.num_classes[self.rank_names[k]], dtype=np.int64)]
        for up in self._levels(k):
            cols.append(up[cols[-1]])
        return np.stack(cols, axis=1)

    def _group_sizes(self, k: int) -> np.ndarray:
        """(K, R-k+1) float64: real classes in each class's level-m group (column R-k: all real classes)."""
        size = self.num_classes[self.rank_names[k]]
        count = np.ones(size)
        count[self.null_index] = 0
        group = np.arange(size)
        cols = [count.copy()]
        for up in self._levels(k):
            count = np.bincount(up, weights=count, minlength=int(up.max()) + 1 if up.size else 0)
            group = up[group]
            cols.append(count[group])
        cols.append(np.full(size, size - 1.0))
        return np.stack(cols, axis=1) * (np.arange(size) != self.null_index)[:, None]

    def _on(self, name: str, k: int, device: torch.device, build) -> object:
        """A tensor view of structure `name` of rank k on `device`, cached (bounded by bytes)."""
        key = (name, k, str(device))
        cached = self._cache.get(key)
        if cached is None:
            cached = build()
            self._cache.put(key, cached)
        return cached

    def _level_maps(self, k: int, device: torch.device) -> tuple[tuple[torch.Tensor, int], ...]:
        """(map, number of groups one level up) per level, on `device`."""
        return self._on("maps", k, device, lambda: tuple(
            (torch.from_numpy(a).to(device), int(a.max()) + 1 if a.size else 0) for a in self._levels(k)))

    def _ancestors_on(self, k: int, device: torch.device) -> torch.Tensor:
        return self._on("anc", k, device, lambda: torch.tensor(self.ancestors(k), device=device))

    def _check_dense(self, what: str, k: int, cols: int, itemsize: int) -> None:
        rows = self.num_classes[self.rank_names[k]]
        need = rows * cols * itemsize
        if need > self.dense_limit_bytes:
            raise ValueError(
                f"{what} refuses rank {self.rank_names[k]!r} with K={rows}: a dense {rows}x{cols} matrix needs "
                f"{need / 2**20:.0f} MiB (limit Taxonomy.dense_limit_bytes = {self.dense_limit_bytes / 2**20:.0f} "
                "MiB); use the structured ops (pair_distance, smooth, expected_distance, consistency_error)"
            )

    # ------------------------------------------------------------------ distances

    def pair_distance(self, rank: str | int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LCA distance of the class pairs ``(a[i], b[i])`` at `rank`, O(pairs * R).

        The number of ranks climbed until the two classes share a known
        ancestor: 0 for a class and itself, ``R - k`` (one past the coarsest
        rank) for classes with no common known ancestor; the null class is
        that far from everything but itself.
        """
        k = self.rank_index(rank)
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        groups = self._on("groups", k, a.device, lambda: torch.from_numpy(self.level_groups(k)).to(a.device))
        # groups nest, so the classes differ in exactly the levels below their distance
        return (groups[a.long()] != groups[b.long()]).sum(dim=-1)

    def distance_matrix(self, rank: str | int) -> torch.Tensor:
        """Dense (K, K) int64 LCA distances (small trees only; see `pair_distance`)."""
        k = self.rank_index(rank)
        size = self.num_classes[self.rank_names[k]]
        self._check_dense("distance_matrix", k, size, 8)
        idx = torch.arange(size)
        return self.pair_distance(k, idx[:, None].expand(size, size), idx[None, :].expand(size, size))

    def distance_transform(self, values: torch.Tensor, rank: str | int, f: Sequence[float], *,
                           weights: torch.Tensor | None = None, diagonal: torch.Tensor | None = None) -> torch.Tensor:
        """``out[:, c] = sum_j values[:, j] * weights[j] * f[d(c, j)] + values[:, c] * diagonal[c]``, no K x K.

        `values` is (B, K); `f` lists the weight of each LCA distance 0..R-k;
        `weights` and `diagonal` are optional (K,) per-class factors (default
        1 and 0). Since the classes within distance m of c form one group per
        level, ``f(d) = f(L) + sum_{m >= d} (f(m) - f(m+1))`` turns the sum
        into group sums: scatter-add up the levels, gather back down,
        O(B * (K + groups)) with a handful of passes over the (B, K) values.
        """
        k = self.rank_index(rank)
        levels = len(self.rank_names) - k
        if len(f) != levels + 1:
            raise ValueError(f"f must give a weight for each distance 0..{levels} at rank {rank!r}, got {len(f)}")
        values = self._dense(values, k, "values")
        maps = self._level_maps(k, values.device)
        # (B, K) buffers come from taxaug's buffer cache: no fresh pages (and their faults) every call
        sums = [values if weights is None else torch.mul(values, weights, out=_memory.empty(values.shape,
                                                                                            dtype=values.dtype,
                                                                                            device=values.device))]
        for up, width in maps:
            sums.append(values.new_zeros(values.shape[0], width).index_add_(1, up, sums[-1]))
        z = float(f[levels]) * sums[-1].sum(dim=1, keepdim=True)
        for m in reversed(range(1, levels)):
            coeff = float(f[m]) - float(f[m + 1])
            if m == levels - 1:  # z is (B, 1): broadcast
                z = torch.add(z, sums[m], alpha=coeff) if coeff else z.expand_as(sums[m])
            else:
                z = z.index_select(1, maps[m][0]).add_(sums[m], alpha=coeff)
        # the class level: one gather, then one fused pass adds each class's own terms
        out = _memory.empty(values.shape, dtype=values.dtype, device=values.device)
        z = torch.index_select(z, 1, maps[0][0], out=out) if levels > 1 else out.copy_(z.expand_as(values))
        own = (float(f[0]) - float(f[1])) * (values.new_ones(values.shape[1]) if weights is None else weights)
        if diagonal is not None:
            own = own + diagonal
        return z.addcmul_(values, own.to(values.dtype))

    def expected_distance(self, probs: torch.Tensor, rank: str | int) -> torch.Tensor:
        """(B, K) expected LCA distance of each candidate class under the (B, K) class probabilities.

        ``E[d(c, Y)] = sum over levels m < R-k of the mass outside c's level-m
        group``: outside c itself, outside its known ancestor m ranks up (or
        its last known ancestor, if that one is unknown). O(B * K * R).
        """
        k = self.rank_index(rank)
        return self.distance_transform(self._dense(probs, k, "probs"), k, list(range(len(self.rank_names) - k + 1)))

    def crm_predict(self, probs: torch.Tensor, rank: str | int) -> torch.Tensor:
        """(B,) the real class minimising the expected LCA distance (conditional risk minimisation).

        Mass on the null class does not change the decision (the null class is
        equally far from every real class); ties go to the smallest index.
        """
        k = self.rank_index(rank)
        risk = self.expected_distance(probs.float() if probs.dtype in _LOW else probs, k)
        risk[:, self.null_index] = float("inf")
        return risk.argmin(dim=1)

    # ------------------------------------------------------------------ smoothing

    def _smoothing_norm(self, k: int, beta: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(1 / total neighbour weight of each class, whether it has any, whether float32 is too coarse),
        per (rank, beta), cached. Independent of alpha, so a scheduled alpha reuses it every step.

        The level sums carry a class's own scaled mass ``exp(-beta) / total`` before it cancels; where
        that exceeds ~10x the result (a class whose nearest relatives are far and few, at a large beta)
        float32 would lose digits, and `smooth` works in float64.
        """
        def build() -> tuple[torch.Tensor, torch.Tensor, bool]:
            kernel = self._kernel(k, beta)
            sizes = self._group_sizes(k)  # sum of non-negative terms: no rounding makes a lone class look related
            total = torch.from_numpy((np.diff(sizes, axis=1) * np.array(kernel[1:])).sum(axis=1))
            has_other = total > 0
            size = total.numel()
            inverse = torch.where(has_other, 1.0 / total.clamp_min(1e-300), torch.zeros_like(total))
            coarse = bool(inverse.max() * kernel[1] > 10.0) if size else False
            return inverse.to(device), has_other.to(device), coarse

        return self._on(f"norm@{float(beta)!r}", k, device, build)

    def _kernel(self, k: int, beta: float) -> list[float]:
        """Neighbour weight per LCA distance: 0 for the class itself, ``exp(-beta * d)`` otherwise."""
        return [0.0] + [math.exp(-float(beta) * d) for d in range(1, len(self.rank_names) - k + 1)]

    def smooth(self, targets: torch.Tensor, rank: str | int, alpha: float = 0.1, beta: float = 1.0) -> torch.Tensor:
        """Taxonomy-aware smoothing of dense (B, K) soft targets, equal to ``targets @ smoothing_matrix``.

        Each class keeps ``1 - alpha`` and spreads ``alpha`` over the other real
        classes with weights ``exp(-beta * d)``; a class with no other real
        class keeps everything; null mass stays on null. Soft (mixed) targets
        are smoothed as mixtures, never via argmax. O(B * K * R), no K x K.
        """
        k = self.rank_index(rank)
        _check_smoothing(alpha, beta)
        work = self._dense(targets, k, "targets")
        inverse, has_other, coarse = self._smoothing_norm(k, beta, work.device)
        work = work.double() if coarse and work.dtype != torch.float64 else work.float() if work.dtype in _LOW else work
        keep = 1.0 - float(alpha) * has_other.to(work.dtype)
        out = self.distance_transform(work, k, self._kernel(k, beta), weights=inverse.to(work.dtype) * float(alpha),
                                      diagonal=keep)
        out.clamp_min_(0.0)  # the level sums cancel the class's own term only to rounding
        out[:, self.null_index] = work[:, self.null_index]
        return out.to(targets.dtype)

    def smoothing_matrix(self, rank: str | int, alpha: float = 0.1, beta: float = 1.0) -> torch.Tensor:
        """Dense (K, K) float32 matrix M of `smooth` (``smooth(t) == t @ M``); small trees only."""
        k = self.rank_index(rank)
        size = self.num_classes[self.rank_names[k]]
        _check_smoothing(alpha, beta)
        self._check_dense("smoothing_matrix", k, size, 8)
        return self.smooth(torch.eye(size, dtype=torch.float64), k, alpha, beta).float()

    def _dense(self, targets: torch.Tensor, k: int, name: str) -> torch.Tensor:
        size = self.num_classes[self.rank_names[k]]
        if targets.ndim != 2 or targets.shape[1] != size or not targets.is_floating_point():
            raise ValueError(
                f"{name} must be dense float (B, {size}) for rank {self.rank_names[k]!r}, got shape "
                f"{tuple(targets.shape)} and dtype {targets.dtype}"
            )
        return targets

    # ------------------------------------------------------------------ consistency

    def lift(self, targets: torch.Tensor, rank: str | int) -> torch.Tensor:
        """(B, K_k) dense targets -> (B, K_{k+1}) parent-rank targets (``targets @ A[k->k+1]``), by scatter-add."""
        k = self.rank_index(rank)
        targets = self._dense(targets, k, "targets")
        parents = torch.from_numpy(self.parent_array(k)).to(targets.device)
        width = self.num_classes[self.rank_names[k + 1]]
        return targets.new_zeros(targets.shape[0], width).index_add_(1, parents, targets)

    def consistency_error(self, targets: Mapping[str, torch.Tensor]) -> float:
        """Largest |targets[k] @ A[k->k+1] - targets[k+1]| over all adjacent dense ranks present in `targets`."""
        worst = 0.0
        for k in range(len(self.rank_names) - 1):
            child, parent = self.rank_names[k], self.rank_names[k + 1]
            if child not in targets or parent not in targets:
                continue
            lifted = self.lift(targets[child].double(), k)
            worst = max(worst, float((lifted - targets[parent].double().to(lifted.device)).abs().max()))
        return worst

    def __repr__(self) -> str:
        sizes = ", ".join(f"{r}={self.num_classes[r]}" for r in self.rank_names)
        return f"Taxonomy({sizes})"
