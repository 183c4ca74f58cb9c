"""Selective (group-aware) Mixup and CutMix, and their group-agnostic forms.

Conventions (DESIGN.md): ``lam`` is the weight of the original sample,
``out[i] = lam * x[i] + (1 - lam) * x[perm[i]]``, with the same weight on
every task's target; for CutMix the returned lam is the exact fraction of
sample i's own pixels kept. Inputs are never mutated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from taxaug import _memory, _native
from taxaug.functional._validate import (
    check_group_ids,
    check_images,
    check_lam,
    check_tensor,
    describe,
)
from taxaug.functional.aux import mix_aux_chunkwise
from taxaug.functional.batch import MixBatch, MixResult
from taxaug.functional.boxes import box_area, box_masks, sample_boxes
from taxaug.functional.groups import ingroup_permutation
from taxaug.functional.random import sample_beta
from taxaug.functional.targets import mix_targets, to_dense_targets

__all__ = [
    "MixBatch",
    "MixResult",
    "cutmix_batch",
    "mixup_batch",
    "selective_cutmix",
    "selective_mixup",
]

# On CPU the image work runs over blocks of samples whose gathered partners fit
# in cache, with one reused buffer: a full-size gathered copy would cost a
# second large allocation, which on these machines costs more than the copy.
_BLOCK_BYTES = 2 * 2**20


def _block_size(x: torch.Tensor, compute_dtype: torch.dtype) -> int:
    itemsize = torch.empty((), dtype=compute_dtype).element_size()
    per_sample = max(1, x[0].numel() * max(itemsize, x.element_size()))
    return max(1, _BLOCK_BYTES // per_sample)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Blend in the image dtype when it is float32/64, else in float32 (exact rounding for uint8)."""
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _check_out(out: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    if out is None:
        return _memory.empty_like(x)
    check_tensor(out, "out")
    if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"out must match images ({describe(x)}), got {describe(out)}")
    if out.data_ptr() == x.data_ptr():
        raise ValueError("out must not be the images tensor itself: inputs are never mutated")
    return out


