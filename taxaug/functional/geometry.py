"""Batched geometric ops with per-sample parameters: one affine warp for the whole batch.

Every op is expressed as Pillow's inverse affine "data" (a, b, c, d, e, f): the output pixel
(x, y) samples the input at (a*(x+0.5) + b*(y+0.5) + c, d*(x+0.5) + e*(y+0.5) + f), the
convention of ``PIL.Image.transform(AFFINE)``. Nearest sampling (the AutoAugment default) is
written here as an index gather: it works on uint8 and float alike, needs no float copy of
uint8 images, and picks the source pixel exactly as Pillow's ``ImagingTransformAffine`` does
(libImaging/Geometry.c), so nearest warps are bit-exact with Pillow:

- axis-aligned data (b == d == 0: translations, flips, scales) walks each axis from
  ``c + a/2`` (``f + e/2``) adding ``a`` (``e``) one pixel at a time in double precision;
- other data (rotations, shears) works in 16.16 fixed point: every coefficient is rounded to
  ``floor(v * 65536 + 0.5)`` and the source pixel is the integer part of the exact fixed-point
  sum, so a row whose true coordinate is an integer can land on its neighbour;
- data whose corners map beyond +-32768 pixels (fixed point would overflow) walks rows and
  columns incrementally in double precision.

Bilinear sampling goes through ``kornia.geometry.transform.warp_affine``.

Directions: rotate is counter-clockwise for positive degrees about the image centre (as Pillow);
shear_x(m) samples x + m*y (Pillow data (1, m, 0, 0, 1, 0)), shear_y likewise; translate moves
the content right/down for positive pixels.
"""

from __future__ import annotations

import torch

from taxaug import _memory, _native
from taxaug.functional._image_common import (
    Fill,
    Param,
    as_param,
    check_image_batch,
    fill_tensor,
    run_op,
    sample_blocks,
)

__all__ = [
    "affine",
    "hflip",
    "rotate",
    "rotate_data",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
]

INTERPOLATIONS = ("nearest", "bilinear")


def rotate_data(angle: torch.Tensor, height: int, width: int, *, pillow_rounding: bool = True) -> torch.Tensor:
    """(B, 6) Pillow affine data of Image.rotate(angle) about the centre (float64), computed as
    Pillow computes it: angle mod 360, cosine and sine rounded to 15 decimals, centre (w/2, h/2).
    ``pillow_rounding=False`` skips the rounding, which has no gradient (the differentiable ops)."""
    rad = -torch.deg2rad(torch.remainder(angle.double(), 360.0))
    cos, sin = torch.cos(rad), torch.sin(rad)
    if pillow_rounding:
        cos, sin = _round15(cos), _round15(sin)
    cx, cy = width / 2.0, height / 2.0
    c = cos * -cx + sin * -cy + cx
    f = -sin * -cx + cos * -cy + cy
    return torch.stack([cos, sin, c, -sin, cos, f], dim=1)


_SPLIT = 134217729.0  # 2**27 + 1: splits a double into two halves whose products are exact (Dekker)
_TEN15_HI = 1e15 * _SPLIT - (1e15 * _SPLIT - 1e15)
_TEN15_LO = 1e15 - _TEN15_HI


def _round15(v: torch.Tensor) -> torch.Tensor:
    """Python's ``round(v, 15)`` for |v| <= 1: half to even on the exact product v * 10**15.

    ``torch.round(v, decimals=15)`` rounds the already rounded product, which breaks ties the
    exact product does not have (~9% of angles); the product's exact rounding error decides them."""
    scaled = v * 1e15
    nearest = torch.round(scaled)  # half to even, as Python
    big = v * _SPLIT
    v_hi = big - (big - v)
    v_lo = v - v_hi
    error = ((v_hi * _TEN15_HI - scaled) + v_hi * _TEN15_LO + v_lo * _TEN15_HI) + v_lo * _TEN15_LO
    rest = scaled - nearest
    nearest = nearest + ((rest == 0.5) & (error > 0)).to(v.dtype) - ((rest == -0.5) & (error < 0)).to(v.dtype)
    return nearest / 1e15


def _unit(batch: int, device: torch.device) -> torch.Tensor:
    data = torch.zeros(batch, 6, dtype=torch.float64, device=device)
    data[:, 0] = 1.0
    data[:, 4] = 1.0
    return data


