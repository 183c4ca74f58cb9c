"""Schedules: a value that varies over training (mix probability, smoothing, magnitude).

A schedule maps the current position to a float. Position is read either in
optimizer steps (`end_steps=`, `milestones` with `unit="steps"`) or as the
continuous fraction of training `step / max_steps` (`end_fraction=`,
`unit="fraction"`), never quantised to epochs. Every schedule is a frozen
value with a plain-dict config, so it round-trips through YAML.

    >>> s = Linear(start=1.0, end=0.2, end_fraction=0.5)
    >>> s.value(step=250, max_steps=1000)   # a quarter of training: halfway down the ramp
    0.6
"""

from __future__ import annotations

import bisect
import math
from numbers import Real
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

if TYPE_CHECKING:
    from taxaug.algorithms.state import State

__all__ = ["Constant", "Cosine", "Linear", "Schedule", "Step", "as_schedule", "schedule_from_config"]


def _fraction_of_training(step: float, max_steps: int | None, who: str) -> float:
    if not max_steps:
        raise ValueError(
            f"{who} is defined by a fraction of training, so it needs the run length: set "
            f"State.max_steps (got {max_steps!r}), or define the schedule by steps (end_steps=...)"
        )
    return min(max(step / max_steps, 0.0), 1.0)


def _ramp_position(step: float, max_steps: int | None, end_steps: int | None, end_fraction: float | None,
                   who: str) -> float:
    """How far along a start->end ramp we are, in [0, 1]."""
    if end_steps is not None:
        return 1.0 if end_steps == 0 else min(max(step / end_steps, 0.0), 1.0)
    progress = _fraction_of_training(step, max_steps, who)
    return 1.0 if end_fraction == 0 else min(progress / end_fraction, 1.0)


def _check_real(value: object, name: str) -> float:
    if not isinstance(value, Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _ramp_end_validator(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if attribute.name == "end_steps":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"end_steps must be an int >= 0, got {value!r}")
    else:
        v = _check_real(value, "end_fraction")
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"end_fraction must be in [0, 1], got {value!r}")


class Schedule:
    """Base class: `value(step, max_steps) -> float`; `at(state)` reads the position from a State."""

    kind: ClassVar[str] = ""

    def value(self, step: float, max_steps: int | None = None) -> float:
        raise NotImplementedError

    def at(self, state: State) -> float:
        """The value at the state's current step (fraction schedules use `step / max_steps`)."""
        return self.value(state.step, state.max_steps)

    def bounds(self) -> tuple[float, float]:
        """Smallest and largest value the schedule can take (for range validation)."""
        raise NotImplementedError

    def to_config(self) -> dict[str, Any]:
        """Plain-dict config (YAML/JSON friendly); `schedule_from_config` inverts it."""
        out: dict[str, Any] = {"kind": self.kind}
        for field in attrs.fields(type(self)):  # type: ignore[arg-type]
            v = getattr(self, field.name)
            out[field.name] = list(v) if isinstance(v, tuple) else v
        return out


@attrs.frozen
class Constant(Schedule):
    """The same value throughout training."""

    kind: ClassVar[str] = "constant"
    value_: float = attrs.field(alias="value", converter=float)

    def value(self, step: float, max_steps: int | None = None) -> float:  # type: ignore[override]
        return self.value_

    def bounds(self) -> tuple[float, float]:
        return (self.value_, self.value_)

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value_}

    def __repr__(self) -> str:
        return f"Constant({self.value_!r})"


@attrs.frozen
class Linear(Schedule):
    """`start` at step 0, straight line to `end` at `end_steps` (or `end_fraction` of training), then flat.

    Give exactly one of `end_steps` / `end_fraction`; with neither, the ramp spans all of training.
    """

    kind: ClassVar[str] = "linear"
    start: float = attrs.field(converter=float)
    end: float = attrs.field(converter=float)
    end_steps: int | None = attrs.field(default=None, validator=_ramp_end_validator)
    end_fraction: float | None = attrs.field(default=None, validator=_ramp_end_validator)

    def __attrs_post_init__(self) -> None:
        if self.end_steps is not None and self.end_fraction is not None:
            raise ValueError(
                f"{type(self).__name__}: give end_steps or end_fraction, not both "
                f"(got end_steps={self.end_steps}, end_fraction={self.end_fraction})"
            )
        if self.end_steps is None and self.end_fraction is None:
            object.__setattr__(self, "end_fraction", 1.0)

    def _shape(self, t: float) -> float:
        return t

    def value(self, step: float, max_steps: int | None = None) -> float:
        t = _ramp_position(step, max_steps, self.end_steps, self.end_fraction, repr(self))
        return self.start + (self.end - self.start) * self._shape(t)

    def bounds(self) -> tuple[float, float]:
        return (min(self.start, self.end), max(self.start, self.end))