def _check_perm(perm: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    check_tensor(perm, "perm")
    if perm.dtype != torch.long or perm.ndim != 1 or perm.shape[0] != size:
        raise ValueError(f"perm must be a long tensor of shape ({size},), got {describe(perm)}")
    if perm.device.type == "cpu" and size and (int(perm.min()) < 0 or int(perm.max()) >= size):
        raise ValueError(f"perm holds indices outside [0, {size})")
    return perm.to(device)


# Adding 2**23 to a float32 in [0, 256) rounds it to an integer (ties to even) held in the
# low mantissa bits; read back as int32, its low byte is that integer, and the int32 -> uint8
# cast keeps exactly the low byte. This is 3-4x faster than a float -> uint8 conversion on CPU.
_ROUNDING_OFFSET = float(2**23)


def _blend_images(x: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[i] = lam[i] * x[i] + (1 - lam[i]) * x[perm[i]], rounded to nearest (ties to even) for uint8."""
    compute = _compute_dtype(x)
    weight = lam.view(-1, 1, 1, 1).to(compute)
    if _native.device_strategy(x.device) != "cpu":
        mixed = torch.lerp(x.index_select(0, perm).to(compute), x.to(compute), weight)
        out.copy_(mixed if x.is_floating_point() else mixed.round_())
        return out
    if x.dtype in _native.MIX_DTYPES and _native.available() and _native.sample_blocks_match(x, out):
        return _native.mix(x, perm, weight.view(-1), out)
    block = _block_size(x, compute)
    partner_buffer = torch.empty_like(x[:block])
    if x.dtype == compute:
        for start in range(0, x.shape[0], block):
            stop = min(start + block, x.shape[0])
            partner = partner_buffer[: stop - start]
            torch.index_select(x, 0, perm[start:stop], out=partner)
            torch.lerp(partner, x[start:stop], weight[start:stop], out=out[start:stop])
        return out
    # uint8 and half images blend in reused float32 buffers (a fresh allocation per block
    # would fault its pages in every time).
    own_buffer = torch.empty_like(x[:block], dtype=compute)
    mixed_buffer = torch.empty_like(x[:block], dtype=compute)
    for start in range(0, x.shape[0], block):
        stop = min(start + block, x.shape[0])
        n = stop - start
        partner, own, mixed = partner_buffer[:n], own_buffer[:n], mixed_buffer[:n]
        torch.index_select(x, 0, perm[start:stop], out=partner)
        own.copy_(x[start:stop])
        mixed.copy_(partner)
        torch.lerp(mixed, own, weight[start:stop], out=mixed)
        if x.is_floating_point():
            out[start:stop].copy_(mixed)
        else:
            mixed.add_(_ROUNDING_OFFSET)
            out[start:stop].copy_(mixed.view(torch.int32))
    return out


def _box_rows_cols(boxes: torch.Tensor, height: int, width: int, dtype: torch.dtype):
    """0/1 row (n, 1, H, 1) and column (n, 1, 1, W) indicators of each box, in `dtype`."""
    rows = torch.arange(height, device=boxes.device)
    cols = torch.arange(width, device=boxes.device)
    in_rows = (rows[None] >= boxes[:, 0:1]) & (rows[None] < boxes[:, 2:3])
    in_cols = (cols[None] >= boxes[:, 1:2]) & (cols[None] < boxes[:, 3:4])
    return in_rows.to(dtype)[:, None, :, None], in_cols.to(dtype)[:, None, None, :]


def _paste_boxes(x: torch.Tensor, perm: torch.Tensor, boxes: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[i] = x[i] with box i filled from x[perm[i]].

    On CPU the select is arithmetic, which is several times faster there than
    ``torch.where`` with a full boolean mask: floats use ``lerp`` with a 0/1
    weight (exact at 0 and 1); uint8 adds ``(partner - own) * inside``, whose
    wrap-around arithmetic is exact as well.
    """
    height, width = x.shape[-2:]
    if _native.device_strategy(x.device) != "cpu":
        torch.where(box_masks(boxes, height, width), x.index_select(0, perm), x, out=out)
        return out
    if _native.available() and _native.sample_blocks_match(x, out):
        return _native.paste_boxes(x, perm, boxes, out)
    block = _block_size(x, x.dtype)
    buffer = torch.empty_like(x[:block])
    integer = not x.is_floating_point()
    for start in range(0, x.shape[0], block):
        stop = min(start + block, x.shape[0])
        partner, own, dst = buffer[: stop - start], x[start:stop], out[start:stop]
        torch.index_select(x, 0, perm[start:stop], out=partner)
        rows, cols = _box_rows_cols(boxes[start:stop], height, width, x.dtype)
        if integer:
            partner.sub_(own).mul_(rows * cols)
            torch.add(own, partner, out=dst)
        else:
            torch.lerp(own, partner, rows * cols, out=dst)
    return out


def _paste_one_box(x: torch.Tensor, perm: torch.Tensor, box: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """One box for the whole batch on CPU: copy, then gather only the box region from the partners."""
    y1, x1, y2, x2 = (int(v) for v in box.tolist())
    out.copy_(x)
    if y2 > y1 and x2 > x1:
        out[:, :, y1:y2, x1:x2] = x[:, :, y1:y2, x1:x2].index_select(0, perm)
    return out


def _prepare(
    batch: MixBatch, group_ids: torch.Tensor, perm: torch.Tensor | None, generator: torch.Generator | None
) -> torch.Tensor:
    if not isinstance(batch, MixBatch):
        raise TypeError(f"batch must be a taxaug.MixBatch, got {describe(batch)}")
    check_group_ids(group_ids, batch.batch_size)
    if perm is None:
        return ingroup_permutation(group_ids, generator=generator).to(batch.device)
    return _check_perm(perm, batch.batch_size, batch.device)


def _mixed_batch(
    batch: MixBatch,
    images: torch.Tensor,
    perm: torch.Tensor,
    lam: torch.Tensor,
    aux_chunks: Sequence[tuple[int, int]] | None,
    num_classes: Mapping[str, int] | int | None,
    generator: torch.Generator | None,
) -> MixBatch:
    targets = mix_targets(batch.targets, perm, lam, num_classes)
    aux, aux_mask = batch.aux, batch.aux_mask
    if aux is not None and aux_chunks:
        aux, aux_mask = mix_aux_chunkwise(aux, perm, aux_chunks, aux_mask=aux_mask, lam=lam, generator=generator)
    return MixBatch(images=images, targets=targets, aux=aux, aux_mask=aux_mask, indices=batch.indices)


def selective_mixup(
    batch: MixBatch,
    group_ids: torch.Tensor,
    lam: float | torch.Tensor,
    *,
    perm: torch.Tensor | None = None,
    aux_chunks: Sequence[tuple[int, int]] | None = None,
    num_classes: Mapping[str, int] | int | None = None,
    generator: torch.Generator | None = None,
    out: torch.Tensor | None = None,
) -> MixResult:
    """Mixup of each sample with a partner from its own group.

    ``lam`` is one float for the batch or a (B,) tensor, in [0, 1]. ``perm``
    defaults to :func:`ingroup_permutation` of ``group_ids``; samples with
    ``perm[i] == i`` come back unchanged with lam 1. Targets come back dense
    (``num_classes`` is needed for index targets); metadata chunks
    (``aux_chunks``) are hard-picked, never interpolated. ``out`` is an
    optional preallocated buffer for the images.
    """
    perm = _prepare(batch, group_ids, perm, generator)
    images = batch.images
    size = batch.batch_size
    arange = torch.arange(size, device=images.device)
    lam_eff = torch.where(perm == arange, torch.ones((), device=images.device),
                          check_lam(lam, size, images.device))
    mixed_images = _blend_images(images, perm, lam_eff, _check_out(out, images))
    mixed = _mixed_batch(batch, mixed_images, perm, lam_eff, aux_chunks, num_classes, generator)
    return MixResult(batch=mixed, perm=perm, lam=lam_eff)


def _check_minmax(minmax: tuple[float, float] | None) -> tuple[float, float] | None:
    if minmax is None:
        return None
    try:
        low, high = (float(v) for v in minmax)
    except (TypeError, ValueError):
        raise ValueError(f"minmax must be a (low, high) pair of fractions, got {minmax!r}") from None
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"minmax must satisfy 0 <= low <= high <= 1 (box side fractions), got {minmax!r}")
    return low, high


def selective_cutmix(
    batch: MixBatch,
    group_ids: torch.Tensor,
    lam: float | torch.Tensor,
    *,
    perm: torch.Tensor | None = None,
    per_sample_boxes: bool = True,
    minmax: tuple[float, float] | None = None,
    aux_chunks: Sequence[tuple[int, int]] | None = None,
    num_classes: Mapping[str, int] | int | None = None,
    generator: torch.Generator | None = None,
    out: torch.Tensor | None = None,
) -> MixResult:
    """CutMix of each sample with a partner from its own group.

    A box of about ``1 - lam`` of the image is pasted from ``perm[i]`` into i:
    one box per sample (default, vectorised with masks) or one box for the
    whole batch (then ``lam`` must be a float). ``minmax`` bounds the box
    sides as fractions of the image sides. The returned ``lam`` is the exact
    fraction of i's own pixels kept (1 where unmixed, whose box is empty), and
    targets are mixed with it.
    """
    perm = _prepare(batch, group_ids, perm, generator)
    images = batch.images
    size = batch.batch_size
    height, width = images.shape[-2:]
    minmax = _check_minmax(minmax)
    if not per_sample_boxes and isinstance(lam, torch.Tensor) and lam.numel() != 1:
        raise ValueError(f"per_sample_boxes=False draws one box for the batch, so lam must be one float, got "
                         f"{describe(lam)}")
    requested = check_lam(lam, size, images.device)
    if per_sample_boxes:
        boxes = sample_boxes(requested, height, width, minmax=minmax, generator=generator)
    else:
        batch_box = sample_boxes(requested[:1], height, width, minmax=minmax, generator=generator)
        boxes = batch_box.expand(size, 4)
    mixed_rows = (perm != torch.arange(size, device=images.device)).unsqueeze(1)
    boxes = boxes * mixed_rows
    lam_eff = (1.0 - box_area(boxes).to(torch.float64) / (height * width)).to(torch.float32)
    target = _check_out(out, images)
    torch_one_box = not per_sample_boxes and _native.device_strategy(images.device) == "cpu" and not (
        _native.available() and _native.sample_blocks_match(images, target))
    if torch_one_box:  # unmixed samples paste from themselves, a no-op, so the one box serves every row
        mixed_images = _paste_one_box(images, perm, batch_box[0], target)
    else:
        mixed_images = _paste_boxes(images, perm, boxes, target)
    mixed = _mixed_batch(batch, mixed_images, perm, lam_eff, aux_chunks, num_classes, generator)
    return MixResult(batch=mixed, perm=perm, lam=lam_eff, boxes=boxes)


def _as_targets(y: torch.Tensor | Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    if isinstance(y, torch.Tensor):
        return {"y": y}, True
    if isinstance(y, Mapping):
        return dict(y), False
    raise TypeError(f"y must be a tensor or a dict of tensors, got {describe(y)}")


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number >= 0, got {describe(alpha)}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0 (0 means no mixing), got {alpha}")
    return float(alpha)


def _task_classes(num_classes: int | Mapping[str, int] | None, single: bool) -> int | Mapping[str, int] | None:
    return {"y": num_classes} if single and isinstance(num_classes, int) else num_classes


def _unmixed(x: torch.Tensor, targets: dict[str, torch.Tensor], num_classes, single: bool):
    size = x.shape[0]
    dense = to_dense_targets(targets, _task_classes(num_classes, single))
    return (x.clone(), dense["y"] if single else dense, torch.ones(size, device=x.device),
            torch.arange(size, device=x.device))


def mixup_batch(
    x: torch.Tensor,
    y: torch.Tensor | Mapping[str, torch.Tensor],
    *,
    alpha: float = 0.2,
    num_classes: int | Mapping[str, int] | None = None,
    generator: torch.Generator | None = None,
):
    """Group-agnostic Mixup for any training loop: ``(x_mixed, y_dense, lam, perm)``.

    One ``lam ~ Beta(alpha, alpha)`` per batch, returned per sample (B,), as
    the weight of the original; partners form a derangement (nobody mixes with
    itself). ``y`` is indices or dense, a tensor or a dict of tasks.
    ``alpha=0`` means no mixing.
    """
    check_images(x, "x")
    targets, single = _as_targets(y)
    alpha = _check_alpha(alpha)
    if alpha == 0:
        return _unmixed(x, targets, num_classes, single)
    lam = float(sample_beta(alpha, shape=(1,), generator=generator)[0])
    groups = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    classes = _task_classes(num_classes, single)
    result = selective_mixup(MixBatch(x, targets), groups, lam, num_classes=classes, generator=generator)
    mixed = result.batch.targets
    return result.batch.images, mixed["y"] if single else mixed, result.lam, result.perm


def cutmix_batch(
    x: torch.Tensor,
    y: torch.Tensor | Mapping[str, torch.Tensor],
    *,
    alpha: float = 1.0,
    num_classes: int | Mapping[str, int] | None = None,
    per_sample_boxes: bool = True,
    generator: torch.Generator | None = None,
):
    """Group-agnostic CutMix for any training loop: ``(x_mixed, y_dense, lam, boxes, perm)``.

    ``lam ~ Beta(alpha, alpha)`` per sample (one per batch with
    ``per_sample_boxes=False``); the returned (B,) lam is the exact kept
    fraction and boxes are ``y1, x1, y2, x2`` (half-open). ``alpha=0`` means
    no mixing.
    """
    check_images(x, "x")
    targets, single = _as_targets(y)
    alpha = _check_alpha(alpha)
    size = x.shape[0]
    if alpha == 0:
        images, dense, lam, perm = _unmixed(x, targets, num_classes, single)
        return images, dense, lam, torch.zeros(size, 4, dtype=torch.long, device=x.device), perm
    draws = size if per_sample_boxes else 1
    lam = sample_beta(alpha, shape=(draws,), generator=generator).to(x.device)
    groups = torch.zeros(size, dtype=torch.long, device=x.device)
    classes = _task_classes(num_classes, single)
    result = selective_cutmix(
        MixBatch(x, targets), groups, lam if per_sample_boxes else float(lam[0]),
        per_sample_boxes=per_sample_boxes, num_classes=classes, generator=generator,
    )
    mixed = result.batch.targets
    return result.batch.images, mixed["y"] if single else mixed, result.lam, result.boxes, result.perm

