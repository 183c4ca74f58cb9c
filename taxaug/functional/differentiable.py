"""Differentiable batched image ops and a relaxed per-sample op choice.

Every op takes float images ``(B, C, H, W)`` in [0, 1] and a magnitude that
is a float, a 0-d tensor or a ``(B,)`` tensor (one value per sample), and is
differentiable in that magnitude:

- geometric ops (rotate, translate, shear) build one affine sampling grid per
  sample from the policy ops' Pillow affine data and resample bilinearly, so
  the gradient reaches the angle, shift or shear factor through the grid;
- enhance ops (brightness, color, contrast, sharpness) are the policy float
  kernels, ``degenerate + factor * (x - degenerate)`` as Pillow blends;
- posterize, solarize, equalize and autocontrast are not differentiable in
  their magnitude (or their input) as written, so they use straight-through
  estimators: the forward pass is the exact op, the backward pass uses a
  smooth surrogate (documented per op) so the magnitude still learns.

``relaxed_augment`` chooses one op per sample and layer with a Gumbel-softmax
(straight-through when ``hard=True``), so op logits receive gradients through
the images themselves. ``apply_sampled_ops`` runs the same choice without
gradients through the op dispatcher (``taxaug.functional.dispatch``); with
the same ``PolicyNoise`` both give the same images.

Conventions are the policy ops' (one op registry, ``taxaug.functional.registry``):
rotation angles are degrees, positive = counter-clockwise about the centre;
translations are pixels, positive = content moves right/down; shears are about
the top-left corner (``x_in = x_out + s * y_out``, Pillow's affine data);
grey is Pillow's L (integer weights); posterize bits and solarize thresholds
use the 8-bit scale (threshold 256 = no-op). The warps are bilinear with a
zero fill where the policies default to nearest.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch

from taxaug.functional import _diff_ops
from taxaug.functional import random as _random
from taxaug.functional._image_common import device_strategy
from taxaug.functional._validate import FLOAT_DTYPES, check_images, check_positive, describe
from taxaug.functional.dispatch import _dispatch
from taxaug.functional.registry import DIFF_OP_NAMES, OP_NEUTRAL, OPS

__all__ = [
    "DIFF_OP_NAMES",
    "OP_NEUTRAL",
    "PolicyNoise",
    "apply_sampled_ops",
    "diff_apply_op",
    "diff_autocontrast",
    "diff_brightness",
    "diff_color",
    "diff_contrast",
    "diff_equalize",
    "diff_hflip",
    "diff_identity",
    "diff_posterize",
    "diff_rotate",
    "diff_sharpness",
    "diff_shear_x",
    "diff_shear_y",
    "diff_solarize",
    "diff_translate_x",
    "diff_translate_y",
    "diff_vflip",
    "draw_policy_noise",
    "relaxed_augment",
    "relaxed_one_hot",
    "sample_op_indices",
    "signed_magnitudes",
]

GEOMETRIC_OPS = tuple(n for n in DIFF_OP_NAMES if OPS[n].family == "geometric")
ENHANCE_OPS = tuple(n for n in DIFF_OP_NAMES if OPS[n].family == "enhance")


def _check_float_images(images: object, name: str = "images") -> torch.Tensor:
    x = check_images(images, name)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be floating in [0, 1] for the differentiable ops, got {describe(x)}; "
            "convert uint8 with images.float() / 255"
        )
    return x


def _per_sample(value: float | torch.Tensor, images: torch.Tensor, name: str) -> torch.Tensor:
    """A magnitude as a (B,) tensor in the images' dtype and device, keeping its graph."""
    batch = images.shape[0]
    if not isinstance(value, torch.Tensor):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a float or a tensor, got {describe(value)}")
        return torch.full((batch,), float(value), dtype=images.dtype, device=images.device)
    if value.ndim == 0:
        value = value.expand(batch)
    if value.ndim != 1 or value.shape[0] != batch:
        raise ValueError(f"{name} must be a float, a 0-d tensor or a ({batch},) tensor, got {describe(value)}")
    if not value.is_floating_point():
        value = value.float()
    return value.to(dtype=images.dtype, device=images.device)


