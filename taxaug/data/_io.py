"""Reads with a timeout: a bounded pool of daemon reader threads, shared by every dataset of a process.

A blocking read (a FIFO with no writer, a dead network mount) cannot be interrupted from Python, so
a read with a timeout runs on a reader thread while the caller waits at most ``timeout`` seconds.
What bounds the threads:

- at most :data:`MAX_READ_THREADS` reader threads exist per process, hung ones included; when all
  of them hang, further reads wait in the queue and time out as well (they never start a thread);
- a key (a file) whose read timed out is not read again while that read is still blocked: the next
  read of it fails at once, so a hung file costs one thread, not one per epoch;
- reader threads are daemons, so a hung read never keeps the process from exiting; after ``fork``
  the child starts with an empty pool.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_READ_THREADS", "ReadTimeout", "call_with_timeout", "check_read_timeout", "reader_threads"]

#: most reader threads one process holds (idle, busy and hung together)
MAX_READ_THREADS = 32


def check_read_timeout(value: object) -> float | None:
    """`value` as seconds one read may take (None: no limit), or a one-line error naming ``read_timeout``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"read_timeout must be a positive number of seconds or None (no limit), got {value!r}")
    return float(value)


class ReadTimeout(OSError):
    """A read did not return within its timeout (or an earlier read of the same file is still blocked)."""


class _Task:
    """One read: run by a reader thread, its outcome handed back through a one-slot queue."""

    __slots__ = ("cancelled", "fn", "result")

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn
        self.result: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self.cancelled = False

    def run(self) -> None:
        if self.cancelled:  # timed out while queued: never start it
            self.result.put((False, None))
            return
        try:
            outcome = (True, self.fn())
        except BaseException as exc:
            outcome = (False, exc)
        self.fn = None  # type: ignore[assignment]
        self.result.put(outcome)

    def finished(self) -> bool:
        return self.fn is None or not self.result.empty()


class _ReadPool:
    """Daemon threads taking read tasks from one queue; grows on demand up to ``max_threads``."""

    def __init__(self, max_threads: int):
        self.max_threads = max_threads
        self._lock = threading.Lock()
        self._tasks: queue.SimpleQueue[_Task] = queue.SimpleQueue()
        self._threads = 0
        self._idle = 0
        self._hung: dict[str, _Task] = {}

    def _worker(self) -> None:
        while True:
            task = self._tasks.get()
            task.run()
            with self._lock:
                self._idle += 1

    def _submit(self, task: _Task) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
            elif self._threads < self.max_threads:
                self._threads += 1
                threading.Thread(target=self._worker, name="taxaug-read", daemon=True).start()
        self._tasks.put(task)

    def call(self, key: str, fn: Callable[[], Any], timeout: float) -> Any:
        if self._hung:  # only after a timeout: the common path takes no lock here
            with self._lock:
                earlier = self._hung.get(key)
                if earlier is not None and not earlier.finished():
                    raise ReadTimeout(f"timed out after {timeout:g} s (an earlier read of it is still blocked)")
                self._hung.pop(key, None)
        task = _Task(fn)
        self._submit(task)
        try:
            ok, value = task.result.get(timeout=timeout)
        except queue.Empty:
            task.cancelled = True
            with self._lock:
                self._hung[key] = task
            raise ReadTimeout(f"timed out after {timeout:g} s") from None
        if not ok:
            raise value
        return value

    def threads(self) -> int:
        with self._lock:
            return self._threads


_pool = _ReadPool(MAX_READ_THREADS)


def _reset_after_fork() -> None:
    global _pool
    _pool = _ReadPool(MAX_READ_THREADS)


os.register_at_fork(after_in_child=_reset_after_fork)


def call_with_timeout(key: str, fn: Callable[[], Any], timeout: float | None) -> Any:
    """``fn()`` run on a reader thread, waiting at most `timeout` seconds (None: run it here, no limit).

    `key` names what is read (a path); raises :class:`ReadTimeout` past the timeout, and at once
    while an earlier timed-out read of the same key is still blocked. Exceptions of `fn` propagate.
    """
    if timeout is None:
        return fn()
    return _pool.call(key, fn, timeout)


def reader_threads() -> int:
    """Reader threads this process has started (at most :data:`MAX_READ_THREADS`)."""
    return _pool.threads()