def shear_x_data(m: torch.Tensor) -> torch.Tensor:
    data = _unit(m.shape[0], m.device)
    data[:, 1] = m
    return data


def shear_y_data(m: torch.Tensor) -> torch.Tensor:
    data = _unit(m.shape[0], m.device)
    data[:, 3] = m
    return data


def translate_x_data(pixels: torch.Tensor) -> torch.Tensor:
    data = _unit(pixels.shape[0], pixels.device)
    data[:, 2] = -pixels
    return data


def translate_y_data(pixels: torch.Tensor) -> torch.Tensor:
    data = _unit(pixels.shape[0], pixels.device)
    data[:, 5] = -pixels
    return data


def hflip_data(batch: int, width: int, device: torch.device) -> torch.Tensor:
    data = _unit(batch, device)
    data[:, 0] = -1.0
    data[:, 2] = float(width)
    return data


def warp_workspace(x: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """A (block, C, H + 2, W + 2) buffer for `_warp_nearest` with its ring set to `fill`, to reuse
    over the sample blocks of one call: a fresh buffer per block would fault its pages in each time."""
    b, c, h, w = x.shape
    block = max(1, min(b, sample_blocks(x)[0].stop or 1))
    padded = torch.empty(block, c, h + 2, w + 2, dtype=x.dtype, device=x.device)
    ring = fill.reshape(1, c, 1)
    padded[:, :, 0] = ring
    padded[:, :, -1] = ring
    padded[:, :, 1:-1, 0] = ring
    padded[:, :, 1:-1, -1] = ring
    return padded


_FIXED_LIMIT = 32768.0  # Pillow's 16.16 fixed point holds coordinates below this


def _fix(v: torch.Tensor) -> torch.Tensor:
    """Pillow's 16.16 fixed-point value of a coefficient, floor(v * 65536 + 0.5), in a 32-bit int as
    Pillow keeps it (sums wrap as Pillow's do; within the fixed-point range they never overflow)."""
    return v.mul(65536.0).add_(0.5).floor_().long().int()


def _fits_fixed(data: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B,) Pillow's check_fixed: the image corners (0, 0), (w, h), (0, h), (w, 0) map inside +-32768."""
    corners = torch.tensor([[0.0, width, 0.0, width], [0.0, height, height, 0.0]], dtype=torch.float64,
                           device=data.device)
    rows = data.reshape(-1, 2, 3, 1)  # (a, b, c) and (d, e, f)
    mapped = (corners[0] * rows[:, :, 0] + corners[1] * rows[:, :, 1]) + rows[:, :, 2]  # (B, 2, 4)
    return (mapped.abs() < _FIXED_LIMIT).flatten(1).all(dim=1)


def _walk(start: torch.Tensor, step: torch.Tensor, n: int, bound: int) -> torch.Tensor:
    """Integer parts of start, start + step, start + 2 step, ... (n terms on a new last dimension), added
    one step at a time in float64 as Pillow's loops do (torch's CPU cumsum adds in order), clamped to
    [-1, bound]."""
    seq = torch.cat([start.unsqueeze(-1), step.unsqueeze(-1).expand(*step.shape, max(n - 1, 0))], dim=-1)
    return seq.cumsum(dim=-1)[..., :n].floor_().clamp_(-1, bound).int()


def _axis_source(data: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source column (B, 1, W) and row (B, H, 1) for axis-aligned data (Pillow's ImagingScaleAffine)."""
    if h == w:  # both axes in one walk
        both = _walk(data[:, 2::3] + data[:, 0::4] * 0.5, data[:, 0::4], w, w)
        return both[:, 0].unsqueeze(1), both[:, 1].unsqueeze(2)
    cols = _walk(data[:, 2] + data[:, 0] * 0.5, data[:, 0], w, w)
    rows = _walk(data[:, 5] + data[:, 4] * 0.5, data[:, 4], h, h)
    return cols.unsqueeze(1), rows.unsqueeze(2)


def _fixed_source(data: torch.Tensor, h: int, w: int, sep_y: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Source column and row (B, H, W) in 16.16 fixed point (Pillow's affine_fixed); with ``sep_y`` (every
    d rounds to 0) the row is (B, H, 1). 32-bit integer arithmetic, as Pillow (and several times faster
    than 64-bit on CPU)."""
    offsets = data[:, 2::3] + data[:, 0::3] * 0.5 + data[:, 1::3] * 0.5  # c + a/2 + b/2, f + d/2 + e/2
    a0, a1, a3, a4, a2, a5 = _fix(torch.cat([data[:, (0, 1, 3, 4)], offsets], dim=1)).reshape(-1, 6, 1, 1).unbind(1)
    xs = torch.arange(w, device=data.device, dtype=torch.int32).reshape(1, 1, w)
    ys = torch.arange(h, device=data.device, dtype=torch.int32).reshape(1, h, 1)
    src_x = (a1 * ys + a2 + a0 * xs).bitwise_right_shift_(16).clamp_(-1, w)  # >> 16: floor division
    src_y = a4 * ys + a5
    if not sep_y:
        src_y = src_y + a3 * xs
    return src_x, src_y.bitwise_right_shift_(16).clamp_(-1, h)


def _float_source(data: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source column and row (B, H, W) outside the fixed-point range: Pillow walks each row from
    (c + b/2 + a/2) + y b adding a per pixel (and the same for d, e, f), in float64."""
    def walk_2d(start: torch.Tensor, row_step: torch.Tensor, step: torch.Tensor, bound: int) -> torch.Tensor:
        seq = torch.cat([start.unsqueeze(1), row_step.unsqueeze(1).expand(-1, h - 1)], dim=1).cumsum(dim=1)[:, :h]
        grid = torch.cat([seq.unsqueeze(2), step.reshape(-1, 1, 1).expand(-1, h, w - 1)], dim=2)
        return grid.cumsum(dim=2)[:, :, :w].floor_().clamp_(-1, bound).int()

    src_x = walk_2d(data[:, 2] + data[:, 1] * 0.5 + data[:, 0] * 0.5, data[:, 1], data[:, 0], w)
    src_y = walk_2d(data[:, 5] + data[:, 4] * 0.5 + data[:, 3] * 0.5, data[:, 4], data[:, 3], h)
    return src_x, src_y


def _nearest_source(data: torch.Tensor, h: int, w: int,
                    host_read: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Source column and row of every output pixel as Pillow's nearest affine picks them, clamped to
    [-1, w] x [-1, h] (outside the image), int32, broadcastable to (B, H, W).

    With `host_read` (default: on CPU) one host read picks the paths the batch needs; without it
    (accelerators) every sample takes the axis-aligned or the fixed-point path, with no host sync, also
    beyond the fixed-point range."""
    axis = (data[:, 1::2][:, :2] == 0).all(dim=1)  # b == d == 0
    fixed = None  # only the host-read branch mixes the fixed-point and float walks
    if _native.device_strategy(data.device) == "cpu" if host_read is None else host_read:
        fixed = ~axis & _fits_fixed(data, h, w)
        kinds = torch.stack([axis, fixed, ~(axis | fixed), data[:, 3].abs() < 0.5 / 65536])  # last: d rounds to 0
        any_axis, any_fixed, any_float, _ = kinds.any(dim=1).tolist()
        all_axis, _, _, sep_y = kinds.all(dim=1).tolist()
    else:
        any_axis, all_axis, any_fixed, any_float, sep_y = True, False, True, False, False
    if all_axis:
        return _axis_source(data, h, w)
    src_x, src_y = _fixed_source(data, h, w, sep_y) if any_fixed else _float_source(data, h, w)
    if any_fixed and any_float:
        fl_x, fl_y = _float_source(data, h, w)
        src_x = torch.where(fixed.reshape(-1, 1, 1), src_x, fl_x)
        src_y = torch.where(fixed.reshape(-1, 1, 1), src_y, fl_y)
    if any_axis:
        ax_x, ax_y = _axis_source(data, h, w)
        is_axis = axis.reshape(-1, 1, 1)
        src_x, src_y = torch.where(is_axis, ax_x, src_x), torch.where(is_axis, ax_y, src_y)
    return src_x, src_y


def _flat_index(src_x: torch.Tensor, src_y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H, W) int64 index into the padded (H + 2) x (W + 2) frame, overwriting the full-size source
    tensors (fewer fresh buffers, each of which the OS must fault in): the +1 shift into the padded frame
    is folded in as (y + 1) * (w + 2) + (x + 1) = y * (w + 2) + x + (w + 3)."""
    full_x, full_y = src_x.shape[1] == h and h > 1, src_y.shape[2] == w and w > 1
    if (h + 2) * (w + 2) >= 2**31 or not (full_x or full_y):  # 64-bit index, or one broadcast sum
        return (src_y.long() * (w + 2) + src_x.long()).add_(w + 3)
    flat = src_y.mul_(w + 2).add_(src_x) if full_y else src_x.add_(src_y * (w + 2))
    return _memory.empty(flat.shape, dtype=torch.int64, device=flat.device).copy_(flat.add_(w + 3))


def _warp_nearest(x: torch.Tensor, data: torch.Tensor, fill: torch.Tensor,
                  padded: torch.Tensor | None = None) -> torch.Tensor:
    """Nearest-neighbour affine warp as one gather over a copy padded by a ring of `fill`.

    Source pixels are picked as Pillow picks them (see the module docstring) and clamped to the
    ring, so pixels that sample outside the image read the fill value without a mask or a select.
    `padded` is an optional :func:`warp_workspace` of at least B samples, built with the same fill.
    """
    b, c, h, w = x.shape
    if _native.warp_applies(x, x):  # the output made here is laid out like x
        return _native.warp_nearest(x, torch.arange(b), data, fill, torch.empty_like(x))
    if padded is None or padded.shape[0] < b:
        padded = warp_workspace(x, fill)
    padded = padded[:b]
    padded[:, :, 1:-1, 1:-1] = x
    index = _flat_index(*_nearest_source(data, h, w), h, w).reshape(b, 1, h * w)
    flat = padded.reshape(b, c, (h + 2) * (w + 2))
    if flat.requires_grad:  # out= does not record the gather for autograd
        return flat.gather(2, index.expand(b, c, h * w)).reshape(b, c, h, w)
    out = _memory.empty((b, c, h * w), dtype=x.dtype, device=x.device)
    return torch.gather(flat, 2, index.expand(b, c, h * w), out=out).reshape(b, c, h, w)


def is_zero_fill(fill: Fill) -> bool:
    """Whether a fill argument is black (None or zeros), which a bilinear warp's zero padding gives as is."""
    return fill is None or not bool(torch.as_tensor(fill, dtype=torch.float64).ne(0).any())


def _warp_bilinear(x: torch.Tensor, data: torch.Tensor, fill: torch.Tensor, zero_fill: bool = False) -> torch.Tensor:
    from kornia.geometry.transform import warp_affine

    b, c, h, w = x.shape
    work = x.float() if x.dtype == torch.uint8 else x
    # Pillow data maps output edge coords to input edge coords; kornia wants the forward
    # src -> dst matrix on pixel centres.
    inv = torch.zeros(b, 3, 3, dtype=torch.float64, device=x.device)
    inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 0], inv[:, 1, 1] = data[:, 0], data[:, 1], data[:, 3], data[:, 4]
    inv[:, 0, 2] = data[:, 2] + 0.5 * (data[:, 0] + data[:, 1]) - 0.5
    inv[:, 1, 2] = data[:, 5] + 0.5 * (data[:, 3] + data[:, 4]) - 0.5
    inv[:, 2, 2] = 1.0
    forward = torch.linalg.inv(inv)[:, :2, :].to(work.dtype)
    if zero_fill:  # zero padding is the fill: no coverage channel to warp and blend (the same values)
        out = warp_affine(work, forward, (h, w), mode="bilinear", padding_mode="zeros", align_corners=True)
    else:
        ones = torch.ones(b, 1, h, w, dtype=work.dtype, device=x.device)
        warped = warp_affine(torch.cat([work, ones], dim=1), forward, (h, w), mode="bilinear",
                             padding_mode="zeros", align_corners=True)
        coverage = warped[:, c:]
        out = warped[:, :c] + (1.0 - coverage) * fill.to(work.dtype).reshape(1, c, 1, 1)
    if x.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.clamp_(0.0, 1.0)


def _k_affine(x: torch.Tensor, data: torch.Tensor, fill: Fill, interpolation: str = "nearest") -> torch.Tensor:
    fill_t = fill_tensor(fill, x.shape[1], x.dtype, x.device)
    if interpolation == "nearest":
        return _warp_nearest(x, data, fill_t)
    if interpolation == "bilinear":
        return _warp_bilinear(x, data, fill_t, is_zero_fill(fill))
    raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")


def _check_interp(interpolation: str) -> None:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")


def affine(
    images: torch.Tensor,
    data: torch.Tensor,
    *,
    fill: Fill = None,
    interpolation: str = "nearest",
    clamp: bool = False,
) -> torch.Tensor:
    """Warp each image by its own Pillow affine data (B, 6) or (6,) (output -> input, edge coords)."""
    x = check_image_batch(images, clamp=clamp)
    _check_interp(interpolation)
    data = torch.as_tensor(data, dtype=torch.float64, device=x.device)
    if data.ndim == 1:
        data = data.expand(x.shape[0], 6)
    if data.shape != (x.shape[0], 6):
        raise ValueError(f"data must have shape (B, 6) or (6,), got {tuple(data.shape)}")
    return run_op(x, _k_affine, (data,), (fill, interpolation), validate=False)


def _geometric(images, value, name, make, fill, interpolation, clamp):
    x = check_image_batch(images, clamp=clamp)
    _check_interp(interpolation)
    p = as_param(value, x.shape[0], x.device, name)
    if not bool(torch.isfinite(p).all()):
        raise ValueError(f"{name} must be finite")
    data = make(p, x.shape[2], x.shape[3])
    return run_op(x, _k_affine, (data,), (fill, interpolation), validate=False)


def rotate(images: torch.Tensor, angle: Param, *, fill: Fill = None, interpolation: str = "nearest",
           clamp: bool = False) -> torch.Tensor:
    """Rotate counter-clockwise by `angle` degrees about the centre, keeping the size (Pillow Image.rotate)."""
    return _geometric(images, angle, "angle", rotate_data, fill, interpolation, clamp)


def shear_x(images: torch.Tensor, factor: Param, *, fill: Fill = None, interpolation: str = "nearest",
            clamp: bool = False) -> torch.Tensor:
    """Horizontal shear about the top-left corner: output (x, y) samples (x + factor*y, y)."""
    return _geometric(images, factor, "factor", lambda p, h, w: shear_x_data(p), fill, interpolation, clamp)


def shear_y(images: torch.Tensor, factor: Param, *, fill: Fill = None, interpolation: str = "nearest",
            clamp: bool = False) -> torch.Tensor:
    """Vertical shear about the top-left corner: output (x, y) samples (x, y + factor*x)."""
    return _geometric(images, factor, "factor", lambda p, h, w: shear_y_data(p), fill, interpolation, clamp)


def translate_x(images: torch.Tensor, pixels: Param, *, fill: Fill = None, interpolation: str = "nearest",
                clamp: bool = False) -> torch.Tensor:
    """Move the content right by `pixels` (left when negative)."""
    return _geometric(images, pixels, "pixels", lambda p, h, w: translate_x_data(p), fill, interpolation, clamp)


def translate_y(images: torch.Tensor, pixels: Param, *, fill: Fill = None, interpolation: str = "nearest",
                clamp: bool = False) -> torch.Tensor:
    """Move the content down by `pixels` (up when negative)."""
    return _geometric(images, pixels, "pixels", lambda p, h, w: translate_y_data(p), fill, interpolation, clamp)


def hflip(images: torch.Tensor, magnitude: Param = 0.0, *, clamp: bool = False) -> torch.Tensor:
    """Mirror left-right."""
    return run_op(images, lambda t: t.flip(-1), clamp=clamp)


GEOMETRIC_DATA = {
    "rotate": rotate_data,
    "shear_x": lambda p, h, w: shear_x_data(p),
    "shear_y": lambda p, h, w: shear_y_data(p),
    "translate_x": lambda p, h, w: translate_x_data(p),
    "translate_y": lambda p, h, w: translate_y_data(p),
    "hflip": lambda p, h, w: hflip_data(p.shape[0], w, p.device),
}
"""Op name -> (params (B,), height, width) -> (B, 6) Pillow affine data; the dispatcher warps all
geometric samples of a batch in one gather."""

