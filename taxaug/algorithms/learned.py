"""Learned, differentiable augmentation: op probabilities and magnitudes meta-learned during training.

Three layers, each usable on its own:

- ``PolicyConfig`` / ``AugmentPolicy``: the op set, magnitude bounds (from a
  YAML/JSON dict) and the learnable parameters (one op logit and one bounded
  magnitude per op). ``policy(images)`` is the relaxed, differentiable
  augmentation; ``policy.sample(images)`` the fast gradient-free one;
  ``policy.export_policy()`` a frozen ``FixedPolicy``.
- ``MetaLearner.meta_step(model, loss_fn, train_batch, val_batch)``: one
  bi-level step with ``torch.func``: a functional copy of the weights takes
  one SGD step on the augmented training batch, the clean validation loss of
  the updated copy is differentiated back through that step to the policy, and
  the policy's optimizer steps. Nothing outlives the call (memory is flat).
- ``LearnedAugment`` (registered ``"learned_augment"``) runs the above from the
  event engine every ``meta_every`` steps and augments every training batch;
  ``UniformAugment`` (``"uniform_augment"``) is the RandAugment-style baseline
  on the same ops (uniform choice, fixed magnitudes); ``FixedPolicyAugment``
  (``"fixed_policy_augment"``) trains with an exported policy.
"""

from __future__ import annotations

import collections
import copy
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn
from torch.func import functional_call, grad

from taxaug.algorithms.base import Algorithm
from taxaug.algorithms.events import Event
from taxaug.algorithms.registry import register
from taxaug.algorithms.state import State
from taxaug.functional import random as _random
from taxaug.functional._validate import check_images, describe
from taxaug.functional.differentiable import (
    PolicyNoise,
    apply_sampled_ops,
    draw_policy_noise,
    relaxed_augment,
)
from taxaug.functional.registry import DEFAULT_BOUNDS, DIFF_OP_NAMES, OP_NEUTRAL, OPS, VALID_RANGES

__all__ = [
    "DEFAULT_BOUNDS",
    "META_BACKENDS",
    "AugmentPolicy",
    "FixedPolicy",
    "FixedPolicyAugment",
    "LearnedAugment",
    "MetaLearner",
    "MetaStepResult",
    "OpSpec",
    "PolicyConfig",
    "UniformAugment",
    "meta_gradients",
]

log = logging.getLogger(__name__)

_SIGNABLE = frozenset(n for n in DIFF_OP_NAMES if OPS[n].signed)
_OP_KEYS = frozenset({"min", "max", "init", "random_sign", "unit"})
_POLICY_KEYS = frozenset({"ops", "num_layers", "temperature", "hard"})


def _default_init(name: str, low: float, high: float) -> float:
    """Halfway between the op's neutral value and the bound farther from it (midpoint if neutral is outside)."""
    neutral = OP_NEUTRAL[name]
    if neutral is None or not low <= neutral <= high:
        return (low + high) / 2.0
    far = high if high - neutral >= neutral - low - 1e-9 else low
    return (neutral + far) / 2.0


