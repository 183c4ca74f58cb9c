"""Shared plumbing for the batched image ops: validation, parameter broadcasting, dtype and layout.

Conventions (see docs/augmentations.md):
- images are (B, C, H, W), uint8 (0..255) or floating in [0, 1];
- intensity parameters (posterize bits, solarize thresholds, solarize_add amounts) are in 8-bit
  levels for every dtype, so one call gives the same picture on uint8 and float images;
- fill values are pixel values in the image's own range (0..255 for uint8, 0..1 for float).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from numbers import Real

import torch

from taxaug import _memory
from taxaug._native import device_strategy
from taxaug.functional._validate import check_images, describe

Param = float | int | torch.Tensor
Fill = float | int | Sequence[float] | torch.Tensor | None


def check_image_batch(images: object, name: str = "images", *, clamp: bool = False) -> torch.Tensor:
    """A (B, C, H, W) uint8 or floating batch; floating values must lie in [0, 1].

    With ``clamp=True`` floating values outside [0, 1] are clipped (on a copy) instead of raising.
    The range check is one reduction over the batch (a host sync on CUDA).
    """
    x = check_images(images, name)
    if x.is_floating_point() and x.numel():
        if clamp:
            return x.clamp(0.0, 1.0)
        lo, hi = torch.aminmax(x)
        lo_v, hi_v = float(lo), float(hi)
        if not (lo_v >= 0.0 and hi_v <= 1.0):
            raise ValueError(
                f"{name} are floating with values in [{lo_v:.4g}, {hi_v:.4g}], outside [0, 1]. Float images "
                "must be scaled to [0, 1] (divide uint8 by 255 before normalising), or pass clamp=True to clip "
                "them to [0, 1]."
            )
    return x


def as_param(value: Param, batch: int, device: torch.device, name: str) -> torch.Tensor:
    """A per-sample parameter as a float64 (B,) tensor on `device` (a python number broadcasts)."""
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must be a real number or a real (B,) tensor, got {describe(value)}")
        if value.ndim == 0:
            value = value.reshape(1).expand(batch)
        if value.ndim != 1 or value.shape[0] != batch:
            raise ValueError(f"{name} must be a number or a tensor of shape ({batch},), got {describe(value)}")
        return value.to(device=device, dtype=torch.float64)
    if not isinstance(value, Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number or a (B,) tensor, got {describe(value)}")
    return torch.full((batch,), float(value), device=device, dtype=torch.float64)


def fill_tensor(fill: Fill, channels: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Fill value as a (C,) tensor of the image dtype; None means 0 (black)."""
    if fill is None:
        return torch.zeros(channels, dtype=dtype, device=device)
    values = torch.as_tensor(fill, dtype=torch.float64).flatten()
    if values.numel() == 1:
        values = values.expand(channels)
    if values.numel() != channels:
        raise ValueError(f"fill must be a number or have one value per channel ({channels}), got {fill!r}")
    top = 255.0 if dtype == torch.uint8 else 1.0
    if bool(((values < 0) | (values > top)).any()):
        raise ValueError(f"fill values must lie in [0, {top:g}] for {dtype} images, got {fill!r}")
    if dtype == torch.uint8:
        values = values.round()
    return values.to(device=device, dtype=dtype)


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last when x is laid out that way (and not trivially also contiguous)."""
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Ops compute on uint8, float32 or float64; half types are upcast to float32."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return x.dtype


BLOCK_ELEMENTS = 2**19
"""On CPU, ops run over blocks of samples of about this many elements so that the few float
temporaries of an op stay in cache (one pass over DRAM instead of one per temporary)."""


def sample_blocks(x: torch.Tensor) -> list[slice]:
    """Slices of the batch dimension: one block under the accelerator strategy, cache-sized blocks on CPU."""
    b = x.shape[0]
    if b == 0 or device_strategy(x.device) == "accelerator":
        return [slice(0, b)]
    per = max(1, BLOCK_ELEMENTS // max(1, x[0].numel()))
    return [slice(s, min(b, s + per)) for s in range(0, b, per)]


def row_view(t: torch.Tensor) -> torch.Tensor:
    """(B, ...) contiguous -> (B, N) view in the widest integer type that divides a sample's bytes:
    row copies (`index_select`, `index_copy_`) then move 8 bytes per element instead of 1."""
    flat = t.reshape(t.shape[0], math.prod(t.shape[1:]))
    nbytes = flat.shape[1] * flat.element_size()
    for wide, size in ((torch.int64, 8), (torch.int32, 4), (torch.int16, 2)):
        if nbytes % size == 0 and size >= flat.element_size():
            return flat.view(wide)
    return flat


_ROW_LOOP_BYTES = 2**16


def update_rows_(out: torch.Tensor, idx: torch.Tensor, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 rows: torch.Tensor | None = None, source_rows: torch.Tensor | None = None) -> None:
    """Set samples ``out[idx]`` to ``fn(source[idx_block], idx_block)``, in cache-sized blocks of samples.

    `out` must be contiguous (`rows` may pass its `row_view`); `source_rows` is the `row_view` of an
    input laid out like `out` (default: `out` itself, for an update in place). Samples are gathered
    and written back as whole rows (memcpy); ``index_put_`` would scatter element by element on CPU.
    `fn` gets the block in a buffer reused for the next block: it may overwrite it, and must not
    return a view of it that outlives the call.
    """
    rows = row_view(out) if rows is None else rows
    source_rows = rows if source_rows is None else source_rows
    per_block = sample_blocks(out)[0].stop or 1
    # one gather buffer for all blocks: a fresh block-sized tensor each time would be memory that
    # malloc has just handed back to the OS, faulted in again page by page
    buffer = torch.empty((min(per_block, idx.shape[0]), rows.shape[1]), dtype=rows.dtype, device=rows.device)
    for first in range(0, idx.shape[0], per_block):
        i = idx[first : first + per_block]
        gathered = torch.index_select(source_rows, 0, i, out=buffer[: i.shape[0]])
        sub = gathered.view(out.dtype).view(i.shape[0], *out.shape[1:])
        res = row_view(fn(sub, i).to(out.dtype).contiguous())
        if rows.device.type == "cpu" and rows.shape[1] * rows.element_size() >= _ROW_LOOP_BYTES:
            for k, row in enumerate(i.tolist()):  # large rows: plain copies are ~3x faster than index_copy_
                rows[row].copy_(res[k])
        else:
            rows.index_copy_(0, i, res)


def run_op(
    images: torch.Tensor,
    kernel: Callable[..., torch.Tensor],
    per_sample: tuple[torch.Tensor, ...] = (),
    extra: tuple[object, ...] = (),
    *,
    clamp: bool = False,
    validate: bool = True,
) -> torch.Tensor:
    """Validate, upcast half floats, run ``kernel(x_block, *per_sample_block, *extra)`` over sample
    blocks, cast back and restore the memory format. `per_sample` tensors are sliced along dim 0."""
    x = check_image_batch(images, clamp=clamp) if validate else images
    fmt = memory_format(x)
    work = x.to(compute_dtype(x))
    blocks = sample_blocks(work)
    if len(blocks) == 1:
        out = kernel(work, *per_sample, *extra)
    else:
        out = _memory.empty_like(work, memory_format=fmt)
        for blk in blocks:
            out[blk] = kernel(work[blk], *(p[blk] for p in per_sample), *extra)
    if out.dtype != x.dtype:
        out = out.to(x.dtype)
    return out.contiguous(memory_format=fmt)


def apply_lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Per (sample, channel) lookup: x uint8 (B, C, H, W), lut uint8 (B, C, 256)."""
    b, c, h, w = x.shape
    idx = x.reshape(b * c, h * w).long()
    return lut.reshape(b * c, 256).gather(1, idx).reshape(b, c, h, w)


def quantize_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] -> uint8 levels by rounding (used by the histogram ops on float images)."""
    return (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def view4(p: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) for broadcasting against images."""
    p = p.reshape(-1, 1, 1, 1)
    return p.to(dtype) if dtype is not None else p
