"""Ctrl-C (or SIGTERM) that ends training at a step boundary with a checkpoint, instead of losing the
work since the last one.

The first SIGINT or SIGTERM (what a scheduler sends before it preempts a job, and what torchrun
sends its workers) only sets a flag: the loop finishes its step, saves, and stops. A second one
raises ``KeyboardInterrupt`` at once. In a distributed run every process checks the
flag with the others after each step (``any_requested``), so all stop after the same step.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from taxaug_train.distributed import all_reduce_min

log = logging.getLogger("taxaug_train")


class GracefulInterrupt:
    """Context manager: while active, Ctrl-C asks for a stop instead of raising."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s: finishing this step, then saving a checkpoint (send it again to stop now)",
                    signal.Signals(signum).name)

    def any_requested(self) -> bool:
        """Whether any process was interrupted (one small all-reduce when distributed)."""
        return all_reduce_min(0 if self.requested else 1) == 0
