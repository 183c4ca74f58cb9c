"""Engine: runs algorithms on training-loop events, in the DESIGN.md order, and keeps a trace.

Algorithms run in list order, except on AFTER_FORWARD, AFTER_LOSS and
AFTER_BACKWARD where they run in reverse so that wrappers nest. Every
`apply` is recorded in `Engine.trace` (step, epoch, event, algorithm key,
seconds); `match` calls are not, so the cost of an event nobody handles stays
at one method call per algorithm.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from taxaug.algorithms.base import Algorithm
from taxaug.algorithms.events import REVERSED_EVENTS, Event
from taxaug.algorithms.state import State

__all__ = ["RANK_SEED_STRIDE", "Engine", "TraceEntry"]

log = logging.getLogger(__name__)

#: Process `rank` of a distributed run seeds its engine with ``seed + RANK_SEED_STRIDE * rank``
#: (taxaug-train and the Lightning callback alike), so ranks draw different augmentations.
RANK_SEED_STRIDE = 100_003


class TraceEntry(NamedTuple):
    """One `apply` call: when (step, epoch, event), who (algorithm key) and how long it took.

    A named tuple because one is built per apply on the hot path.
    """

    step: int
    epoch: int
    event: Event
    key: str
    seconds: float

    def __str__(self) -> str:
        return f"step {self.step} epoch {self.epoch} {self.event.value}: {self.key} ({self.seconds * 1e3:.3f} ms)"


class Engine:
    """Drive a list of algorithms from a training loop.

    Args:
        algorithms: Algorithm instances, in the order they run.
        seed: run seed; algorithm i gets key `"{i}.{name}"` and a generator seeded from (seed, i).
        trace_size: how many trace entries to keep (oldest dropped first); 0 disables the trace.
        generator_device: where the algorithms' generators live: "cpu" (default; the same draws on any
            batch device) or "cuda" (large per-pixel draws stay on the GPU).
    """

    def __init__(self, algorithms: Iterable[Algorithm] = (), *, seed: int = 0, trace_size: int = 10_000,
                 generator_device: torch.device | str = "cpu") -> None:
        algorithms = list(algorithms)
        for i, a in enumerate(algorithms):
            if not isinstance(a, Algorithm):
                raise TypeError(
                    f"algorithms[{i}] must be a taxaug Algorithm instance, got {type(a).__name__} {a!r}; "
                    f"build one with taxaug.algorithms.create(name, **kwargs)"
                )
        if len({id(a) for a in algorithms}) != len(algorithms):
            raise ValueError("the same algorithm instance appears twice; create one instance per list entry")
        self.seed = int(seed)
        self.algorithms: tuple[Algorithm, ...] = tuple(algorithms)
        for i, a in enumerate(self.algorithms):
            a.bind(run_seed=self.seed, index=i, generator_device=generator_device)
        self._reversed = tuple(reversed(self.algorithms))
        self.trace: collections.deque[TraceEntry] = collections.deque(maxlen=trace_size)
        self._tracing = trace_size > 0

    def order(self, event: Event) -> tuple[Algorithm, ...]:
        """The order algorithms are offered `event` in."""
        return self._reversed if event in REVERSED_EVENTS else self.algorithms

    def run(self, event: Event, state: State) -> list[str]:
        """Offer `event` to every algorithm; apply those that match. Returns the keys that ran, in order."""
        if type(event) is not Event:
            event = Event(event)
        ran: list[str] = []
        for algorithm in self._reversed if event in REVERSED_EVENTS else self.algorithms:
            if algorithm.match(event, state):
                start = time.perf_counter()
                try:
                    algorithm.apply(event, state)
                except Exception as err:
                    if hasattr(err, "add_note"):  # Python >= 3.11
                        err.add_note(f"raised by algorithm {algorithm.key} on {event.name} at step {state.step}")
                    raise
                seconds = time.perf_counter() - start
                ran.append(algorithm.key)
                if self._tracing:
                    self.trace.append(TraceEntry(state.step, state.epoch, event, algorithm.key, seconds))
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("step %d %s: %s (%.3f ms)", state.step, event.value, algorithm.key, seconds * 1e3)
        return ran

    def loader_transforms(self) -> list[Any]:
        """`batch_transform` callables of algorithms configured to run loader-side (`where="loader"`)."""
        return [a.batch_transform for a in self.algorithms if getattr(a, "where", None) == "loader"]

    def loader_transform(self) -> Callable[[Any], Any] | None:
        """One `MixBatch -> MixBatch` callable running every loader-side transform in list order, or None.

        Pass it as the data loader's `batch_transform`; it runs in the loader's assembly thread.
        """
        transforms = self.loader_transforms()
        if not transforms:
            return None

        def run_all(batch: Any) -> Any:
            for transform in transforms:
                batch = transform(batch)
            return batch

        return run_all

    def summary(self) -> str:
        """One line per (event, algorithm) in the trace: calls and total milliseconds."""
        totals: dict[tuple[str, str], list[float]] = {}
        for e in self.trace:
            totals.setdefault((e.event.value, e.key), []).append(e.seconds)
        lines = [f"{event:<18} {key:<28} {len(s):>6} calls {sum(s) * 1e3:10.3f} ms"
                 for (event, key), s in totals.items()]
        return "\n".join(lines)

    # --- checkpointing --------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """`{"seed": ..., "algorithms": {key: algorithm.state_dict()}}`, keyed by instance, not class."""
        return {"seed": self.seed, "algorithms": {a.key: a.state_dict() for a in self.algorithms}}

    def load_state_dict(self, state_dict: Mapping[str, Any], *, strict: bool = True) -> None:
        """Restore every algorithm; with `strict`, the checkpoint must hold exactly this engine's keys."""
        saved: Mapping[str, Any] = state_dict["algorithms"]
        mine = {a.key: a for a in self.algorithms}
        missing, unexpected = sorted(set(mine) - set(saved)), sorted(set(saved) - set(mine))
        if strict and (missing or unexpected):
            raise KeyError(
                f"engine checkpoint does not match the algorithm list: missing {missing}, unexpected {unexpected}; "
                f"keys are '<index>.<name>', so build the engine with the same algorithms in the same order"
            )
        for key, algorithm in mine.items():
            if key in saved:
                algorithm.load_state_dict(saved[key], strict=strict)

    def __repr__(self) -> str:
        inner = ", ".join(repr(a) for a in self.algorithms)
        return f"Engine([{inner}], seed={self.seed})"

    def __len__(self) -> int:
        return len(self.algorithms)

    def __getitem__(self, index: int) -> Algorithm:
        return self.algorithms[index]

    @property
    def keys(self) -> Sequence[str]:
        return [a.key for a in self.algorithms]
