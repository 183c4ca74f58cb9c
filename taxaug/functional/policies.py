"""Batched augmentation policies with per-sample op choice: AutoAugment, RandAugment,
TrivialAugmentWide, AugMix and RandomErasing.

Every sample draws its own sub-policy / ops / magnitudes / signs. The ops then run by *grouped
dispatch*: the samples that drew the same op are gathered (index_select), the op runs once over
them, and the results are scattered back (index_put_). All geometric ops of one round share one
affine warp. One host sync per round reads the group sizes; there is no per-sample Python loop.
Every random draw goes through `taxaug.functional.random` with the caller's `generator` and is
made on the batch's device (or the generator's, then moved), so the same generator state gives
the same output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import attrs
import numpy as np
import torch

from taxaug.functional import geometry as _geometry
from taxaug.functional import photometric as _color
from taxaug.functional import random as _random
from taxaug.functional._image_common import (
    Fill,
    as_param,
    check_image_batch,
    compute_dtype,
    fill_tensor,
    memory_format,
    sample_blocks,
)
from taxaug.functional._validate import check_images, check_probability, describe

__all__ = [
    "AUGMIX_SETS",
    "AUTOAUGMENT_OPS",
    "AUTOAUGMENT_POLICIES",
    "OP_TABLES",
    "RANDAUGMENT_OPS",
    "TRIVIAL_AUGMENT_WIDE_OPS",
    "OpSpec",
    "apply_ops_per_sample",
    "augmix",
    "augmix_image",
    "auto_augment",
    "op_parameters",
    "rand_augment",
    "random_erasing",
    "trivial_augment_wide",
]


# ----------------------------------------------------------------------------- op table


def _hflip_kernel(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


_KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "brightness": _color._k_brightness,
    "color": _color._k_color,
    "contrast": _color._k_contrast,
    "sharpness": _color._k_sharpness,
    "posterize": _color._k_posterize,
    "solarize": _color._k_solarize,
    "solarize_add": _color._k_solarize_add,
    "autocontrast": _color._k_autocontrast,
    "equalize": _color._k_equalize,
    "invert": _color._k_invert,
    "hflip": _hflip_kernel,
}
_GEOMETRIC = {k: v for k, v in _geometry.GEOMETRIC_DATA.items() if k != "hflip"}
OP_NAMES = ("identity", *_KERNELS, *_GEOMETRIC)


@attrs.frozen
class OpSpec:
    """One op of a policy and how a magnitude maps to its parameter.

    A magnitude fraction f in [0, 1] (bin / (num_bins - 1)) gives ``low + (high - low) * f``;
    `relative` ("width"/"height") scales that by the image size (translations); `signed` ops get a
    random sign; `offset` is added after the sign (enhance factors are 1 + m); `integer` rounds
    (posterize bits). `fn` is the public batched op in `taxaug.functional`.
    """

    name: str = attrs.field(validator=attrs.validators.in_(OP_NAMES))
    low: float = 0.0
    high: float = 0.0
    signed: bool = False
    relative: str | None = attrs.field(default=None, validator=attrs.validators.in_((None, "width", "height")))
    offset: float = 0.0
    integer: bool = False

    @property
    def fn(self) -> Callable[..., torch.Tensor]:
        from taxaug.functional import image_ops

        return getattr(image_ops, self.name)

    @property
    def has_magnitude(self) -> bool:
        return self.low != self.high


def _enhance(name: str, high: float) -> OpSpec:
    return OpSpec(name, 0.0, high, signed=True, offset=1.0)


def _table(shear: float, translate: float, relative: str | None, rotate: float, enhance: float,
           post_low: float, identity: bool, invert: bool) -> tuple[OpSpec, ...]:
    ops = [OpSpec("identity")] if identity else []
    ops += [
        OpSpec("shear_x", 0.0, shear, signed=True),
        OpSpec("shear_y", 0.0, shear, signed=True),
        OpSpec("translate_x", 0.0, translate, signed=True, relative=relative and "width"),
        OpSpec("translate_y", 0.0, translate, signed=True, relative=relative and "height"),
        OpSpec("rotate", 0.0, rotate, signed=True),
        _enhance("brightness", enhance),
        _enhance("color", enhance),
        _enhance("contrast", enhance),
        _enhance("sharpness", enhance),
        OpSpec("posterize", 8.0, post_low, integer=True),
        OpSpec("solarize", 255.0, 0.0),
        OpSpec("autocontrast"),
        OpSpec("equalize"),
    ]
    if invert:
        ops.append(OpSpec("invert"))
    return tuple(ops)


# Ranges as in torchvision's AutoAugment/RandAugment/TrivialAugmentWide (image-size translations
# are 150/331 of the side for AutoAugment and RandAugment, 32 px for TrivialAugmentWide).
AUTOAUGMENT_OPS = _table(0.3, 150.0 / 331.0, "rel", 30.0, 0.9, 4.0, identity=False, invert=True)
RANDAUGMENT_OPS = _table(0.3, 150.0 / 331.0, "rel", 30.0, 0.9, 4.0, identity=True, invert=False)
TRIVIAL_AUGMENT_WIDE_OPS = _table(0.99, 32.0, None, 135.0, 0.99, 2.0, identity=True, invert=False)
AUGMIX_OPS = (
    OpSpec("autocontrast"),
    OpSpec("equalize"),
    OpSpec("posterize", 4.0, 0.0, integer=True),
    OpSpec("rotate", 0.0, 30.0, signed=True),
    OpSpec("solarize", 256.0, 0.0),
    OpSpec("shear_x", 0.0, 0.3, signed=True),
    OpSpec("shear_y", 0.0, 0.3, signed=True),
    OpSpec("translate_x", 0.0, 1.0 / 3.0, signed=True, relative="width"),
    OpSpec("translate_y", 0.0, 1.0 / 3.0, signed=True, relative="height"),
    OpSpec("color", 0.1, 1.9),
    OpSpec("contrast", 0.1, 1.9),
    OpSpec("brightness", 0.1, 1.9),
    OpSpec("sharpness", 0.1, 1.9),
)
"""AugMix ops with their ranges at severity 10 (`augmix` samples levels as the AugMix paper does)."""

OP_TABLES: dict[str, tuple[OpSpec, ...]] = {
    "autoaugment": AUTOAUGMENT_OPS,
    "randaugment": RANDAUGMENT_OPS,
    "trivial_augment_wide": TRIVIAL_AUGMENT_WIDE_OPS,
    "augmix": AUGMIX_OPS,
}

AUGMIX_SETS: dict[str, tuple[str, ...]] = {
    "all": ("autocontrast", "equalize", "posterize", "rotate", "solarize", "shear_x", "shear_y",
            "translate_x", "translate_y", "color", "contrast", "brightness", "sharpness"),
    # drops the ops that overlap the ImageNet-C / CIFAR-10-C corruptions
    "safe": ("autocontrast", "equalize", "posterize", "rotate", "solarize", "shear_x", "shear_y",
             "translate_x", "translate_y"),
    # "all" with the original AugMix sampling of the enhance factors (0.1 + 0.18 * level)
    "original": ("autocontrast", "equalize", "posterize", "rotate", "solarize", "shear_x", "shear_y",
                 "translate_x", "translate_y", "color", "contrast", "brightness", "sharpness"),
}

_P = tuple[tuple[str, float, int | None], tuple[str, float, int | None]]

# Published AutoAugment sub-policies (Cubuk et al. 2019), (op, probability, magnitude bin of 10).
AUTOAUGMENT_POLICIES: dict[str, tuple[_P, ...]] = {
    "imagenet": (
        (("posterize", 0.4, 8), ("rotate", 0.6, 9)),
        (("solarize", 0.6, 5), ("autocontrast", 0.6, None)),
        (("equalize", 0.8, None), ("equalize", 0.6, None)),
        (("posterize", 0.6, 7), ("posterize", 0.6, 6)),
        (("equalize", 0.4, None), ("solarize", 0.2, 4)),
        (("equalize", 0.4, None), ("rotate", 0.8, 8)),
        (("solarize", 0.6, 3), ("equalize", 0.6, None)),
        (("posterize", 0.8, 5), ("equalize", 1.0, None)),
        (("rotate", 0.2, 3), ("solarize", 0.6, 8)),
        (("equalize", 0.6, None), ("posterize", 0.4, 6)),
        (("rotate", 0.8, 8), ("color", 0.4, 0)),
        (("rotate", 0.4, 9), ("equalize", 0.6, None)),
        (("equalize", 0.0, None), ("equalize", 0.8, None)),
        (("invert", 0.6, None), ("equalize", 1.0, None)),
        (("color", 0.6, 4), ("contrast", 1.0, 8)),
        (("rotate", 0.8, 8), ("color", 1.0, 2)),
        (("color", 0.8, 8), ("solarize", 0.8, 7)),
        (("sharpness", 0.4, 7), ("invert", 0.6, None)),
        (("shear_x", 0.6, 5), ("equalize", 1.0, None)),
        (("color", 0.4, 0), ("equalize", 0.6, None)),
        (("equalize", 0.4, None), ("solarize", 0.2, 4)),
        (("solarize", 0.6, 5), ("autocontrast", 0.6, None)),
        (("invert", 0.6, None), ("equalize", 1.0, None)),
        (("color", 0.6, 4), ("contrast", 1.0, 8)),
        (("equalize", 0.8, None), ("equalize", 0.6, None)),
    ),
    "cifar10": (
        (("invert", 0.1, None), ("contrast", 0.2, 6)),
        (("rotate", 0.7, 2), ("translate_x", 0.3, 9)),
        (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)),
        (("shear_y", 0.5, 8), ("translate_y", 0.7, 9)),
        (("autocontrast", 0.5, None), ("equalize", 0.9, None)),
        (("shear_y", 0.2, 7), ("posterize", 0.3, 7)),
        (("color", 0.4, 3), ("brightness", 0.6, 7)),
        (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
        (("equalize", 0.6, None), ("equalize", 0.5, None)),
        (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
        (("color", 0.7, 7), ("translate_x", 0.5, 8)),
        (("equalize", 0.3, None), ("autocontrast", 0.4, None)),
        (("translate_y", 0.4, 3), ("sharpness", 0.2, 6)),
        (("brightness", 0.9, 6), ("color", 0.2, 8)),
        (("solarize", 0.5, 2), ("invert", 0.0, None)),
        (("equalize", 0.2, None), ("autocontrast", 0.6, None)),
        (("equalize", 0.2, None), ("equalize", 0.6, None)),
        (("color", 0.9, 9), ("equalize", 0.6, None)),
        (("autocontrast", 0.8, None), ("solarize", 0.2, 8)),
        (("brightness", 0.1, 3), ("color", 0.7, 0)),
        (("solarize", 0.4, 5), ("autocontrast", 0.9, None)),
        (("translate_y", 0.9, 9), ("translate_y", 0.7, 9)),
        (("autocontrast", 0.9, None), ("solarize", 0.8, 3)),
        (("equalize", 0.8, None), ("invert", 0.1, None)),
        (("translate_y", 0.7, 9), ("autocontrast", 0.9, None)),
    ),
    "svhn": (
        (("shear_x", 0.9, 4), ("invert", 0.2, None)),
        (("shear_y", 0.9, 8), ("invert", 0.7, None)),
        (("equalize", 0.6, None), ("solarize", 0.6, 6)),
        (("invert", 0.9, None), ("equalize", 0.6, None)),
        (("equalize", 0.6, None), ("rotate", 0.9, 3)),
        (("shear_x", 0.9, 4), ("autocontrast", 0.8, None)),
        (("shear_y", 0.9, 8), ("invert", 0.4, None)),
        (("shear_y", 0.9, 5), ("solarize", 0.2, 6)),
        (("invert", 0.9, None), ("autocontrast", 0.8, None)),
        (("equalize", 0.6, None), ("rotate", 0.9, 3)),
        (("shear_x", 0.9, 4), ("solarize", 0.3, 3)),
        (("shear_y", 0.8, 8), ("invert", 0.7, None)),
        (("equalize", 0.9, None), ("translate_y", 0.6, 6)),
        (("invert", 0.9, None), ("equalize", 0.6, None)),
        (("contrast", 0.3, 3), ("rotate", 0.8, 4)),
        (("invert", 0.8, None), ("translate_y", 0.0, 2)),
        (("shear_y", 0.7, 6), ("solarize", 0.4, 8)),
        (("invert", 0.6, None), ("rotate", 0.8, 4)),
        (("shear_y", 0.3, 7), ("translate_x", 0.9, 3)),
        (("shear_x", 0.1, 6), ("invert", 0.6, None)),
        (("solarize", 0.7, 2), ("translate_y", 0.6, 7)),
        (("shear_y", 0.8, 4), ("invert", 0.8, None)),
        (("shear_x", 0.7, 9), ("translate_y", 0.8, 3)),
        (("shear_y", 0.8, 5), ("autocontrast", 0.7, None)),
        (("shear_x", 0.7, 2), ("invert", 0.1, None)),
    ),
}
AUTOAUGMENT_BINS = 10


# ----------------------------------------------------------------------------- parameters & dispatch


def op_parameters(
    specs: Sequence[OpSpec],
    op_indices: torch.Tensor,
    fraction: torch.Tensor,
    negate: torch.Tensor | None,
    height: int,
    width: int,
) -> torch.Tensor:
    """Per-sample op parameters (float64, (B,)) from op indices into `specs`, magnitude fractions in
    [0, 1] and a bool `negate` (signed ops only)."""
    dev = op_indices.device
    low = torch.tensor([s.low for s in specs], dtype=torch.float64, device=dev)[op_indices]
    high = torch.tensor([s.high for s in specs], dtype=torch.float64, device=dev)[op_indices]
    size = [float(width) if s.relative == "width" else float(height) if s.relative == "height" else 1.0
            for s in specs]
    scale = torch.tensor(size, dtype=torch.float64, device=dev)[op_indices]
    signed = torch.tensor([s.signed for s in specs], device=dev)[op_indices]
    offset = torch.tensor([s.offset for s in specs], dtype=torch.float64, device=dev)[op_indices]
    integer = torch.tensor([s.integer for s in specs], device=dev)[op_indices]
    value = (low + (high - low) * fraction.double()) * scale
    value = torch.where(integer, value.round(), value)
    if negate is not None:
        value = torch.where(signed & negate, -value, value)
    return value + offset


def _dispatch(
    x: torch.Tensor,
    op_indices: torch.Tensor,
    params: torch.Tensor,
    names: Sequence[str],
    fill: Fill,
    interpolation: str,
) -> torch.Tensor:
    """Run op `names[op_indices[i]]` with `params[i]` on sample i, each op once over its group."""
    n_ops = len(names)
    geo = torch.tensor([n in _GEOMETRIC for n in names], device=x.device)
    group = torch.where(geo[op_indices], n_ops, op_indices)
    counts = torch.bincount(group, minlength=n_ops + 1).tolist()  # the one host sync of the round
    if "identity" in names and counts[names.index("identity")] == x.shape[0]:
        return x
    order = torch.argsort(group, stable=True)
    per_block = sample_blocks(x)[0].stop or 1
    n_identity = counts[names.index("identity")] if "identity" in names else 0
    # Output rows of untouched samples must be copied; with few of them, copying just those rows
    # beats cloning the whole batch and overwriting the rest.
    clone_first = 2 * n_identity >= x.shape[0]
    out: torch.Tensor | None = None
    start = 0
    fill_t = fill_tensor(fill, x.shape[1], x.dtype, x.device) if any(n in _GEOMETRIC for n in names) else None
    for gid, count in enumerate(counts):
        if count == 0:
            continue
        group_idx = order[start : start + count]
        start += count
        is_identity = gid < n_ops and names[gid] == "identity"
        if is_identity and clone_first:
            continue
        for first in range(0, count, per_block):
            idx = group_idx[first : first + per_block]
            whole = idx.numel() == x.shape[0]
            if is_identity:
                res = x.index_select(0, idx)
            else:
                sub = x if whole else x.index_select(0, idx)
                p = params if whole else params.index_select(0, idx)
                if gid == n_ops:
                    sub_ops = op_indices if whole else op_indices.index_select(0, idx)
                    res = _warp_group(sub, sub_ops, p, names, fill_t, interpolation)
                else:
                    res = _KERNELS[names[gid]](sub, p)
            if whole:
                return res
            if out is None:
                out = x.clone() if clone_first else torch.empty_like(x)
            out.index_put_((idx,), res)  # faster than index_copy_ on CPU
    return x if out is None else out


def _warp_group(x: torch.Tensor, ops: torch.Tensor, p: torch.Tensor, names: Sequence[str],
                fill_t: torch.Tensor | None, interpolation: str) -> torch.Tensor:
    """One affine warp for samples that drew (possibly different) geometric ops."""
    data = torch.zeros(x.shape[0], 6, dtype=torch.float64, device=x.device)
    for k, name in enumerate(names):
        if name in _GEOMETRIC:
            data = torch.where((ops == k).unsqueeze(1), _GEOMETRIC[name](p, x.shape[2], x.shape[3]), data)
    assert fill_t is not None
    if interpolation == "nearest":
        return _geometry._warp_nearest(x, data, fill_t)
    return _geometry._warp_bilinear(x, data, fill_t)


def _finish(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if out is like:
        out = out.clone()
    return out.to(like.dtype).contiguous(memory_format=memory_format(like))


def _prepare(images: object, clamp: bool, fill: Fill, interpolation: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = check_image_batch(images, clamp=clamp)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"policies need grey (C=1) or RGB (C=3) images, got {x.shape[1]} channels "
                         f"({describe(x)}); drop alpha or extra bands first")
    if interpolation not in _geometry.INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_geometry.INTERPOLATIONS}, got {interpolation!r}")
    fill_tensor(fill, x.shape[1], x.dtype, x.device)  # validates fill early
    return x, x.to(compute_dtype(x))


def apply_ops_per_sample(
    images: torch.Tensor,
    op_indices: torch.Tensor,
    magnitudes: torch.Tensor | float,
    op_names: Sequence[str],
    *,
    fill: Fill = None,
    interpolation: str = "nearest",
    clamp: bool = False,
) -> torch.Tensor:
    """Apply op ``op_names[op_indices[i]]`` with parameter ``magnitudes[i]`` to sample i, by grouped dispatch.

    `magnitudes` are the ops' own parameters (degrees, shear factor, pixels, enhance factor, bits,
    threshold levels; ignored by parameter-free ops). Valid names: ``OP_NAMES``.
    """
    x, work = _prepare(images, clamp, fill, interpolation)
    unknown = [n for n in op_names if n not in OP_NAMES]
    if unknown:
        raise ValueError(f"unknown op names {unknown}; valid names are {list(OP_NAMES)}")
    if not isinstance(op_indices, torch.Tensor) or op_indices.shape != (x.shape[0],) or op_indices.is_floating_point():
        raise ValueError(f"op_indices must be an integer tensor of shape ({x.shape[0]},), got {describe(op_indices)}")
    op_indices = op_indices.to(device=x.device, dtype=torch.long)
    if op_indices.numel() and (int(op_indices.min()) < 0 or int(op_indices.max()) >= len(op_names)):
        raise ValueError(f"op_indices must lie in [0, {len(op_names)}), got values outside")
    params = as_param(magnitudes, x.shape[0], x.device, "magnitudes")
    names = list(op_names)
    if "identity" not in names:
        names = [*names, "identity"]
    return _finish(_dispatch(work, op_indices, params, names, fill, interpolation), x)


def _names(specs: Sequence[OpSpec]) -> list[str]:
    names = [s.name for s in specs]
    return names if "identity" in names else [*names, "identity"]


# ----------------------------------------------------------------------------- AutoAugment


def _policy_tensors(policy: str, device: torch.device):
    table = AUTOAUGMENT_POLICIES[policy]
    names = [s.name for s in AUTOAUGMENT_OPS]
    ops = torch.tensor([[names.index(op) for op, _, _ in sub] for sub in table], device=device)
    probs = torch.tensor([[p for _, p, _ in sub] for sub in table], dtype=torch.float32, device=device)
    bins = torch.tensor([[b or 0 for _, _, b in sub] for sub in table], dtype=torch.float64, device=device)
    return ops, probs, bins


def auto_augment(
    images: torch.Tensor,
    policy: str = "imagenet",
    *,
    generator: torch.Generator | None = None,
    fill: Fill = None,
    interpolation: str = "nearest",
    clamp: bool = False,
) -> torch.Tensor:
    """AutoAugment: each sample draws one of the 25 published sub-policies of `policy`
    ("imagenet", "cifar10", "svhn") and applies its two ops, each with its probability."""
    if policy not in AUTOAUGMENT_POLICIES:
        raise ValueError(f"unknown AutoAugment policy {policy!r}; choose one of {sorted(AUTOAUGMENT_POLICIES)}")
    x, work = _prepare(images, clamp, fill, interpolation)
    b, dev = x.shape[0], x.device
    ops, probs, bins = _policy_tensors(policy, dev)
    names = _names(AUTOAUGMENT_OPS)
    identity = names.index("identity")
    specs = [*AUTOAUGMENT_OPS, OpSpec("identity")]
    sub = _random.randint(len(AUTOAUGMENT_POLICIES[policy]), (b,), generator=generator, device=dev)
    u = _random.rand((b, 2), generator=generator, device=dev)
    negate = _random.rand((b, 2), generator=generator, device=dev) < 0.5
    for step in range(2):
        op = torch.where(u[:, step] <= probs[sub, step], ops[sub, step], identity)
        fraction = bins[sub, step] / (AUTOAUGMENT_BINS - 1)
        params = op_parameters(specs, op, fraction, negate[:, step], x.shape[2], x.shape[3])
        work = _dispatch(work, op, params, names, fill, interpolation)
    return _finish(work, x)


# ----------------------------------------------------------------------------- RandAugment / TrivialAugment


def _check_bins(num_magnitude_bins: object) -> int:
    if not isinstance(num_magnitude_bins, int) or isinstance(num_magnitude_bins, bool) or num_magnitude_bins < 2:
        raise ValueError(f"num_magnitude_bins must be an integer >= 2, got {num_magnitude_bins!r}")
    return num_magnitude_bins


def rand_augment(
    images: torch.Tensor,
    num_ops: int = 2,
    magnitude: float = 9,
    *,
    num_magnitude_bins: int = 31,
    magnitude_std: float = 0.0,
    generator: torch.Generator | None = None,
    fill: Fill = None,
    interpolation: str = "nearest",
    clamp: bool = False,
) -> torch.Tensor:
    """RandAugment: `num_ops` rounds, each sample drawing its own op (uniform over the 14 ops) and sign.

    `magnitude` is a bin in [0, num_magnitude_bins - 1]. With `magnitude_std` > 0 each sample and
    round draws its magnitude from N(magnitude, magnitude_std) clipped to the bin range (timm's
    magnitude noise); ``magnitude_std=inf`` draws it uniformly from [0, magnitude].
    """
    bins = _check_bins(num_magnitude_bins)
    if not isinstance(num_ops, int) or isinstance(num_ops, bool) or num_ops < 0:
        raise ValueError(f"num_ops (N) must be an integer >= 0, got {num_ops!r}")
    if not isinstance(magnitude, (int, float)) or not 0 <= magnitude <= bins - 1:
        raise ValueError(f"magnitude must be a bin in [0, {bins - 1}] (num_magnitude_bins={bins}), got {magnitude!r}")
    if not isinstance(magnitude_std, (int, float)) or math.isnan(magnitude_std) or magnitude_std < 0:
        raise ValueError(f"magnitude_std must be >= 0 (inf for uniform), got {magnitude_std!r}")
    x, work = _prepare(images, clamp, fill, interpolation)
    b, dev = x.shape[0], x.device
    specs = RANDAUGMENT_OPS
    names = _names(specs)
    for _ in range(num_ops):
        op = _random.randint(len(specs), (b,), generator=generator, device=dev)
        negate = _random.rand((b,), generator=generator, device=dev) < 0.5
        m = torch.full((b,), float(magnitude), dtype=torch.float64, device=dev)
        if math.isinf(magnitude_std):
            m = m * _random.rand((b,), generator=generator, device=dev, dtype=torch.float64)
        elif magnitude_std > 0:
            m = m + magnitude_std * _random.randn((b,), generator=generator, device=dev, dtype=torch.float64)
        m = m.clamp(0, bins - 1)
        params = op_parameters(specs, op, m / (bins - 1), negate, x.shape[2], x.shape[3])
        work = _dispatch(work, op, params, names, fill, interpolation)
    return _finish(work, x)


def trivial_augment_wide(
    images: torch.Tensor,
    *,
    num_magnitude_bins: int = 31,
    generator: torch.Generator | None = None,
    fill: Fill = None,
    interpolation: str = "nearest",
    clamp: bool = False,
) -> torch.Tensor:
    """TrivialAugmentWide: each sample draws one op, one magnitude bin and one sign, uniformly."""
    bins = _check_bins(num_magnitude_bins)
    x, work = _prepare(images, clamp, fill, interpolation)
    b, dev = x.shape[0], x.device
    specs = TRIVIAL_AUGMENT_WIDE_OPS
    op = _random.randint(len(specs), (b,), generator=generator, device=dev)
    level = _random.randint(bins, (b,), generator=generator, device=dev)
    negate = _random.rand((b,), generator=generator, device=dev) < 0.5
    params = op_parameters(specs, op, level.double() / (bins - 1), negate, x.shape[2], x.shape[3])
    return _finish(_dispatch(work, op, params, _names(specs), fill, interpolation), x)


# ----------------------------------------------------------------------------- AugMix


def _augmix_parameters(names: Sequence[str], op: torch.Tensor, level: torch.Tensor, negate: torch.Tensor,
                       u_side: torch.Tensor, u_val: torch.Tensor, original: bool, height: int,
                       width: int) -> torch.Tensor:
    """Op parameters from AugMix levels in [0.1, severity] as in the AugMix reference code."""
    sign = torch.where(negate, -1.0, 1.0).double()
    level = level.double()
    if original:
        enhance = level * 0.18 + 0.1
    else:  # symmetric around 1 (Composer's "all"): uniform on [1 - 0.09 level, 1] or [1, level]
        enhance = torch.where(u_side > 0.5, 1.0 + (level - 1.0) * u_val, 1.0 - 0.09 * level * (1.0 - u_val))
    rules = {
        "posterize": 4.0 - torch.floor(level * 4.0 / 10.0),
        "rotate": torch.floor(level * 30.0 / 10.0) * sign,
        "solarize": 256.0 - torch.floor(level * 256.0 / 10.0),
        "shear_x": level * 0.3 / 10.0 * sign,
        "shear_y": level * 0.3 / 10.0 * sign,
        "translate_x": torch.floor(level * (width / 3.0) / 10.0) * sign,
        "translate_y": torch.floor(level * (height / 3.0) / 10.0) * sign,
        "color": enhance,
        "contrast": enhance,
        "sharpness": enhance,
        "brightness": enhance if original else torch.where(enhance > 1.0, enhance * 0.75, enhance),
    }
    params = torch.zeros_like(level)
    for k, name in enumerate(names):
        if name in rules:
            params = torch.where(op == k, rules[name], params)
    return params


def augmix(
    images: torch.Tensor,
    *,
    severity: int = 3,
    width: int = 3,
    depth: int = -1,
    alpha: float = 1.0,
    augmentation_set: str = "all",
    generator: torch.Generator | None = None,
    fill: Fill = None,
    interpolation: str = "nearest",
    clamp: bool = False,
) -> torch.Tensor:
    """AugMix (AugmentAndMix): `width` chains of `depth` ops (-1: 1..3 per chain and sample), each op at
    a level uniform in [0.1, severity]; chains mixed with per-sample Dirichlet(alpha) weights, then
    blended with the original by a per-sample Beta(alpha, alpha) weight m: ``(1 - m) x + m mix``.
    """
    if augmentation_set not in AUGMIX_SETS:
        raise ValueError(f"unknown augmentation_set {augmentation_set!r}; choose one of {sorted(AUGMIX_SETS)}")
    if not isinstance(severity, int) or isinstance(severity, bool) or not 1 <= severity <= 10:
        raise ValueError(f"severity must be an integer in [1, 10], got {severity!r}")
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"width must be an integer >= 1, got {width!r}")
    if not isinstance(depth, int) or isinstance(depth, bool) or not (depth == -1 or depth >= 1):
        raise ValueError(f"depth must be -1 (random in 1..3) or an integer >= 1, got {depth!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    x, work = _prepare(images, clamp, fill, interpolation)
    b, dev = x.shape[0], x.device
    h, w = x.shape[2], x.shape[3]
    set_names = AUGMIX_SETS[augmentation_set]
    names = ["identity", *set_names]
    n = width * b
    chains = work.repeat(width, 1, 1, 1)  # chain-major: row c * b + i is chain c of sample i
    if depth > 0:
        depths = torch.full((n,), depth, device=dev)
    else:
        depths = _random.randint(3, (n,), generator=generator, device=dev) + 1
    for step in range(depth if depth > 0 else 3):
        op = _random.randint(len(set_names), (n,), generator=generator, device=dev) + 1
        op = torch.where(depths > step, op, 0)
        level = 0.1 + (severity - 0.1) * _random.rand((n,), generator=generator, device=dev, dtype=torch.float64)
        negate = _random.rand((n,), generator=generator, device=dev) < 0.5
        u_side = _random.rand((n,), generator=generator, device=dev)
        u_val = _random.rand((n,), generator=generator, device=dev, dtype=torch.float64)
        params = _augmix_parameters(names, op, level, negate, u_side, u_val, augmentation_set == "original", h, w)
        chains = _dispatch(chains, op, params, names, fill, interpolation)
    weights = _random.sample_dirichlet([float(alpha)] * width, b, generator=generator, device=dev)
    m = _random.sample_beta(float(alpha), float(alpha), (b,), generator=generator, device=dev)
    mix_dtype = torch.float32 if work.dtype == torch.uint8 else work.dtype
    stacked = chains.reshape(width, b, *chains.shape[1:])
    weights = weights.to(mix_dtype)
    m = m.to(mix_dtype)
    out = torch.empty_like(work)
    for blk in sample_blocks(work):  # mix block by block so the float temporaries stay in cache
        mb = m[blk].reshape(-1, 1, 1, 1)
        acc = work[blk].to(mix_dtype) * (1.0 - mb)  # not in place: work may be the caller's tensor
        for k in range(width):
            acc.add_(stacked[k, blk].to(mix_dtype).mul_(weights[blk, k].reshape(-1, 1, 1, 1) * mb))
        if x.dtype == torch.uint8:
            out[blk] = acc.round_().clamp_(0, 255)
        else:
            out[blk] = acc.clamp_(0.0, 1.0)
    return _finish(out, x)


def augmix_image(image, *, severity: int = 3, width: int = 3, depth: int = -1, alpha: float = 1.0,
                 augmentation_set: str = "all", generator: torch.Generator | None = None):
    """AugMix on one PIL image (mode L or RGB), returning a PIL image: for per-image dataset pipelines."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise TypeError(f"augmix_image expects a PIL.Image.Image, got {describe(image)}; use augmix for tensors")
    if image.mode not in ("L", "RGB"):
        raise ValueError(f"augmix_image supports PIL modes 'L' and 'RGB', got {image.mode!r}; convert it first")
    arr = np.asarray(image)
    t = torch.from_numpy(arr.copy())
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    out = augmix(t.unsqueeze(0), severity=severity, width=width, depth=depth, alpha=alpha,
                 augmentation_set=augmentation_set, generator=generator)[0]
    out_arr = out[0].numpy() if image.mode == "L" else out.permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(out_arr, mode=image.mode)


