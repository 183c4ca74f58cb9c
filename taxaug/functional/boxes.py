"""CutMix boxes: sampling, masks and exact areas. Boxes are ``y1, x1, y2, x2``, half-open."""

from __future__ import annotations

import torch

from taxaug.functional.random import rand, randint

__all__ = ["box_area", "box_masks", "sample_boxes"]


def sample_boxes(
    lam: torch.Tensor,
    height: int,
    width: int,
    *,
    minmax: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One box per entry of `lam` (B,) covering about ``1 - lam`` of the image.

    The box has sides ``sqrt(1 - lam)`` of the image's (clamped into
    ``minmax`` when given, as fractions of each side), a centre uniform over
    the image, and is clipped at the border; so the true pasted fraction can
    be smaller than ``1 - lam``: use :func:`box_area` for the exact value.
    """
    device = lam.device
    ratio = torch.sqrt((1.0 - lam.to(torch.float64)).clamp(0.0, 1.0))
    if minmax is not None:
        low, high = minmax
        ratio_h = rand(lam.shape, generator=generator, device=device, dtype=torch.float64) * (high - low) + low
        ratio_w = rand(lam.shape, generator=generator, device=device, dtype=torch.float64) * (high - low) + low
    else:
        ratio_h = ratio_w = ratio
    cut_h = (ratio_h * height).round().long()
    cut_w = (ratio_w * width).round().long()
    cy = randint(height, lam.shape, generator=generator, device=device)
    cx = randint(width, lam.shape, generator=generator, device=device)
    y1 = (cy - cut_h // 2).clamp(0, height)
    x1 = (cx - cut_w // 2).clamp(0, width)
    y2 = (cy - cut_h // 2 + cut_h).clamp(0, height)
    x2 = (cx - cut_w // 2 + cut_w).clamp(0, width)
    return torch.stack([y1, x1, y2, x2], dim=1)


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