@attrs.frozen
class OpSpec:
    """One op of a policy: magnitude bounds ``[low, high]`` in config units, the start value, whether a
    random per-sample sign mirrors the magnitude about the op's neutral value, and (translate only) whether
    the bounds are pixels or fractions of the image size."""

    name: str
    low: float = 0.0
    high: float = 0.0
    init: float = 0.0
    random_sign: bool = False
    unit: str = "px"

    @property
    def has_magnitude(self) -> bool:
        return OP_NEUTRAL[self.name] is not None

    @property
    def learnable(self) -> bool:
        return self.has_magnitude and self.high > self.low

    @classmethod
    def from_dict(cls, name: str, spec: Mapping[str, Any] | Sequence[float] | None = None) -> OpSpec:
        """Build from ``{min, max, init, random_sign, unit}`` (any subset; the rest default) or ``[min, max]``."""
        if name not in OP_NEUTRAL:
            raise ValueError(f"unknown op {name!r} in the policy config; known ops: {', '.join(DIFF_OP_NAMES)}")
        if spec is None:
            spec = {}
        elif isinstance(spec, Sequence) and not isinstance(spec, str):
            if len(spec) != 2:
                raise ValueError(f"op {name!r}: bounds as a list must be [min, max], got {list(spec)!r}")
            spec = {"min": spec[0], "max": spec[1]}
        if not isinstance(spec, Mapping):
            raise TypeError(f"op {name!r}: expected a dict of {sorted(_OP_KEYS)} or [min, max], got {describe(spec)}")
        unknown = sorted(set(spec) - _OP_KEYS)
        if unknown:
            raise ValueError(f"op {name!r}: unknown key(s) {unknown}; valid keys: {sorted(_OP_KEYS)}")
        default = DEFAULT_BOUNDS[name]
        if default is None:
            given = sorted(set(spec) & {"min", "max", "init", "random_sign"})
            if given:
                raise ValueError(f"op {name!r} has no magnitude, so {given} cannot be set; list it without options")
            return cls(name=name)
        low = _real(spec.get("min", default[0]), f"{name}.min")
        high = _real(spec.get("max", default[1]), f"{name}.max")
        if low > high:
            raise ValueError(f"op {name!r}: min ({low}) is greater than max ({high}); swap them")
        unit = spec.get("unit", "px")
        if unit not in ("px", "fraction"):
            raise ValueError(f"op {name!r}: unit must be 'px' or 'fraction', got {unit!r}")
        if unit == "fraction" and name not in ("translate_x", "translate_y"):
            raise ValueError(f"op {name!r}: unit='fraction' only applies to translate_x / translate_y")
        if unit == "fraction" and max(abs(low), abs(high)) > 1.0:
            raise ValueError(f"op {name!r}: fraction bounds must lie in [-1, 1], got [{low}, {high}]")
        _check_op_range(name, low, high)
        init = _real(spec["init"], f"{name}.init") if "init" in spec else _default_init(name, low, high)
        if high > low and not low < init < high:
            raise ValueError(f"op {name!r}: init ({init}) must lie strictly inside (min, max) = ({low}, {high})")
        if high == low:
            init = low
        random_sign = spec.get("random_sign", name in _SIGNABLE)
        if not isinstance(random_sign, bool):
            raise TypeError(f"op {name!r}: random_sign must be true or false, got {random_sign!r}")
        if random_sign and name not in _SIGNABLE:
            raise ValueError(f"op {name!r}: random_sign only applies to {sorted(_SIGNABLE)}")
        return cls(name=name, low=low, high=high, init=init, random_sign=random_sign, unit=unit)

    def to_dict(self) -> dict[str, Any]:
        if not self.has_magnitude:
            return {}
        out: dict[str, Any] = {"min": self.low, "max": self.high, "init": self.init, "random_sign": self.random_sign}
        if self.name in ("translate_x", "translate_y"):
            out["unit"] = self.unit
        return out


def _real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise TypeError(f"{name} must be a finite number, got {describe(value)}")
    return float(value)


def _check_op_range(name: str, low: float, high: float) -> None:
    lo, hi = VALID_RANGES[name]
    if low < lo or high > hi:
        raise ValueError(f"op {name!r}: bounds [{low}, {high}] leave the op's valid range [{lo}, {hi}]")


@attrs.frozen
class PolicyConfig:
    """The op set and its bounds plus the relaxation settings.

    ``num_layers`` ops are applied in sequence per sample (RandAugment's N),
    each chosen per sample from the same learned distribution. ``temperature``
    is the Gumbel-softmax temperature; ``hard`` uses the straight-through
    one-hot (the forward pass applies exactly one op per sample and layer).
    """

    ops: tuple[OpSpec, ...] = attrs.field(factory=lambda: tuple(OpSpec.from_dict(n) for n in DIFF_OP_NAMES))
    num_layers: int = 2
    temperature: float = 1.0
    hard: bool = True

    def __attrs_post_init__(self) -> None:
        if not self.ops:
            raise ValueError("a policy needs at least one op")
        names = [o.name for o in self.ops]
        if len(set(names)) != len(names):
            raise ValueError(f"ops must not repeat a name, got {names}")
        if isinstance(self.num_layers, bool) or not isinstance(self.num_layers, int) or self.num_layers < 1:
            raise ValueError(f"num_layers must be an integer >= 1, got {self.num_layers!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.ops)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | None = None) -> PolicyConfig:
        """From a plain dict (parsed YAML/JSON). ``ops`` is a list of names (default bounds) or a mapping
        name -> ``{min, max, init, random_sign, unit}`` / ``[min, max]``; omitted: every op with defaults."""
        config = dict(config or {})
        unknown = sorted(set(config) - _POLICY_KEYS)
        if unknown:
            raise ValueError(f"unknown policy config key(s) {unknown}; valid keys: {sorted(_POLICY_KEYS)}")
        ops_cfg = config.get("ops")
        if ops_cfg is None:
            ops = tuple(OpSpec.from_dict(n) for n in DIFF_OP_NAMES)
        elif isinstance(ops_cfg, Mapping):
            ops = tuple(OpSpec.from_dict(str(n), s) for n, s in ops_cfg.items())
        elif isinstance(ops_cfg, Sequence) and not isinstance(ops_cfg, str):
            ops = tuple(OpSpec.from_dict(str(n)) for n in ops_cfg)
        else:
            raise TypeError(f"policy 'ops' must be a list of op names or a mapping name -> bounds, got {describe(ops_cfg)}")
        hard = config.get("hard", True)
        if not isinstance(hard, bool):
            raise TypeError(f"policy 'hard' must be true or false, got {hard!r}")
        return cls(
            ops=ops,
            num_layers=config.get("num_layers", 2),
            temperature=_real(config.get("temperature", 1.0), "temperature"),
            hard=hard,
        )

    @classmethod
    def load(cls, source: PolicyConfig | Mapping[str, Any] | str | Path | None) -> PolicyConfig:
        """From a PolicyConfig, a dict, or a path to a .yaml/.yml/.json file."""
        if isinstance(source, PolicyConfig):
            return source
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"policy config file {str(path)!r} does not exist")
            text = path.read_text()
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml  # the trainer's dependency; only needed for YAML files

                data = yaml.safe_load(text)
            if isinstance(data, Mapping) and "learned_augment" in data and "ops" not in data:
                data = data["learned_augment"]
            return cls.from_dict(data)
        if source is None or isinstance(source, Mapping):
            return cls.from_dict(source)
        raise TypeError(f"policy must be a dict, a path to a YAML/JSON file or a PolicyConfig, got {describe(source)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "ops": {o.name: o.to_dict() for o in self.ops},
            "num_layers": self.num_layers,
            "temperature": self.temperature,
            "hard": self.hard,
        }


