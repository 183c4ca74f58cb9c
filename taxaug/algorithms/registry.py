"""Registry: algorithms by name, for configs and third-party plugins.

    @register("my_mix")
    class MyMix(Algorithm): ...

    create("selective_mixup", alpha=0.8, group_levels=["taxa_L10"])
    from_config([{"name": "selective_mixup", "alpha": 0.8}, {"name": "rand_augment"}])

Third-party packages add algorithms through the entry-point group
`taxaug.algorithms` (`my_mix = "my_pkg.algos:MyMix"`); they are loaded the
first time a name is looked up or listed. The entry-point name is the
registry name.
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any, TypeVar

from taxaug.algorithms.base import Algorithm

__all__ = ["ENTRY_POINT_GROUP", "UnknownAlgorithmError", "create", "from_config", "list_algorithms", "register", "registered", "to_config"]

ENTRY_POINT_GROUP = "taxaug.algorithms"

_REGISTRY: dict[str, type[Algorithm]] = {}
_entry_points_loaded = False
_entry_point_errors: dict[str, BaseException] = {}

A = TypeVar("A", bound=type[Algorithm])


class UnknownAlgorithmError(KeyError):
    """No algorithm is registered under the requested name (the message lists the valid names)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def register(name: str):
    """Class decorator: register an Algorithm subclass under `name` (and set its `name`)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"algorithm names must be identifiers such as 'selective_mixup', got {name!r}")

    def decorate(cls: A) -> A:
        if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
            raise TypeError(f"@register({name!r}) must decorate an Algorithm subclass, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"algorithm name {name!r} is already registered by {existing.__module__}."
                             f"{existing.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            obj = ep.load()
        except Exception as err:  # a broken plugin must not break every other algorithm
            _entry_point_errors[ep.name] = err
            warnings.warn(f"taxaug: could not load algorithm plugin {ep.name!r} ({ep.value}): {err!r}",
                          stacklevel=3)
            continue
        if isinstance(obj, type) and issubclass(obj, Algorithm) and ep.name not in _REGISTRY:
            register(ep.name)(obj)


def registered() -> dict[str, type[Algorithm]]:
    """Name -> class of every algorithm (built-in and plugins)."""
    _load_entry_points()
    return dict(sorted(_REGISTRY.items()))


def _description(cls: type[Algorithm]) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def list_algorithms() -> dict[str, str]:
    """Name -> one-line description, sorted by name. `print(format_algorithms())` for a table."""
    return {name: _description(cls) for name, cls in registered().items()}


def format_algorithms() -> str:
    """A two-column text listing of `list_algorithms()`."""
    items = list_algorithms()
    width = max((len(n) for n in items), default=0)
    return "\n".join(f"{n:<{width}}  {d}" for n, d in items.items())


def _lookup(name: str) -> type[Algorithm]:
    if not isinstance(name, str):
        raise TypeError(f"algorithm name must be a string, got {type(name).__name__} {name!r}")
    reg = registered()
    if name in reg:
        return reg[name]
    if name in _entry_point_errors:
        raise ImportError(f"algorithm plugin {name!r} failed to load: {_entry_point_errors[name]!r}") from (
            _entry_point_errors[name])
    close = difflib.get_close_matches(name, list(reg), n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownAlgorithmError(f"unknown algorithm {name!r}.{hint} Valid names: {', '.join(reg)}")


def _parameters(cls: type[Algorithm]) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def create(name: str, **kwargs: Any) -> Algorithm:
    """Build the algorithm registered as `name`; unknown or invalid arguments raise naming the valid ones."""
    cls = _lookup(name)
    valid = _parameters(cls)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        suggestions = {u: difflib.get_close_matches(u, valid, n=1) for u in unknown}
        hints = "".join(f" ({u!r}: did you mean {s[0]!r}?)" for u, s in suggestions.items() if s)
        raise TypeError(f"{name}: unknown argument(s) {unknown}{hints}. Valid arguments: {valid}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{name}: {err} (valid arguments: {valid})") from err


def from_config(config: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> list[Algorithm]:
    """Algorithms from a list of dicts `{"name": ..., **kwargs}` (a single dict gives a one-item list)."""
    items = [config] if isinstance(config, Mapping) else list(config)
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or "name" not in item:
            raise ValueError(f"algorithm config [{i}] must be a dict with a 'name' key, got {item!r}; "
                             f"valid names: {', '.join(registered())}")
        kwargs = {k: v for k, v in item.items() if k != "name"}
        out.append(create(item["name"], **kwargs))
    return out


def to_config(algorithm: Algorithm | Iterable[Algorithm]) -> Any:
    """`{"name": ..., **config}` for one algorithm, or a list of those; `from_config` inverts it."""
    if isinstance(algorithm, Algorithm):
        if not algorithm.name:
            raise ValueError(f"{type(algorithm).__name__} is not registered; decorate it with @register(name)")
        return {"name": algorithm.name, **algorithm.config()}
    return [to_config(a) for a in algorithm]
