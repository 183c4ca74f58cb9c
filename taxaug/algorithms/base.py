"""Algorithm: a stateful, resumable piece of training-loop behaviour.

An algorithm says on which events it acts (`match`) and what it does
(`apply`). It owns a `torch.Generator` seeded from the run seed and its
position in the engine, so two instances of one class draw different numbers
and checkpoint under different keys. Its constructor arguments are recorded
automatically as its config, which `to_config` / `from_config` round-trip and
which `state_dict` carries beside the generator state and the last schedule
position seen.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from taxaug.algorithms.events import Event
from taxaug.algorithms.schedules import Schedule
from taxaug.algorithms.state import State

__all__ = ["Algorithm", "derive_seed"]

_MASK64 = (1 << 64) - 1


def derive_seed(run_seed: int, index: int) -> int:
    """A well-spread 63-bit seed from (run seed, instance index) via two splitmix64 rounds."""
    x = (int(run_seed) * 0x9E3779B97F4A7C15 + int(index) + 1) & _MASK64
    for _ in range(2):
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        x = z ^ (z >> 31)
    return x & ((1 << 63) - 1)


def config_value(value: Any) -> Any:
    """A constructor argument as a plain YAML/JSON-friendly value (schedules become dicts, tuples lists)."""
    if isinstance(value, Schedule):
        return value.to_config()
    if isinstance(value, (list, tuple)):
        return [config_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): config_value(v) for k, v in value.items()}
    return value


class Algorithm:
    """Base class for algorithms run by an `Engine`.

    Subclasses take keyword-only constructor arguments (they become the config), set `events`
    (the events the default `match` accepts) and implement `apply`. They draw every random number
    from `self.generator`. Training augmentations never match an eval event or a State with
    `training=False`.
    """

    name: ClassVar[str] = ""  # registry name, set by @register
    events: ClassVar[frozenset[Event]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        original = cls.__dict__["__init__"]
        signature = inspect.signature(original)
        for p in signature.parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"{cls.__name__}.__init__ must take explicit keyword arguments, not *args/**kwargs")

        @functools.wraps(original)
        def __init__(self: Algorithm, *args: Any, **kw: Any) -> None:
            original(self, *args, **kw)
            if type(self).__init__ is __init__:  # record once, for the most-derived constructor
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                self._init_args = {k: v for k, v in bound.arguments.items() if k != "self"}

        cls.__init__ = __init__  # type: ignore[method-assign]

    def __init__(self) -> None:
        self.generator = torch.Generator()
        self.run_seed = 0
        self.index = 0
        self.key = self.name or type(self).__name__
        self.generator.manual_seed(derive_seed(0, 0))
        self.calls = 0  # apply() calls
        self.last_step: int | None = None
        self.last_progress: float | None = None
        self.last_epoch: int | None = None
        self._init_args: dict[str, Any] = {}

    # --- identity -------------------------------------------------------------------------

    def bind(self, *, run_seed: int, index: int, generator_device: torch.device | str = "cpu") -> None:
        """Give the algorithm its place in a run: key `"{index}.{name}"` and a generator seeded from both.

        The generator lives on the CPU by default: draws are then identical whatever device the batch
        is on. `generator_device="cuda"` keeps large per-pixel draws (noise fills, AugMix weights) on
        the GPU instead of copying them over, at the price of device-dependent streams.
        """
        self.run_seed = int(run_seed)
        self.index = int(index)
        self.key = f"{self.index}.{self.name or type(self).__name__}"
        device = torch.device(generator_device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if self.generator.device != device:
            self.generator = torch.Generator(device=device)
        self.generator.manual_seed(derive_seed(self.run_seed, self.index))

    def config(self) -> dict[str, Any]:
        """Constructor arguments as plain values (what `to_config` writes after the name)."""
        return {k: config_value(v) for k, v in self._init_args.items()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    # --- behaviour ------------------------------------------------------------------------

    def match(self, event: Event, state: State) -> bool:
        """Whether `apply` should run on this event. Default: the event is in `events`, and outside
        evaluation unless the event itself is an eval event."""
        return event in self.events and (state.training or event.is_eval)

    def apply(self, event: Event, state: State) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement apply(event, state)")

    def _note_position(self, state: State) -> None:
        """Record the schedule position seen (saved in state_dict, useful when inspecting a resumed run)."""
        self.calls += 1
        self.last_step = int(state.step)
        self.last_progress = state.progress
        self.last_epoch = int(state.epoch)

    # --- checkpointing --------------------------------------------------------------------

    def extra_state(self) -> dict[str, Any]:
        """Subclass hook: more state to checkpoint (tensors or plain values)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Subclass hook: restore what `extra_state` returned."""

    def state_dict(self) -> dict[str, Any]:
        """Config, generator state, schedule position and counters; `load_state_dict` restores them."""
        return {
            "name": self.name,
            "config": self.config(),
            "run_seed": self.run_seed,
            "index": self.index,
            "generator": self.generator.get_state().clone(),
            "generator_device": str(self.generator.device),
            "position": {"step": self.last_step, "progress": self.last_progress, "epoch": self.last_epoch},
            "calls": self.calls,
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any], *, strict: bool = True) -> None:
        """Restore from `state_dict()`. With `strict`, the saved name and config must match this instance."""
        missing = [k for k in ("name", "config", "generator") if k not in state_dict]
        if missing:
            raise KeyError(f"{self.key}: state dict lacks {missing}; was it written by Algorithm.state_dict()?")
        if strict:
            if state_dict["name"] != self.name:
                raise ValueError(
                    f"{self.key}: checkpoint holds algorithm {state_dict['name']!r}, this is {self.name!r}"
                )
            saved, mine = state_dict["config"], self.config()
            diff = sorted(k for k in set(saved) | set(mine) if saved.get(k, "<absent>") != mine.get(k, "<absent>"))
            if diff:
                detail = ", ".join(f"{k}: saved {saved.get(k, '<absent>')!r} vs now {mine.get(k, '<absent>')!r}"
                                   for k in diff)
                raise ValueError(
                    f"{self.key}: checkpoint config differs ({detail}); rebuild the algorithm from the saved "
                    f"config (from_config) or pass strict=False"
                )
        saved_device = state_dict.get("generator_device", str(self.generator.device))
        if torch.device(saved_device).type != self.generator.device.type:
            raise ValueError(
                f"{self.key}: the checkpoint's generator lived on {saved_device}, this one on "
                f"{self.generator.device}; build the Engine with generator_device={saved_device!r}"
            )
        self.generator.set_state(state_dict["generator"].clone())
        self.run_seed = int(state_dict.get("run_seed", self.run_seed))
        self.index = int(state_dict.get("index", self.index))
        position = state_dict.get("position", {})
        self.last_step = position.get("step")
        self.last_progress = position.get("progress")
        self.last_epoch = position.get("epoch")
        self.calls = int(state_dict.get("calls", 0))
        self.load_extra_state(state_dict.get("extra", {}))
