"""Hypothesis strategies shared by the functional-core tests: random trees and valid-lineage batches."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

from taxaug.taxonomy import Taxonomy

RANKS = ("taxa_L10", "taxa_L20", "taxa_L30")


@st.composite
def trees(draw) -> Taxonomy:
    """A 3-rank tree: families > genera > species, contiguous indices with 0 = null."""
    families = draw(st.integers(1, 3))
    genus_parent, species_parent = [0], [0]
    for family in range(1, families + 1):
        for _ in range(draw(st.integers(1, 3))):
            genus_parent.append(family)
            genus = len(genus_parent) - 1
            for _ in range(draw(st.integers(1, 3))):
                species_parent.append(genus)
    sizes = {RANKS[0]: len(species_parent), RANKS[1]: len(genus_parent), RANKS[2]: families + 1}
    return Taxonomy.from_parents(RANKS, sizes, [np.array(species_parent), np.array(genus_parent)])


@st.composite
def lineage_batches(draw, max_batch: int = 12, null_ratio: bool = False):
    """(taxonomy, index targets dict) for a batch of valid lineages (optionally some all-null rows)."""
    taxonomy = draw(trees())
    size = draw(st.integers(2, max_batch))
    n_species = taxonomy.num_classes[RANKS[0]]
    species = draw(st.lists(st.integers(1, n_species - 1), min_size=size, max_size=size))
    if null_ratio:
        nulls = draw(st.lists(st.booleans(), min_size=size, max_size=size))
        species = [0 if n else s for s, n in zip(species, nulls)]
    targets = taxonomy.expand(RANKS[0], torch.tensor(species))
    return taxonomy, targets


def images_for(size: int, dtype: torch.dtype, seed: int, channels_last: bool = False, hw=(9, 11)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(size, 3, *hw, generator=g)
    if dtype == torch.uint8:
        x = (x * 255).round().to(torch.uint8)
    else:
        x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@st.composite
def ragged_trees(draw, max_ranks: int = 5, max_classes: int = 9) -> Taxonomy:
    """A 1..`max_ranks`-rank tree with the awkward shapes: unbalanced fan-out, single-child chains, classes
    whose parent is unknown (null), parents with no child, classes with no relative at all."""
    num_ranks = draw(st.integers(1, max_ranks))
    names = [f"r{i}" for i in range(num_ranks)]
    sizes = [draw(st.integers(1, max_classes)) for _ in range(num_ranks)]  # including the null class 0
    parents = []
    for k in range(num_ranks - 1):
        # each real class picks any parent, null included; the null class stays null
        picks = draw(st.lists(st.integers(0, sizes[k + 1] - 1), min_size=sizes[k] - 1, max_size=sizes[k] - 1))
        parents.append(np.array([0, *picks], dtype=np.int64))
    return Taxonomy(names, dict(zip(names, sizes)), parents)


@st.composite
def soft_rows(draw, size: int, max_batch: int = 5, min_batch: int = 1) -> torch.Tensor:
    """(B, size) float64 rows of non-negative weights summing to 1 (some one-hot, some null, some mixed)."""
    batch = draw(st.integers(min_batch, max_batch))
    raw = draw(st.lists(st.lists(st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0, 3.0]), min_size=size, max_size=size),
                        min_size=batch, max_size=batch))
    rows = torch.tensor(raw, dtype=torch.float64)
    rows[rows.sum(1) == 0, 0] = 1.0
    return rows / rows.sum(1, keepdim=True)
