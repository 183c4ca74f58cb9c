"""Differentiable batched image ops and a relaxed per-sample op choice.

Every op takes float images ``(B, C, H, W)`` in [0, 1] and a magnitude that
is a float, a 0-d tensor or a ``(B,)`` tensor (one value per sample), and is
differentiable in that magnitude:

- geometric ops (rotate, translate, shear) build one affine sampling grid per
  sample and resample bilinearly, so the gradient reaches the angle, shift or
  shear factor through the grid;
- enhance ops (brightness, color, contrast, sharpness) blend the image with a
  degenerate image, ``degenerate + factor * (x - degenerate)``, as PIL does;
- posterize, solarize, equalize and autocontrast are not differentiable in
  their magnitude (or their input) as written, so they use straight-through
  estimators: the forward pass is the exact op, the backward pass uses a
  smooth surrogate (documented per op) so the magnitude still learns.

``relaxed_augment`` chooses one op per sample and layer with a Gumbel-softmax
(straight-through when ``hard=True``), so op logits receive gradients through
the images themselves. ``apply_sampled_ops`` runs the same choice without
gradients, fused so that each op family costs one pass over the batch; with
the same ``PolicyNoise`` both give the same images.

Pixel conventions: rotation angles are degrees, positive = counter-clockwise;
translations are pixels, positive = content moves right/down; shear factors
shear about the image centre (``x_in = x_out + s * y_out``); posterize bits
and solarize thresholds use the 8-bit scale (threshold 256 = no-op).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import torch
import torch.nn.functional as torchF

from taxaug.functional import random as _random
from taxaug.functional._validate import FLOAT_DTYPES, check_images, check_positive, describe

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

GEOMETRIC_OPS = ("rotate", "translate_x", "translate_y", "shear_x", "shear_y")
ENHANCE_OPS = ("brightness", "color", "contrast", "sharpness")
FLIP_OPS = ("hflip", "vflip")
#: ops in the order the fused path and the default policy use them
DIFF_OP_NAMES = (
    "identity",
    *FLIP_OPS,
    *GEOMETRIC_OPS,
    *ENHANCE_OPS,
    "posterize",
    "solarize",
    "equalize",
    "autocontrast",
)
#: the magnitude at which each op leaves the image unchanged (None: op has no magnitude)
OP_NEUTRAL: dict[str, float | None] = {
    "identity": None,
    "hflip": None,
    "vflip": None,
    "rotate": 0.0,
    "translate_x": 0.0,
    "translate_y": 0.0,
    "shear_x": 0.0,
    "shear_y": 0.0,
    "brightness": 1.0,
    "color": 1.0,
    "contrast": 1.0,
    "sharpness": 1.0,
    "posterize": 8.0,
    "solarize": 256.0,
    "equalize": 0.0,
    "autocontrast": 0.0,
}

_GRAY_WEIGHTS = (0.299, 0.587, 0.114)
# Width, on the [0, 1] pixel scale, of the sigmoid the solarize surrogate uses.
_SOLARIZE_TAU = 16.0 / 255.0


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


# ----------------------------------------------------------------------------- geometric


def _warp(images: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Resample with the inverse map ``p_in = matrix @ p_out + shift`` in centred pixel coordinates.

    ``matrix`` is (B, 2, 2) and ``shift`` (B, 2), both (x, y). Out-of-image
    samples read 0. With ``align_corners=False`` the normalised coordinate of
    a centred pixel offset ``u`` is ``2 u / W``, so the normalised map is
    ``S matrix S^-1`` with ``S = diag(2/W, 2/H)``.
    """
    _, _, height, width = images.shape
    scale = images.new_tensor([2.0 / width, 2.0 / height])
    theta_linear = matrix * scale.view(1, 2, 1) / scale.view(1, 1, 2)
    theta = torch.cat([theta_linear, (shift * scale).unsqueeze(-1)], dim=-1)
    grid = torchF.affine_grid(theta, list(images.shape), align_corners=False)
    return torchF.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _geometric_maps(name: str, magnitude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-map (matrix (B,2,2), shift (B,2)) of a geometric op for per-sample magnitudes."""
    one = torch.ones_like(magnitude)
    zero = torch.zeros_like(magnitude)
    shift = torch.stack([zero, zero], dim=-1)
    if name == "rotate":
        rad = magnitude * (math.pi / 180.0)
        cos, sin = torch.cos(rad), torch.sin(rad)
        # content turns counter-clockwise on screen (y points down): p_in = R^T p_out
        matrix = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    elif name in ("translate_x", "translate_y"):
        matrix = torch.stack([torch.stack([one, zero], -1), torch.stack([zero, one], -1)], -2)
        shift = torch.stack([-magnitude, zero] if name == "translate_x" else [zero, -magnitude], dim=-1)
    elif name == "shear_x":
        matrix = torch.stack([torch.stack([one, magnitude], -1), torch.stack([zero, one], -1)], -2)
    elif name == "shear_y":
        matrix = torch.stack([torch.stack([one, zero], -1), torch.stack([magnitude, one], -1)], -2)
    else:  # pragma: no cover - internal
        raise KeyError(name)
    return matrix, shift


def _geometric(name: str, images: torch.Tensor, magnitude: float | torch.Tensor) -> torch.Tensor:
    x = _check_float_images(images)
    m = _per_sample(magnitude, x, name)
    matrix, shift = _geometric_maps(name, m)
    return _warp(x, matrix, shift)


def diff_rotate(images: torch.Tensor, degrees: float | torch.Tensor) -> torch.Tensor:
    """Rotate counter-clockwise about the centre by ``degrees`` (per sample); corners fill with 0."""
    return _geometric("rotate", images, degrees)


def diff_translate_x(images: torch.Tensor, pixels: float | torch.Tensor) -> torch.Tensor:
    """Shift content right by ``pixels`` (fractional allowed, bilinear); uncovered pixels are 0."""
    return _geometric("translate_x", images, pixels)


def diff_translate_y(images: torch.Tensor, pixels: float | torch.Tensor) -> torch.Tensor:
    """Shift content down by ``pixels``; uncovered pixels are 0."""
    return _geometric("translate_y", images, pixels)


def diff_shear_x(images: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """Horizontal shear about the centre: output (x, y) reads input (x + factor * y, y)."""
    return _geometric("shear_x", images, factor)


def diff_shear_y(images: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """Vertical shear about the centre: output (x, y) reads input (x, y + factor * x)."""
    return _geometric("shear_y", images, factor)


def diff_hflip(images: torch.Tensor) -> torch.Tensor:
    """Mirror left-right (exact; no magnitude)."""
    return _check_float_images(images).flip(-1)


def diff_vflip(images: torch.Tensor) -> torch.Tensor:
    """Mirror top-bottom (exact; no magnitude)."""
    return _check_float_images(images).flip(-2)


def diff_identity(images: torch.Tensor) -> torch.Tensor:
    """The images unchanged (a new reference; inputs are never mutated)."""
    return _check_float_images(images)


# ----------------------------------------------------------------------------- enhance


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma (ITU-R 601, as PIL's "L"); channel mean when C is not 3."""
    if x.shape[1] == 3:
        w = x.new_tensor(_GRAY_WEIGHTS).view(1, 3, 1, 1)
        return (x * w).sum(dim=1, keepdim=True)
    return x.mean(dim=1, keepdim=True)


def _smoothed(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH kernel ([[1,1,1],[1,5,1],[1,1,1]] / 13) inside, the original on the 1-pixel border.

    Written as ``(box3x3 + 4 * centre) / 13`` with the box sum as two
    separable sums of shifted slices: several times cheaper on CPU than a
    depthwise convolution or an average pool.
    """
    if x.shape[-1] < 3 or x.shape[-2] < 3:
        return x
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    inner = (box + 4.0 * x[..., 1:-1, 1:-1]) / 13.0
    top, bottom = x[..., :1, :], x[..., -1:, :]
    middle = torch.cat([x[..., 1:-1, :1], inner, x[..., 1:-1, -1:]], dim=-1)
    return torch.cat([top, middle, bottom], dim=-2)


def _degenerate(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "brightness":
        return torch.zeros_like(x[:, :1, :1, :1])
    if name == "color":
        return _grayscale(x)
    if name == "contrast":
        return _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    if name == "sharpness":
        return _smoothed(x)
    raise KeyError(name)  # pragma: no cover - internal


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).clamp(0.0, 1.0)


def _enhance(name: str, images: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    x = _check_float_images(images)
    return _blend(_degenerate(name, x), x, _per_sample(factor, x, name))


def diff_brightness(images: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """Scale towards black: 0 gives black, 1 the original; clamped to [0, 1]."""
    return _enhance("brightness", images, factor)


def diff_color(images: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """Saturation: 0 gives grayscale, 1 the original."""
    return _enhance("color", images, factor)


def diff_contrast(images: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """Contrast about the image's mean gray level: 0 gives flat gray, 1 the original."""
    return _enhance("contrast", images, factor)


def diff_sharpness(images: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """Sharpness: 0 gives the smoothed image, 1 the original, > 1 sharpens (border pixels kept)."""
    return _enhance("sharpness", images, factor)


# ----------------------------------------------------------------------------- straight-through ops


def _posterize_hard(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top ``bits`` (integer-valued (B,)) of each 8-bit value."""
    step = torch.pow(2.0, 8.0 - bits).view(-1, 1, 1, 1)
    levels = torch.round(x * 255.0)
    return torch.floor(levels / step) * step / 255.0


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
    x = _check_float_images(images)
    b = _per_sample(bits, x, "bits")
    if dither is None:
        whole = torch.round(b.detach())
    else:
        whole = torch.floor(b.detach() + _per_sample(dither, x, "dither"))
    whole = whole.clamp(0.0, 8.0)
    hard = _posterize_hard(x.detach(), whole)
    surrogate = (-0.5 / 255.0) * torch.pow(2.0, 8.0 - b).view(-1, 1, 1, 1)
    return x + (hard - x.detach()) + (surrogate - surrogate.detach())


def diff_solarize(images: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """Invert every level at or above ``threshold`` (8-bit scale, 0..256; 256 leaves the image as is).

    Forward: exact. Gradient to the images is exact (+1 or -1 per pixel).
    Backward to ``threshold`` (straight-through): the gradient of a soft
    version where the inversion switches on along a sigmoid of width 16 levels.
    """
    x = _check_float_images(images)
    t = _per_sample(threshold, x, "threshold").view(-1, 1, 1, 1) / 255.0
    hard = torch.where(x < t.detach(), x, 1.0 - x)
    switch = torch.sigmoid((x.detach() - t) / _SOLARIZE_TAU)
    surrogate = switch * (1.0 - 2.0 * x.detach())
    return hard + (surrogate - surrogate.detach())


def _equalize_full(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per sample and channel (PIL's algorithm), vectorised, no gradient."""
    b, c, h, w = x.shape
    levels = torch.round(x.detach().float() * 255.0).clamp(0, 255).long().reshape(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=torch.float32, device=x.device)
    hist.scatter_add_(1, levels, torch.ones_like(levels, dtype=torch.float32))
    bins = torch.arange(256, device=x.device)
    last = torch.where(hist > 0, bins, torch.zeros_like(bins)).amax(dim=1, keepdim=True)
    step = torch.floor((hist.sum(dim=1, keepdim=True) - hist.gather(1, last)) / 255.0)
    safe_step = step.clamp_min(1.0)
    lut = torch.floor((torch.cumsum(hist, dim=1) + torch.floor(safe_step / 2.0)) / safe_step)
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut[:, :-1]], dim=1).clamp(0, 255)
    mapped = lut.gather(1, levels) / 255.0
    out = torch.where(step > 0, mapped, levels.float() / 255.0)
    return out.view(b, c, h, w).to(x.dtype)


def diff_equalize(images: torch.Tensor, strength: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Blend ``x + strength * (equalize(x) - x)``; strength 1 is PIL's equalize, 0 the original.

    Equalisation itself has no useful derivative, so it is straight-through
    to the images (gradient 1); the gradient to ``strength`` is exact for the blend.
    """
    x = _check_float_images(images)
    s = _per_sample(strength, x, "strength").view(-1, 1, 1, 1)
    return x + s * (_equalize_full(x) - x).detach()


def _autocontrast_full(x: torch.Tensor) -> torch.Tensor:
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    span = high - low
    stretched = (x - low) / span.clamp_min(1e-6)
    return torch.where(span > 0, stretched, x)


def diff_autocontrast(images: torch.Tensor, strength: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Blend towards the per-channel min-max stretch; strength 1 is full autocontrast, 0 the original."""
    x = _check_float_images(images)
    s = _per_sample(strength, x, "strength").view(-1, 1, 1, 1)
    return x + s * (_autocontrast_full(x) - x)


# ----------------------------------------------------------------------------- dispatch


def diff_apply_op(
    images: torch.Tensor,
    name: str,
    magnitude: float | torch.Tensor | None = None,
    *,
    dither: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply the op called ``name`` (one of ``DIFF_OP_NAMES``) with ``magnitude`` (ignored without one)."""
    if name not in OP_NEUTRAL:
        raise ValueError(f"unknown op {name!r}; known ops: {', '.join(DIFF_OP_NAMES)}")
    if OP_NEUTRAL[name] is None:
        return {"identity": diff_identity, "hflip": diff_hflip, "vflip": diff_vflip}[name](images)
    if magnitude is None:
        raise ValueError(f"op {name!r} needs a magnitude")
    if name in GEOMETRIC_OPS:
        return _geometric(name, images, magnitude)
    if name in ENHANCE_OPS:
        return _enhance(name, images, magnitude)
    if name == "posterize":
        return diff_posterize(images, magnitude, dither=dither)
    if name == "solarize":
        return diff_solarize(images, magnitude)
    if name == "equalize":
        return diff_equalize(images, magnitude)
    return diff_autocontrast(images, magnitude)


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

    Ops of one family share a call: the geometric ops one warp over the batch
    repeated per op, the enhance ops one blend over stacked degenerate images.
    Returns the op indices in stacking order and the stack.
    """
    batch = x.shape[0]
    order: list[int] = []
    parts: list[torch.Tensor] = []
    geometric = [j for j, o in enumerate(ops) if o in GEOMETRIC_OPS]
    if geometric:
        maps = [_geometric_maps(ops[j], per_sample[:, j]) for j in geometric]
        matrix = torch.cat([m for m, _ in maps])
        shift = torch.cat([t for _, t in maps])
        repeated = x.unsqueeze(0).expand(len(geometric), *x.shape).reshape(-1, *x.shape[1:])
        parts.append(_warp(repeated, matrix, shift).view(len(geometric), *x.shape))
        order += geometric
    for j, o in enumerate(ops):
        if o in FLIP_OPS:
            parts.append((x.flip(-1) if o == "hflip" else x.flip(-2)).unsqueeze(0))
            order.append(j)
    enhance = [j for j, o in enumerate(ops) if o in ENHANCE_OPS]
    if enhance:
        gray = _grayscale(x) if any(ops[j] in ("color", "contrast") for j in enhance) else None
        degenerates = []
        for j in enhance:
            if ops[j] == "brightness":
                degenerates.append(torch.zeros_like(x))
            elif ops[j] == "color":
                degenerates.append(gray.expand_as(x))
            elif ops[j] == "contrast":
                degenerates.append(gray.mean(dim=(1, 2, 3), keepdim=True).expand_as(x))
            else:
                degenerates.append(_smoothed(x))
        degenerate = torch.stack(degenerates)
        factor = per_sample[:, enhance].t().reshape(len(enhance), batch, 1, 1, 1)
        parts.append((degenerate + factor * (x - degenerate)).clamp(0.0, 1.0))
        order += enhance
    for j, o in enumerate(ops):
        if o in ("posterize", "solarize", "equalize", "autocontrast"):
            parts.append(diff_apply_op(x, o, per_sample[:, j], dither=dither).unsqueeze(0))
            order.append(j)
    if not parts:
        return [], x.unsqueeze(0)
    return order, torch.cat(parts) if len(parts) > 1 else parts[0]


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

    ``dispatch="grouped"`` gathers the samples that drew each op and runs the
    op on that group only (each sample is processed once per layer; finding
    the groups needs the choices on the host, free on CPU). ``"masked"`` runs
    each op family on the whole batch (one warp for every geometric choice, one
    blend for every enhance choice, ...) and selects with ``torch.where``: more
    arithmetic but no host sync, for GPUs. ``"auto"``: grouped on CPU, masked
    elsewhere. uint8 images are converted to float and back (rounded);
    float16/bfloat16 are computed in float32 and returned in their dtype.
    ``op_logits`` may be log-probabilities; only their softmax matters.
    """
    x = check_images(images)
    ops = _check_policy_args(x, op_logits, magnitudes, ops)
    if dispatch not in ("auto", "grouped", "masked"):
        raise ValueError(f"dispatch must be 'auto', 'grouped' or 'masked', got {dispatch!r}")
    if dispatch == "auto":
        dispatch = "grouped" if x.device.type == "cpu" else "masked"
    apply_layer = _apply_grouped if dispatch == "grouped" else _apply_fused
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
    for layer in range(num_layers):
        gumbel = noise.gumbel[layer].to(x.device)
        choice = sample_op_indices(logits, gumbel)
        per_sample = signed_magnitudes(magnitudes.detach().to(x.device, x.dtype), noise.sign[layer].to(x.device), rs, ops)
        magnitude = per_sample.gather(1, choice.view(-1, 1)).squeeze(1)
        x = apply_layer(x, choice, magnitude, ops, noise.dither[layer].to(x.device))
    if in_dtype == torch.uint8:  # x is a float copy made above, never the caller's tensor
        x = x.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
    else:
        x = x.to(in_dtype)
    if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _hard_op(name: str, x: torch.Tensor, magnitude: torch.Tensor, dither: torch.Tensor) -> torch.Tensor:
    """The exact forward of one op on a group of samples (per-sample magnitudes), without STE terms."""
    if name in GEOMETRIC_OPS:
        matrix, shift = _geometric_maps(name, magnitude)
        return _warp(x, matrix, shift)
    if name in ENHANCE_OPS:
        return _blend(_degenerate(name, x), x, magnitude)
    if name == "hflip":
        return x.flip(-1)
    if name == "vflip":
        return x.flip(-2)
    if name == "posterize":
        return _posterize_hard(x, torch.floor(magnitude + dither).clamp(0.0, 8.0))
    if name == "solarize":
        return torch.where(x < magnitude.view(-1, 1, 1, 1) / 255.0, x, 1.0 - x)
    if name == "equalize":
        return x + magnitude.view(-1, 1, 1, 1) * (_equalize_full(x) - x)
    if name == "autocontrast":
        return x + magnitude.view(-1, 1, 1, 1) * (_autocontrast_full(x) - x)
    return x


def _apply_grouped(
    x: torch.Tensor, choice: torch.Tensor, magnitude: torch.Tensor, ops: tuple[str, ...], dither: torch.Tensor
) -> torch.Tensor:
    """One layer of per-sample ops, each op run once on the group of samples that drew it."""
    counts = torch.bincount(choice, minlength=len(ops)).tolist()
    order = torch.argsort(choice, stable=True)
    out: torch.Tensor | None = None
    start = 0
    for j, count in enumerate(counts):
        idx = order[start:start + count]
        start += count
        if count == 0 or ops[j] == "identity":
            continue
        if count == x.shape[0]:
            return _hard_op(ops[j], x, magnitude, dither)
        result = _hard_op(ops[j], x.index_select(0, idx), magnitude.index_select(0, idx),
                          dither.index_select(0, idx))
        if out is None:
            out = x.clone()
        out.index_copy_(0, idx, result)
    return x if out is None else out


def _apply_fused(
    x: torch.Tensor, choice: torch.Tensor, magnitude: torch.Tensor, ops: tuple[str, ...], dither: torch.Tensor
) -> torch.Tensor:
    """One layer of per-sample ops: ``choice`` (B,) indexes ``ops``; ``magnitude`` (B,) is the chosen op's."""

    def chose(name: str) -> torch.Tensor:
        return choice == ops.index(name)

    def mask(selected: torch.Tensor) -> torch.Tensor:
        return selected.view(-1, 1, 1, 1)

    out = x
    geometric = [o for o in ops if o in GEOMETRIC_OPS]
    if geometric:
        eye = torch.eye(2, dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 2)
        matrix, shift = eye, torch.zeros(x.shape[0], 2, dtype=x.dtype, device=x.device)
        any_geometric = torch.zeros_like(choice, dtype=torch.bool)
        for name in geometric:
            sel = chose(name)
            m, s = _geometric_maps(name, magnitude)
            matrix = torch.where(sel.view(-1, 1, 1), m, matrix)
            shift = torch.where(sel.view(-1, 1), s, shift)
            any_geometric = any_geometric | sel
        out = torch.where(mask(any_geometric), _warp(x, matrix, shift), out)
    for name, flip_dim in (("hflip", -1), ("vflip", -2)):
        if name in ops:
            out = torch.where(mask(chose(name)), x.flip(flip_dim), out)
    enhance = [o for o in ops if o in ENHANCE_OPS]
    if enhance:
        degenerate = torch.zeros_like(x)
        any_enhance = torch.zeros_like(choice, dtype=torch.bool)
        for name in enhance:
            sel = chose(name)
            degenerate = torch.where(mask(sel), _degenerate(name, x).expand_as(x), degenerate)
            any_enhance = any_enhance | sel
        out = torch.where(mask(any_enhance), _blend(degenerate, x, magnitude), out)
    if "posterize" in ops:
        bits = torch.floor(magnitude + dither).clamp(0.0, 8.0)
        out = torch.where(mask(chose("posterize")), _posterize_hard(x, bits), out)
    if "solarize" in ops:
        t = magnitude.view(-1, 1, 1, 1) / 255.0
        out = torch.where(mask(chose("solarize")), torch.where(x < t, x, 1.0 - x), out)
    if "equalize" in ops:
        s = magnitude.view(-1, 1, 1, 1)
        out = torch.where(mask(chose("equalize")), x + s * (_equalize_full(x) - x), out)
    if "autocontrast" in ops:
        s = magnitude.view(-1, 1, 1, 1)
        out = torch.where(mask(chose("autocontrast")), x + s * (_autocontrast_full(x) - x), out)
    return out
