"""Batched policies vs torchvision v2 (per-sample loop) and kornia on the same batch.

One table: for each device and dtype (uint8, float32) of a 64x3x224x224 batch (``--quick``:
16x3x112x112), the floor (a plain copy of the batch), every taxaug policy, its torchvision v2
per-sample equivalent (a Python loop over the batch, as a dataset would run it) and kornia's
``augmentation.auto`` policies / ``RandomErasing`` on the whole batch. kornia works on float images,
so its uint8 rows include the uint8 <-> float conversion. The "primitives" rows compare single ops
with the kornia primitives they could have been built on (see docs/augmentations.md).

Run: .venv/bin/python benchmarks/image_ops.py [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Table, optional_import, parse_args, time_call, time_interleaved

from taxaug.functional import image_ops as F
from taxaug.functional import policies as P
from taxaug.transforms import ColorJitter


def _kornia_policies(kornia) -> dict[str, Callable[[], object]]:
    auto = kornia.augmentation.auto
    return {
        "auto_augment": lambda: auto.AutoAugment("imagenet"),
        "rand_augment": lambda: auto.RandAugment(n=2, m=9),
        "trivial_augment_wide": lambda: auto.TrivialAugment(),
        "random_erasing": lambda: kornia.augmentation.RandomErasing(p=0.5),
        "color_jitter": lambda: kornia.augmentation.ColorJitter(0.4, 0.4, 0.4, 0.1, p=1.0),
    }


def _torchvision_policies(v2) -> dict[str, Callable[[], object]]:
    return {
        "auto_augment": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET),
        "rand_augment": lambda: v2.RandAugment(num_ops=2, magnitude=9),
        "trivial_augment_wide": lambda: v2.TrivialAugmentWide(),
        "augmix": lambda: v2.AugMix(),
        "random_erasing": lambda: v2.RandomErasing(p=0.5),
        "color_jitter": lambda: v2.ColorJitter(0.4, 0.4, 0.4, 0.1),
    }


def _taxaug_policies(gen: torch.Generator) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    jitter = ColorJitter(0.4, 0.4, 0.4, 0.1, generator=gen)
    return {
        "auto_augment": lambda x: P.auto_augment(x, "imagenet", generator=gen),
        "rand_augment": lambda x: P.rand_augment(x, 2, 9, generator=gen),
        "trivial_augment_wide": lambda x: P.trivial_augment_wide(x, generator=gen),
        "augmix": lambda x: P.augmix(x, generator=gen),
        "random_erasing": lambda x: P.random_erasing(x, p=0.5, generator=gen),
        "color_jitter": jitter,
    }


def _kornia_call(module, x: torch.Tensor) -> Callable[[], object]:
    if x.dtype == torch.uint8:
        return lambda: (module(x.float().div_(255)) * 255).round_().to(torch.uint8)
    return lambda: module(x)


def _ratio_note(ours: float | None, peers: dict[str, float | None]) -> str:
    parts = []
    for name, t in peers.items():
        if ours and t:
            parts.append(f"{t / ours:.1f}x faster than {name}")
    return "; ".join(parts)


def _primitive_rows(table: Table, device: str, x8: torch.Tensor, xf: torch.Tensor, kornia, repeats: int) -> None:
    case = f"{device} primitives"
    b = x8.shape[0]
    angle = torch.linspace(-30, 30, b, device=device)
    rows = [
        ("copy (floor)", lambda: xf.clone()),
        ("taxaug rotate nearest, uint8 (C warp)", lambda: F.rotate(x8, angle)),
        ("taxaug rotate nearest, float32 (C warp)", lambda: F.rotate(xf, angle)),
        ("taxaug rotate bilinear, float32 (kornia warp_affine, black fill)", lambda: F.rotate(xf, angle, interpolation="bilinear")),
        ("taxaug rotate bilinear, float32, grey fill (coverage channel)",
         lambda: F.rotate(xf, angle, interpolation="bilinear", fill=0.5)),
        ("taxaug sharpness, uint8", lambda: F.sharpness(x8, 1.5)),
        ("taxaug sharpness, float32", lambda: F.sharpness(xf, 1.5)),
        ("taxaug equalize, uint8", lambda: F.equalize(x8)),
        ("taxaug equalize, float32", lambda: F.equalize(xf)),
        ("taxaug contrast, float32", lambda: F.contrast(xf, 1.5)),
        ("taxaug posterize, float32", lambda: F.posterize(xf, 4)),
    ]
    if kornia is not None:
        from kornia.geometry.transform import rotate as k_rotate

        rows += [
            ("kornia rotate nearest, float32", lambda: k_rotate(xf, angle, mode="nearest")),
            ("kornia rotate bilinear, float32", lambda: k_rotate(xf, angle)),
            ("kornia enhance.sharpness, float32", lambda: kornia.enhance.sharpness(xf, 0.5)),
            ("kornia enhance.equalize, float32", lambda: kornia.enhance.equalize(xf)),
            ("kornia enhance.adjust_contrast, float32", lambda: kornia.enhance.adjust_contrast(xf, 1.5)),
            ("kornia enhance.posterize, float32", lambda: kornia.enhance.posterize(xf, 4)),
        ]
    # in turns, so that an op and the kornia primitive it is compared with see the same load
    times = time_interleaved(dict(rows), repeats=repeats, device=device)
    for name, _ in rows:
        table.add(case, name, times[name], floor=None if name == "copy (floor)" else "copy (floor)")


def main() -> None:
    # kornia draws one op for the whole batch, so its time is a median over random op choices: 31
    # draws make that median steady enough to compare with (15 left it swinging 2x between runs)
    args = parse_args(__doc__.splitlines()[0], repeats=31)
    kornia = optional_import("kornia")
    v2 = optional_import("torchvision.transforms.v2")
    b, side = (16, 112) if args.quick else (64, 224)
    table = Table(f"Batched policies, {b}x3x{side}x{side}, medians over {args.repeats} repeats")
    for device in args.device:
        gen = torch.Generator(device="cpu").manual_seed(0)
        x8 = torch.randint(0, 256, (b, 3, side, side), dtype=torch.uint8, generator=gen).to(device)
        xf = x8.float() / 255
        ours = _taxaug_policies(gen)
        for x in (x8, xf):
            case = f"{device} {str(x.dtype).replace('torch.', '')}"
            table.add(case, "copy (floor)", time_call(lambda x=x: x.clone(), repeats=args.repeats, device=device))
            for name, fn in ours.items():
                contenders: dict[str, Callable[[], object]] = {"ours": lambda fn=fn, x=x: fn(x)}
                if v2 is not None:
                    tv = _torchvision_policies(v2)[name]()
                    contenders["torchvision loop"] = lambda tv=tv, x=x: torch.stack([tv(img) for img in x])
                kornia_make = _kornia_policies(kornia).get(name) if kornia is not None else None
                if kornia_make is not None:
                    contenders["kornia"] = _kornia_call(kornia_make().to(device), x)
                times = time_interleaved(contenders, repeats=args.repeats, device=device)
                t_ours = times.pop("ours")
                peer_rows = []
                if v2 is None:
                    peer_rows.append((f"torchvision v2 {name} (per-sample loop)", None, "not importable"))
                else:
                    peer_rows.append((f"torchvision v2 {name} (per-sample loop)", times["torchvision loop"], ""))
                if kornia is None:
                    peer_rows.append((f"kornia {name}", None, "not importable"))
                elif kornia_make is None:
                    peer_rows.append((f"kornia {name}", None, "no kornia equivalent"))
                else:
                    note = "one op choice per batch" if "augment" in name else ""
                    if x.dtype == torch.uint8:
                        note = (note + "; " if note else "") + "incl. uint8<->float"
                    peer_rows.append((f"kornia {name}", times["kornia"], note))
                table.add(case, f"taxaug {name}", t_ours, floor="copy (floor)", note=_ratio_note(t_ours, times))
                for op_name, t, note in peer_rows:
                    table.add(case, op_name, t, floor="copy (floor)", note=note)
        _primitive_rows(table, device, x8, xf, kornia, args.repeats)
    table.emit(args.out, "image_ops")


if __name__ == "__main__":
    main()
