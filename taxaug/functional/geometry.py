"""Batched geometric ops with per-sample parameters: one affine warp for the whole batch.

Every op is expressed as Pillow's inverse affine "data" (a, b, c, d, e, f): the output pixel
(x, y) samples the input at (a*(x+0.5) + b*(y+0.5) + c, d*(x+0.5) + e*(y+0.5) + f), the
convention of ``PIL.Image.transform(AFFINE)``. Nearest sampling (the AutoAugment default) is
written here as an index gather: it works on uint8 and float alike, needs no float copy of
uint8 images, and floors coordinates as Pillow does, so results match Pillow except on the rare
pixels whose source coordinate falls exactly on a pixel edge (Pillow accumulates coordinates
incrementally). Bilinear sampling goes through ``kornia.geometry.transform.warp_affine``.

Directions: rotate is counter-clockwise for positive degrees about the image centre (as Pillow);
shear_x(m) samples x + m*y (Pillow data (1, m, 0, 0, 1, 0)), shear_y likewise; translate moves
the content right/down for positive pixels.
"""

from __future__ import annotations

import torch

from taxaug import _native
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


def rotate_data(angle: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 6) Pillow affine data of Image.rotate(angle) about the centre (float64)."""
    rad = -torch.deg2rad(angle.double())
    cos = torch.round(torch.cos(rad), decimals=15)
    sin = torch.round(torch.sin(rad), decimals=15)
    cx, cy = width / 2.0, height / 2.0
    c = cos * -cx + sin * -cy + cx
    f = -sin * -cx + cos * -cy + cy
    return torch.stack([cos, sin, c, -sin, cos, f], dim=1)


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


def _warp_nearest(x: torch.Tensor, data: torch.Tensor, fill: torch.Tensor,
                  padded: torch.Tensor | None = None) -> torch.Tensor:
    """Nearest-neighbour affine warp as one gather over a copy padded by a ring of `fill`.

    Source coordinates are floored (Pillow) and clamped to the ring, so pixels that sample outside
    the image read the fill value without a mask or a select. `padded` is an optional
    :func:`warp_workspace` of at least B samples, built with the same fill.
    """
    b, c, h, w = x.shape
    dev = x.device
    if _native.warp_applies(x, x):  # the output made here is laid out like x
        return _native.warp_nearest(x, torch.arange(b), data, fill, torch.empty_like(x))
    if padded is None or padded.shape[0] < b:
        padded = warp_workspace(x, fill)
    padded = padded[:b]
    padded[:, :, 1:-1, 1:-1] = x
    xs = torch.arange(w, device=dev, dtype=torch.float64).add_(0.5)
    ys = torch.arange(h, device=dev, dtype=torch.float64).add_(0.5)
    a_, b_, c_, d_, e_, f_ = (data[:, i].reshape(b, 1, 1) for i in range(6))
    # clamping to [-1, w] sends every outside pixel to the ring; the +1 shift into the padded frame
    # is folded into the flat index: (y + 1) * (w + 2) + (x + 1) = y * (w + 2) + x + (w + 3)
    # When b == 0 (d == 0) the source x (y) depends on x (y) only: b*y + c == c exactly, so the same
    # arithmetic on a (B, 1, W) row ((B, H, 1) column) gives the same values, and the index is one
    # broadcast add (translations: both; shears: one of the two; checked on CPU only, a host read).
    sep_x, sep_y = (data[:, 1::2][:, :2] == 0).all(dim=0).tolist() if dev.type == "cpu" else (False, False)
    if sep_x:
        src_x = (a_ * xs.reshape(1, 1, w) + c_).floor_().clamp_(-1, w)
    else:
        src_x = (a_ * xs.reshape(1, 1, w) + (b_ * ys.reshape(1, h, 1) + c_)).floor_().clamp_(-1, w)
    if sep_y:
        src_y = (e_ * ys.reshape(1, h, 1) + f_).floor_().clamp_(-1, h)
    else:
        src_y = (d_ * xs.reshape(1, 1, w) + (e_ * ys.reshape(1, h, 1) + f_)).floor_().clamp_(-1, h)
    if src_y.shape[2] == w:  # flat index y * (w + 2) + x (exact in float64), in place where possible
        flat_index = src_y.mul_(w + 2).add_(src_x)
    elif src_x.shape[1] == h:
        flat_index = src_x.add_(src_y.mul_(w + 2))
    else:
        flat_index = src_y.mul_(w + 2) + src_x
    index = flat_index.long().add_(w + 3).reshape(b, 1, h * w)
    flat = padded.reshape(b, c, (h + 2) * (w + 2))
    return flat.gather(2, index.expand(b, c, h * w)).reshape(b, c, h, w)


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

