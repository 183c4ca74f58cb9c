"""Batch-sized CPU buffers that are reused once the tensors made from them are gone.

A new batch-sized tensor on CPU is fresh memory: glibc maps every block over
32 MiB on its own and unmaps it on free, so each call pays a page fault per
4 KiB on first write. For a 38 MB batch that is 3-4x the cost of copying it,
more than most image ops (torchvision's per-image loops never see this: their
small tensors are recycled by malloc). Here large outputs come from a small
cache instead, a CPU cousin of torch's CUDA caching allocator: a buffer goes
back to the cache when the last tensor viewing its storage is freed, and the
next request of the same size takes it without a fault.

The cache holds at most ``TAXAUG_BUFFER_CACHE_MB`` (default 1024) of free
buffers; ``TAXAUG_BUFFER_CACHE_MB=0`` turns it off. :func:`release_cached`
frees what it holds. Tensors from here are ordinary CPU tensors, except that
their storage cannot be resized (as with ``torch.from_numpy``).
"""

from __future__ import annotations

import math
import os
import threading
import weakref

import numpy as np
import torch

__all__ = ["cached_bytes", "clone", "empty", "empty_like", "release_cached"]

_MIN_BYTES = 2**20  # below this the pages are few; malloc's own recycling is good enough
_ALIGN = 64
_MAX_CACHED = int(float(os.environ.get("TAXAUG_BUFFER_CACHE_MB", "1024")) * 2**20)

_lock = threading.RLock()
_free: dict[int, list[np.ndarray]] = {}
_cached = 0


def _take(nbytes: int) -> np.ndarray:
    global _cached
    with _lock:
        bucket = _free.get(nbytes)
        if bucket:
            _cached -= nbytes
            return bucket.pop()
    return np.empty(nbytes + _ALIGN, dtype=np.uint8)


def _give_back(nbytes: int, base: np.ndarray) -> None:
    """Called when the last tensor on `base` is gone."""
    global _cached
    with _lock:
        if _cached + nbytes <= _MAX_CACHED:
            _free.setdefault(nbytes, []).append(base)
            _cached += nbytes


def release_cached() -> int:
    """Free every cached buffer now; returns the bytes released."""
    global _cached
    with _lock:
        released, _cached = _cached, 0
        _free.clear()
    return released


def cached_bytes() -> int:
    """Bytes held in free buffers, waiting for reuse."""
    return _cached


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _layout(x: torch.Tensor, dtype: torch.dtype | None, memory_format: torch.memory_format) -> tuple[tuple, tuple]:
    """The (shape, strides) ``torch.empty_like`` gives, without its slow meta-tensor call in the common cases."""
    shape = tuple(x.shape)
    if memory_format == torch.contiguous_format:
        return shape, _contiguous_strides(shape)
    if memory_format == torch.preserve_format and (
            x.is_contiguous() or (x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last))):
        return shape, tuple(x.stride())  # dense: preserve_format keeps the strides as they are
    layout = torch.empty_like(x, dtype=dtype, memory_format=memory_format, device="meta")
    return shape, tuple(layout.stride())


def _from_cache(nbytes: int, dtype: torch.dtype, shape: tuple, strides: tuple) -> torch.Tensor:
    base = _take(nbytes)
    offset = -base.ctypes.data % _ALIGN
    window = base[offset : offset + nbytes]  # the storage keeps this view alive, and only this
    weakref.finalize(window, _give_back, nbytes, base)
    return torch.from_numpy(window).view(dtype).as_strided(shape, strides)


def empty_like(
    x: torch.Tensor, *, dtype: torch.dtype | None = None, memory_format: torch.memory_format = torch.preserve_format,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``torch.empty_like``, from the buffer cache for large CPU tensors."""
    device = x.device if device is None else torch.device(device)
    dtype = x.dtype if dtype is None else dtype
    nbytes = x.numel() * dtype.itemsize
    if device.type != "cpu" or _MAX_CACHED <= 0 or nbytes < _MIN_BYTES or x.layout != torch.strided:
        return torch.empty_like(x, dtype=dtype, memory_format=memory_format, device=device)
    return _from_cache(nbytes, dtype, *_layout(x, dtype, memory_format))


def empty(shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """``torch.empty`` (contiguous), from the buffer cache for large CPU tensors."""
    device = torch.device(device)
    shape = tuple(shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if device.type != "cpu" or _MAX_CACHED <= 0 or nbytes < _MIN_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    return _from_cache(nbytes, dtype, shape, _contiguous_strides(shape))


def clone(x: torch.Tensor, *, memory_format: torch.memory_format = torch.preserve_format) -> torch.Tensor:
    """``x.clone()`` into a buffer from :func:`empty_like`."""
    return empty_like(x, memory_format=memory_format).copy_(x)