def _unit_scale(ops: Sequence[OpSpec], height: int, width: int) -> list[float]:
    """Per op, what turns its config magnitude into op units (the side for fractional translations)."""
    return [float(width) if (o.unit == "fraction" and o.name == "translate_x") else
            float(height) if (o.unit == "fraction" and o.name == "translate_y") else 1.0 for o in ops]


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


class AugmentPolicy(nn.Module):
    """Learnable op logits and bounded magnitudes (``low + (high - low) * sigmoid(theta)``) for a config.

    ``forward(images)`` is the relaxed, differentiable augmentation (float
    images in [0, 1]); ``sample(images)`` is the fast, gradient-free draw from
    the same distribution (uint8 or float, dtype kept).
    """

    def __init__(self, config: PolicyConfig | Mapping[str, Any] | str | Path | None = None) -> None:
        super().__init__()
        self.config = PolicyConfig.load(config)
        ops = self.config.ops
        k = len(ops)
        self.op_logits = nn.Parameter(torch.zeros(k))
        init = [_logit((o.init - o.low) / (o.high - o.low)) if o.learnable else 0.0 for o in ops]
        self.magnitude_logits = nn.Parameter(torch.tensor(init, dtype=torch.float32))
        self.register_buffer("low", torch.tensor([o.low for o in ops], dtype=torch.float32), persistent=False)
        self.register_buffer("span", torch.tensor([o.high - o.low for o in ops], dtype=torch.float32),
                             persistent=False)
        self.register_buffer("random_sign", torch.tensor([o.random_sign for o in ops]), persistent=False)

    @property
    def ops(self) -> tuple[str, ...]:
        return self.config.names

    def probabilities(self) -> torch.Tensor:
        """(K,) op probabilities per layer (softmax of the logits)."""
        return torch.softmax(self.op_logits, dim=0)

    def magnitudes(self) -> torch.Tensor:
        """(K,) magnitudes in config units (translate in px or fractions as configured)."""
        return self.low + self.span * torch.sigmoid(self.magnitude_logits)

    def op_magnitudes(self, height: int, width: int) -> torch.Tensor:
        """(K,) magnitudes in the units the ops take (fractional translations scaled to pixels)."""
        m = self.magnitudes()
        return m * m.new_tensor(_unit_scale(self.config.ops, height, width))

    def draw_noise(self, batch: int, *, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> PolicyNoise:
        return draw_policy_noise(self.config.num_layers, batch, len(self.ops), generator=generator, device=device)

    def forward(self, images: torch.Tensor, *, noise: PolicyNoise | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Relaxed augmentation of float images, differentiable in every op logit and magnitude."""
        return relaxed_augment(
            images, self.op_logits, self.op_magnitudes(images.shape[-2], images.shape[-1]),
            ops=self.ops, random_sign=self.random_sign, temperature=self.config.temperature,
            hard=self.config.hard, num_layers=self.config.num_layers, noise=noise, generator=generator,
        )

    @torch.no_grad()
    def sample(self, images: torch.Tensor, *, noise: PolicyNoise | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Hard draw from the current distribution without gradients (uint8 or float; dtype kept).

        Reads the parameters as tensors (no host sync); same draws as ``export_policy()(images)``.
        """
        x = check_images(images)
        return apply_sampled_ops(
            x, self.op_logits, self.op_magnitudes(x.shape[-2], x.shape[-1]), ops=self.ops,
            random_sign=self.random_sign, num_layers=self.config.num_layers, noise=noise, generator=generator,
        )

    def summary(self) -> dict[str, dict[str, float]]:
        """``{op: {"p": probability, "magnitude": value}}`` (magnitude omitted for ops without one)."""
        probs = self.probabilities().detach().cpu().tolist()
        mags = self.magnitudes().detach().cpu().tolist()
        out = {}
        for o, p, m in zip(self.config.ops, probs, mags):
            out[o.name] = {"p": p, "magnitude": m} if o.has_magnitude else {"p": p}
        return out

    def export_policy(self) -> FixedPolicy:
        """The current distribution, frozen: same ops, probabilities, magnitudes, signs and layers."""
        return FixedPolicy(
            ops=self.config.ops,
            probabilities=tuple(self.probabilities().detach().cpu().tolist()),
            magnitudes=tuple(min(max(m, o.low), o.high) if o.has_magnitude else m
                             for o, m in zip(self.config.ops, self.magnitudes().detach().cpu().tolist())),
            num_layers=self.config.num_layers,
        )


@attrs.frozen
class FixedPolicy:
    """A frozen augmentation policy: per layer, op ``k`` with probability ``probabilities[k]`` at
    ``magnitudes[k]`` (config units; mirrored about neutral per sample where the op has ``random_sign``).

    Calling it runs the fused batched ops without gradients; with the same
    generator state it draws exactly what ``AugmentPolicy.sample`` draws.
    """

    ops: tuple[OpSpec, ...]
    probabilities: tuple[float, ...]
    magnitudes: tuple[float, ...]
    num_layers: int = 1

    def __attrs_post_init__(self) -> None:
        k = len(self.ops)
        if len(self.probabilities) != k or len(self.magnitudes) != k:
            raise ValueError(f"a FixedPolicy over {k} ops needs {k} probabilities and {k} magnitudes, got "
                             f"{len(self.probabilities)} and {len(self.magnitudes)}")
        if any(p < 0 or not math.isfinite(p) for p in self.probabilities) or not sum(self.probabilities) > 0:
            raise ValueError(f"probabilities must be finite, >= 0 and not all 0, got {list(self.probabilities)}")
        for o, m in zip(self.ops, self.magnitudes):
            slack = 1e-5 * max(1.0, abs(o.low), abs(o.high))  # float32 rounding of learned values
            if o.has_magnitude and not o.low - slack <= m <= o.high + slack:
                raise ValueError(f"op {o.name!r}: magnitude {m} is outside its bounds [{o.low}, {o.high}]")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.ops)

    @classmethod
    def uniform(cls, config: PolicyConfig | Mapping[str, Any] | str | Path | None = None) -> FixedPolicy:
        """RandAugment-style: uniform op choice, each op at its config ``init`` magnitude."""
        cfg = PolicyConfig.load(config)
        k = len(cfg.ops)
        return cls(ops=cfg.ops, probabilities=(1.0 / k,) * k, magnitudes=tuple(o.init for o in cfg.ops),
                   num_layers=cfg.num_layers)

    def __call__(self, images: torch.Tensor, *, noise: PolicyNoise | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        x = check_images(images)
        height, width = x.shape[-2:]
        probs = torch.tensor(self.probabilities, dtype=torch.float32, device=x.device)
        logits = torch.log(probs / probs.sum()).clamp_min(-1e4)
        mags = torch.tensor([m * s for m, s in zip(self.magnitudes, _unit_scale(self.ops, height, width))],
                            dtype=torch.float32, device=x.device)
        random_sign = torch.tensor([o.random_sign for o in self.ops], device=x.device)
        return apply_sampled_ops(x, logits, mags, ops=self.names, random_sign=random_sign,
                                 num_layers=self.num_layers, noise=noise, generator=generator)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON): ``{"num_layers", "ops": {name: {p, magnitude, min, max, ...}}}``."""
        ops = {}
        for o, p, m in zip(self.ops, self.probabilities, self.magnitudes):
            entry: dict[str, Any] = {"p": p}
            if o.has_magnitude:
                entry.update(magnitude=m, **o.to_dict())
            ops[o.name] = entry
        return {"num_layers": self.num_layers, "ops": ops}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FixedPolicy:
        if not isinstance(data, Mapping) or not isinstance(data.get("ops"), Mapping):
            raise ValueError(f"a fixed policy dict needs an 'ops' mapping (as FixedPolicy.to_dict writes), got {data!r}")
        specs, probs, mags = [], [], []
        for name, entry in data["ops"].items():
            entry = dict(entry)
            if "p" not in entry:
                raise ValueError(f"fixed policy op {name!r} lacks its probability 'p'")
            probs.append(_real(entry.pop("p"), f"{name}.p"))
            magnitude = entry.pop("magnitude", None)
            spec = OpSpec.from_dict(str(name), entry or None)
            if spec.has_magnitude:
                if magnitude is None:
                    raise ValueError(f"fixed policy op {name!r} lacks its 'magnitude'")
                magnitude = _real(magnitude, f"{name}.magnitude")
            specs.append(spec)
            mags.append(0.0 if magnitude is None else magnitude)
        return cls(ops=tuple(specs), probabilities=tuple(probs), magnitudes=tuple(mags),
                   num_layers=int(data.get("num_layers", 1)))


# ----------------------------------------------------------------------------- bi-level step


Batch = Any  # (images, targets) tuple/list, or a MixBatch (images, targets, aux, aux_mask)


def _unpack(batch: Batch, name: str) -> tuple[torch.Tensor, Any, dict[str, Any]]:
    """(float images, targets, model kwargs) of a batch."""
    if hasattr(batch, "images") and hasattr(batch, "targets"):
        images, targets = batch.images, batch.targets
        kwargs = {}
        if getattr(batch, "aux", None) is not None:
            kwargs = {"aux": batch.aux, "aux_mask": batch.aux_mask}
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        images, targets = batch
        kwargs = {}
    else:
        raise TypeError(f"{name} must be (images, targets) or a MixBatch, got {describe(batch)}")
    images = check_images(images, f"{name} images")
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    elif images.dtype in (torch.float16, torch.bfloat16):
        images = images.float()  # the relaxed ops run in float32 (CPU kernels lack half support)
    return images, targets, kwargs


def _index(value: Any, idx: torch.Tensor) -> Any:
    """Rows ``idx`` of a tensor, or of every tensor in a dict / list / tuple (None and scalars kept)."""
    if isinstance(value, torch.Tensor):
        return value[idx] if value.ndim else value
    if isinstance(value, Mapping):
        return {k: _index(v, idx) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_index(v, idx) for v in value)
    return value


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _mean_loss(value: Any) -> torch.Tensor:
    """A loss_fn result (scalar, per-sample (B,), or a tuple whose first item is one of those) as a scalar."""
    if isinstance(value, (tuple, list)):
        value = value[0]
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"loss_fn must return a tensor (or a tuple starting with one), got {describe(value)}")
    return value.mean() if value.ndim else value


META_BACKENDS = ("autograd", "func")


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel: the functional copy must not sync gradients."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def _autograd_grad(outputs: torch.Tensor, inputs: dict[str, torch.Tensor], *, create_graph: bool
                   ) -> dict[str, torch.Tensor]:
    grads = torch.autograd.grad(outputs, list(inputs.values()), create_graph=create_graph, allow_unused=True)
    return {n: torch.zeros_like(t) if g is None else g for (n, t), g in zip(inputs.items(), grads)}


def meta_gradients(
    policy: AugmentPolicy,
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Any],
    train_batch: Batch,
    val_batch: Batch,
    *,
    inner_lr: float,
    inner_steps: int = 1,
    noise: PolicyNoise | None = None,
    generator: torch.Generator | None = None,
    backend: str = "autograd",
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hypergradient of the clean validation loss after inner SGD step(s) on the augmented batch.

    ``d/d phi  L_val(w - inner_lr * grad_w L_train(aug_phi(x_train), w))``.
    The model runs through ``torch.func.functional_call`` on a dictionary of
    weights, so the update ``w'`` is a functional copy. ``backend`` chooses
    how the nested gradients are taken: ``"func"`` nests ``torch.func.grad``
    (policy parameters outside, weights inside); ``"autograd"`` (default) takes
    the same derivatives with ``torch.autograd.grad(create_graph=True)``, which
    gives identical values (tested) and skips functorch's per-op wrapping,
    about 1.5x faster on the many small ops of the augmentation.
    With ``inner_steps = K > 1`` the augmented batch is cut into K chunks and
    the K SGD steps are unrolled (memory grows with K, within the call only).
    The model's own parameters and buffers are never modified (buffers such as
    BatchNorm running stats are cloned for the step), nor are any ``.grad``.
    Returns the gradients (keyed like ``policy.named_parameters()``), the mean
    train loss, the validation loss and the augmented training images, all detached.
    """
    if backend not in META_BACKENDS:
        raise ValueError(f"backend must be one of {META_BACKENDS}, got {backend!r}")
    train, val = _unpack(train_batch, "train_batch"), _unpack(val_batch, "val_batch")
    batch = train[0].shape[0]
    if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or not 1 <= inner_steps <= batch:
        raise ValueError(f"inner_steps must be an integer in [1, train batch size {batch}], got {inner_steps!r}")
    if noise is None:
        noise = policy.draw_noise(batch, generator=generator, device=train[0].device)
    use_func = backend == "func"
    outer = _outer_loss(policy, _unwrap(model), loss_fn, train, val, noise, inner_lr, inner_steps, use_func)
    policy_params = {n: p.detach() if use_func else p.detach().requires_grad_(True)
                     for n, p in policy.named_parameters()}
    if use_func:
        hypergrads, (train_loss, val_loss, augmented) = grad(outer, has_aux=True)(policy_params)
    else:
        with torch.enable_grad():  # works from inside a caller's no_grad block, as torch.func.grad does
            val_loss, (train_loss, _, augmented) = outer(policy_params)
            hypergrads = _autograd_grad(val_loss, policy_params, create_graph=False)
    return hypergrads, train_loss.detach(), val_loss.detach(), augmented.detach()


Unpacked = tuple[torch.Tensor, Any, dict[str, Any]]


def _outer_loss(policy: AugmentPolicy, model: nn.Module, loss_fn: Callable[[Any, Any], Any], train: Unpacked,
                val: Unpacked, noise: PolicyNoise, inner_lr: float, inner_steps: int, use_func: bool
                ) -> Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, tuple[torch.Tensor, ...]]]:
    """phi -> (validation loss after the unrolled inner SGD steps on the batch augmented with phi,
    (mean train loss, validation loss, augmented images)), for `grad` or `autograd.grad` over phi."""
    (x_train, y_train, train_kwargs), (x_val, y_val, val_kwargs) = train, val
    chunks = list(torch.arange(x_train.shape[0], device=x_train.device).tensor_split(inner_steps))
    weights = {n: p.detach() if use_func else p.detach().requires_grad_(True)
               for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    policy_buffers = dict(policy.named_buffers())

    def buffers() -> dict[str, torch.Tensor]:
        return {n: b.detach().clone() for n, b in model.named_buffers()}

    def outer(phi: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        augmented = functional_call(policy, {**phi, **policy_buffers}, (x_train,), {"noise": noise})

        def inner(w: dict[str, torch.Tensor], idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            images, targets, kwargs = augmented, y_train, train_kwargs
            if inner_steps > 1:
                images, targets, kwargs = augmented[idx], _index(y_train, idx), _index(train_kwargs, idx)
            out = functional_call(model, {**w, **frozen, **buffers()}, (images,), kwargs)
            loss = _mean_loss(loss_fn(out, targets))
            return loss, loss

        updated, train_losses = weights, []
        for idx in chunks:
            if use_func:
                grads, loss = grad(inner, has_aux=True)(updated, idx)
            else:
                loss, _ = inner(updated, idx)
                grads = _autograd_grad(loss, updated, create_graph=True)
            updated = {n: updated[n] - inner_lr * grads[n] for n in updated}
            train_losses.append(loss)
        out = functional_call(model, {**updated, **frozen, **buffers()}, (x_val,), val_kwargs)
        val_loss = _mean_loss(loss_fn(out, y_val))
        return val_loss, (torch.stack(train_losses).mean(), val_loss, augmented)

    return outer


def _average_across_ranks(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean of the hypergradients over the ranks of the default process group (one all-reduce), so every
    rank takes the same policy step and the policies stay identical; unchanged when not distributed."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return grads
    flat = torch.cat([g.reshape(-1) for g in grads.values()])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    out, start = {}, 0
    for n, g in grads.items():
        out[n] = flat[start:start + g.numel()].view_as(g)
        start += g.numel()
    return out


@attrs.frozen
class MetaStepResult:
    """What one meta step did (all tensors detached; read them with ``.item()`` when logging)."""

    train_loss: torch.Tensor
    val_loss: torch.Tensor
    grad_norm: torch.Tensor
    augmented: torch.Tensor


class MetaLearner:
    """Owns a policy and its optimizer; ``meta_step`` does one bi-level update.

    Usable from any loop::

        learner = MetaLearner(AugmentPolicy("configs/learned_augment.yaml"), lr=0.05, inner_lr=0.1)
        for step, (train, val) in enumerate(zip(train_loader, val_loader)):
            if step % 5 == 0:
                learner.meta_step(model, loss_fn, train, val, generator=gen)
            images = learner.policy.sample(train[0], generator=gen)   # then your usual step
    """

    def __init__(self, policy: AugmentPolicy | None = None, *, lr: float = 0.05, inner_lr: float = 0.1,
                 inner_steps: int = 1, backend: str = "autograd", sync_distributed: bool = True,
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        self.policy = policy if policy is not None else AugmentPolicy()
        if not lr > 0 or not inner_lr > 0:
            raise ValueError(f"lr and inner_lr must be > 0, got lr={lr!r}, inner_lr={inner_lr!r}")
        if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1:
            raise ValueError(f"inner_steps must be an integer >= 1, got {inner_steps!r}")
        if backend not in META_BACKENDS:
            raise ValueError(f"backend must be one of {META_BACKENDS}, got {backend!r}")
        self.inner_lr = float(inner_lr)
        self.inner_steps = inner_steps
        self.backend = backend
        self.sync_distributed = sync_distributed
        self.optimizer = optimizer or torch.optim.Adam(self.policy.parameters(), lr=lr, betas=(0.5, 0.999))

    def meta_step(self, model: nn.Module, loss_fn: Callable[[Any, Any], Any], train_batch: Batch,
                  val_batch: Batch, *, generator: torch.Generator | None = None,
                  inner_lr: float | None = None, noise: PolicyNoise | None = None) -> MetaStepResult:
        """One outer update of the policy: hypergradient (see ``meta_gradients``), then an optimizer step."""
        grads, train_loss, val_loss, augmented = meta_gradients(
            self.policy, model, loss_fn, train_batch, val_batch,
            inner_lr=self.inner_lr if inner_lr is None else inner_lr, inner_steps=self.inner_steps,
            noise=noise, generator=generator, backend=self.backend,
        )
        if self.sync_distributed:
            grads = _average_across_ranks(grads)
        for n, p in self.policy.named_parameters():
            p.grad = grads[n]
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()]))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return MetaStepResult(train_loss=train_loss, val_loss=val_loss, grad_norm=norm.detach(), augmented=augmented)

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])