# ----------------------------------------------------------------------------- RandomErasing

ERASING_MODES = ("const", "rand", "pixel")


def _check_range(pair: object, name: str, low: float, high: float | None) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in pair)  # type: ignore[union-attr]
    except Exception:
        raise TypeError(f"{name} must be a pair (min, max), got {pair!r}") from None
    if not (low < a <= b) or (high is not None and b > high):
        top = "" if high is None else f" and max <= {high}"
        raise ValueError(f"{name} must satisfy {low} < min <= max{top}, got {pair!r}")
    return a, b


def _erase_value(value: object, channels: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    try:
        v = torch.as_tensor(value, dtype=torch.float64).flatten()
    except Exception:
        raise TypeError(f"value must be a number or a sequence of per-channel numbers, got {value!r}") from None
    if v.numel() == 1:
        v = v.expand(channels)
    if v.numel() != channels:
        raise ValueError(f"value must be a number or one value per channel ({channels}), got {value!r}")
    if dtype == torch.uint8:
        if bool(((v < 0) | (v > 255)).any()):
            raise ValueError(f"value must lie in [0, 255] for uint8 images, got {value!r}")
        v = v.round()
    return v.to(device=device, dtype=dtype)


def random_erasing(
    images: torch.Tensor,
    *,
    p: float = 0.5,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
    mode: str = "const",
    value: float | Sequence[float] = 0,
    count: int = 1,
    max_attempts: int = 10,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random Erasing, vectorised: each sample is erased with probability `p` by `count` boxes.

    Each box takes the first of `max_attempts` candidates (area ``U(scale) * H * W / count``,
    aspect ratio log-uniform in `ratio`) that fits in the image; a sample with no fitting
    candidate is left as is. Modes: "const" fills `value` (a number or one per channel, in the
    image's range), "rand" uniform noise per pixel over the image's range, "pixel" normal noise
    per pixel (float: N(0, 1), as timm on normalised images; uint8: round(128 + 64 z) clipped).
    Erasing does not need [0, 1] floats, so it also works after normalisation.
    """
    x = check_images(images)
    check_probability(p, "p")
    s_lo, s_hi = _check_range(scale, "scale", 0.0, 1.0)
    r_lo, r_hi = _check_range(ratio, "ratio", 0.0, None)
    if mode not in ERASING_MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {ERASING_MODES}")
    for name, v in (("count", count), ("max_attempts", max_attempts)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    b, c, h, w = x.shape
    dev = x.device
    fmt = memory_format(x)
    apply = _random.rand((b,), generator=generator, device=dev) < p
    shape = (b, count, max_attempts)
    area = (s_lo + (s_hi - s_lo) * _random.rand(shape, generator=generator, device=dev, dtype=torch.float64))
    area = area * (h * w / count)
    log_r = math.log(r_lo) + (math.log(r_hi) - math.log(r_lo)) * _random.rand(
        shape, generator=generator, device=dev, dtype=torch.float64)
    aspect = torch.exp(log_r)
    bh = torch.round(torch.sqrt(area * aspect))
    bw = torch.round(torch.sqrt(area / aspect))
    fits = (bh < h) & (bw < w) & (bh >= 1) & (bw >= 1)
    first = fits.to(torch.uint8).argmax(dim=2, keepdim=True)
    found = fits.any(dim=2)
    bh = bh.gather(2, first).squeeze(2)
    bw = bw.gather(2, first).squeeze(2)
    u_top = _random.rand((b, count), generator=generator, device=dev, dtype=torch.float64)
    u_left = _random.rand((b, count), generator=generator, device=dev, dtype=torch.float64)
    top = torch.floor(u_top * (h - bh + 1))
    left = torch.floor(u_left * (w - bw + 1))
    active = (apply.unsqueeze(1) & found).unsqueeze(2)
    rows = torch.arange(h, device=dev, dtype=torch.float64)
    cols = torch.arange(w, device=dev, dtype=torch.float64)
    in_rows = active & (rows >= top.unsqueeze(2)) & (rows < (top + bh).unsqueeze(2))
    in_cols = active & (cols >= left.unsqueeze(2)) & (cols < (left + bw).unsqueeze(2))
    mask = (in_rows.unsqueeze(3) & in_cols.unsqueeze(2)).any(dim=1).unsqueeze(1)  # (B, 1, H, W)
    if mode == "const":
        fill = _erase_value(value, c, x.dtype, dev)
        out = x.clone()
        if c == 1 or bool((fill == fill[0]).all()):
            out.masked_fill_(mask, fill[0])
        else:
            for ch in range(c):  # per-channel value: one masked fill per channel
                out[:, ch : ch + 1].masked_fill_(mask, fill[ch])
        return out.contiguous(memory_format=fmt)
    full = mask.expand(b, c, h, w)
    n = int(full.sum())
    if mode == "rand":
        noise = _random.rand((n,), generator=generator, device=dev)
        noise = (noise * 256).floor_().clamp_(0, 255) if x.dtype == torch.uint8 else noise
    else:
        noise = _random.randn((n,), generator=generator, device=dev)
        noise = (128 + 64 * noise).round_().clamp_(0, 255) if x.dtype == torch.uint8 else noise
    out = x.clone(memory_format=torch.contiguous_format)
    out.masked_scatter_(full, noise.to(x.dtype))
    return out.contiguous(memory_format=fmt)
