"""Grouped dispatch: run a different op with a different parameter on every sample of a batch.

The samples that drew the same op are gathered (index_select), the op runs once over them and the
results are scattered back (index_put_); all geometric ops of one call share one affine warp. One
host sync per call reads the group sizes; there is no Python loop over samples. On CPU each group
is processed in cache-sized blocks of samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from taxaug import _memory, _native
from taxaug.functional import geometry as _geometry
from taxaug.functional import photometric as _color
from taxaug.functional._image_common import (
    Fill,
    as_param,
    check_image_batch,
    compute_dtype,
    fill_tensor,
    memory_format,
    row_view,
    update_rows_,
)
from taxaug.functional._validate import describe
from taxaug.functional.op_tables import OP_NAMES

__all__ = ["apply_ops_per_sample"]


def _hflip_kernel(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


_KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "brightness": _color._k_brightness,
    "color": _color._k_color,
    "contrast": _color._k_contrast,
    "sharpness": _color._k_sharpness,
    "posterize": _color._k_posterize,
    "solarize": _color._k_solarize,
    "solarize_add": _color._k_solarize_add,
    "autocontrast": _color._k_autocontrast,
    "equalize": _color._k_equalize,
    "invert": _color._k_invert,
    "hflip": _hflip_kernel,
}
# the dispatcher's gathered blocks are its own copies, so float kernels may overwrite them
_KERNELS.update({name: _color._float_in_place(_KERNELS[name], kernel_)
                 for name, kernel_ in _color.IN_PLACE_KERNELS.items()})
_GEOMETRIC = {k: v for k, v in _geometry.GEOMETRIC_DATA.items() if k != "hflip"}
assert set(OP_NAMES) == {"identity", *_KERNELS, *_GEOMETRIC}, "op_tables.OP_NAMES out of sync with the kernels"


def _dispatch(
    x: torch.Tensor,
    op_indices: torch.Tensor,
    params: torch.Tensor,
    names: Sequence[str],
    fill: Fill,
    interpolation: str,
    *,
    inplace: bool = False,
) -> torch.Tensor:
    """Run op `names[op_indices[i]]` with `params[i]` on sample i, each op once over its group.

    Writes into one output buffer: a fresh one (huge pages, see ``taxaug._memory``), or `x` itself
    with ``inplace=True`` (for buffers the policy owns, e.g. the result of its previous round).
    Each group is processed in cache-sized blocks of samples: gather the block's rows from `x`, run
    the op, copy the rows into the output, so every row crosses memory once each way.
    """
    n_ops = len(names)
    if x.device.type == "cpu":
        # one warp per geometric op: groups are processed block by block anyway, and a group of
        # translations (or shears) gets the cheaper separable index of _warp_nearest
        group = op_indices
    else:  # all geometric samples share one warp (fewer kernel launches)
        geo = torch.tensor([n in _GEOMETRIC for n in names], device=x.device)
        group = torch.where(geo[op_indices], n_ops, op_indices)
    counts = torch.bincount(group, minlength=n_ops + 1).tolist()  # the one host sync of the round
    identity = names.index("identity") if "identity" in names else -1
    if identity >= 0 and counts[identity] == x.shape[0]:
        return x
    if inplace:
        out = x if x.is_contiguous() else x.contiguous()
        source_rows = out_rows = row_view(out)
    else:  # every row is written once from the source: no full copy of the batch first
        out = _memory.empty_like(x, memory_format=torch.contiguous_format)
        out_rows = row_view(out)
        source_rows = row_view(x if x.is_contiguous() else x.contiguous())
    source = source_rows.view(out.dtype).view(out.shape)
    order = torch.argsort(group, stable=True)
    warps = counts[n_ops] or any(counts[k] for k, n in enumerate(names) if n in _GEOMETRIC)
    fill_t = fill_tensor(fill, x.shape[1], x.dtype, x.device) if warps else None
    zero_fill = warps and _geometry.is_zero_fill(fill)
    padded = None  # the torch warp's padded buffer, made when first needed and reused over blocks
    start = 0
    for gid, count in enumerate(counts):
        group_idx = order[start : start + count]
        start += count
        if count == 0 or (gid == identity and inplace):
            continue
        if gid < n_ops and _native.pointwise_applies(names[gid], source, out):
            _native.pointwise(names[gid], source, group_idx, params.index_select(0, group_idx), out)
            continue
        geometric = gid == n_ops or names[gid] in _GEOMETRIC
        if geometric and gid < n_ops and interpolation == "nearest" and _native.warp_applies(source, out):
            # one geometric op per group on CPU: its affine data for just the group's rows
            data = _GEOMETRIC[names[gid]](params.index_select(0, group_idx), x.shape[2], x.shape[3])
            _native.warp_nearest(source, group_idx, data, fill_t, out)
            continue
        if gid == identity:
            def run(sub: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
                return sub
        elif gid == n_ops or names[gid] in _GEOMETRIC:
            data = _warp_data(op_indices, params, names, x.shape[2], x.shape[3])

            if interpolation == "nearest" and padded is None and not _native.available():
                padded = _geometry.warp_workspace(x, fill_t)

            def run(sub: torch.Tensor, idx: torch.Tensor, data: torch.Tensor = data,
                    padded: torch.Tensor | None = padded) -> torch.Tensor:
                if interpolation == "nearest":
                    return _geometry._warp_nearest(sub, data.index_select(0, idx), fill_t, padded=padded)
                return _geometry._warp_bilinear(sub, data.index_select(0, idx), fill_t, zero_fill)
        else:
            def run(sub: torch.Tensor, idx: torch.Tensor, kernel=_KERNELS[names[gid]]) -> torch.Tensor:
                return kernel(sub, params.index_select(0, idx))
        update_rows_(out, group_idx, run, out_rows, source_rows)
    return out


def _warp_data(ops: torch.Tensor, p: torch.Tensor, names: Sequence[str], height: int, width: int) -> torch.Tensor:
    """(B, 6) Pillow affine data of each sample's geometric op (identity rows for the others), so that
    the samples that drew different geometric ops share one warp."""
    data = torch.zeros(ops.shape[0], 6, dtype=torch.float64, device=ops.device)
    for k, name in enumerate(names):
        if name in _GEOMETRIC:
            data = torch.where((ops == k).unsqueeze(1), _GEOMETRIC[name](p, height, width), data)
    return data


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
    """Apply op ``op_names[op_indices[i]]`` with parameter ``magnitudes[i]`` to sample i, by grouped dispatch.

    `magnitudes` are the ops' own parameters (degrees, shear factor, pixels, enhance factor, bits,
    threshold levels; ignored by parameter-free ops). Valid names: ``OP_NAMES``.
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