def diff_apply_op(
    images: torch.Tensor,
    name: str,
    magnitude: float | torch.Tensor | None = None,
    *,
    dither: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply the op called ``name`` (one of ``DIFF_OP_NAMES``) with ``magnitude`` (ignored without one);
    `dither` (B,) uniforms make posterize round its bits stochastically."""
    if name not in OP_NEUTRAL:
        raise ValueError(f"unknown op {name!r}; known ops: {', '.join(DIFF_OP_NAMES)}")
    x = _check_float_images(images)
    if OP_NEUTRAL[name] is None:
        m = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    elif magnitude is None:
        raise ValueError(f"op {name!r} needs a magnitude")
    else:
        m = _per_sample(magnitude, x, name)
    d = None if dither is None else _per_sample(dither, x, "dither")
    return OPS[name].diff(x, m, d)


def diff_rotate(images: torch.Tensor, degrees: float | torch.Tensor) -> torch.Tensor:
    """Rotate counter-clockwise about the centre by ``degrees`` (per sample); corners fill with 0."""
    return diff_apply_op(images, "rotate", degrees)


def diff_translate_x(images: torch.Tensor, pixels: float | torch.Tensor) -> torch.Tensor:
    """Shift content right by ``pixels`` (fractional allowed, bilinear); uncovered pixels are 0."""
    return diff_apply_op(images, "translate_x", pixels)


def diff_translate_y(images: torch.Tensor, pixels: float | torch.Tensor) -> torch.Tensor:
    """Shift content down by ``pixels``; uncovered pixels are 0."""
    return diff_apply_op(images, "translate_y", pixels)


def diff_shear_x(images: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """Horizontal shear about the top-left corner: output (x, y) reads input (x + factor * y, y)."""
    return diff_apply_op(images, "shear_x", factor)


def diff_shear_y(images: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """Vertical shear about the top-left corner: output (x, y) reads input (x, y + factor * x)."""
    return diff_apply_op(images, "shear_y", factor)


def diff_hflip(images: torch.Tensor) -> torch.Tensor:
    """Mirror left-right (exact; no magnitude)."""
    return diff_apply_op(images, "hflip")


def diff_vflip(images: torch.Tensor) -> torch.Tensor:
    """Mirror top-bottom (exact; no magnitude)."""
    return diff_apply_op(images, "vflip")


def diff_identity(images: torch.Tensor) -> torch.Tensor:
    """The images unchanged (a new reference; inputs are never mutated)."""
    return _check_float_images(images)


def diff_brightness(images: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """Scale towards black: 0 gives black, 1 the original; clamped to [0, 1]."""
    return diff_apply_op(images, "brightness", factor)


def diff_color(images: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """Saturation: 0 gives Pillow's grey (L) image, 1 the original."""
    return diff_apply_op(images, "color", factor)


def diff_contrast(images: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """Contrast about the image's mean grey level: 0 gives flat grey, 1 the original."""
    return diff_apply_op(images, "contrast", factor)


def diff_sharpness(images: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """Sharpness: 0 gives the smoothed image, 1 the original, > 1 sharpens (border pixels kept)."""
    return diff_apply_op(images, "sharpness", factor)


def diff_posterize(
    images: torch.Tensor, bits: float | torch.Tensor, *, dither: torch.Tensor | None = None
) -> torch.Tensor:
    """Keep the top ``bits`` bits of each 8-bit level (bits in [0, 8]).

    Forward: exact posterize with integer bits: ``round(bits)``, or with
    ``dither`` (uniforms in [0, 1), one per sample) stochastic rounding
    ``floor(bits + dither)``, whose mean over draws is ``bits`` itself.
    Backward (straight-through): identity to the images, and to ``bits`` the
    gradient of the mean quantisation shift ``-step(bits) / 2`` with
    ``step = 2^(8 - bits) / 255`` (fewer bits darken by half a step on average).
    """
    return diff_apply_op(images, "posterize", bits, dither=dither)


def diff_solarize(images: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """Invert every level at or above ``threshold`` (8-bit scale, 0..256; 256 leaves the image as is).

    Forward: the policy op's. Gradient to the images is exact (+1 or -1 per pixel).
    Backward to ``threshold`` (straight-through): the gradient of a soft
    version where the inversion switches on along a sigmoid of width 16 levels.
    """
    return diff_apply_op(images, "solarize", threshold)


def diff_equalize(images: torch.Tensor, strength: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Blend ``x + strength * (equalize(x) - x)``; strength 1 is PIL's equalize, 0 the original.

    Equalisation itself has no useful derivative, so it is straight-through
    to the images (gradient 1); the gradient to ``strength`` is exact for the blend.
    """
    return diff_apply_op(images, "equalize", strength)


def diff_autocontrast(images: torch.Tensor, strength: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Blend towards the per-channel min-max stretch; strength 1 is full autocontrast, 0 the original."""
    return diff_apply_op(images, "autocontrast", strength)


def _check_ops(ops: Sequence[str]) -> tuple[str, ...]:
    ops = tuple(ops)
    if not ops:
        raise ValueError("ops must name at least one op")
    unknown = [o for o in ops if o not in OP_NEUTRAL]
    if unknown:
        raise ValueError(f"unknown op(s) {unknown}; known ops: {', '.join(DIFF_OP_NAMES)}")
    if len(set(ops)) != len(ops):
        raise ValueError(f"ops must not repeat a name, got {list(ops)}")
    return ops


@attrs.frozen
class PolicyNoise:
    """Every random draw of a policy application, so relaxed and hard paths can share them.

    ``gumbel`` (L, B, K) Gumbel(0, 1) noise for the op choice of each layer,
    ``sign`` (L, B, K) +-1 for ops with a random sign, ``dither`` (L, B)
    uniforms for posterize's stochastic rounding.
    """

    gumbel: torch.Tensor
    sign: torch.Tensor
    dither: torch.Tensor

    @property
    def num_layers(self) -> int:
        return self.gumbel.shape[0]


def draw_policy_noise(
    num_layers: int,
    batch: int,
    num_ops: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> PolicyNoise:
    """Draw the Gumbel, sign and dither noise for ``num_layers`` layers of a ``num_ops`` policy."""
    shape = (num_layers, batch, num_ops)
    u = _random.rand(shape, generator=generator, device=device).clamp(1e-10, 1.0 - 1e-7)
    gumbel = -torch.log(-torch.log(u))
    sign = torch.where(_random.rand(shape, generator=generator, device=device) < 0.5, -1.0, 1.0)
    dither = _random.rand((num_layers, batch), generator=generator, device=device)
    return PolicyNoise(gumbel=gumbel, sign=sign, dither=dither)


def relaxed_one_hot(
    logits: torch.Tensor, gumbel: torch.Tensor, *, temperature: float = 1.0, hard: bool = True
) -> torch.Tensor:
    """Gumbel-softmax weights (B, K) from logits (K,) or (B, K) and Gumbel noise (B, K).

    ``hard=True`` returns the one-hot of the argmax in the forward pass with
    the soft weights' gradient (straight-through); the argmax of
    ``logits + gumbel`` is an exact draw from ``softmax(logits)``.
    """
    check_positive(temperature, "temperature")
    soft = torch.softmax((logits + gumbel) / temperature, dim=-1)
    if not hard:
        return soft
    index = soft.argmax(dim=-1, keepdim=True)
    one_hot = torch.zeros_like(soft).scatter_(-1, index, 1.0)
    return one_hot + (soft - soft.detach())


def signed_magnitudes(
    magnitudes: torch.Tensor, sign: torch.Tensor, random_sign: torch.Tensor, ops: Sequence[str]
) -> torch.Tensor:
    """(B, K) magnitudes: for ops with ``random_sign`` the value is mirrored about the op's neutral point
    where ``sign`` is -1 (``neutral + sign * (m - neutral)``)."""
    neutral = magnitudes.new_tensor([OP_NEUTRAL[o] or 0.0 for o in ops])
    flip = torch.where(random_sign.to(magnitudes.device), sign, torch.ones_like(sign))
    return neutral + flip * (magnitudes - neutral)


def _check_policy_args(
    images: torch.Tensor, op_logits: torch.Tensor, magnitudes: torch.Tensor, ops: Sequence[str]
) -> tuple[str, ...]:
    ops = _check_ops(ops)
    k = len(ops)
    for name, t in (("op_logits", op_logits), ("magnitudes", magnitudes)):
        if not isinstance(t, torch.Tensor) or t.shape != (k,):
            raise ValueError(f"{name} must be a tensor of shape ({k},) (one per op), got {describe(t)}")
    return ops


def relaxed_augment(
    images: torch.Tensor,
    op_logits: torch.Tensor,
    magnitudes: torch.Tensor,
    *,
    ops: Sequence[str],
    random_sign: torch.Tensor | None = None,
    temperature: float = 1.0,
    hard: bool = True,
    num_layers: int = 1,
    noise: PolicyNoise | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply ``num_layers`` relaxed op choices per sample, differentiable in logits and magnitudes.

    Each layer computes every op on the whole batch and combines them as
    ``x + sum_k w[:, k] * (op_k(x) - x)`` with Gumbel-softmax weights ``w``;
    since the weights sum to 1 this is the mixture of op outputs, and with
    ``hard=True`` the forward pass is exactly the sampled op while the logits
    get the straight-through gradient ``<dL/dout, op_k(x) - x>``.
    ``magnitudes`` (K,) are in op units (entries of ops without a magnitude
    are ignored). Costs K op evaluations per layer: meant for meta steps.
    """
    x = _check_float_images(images)
    ops = _check_policy_args(x, op_logits, magnitudes, ops)
    batch, k = x.shape[0], len(ops)
    if noise is None:
        noise = draw_policy_noise(num_layers, batch, k, generator=generator, device=x.device)
    _check_noise(noise, num_layers, batch, k)
    rs = torch.zeros(k, dtype=torch.bool) if random_sign is None else random_sign
    for layer in range(num_layers):
        weights = relaxed_one_hot(
            op_logits, noise.gumbel[layer].to(x.device), temperature=temperature, hard=hard
        ).to(x.dtype)
        per_sample = signed_magnitudes(magnitudes, noise.sign[layer].to(x.device), rs, ops)
        order, outputs = _all_op_outputs(x, per_sample, ops, noise.dither[layer].to(x.device))
        if order:
            w = weights[:, order].t().reshape(len(order), -1, 1, 1, 1)
            x = x + (w * (outputs - x)).sum(dim=0)
    return x


def _all_op_outputs(
    x: torch.Tensor, per_sample: torch.Tensor, ops: tuple[str, ...], dither: torch.Tensor
) -> tuple[list[int], torch.Tensor]:
    """Every op of ``ops`` (but identity) applied to the whole batch, stacked (K', B, C, H, W).

    The geometric ops share one warp over the batch repeated per op. Returns the op indices in
    stacking order and the stack.
    """
    geometric = [j for j, o in enumerate(ops) if OPS[o].family == "geometric"]
    others = [j for j, o in enumerate(ops) if OPS[o].family not in ("geometric", "identity")]
    parts: list[torch.Tensor] = []
    if geometric:
        h, w = x.shape[2], x.shape[3]
        data = torch.cat([_diff_ops.AFFINE[ops[j]](per_sample[:, j], h, w) for j in geometric])
        repeated = x.unsqueeze(0).expand(len(geometric), *x.shape).reshape(-1, *x.shape[1:])
        parts.append(_diff_ops.warp(repeated, data).view(len(geometric), *x.shape))
    parts += [OPS[ops[j]].diff(x, per_sample[:, j], dither).unsqueeze(0) for j in others]
    if not parts:
        return [], x.unsqueeze(0)
    return geometric + others, torch.cat(parts) if len(parts) > 1 else parts[0]


def _check_noise(noise: PolicyNoise, num_layers: int, batch: int, k: int) -> None:
    if noise.gumbel.shape != (num_layers, batch, k) or noise.sign.shape != (num_layers, batch, k):
        raise ValueError(
            f"noise was drawn for shape {tuple(noise.gumbel.shape)}, expected (num_layers, B, K) = "
            f"({num_layers}, {batch}, {k})"
        )


def sample_op_indices(op_logits: torch.Tensor, gumbel: torch.Tensor) -> torch.Tensor:
    """(B,) op indices drawn from ``softmax(op_logits)`` by the Gumbel-max trick."""
    return (op_logits.detach() + gumbel).argmax(dim=-1)


@torch.no_grad()
def apply_sampled_ops(
    images: torch.Tensor,
    op_logits: torch.Tensor,
    magnitudes: torch.Tensor,
    *,
    ops: Sequence[str],
    random_sign: torch.Tensor | None = None,
    num_layers: int = 1,
    noise: PolicyNoise | None = None,
    generator: torch.Generator | None = None,
    dispatch: str = "auto",
) -> torch.Tensor:
    """The hard, gradient-free counterpart of ``relaxed_augment``: same draws, same images.

    The layers run through the op dispatcher (``taxaug.functional.dispatch``): ``dispatch="grouped"``
    (its cpu strategy) runs each op once on the group of samples that drew it (finding the groups
    needs the choices on the host, free on CPU); ``"masked"`` (its accelerator strategy) runs each op
    family on the whole batch (one warp for every geometric choice, one blend for every enhance
    choice, ...) and selects with ``torch.where``: more arithmetic but no host sync, for GPUs.
    ``"auto"``: the device's strategy (``TAXAUG_DEVICE_STRATEGY`` forces one). uint8 images are
    converted to float and back (rounded); float16/bfloat16 are computed in float32 and returned in
    their dtype. ``op_logits`` may be log-probabilities; only their softmax matters.
    """
    x = check_images(images)
    ops = _check_policy_args(x, op_logits, magnitudes, ops)
    if dispatch not in ("auto", "grouped", "masked"):
        raise ValueError(f"dispatch must be 'auto', 'grouped' or 'masked', got {dispatch!r}")
    strategy = {"auto": device_strategy(x.device), "grouped": "cpu", "masked": "accelerator"}[dispatch]
    in_dtype = x.dtype
    if in_dtype == torch.uint8:
        x = x.float().mul_(1.0 / 255.0)
    elif in_dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # computed in float32 (CPU kernels lack half support), returned in the input dtype
    batch, k = x.shape[0], len(ops)
    if noise is None:
        noise = draw_policy_noise(num_layers, batch, k, generator=generator, device=x.device)
    _check_noise(noise, num_layers, batch, k)
    rs = torch.zeros(k, dtype=torch.bool) if random_sign is None else random_sign
    logits = op_logits.detach().to(x.device, torch.float32)
    mags = magnitudes.detach().to(x.device, x.dtype)
    owned = x is not images
    for layer in range(num_layers):
        choice = sample_op_indices(logits, noise.gumbel[layer].to(x.device))
        per_sample = signed_magnitudes(mags, noise.sign[layer].to(x.device), rs, ops)
        magnitude = per_sample.gather(1, choice.view(-1, 1)).squeeze(1)
        params = torch.stack([magnitude, noise.dither[layer].to(x.device, x.dtype)], dim=1)
        out = _dispatch(x, choice, params, ops, None, "bilinear", inplace=owned, learned=True, strategy=strategy)
        x, owned = out, owned or out is not x
    return _restore(x, images, in_dtype)


def _restore(x: torch.Tensor, images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The float result in the input's dtype and memory format (x is never the caller's tensor)."""
    if x is images:
        x = x.clone()
    if dtype == torch.uint8:
        x = x.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
    else:
        x = x.to(dtype)
    if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
        x = x.contiguous(memory_format=torch.channels_last)
    return x
