"""A dependency-free progress line on stderr for the data tools."""

from __future__ import annotations

import sys
import threading
import time


class Progress:
    """``label: done/total (pct) rate it/s`` redrawn in place at most every 0.2 s; silent when disabled."""

    def __init__(self, total: int, label: str, *, enabled: bool | None = None, stream=None):
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0
        self._start = time.perf_counter()
        self._last = 0.0
        self._lock = threading.Lock()
        self._drawn = -1

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            now = time.perf_counter()
            if self.enabled and (now - self._last >= 0.2 or self.done >= self.total):
                self._last = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        self._drawn = self.done
        rate = self.done / max(now - self._start, 1e-9)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        self.stream.write(f"\r{self.label}: {self.done}/{self.total} ({pct:.1f}%) {rate:.1f} it/s")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            if self._drawn != self.done:
                self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()
