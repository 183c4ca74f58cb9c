"""Taxonomy: the tree over ranks, built once from label columns.

Ranks are ordered finest to coarsest (e.g. species ``taxa_L10``, genus
``taxa_L20``, family ``taxa_L30``). Classes at every rank are contiguous
indices with ``null_index`` (0) meaning "unknown at this rank". The tree gives
the parent matrices ``A[k->k+1]`` that the hierarchy-consistency property is
stated in, LCA distances between classes, and taxonomy-aware smoothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import attrs
import numpy as np
import torch


@attrs.frozen
class Conflict:
    """A class at `rank` seen with more than one parent at the next rank."""

    rank: str
    child: int
    parents: tuple[int, ...]
    counts: tuple[int, ...]

    def __str__(self) -> str:
        seen = ", ".join(f"{p} ({c} rows)" for p, c in zip(self.parents, self.counts))
        return f"{self.rank} class {self.child} has parents {seen}"


class TaxonomyConflictError(ValueError):
    """Raised with every conflict found, not just the first."""

    def __init__(self, conflicts: Sequence[Conflict]):
        self.conflicts = tuple(conflicts)
        shown = "\n  ".join(str(c) for c in self.conflicts[:20])
        more = f"\n  ... and {len(self.conflicts) - 20} more" if len(self.conflicts) > 20 else ""
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
    return arr.astype(np.int64, copy=False)


class Taxonomy:
    """A tree of classes over ranks, finest first.

    ``parents[k][c]`` is the class at rank ``k + 1`` of class ``c`` at rank
    ``k`` (the null class maps to null; a class whose parent is never seen
    maps to null too).
    """

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
            checked.append(arr)
        self._parents = tuple(checked)
        self._distance_cache: dict[str, torch.Tensor] = {}

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
            child, parent = arrays[k], arrays[k + 1]
            known = (child != null_index) & (parent != null_index)
            pairs, counts = np.unique(np.stack([child[known], parent[known]], axis=1), axis=0, return_counts=True)
            table = np.full(sizes[names[k]], null_index, dtype=np.int64)
            if pairs.size:
                # pairs are sorted by child then parent; runs of one child with several parents are conflicts
                kids, starts, run = np.unique(pairs[:, 0], return_index=True, return_counts=True)
                for kid, start, length in zip(kids[run > 1], starts[run > 1], run[run > 1]):
                    seg = slice(start, start + length)
                    conflicts.append(Conflict(names[k], int(kid), tuple(int(p) for p in pairs[seg, 1]),
                                              tuple(int(c) for c in counts[seg])))
                # majority parent per child: order by (child, -count) and take each child's first row
                order = np.lexsort((-counts, pairs[:, 0]))
                first = np.unique(pairs[order, 0], return_index=True)[1]
                best = pairs[order][first]
                table[best[:, 0]] = best[:, 1]
            parents.append(table)
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
        """0/1 matrix ``A[k->k+1]`` of shape (K_k, K_{k+1}): row c is one-hot at c's parent."""
        k = self.rank_index(rank)
        table = torch.from_numpy(self.parent_array(k))
        out = torch.zeros(self.num_classes[self.rank_names[k]], self.num_classes[self.rank_names[k + 1]], dtype=dtype)
        out[torch.arange(table.numel()), table] = 1
        return out

    @property
    def parent_matrices(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.parent_matrix(k) for k in range(len(self.rank_names) - 1))

    def ancestors(self, rank: str | int) -> np.ndarray:
        """(K_rank, R - k) array: column m is each class's ancestor m ranks up (column 0 is itself)."""
        k = self.rank_index(rank)
        cols = [np.arange(self.num_classes[self.rank_names[k]], dtype=np.int64)]
        for j in range(k, len(self.rank_names) - 1):
            cols.append(self._parents[j][cols[-1]])
        return np.stack(cols, axis=1)

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
        table = torch.from_numpy(self.ancestors(k)).to(indices.device)
        rows = table[indices.long()]
        return {self.rank_names[k + m]: rows[:, m] for m in range(rows.shape[1])}

    # ------------------------------------------------------------------ distances and smoothing

    def distance_matrix(self, rank: str | int) -> torch.Tensor:
        """(K, K) LCA distance at `rank`: ranks climbed until the two classes share a known ancestor.

        0 on the diagonal, ``R - k`` (one past the coarsest rank) for classes
        with no common known ancestor; the null class is that far from
        everything but itself.
        """
        k = self.rank_index(rank)
        name = self.rank_names[k]
        if name not in self._distance_cache:
            anc = torch.from_numpy(self.ancestors(k))
            levels = anc.shape[1]
            dist = torch.full((anc.shape[0], anc.shape[0]), levels, dtype=torch.long)
            for m in reversed(range(levels)):
                col = anc[:, m]
                shared = (col[:, None] == col[None, :]) & (col[:, None] != self.null_index)
                dist = torch.where(shared, torch.tensor(m), dist)
            dist.fill_diagonal_(0)
            self._distance_cache[name] = dist
        return self._distance_cache[name].clone()

    def smoothing_matrix(self, rank: str | int, alpha: float = 0.1, beta: float = 1.0) -> torch.Tensor:
        """(K, K) row-stochastic matrix M: keep ``1 - alpha`` on the true class and spread ``alpha`` over
        the other real classes with weights ``exp(-beta * d)``; the null row is identity and no real class
        leaks mass onto null. Apply to soft targets as ``targets @ M``.
        """
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if float(beta) < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        dist = self.distance_matrix(rank).double()
        size = dist.shape[0]
        weights = torch.exp(-float(beta) * dist)
        weights.fill_diagonal_(0)
        weights[:, self.null_index] = 0
        totals = weights.sum(dim=1, keepdim=True)
        spread = torch.where(totals > 0, weights / totals.clamp_min(1e-300), torch.zeros_like(weights))
        has_other = totals.squeeze(1) > 0
        keep = torch.where(has_other, torch.tensor(1.0 - float(alpha), dtype=torch.float64), torch.tensor(1.0,
                           dtype=torch.float64))
        matrix = spread * (1.0 - keep)[:, None]
        matrix[torch.arange(size), torch.arange(size)] = keep
        matrix[self.null_index] = 0
        matrix[self.null_index, self.null_index] = 1
        return matrix.float()

    def smooth(self, targets: torch.Tensor, rank: str | int, alpha: float = 0.1, beta: float = 1.0) -> torch.Tensor:
        """Taxonomy-aware smoothing of dense (B, K) soft targets: ``targets @ M`` (never argmax)."""
        k = self.rank_index(rank)
        size = self.num_classes[self.rank_names[k]]
        if targets.ndim != 2 or targets.shape[1] != size or not targets.is_floating_point():
            raise ValueError(
                f"targets must be dense float (B, {size}) for rank {self.rank_names[k]!r}, got shape "
                f"{tuple(targets.shape)} and dtype {targets.dtype}"
            )
        matrix = self.smoothing_matrix(k, alpha, beta).to(device=targets.device, dtype=targets.dtype)
        return targets @ matrix

    def consistency_error(self, targets: Mapping[str, torch.Tensor]) -> float:
        """Largest |targets[k] @ A[k->k+1] - targets[k+1]| over all adjacent dense ranks present in `targets`."""
        worst = 0.0
        for k in range(len(self.rank_names) - 1):
            child, parent = self.rank_names[k], self.rank_names[k + 1]
            if child not in targets or parent not in targets:
                continue
            lifted = targets[child].double() @ self.parent_matrix(k, dtype=torch.float64).to(targets[child].device)
            worst = max(worst, float((lifted - targets[parent].double()).abs().max()))
        return worst

    def __repr__(self) -> str:
        sizes = ", ".join(f"{r}={self.num_classes[r]}" for r in self.rank_names)
        return f"Taxonomy({sizes})"