# ----------------------------------------------------------------------------- algorithms


class _PolicyAlgorithm(Algorithm):
    """Shared AFTER_DATALOADER behaviour: replace ``state.batch.images`` by a policy draw (dtype kept)."""

    events = frozenset({Event.AFTER_DATALOADER})

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, event: Event, state: State) -> None:
        self._note_position(state)
        batch = state.batch
        if batch is None:
            raise ValueError(f"{self.key}: State.batch is None at AFTER_DATALOADER; set it to the MixBatch first")
        state.batch = batch.replace(images=self._augment(batch.images))


@register("fixed_policy_augment")
class FixedPolicyAugment(_PolicyAlgorithm):
    """Augment every training batch with a fixed policy (e.g. one exported from LearnedAugment)."""

    def __init__(self, *, policy: Mapping[str, Any]) -> None:
        super().__init__()
        self.policy = FixedPolicy.from_dict(policy)

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        return self.policy(images, generator=self.generator)


@register("uniform_augment")
class UniformAugment(_PolicyAlgorithm):
    """RandAugment-style baseline on the learned-augment op set: uniform op choice, fixed magnitudes."""

    def __init__(self, *, policy: Mapping[str, Any] | str | None = None) -> None:
        super().__init__()
        self.policy = FixedPolicy.uniform(policy)

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        return self.policy(images, generator=self.generator)


