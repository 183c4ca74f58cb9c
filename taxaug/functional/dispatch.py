"""The dispatcher: run a different op with a different parameter on every sample of a batch.

One entry point (`_dispatch`) serves the policies, `color_jitter` and learned augmentation, with two
strategies (`device_strategy`; ``TAXAUG_DEVICE_STRATEGY`` forces one):

- ``cpu``: grouped. The samples that drew the same op are found with one host sync per call (the group
  sizes); each op runs once over its group, through its C kernel where there is one (in place, no
  gather) or in cache-sized blocks of samples otherwise (gather the block's rows, run the op, copy the
  rows into the output, so every row crosses memory once each way); each geometric op is its own warp.
- ``accelerator``: masked, no host sync. Each op family runs once over the whole batch: one warp for
  every geometric choice (per-sample affine data), one blend for every enhance choice (per-sample
  degenerate image), one pass per other op; ``torch.where`` keeps each sample's own result.

Both give the same bytes for the same draws: every op computes each sample on its own.
Ops and their kernels come from the op registry (`taxaug.functional.registry`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from taxaug import _memory, _native
from taxaug.functional import _diff_ops
from taxaug.functional import geometry as _geometry
from taxaug.functional import photometric as _color
from taxaug.functional._image_common import (
    Fill,
    as_param,
    check_image_batch,
    compute_dtype,
    device_strategy,
    fill_tensor,
    memory_format,
    row_view,
    update_rows_,
)
from taxaug.functional._validate import describe
from taxaug.functional.registry import OP_NAMES, OPS

__all__ = ["apply_ops_per_sample"]

Run = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _dispatch(
    x: torch.Tensor,
    op_indices: torch.Tensor,
    params: torch.Tensor,
    names: Sequence[str],
    fill: Fill,
    interpolation: str,
    *,
    inplace: bool = False,
    learned: bool = False,
    strategy: str | None = None,
) -> torch.Tensor:
    """Run op `names[op_indices[i]]` with `params[i]` on sample i.

    Policy ops (`learned=False`) take uint8 or float x and float64 (B,) params; learned ops take float x
    and (B, 2) params (magnitude, posterize dither) and run their differentiable forwards (bilinear
    warps with a zero fill; `fill` and `interpolation` are unused). ``inplace=True`` lets the grouped
    strategy write into `x` (a buffer the caller owns, e.g. its previous round's result). `strategy`
    ("cpu" or "accelerator") overrides `device_strategy`.
    """
    strategy = strategy or device_strategy(x.device)
    if x.shape[0] == 0:
        return x
    if strategy == "accelerator":
        return _masked(x, op_indices, params, names, fill, interpolation, learned)
    return _grouped(x, op_indices, params, names, fill, interpolation, inplace, learned)


def _output(x: torch.Tensor, inplace: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, its row view, the source's row view): `x` itself in place, else a fresh buffer (from the
    buffer cache, see ``taxaug._memory``) that every row is written into once, with no copy of x first."""
    if inplace:
        out = x if x.is_contiguous() else x.contiguous()
        rows = row_view(out)
        return out, rows, rows
    out = _memory.empty_like(x, memory_format=torch.contiguous_format)
    return out, row_view(out), row_view(x if x.is_contiguous() else x.contiguous())


def _grouped(x: torch.Tensor, op_indices: torch.Tensor, params: torch.Tensor, names: Sequence[str], fill: Fill,
             interpolation: str, inplace: bool, learned: bool) -> torch.Tensor:
    """The cpu strategy: each op once over the samples that drew it (see the module docstring)."""
    counts = torch.bincount(op_indices, minlength=len(names)).tolist()  # the one host sync of the call
    identity = names.index("identity") if "identity" in names else -1
    if identity >= 0 and counts[identity] == x.shape[0]:
        return x
    out, out_rows, source_rows = _output(x, inplace)
    source = source_rows.view(out.dtype).view(out.shape)
    order = torch.argsort(op_indices, stable=True)
    warps = any(c and OPS[n].family == "geometric" for n, c in zip(names, counts))
    fill_t = fill_tensor(fill, x.shape[1], x.dtype, x.device) if warps and not learned else None
    padded = None  # the torch nearest warp's padded buffer, made once and reused over groups and blocks
    if fill_t is not None and interpolation == "nearest" and not _native.warp_applies(source, out):
        padded = _geometry.warp_workspace(x, fill_t)
    start = 0
    for k, count in enumerate(counts):
        idx = order[start : start + count]
        start += count
        if count == 0 or (k == identity and inplace):
            continue
        if learned:
            run = _learned_run(names[k], params)
        elif _native_group(names[k], source, idx, params, out, fill_t, interpolation):
            continue
        else:
            run = _policy_run(names[k], params, fill, fill_t, interpolation, padded, x.shape)
        update_rows_(out, idx, run, out_rows, source_rows)
    return out


def _native_group(name: str, source: torch.Tensor, idx: torch.Tensor, params: torch.Tensor, out: torch.Tensor,
                  fill_t: torch.Tensor | None, interpolation: str) -> bool:
    """Run one group through its C kernel, straight from `source` into `out`; False where none applies."""
    op = OPS[name]
    if op.c_id is not None:
        values = params.index_select(0, idx)
        if _native.pointwise_applies(name, source, out, values):
            _native.pointwise(name, source, idx, values, out)
            return True
    elif op.family == "geometric" and interpolation == "nearest" and _native.warp_applies(source, out):
        data = op.affine(params.index_select(0, idx), source.shape[2], source.shape[3])
        _native.warp_nearest(source, idx, data, fill_t, out)
        return True
    return False


def _policy_warp(x: torch.Tensor, data: torch.Tensor, fill: Fill, fill_t: torch.Tensor, interpolation: str,
                 padded: torch.Tensor | None = None) -> torch.Tensor:
    if interpolation == "nearest":
        return _geometry._warp_nearest(x, data, fill_t, padded=padded)
    return _geometry._warp_bilinear(x, data, fill_t, _geometry.is_zero_fill(fill))


def _policy_run(name: str, params: torch.Tensor, fill: Fill, fill_t: torch.Tensor | None, interpolation: str,
                padded: torch.Tensor | None, shape: torch.Size) -> Run:
    """A block runner for `update_rows_`: (gathered samples, their indices) -> the op's result. The
    gathered block is the dispatcher's own copy, so float kernels may overwrite it (`kernel_`)."""
    op = OPS[name]
    if op.family == "geometric":
        def run(sub: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            data = op.affine(params.index_select(0, idx), shape[2], shape[3])
            return _policy_warp(sub, data, fill, fill_t, interpolation, padded)
        return run
    kernel = op.kernel_ or op.kernel
    return lambda sub, idx: kernel(sub, params.index_select(0, idx))


def _learned_run(name: str, params: torch.Tensor) -> Run:
    forward = OPS[name].diff

    def run(sub: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        p = params.index_select(0, idx)
        return forward(sub, p[:, 0], p[:, 1])

    return run


def _family(names: Sequence[str], family: str) -> list[int]:
    return [k for k, n in enumerate(names) if OPS[n].family == family]


def _masked(x: torch.Tensor, op_indices: torch.Tensor, params: torch.Tensor, names: Sequence[str], fill: Fill,
            interpolation: str, learned: bool) -> torch.Tensor:
    """The accelerator strategy: one pass per op family over the whole batch, kept by masks."""
    magnitude = params[:, 0] if learned else params
    out = x
    geometric = _family(names, "geometric")
    if geometric:
        data = torch.tensor([1.0, 0, 0, 0, 1.0, 0], dtype=torch.float64, device=x.device).expand(x.shape[0], 6)
        for k in geometric:
            affine = _diff_ops.AFFINE[names[k]] if learned else OPS[names[k]].affine
            data = torch.where((op_indices == k).unsqueeze(1), affine(magnitude, x.shape[2], x.shape[3]), data)
        if learned:
            warped = _diff_ops.warp(x, data)
        else:
            warped = _policy_warp(x, data, fill, fill_tensor(fill, x.shape[1], x.dtype, x.device), interpolation)
        out = torch.where(_chose(op_indices, geometric), warped, out)
    enhance = _family(names, "enhance")
    if enhance:
        blend_dtype = torch.float32 if x.dtype == torch.uint8 else x.dtype
        degenerate = torch.zeros(x.shape, dtype=blend_dtype, device=x.device)
        for k in enhance:
            own = OPS[names[k]].degenerate(x).to(blend_dtype).expand_as(x)
            degenerate = torch.where(_chose(op_indices, [k]), own, degenerate)
        out = torch.where(_chose(op_indices, enhance), _color._blend(degenerate, x, magnitude), out)
    for k, name in enumerate(names):
        if OPS[name].family in ("geometric", "enhance", "identity"):
            continue
        result = OPS[name].diff(x, magnitude, params[:, 1]) if learned else OPS[name].kernel(x, params)
        out = torch.where(_chose(op_indices, [k]), result, out)
    return out


def _chose(op_indices: torch.Tensor, ks: list[int]) -> torch.Tensor:
    """(B, 1, 1, 1) mask of the samples whose op is one of `ks`."""
    mask = op_indices == ks[0]
    for k in ks[1:]:
        mask = mask | (op_indices == k)
    return mask.view(-1, 1, 1, 1)


def _finish(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if out is like:
        out = _memory.clone(out)
    return out.to(like.dtype).contiguous(memory_format=memory_format(like))


def _prepare(images: object, clamp: bool, fill: Fill, interpolation: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = check_image_batch(images, clamp=clamp)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"policies need grey (C=1) or RGB (C=3) images, got {x.shape[1]} channels "
                         f"({describe(x)}); drop alpha or extra bands first")
    if interpolation not in _geometry.INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_geometry.INTERPOLATIONS}, got {interpolation!r}")
    fill_tensor(fill, x.shape[1], x.dtype, x.device)  # validates fill early
    return x, x.to(compute_dtype(x))


def apply_ops_per_sample(
    images: torch.Tensor,
    op_indices: torch.Tensor,
    magnitudes: torch.Tensor | float,
    op_names: Sequence[str],
    *,
    fill: Fill = None,
    interpolation: str = "nearest",
    clamp: bool = False,
) -> torch.Tensor:
    """Apply op ``op_names[op_indices[i]]`` with parameter ``magnitudes[i]`` to sample i, by the dispatcher.

    `magnitudes` are the ops' own parameters (degrees, shear factor, pixels, enhance factor, bits,
    threshold levels, hue turns; ignored by parameter-free ops). Valid names: ``OP_NAMES``.
    """
    x, work = _prepare(images, clamp, fill, interpolation)
    unknown = [n for n in op_names if n not in OP_NAMES]
    if unknown:
        raise ValueError(f"unknown op names {unknown}; valid names are {list(OP_NAMES)}")
    if not isinstance(op_indices, torch.Tensor) or op_indices.shape != (x.shape[0],) or op_indices.is_floating_point():
        raise ValueError(f"op_indices must be an integer tensor of shape ({x.shape[0]},), got {describe(op_indices)}")
    op_indices = op_indices.to(device=x.device, dtype=torch.long)
    if op_indices.numel() and (int(op_indices.min()) < 0 or int(op_indices.max()) >= len(op_names)):
        raise ValueError(f"op_indices must lie in [0, {len(op_names)}), got values outside")
    params = as_param(magnitudes, x.shape[0], x.device, "magnitudes")
    names = list(op_names)
    if "identity" not in names:
        names = [*names, "identity"]
    return _finish(_dispatch(work, op_indices, params, names, fill, interpolation), x)
