"""Random Erasing, vectorised over the batch (per-sample boxes, candidates, fill modes)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from taxaug import _memory
from taxaug.functional import random as _random
from taxaug.functional._image_common import device_strategy, memory_format
from taxaug.functional._validate import check_images, check_probability

__all__ = ["random_erasing"]


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


def _erase_boxes_cpu(x: torch.Tensor, active: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                     bh: torch.Tensor, bw: torch.Tensor, value: object, fmt: torch.memory_format) -> torch.Tensor:
    """Constant erasing on CPU: one slice fill per box. A full-batch (B, 1, H, W) mask and a masked
    fill over every pixel cost more than the boxes themselves (64x3x224x224 uint8: ~5x)."""
    c = x.shape[1]
    fill = _erase_value(value, c, x.dtype, x.device)
    out = _memory.clone(x)
    sel = active.nonzero()
    if sel.shape[0] == 0:
        return out.contiguous(memory_format=fmt)
    i, k = sel[:, 0], sel[:, 1]
    boxes = torch.stack([i.double(), top[i, k], left[i, k], bh[i, k], bw[i, k]], dim=1).long().tolist()
    same = c == 1 or bool((fill == fill[0]).all())
    fill_v = fill[0].item() if same else fill.reshape(c, 1, 1)
    for n, t0, l0, hh, ww in boxes:
        out[n, :, t0 : t0 + hh, l0 : l0 + ww] = fill_v
    return out.contiguous(memory_format=fmt)


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
    fmt = memory_format(x)
    chosen, top, left, bh, bw = _draw_boxes(x.shape, p, (s_lo, s_hi), (r_lo, r_hi), count, max_attempts, generator,
                                            x.device)
    if mode == "const" and device_strategy(x.device) == "cpu":
        return _erase_boxes_cpu(x, chosen, top, left, bh, bw, value, fmt)
    return _erase_masked(x, chosen, top, left, bh, bw, mode, value, generator).contiguous(memory_format=fmt)


def _draw_boxes(shape: torch.Size, p: float, scale: tuple[float, float], ratio: tuple[float, float], count: int,
                max_attempts: int, generator: torch.Generator | None, dev: torch.device) -> tuple[torch.Tensor, ...]:
    """(chosen (B, count) bool: erased and fitting, top, left, height, width (B, count) float64) of the boxes."""
    b, _, h, w = shape
    apply = _random.rand((b,), generator=generator, device=dev) < p
    draws = (b, count, max_attempts)
    area = scale[0] + (scale[1] - scale[0]) * _random.rand(draws, generator=generator, device=dev, dtype=torch.float64)
    area = area * (h * w / count)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * _random.rand(
        draws, generator=generator, device=dev, dtype=torch.float64)
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
    return apply.unsqueeze(1) & found, top, left, bh, bw


def _erase_masked(x: torch.Tensor, chosen: torch.Tensor, top: torch.Tensor, left: torch.Tensor, bh: torch.Tensor,
                  bw: torch.Tensor, mode: str, value: float | Sequence[float],
                  generator: torch.Generator | None) -> torch.Tensor:
    """Erase the chosen boxes through a (B, 1, H, W) mask (the accelerator strategy, and the noise modes)."""
    b, c, h, w = x.shape
    dev = x.device
    active = chosen.unsqueeze(2)
    rows = torch.arange(h, device=dev, dtype=torch.float64)
    cols = torch.arange(w, device=dev, dtype=torch.float64)
    in_rows = active & (rows >= top.unsqueeze(2)) & (rows < (top + bh).unsqueeze(2))
    in_cols = active & (cols >= left.unsqueeze(2)) & (cols < (left + bw).unsqueeze(2))
    mask = (in_rows.unsqueeze(3) & in_cols.unsqueeze(2)).any(dim=1).unsqueeze(1)  # (B, 1, H, W)
    if mode == "const":
        fill = _erase_value(value, c, x.dtype, dev)
        out = _memory.clone(x)
        if c == 1 or bool((fill == fill[0]).all()):
            out.masked_fill_(mask, fill[0])
        else:
            for ch in range(c):  # per-channel value: one masked fill per channel
                out[:, ch : ch + 1].masked_fill_(mask, fill[ch])
        return out
    full = mask.expand(b, c, h, w)
    n = int(full.sum())  # the noise modes' one host sync: how many values to draw
    if mode == "rand":
        noise = _random.rand((n,), generator=generator, device=dev)
        noise = (noise * 256).floor_().clamp_(0, 255) if x.dtype == torch.uint8 else noise
    else:
        noise = _random.randn((n,), generator=generator, device=dev)
        noise = (128 + 64 * noise).round_().clamp_(0, 255) if x.dtype == torch.uint8 else noise
    out = _memory.clone(x, memory_format=torch.contiguous_format)
    out.masked_scatter_(full, noise.to(x.dtype))
    return out
