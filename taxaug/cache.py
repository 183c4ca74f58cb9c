"""A thread-safe LRU cache bounded by the real size of what it holds (the loader's decoded images, the
taxonomy's derived tables)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np
import torch

__all__ = ["LRUCache", "nbytes"]


def nbytes(value: object) -> int:
    """Bytes of payload held by `value`: buffer lengths, array/tensor storage, summed over tuples/lists
    (numbers in them count 0).

    Raises ``TypeError`` for anything else rather than guessing (``sys.getsizeof`` would count a
    container's header, not its data).
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value) if not isinstance(value, memoryview) else value.nbytes
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, torch.Tensor):
        return int(value.numel() * value.element_size())
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    if isinstance(value, (int, float)):  # a number beside arrays in a tuple: no buffer of its own
        return 0
    raise TypeError(f"cannot measure a {type(value).__name__}; cache bytes, arrays, tensors or tuples of them")


class LRUCache:
    """Least-recently-used cache holding at most ``max_bytes`` of payload (see :func:`nbytes`).

    An item larger than the whole cache is not stored. Counters ``hits``, ``misses``, ``evictions``
    are cumulative; :meth:`stats` reads them with the current size.
    """

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.size_bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: Hashable) -> object | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: object) -> bool:
        """Store `value`; returns False when it is larger than the cache and was not stored."""
        size = nbytes(value)
        if size > self.max_bytes:
            return False
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.size_bytes -= old[1]
            while self._items and self.size_bytes + size > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self.size_bytes -= evicted
                self.evictions += 1
            self._items[key] = (value, size)
            self.size_bytes += size
            return True

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.size_bytes = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                    "size_bytes": self.size_bytes, "max_bytes": self.max_bytes, "items": len(self._items)}

    def __getstate__(self) -> dict[str, int]:
        """Pickles as an empty cache of the same bound (what it holds is rebuilt on demand; a lock cannot
        travel), so objects holding one go to spawned workers and into checkpoints."""
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(state["max_bytes"])
