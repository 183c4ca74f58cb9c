"""A dependency-free progress line on stderr (the data tools; the trainer when stderr is not a terminal)."""

from __future__ import annotations

import sys
import threading
import time


def is_tty(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed stream
        return False


class Progress:
    """``label: done/total (pct) rate unit/s, eta, postfix``; silent when disabled.

    On a terminal the line is redrawn in place (``\\r``) at most every 0.2 s. Anywhere else (a log
    file, a pipe) it is written as a whole line at most every `interval` seconds (default 30) and
    once at the end, so a log gets one readable line per interval and nothing else glues to it.
    """

    def __init__(self, total: int, label: str, *, enabled: bool | None = None, stream=None, initial: int = 0,
                 unit: str = "it", interval: float | None = None):
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = is_tty(self.stream)
        self.enabled = self.tty if enabled is None else enabled
        self.interval = interval if interval is not None else (0.2 if self.tty else 30.0)
        self.unit = unit
        self.initial = self.done = initial
        self.postfix = ""
        self._start = time.perf_counter()
        self._last = self._start
        self._lock = threading.Lock()
        self._drawn = initial

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            now = time.perf_counter()
            if self.enabled and (now - self._last >= self.interval or (self.tty and self.done >= self.total)):
                self._last = now
                self._draw(now)

    def set_postfix(self, **values: object) -> None:
        """Values shown after the rate (``loss 0.123, img_s 456``), as tqdm's ``set_postfix``."""
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def line(self, now: float | None = None) -> str:
        now = time.perf_counter() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        rate = (self.done - self.initial) / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = f"{self.label}: {self.done}/{self.total} ({pct:.1f}%) {rate:.1f} {self.unit}/s"
        if rate > 0 and self.done < self.total:
            left = int((self.total - self.done) / rate)
            text += f", eta {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
        return text + (f", {self.postfix}" if self.postfix else "")

    def _draw(self, now: float) -> None:
        self._drawn = self.done
        if self.tty:
            self.stream.write(f"\r{self.line(now)}\x1b[K")
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            if self._drawn != self.done or (self.tty and self.done == self.initial):
                self._draw(time.perf_counter())
            if self.tty:
                self.stream.write("\n")
            self.stream.flush()
