"""Batched augmentation policies with per-sample op choice: AutoAugment, RandAugment,
TrivialAugmentWide and AugMix (RandomErasing lives in erasing.py, the op tables in op_tables.py,
the grouped dispatcher in dispatch.py; this module re-exports them all under one ``__all__``).

Every sample draws its own sub-policy / ops / magnitudes / signs; the ops then run by grouped
dispatch (`apply_ops_per_sample`). Every random draw goes through `taxaug.functional.random` with
the caller's `generator` and is made on the batch's device (or the generator's, then moved), so the
same generator state gives the same output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from taxaug import _memory
from taxaug.functional import random as _random
from taxaug.functional._image_common import Fill, sample_blocks
from taxaug.functional._validate import describe
from taxaug.functional.dispatch import _dispatch, _finish, _prepare, apply_ops_per_sample
from taxaug.functional.erasing import random_erasing
from taxaug.functional.op_tables import (
    AUGMIX_OPS,
    AUGMIX_SETS,
    AUTOAUGMENT_BINS,
    AUTOAUGMENT_OPS,
    AUTOAUGMENT_POLICIES,
    OP_NAMES,
    OP_TABLES,
    RANDAUGMENT_OPS,
    TRIVIAL_AUGMENT_WIDE_OPS,
    OpSpec,
    op_parameters,
)

__all__ = [
    "AUGMIX_OPS",
    "AUGMIX_SETS",
    "AUTOAUGMENT_BINS",
    "AUTOAUGMENT_OPS",
    "AUTOAUGMENT_POLICIES",
    "OP_NAMES",
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

def _names(specs: Sequence[OpSpec]) -> list[str]:
    names = [s.name for s in specs]
    return names if "identity" in names else [*names, "identity"]


def _policy_parameters(specs: Sequence[OpSpec], op: torch.Tensor, fraction: torch.Tensor, negate: torch.Tensor,
                       height: int, width: int) -> torch.Tensor:
    """`op_parameters` with translations in whole pixels truncated toward zero, as torchvision's
    ``int(magnitude)``. The float64 magnitude of an exact integer can fall an ulp short (150/331 of 331 px
    at bin 11 of 31 is 54.99999999999999), so values within 2**-40 (relative) below an integer count as it."""
    params = op_parameters(specs, op, fraction, negate, height, width)
    translate = torch.tensor([s.name in ("translate_x", "translate_y") for s in specs], device=op.device)[op]
    return torch.where(translate, torch.trunc(params * (1.0 + 2.0**-40)), params)


def _round(work: torch.Tensor, owned: bool, op: torch.Tensor, params: torch.Tensor, names: Sequence[str],
           fill: Fill, interpolation: str) -> tuple[torch.Tensor, bool]:
    """One dispatch round; after the first round that changes anything the policy owns its buffer
    and later rounds work in place (samples that drew identity are not touched)."""
    out = _dispatch(work, op, params, names, fill, interpolation, inplace=owned)
    return out, owned or out is not work


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
    owned = False
    sub = _random.randint(len(AUTOAUGMENT_POLICIES[policy]), (b,), generator=generator, device=dev)
    u = _random.rand((b, 2), generator=generator, device=dev)
    negate = _random.rand((b, 2), generator=generator, device=dev) < 0.5
    for step in range(2):
        op = torch.where(u[:, step] <= probs[sub, step], ops[sub, step], identity)
        fraction = bins[sub, step] / (AUTOAUGMENT_BINS - 1)
        params = _policy_parameters(specs, op, fraction, negate[:, step], x.shape[2], x.shape[3])
        work, owned = _round(work, owned, op, params, names, fill, interpolation)
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
    owned = False
    for _ in range(num_ops):
        op = _random.randint(len(specs), (b,), generator=generator, device=dev)
        negate = _random.rand((b,), generator=generator, device=dev) < 0.5
        m = torch.full((b,), float(magnitude), dtype=torch.float64, device=dev)
        if math.isinf(magnitude_std):
            m = m * _random.rand((b,), generator=generator, device=dev, dtype=torch.float64)
        elif magnitude_std > 0:
            m = m + magnitude_std * _random.randn((b,), generator=generator, device=dev, dtype=torch.float64)
        m = m.clamp(0, bins - 1)
        params = _policy_parameters(specs, op, m / (bins - 1), negate, x.shape[2], x.shape[3])
        work, owned = _round(work, owned, op, params, names, fill, interpolation)
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
    params = _policy_parameters(specs, op, level.double() / (bins - 1), negate, x.shape[2], x.shape[3])
    return _finish(_dispatch(work, op, params, _names(specs), fill, interpolation), x)


# ----------------------------------------------------------------------------- AugMix


def _augmix_parameters(names: Sequence[str], op: torch.Tensor, level: torch.Tensor, negate: torch.Tensor,
                       u_side: torch.Tensor, u_val: torch.Tensor, original: bool, height: int,
                       width: int, *, severity: float) -> torch.Tensor:
    """Op parameters from AugMix levels in [0.1, severity] as in the AugMix reference code; the
    "all" enhance factors are Composer's ``symmetric_sample(severity)``, which ignores the level."""
    sign = torch.where(negate, -1.0, 1.0).double()
    level = level.double()
    if original:
        enhance = level * 0.18 + 0.1
    else:  # symmetric around 1: uniform on [1, severity] or on [1 - 0.09 severity, 1], each half the time
        enhance = torch.where(u_side > 0.5, 1.0 + (severity - 1.0) * u_val, 1.0 - 0.09 * severity * (1.0 - u_val))
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
    a level uniform in [0.1, severity] ("all": enhance factors symmetric around 1 from the severity, as
    Composer's ``symmetric_sample``); chains mixed with per-sample Dirichlet(alpha) weights, then
    blended with the original by a per-sample Beta(alpha, alpha) weight m: ``(1 - m) x + m mix``.
    """
    _check_augmix_arguments(augmentation_set, severity, width, depth, alpha)
    x, work = _prepare(images, clamp, fill, interpolation)
    b, dev = x.shape[0], x.device
    names = ["identity", *AUGMIX_SETS[augmentation_set]]
    steps = _augmix_steps(names, width * b, severity, depth, augmentation_set == "original", x.shape[2:], dev,
                          generator)
    weights = _random.sample_dirichlet([float(alpha)] * width, b, generator=generator, device=dev)
    m = _random.sample_beta(float(alpha), float(alpha), (b,), generator=generator, device=dev)
    mix_dtype = torch.float32 if work.dtype == torch.uint8 else work.dtype
    weights = weights.to(mix_dtype)
    m = m.to(mix_dtype)
    if work.dtype != torch.uint8:
        return _finish(_augmix_float_chains(work, steps, weights, m, names, fill, interpolation), x)
    chains = work.repeat(width, 1, 1, 1)
    for op, params in steps:
        chains = _dispatch(chains, op, params, names, fill, interpolation, inplace=True)
    stacked = chains.reshape(width, b, *chains.shape[1:])
    out = _memory.empty_like(work)
    for blk in sample_blocks(work):  # mix block by block so the float temporaries stay in cache
        mb = m[blk].reshape(-1, 1, 1, 1)
        acc = work[blk].to(mix_dtype) * (1.0 - mb)  # not in place: work may be the caller's tensor
        for k in range(width):
            acc.add_(stacked[k, blk].to(mix_dtype).mul_(weights[blk, k].reshape(-1, 1, 1, 1) * mb))
        out[blk] = acc.round_().clamp_(0, 255)
    return _finish(out, x)


def _check_augmix_arguments(augmentation_set: str, severity: int, width: int, depth: int, alpha: float) -> None:
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


def _augmix_steps(names: Sequence[str], n: int, severity: int, depth: int, original: bool, size: torch.Size,
                  dev: torch.device, generator: torch.Generator | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(op, params) per step for all n = width * b chains, chain-major (row c * b + i); op 0 past a chain's depth."""
    h, w = size
    if depth > 0:
        depths = torch.full((n,), depth, device=dev)
    else:
        depths = _random.randint(3, (n,), generator=generator, device=dev) + 1
    steps = []
    for step in range(depth if depth > 0 else 3):
        op = _random.randint(len(names) - 1, (n,), generator=generator, device=dev) + 1
        op = torch.where(depths > step, op, 0)
        level = 0.1 + (severity - 0.1) * _random.rand((n,), generator=generator, device=dev, dtype=torch.float64)
        negate = _random.rand((n,), generator=generator, device=dev) < 0.5
        u_side = _random.rand((n,), generator=generator, device=dev)
        u_val = _random.rand((n,), generator=generator, device=dev, dtype=torch.float64)
        steps.append((op, _augmix_parameters(names, op, level, negate, u_side, u_val, original, h, w,
                                             severity=severity)))
    return steps


def _augmix_float_chains(work: torch.Tensor, steps: list[tuple[torch.Tensor, torch.Tensor]], weights: torch.Tensor,
                         m: torch.Tensor, names: Sequence[str], fill: Fill, interpolation: str) -> torch.Tensor:
    """Float AugMix: the chains run one after another in one reused buffer and are accumulated into
    the output as they finish (same operations in the same order as mixing all chains at the end).
    A (width * B)-sample float buffer would be fresh memory the OS must fault in on every call."""
    b = work.shape[0]
    out = _memory.empty_like(work, memory_format=torch.contiguous_format)
    chain = _memory.empty_like(out)
    for k in range(weights.shape[1]):
        chain.copy_(work)
        rows = slice(k * b, (k + 1) * b)
        for op, params in steps:
            chain = _dispatch(chain, op[rows], params[rows], names, fill, interpolation, inplace=True)
        for blk in sample_blocks(work):
            mb = m[blk].reshape(-1, 1, 1, 1)
            if k == 0:
                torch.mul(work[blk], 1.0 - mb, out=out[blk])
            out[blk].add_(chain[blk].mul_(weights[blk, k].reshape(-1, 1, 1, 1) * mb))
    return out.clamp_(0.0, 1.0)


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