class _Cycle:
    """Endless iteration over a re-iterable source (a DataLoader, a list of batches)."""

    def __init__(self, source: Iterable[Batch]) -> None:
        self.source = source
        self._it: Iterator[Batch] | None = None

    def next(self) -> Batch:
        for _ in range(2):
            if self._it is None:
                self._it = iter(self.source)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None
        raise ValueError("the validation source for LearnedAugment yielded no batch")


@register("learned_augment")
class LearnedAugment(_PolicyAlgorithm):
    """Meta-learned augmentation: op probabilities and magnitudes learned by a bi-level step every k steps.

    On AFTER_DATALOADER of a training batch, every ``meta_every`` steps it runs
    one ``MetaLearner.meta_step`` with ``state.model`` and ``state.loss_fn``,
    then augments the whole batch with a hard draw from the current policy.

    Validation batches: by default (``validation="split"``) a random
    ``val_fraction`` of the current batch is held out *for the meta step
    only*: the inner step trains on the augmented rest and the outer loss is
    measured on the clean held-out samples. This needs no extra data loading
    and works in any loop; the training step still sees the whole augmented
    batch. With ``set_validation_source(iterable)`` a held-out split of the
    training data (never the evaluation set) is cycled instead and the whole
    batch is used for the inner step (``validation="source"`` then requires it).

    Args:
        policy: policy config (dict, or path to a YAML/JSON file); see ``PolicyConfig.from_dict``.
        meta_every: meta step every this many optimizer steps (k); 1 = every step.
        lr: Adam learning rate of the policy parameters.
        inner_lr: learning rate of the inner SGD step; None = the loop optimizer's first lr (else 0.1).
        inner_steps: unrolled inner SGD steps per meta step (the train part is cut into that many chunks).
        backend: "autograd" (default, faster) or "func" (nested torch.func.grad); same values.
        validation: "split" (hold out part of each meta batch) or "source" (a validation iterable).
        val_fraction: share of the batch held out with ``validation="split"``.
        log_every: log probabilities/magnitudes every this many meta steps (0 = never).
        history_size: how many meta-step records to keep in ``history``.
    """

    def __init__(self, *, policy: Mapping[str, Any] | str | None = None, meta_every: int = 5, lr: float = 0.05,
                 inner_lr: float | None = None, inner_steps: int = 1, backend: str = "autograd",
                 validation: str = "split", val_fraction: float = 0.5, log_every: int = 50,
                 history_size: int = 1000) -> None:
        super().__init__()
        if isinstance(meta_every, bool) or not isinstance(meta_every, int) or meta_every < 1:
            raise ValueError(f"meta_every must be an integer >= 1, got {meta_every!r}")
        if validation not in ("split", "source"):
            raise ValueError(f"validation must be 'split' or 'source', got {validation!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        if inner_lr is not None and not inner_lr > 0:
            raise ValueError(f"inner_lr must be > 0 or None, got {inner_lr!r}")
        self.meta_every = meta_every
        self.validation = validation
        self.val_fraction = float(val_fraction)
        self.inner_lr = inner_lr
        self.log_every = int(log_every)
        self.learner = MetaLearner(AugmentPolicy(policy), lr=lr, inner_lr=inner_lr or 0.1, inner_steps=inner_steps,
                                   backend=backend)
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=history_size)
        self.meta_steps = 0
        self.skipped_meta_steps = 0
        self._val: _Cycle | None = None

    @property
    def policy(self) -> AugmentPolicy:
        return self.learner.policy

    def set_validation_source(self, source: Iterable[Batch] | None) -> None:
        """Cycle over ``source`` (MixBatch or (images, targets) batches, clean) for the outer loss."""
        self._val = None if source is None else _Cycle(source)

    def export_policy(self) -> FixedPolicy:
        """The learned distribution as a fixed policy (run it with ``FixedPolicyAugment`` or call it)."""
        return self.policy.export_policy()

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        return self.policy.sample(images, generator=self.generator)

    def _inner_lr(self, state: State) -> float:
        if self.inner_lr is not None:
            return float(self.inner_lr)
        groups = getattr(state.optimizer, "param_groups", None)
        return float(groups[0]["lr"]) if groups else 0.1

    def _split(self, batch: Any) -> tuple[Any, Any] | None:
        size = batch.batch_size
        n_val = round(size * self.val_fraction)
        if n_val < 1 or size - n_val < 1:
            return None
        order = _random.rand((size,), generator=self.generator).argsort().to(batch.device)
        val_idx, train_idx = order[:n_val], order[n_val:]

        def take(idx: torch.Tensor) -> Any:
            return batch.replace(
                images=batch.images[idx],
                targets={k: v[idx] for k, v in batch.targets.items()},
                aux=None if batch.aux is None else batch.aux[idx],
                aux_mask=None if batch.aux_mask is None else batch.aux_mask[idx],
                indices=None if batch.indices is None else batch.indices[idx],
            )

        return take(train_idx), take(val_idx)

    def _meta(self, state: State) -> None:
        if state.model is None or state.loss_fn is None:
            raise ValueError(
                f"{self.key}: the meta step needs State.model and State.loss_fn "
                f"(loss_fn(outputs, targets) -> loss); set them before INIT"
            )
        batch = state.batch
        if self.validation == "source":
            if self._val is None:
                raise ValueError(f"{self.key}: validation='source' but no source was given; call "
                                 f"set_validation_source(held_out_batches) before training")
            train, val = batch, self._val.next()
            if hasattr(val, "to"):
                val = val.to(batch.device)
            elif isinstance(val, (tuple, list)):
                val = tuple(_to_device(v, batch.device) for v in val)
        else:
            pair = self._split(batch)
            if pair is None:
                self.skipped_meta_steps += 1
                if self.skipped_meta_steps == 1:
                    log.warning("%s: batch of %d cannot be split for the meta step; skipping (counted in "
                                "skipped_meta_steps)", self.key, batch.batch_size)
                return
            train, val = pair
        self.policy.to(batch.device)
        result = self.learner.meta_step(state.model, state.loss_fn, train, val, generator=self.generator,
                                        inner_lr=self._inner_lr(state))
        self.meta_steps += 1
        record = {"meta_step": True, "step": int(state.step), "train_loss": float(result.train_loss),
                  "val_loss": float(result.val_loss), "grad_norm": float(result.grad_norm),
                  "policy": self.policy.summary()}
        self.history.append(record)
        state.scratch[self.key] = record
        if self.log_every and self.meta_steps % self.log_every == 0:
            log.info("%s step %d: val loss %.4f, policy %s", self.key, state.step, record["val_loss"],
                     {k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in record["policy"].items()})

    def apply(self, event: Event, state: State) -> None:
        state.scratch[self.key] = {"meta_step": False, "step": int(state.step)}
        if state.batch is not None and state.step % self.meta_every == 0:
            self._meta(state)
        super().apply(event, state)

    def extra_state(self) -> dict[str, Any]:
        # a copy: state_dict() holds live parameter and Adam tensors that later steps update in place
        return {"learner": copy.deepcopy(self.learner.state_dict()), "meta_steps": self.meta_steps,
                "skipped_meta_steps": self.skipped_meta_steps}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        if "learner" in state:
            self.learner.load_state_dict(state["learner"])
        self.meta_steps = int(state.get("meta_steps", 0))
        self.skipped_meta_steps = int(state.get("skipped_meta_steps", 0))
