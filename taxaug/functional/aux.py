"""Metadata mixing chunk by chunk: each chunk comes whole from one sample, never interpolated."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch

from taxaug.functional._validate import check_generator, check_tensor, describe
from taxaug.functional.random import rand

__all__ = ["aux_chunks_from_components", "check_aux_chunks", "mix_aux_chunkwise"]


def aux_chunks_from_components(components: Sequence[tuple[str, int] | Mapping[str, object]]) -> list[tuple[int, int]]:
    """Chunk bounds from an ordered list of metadata components ``(name, width)`` (or dicts with those keys)."""
    chunks, start = [], 0
    for i, comp in enumerate(components):
        if isinstance(comp, Mapping):
            if "width" not in comp:
                raise ValueError(f"component {i} ({comp!r}) needs a 'width'")
            width = comp["width"]
        else:
            try:
                _, width = comp
            except (TypeError, ValueError):
                raise ValueError(f"component {i} must be (name, width) or a dict, got {comp!r}") from None
        if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
            raise ValueError(f"component {i} ({comp!r}) must have a positive int width, got {width!r}")
        chunks.append((start, start + width))
        start += width
    return chunks


def check_aux_chunks(chunks: Sequence[tuple[int, int]], width: int) -> list[tuple[int, int]]:
    """Chunks as sorted, non-overlapping ``(start, end)`` with ``0 <= start < end <= width``."""
    cleaned = []
    for i, chunk in enumerate(chunks):
        try:
            start, end = (int(v) for v in chunk)
        except (TypeError, ValueError):
            raise ValueError(f"chunks[{i}] must be a (start, end) pair of ints, got {chunk!r}") from None
        if not 0 <= start < end <= width:
            raise ValueError(f"chunks[{i}] = {(start, end)} must satisfy 0 <= start < end <= D = {width}")
        cleaned.append((start, end))
    ordered = sorted(cleaned)
    for (s0, e0), (s1, e1) in itertools.pairwise(ordered):
        if s1 < e0:
            raise ValueError(f"chunks {(s0, e0)} and {(s1, e1)} overlap; each column belongs to one chunk at most")
    return cleaned


def mix_aux_chunkwise(
    aux: torch.Tensor,
    perm: torch.Tensor,
    chunks: Sequence[tuple[int, int]],
    *,
    aux_mask: torch.Tensor | None = None,
    lam: torch.Tensor | float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Take each metadata chunk of sample i whole from i or from ``perm[i]``.

    The pick is a fair coin, or with ``lam`` (float or (B,)) sample i keeps its
    own chunk with probability lam. A chunk invalid on one side (``aux_mask``
    False) comes from the valid side; invalid on both, it stays i's own.
    Columns outside every chunk keep i's values. Returns the new aux and mask
    (None when no mask was given).
    """
    check_tensor(aux, "aux")
    check_generator(generator)
    if aux.ndim != 2 or not aux.is_floating_point():
        raise ValueError(f"aux must be floating (B, D), got {describe(aux)}")
    size, width = aux.shape
    check_tensor(perm, "perm")
    if perm.ndim != 1 or perm.shape[0] != size or perm.dtype != torch.long:
        raise ValueError(f"perm must be long ({size},), got {describe(perm)}")
    chunks = check_aux_chunks(chunks, width)
    n = len(chunks)
    if aux_mask is not None:
        check_tensor(aux_mask, "aux_mask")
        if aux_mask.shape != (size, n) or aux_mask.dtype != torch.bool:
            raise ValueError(f"aux_mask must be bool ({size}, {n}) (one column per chunk), got {describe(aux_mask)}")
    if n == 0:
        return aux.clone(), None if aux_mask is None else aux_mask.clone()
    device = aux.device
    keep_prob = torch.full((size,), 0.5, device=device) if lam is None else torch.as_tensor(
        lam, dtype=torch.float32, device=device).expand(size)
    take_partner = rand((size, n), generator=generator, device=device) >= keep_prob[:, None]
    if aux_mask is not None:
        own_ok, partner_ok = aux_mask, aux_mask[perm]
        take_partner = torch.where(own_ok & partner_ok, take_partner, partner_ok & ~own_ok)
    chunk_of_column = torch.full((width,), n, dtype=torch.long, device=device)
    for j, (start, end) in enumerate(chunks):
        chunk_of_column[start:end] = j
    padded = torch.cat([take_partner, torch.zeros(size, 1, dtype=torch.bool, device=device)], dim=1)
    column_from_partner = padded[:, chunk_of_column]
    mixed = torch.where(column_from_partner, aux[perm], aux)
    new_mask = None if aux_mask is None else torch.where(take_partner, aux_mask[perm], aux_mask)
    return mixed, new_mask
