"""Selective (group-aware) Mixup and CutMix, and their group-agnostic forms.

Conventions (DESIGN.md): ``lam`` is the weight of the original sample,
``out[i] = lam * x[i] + (1 - lam) * x[perm[i]]``, with the same weight on
every task's target; for CutMix the returned lam is the exact fraction of
sample i's own pixels kept. Inputs are never mutated.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from taxaug import _memory, _native
from taxaug.functional._validate import (
    check_generator,
    check_group_ids,
    check_images,
    check_lam,
    check_no_overlap,
    check_probability,
    check_tensor,
    describe,
)
from taxaug.functional.aux import mix_aux_chunkwise
from taxaug.functional.batch import MixBatch, MixResult
from taxaug.functional.boxes import box_area, box_masks, sample_boxes
from taxaug.functional.groups import ingroup_permutation
from taxaug.functional.random import rand, sample_beta
from taxaug.functional.targets import mix_targets, to_dense_targets

__all__ = [
    "MixBatch",
    "MixResult",
    "cutmix_batch",
    "mix",
    "mixup_batch",
    "selective_cutmix",
    "selective_mix",
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
    check_no_overlap(out, x, "out", "images")
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


def _check_perm_groups(perm: torch.Tensor, group_ids: torch.Tensor) -> None:
    """An explicit perm must pair samples of one group and leave group -1 alone (CPU tensors: no host sync)."""
    if perm.device.type != "cpu" or group_ids.device.type != "cpu" or perm.numel() == 0:
        return
    mixed = perm != torch.arange(perm.shape[0])
    bad = mixed & ((group_ids.index_select(0, perm) != group_ids) | (group_ids < 0))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        j = int(perm[i])
        raise ValueError(
            f"perm pairs sample {i} (group {int(group_ids[i])}) with sample {j} (group {int(group_ids[j])}); an "
            f"explicit perm must pair samples of the same group_ids entry and leave group -1 unmixed "
            f"(perm[i] == i); pass perm=None to draw one from group_ids"
        )


def _prepare(
    batch: MixBatch, group_ids: torch.Tensor, perm: torch.Tensor | None, generator: torch.Generator | None,
    min_group_size: int = 2,
) -> torch.Tensor:
    if not isinstance(batch, MixBatch):
        raise TypeError(f"batch must be a taxaug.MixBatch, got {describe(batch)}")
    check_group_ids(group_ids, batch.batch_size)
    check_generator(generator)
    if perm is None:
        return ingroup_permutation(group_ids, min_group_size=min_group_size, generator=generator).to(batch.device)
    perm = _check_perm(perm, batch.batch_size, batch.device)
    _check_perm_groups(perm, group_ids)
    return perm


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
    min_group_size: int = 2,
    aux_chunks: Sequence[tuple[int, int]] | None = None,
    num_classes: Mapping[str, int] | int | None = None,
    generator: torch.Generator | None = None,
    out: torch.Tensor | None = None,
) -> MixResult:
    """Mixup of each sample with a partner from its own group.

    ``lam`` is one float for the batch or a (B,) tensor, in [0, 1]. ``perm``
    defaults to :func:`ingroup_permutation` of ``group_ids`` (groups smaller
    than ``min_group_size`` stay unmixed); an explicit ``perm`` must pair
    samples of the same group (checked for CPU tensors). Samples with
    ``perm[i] == i`` come back unchanged with lam 1. Targets come back dense
    (``num_classes`` is needed for index targets); metadata chunks
    (``aux_chunks``) are hard-picked, never interpolated. ``out`` is an
    optional preallocated buffer for the images, sharing no memory with them.
    """
    perm = _prepare(batch, group_ids, perm, generator, min_group_size)
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
    min_group_size: int = 2,
    aux_chunks: Sequence[tuple[int, int]] | None = None,
    num_classes: Mapping[str, int] | int | None = None,
    generator: torch.Generator | None = None,
    out: torch.Tensor | None = None,
) -> MixResult:
    """CutMix of each sample with a partner from its own group (``perm`` as in :func:`selective_mixup`).

    A box of about ``1 - lam`` of the image is pasted from ``perm[i]`` into i:
    one box per sample (default, vectorised with masks) or one box for the
    whole batch (then ``lam`` must be a float). With ``minmax=(low, high)``
    the box ignores ``lam`` and draws each side uniformly between ``low`` and
    ``high`` times the image side, as timm does. The returned ``lam`` is the exact
    fraction of i's own pixels kept (1 where unmixed, whose box is empty), and
    targets are mixed with it.
    """
    perm = _prepare(batch, group_ids, perm, generator, min_group_size)
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


def _check_alpha(alpha: float, name: str = "alpha") -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"{name} must be a number >= 0, got {describe(alpha)}")
    if not alpha >= 0:
        raise ValueError(f"{name} must be >= 0 (0 means no mixing), got {alpha}")
    return float(alpha)


def _draw_lam(alpha: float, size: int, per_sample: bool, generator: torch.Generator | None,
              device: torch.device) -> float | torch.Tensor:
    """lam ~ Beta(alpha, alpha): one (B,) tensor with `per_sample`, else one float for the batch."""
    if per_sample:
        return sample_beta(alpha, shape=(size,), generator=generator).to(device)
    return float(sample_beta(alpha, shape=(1,), generator=generator)[0])


def _unmixed_result(batch: MixBatch, num_classes: Mapping[str, int] | int | None, cutmix: bool) -> MixResult:
    """The batch back unchanged (targets dense), as a mix with alpha 0 returns it."""
    size, device = batch.batch_size, batch.device
    targets = to_dense_targets(batch.targets, num_classes)
    boxes = torch.zeros(size, 4, dtype=torch.long, device=device) if cutmix else None
    return MixResult(batch=batch.replace(images=batch.images.clone(), targets=targets),
                     perm=torch.arange(size, device=device), lam=torch.ones(size, device=device), boxes=boxes)


def selective_mix(
    batch: MixBatch,
    group_ids: torch.Tensor,
    *,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    switch_prob: float = 0.5,
    per_sample_lam: bool = False,
    per_sample_boxes: bool = True,
    minmax: tuple[float, float] | None = None,
    min_group_size: int = 2,
    perm: torch.Tensor | None = None,
    aux_chunks: Sequence[tuple[int, int]] | None = None,
    num_classes: Mapping[str, int] | int | None = None,
    generator: torch.Generator | None = None,
    out: torch.Tensor | None = None,
) -> MixResult:
    """Selective Mixup or Selective CutMix of the batch, the op drawn per call; lam drawn here.

    Draws from ``generator`` in this order: the op (CutMix with probability
    ``switch_prob``; no draw when it is 0 or 1), the in-group permutation
    (unless ``perm`` is given), ``lam ~ Beta(alpha, alpha)`` of the chosen op
    (one per batch, or one per sample with ``per_sample_lam=True``; CutMix with
    ``per_sample_boxes=False`` always draws one), then the boxes and the
    metadata picks. An alpha of 0 makes that op a no-op (batch back unchanged,
    targets dense). ``result.boxes`` is set exactly when CutMix ran.
    """
    check_generator(generator)
    switch = check_probability(switch_prob, "switch_prob")
    alphas = (_check_alpha(mixup_alpha, "mixup_alpha"), _check_alpha(cutmix_alpha, "cutmix_alpha"))
    if not isinstance(per_sample_lam, bool):
        raise TypeError(f"per_sample_lam must be True or False, got {describe(per_sample_lam)}")
    use_cutmix = switch >= 1.0 or (switch > 0.0 and float(rand((1,), generator=generator)[0]) < switch)
    perm = _prepare(batch, group_ids, perm, generator, min_group_size)
    alpha = alphas[use_cutmix]
    if alpha == 0.0:
        return _unmixed_result(batch, num_classes, use_cutmix)
    per_sample = per_sample_lam and (per_sample_boxes or not use_cutmix)
    lam = _draw_lam(alpha, batch.batch_size, per_sample, generator, batch.device)
    common = dict(perm=perm, aux_chunks=aux_chunks, num_classes=num_classes, generator=generator, out=out)
    if use_cutmix:
        return selective_cutmix(batch, group_ids, lam, per_sample_boxes=per_sample_boxes, minmax=minmax, **common)
    return selective_mixup(batch, group_ids, lam, **common)


def mix(batch: MixBatch, group_ids: torch.Tensor | None = None, **settings: Any) -> MixResult:
    """The group-agnostic twin of :func:`selective_mix`: same keywords, defaults and draws.

    Every sample may pair with any other; only the ``-1`` entries of
    ``group_ids`` (optional) are read, and those samples stay unmixed exactly
    as in :func:`selective_mix`. With every sample in one group the two
    functions return the same result from the same generator state, so an
    A/B comparison changes one word.
    """
    if not isinstance(batch, MixBatch):
        raise TypeError(f"batch must be a taxaug.MixBatch, got {describe(batch)}")
    ids = torch.zeros(batch.batch_size, dtype=torch.long, device=batch.device)
    if group_ids is not None:
        check_group_ids(group_ids, batch.batch_size)
        ids = ids.masked_fill(group_ids.to(batch.device) < 0, -1)
    return selective_mix(batch, ids, **settings)


def _twin_signature() -> inspect.Signature:
    """selective_mix's signature with `group_ids` optional: what `help(mix)` shows."""
    params = list(inspect.signature(selective_mix).parameters.values())
    params[1] = params[1].replace(default=None, annotation="torch.Tensor | None")
    return inspect.signature(selective_mix).replace(parameters=params)


