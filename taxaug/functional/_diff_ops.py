"""Differentiable forwards of the registry's ops, built on the policy ops' own kernels and conventions.

Each forward is ``(x, magnitude, dither) -> images`` on float images in [0, 1] with (B,) magnitudes
and is differentiable in the magnitude:

- geometric ops warp by the policy ops' Pillow affine data (same anchor and coefficients: rotation
  about the centre, shear about the top-left corner), sampled bilinearly with a zero fill
  (``grid_sample``), so the gradient reaches the magnitude through the sampling grid;
- enhance ops are the policy float kernels themselves (Pillow's integer grey weights, the float64
  mean of contrast, the SMOOTH filter), which are differentiable as written;
- posterize, solarize and equalize run the policy float kernel forward and a straight-through
  surrogate backward; autocontrast (and equalize) blend with the full op by a strength.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as torchF

from taxaug.functional import geometry as _geometry

Kernel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]

# Width, on the [0, 1] pixel scale, of the sigmoid the solarize surrogate uses.
SOLARIZE_TAU = 16.0 / 255.0


AFFINE: dict[str, Callable[[torch.Tensor, int, int], torch.Tensor]] = {
    **_geometry.GEOMETRIC_DATA,
    "rotate": functools.partial(_geometry.rotate_data, pillow_rounding=False),
}
"""Op name -> differentiable (magnitudes (B,), height, width) -> (B, 6) float64 Pillow affine data."""


def warp(images: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """Bilinear warp by Pillow affine data (B, 6) (output edge coordinates -> input edge coordinates),
    zero outside; differentiable in the images and the data.

    With ``align_corners=False`` the normalised coordinate of edge coordinate ``x`` is ``2 x / W - 1``,
    so Pillow's ``x_in = a (x + 0.5) + b (y + 0.5) + c`` becomes
    ``u_in = a u + b (H / W) v + a + b (H / W) + 2 c / W - 1`` (and likewise for ``v_in``).
    """
    _, _, height, width = images.shape
    a, b, c, d, e, f = data.double().unbind(1)
    bh, dw = b * (height / width), d * (width / height)
    row_x = torch.stack([a, bh, a + bh + 2.0 * c / width - 1.0], dim=1)
    row_y = torch.stack([dw, e, dw + e + 2.0 * f / height - 1.0], dim=1)
    theta = torch.stack([row_x, row_y], dim=1).to(images.dtype)
    grid = torchF.affine_grid(theta, list(images.shape), align_corners=False)
    return torchF.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def geometric(affine: Callable[[torch.Tensor, int, int], torch.Tensor]) -> Forward:
    def forward(x: torch.Tensor, magnitude: torch.Tensor, dither: torch.Tensor | None = None) -> torch.Tensor:
        return warp(x, affine(magnitude, x.shape[2], x.shape[3]))

    return forward


def plain(kernel: Kernel) -> Forward:
    """A kernel that is differentiable as written (flips, identity, the enhance blends)."""

    def forward(x: torch.Tensor, magnitude: torch.Tensor, dither: torch.Tensor | None = None) -> torch.Tensor:
        return kernel(x, magnitude)

    return forward


def posterize(kernel: Kernel) -> Forward:
    """Exact posterize with ``round(bits)`` bits, or with ``dither`` (uniforms in [0, 1)) ``floor(bits + dither)``
    (stochastic rounding, mean ``bits``). Backward: identity to the images; to ``bits`` the gradient of the
    mean quantisation shift ``-step(bits) / 2``, ``step = 2^(8 - bits) / 255``."""

    def forward(x: torch.Tensor, bits: torch.Tensor, dither: torch.Tensor | None = None) -> torch.Tensor:
        whole = torch.round(bits.detach()) if dither is None else torch.floor(bits.detach() + dither)
        hard = kernel(x.detach(), whole.clamp(0.0, 8.0))
        surrogate = (-0.5 / 255.0) * torch.pow(2.0, 8.0 - bits).view(-1, 1, 1, 1)
        return x + (hard - x.detach()) + (surrogate - surrogate.detach())

    return forward


def solarize(kernel: Kernel) -> Forward:
    """Exact solarize forward; to the images +1 where kept and -1 where inverted; to the threshold the
    gradient of a soft inversion switching on along a sigmoid 16 levels wide."""

    def forward(x: torch.Tensor, threshold: torch.Tensor, dither: torch.Tensor | None = None) -> torch.Tensor:
        hard = kernel(x.detach(), threshold.detach())
        inverted = hard != x.detach()  # where 1 - x == x either slope is exact
        slope = 1.0 - 2.0 * inverted.to(x.dtype)
        switch = torch.sigmoid((x.detach() - threshold.view(-1, 1, 1, 1) / 255.0) / SOLARIZE_TAU)
        surrogate = switch * (1.0 - 2.0 * x.detach())
        return hard + slope * (x - x.detach()) + (surrogate - surrogate.detach())

    return forward


def strength(kernel: Kernel, *, straight_through: bool) -> Forward:
    """``x + s (op(x) - x)``: strength 1 is the full op, 0 the original. ``straight_through``: the op has
    no useful derivative (equalize), so the images get gradient 1 and ``s`` the exact blend gradient."""

    def forward(x: torch.Tensor, s: torch.Tensor, dither: torch.Tensor | None = None) -> torch.Tensor:
        delta = kernel(x, s) - x
        return x + s.view(-1, 1, 1, 1) * (delta.detach() if straight_through else delta)

    return forward
