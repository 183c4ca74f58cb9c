"""Batched policies: published tables, per-sample dispatch, determinism, dtype agreement, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from taxaug import _native
from taxaug.functional import image_ops as F
from taxaug.functional import policies as P


def _images(seed: int, shape=(16, 3, 24, 28)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- published tables

# torchvision's `_get_policies` (the published AutoAugment sub-policies), in its own spelling.
_PUBLISHED = {
    "imagenet": [
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)), (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)), (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)), (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)), (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    ],
    "cifar10": [
        (("Invert", 0.1, None), ("Contrast", 0.2, 6)), (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)), (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)), (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)), (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, None), ("Equalize", 0.5, None)), (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)), (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)), (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, None)), (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.2, None), ("Equalize", 0.6, None)), (("Color", 0.9, 9), ("Equalize", 0.6, None)),
        (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)), (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)), (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)), (("Equalize", 0.8, None), ("Invert", 0.1, None)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
    ],
    "svhn": [
        (("ShearX", 0.9, 4), ("Invert", 0.2, None)), (("ShearY", 0.9, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.6, None), ("Solarize", 0.6, 6)), (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)), (("ShearX", 0.9, 4), ("AutoContrast", 0.8, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.4, None)), (("ShearY", 0.9, 5), ("Solarize", 0.2, 6)),
        (("Invert", 0.9, None), ("AutoContrast", 0.8, None)), (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("Solarize", 0.3, 3)), (("ShearY", 0.8, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.9, None), ("TranslateY", 0.6, 6)), (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Contrast", 0.3, 3), ("Rotate", 0.8, 4)), (("Invert", 0.8, None), ("TranslateY", 0.0, 2)),
        (("ShearY", 0.7, 6), ("Solarize", 0.4, 8)), (("Invert", 0.6, None), ("Rotate", 0.8, 4)),
        (("ShearY", 0.3, 7), ("TranslateX", 0.9, 3)), (("ShearX", 0.1, 6), ("Invert", 0.6, None)),
        (("Solarize", 0.7, 2), ("TranslateY", 0.6, 7)), (("ShearY", 0.8, 4), ("Invert", 0.8, None)),
        (("ShearX", 0.7, 9), ("TranslateY", 0.8, 3)), (("ShearY", 0.8, 5), ("AutoContrast", 0.7, None)),
        (("ShearX", 0.7, 2), ("Invert", 0.1, None)),
    ],
}
_SPELLING = {
    "ShearX": "shear_x", "ShearY": "shear_y", "TranslateX": "translate_x", "TranslateY": "translate_y",
    "AutoContrast": "autocontrast",
}


def test_autoaugment_policies_match_published_tables():
    assert set(P.AUTOAUGMENT_POLICIES) == set(_PUBLISHED)
    for name, subs in _PUBLISHED.items():
        ours = P.AUTOAUGMENT_POLICIES[name]
        assert len(ours) == 25
        expected = tuple(
            tuple((_SPELLING.get(op, op.lower()), p, b) for op, p, b in sub) for sub in subs
        )
        assert ours == expected


def _param(specs, name, fraction, negate=False, h=224, w=224):
    k = [s.name for s in specs].index(name)
    return float(P.op_parameters(specs, torch.tensor([k]), torch.tensor([fraction]),
                                 torch.tensor([negate]), h, w)[0])


def test_magnitude_tables_match_torchvision_ranges():
    aa, ra, ta = P.AUTOAUGMENT_OPS, P.RANDAUGMENT_OPS, P.TRIVIAL_AUGMENT_WIDE_OPS
    assert [s.name for s in ra] == ["identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate",
                                    "brightness", "color", "contrast", "sharpness", "posterize", "solarize",
                                    "autocontrast", "equalize"]
    assert "invert" in [s.name for s in aa] and "identity" not in [s.name for s in aa]
    # AutoAugment bins of 10: rotate bin 9 = 30 degrees, posterize 8,8,7,7,6,6,5,5,4,4, solarize 255..0
    assert _param(aa, "rotate", 9 / 9) == pytest.approx(30.0)
    assert [_param(aa, "posterize", b / 9) for b in range(10)] == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
    assert _param(aa, "solarize", 0.0) == 255 and _param(aa, "solarize", 1.0) == 0
    assert _param(aa, "translate_x", 1.0, w=331) == pytest.approx(150.0)
    assert _param(aa, "color", 4 / 9, negate=True) == pytest.approx(1.0 - 0.4)
    # RandAugment, 31 bins: magnitude 9 -> rotate 9 degrees, shear 0.09, enhance 1 +- 0.27
    assert _param(ra, "rotate", 9 / 30, negate=True) == pytest.approx(-9.0)
    assert _param(ra, "shear_y", 9 / 30) == pytest.approx(0.09)
    assert _param(ra, "sharpness", 9 / 30) == pytest.approx(1.27)
    # TrivialAugmentWide: rotate up to 135, translate 32 px absolute, posterize down to 2 bits
    assert _param(ta, "rotate", 1.0) == pytest.approx(135.0)
    assert _param(ta, "translate_y", 1.0, h=500) == pytest.approx(32.0)
    assert _param(ta, "posterize", 1.0) == 2 and _param(ta, "shear_x", 1.0) == pytest.approx(0.99)
    assert set(P.OP_TABLES) == {"autoaugment", "randaugment", "trivial_augment_wide", "augmix"}
    assert P.OP_TABLES["augmix"][0].fn is F.autocontrast
    for table in P.OP_TABLES.values():
        for spec in table:
            assert callable(spec.fn) and spec.fn.__name__ == spec.name


def test_augmix_sets():
    full = set(P.AUGMIX_SETS["all"])
    assert set(P.AUGMIX_SETS["safe"]) == full - {"color", "contrast", "brightness", "sharpness"}
    assert set(P.AUGMIX_SETS["original"]) == full and len(full) == 13


@pytest.mark.parametrize("severity", [1, 3, 10])
def test_augmix_parameter_ranges_follow_reference(severity):
    names = ["identity", *P.AUGMIX_SETS["all"]]
    n = 4000
    g = _gen(1)
    op = torch.randint(1, len(names), (n,), generator=g)
    level = 0.1 + (severity - 0.1) * torch.rand(n, generator=g, dtype=torch.float64)
    neg = torch.rand(n, generator=g) < 0.5
    us, uv = torch.rand(n, generator=g), torch.rand(n, generator=g, dtype=torch.float64)
    params = P._augmix_parameters(names, op, level, neg, us, uv, False, 30, 60, severity=severity)
    by = {name: params[op == k] for k, name in enumerate(names)}
    assert set(by["posterize"].tolist()) <= {4.0 - k for k in range(int(severity * 0.4) + 1)}
    assert by["rotate"].abs().max() <= 3 * severity and by["solarize"].min() >= 256 - 25.6 * severity
    assert by["translate_x"].abs().max() <= 2 * severity and by["translate_y"].abs().max() <= severity
    assert by["shear_x"].abs().max() <= 0.03 * severity + 1e-9
    # Composer's symmetric_sample(severity): U(1, severity) or U(1 - 0.09 severity, 1), each half the time,
    # whatever the op's level
    for name in ("color", "contrast", "sharpness"):
        factors = by[name]
        above = factors > 1
        assert float(factors.min()) >= 1 - 0.09 * severity and float(factors.max()) <= max(severity, 1)
        if severity > 1:
            assert 0.45 < float(above.float().mean()) < 0.55
            assert float(factors[above].mean()) == pytest.approx((1 + severity) / 2, rel=0.1)
        assert float(factors[factors < 1].mean()) == pytest.approx(1 - 0.045 * severity, abs=0.01 + 0.008 * severity)
    expected = torch.where(us > 0.5, 1 + (severity - 1) * uv, 1 - 0.09 * severity * (1 - uv))
    bright = op == names.index("brightness")
    assert torch.equal(by["brightness"], torch.where(expected > 1, expected * 0.75, expected)[bright])
    original = P._augmix_parameters(names, op, level, neg, us, uv, True, 30, 60, severity=severity)
    assert torch.allclose(original[op == names.index("contrast")], 0.1 + 0.18 * level[op == names.index("contrast")])


# ----------------------------------------------------------------------------- dispatch

def test_apply_ops_per_sample_equals_one_op_per_sample():
    x = _images(2, (8, 3, 20, 20))
    names = ["rotate", "contrast", "solarize", "identity", "shear_x", "equalize", "translate_y", "posterize"]
    ops = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    mags = torch.tensor([15.0, 1.6, 100.0, 0.0, 0.3, 0.0, -4.0, 3.0])
    out = P.apply_ops_per_sample(x, ops, mags, names, fill=7)
    for i in range(8):
        fn = getattr(F, names[i])
        kw = {"fill": 7} if names[i] in ("rotate", "shear_x", "translate_y") else {}
        assert torch.equal(out[i : i + 1], fn(x[i : i + 1], float(mags[i]), **kw))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_dispatch_gives_each_op_the_bits_of_its_own_function_and_leaves_the_input(dtype):
    magnitudes = {"rotate": 20.0, "shear_x": -0.2, "shear_y": 0.25, "translate_x": 5.0, "translate_y": -3.0,
                  "brightness": 1.4, "color": 0.3, "contrast": 1.7, "sharpness": 0.2, "posterize": 3.0,
                  "solarize": 90.0, "solarize_add": 40.0, "autocontrast": 0.0, "equalize": 0.0, "invert": 0.0,
                  "hflip": 0.0, "identity": 0.0}
    names = list(magnitudes)
    size = 3 * len(names)  # three samples per op: groups of several rows, as in a real batch
    x = _images(5, (size, 3, 18, 22))
    x = x if dtype == torch.uint8 else x.float() / 255
    snapshot = x.clone()
    ops = torch.arange(size) % len(names)
    mags = torch.tensor([magnitudes[names[k]] for k in ops.tolist()])
    out = P.apply_ops_per_sample(x, ops, mags, names)
    assert torch.equal(x, snapshot)
    for k, name in enumerate(names):
        rows = ops == k
        fn = getattr(F, name)
        assert torch.equal(out[rows], fn(x[rows], float(mags[rows][0]))), name  # the float32 value given


def test_per_sample_independence():
    x = _images(3, (1, 3, 24, 24)).expand(32, 3, 24, 24).contiguous()
    for fn in (
        lambda t: P.trivial_augment_wide(t, generator=_gen(0)),
        lambda t: P.rand_augment(t, generator=_gen(0)),
        lambda t: P.auto_augment(t, "imagenet", generator=_gen(0)),
        lambda t: P.augmix(t, generator=_gen(0)),
        lambda t: P.random_erasing(t, p=1.0, generator=_gen(0)),
    ):
        out = fn(x)
        distinct = {bytes(o.numpy().tobytes()) for o in out}
        assert len(distinct) >= 8  # one batch, many different ops/magnitudes


def test_determinism_with_generator():
    x = _images(4)
    for fn in (P.trivial_augment_wide, P.rand_augment, P.auto_augment, P.augmix, P.random_erasing):
        a, b = fn(x, generator=_gen(5)), fn(x, generator=_gen(5))
        assert torch.equal(a, b)
        assert not torch.equal(a, fn(x, generator=_gen(6)))


def test_uint8_and_float_policies_agree_within_rounding():
    x = _images(5)
    xf = x.float() / 255
    for fn in (
        lambda t: P.auto_augment(t, "cifar10", generator=_gen(3)),
        lambda t: P.rand_augment(t, 2, 15, generator=_gen(3)),
        lambda t: P.trivial_augment_wide(t, generator=_gen(3)),
        lambda t: P.augmix(t, generator=_gen(3)),
    ):
        a = fn(x).int()
        b = (fn(xf) * 255).round().int()
        diff = (a - b).abs().float()
        # single ops agree within 2 levels; chained histogram ops can move a few pixels by one bin
        assert float(diff.mean()) < 1.0
        assert float((diff <= 2).float().mean()) > 0.97


def test_rand_augment_zero_ops_and_magnitude_noise():
    x = _images(6)
    assert torch.equal(P.rand_augment(x, num_ops=0), x)
    a = P.rand_augment(x, 2, 9, magnitude_std=0.5, generator=_gen(1))
    b = P.rand_augment(x, 2, 9, generator=_gen(1))
    assert a.shape == x.shape and not torch.equal(a, b)
    P.rand_augment(x, 2, 9, magnitude_std=math.inf, generator=_gen(1))


def test_auto_augment_zero_probability_ops_never_apply():
    # svhn sub-policy 15 ("Invert", 0.8), ("TranslateY", 0.0, 2): translate never runs
    x = _images(7, (4, 3, 16, 16))
    out = P.auto_augment(x, "svhn", generator=_gen(0))
    assert out.shape == x.shape


def test_augmix_depth_width_and_pil():
    x = _images(8)
    one = P.augmix(x, width=1, depth=1, alpha=1.0, augmentation_set="safe", generator=_gen(0))
    assert one.shape == x.shape and one.dtype == torch.uint8
    assert not torch.equal(P.augmix(x, augmentation_set="original", generator=_gen(0)),
                           P.augmix(x, augmentation_set="all", generator=_gen(0)))
    im = Image.fromarray(x[0].permute(1, 2, 0).numpy())
    out = P.augmix_image(im, generator=_gen(0))
    assert isinstance(out, Image.Image) and out.size == im.size and out.mode == "RGB"
    gray = P.augmix_image(im.convert("L"), generator=_gen(0))
    assert gray.mode == "L"


# ----------------------------------------------------------------------------- random erasing

def test_random_erasing_boxes_respect_scale_and_ratio():
    x = torch.full((64, 3, 40, 50), 200, dtype=torch.uint8)
    out = P.random_erasing(x, p=1.0, scale=(0.05, 0.2), ratio=(0.5, 2.0), value=(1, 2, 3), generator=_gen(0))
    mask = out[:, 0] == 1
    assert torch.equal(out[:, 1][mask], torch.full_like(out[:, 1][mask], 2))
    for m in mask:
        rows = m.any(dim=1).nonzero().flatten()
        cols = m.any(dim=0).nonzero().flatten()
        assert len(rows) and len(cols)
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert int(m.sum()) == h * w  # one solid rectangle
        assert 0.05 * 2000 * 0.8 <= h * w <= 0.2 * 2000 * 1.2
        assert 0.5 / 1.5 <= h / w <= 2.0 * 1.5
    assert len({tuple(m.nonzero()[0].tolist()) for m in mask}) > 10


def test_random_erasing_probability_and_modes():
    x = _images(9, (64, 3, 32, 32))
    assert torch.equal(P.random_erasing(x, p=0.0), x)
    half = P.random_erasing(x, p=0.5, generator=_gen(1))
    erased = (half != x).flatten(1).any(dim=1).float().mean()
    assert 0.25 < float(erased) < 0.75
    xf = x.float() / 255
    rand = P.random_erasing(xf, p=1.0, mode="rand", generator=_gen(2))
    assert float(rand.min()) >= 0 and float(rand.max()) <= 1 and not torch.equal(rand, xf)
    pixel = P.random_erasing(xf, p=1.0, mode="pixel", generator=_gen(2))
    changed = pixel[pixel != xf]
    assert float(changed.min()) < 0  # N(0, 1) noise as on normalised images
    pix8 = P.random_erasing(x, p=1.0, mode="pixel", count=3, generator=_gen(2))
    assert pix8.dtype == torch.uint8 and not torch.equal(pix8, x)


# ----------------------------------------------------------------------------- invariants

_POLICIES = [
    lambda t, g: P.auto_augment(t, "imagenet", generator=g, fill=0),
    lambda t, g: P.rand_augment(t, 2, 20, generator=g),
    lambda t, g: P.trivial_augment_wide(t, generator=g),
    lambda t, g: P.augmix(t, width=2, generator=g),
    lambda t, g: P.random_erasing(t, p=0.7, mode="rand", generator=g),
]


@given(
    policy=st.sampled_from(range(len(_POLICIES))),
    dtype=st.sampled_from([torch.uint8, torch.float32, torch.bfloat16]),
    channels_last=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_policies_keep_dtype_layout_never_mutate_and_are_reproducible(policy, dtype, channels_last, seed):
    x = _images(seed, (5, 3, 12, 14))
    x = x if dtype == torch.uint8 else (x.float() / 255).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    before = x.clone()
    out = _POLICIES[policy](x, _gen(seed))
    assert out.dtype == x.dtype and out.shape == x.shape
    assert torch.equal(x, before)
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, _POLICIES[policy](x, _gen(seed)))


# ----------------------------------------------------------------------------- bad inputs

def test_bad_inputs_raise_clear_errors():
    x = _images(10)
    for fn in (P.auto_augment, P.rand_augment, P.trivial_augment_wide, P.augmix, P.random_erasing):
        with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
            fn(x[0])
        for dtype in (torch.int32, torch.bool):
            with pytest.raises(TypeError, match="uint8 or floating"):
                fn(x.to(dtype))
    for fn in (P.auto_augment, P.rand_augment, P.trivial_augment_wide, P.augmix):
        with pytest.raises(ValueError, match="clamp=True"):
            fn(x.float())
        assert fn(x.float() / 100, clamp=True).max() <= 1
    with pytest.raises(ValueError, match=r"grey \(C=1\) or RGB \(C=3\)"):
        P.trivial_augment_wide(_images(0, (2, 4, 8, 8)))
    with pytest.raises(ValueError, match="unknown AutoAugment policy"):
        P.auto_augment(x, "mnist")
    with pytest.raises(ValueError, match="unknown augmentation_set"):
        P.augmix(x, augmentation_set="everything")
    with pytest.raises(ValueError, match=r"magnitude must be a bin in \[0, 30\]"):
        P.rand_augment(x, 2, 31)
    with pytest.raises(ValueError, match="magnitude must be a bin"):
        P.rand_augment(x, 2, -1)
    with pytest.raises(ValueError, match="num_magnitude_bins"):
        P.trivial_augment_wide(x, num_magnitude_bins=1)
    with pytest.raises(ValueError, match=r"num_ops \(N\) must be an integer >= 0"):
        P.rand_augment(x, -1)
    with pytest.raises(ValueError, match="magnitude_std"):
        P.rand_augment(x, 2, 9, magnitude_std=-1.0)
    for kwargs in ({"severity": 0}, {"severity": 11}, {"width": 0}, {"depth": 0}, {"alpha": 0.0}):
        with pytest.raises(ValueError):
            P.augmix(x, **kwargs)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        P.random_erasing(x, p=1.5)
    with pytest.raises(ValueError, match="scale"):
        P.random_erasing(x, scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="ratio"):
        P.random_erasing(x, ratio=(0.0, 1.0))
    with pytest.raises(ValueError, match="unknown mode"):
        P.random_erasing(x, mode="noise")
    with pytest.raises(ValueError, match="count"):
        P.random_erasing(x, count=0)
    with pytest.raises(ValueError, match="value must lie in"):
        P.random_erasing(x, value=300)
    with pytest.raises(ValueError, match="unknown op names"):
        P.apply_ops_per_sample(x, torch.zeros(16, dtype=torch.long), 0.0, ["warp"])
    with pytest.raises(ValueError, match="op_indices must lie"):
        P.apply_ops_per_sample(x, torch.full((16,), 3), 0.0, ["rotate"])
    with pytest.raises(TypeError, match="PIL"):
        P.augmix_image(x)


@pytest.mark.cuda
def test_cuda_policies_match_cpu_with_a_cpu_generator():
    x = _images(11)
    for fn in (P.trivial_augment_wide, P.rand_augment, P.auto_augment, P.augmix, P.random_erasing):
        cpu = fn(x, generator=_gen(4))
        gpu = fn(x.cuda(), generator=_gen(4))
        assert gpu.device.type == "cuda"
        assert float((gpu.cpu().int() - cpu.int()).abs().float().mean()) < 0.5
    g = torch.Generator(device="cuda").manual_seed(0)
    out = P.rand_augment(x.cuda().float() / 255, generator=g)
    assert out.is_cuda and out.dtype == torch.float32


def test_grey_images_run_through_every_policy():
    x = _images(12, (4, 1, 16, 16))
    for fn in (P.auto_augment, P.rand_augment, P.trivial_augment_wide, P.augmix, P.random_erasing):
        out = fn(x, generator=_gen(0))
        assert out.shape == x.shape and out.dtype == x.dtype


def test_empty_batch_passes_through():
    x = _images(13, (0, 3, 16, 16))
    for fn in (P.auto_augment, P.rand_augment, P.trivial_augment_wide, P.augmix, P.random_erasing):
        assert fn(x, generator=_gen(0)).shape == x.shape
    for xe in (x, x.float() / 255):  # the ops themselves, incl. the per-plane histogram and row views
        assert F.equalize(xe).shape == x.shape
        assert F.color_jitter(xe, 1.2, 0.8, 1.1, 0.1).shape == x.shape


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_saturation_leaves_grey_images_alone_in_every_path(dtype):
    x = _images(8, (6, 1, 9, 7))
    x = x if dtype == torch.uint8 else x.float() / 255
    factors = torch.tensor([0.0, 0.5, 1.5, 2.0, 0.1, 3.0], dtype=torch.float64)
    assert torch.equal(P.apply_ops_per_sample(x, torch.zeros(6, dtype=torch.long), factors, ["color"]), x)
    with _native.disabled():
        assert torch.equal(P.apply_ops_per_sample(x, torch.zeros(6, dtype=torch.long), factors, ["color"]), x)
        assert torch.equal(F.color_jitter(x, saturation=factors), x)