mix.__signature__ = _twin_signature()  # type: ignore[attr-defined]


def _as_targets(y: torch.Tensor | Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    if isinstance(y, torch.Tensor):
        return {"y": y}, True
    if isinstance(y, Mapping):
        return dict(y), False
    raise TypeError(f"y must be a tensor or a dict of tensors, got {describe(y)}")


def _task_classes(num_classes: int | Mapping[str, int] | None, single: bool) -> int | Mapping[str, int] | None:
    return {"y": num_classes} if single and isinstance(num_classes, int) else num_classes


def _plain_mix(x: torch.Tensor, y, num_classes, generator, **settings) -> tuple[MixResult, bool]:
    check_images(x, "x")
    targets, single = _as_targets(y)
    result = mix(MixBatch(x, targets), num_classes=_task_classes(num_classes, single), generator=generator,
                 **settings)
    return result, single


def mixup_batch(
    x: torch.Tensor,
    y: torch.Tensor | Mapping[str, torch.Tensor],
    *,
    alpha: float = 0.8,
    num_classes: int | Mapping[str, int] | None = None,
    per_sample_lam: bool = False,
    generator: torch.Generator | None = None,
):
    """Group-agnostic Mixup for any training loop: ``(x_mixed, y_dense, lam, perm)``.

    :func:`mix` with ``switch_prob=0``: the default alpha (0.8) and the one
    lam per batch (``per_sample_lam=True`` draws one per sample) match the
    selective forms; lam is returned per sample (B,), as the weight of the
    original; partners form a derangement. ``y`` is indices or dense, a
    tensor or a dict of tasks. ``alpha=0`` means no mixing.
    """
    result, single = _plain_mix(x, y, num_classes, generator, mixup_alpha=_check_alpha(alpha), switch_prob=0.0,
                                per_sample_lam=per_sample_lam)
    mixed = result.batch.targets
    return result.batch.images, mixed["y"] if single else mixed, result.lam, result.perm


def cutmix_batch(
    x: torch.Tensor,
    y: torch.Tensor | Mapping[str, torch.Tensor],
    *,
    alpha: float = 1.0,
    num_classes: int | Mapping[str, int] | None = None,
    per_sample_boxes: bool = True,
    per_sample_lam: bool = False,
    generator: torch.Generator | None = None,
):
    """Group-agnostic CutMix for any training loop: ``(x_mixed, y_dense, lam, boxes, perm)``.

    :func:`mix` with ``switch_prob=1``: one requested ``lam ~ Beta(alpha,
    alpha)`` per batch as in the selective forms (``per_sample_lam=True``: one
    per sample), each sample's box placed on its own (one box for the batch
    with ``per_sample_boxes=False``); the returned (B,) lam is the exact kept
    fraction and boxes are ``y1, x1, y2, x2`` (half-open). ``alpha=0`` means
    no mixing.
    """
    result, single = _plain_mix(x, y, num_classes, generator, cutmix_alpha=_check_alpha(alpha), switch_prob=1.0,
                                per_sample_boxes=per_sample_boxes, per_sample_lam=per_sample_lam)
    mixed = result.batch.targets
    return result.batch.images, mixed["y"] if single else mixed, result.lam, result.boxes, result.perm
