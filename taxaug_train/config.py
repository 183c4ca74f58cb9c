"""Trainer configuration: attrs classes loaded from YAML, checked by name.

A config file is a nested mapping whose sections mirror the classes below
(``data``, ``model``, ``loss``, ``optim``, ``train``, ``checkpoint``,
``algorithms``). Loading walks the classes' annotations, so an unknown key, a
value of the wrong type or a value out of range fails with the dotted path of
the key, what was expected and the valid keys. ``--set a.b=value`` overrides
are parsed as YAML scalars and applied to the mapping before validation, so
they get the same checks. The effective config is written next to the run
(``config.yaml``) by the trainer.
"""

from __future__ import annotations

import copy
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import attrs
import yaml

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainerConfig",
    "apply_overrides",
    "build_algorithms",
    "config_from_dict",
    "config_to_dict",
    "config_warnings",
    "load_config",
    "save_config",
]


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the dotted key."""


def _positive(_inst, attribute, value):
    if value is not None and value <= 0:
        raise ConfigError(f"{attribute.name} must be > 0, got {value!r}")


def _non_negative(_inst, attribute, value):
    if value is not None and value < 0:
        raise ConfigError(f"{attribute.name} must be >= 0, got {value!r}")


def _fraction(_inst, attribute, value):
    if value is not None and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{attribute.name} must be in [0, 1], got {value!r}")


@attrs.frozen
class DataConfig:
    """Where the dataset is and how it is split, sampled and decoded."""

    labels: str = "demo_data/labels.h5"
    images_dir: str | None = None  # default: the images/ folder next to labels.h5
    ranks: list[str] | None = None  # default: every taxa_LXX dataset of the file, finest first
    image_size: int = attrs.field(default=32, validator=_positive)
    file_extension: str = ""
    partial_labels: bool = True  # keep rows with some ranks unknown (their loss is masked)
    val_ratio: float = attrs.field(default=0.2, validator=_fraction)
    val_labels: str | None = None  # a pre-split validation labels.h5 (then val_ratio is unused)
    split_seed: int = 0
    stratify_rank: str | None = None
    sampler: Literal["standard", "mixed-pairs", "strict-group"] = "mixed-pairs"
    group_rank: str | None = None  # rank whose classes form the sampler's groups (default: the mixing level, else finest)
    metadata: list[str] | None = None  # encoded metadata datasets fed as aux; default: every one in the file
    io_threads: int = attrs.field(default=2, validator=_positive)
    decode_threads: int = attrs.field(default=2, validator=_positive)
    prefetch_batches: int = attrs.field(default=4, validator=_positive)
    cache_mb: int = attrs.field(default=256, validator=_non_negative)
    strict: bool = True
    max_load_failures: float = attrs.field(default=0.01, validator=_fraction)  # permissive: share of images replaced
    read_timeout: float | None = attrs.field(default=60.0, validator=_positive)  # seconds per image read
    max_pixels: int | None = attrs.field(default=None, validator=_positive)  # decompression-bomb limit (None: Pillow's)
    exif_transpose: bool = True  # apply EXIF orientation as a viewer does
    taxonomy_conflicts: Literal["raise", "majority"] = "raise"  # a taxon under two parents: stop, or keep the usual one


@attrs.frozen
class ModelConfig:
    """Backbone, heads and the optional metadata branch."""

    backbone: str = "small_cnn"  # "small_cnn", a timm name ("timm:resnet18") or "package.module:callable"
    backbone_kwargs: dict[str, Any] = attrs.field(factory=dict)
    width: int = attrs.field(default=32, validator=_positive)  # small_cnn base width
    pretrained: bool = False
    head: Literal["flat", "parent_conditioned", "hierarchical_softmax"] = "flat"
    parent_embedding: int = attrs.field(default=32, validator=_non_negative)  # parent_conditioned: width d (0: prior only)
    metadata_branch: bool | Literal["auto"] = False  # auto: on when the run has metadata
    metadata_hidden: int = attrs.field(default=32, validator=_positive)
    dropout: float = attrs.field(default=0.0, validator=_fraction)


@attrs.frozen
class LossConfig:
    """Soft-target cross-entropy per rank."""

    rank_weights: dict[str, float] = attrs.field(factory=dict)  # missing ranks weigh 1.0
    taxonomy_smoothing: float = attrs.field(default=0.0, validator=_fraction)  # alpha of Taxonomy.smooth (targets keep 1 - alpha)
    taxonomy_smoothing_beta: float = attrs.field(default=1.0, validator=_non_negative)
    label_smoothing: float = attrs.field(default=0.0, validator=_fraction)


@attrs.frozen
class OptimConfig:
    """Optimizer and learning-rate schedule (stepped once per training step)."""

    name: Literal["sgd", "adamw"] = "adamw"
    lr: float = attrs.field(default=3e-3, validator=_positive)
    weight_decay: float = attrs.field(default=5e-4, validator=_non_negative)
    momentum: float = attrs.field(default=0.9, validator=_fraction)
    schedule: Literal["cosine", "constant", "linear"] = "cosine"
    warmup_steps: int = attrs.field(default=0, validator=_non_negative)
    grad_clip: float | None = attrs.field(default=None, validator=_positive)  # max global grad norm


@attrs.frozen
class TrainConfig:
    """Loop length, batch, devices, precision, logging."""

    out_dir: str = "runs/demo"
    max_steps: int = attrs.field(default=300, validator=_positive)
    batch_size: int | Literal["auto"] = 64
    auto_batch_max: int | None = attrs.field(default=None, validator=_positive)  # default: 1024 CUDA, 256 CPU
    auto_batch_memory_mb: int | None = attrs.field(default=None, validator=_positive)  # CPU: budget; CUDA: cap
    eval_every: int = attrs.field(default=100, validator=_non_negative)  # 0: only at the end
    eval_batch_size: int | None = attrs.field(default=None, validator=_positive)
    log_every: int = attrs.field(default=10, validator=_positive)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    generator_device: Literal["cpu", "cuda"] = "cpu"  # where algorithms draw: cpu = same draws on any device
    deterministic: bool = False
    progress_bar: bool = True
    threads: int | None = attrs.field(default=None, validator=_positive)  # torch intra-op threads
    loggers: list[Literal["jsonl", "csv", "tensorboard"]] = attrs.field(factory=lambda: ["jsonl"])
    crm: bool = False  # also report the conditional-risk-minimising decision at evaluation


@attrs.frozen
class CheckpointConfig:
    """When and where checkpoints are written (rank 0 only)."""

    every: int = attrs.field(default=0, validator=_non_negative)  # steps; 0: only at the end
    keep: int = attrs.field(default=0, validator=_non_negative)  # newest step checkpoints kept; 0: all
    overwrite: bool = False  # start a new run in an out_dir that already holds checkpoints


@attrs.frozen
class TrainerConfig:
    """The whole run."""

    data: DataConfig = attrs.field(factory=DataConfig)
    model: ModelConfig = attrs.field(factory=ModelConfig)
    loss: LossConfig = attrs.field(factory=LossConfig)
    optim: OptimConfig = attrs.field(factory=OptimConfig)
    train: TrainConfig = attrs.field(factory=TrainConfig)
    checkpoint: CheckpointConfig = attrs.field(factory=CheckpointConfig)
    algorithms: list[dict[str, Any]] = attrs.field(factory=list)  # taxaug.algorithms.from_config entries


# ---------------------------------------------------------------- conversion


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return repr(tp).replace("typing.", "")
    return "null" if tp is type(None) else getattr(tp, "__name__", repr(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against annotation `tp` and return it in canonical form."""
    if isinstance(value, float) and not math.isfinite(value):  # .inf, .nan, 1.0e+400
        raise ConfigError(f"{path}: must be a finite number, got {value!r}")
    if attrs.has(tp):
        return _from_mapping(tp, value, path)
    origin = typing.get_origin(tp)
    if tp is Any:
        _check_finite(value, path)
        return value
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) is not bool:
            return value
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            try:
                return _convert(value, arm, path)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{path}: expected null, got {value!r}")
    if origin is list:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        (arg,) = typing.get_args(tp)
        return [_convert(v, arg, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        kt, vt = typing.get_args(tp)
        return {_convert(k, kt, f"{path}.<key>"): _convert(v, vt, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - only the annotations above are used
        raise TypeError(f"unsupported annotation {tp!r} at {path}")
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _check_finite(value: Any, path: str) -> None:
    """Free-form values (algorithm arguments, backbone kwargs) may not hold inf or NaN either."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path}: must be a finite number, got {value!r}")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_finite(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{path}[{i}]")


def _from_mapping(cls: type, data: Any, path: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = path or "the top level"
        raise ConfigError(
            f"unknown key(s) {', '.join(repr(k) for k in unknown)} in {where}; valid keys: {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(value, hints[name], f"{path}.{name}" if path else name)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{path + '.' if path else ''}{err}") from None


def config_from_dict(data: Mapping[str, Any]) -> TrainerConfig:
    """Validate a nested mapping into a `TrainerConfig` (raises `ConfigError` naming the key)."""
    cfg = _from_mapping(TrainerConfig, data, "")
    _cross_check(cfg)
    return cfg


def _cross_check(cfg: TrainerConfig) -> None:
    d = cfg.data
    if d.ranks is not None:  # None: the file's ranks, checked once the file is read
        check_ranks(cfg, d.ranks, "data.ranks")
    if d.val_labels is None and not 0.0 < d.val_ratio < 1.0:
        raise ConfigError(f"data.val_ratio: {d.val_ratio} leaves no {'validation' if d.val_ratio <= 0 else 'training'}"
                          " rows; use a share in (0, 1), e.g. 0.2, or give data.val_labels")
    if any(w < 0 for w in cfg.loss.rank_weights.values()):
        raise ConfigError(f"loss.rank_weights: weights must be >= 0, got {cfg.loss.rank_weights}")
    for i, entry in enumerate(cfg.algorithms):
        if "name" not in entry:
            raise ConfigError(f"algorithms[{i}]: each entry needs a 'name' key, got {entry!r}")
    if isinstance(cfg.train.batch_size, int) and cfg.train.batch_size <= 0:
        raise ConfigError(f"train.batch_size: must be > 0 or 'auto', got {cfg.train.batch_size}")


def check_ranks(cfg: TrainerConfig, ranks: Sequence[str], source: str) -> None:
    """The rank-naming keys against the ranks trained (`source`: where they come from, for the message)."""
    if not ranks:
        raise ConfigError(f"{source}: list at least one rank dataset, e.g. [taxa_L10, taxa_L20]")
    if len(set(ranks)) != len(ranks):
        raise ConfigError(f"{source}: duplicate entries in {list(ranks)}")
    for key, rank in (("data.group_rank", cfg.data.group_rank), ("data.stratify_rank", cfg.data.stratify_rank)):
        if rank is not None and rank not in ranks:
            raise ConfigError(f"{key}: {rank!r} is not one of {source} {list(ranks)}")
    if cfg.data.ranks is not None:  # weights for ranks absent from the file are dropped when ranks default
        extra = sorted(set(cfg.loss.rank_weights) - set(ranks))
        if extra:
            raise ConfigError(f"loss.rank_weights: rank(s) {extra} are not in {source} {list(ranks)}")


def config_warnings(cfg: TrainerConfig, device_type: str) -> list[str]:
    """Settings that are valid but probably not what was meant (`device_type`: the resolved device)."""
    out = []
    o, t = cfg.optim, cfg.train
    if o.warmup_steps and o.warmup_steps >= t.max_steps:
        out.append(f"optim.warmup_steps ({o.warmup_steps}) >= train.max_steps ({t.max_steps}): the learning rate "
                   f"never finishes warming up (it peaks at {t.max_steps / o.warmup_steps:.2g} x optim.lr); "
                   "lower optim.warmup_steps")
    if t.amp == "bf16" and device_type == "cpu":
        out.append("train.amp: bf16 autocast on CPU is usually slower than float32 and less precise; "
                   "set train.amp: none unless your CPU has native bf16 units")
    return out


def build_algorithms(entries: Sequence[Mapping[str, Any]], aux_components: Sequence[tuple[str, int]] = ()
                     ) -> list[Any]:
    """The `algorithms:` list as objects (`taxaug.algorithms.from_config`), errors naming the entry.

    A mixing algorithm without ``aux_components`` gets `aux_components` (the dataset's metadata
    layout), so location, date and elevation are each taken whole from one partner. With no
    components this needs no data: ``--print-config`` uses it to check every argument.
    """
    from taxaug.algorithms import from_config

    algorithms = []
    for i, entry in enumerate(entries):
        entry = dict(entry)
        name = entry.get("name")
        if aux_components and "aux_components" not in entry and _accepts(name, "aux_components"):
            entry["aux_components"] = [[n, w] for n, w in aux_components]
        try:
            algorithms += from_config([entry])
        except Exception as err:  # the registry raises KeyError/TypeError/ValueError: name the entry
            raise ConfigError(f"algorithms[{i}] ({name}): {err}") from None
    return algorithms


def _accepts(name: Any, parameter: str) -> bool:
    import inspect

    from taxaug.algorithms import registered

    cls = registered().get(name) if isinstance(name, str) else None
    if cls is None:
        return False
    try:
        return parameter in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (YAML-safe) of a config."""
    return attrs.asdict(cfg, recurse=True)


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) to a copy of `data`."""
    out = copy.deepcopy(dict(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value (e.g. train.max_steps=100), got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set: malformed key {key!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {err}") from None
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, Mapping):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: depth + 1])} is not a section")
            node[part] = dict(child)
            node = node[part]
        node[parts[-1]] = value
    return out


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainerConfig:
    """Read a YAML file (or defaults when `path` is None), apply overrides, validate."""
    data: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return config_from_dict(apply_overrides(data, overrides))


def save_config(cfg: TrainerConfig, path: str | Path) -> None:
    """Write the effective config as YAML (loadable again with `load_config`)."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