@attrs.frozen
class Cosine(Linear):
    """Half-cosine from `start` to `end` (slow, fast, slow), over `end_steps` or `end_fraction`, then flat."""

    kind: ClassVar[str] = "cosine"

    def _shape(self, t: float) -> float:
        return 0.5 * (1.0 - math.cos(math.pi * t))


def _milestones_converter(value: Any) -> tuple[float, ...]:
    return tuple(value)


@attrs.frozen
class Step(Schedule):
    """Piecewise constant: `values[i]` from `milestones[i-1]` (inclusive) to `milestones[i]` (exclusive).

    `milestones` are steps (`unit="steps"`) or fractions of training (`unit="fraction"`), strictly
    increasing; `len(values) == len(milestones) + 1`.
    """

    kind: ClassVar[str] = "step"
    values: tuple[float, ...] = attrs.field(converter=lambda v: tuple(float(x) for x in v))
    milestones: tuple[float, ...] = attrs.field(converter=_milestones_converter)
    unit: str = attrs.field(default="steps", validator=attrs.validators.in_(("steps", "fraction")))

    def __attrs_post_init__(self) -> None:
        if len(self.values) != len(self.milestones) + 1:
            raise ValueError(
                f"Step needs one more value than milestones, got {len(self.values)} values "
                f"{list(self.values)} and {len(self.milestones)} milestones {list(self.milestones)}"
            )
        for m in self.milestones:
            _check_real(m, "milestones entry")
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:])):
            raise ValueError(f"Step milestones must be strictly increasing, got {list(self.milestones)}")
        if self.unit == "fraction" and any(not 0.0 <= m <= 1.0 for m in self.milestones):
            raise ValueError(f"Step milestones with unit='fraction' must lie in [0, 1], got {list(self.milestones)}")

    def value(self, step: float, max_steps: int | None = None) -> float:
        pos = step if self.unit == "steps" else _fraction_of_training(step, max_steps, repr(self))
        return self.values[bisect.bisect_right(self.milestones, pos)]

    def bounds(self) -> tuple[float, float]:
        return (min(self.values), max(self.values))


_KINDS: dict[str, type[Schedule]] = {cls.kind: cls for cls in (Constant, Linear, Cosine, Step)}


def schedule_from_config(config: dict[str, Any]) -> Schedule:
    """Build a schedule from `{"kind": "linear", "start": ..., ...}` (see each class for its fields)."""
    if not isinstance(config, dict) or "kind" not in config:
        raise ValueError(
            f"a schedule config must be a dict with a 'kind' key (one of {sorted(_KINDS)}), got {config!r}"
        )
    kind = config["kind"]
    if kind not in _KINDS:
        raise ValueError(f"unknown schedule kind {kind!r}; valid kinds: {sorted(_KINDS)}")
    cls = _KINDS[kind]
    kwargs = {k: v for k, v in config.items() if k != "kind"}
    valid = ["value"] if cls is Constant else [f.name for f in attrs.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for schedule kind {kind!r}; valid: {valid}")
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise TypeError(f"schedule {kind!r}: {err}; valid arguments: {valid}") from err


def as_schedule(spec: Schedule | float | dict[str, Any], name: str, *, low: float | None = None,
                high: float | None = None) -> Schedule:
    """Coerce a number, a config dict or a Schedule to a Schedule whose values lie in [low, high]."""
    if isinstance(spec, Schedule):
        schedule = spec
    elif isinstance(spec, dict):
        schedule = schedule_from_config(spec)
    elif isinstance(spec, Real) and not isinstance(spec, bool):
        schedule = Constant(_check_real(spec, name))
    else:
        raise TypeError(f"{name} must be a number, a schedule config dict or a Schedule, got {spec!r}")
    lo, hi = schedule.bounds()
    if (low is not None and lo < low) or (high is not None and hi > high):
        raise ValueError(f"{name} must stay within [{low}, {high}], but {schedule!r} reaches [{lo}, {hi}]")
    return schedule
