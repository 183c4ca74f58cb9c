"""Every op value the policies can produce, run through the batched dispatcher, against Pillow on real photos.

The values: every (op, magnitude bin, sign) of AutoAugment (10 bins), RandAugment and
TrivialAugmentWide (31 bins), as the policies compute them for the image size (translations in
whole pixels), plus AugMix's levels (a grid over [0.1, 10]) and its factors. The images:
scikit-image's sample photos (astronaut, coffee, chelsea, rocket; camera and the others' grey
versions for the grey batch), downscaled to an odd and an even size. Each value runs on all
photos at once through ``apply_ops_per_sample`` (C kernels, and again with them off); only the
Pillow reference loops.

What is compared (uint8):
- identity, invert, posterize, solarize, autocontrast, equalize: every byte equal to ``ImageOps``;
- rotate, shear_x/y, translate_x/y (nearest): every byte equal to ``Image.rotate`` /
  ``Image.transform(AFFINE)`` with NEAREST and the same fill;
- brightness, color, contrast, sharpness: ``ImageEnhance`` within 1 level on every pixel and
  identical on >= 99% of the pixels of every value (taxaug evaluates Pillow's float32 blend with
  vectorised float32 arithmetic; Pillow's own rounding of the blend is not reproduced bit for bit).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from taxaug import _native
from taxaug.functional import policies as P

skimage_data = pytest.importorskip("skimage.data", reason="the parity photos come with scikit-image (test extra)")

SIZES = [(57, 71), (48, 64)]  # (H, W): an odd one and an even one
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
EXACT = {"identity", "invert", "posterize", "solarize", "autocontrast", "equalize",
         "rotate", "shear_x", "shear_y", "translate_x", "translate_y"}
ENHANCE = {"brightness": ImageEnhance.Brightness, "color": ImageEnhance.Color,
           "contrast": ImageEnhance.Contrast, "sharpness": ImageEnhance.Sharpness}


def _photos(height: int, width: int, grey: bool) -> list[Image.Image]:
    images = [Image.fromarray(getattr(skimage_data, name)()) for name in PHOTOS]
    if grey:
        images = [Image.fromarray(skimage_data.camera()), *(im.convert("L") for im in images)]
    return [im.resize((width, height), Image.BILINEAR) for im in images]


def _tensor(images: list[Image.Image]) -> torch.Tensor:
    arrays = [np.asarray(im) for im in images]
    batch = np.stack([a[:, :, None] if a.ndim == 2 else a for a in arrays])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


def _policy_values(height: int, width: int) -> list[tuple[str, float]]:
    """(op name, parameter) for every op, bin and sign of the three bin policies, at this size."""
    values = set()
    for specs, bins in ((P.AUTOAUGMENT_OPS, P.AUTOAUGMENT_BINS), (P.RANDAUGMENT_OPS, 31),
                        (P.TRIVIAL_AUGMENT_WIDE_OPS, 31)):
        n = len(specs) * bins * 2
        op = torch.arange(len(specs)).repeat_interleave(bins * 2)
        level = torch.arange(bins).repeat_interleave(2).repeat(len(specs))
        negate = torch.tensor([False, True]).repeat(n // 2)
        params = P._policy_parameters(specs, op, level.double() / (bins - 1), negate, height, width)
        values |= {(specs[k].name, v) for k, v in zip(op.tolist(), params.tolist(), strict=True)}
    return sorted(values)


def _augmix_values(height: int, width: int) -> list[tuple[str, float]]:
    """(op name, parameter) of AugMix's ops at a grid of levels over [0.1, 10], both signs, severity 10
    (the symmetric factors and the original 0.1 + 0.18 level ones)."""
    names = ["identity", *P.AUGMIX_SETS["all"]]
    levels = torch.linspace(0.1, 10.0, 34, dtype=torch.float64)
    grid = torch.cartesian_prod(torch.arange(1, len(names)), torch.arange(levels.shape[0]), torch.arange(2))
    op, level, negate = grid[:, 0], levels[grid[:, 1]], grid[:, 2].bool()
    u = torch.linspace(0.0, 1.0, grid.shape[0], dtype=torch.float64)
    values = set()
    for original in (False, True):
        params = P._augmix_parameters(names, op, level, negate, (u * 7) % 1, u, original, height, width,
                                      severity=10)
        values |= {(names[k], v) for k, v in zip(op.tolist(), params.tolist(), strict=True)}
    return sorted(values)


def _pillow(im: Image.Image, name: str, value: float, fill: int | tuple[int, ...] | None) -> np.ndarray:
    if name in ENHANCE:
        out = ENHANCE[name](im).enhance(value)
    elif name == "rotate":
        out = im.rotate(value, Image.NEAREST, fillcolor=fill)
    elif name in ("shear_x", "shear_y", "translate_x", "translate_y"):
        data = {"shear_x": (1, value, 0, 0, 1, 0), "shear_y": (1, 0, 0, value, 1, 0),
                "translate_x": (1, 0, -value, 0, 1, 0), "translate_y": (1, 0, 0, 0, 1, -value)}[name]
        out = im.transform(im.size, Image.AFFINE, data, Image.NEAREST, fillcolor=fill)
    elif name == "posterize":  # 0 bits (AugMix at severity 10): black; Pillow 13 accepts 1..8 only
        out = ImageOps.posterize(im, int(value)) if value >= 1 else Image.new(im.mode, im.size, 0)
    elif name == "solarize":
        out = ImageOps.solarize(im, value)
    elif name == "identity":
        out = im
    else:
        out = getattr(ImageOps, name)(im)
    arr = np.asarray(out)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _ours(x: torch.Tensor, values: list[tuple[str, float]], fill, native: bool) -> torch.Tensor:
    """(n_values, n_photos, C, H, W): each value on every photo, all in one dispatcher call."""
    names = sorted({name for name, _ in values})
    op = torch.tensor([names.index(name) for name, _ in values]).repeat_interleave(x.shape[0])
    params = torch.tensor([v for _, v in values], dtype=torch.float64).repeat_interleave(x.shape[0])
    batch = x.repeat(len(values), 1, 1, 1)
    if native:
        out = P.apply_ops_per_sample(batch, op, params, names, fill=fill)
    else:
        with _native.disabled():
            out = P.apply_ops_per_sample(batch, op, params, names, fill=fill)
    return out.reshape(len(values), *x.shape)


def _check(images: list[Image.Image], values: list[tuple[str, float]], fill) -> None:
    x = _tensor(images)
    outputs = [_ours(x, values, fill, native) for native in (True, False)]
    assert torch.equal(outputs[0], outputs[1]), "the C kernels and the torch code differ"
    ours = outputs[0].permute(0, 1, 3, 4, 2).numpy()  # (values, photos, H, W, C)
    pil_fill = fill if fill is None or isinstance(fill, int) else tuple(fill)
    failures = []
    for k, (name, value) in enumerate(values):
        ref = np.stack([_pillow(im, name, value, pil_fill) for im in images])
        diff = np.abs(ours[k].astype(np.int16) - ref.astype(np.int16))
        if name in EXACT:
            bad = diff.any(axis=-1).mean()
            if bad:
                failures.append(f"{name}({value!r}): {bad:.2%} of pixels differ from Pillow")
        elif diff.max() > 1 or (diff == 0).mean() < 0.99:
            failures.append(f"{name}({value!r}): max diff {diff.max()}, {(diff == 0).mean():.2%} identical")
    assert not failures, f"{len(failures)} of {len(values)} values: " + "; ".join(failures[:8])


@pytest.mark.parametrize(("height", "width"), SIZES)
@pytest.mark.parametrize("grey", [False, True], ids=["rgb", "grey"])
def test_every_policy_value_matches_pillow_on_photos(height, width, grey):
    values = _policy_values(height, width)
    names = {name for name, _ in values}
    assert names == EXACT | set(ENHANCE)
    assert ("shear_x", 0.3 * (20 / 30)) in values and ("solarize", 178.5) in values  # the cases
    _check(_photos(height, width, grey), values, None)


@pytest.mark.parametrize(("height", "width"), SIZES[:1])
def test_every_augmix_value_matches_pillow_on_photos(height, width):
    _check(_photos(height, width, grey=False), _augmix_values(height, width), None)


def test_geometric_policy_values_match_pillow_with_a_colour_fill():
    height, width = SIZES[0]
    values = [(name, v) for name, v in _policy_values(height, width)
              if name in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")]
    _check(_photos(height, width, grey=False), values, (17, 101, 211))
    _check(_photos(height, width, grey=True), values, 77)


def test_translations_are_whole_pixels_truncated_toward_zero_as_torchvision():
    # torchvision: int(linspace(0, 150 / 331 * side, bins)[bin]) with the sign applied before int()
    values = dict.fromkeys(P._policy_parameters(
        P.RANDAUGMENT_OPS, torch.full((31,), 3), torch.arange(31).double() / 30, torch.ones(31, dtype=torch.bool),
        331, 331).tolist())
    assert list(values) == [-float(5 * k) for k in range(31)]  # 150/331 of 331 px in 30 steps: exact integers
    side = 224
    expected = [int(150 / 331 * side * k / 30) for k in range(31)]
    ours = P._policy_parameters(P.RANDAUGMENT_OPS, torch.full((31,), 3), torch.arange(31).double() / 30,
                                torch.zeros(31, dtype=torch.bool), side, side)
    assert ours.tolist() == [float(v) for v in expected]
    ta = P._policy_parameters(P.TRIVIAL_AUGMENT_WIDE_OPS, torch.full((31,), 4), torch.arange(31).double() / 30,
                              torch.ones(31, dtype=torch.bool), side, side)
    assert ta.tolist() == [-float(int(32 * k / 30)) for k in range(31)]
