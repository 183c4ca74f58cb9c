"""Training-loop events, in the order a loop fires them.

Algorithms run in list order on every event except the AFTER_ partners of a
BEFORE_ event (AFTER_FORWARD, AFTER_LOSS, AFTER_BACKWARD), where they run in
reverse so that wrappers nest: the first algorithm to touch the forward pass
is the last to see its result. AFTER_DATALOADER is *not* reversed: it has no
BEFORE_ partner that an algorithm could have wrapped.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["EVAL_EVENTS", "REVERSED_EVENTS", "Event"]


class Event(str, Enum):
    """A point in the training loop at which algorithms may run (values are lower-case names)."""

    INIT = "init"
    FIT_START = "fit_start"
    EPOCH_START = "epoch_start"
    BEFORE_DATALOADER = "before_dataloader"
    AFTER_DATALOADER = "after_dataloader"
    BATCH_START = "batch_start"
    BEFORE_FORWARD = "before_forward"
    AFTER_FORWARD = "after_forward"
    BEFORE_LOSS = "before_loss"
    AFTER_LOSS = "after_loss"
    BEFORE_BACKWARD = "before_backward"
    AFTER_BACKWARD = "after_backward"
    BATCH_END = "batch_end"
    EPOCH_END = "epoch_end"
    EVAL_START = "eval_start"
    EVAL_BATCH_START = "eval_batch_start"
    EVAL_BATCH_END = "eval_batch_end"
    EVAL_END = "eval_end"
    FIT_END = "fit_end"

    @property
    def runs_reversed(self) -> bool:
        """True for the AFTER_ partners of BEFORE_ events, where algorithms run in reverse list order."""
        return self in REVERSED_EVENTS

    @property
    def is_eval(self) -> bool:
        """True for the evaluation events; training augmentations never match these."""
        return self in EVAL_EVENTS

    def __str__(self) -> str:
        return self.value


REVERSED_EVENTS: frozenset[Event] = frozenset({Event.AFTER_FORWARD, Event.AFTER_LOSS, Event.AFTER_BACKWARD})
EVAL_EVENTS: frozenset[Event] = frozenset(
    {Event.EVAL_START, Event.EVAL_BATCH_START, Event.EVAL_BATCH_END, Event.EVAL_END}
)
