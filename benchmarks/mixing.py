"""Mixing benchmark: selective Mixup/CutMix, aux chunks and in-group pairing against floors and peers.

Floors, measured in the same run: ``x.clone()`` (the least a function that
returns a new tensor can cost) and ``out.copy_(x)`` into a preallocated buffer
(for the ``out=`` form). Peers, each only if importable: timm ``Mixup``,
torchvision ``v2.MixUp`` / ``v2.CutMix``, kornia ``RandomMixUpV2`` /
``RandomCutMixV2``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Table, optional_import, parse_args, time_call, time_interleaved

from taxaug import MixBatch, _memory, _native
from taxaug import functional as F

NUM_CLASSES = 1000


def _add_peer(table: Table, case: str, name: str, fn, repeats: int, device: str, note: str = "") -> None:
    """Time a peer; a peer that rejects this input gets a row saying why instead of a time."""
    try:
        seconds = time_call(fn, repeats=repeats, device=device)
    except Exception as error:  # peers differ in what they accept (uint8, odd batch sizes, ...)
        table.add(case, name, None, note=f"fails: {type(error).__name__}: {str(error)[:60]}")
        return
    table.add(case, name, seconds, floor="x.clone()", note=note)


def _peers(table: Table, case: str, x: torch.Tensor, labels: torch.Tensor, repeats: int, device: str) -> None:
    timm_data = optional_import("timm.data")
    if timm_data is None:
        table.add(case, "timm Mixup (mixup)", None, note="not importable")
    else:
        mixer = timm_data.Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, num_classes=NUM_CLASSES, label_smoothing=0.0)
        work = x.clone()
        _add_peer(table, case, "timm Mixup (mixup)", lambda: mixer(work, labels), repeats, device,
                  note="in place, batch-wide lam")
        cutter = timm_data.Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=NUM_CLASSES, label_smoothing=0.0)
        _add_peer(table, case, "timm Mixup (cutmix)", lambda: cutter(work, labels), repeats, device,
                  note="in place, one box per batch")
    v2 = optional_import("torchvision.transforms.v2")
    if v2 is None:
        table.add(case, "torchvision v2.MixUp / v2.CutMix", None, note="not importable")
    else:
        mixup, cutmix = v2.MixUp(alpha=1.0, num_classes=NUM_CLASSES), v2.CutMix(alpha=1.0, num_classes=NUM_CLASSES)
        _add_peer(table, case, "torchvision v2.MixUp", lambda: mixup(x, labels), repeats, device)
        _add_peer(table, case, "torchvision v2.CutMix", lambda: cutmix(x, labels), repeats, device,
                  note="one box per batch")
    kornia_aug = optional_import("kornia.augmentation")
    if kornia_aug is None:
        table.add(case, "kornia RandomMixUpV2 / RandomCutMixV2", None, note="not importable")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kmix = kornia_aug.RandomMixUpV2(data_keys=["input", "class"])
            kcut = kornia_aug.RandomCutMixV2(data_keys=["input", "class"], use_correct_lambda=True)
        _add_peer(table, case, "kornia RandomMixUpV2", lambda: kmix(x, labels), repeats, device)
        _add_peer(table, case, "kornia RandomCutMixV2", lambda: kcut(x, labels), repeats, device)


def image_rows(table: Table, device: str, dtype: torch.dtype, size: int, side: int, repeats: int) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(size, 3, side, side, generator=gen)
    x = (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)
    x = x.to(device)
    labels = torch.randint(1, NUM_CLASSES, (size,), generator=gen).to(device)
    targets = {"taxa_L10": labels}
    groups = torch.randint(0, max(1, size // 8), (size,), generator=gen).to(device)  # ~8 samples per group
    batch = MixBatch(x, targets)
    classes = {"taxa_L10": NUM_CLASSES}
    out = torch.empty_like(x)
    case = f"{device} {str(dtype).replace('torch.', '')} {size}x3x{side}x{side}"

    def mixup(**kw):
        return F.selective_mixup(batch, groups, 0.7, num_classes=classes, generator=gen, **kw)

    def cutmix(per_sample: bool, **kw):
        return F.selective_cutmix(batch, groups, 0.7, per_sample_boxes=per_sample, num_classes=classes,
                                  generator=gen, **kw)

    # (operation, call, floor, note), timed in turns so that load drift hits floors and functions alike
    rows = [
        ("x.clone()", lambda: x.clone(), None, "floor"),
        ("out.copy_(x)", lambda: out.copy_(x), None, "floor"),
        ("cached-buffer clone", lambda: _memory.clone(x), "x.clone()",
         "floor for a new tensor from taxaug's buffer cache (taxaug._memory), which its functions return"),
        ("selective_mixup", mixup, "x.clone()", "target <= 1.5x clone"),
        ("selective_mixup out=", lambda: mixup(out=out), "out.copy_(x)", "target <= 2.5x copy"),
        ("selective_cutmix per-sample boxes", lambda: cutmix(True), "x.clone()", "target <= 2x clone"),
        ("selective_cutmix per-sample boxes out=", lambda: cutmix(True, out=out), "out.copy_(x)", ""),
        ("selective_cutmix batch box", lambda: cutmix(False), "x.clone()", ""),
    ]
    if device != "cpu":
        rows = [row for row in rows if row[0] != "cached-buffer clone"]
    times = time_interleaved({name: fn for name, fn, _, _ in rows}, repeats=repeats, device=device)
    for name, _, floor, note in rows:
        table.add(case, name, times[name], floor=floor, note=note)
    if device == "cpu" and _native.available():
        _torch_fallback_rows(table, case, mixup, cutmix, repeats)
    _peers(table, case, x, labels, repeats, device)


def _torch_fallback_rows(table: Table, case: str, mixup, cutmix, repeats: int) -> None:
    """The same calls on an install without the C kernels (TAXAUG_NATIVE=0)."""
    with _native.disabled():
        table.add(case, "selective_mixup, torch path", time_call(mixup, repeats=repeats), floor="x.clone()",
                  note="without the C kernels")
        table.add(case, "selective_cutmix per-sample, torch path", time_call(lambda: cutmix(True), repeats=repeats),
                  floor="x.clone()", note="without the C kernels")


def small_rows(table: Table, device: str, repeats: int) -> None:
    gen = torch.Generator().manual_seed(1)
    groups = torch.randint(0, 500, (4096,), generator=gen).to(device)
    case = f"{device} B=4096, 500 groups"
    table.add(case, "randperm(4096)", time_call(lambda: torch.randperm(4096, device=device), repeats=repeats * 4,
                                                device=device), note="floor")
    table.add(case, "ingroup_permutation", time_call(lambda: F.ingroup_permutation(groups, generator=gen),
                                                     repeats=repeats * 4, device=device),
              floor="randperm(4096)", note="target < 1 ms")
    aux = torch.rand(256, 9, generator=gen).to(device)
    mask = (torch.rand(256, 3, generator=gen) > 0.1).to(device)
    perm = F.ingroup_permutation(torch.zeros(256, dtype=torch.long, device=device), generator=gen)
    chunks = [(0, 3), (3, 5), (5, 9)]
    case = f"{device} aux B=256, D=9, 3 chunks"
    table.add(case, "aux.clone()", time_call(lambda: aux.clone(), repeats=repeats * 4, device=device), note="floor")
    table.add(case, "mix_aux_chunkwise", time_call(
        lambda: F.mix_aux_chunkwise(aux, perm, chunks, aux_mask=mask, lam=0.7, generator=gen),
        repeats=repeats * 4, device=device), floor="aux.clone()", note="target < 1 ms")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    size, side = (32, 112) if args.quick else (256, 224)
    table = Table(f"Mixing (medians; C kernels: {_native.kernel_isa() if _native.available() else 'off'})")
    for device in args.device:
        for dtype in (torch.float32, torch.uint8):
            image_rows(table, device, dtype, size, side, args.repeats)
        small_rows(table, device, args.repeats)
    table.emit(args.out, "mixing")


if __name__ == "__main__":
    main()
