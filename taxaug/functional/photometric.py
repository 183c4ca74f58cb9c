"""Batched photometric ops with per-sample parameters, PIL-faithful on uint8.

uint8 semantics follow Pillow exactly where Pillow defines the op:
- posterize, solarize, invert, autocontrast, equalize: bit-exact with ``PIL.ImageOps``;
- brightness, color, contrast, sharpness: Pillow's ``ImageEnhance`` blend
  ``trunc(clip(degenerate + f * (image - degenerate)))`` in float32, with Pillow's
  degenerate images (black; L = (19595 r + 38470 g + 7471 b + 0x8000) >> 16; the rounded
  mean of L; the 3x3 SMOOTH filter with border pixels kept). Tested to match Pillow within
  1 level (nearly always exactly).
Float images use the same formulas without the 8-bit truncation, so uint8 and float results agree
within one level. Intensity parameters are in 8-bit levels for every dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as nnf

from taxaug import _memory, _native
from taxaug.functional._image_common import (
    Param,
    apply_lut,
    as_param,
    check_image_batch,
    compute_dtype,
    quantize_uint8,
    run_op,
    view4,
)
from taxaug.functional._validate import describe

__all__ = [
    "adjust_hue",
    "autocontrast",
    "brightness",
    "color",
    "color_jitter",
    "contrast",
    "equalize",
    "gaussian_blur",
    "grayscale",
    "identity",
    "invert",
    "posterize",
    "sharpness",
    "solarize",
    "solarize_add",
]

_L_WEIGHTS = (19595, 38470, 7471)


# ----------------------------------------------------------------------------- kernels
# Kernels take x (uint8, float32 or float64, already validated) and float64 (B,) params.


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma, Pillow's L conversion for uint8 (integer, rounded), exact weights for float."""
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ValueError(f"colour ops need 1 (grey) or 3 (RGB) channels, got {x.shape[1]}")
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    if x.dtype == torch.uint8:
        wr, wg, wb = _L_WEIGHTS
        acc = r.int() * wr + g.int() * wg + b.int() * wb + 0x8000
        return (acc >> 16).to(torch.uint8)
    wr, wg, wb = (w / 65536.0 for w in _L_WEIGHTS)
    return r * wr + g * wg + b * wb


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Pillow's Image.blend(degenerate, x, factor): float32 arithmetic, clip, truncate for uint8."""
    if x.dtype == torch.uint8:
        # same float32 operations in the same order as Pillow; the uint8 cast truncates like C.
        # x is converted once and updated in place: mixed uint8/float arithmetic is several times slower.
        f = view4(factor, torch.float32)
        d = degenerate if degenerate.dtype == torch.float32 else degenerate.float()
        out = x.float().sub_(d).mul_(f).add_(d)
        return out.clamp_(0.0, 255.0).to(torch.uint8)
    f = view4(factor, x.dtype)
    return (degenerate + f * (x - degenerate)).clamp_(0.0, 1.0)


