"""CutMix boxes: sampling, masks and exact areas. Boxes are ``y1, x1, y2, x2``, half-open."""

from __future__ import annotations

import torch

from taxaug.functional.random import randint

__all__ = ["box_area", "box_masks", "sample_boxes"]


def sample_boxes(
    lam: torch.Tensor,
    height: int,
    width: int,
    *,
    minmax: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One box per entry of `lam` (B,).

    Without `minmax` the box covers about ``1 - lam`` of the image: sides ``sqrt(1 - lam)`` of the
    image's (rounded), a centre uniform over the image, clipped at the border, so the true pasted
    fraction can be smaller than ``1 - lam``. With ``minmax=(low, high)`` (timm's ``cutmix_minmax``)
    lam is not used: each side is an integer uniform in ``[int(low * side), int(high * side)]`` and
    the box lies inside the image at a uniform position. Either way use :func:`box_area` for the
    exact pasted fraction (CutMix takes its lam from it).
    """
    if minmax is not None:
        return _minmax_boxes(lam.shape, height, width, minmax, lam.device, generator)
    device = lam.device
    ratio = torch.sqrt((1.0 - lam.to(torch.float64)).clamp(0.0, 1.0))
    cut_h = (ratio * height).round().long()
    cut_w = (ratio * width).round().long()
    cy = randint(height, lam.shape, generator=generator, device=device)
    cx = randint(width, lam.shape, generator=generator, device=device)
    y1 = (cy - cut_h // 2).clamp(0, height)
    x1 = (cx - cut_w // 2).clamp(0, width)
    y2 = (cy - cut_h // 2 + cut_h).clamp(0, height)
    x2 = (cx - cut_w // 2 + cut_w).clamp(0, width)
    return torch.stack([y1, x1, y2, x2], dim=1)


def _minmax_boxes(shape: torch.Size, height: int, width: int, minmax: tuple[float, float], device: torch.device,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Boxes with sides uniform in [int(low * side), int(high * side)], placed uniformly inside the image."""
    low, high = minmax
    corners, sides = [], []
    for size in (height, width):
        shortest, longest = int(low * size), int(high * size)
        side = randint(longest - shortest + 1, shape, generator=generator, device=device) + shortest
        corners.append(randint(size - side + 1, shape, generator=generator, device=device))
        sides.append(side)
    (y1, x1), (cut_h, cut_w) = corners, sides
    return torch.stack([y1, x1, y1 + cut_h, x1 + cut_w], dim=1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(B,) pixel count of each half-open box."""
    return (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 1, H, W) bool mask, True inside each sample's box."""
    device = boxes.device
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    in_rows = (rows[None, :] >= boxes[:, 0:1]) & (rows[None, :] < boxes[:, 2:3])
    in_cols = (cols[None, :] >= boxes[:, 1:2]) & (cols[None, :] < boxes[:, 3:4])
    return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)
