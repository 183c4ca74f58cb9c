"""Deterministic train/validation splits by ratio and seed, optionally stratified."""

from __future__ import annotations

import numpy as np

__all__ = ["split_indices"]


def split_indices(
    num_rows: int,
    val_ratio: float,
    *,
    seed: int = 0,
    stratify: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) position arrays partitioning ``range(num_rows)``.

    The same (num_rows, val_ratio, seed, stratify) always gives the same split. With ``stratify``
    (one label per row), each label's rows are split separately, so every label keeps about
    ``val_ratio`` of its rows in validation (a label with a single row stays in train).
    """
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5E11]))
    if stratify is None:
        order = rng.permutation(num_rows)
        n_val = round(val_ratio * num_rows)
        val = order[:n_val]
    else:
        labels = np.asarray(stratify)
        if labels.shape != (num_rows,):
            raise ValueError(f"stratify must have shape ({num_rows},), got {labels.shape}")
        order = rng.permutation(num_rows)
        shuffled = labels[order]
        # stable sort keeps the random order inside each label
        by_label = order[np.argsort(shuffled, kind="stable")]
        _, starts, counts = np.unique(labels[by_label], return_index=True, return_counts=True)
        n_val = np.floor(val_ratio * counts + rng.random(counts.shape[0])).astype(np.int64)
        n_val = np.minimum(n_val, counts - 1)  # every label keeps a training row
        take = np.concatenate([by_label[s:s + k] for s, k in zip(starts, n_val)]) if counts.size else []
        val = np.asarray(take, dtype=np.int64)
    is_val = np.zeros(num_rows, dtype=bool)
    is_val[val] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