def _blend_(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """:func:`_blend` for float x, overwriting x: the same operations, so the same bits."""
    return x.sub_(degenerate).mul_(view4(factor, x.dtype)).add_(degenerate).clamp_(0.0, 1.0)


def _k_identity(x: torch.Tensor, param: torch.Tensor | None = None) -> torch.Tensor:
    return _memory.clone(x)


def _k_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.uint8:  # Pillow: 0 + f * (x - 0) == f * x exactly
        return x.float().mul_(view4(factor, torch.float32)).clamp_(0.0, 255.0).to(torch.uint8)
    return (x * view4(factor, x.dtype)).clamp_(0.0, 1.0)


def _k_color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(_gray(x), x, factor)


def _contrast_degenerate(x: torch.Tensor) -> torch.Tensor:
    """Pillow's contrast base: the mean luma, rounded for uint8, per sample."""
    gray = _gray(x)
    if x.dtype == torch.uint8:
        total = gray.reshape(gray.shape[0], -1).sum(dim=1, dtype=torch.int64).double()
        mean = torch.floor(total / max(gray[0].numel(), 1) + 0.5)
        degenerate = view4(mean, torch.uint8)
    else:
        # float64 sum: a float32 mean's rounding depends on how many samples are reduced together,
        # which would make a sample's result depend on which other samples drew contrast
        total = gray.sum(dim=(1, 2, 3), keepdim=True, dtype=torch.float64)
        degenerate = (total / max(gray[0].numel(), 1)).to(x.dtype)
    return degenerate


def _k_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(_contrast_degenerate(x), x, factor)


def _smooth(x: torch.Tensor, as_float: bool = False) -> torch.Tensor:
    """Pillow's SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]] / 13), border pixels unchanged.

    Written as 3x3 box sums of shifted views (depthwise conv2d is several times slower on CPU).
    For uint8 the rounding is exact: an integer sum / 13 is never within float error of a .5 tie.
    ``as_float=True`` returns the uint8 result as float32 levels (for the blend, saving a round trip).
    """
    h, w = x.shape[2], x.shape[3]
    work = x.float() if x.dtype == torch.uint8 else x
    if h < 3 or w < 3:
        return _memory.clone(work) if as_float else _memory.clone(x)
    rows = work[:, :, :, :-2] + work[:, :, :, 1:-1]
    rows.add_(work[:, :, :, 2:])
    box = rows[:, :, :-2] + rows[:, :, 1:-1]
    inner = box.add_(rows[:, :, 2:]).add_(work[:, :, 1:-1, 1:-1], alpha=4.0).div_(13.0)
    if x.dtype == torch.uint8:
        inner = inner.add_(0.5).clamp_(0.0, 255.0)
        if not as_float:
            inner = inner.to(torch.uint8)
        else:
            inner = inner.floor_()  # == float(uint8(v)) for v in [0, 255]
    else:
        inner = inner.clamp_(0.0, 1.0)
    out = _memory.clone(work) if as_float else _memory.clone(x)
    out[:, :, 1:-1, 1:-1] = inner
    return out


def _k_sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(_smooth(x, as_float=True), x, factor)


def posterize_step(bits: torch.Tensor) -> torch.Tensor:
    """The level step (long, a power of two in 1..256) of keeping `bits` bits: 8-bit levels keep
    ``level & (256 - step)``, i.e. ``floor(level / step) * step``."""
    return 1 << (8 - bits.round().clamp(0, 8).long())


def _k_posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    step = posterize_step(bits)
    if x.dtype == torch.uint8:
        return x & view4((256 - step).to(torch.uint8))
    # float: the same on 8-bit levels, in float arithmetic (all steps exact for powers of two)
    step = view4(step.to(x.dtype))
    return (x * 255.0).round_().div_(step).floor_().mul_(step).div_(255.0)


def solarize_level(threshold: torch.Tensor) -> torch.Tensor:
    """The first inverted uint8 level of a threshold, in [0, 256] (256 inverts nothing): Pillow inverts
    the levels >= threshold, so a fractional threshold such as 178.5 starts at 179."""
    return threshold.ceil().clamp(0, 256)


def _k_solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    # arithmetic selects instead of torch.where, which is several times slower on CPU
    if x.dtype == torch.uint8:
        thr = solarize_level(threshold)
        flip = view4((thr < 256) * 255, torch.uint8)  # threshold 256 inverts nothing
        hit = x >= view4(thr.clamp(max=255), torch.uint8)
        return x ^ hit.to(torch.uint8).mul_(flip)  # 255 - v == v ^ 255
    return _k_solarize_from(x, solarize_float_threshold(threshold, x.dtype))


def _k_solarize_from(x: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """Float solarize given each sample's first inverted value (`solarize_float_threshold`)."""
    hit = x >= view4(first, x.dtype)
    return (hit.to(x.dtype) - x).abs_()  # |1 - v| = 1 - v where hit, |0 - v| = v elsewhere


def solarize_float_threshold(threshold: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The smallest `dtype` pixel value whose level ``x * 255`` (rounded in `dtype`) is >= threshold: float
    pixels are inverted from it on. On the 8-bit grid ``x * 255`` is the integer level k, so float and
    uint8 invert the same pixels; the level is monotonic in x, so one comparison per pixel decides."""
    start = (threshold / 255.0).to(dtype)
    up, down = torch.full_like(start, math.inf), torch.full_like(start, -math.inf)
    tau = start
    for _ in range(3):  # t / 255 rounded lies within two ulps of the answer
        tau = torch.where((tau * 255.0).double() < threshold, torch.nextafter(tau, up), tau)
    for _ in range(3):
        below = torch.nextafter(tau, down)
        tau = torch.where((below * 255.0).double() >= threshold, below, tau)
    return tau


def _k_solarize_add(x: torch.Tensor, addition: torch.Tensor, threshold: float = 128.0) -> torch.Tensor:
    below = x < threshold if x.dtype == torch.uint8 else x < threshold / 255.0
    if x.dtype == torch.uint8:
        added = (x.to(torch.int16) + view4(addition.round(), torch.int16)).clamp_(0, 255).to(torch.uint8)
    else:
        added = (x + view4(addition, x.dtype) / 255.0).clamp_(0.0, 1.0)
    return added * below + x * ~below


def _k_invert(x: torch.Tensor, param: torch.Tensor | None = None) -> torch.Tensor:
    return 255 - x if x.dtype == torch.uint8 else 1.0 - x


def _float_in_place(
    kernel: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    float_kernel_: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A kernel that may overwrite its float input (uint8 goes to `kernel`, which widens anyway): for
    the dispatcher, whose gathered blocks are its own copies. Saves a temporary and a pass per op."""

    def run(x: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        return kernel(x, param) if x.dtype == torch.uint8 else float_kernel_(x, param)

    return run


def _posterize_float_(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    step = view4(posterize_step(bits).to(x.dtype))
    return x.mul_(255.0).round_().div_(step).floor_().mul_(step).div_(255.0)


def _autocontrast_float_(x: torch.Tensor, param: torch.Tensor | None = None) -> torch.Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    flat = hi <= lo
    span = torch.where(flat, torch.ones_like(hi), hi - lo)
    low = torch.where(flat, torch.zeros_like(lo), lo)
    return x.sub_(low).div_(span).clamp_(0.0, 1.0)


IN_PLACE_KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "brightness": lambda x, f: x.mul_(view4(f, x.dtype)).clamp_(0.0, 1.0),
    "color": lambda x, f: _blend_(_gray(x).clone() if x.shape[1] == 1 else _gray(x), x, f),  # grey: _gray is x
    "contrast": lambda x, f: _blend_(_contrast_degenerate(x), x, f),
    "posterize": _posterize_float_,
    "solarize": lambda x, t: x.sub_((x >= view4(solarize_float_threshold(t, x.dtype), x.dtype))
                                    .to(x.dtype)).abs_(),  # |v - hit| == |hit - v|
    "autocontrast": _autocontrast_float_,
}
"""Float kernels that overwrite their input, for the dispatcher (see `_float_in_place`)."""


def _k_autocontrast(x: torch.Tensor, param: torch.Tensor | None = None) -> torch.Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    flat = hi <= lo
    if x.dtype == torch.uint8:
        # Pillow: lut[i] = clip(int(i * scale + offset)) in double precision, per channel.
        lo_d, hi_d = lo.double(), hi.double()
        # torch.div, not 255.0 / t: the reflected operator multiplies by a reciprocal and rounds differently
        scale = torch.where(flat, 1.0, torch.div(torch.full_like(hi_d, 255.0), (hi_d - lo_d).clamp_min(1.0)))
        offset = torch.where(flat, 0.0, -lo_d * scale)
        levels = torch.arange(256, dtype=torch.float64, device=x.device)
        lut = (levels * scale.reshape(*x.shape[:2], 1) + offset.reshape(*x.shape[:2], 1))
        return apply_lut(x, lut.clamp_(0.0, 255.0).to(torch.uint8))
    span = torch.where(flat, torch.ones_like(hi), hi - lo)
    low = torch.where(flat, torch.zeros_like(lo), lo)
    return ((x - low) / span).clamp_(0.0, 1.0)


def _equalize_lut(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's ImageOps.equalize lut per (sample, channel) of uint8 x: (rows, 256) long lut and (rows, HW) index."""
    b, c, h, w = x.shape
    rows = b * c
    planes = x.reshape(rows, h * w)
    if _native.device_strategy(x.device) == "cpu" and rows:
        # one bincount per plane straight on uint8: no int64 copy of the image plus offsets for one big bincount
        hist = torch.stack([torch.bincount(plane, minlength=256) for plane in planes])
    else:
        offsets = torch.arange(rows, device=x.device).mul_(256).unsqueeze(1)
        hist = torch.bincount((planes.long() + offsets).flatten(), minlength=rows * 256).reshape(rows, 256)
    nonzero = hist > 0
    n_levels = nonzero.sum(dim=1)
    last = 255 - nonzero.flip(1).long().argmax(dim=1)
    last_count = hist.gather(1, last.unsqueeze(1)).squeeze(1)
    step = (h * w - last_count) // 255
    use = (n_levels > 1) & (step > 0)
    safe_step = step.clamp_min(1).unsqueeze(1)
    before = hist.cumsum(dim=1) - hist
    lut = ((safe_step // 2 + before) // safe_step).clamp_(0, 255)
    identity = torch.arange(256, device=x.device).expand(rows, 256)
    return torch.where(use.unsqueeze(1), lut, identity), planes.long()


def _k_equalize(x: torch.Tensor, param: torch.Tensor | None = None) -> torch.Tensor:
    levels = x if x.dtype == torch.uint8 else quantize_uint8(x)
    lut, idx = _equalize_lut(levels)
    # float output reads a float lut directly (one gather, no uint8 round trip)
    table = lut.to(torch.uint8) if x.dtype == torch.uint8 else lut.to(x.dtype).div_(255.0)
    return table.gather(1, idx).reshape(x.shape)


def _k_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Hue rotation in HSV, written with masks and the closed-form HSV -> RGB (no gathers/wheres).

    Exactly one of the three hue sectors applies per pixel, so the sector's numerator and offset
    are picked by masks first and divided once; hue values stay in [0, 12), where ``v mod 6`` is
    ``v - 6 [v >= 6]`` exactly (the same float result as torch.remainder, in fewer passes).
    """
    if x.shape[1] == 1:
        return _memory.clone(x)
    if x.shape[1] != 3:
        raise ValueError(f"adjust_hue needs 1 or 3 channels, got {x.shape[1]}")
    work = x.float().div_(255.0) if x.dtype == torch.uint8 else x
    r, g, b = work[:, 0], work[:, 1], work[:, 2]
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    delta = maxc - minc
    safe_delta = delta + (delta == 0)
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    is_b = ~(is_r | is_g)
    num = (g - b) * is_r + (b - r) * is_g + (r - g) * is_b
    offset = is_g * 2.0 + is_b * 4.0
    hue6 = num.div_(safe_delta).add_(offset)
    sat = delta.div_(maxc + (maxc == 0))
    hue6 = torch.remainder(hue6.add_(6.0 * shift.to(work.dtype).reshape(-1, 1, 1)), 6.0)
    chroma = sat.mul_(maxc)
    out = _memory.empty_like(work)
    for i, n in enumerate((5.0, 3.0, 1.0)):
        k = hue6 + n
        k.sub_((k >= 6.0) * 6.0)
        side = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
        torch.sub(maxc, side.mul_(chroma), out=out[:, i])
    out.clamp_(0.0, 1.0)
    if x.dtype == torch.uint8:
        return out.mul_(255.0).round_().to(torch.uint8)
    return out


def _k_gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    b, c, h, w = x.shape
    work = x.float() if x.dtype == torch.uint8 else x
    half = kernel_size // 2
    pos = torch.arange(-half, half + 1, device=x.device, dtype=work.dtype)
    s = sigma.to(work.dtype).clamp_min(1e-6).reshape(b, 1)
    k1 = torch.exp(-0.5 * (pos / s) ** 2)
    k1 = (k1 / k1.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, K)
    flat = work.reshape(1, b * c, h, w)
    pad_h, pad_w = min(half, h - 1), min(half, w - 1)
    mode = "reflect" if pad_h == half and pad_w == half else "replicate"
    flat = nnf.pad(flat, (half, half, half, half), mode=mode)
    flat = nnf.conv2d(flat, k1.reshape(b * c, 1, 1, kernel_size), groups=b * c)
    flat = nnf.conv2d(flat, k1.reshape(b * c, 1, kernel_size, 1), groups=b * c)
    out = flat.reshape(b, c, h, w)
    if x.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------- public ops


def _p(images: torch.Tensor, value: Param, name: str) -> torch.Tensor:
    return as_param(value, images.shape[0], images.device, name)


def identity(images: torch.Tensor, magnitude: Param = 0.0, *, clamp: bool = False) -> torch.Tensor:
    """A copy of the images (the 'no-op' of the policies; magnitude ignored)."""
    return run_op(images, _k_identity, clamp=clamp)


def brightness(images: torch.Tensor, factor: Param, *, clamp: bool = False) -> torch.Tensor:
    """Scale intensities by `factor` (0 black, 1 unchanged), Pillow ImageEnhance.Brightness."""
    x = check_image_batch(images, clamp=clamp)
    return run_op(x, _k_brightness, (_p(x, factor, "factor"),), validate=False)


def color(images: torch.Tensor, factor: Param, *, clamp: bool = False) -> torch.Tensor:
    """Saturation: blend with the grey (L) image (0 grey, 1 unchanged), Pillow ImageEnhance.Color."""
    x = check_image_batch(images, clamp=clamp)
    return run_op(x, _k_color, (_p(x, factor, "factor"),), validate=False)


def contrast(images: torch.Tensor, factor: Param, *, clamp: bool = False) -> torch.Tensor:
    """Blend with the mean grey level (0 flat grey, 1 unchanged), Pillow ImageEnhance.Contrast."""
    x = check_image_batch(images, clamp=clamp)
    return run_op(x, _k_contrast, (_p(x, factor, "factor"),), validate=False)


def sharpness(images: torch.Tensor, factor: Param, *, clamp: bool = False) -> torch.Tensor:
    """Blend with the SMOOTH-filtered image (0 smoothed, 1 unchanged, 2 sharpened), Pillow ImageEnhance.Sharpness."""
    x = check_image_batch(images, clamp=clamp)
    return run_op(x, _k_sharpness, (_p(x, factor, "factor"),), validate=False)


def posterize(images: torch.Tensor, bits: Param, *, clamp: bool = False) -> torch.Tensor:
    """Keep the top `bits` (0..8) bits of each 8-bit level, PIL.ImageOps.posterize."""
    x = check_image_batch(images, clamp=clamp)
    b = _p(x, bits, "bits")
    if x.device.type == "cpu" and bool(((b < 0) | (b > 8)).any()):
        raise ValueError(f"bits must lie in [0, 8], got values such as {b[(b < 0) | (b > 8)][:3].tolist()}")
    return run_op(x, _k_posterize, (b,), validate=False)


def solarize(images: torch.Tensor, threshold: Param, *, clamp: bool = False) -> torch.Tensor:
    """Invert every pixel whose 8-bit level is >= threshold, PIL.ImageOps.solarize: thresholds may be
    fractional (RandAugment's 178.5 leaves 178 alone), 256 or more inverts nothing, 0 or less everything."""
    x = check_image_batch(images, clamp=clamp)
    t = _p(x, threshold, "threshold")
    if x.is_floating_point():  # the first inverted values once for the batch, not once per block
        return run_op(x, _k_solarize_from, (solarize_float_threshold(t, compute_dtype(x)),), validate=False)
    return run_op(x, _k_solarize, (t,), validate=False)


def solarize_add(
    images: torch.Tensor, addition: Param, *, threshold: float = 128.0, clamp: bool = False
) -> torch.Tensor:
    """Add `addition` levels (clipped) to pixels below `threshold` levels (AutoAugment's SolarizeAdd)."""
    x = check_image_batch(images, clamp=clamp)
    return run_op(x, _k_solarize_add, (_p(x, addition, "addition"),), (float(threshold),), validate=False)


def invert(images: torch.Tensor, magnitude: Param = 0.0, *, clamp: bool = False) -> torch.Tensor:
    """255 - x (uint8) or 1 - x (float), PIL.ImageOps.invert."""
    return run_op(images, _k_invert, clamp=clamp)


def autocontrast(images: torch.Tensor, magnitude: Param = 0.0, *, clamp: bool = False) -> torch.Tensor:
    """Stretch each channel of each image to the full range, PIL.ImageOps.autocontrast (cutoff 0)."""
    return run_op(images, _k_autocontrast, clamp=clamp)


def equalize(images: torch.Tensor, magnitude: Param = 0.0, *, clamp: bool = False) -> torch.Tensor:
    """Histogram-equalise each channel of each image, PIL.ImageOps.equalize (float: on 8-bit levels)."""
    return run_op(images, _k_equalize, clamp=clamp)


def grayscale(images: torch.Tensor, *, clamp: bool = False) -> torch.Tensor:
    """Pillow's L conversion, replicated to the input's channel count."""
    x = check_image_batch(images, clamp=clamp)
    return run_op(x, lambda t: _gray(t).expand_as(t).clone(), validate=False)


def adjust_hue(images: torch.Tensor, shift: Param, *, clamp: bool = False) -> torch.Tensor:
    """Rotate the hue by `shift` turns (in [-0.5, 0.5]) in HSV space; grey images are unchanged."""
    x = check_image_batch(images, clamp=clamp)
    s = _p(x, shift, "shift")
    if x.device.type == "cpu" and bool((s.abs() > 0.5).any()):
        raise ValueError(f"hue shift must lie in [-0.5, 0.5], got values such as {s[s.abs() > 0.5][:3].tolist()}")
    return run_op(x, _k_hue, (s,), validate=False)


def gaussian_blur(
    images: torch.Tensor, sigma: Param, *, kernel_size: int | None = None, clamp: bool = False
) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma (pixels), reflect padding.

    kernel_size defaults to the odd size covering +-3 sigma of the largest sigma (at least 3).
    """
    x = check_image_batch(images, clamp=clamp)
    s = _p(x, sigma, "sigma")
    if bool((s <= 0).any()):
        raise ValueError("sigma must be > 0")
    if kernel_size is None:
        kernel_size = max(3, 2 * int(torch.ceil(3.0 * s.max()).item()) + 1)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    return run_op(x, _k_gaussian_blur, (s,), (int(kernel_size),), validate=False)


def color_jitter(
    images: torch.Tensor,
    brightness: Param = 1.0,
    contrast: Param = 1.0,
    saturation: Param = 1.0,
    hue: Param = 0.0,
    *,
    order: torch.Tensor | None = None,
    clamp: bool = False,
) -> torch.Tensor:
    """Brightness, contrast, saturation factors and hue shift, each per sample, in a per-sample order.

    `order` is a (B, 4) long tensor whose rows are permutations of (0 brightness, 1 contrast,
    2 saturation, 3 hue); None applies them in that fixed order. Each of the four steps is one round of
    the op dispatcher (every op once over the samples that drew it at that step; samples whose value is
    the op's neutral one are left alone), so cost is at most four ops per sample.
    """
    from taxaug.functional import dispatch, registry  # both import this module

    x = check_image_batch(images, clamp=clamp)
    bsz = x.shape[0]
    params = torch.stack([_p(x, brightness, "brightness"), _p(x, contrast, "contrast"),
                          _p(x, saturation, "saturation"), _p(x, hue, "hue")], dim=1)
    if order is None:
        order = torch.arange(4, device=x.device).expand(bsz, 4)
    elif not isinstance(order, torch.Tensor) or order.shape != (bsz, 4) or order.dtype != torch.long:
        raise ValueError(f"order must be a (B, 4) long tensor of permutations of 0..3, got {describe(order)}")
    elif order.device.type == "cpu" and not torch.equal(order.sort(dim=1).values, torch.arange(4).expand(bsz, 4)):
        raise ValueError("every row of order must be a permutation of 0, 1, 2, 3")
    order = order.to(x.device)
    neutral = torch.tensor(registry.jitter_neutral(), dtype=torch.float64, device=x.device)
    names = [*registry.JITTER_OPS, "identity"]
    work, owned = x.to(compute_dtype(x)), False
    for step in range(4):
        op = order[:, step]
        value = params.gather(1, op.unsqueeze(1)).squeeze(1)
        op = torch.where(value == neutral[op], len(names) - 1, op)
        out = dispatch._dispatch(work, op, value, names, None, "nearest", inplace=owned)
        work, owned = out, owned or out is not work
    return dispatch._finish(work, x)
