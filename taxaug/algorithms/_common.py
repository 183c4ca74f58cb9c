"""Helpers shared by the algorithm families: argument validation and batch access."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real
from typing import Any

from taxaug.algorithms.state import State


def check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_int(value: object, name: str, *, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else (f"<= {high}" if low is None else f"in [{low}, {high}]")
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


def check_real(value: object, name: str, *, low: float | None = None, high: float | None = None,
               low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    if low is not None and (v <= low if low_open else v < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {v}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be <= {high}, got {v}")
    return v


def check_pair(value: object, name: str, *, low: float, high: float | None = None) -> tuple[float, float]:
    """A (lo, hi) pair with low <= lo <= hi (<= high)."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise TypeError(f"{name} must be a (low, high) pair, got {value!r}")
    lo, hi = (check_real(v, f"{name} entry") for v in value)
    if not (low <= lo <= hi and (high is None or hi <= high)):
        upper = "" if high is None else f" <= {high}"
        raise ValueError(f"{name} must satisfy {low} <= low <= high{upper}, got {list(value)}")
    return lo, hi


def check_str_list(value: object, name: str, *, allow_none: bool = False) -> list[str] | None:
    if value is None and allow_none:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Sequence) or not value or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{name} must be a task name or a non-empty list of task names, got {value!r}")
    return list(value)


def check_choice(value: object, name: str, choices: Sequence[Any]) -> Any:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def training_batch(state: State, who: str):
    """state.batch as a MixBatch, or a clear error."""
    from taxaug.functional.batch import MixBatch

    batch = state.batch
    if not isinstance(batch, MixBatch):
        raise TypeError(
            f"{who}: state.batch must be a taxaug.MixBatch before AFTER_DATALOADER, got {type(batch).__name__}; "
            f"set state.batch = MixBatch(images, targets, aux, aux_mask)"
        )
    return batch
