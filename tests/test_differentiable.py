"""Differentiable ops: semantics against PIL, gradients to every magnitude and logit, relaxed == hard path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageEnhance, ImageOps

import taxaug.functional as F
from taxaug.functional.differentiable import ENHANCE_OPS, GEOMETRIC_OPS


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one intra-op thread avoids thread-pool spinning on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


MAGNITUDE_OPS = [o for o in F.DIFF_OP_NAMES if F.OP_NEUTRAL[o] is not None]
# a magnitude away from neutral for each op (op units)
TEST_MAGNITUDE = {
    "rotate": 17.0, "translate_x": 2.5, "translate_y": -1.5, "shear_x": 0.2, "shear_y": -0.15,
    "brightness": 1.4, "color": 0.6, "contrast": 1.5, "sharpness": 1.7,
    "posterize": 5.4, "solarize": 120.0, "equalize": 0.7, "autocontrast": 0.6,
}
SIGNED = torch.tensor([o in GEOMETRIC_OPS or o in ENHANCE_OPS for o in F.DIFF_OP_NAMES])


def quantised(gen: torch.Generator, shape=(4, 3, 16, 16)) -> torch.Tensor:
    """Float images on the 8-bit grid (what a uint8 loader gives after / 255)."""
    return torch.randint(0, 256, shape, generator=gen).float() / 255.0


def all_magnitudes() -> torch.Tensor:
    return torch.tensor([TEST_MAGNITUDE.get(o, 0.0) for o in F.DIFF_OP_NAMES])


def to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(torch.round(x * 255).byte().permute(1, 2, 0).numpy())


def from_pil(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float()


# ----------------------------------------------------------------------------- semantics


def test_rotate_quarter_turn_is_counter_clockwise(gen):
    x = torch.rand(2, 1, 9, 9, generator=gen)
    torch.testing.assert_close(F.diff_rotate(x, 90.0), torch.rot90(x, 1, (-2, -1)), atol=1e-5, rtol=0)


def test_translate_integer_shift_fills_with_zero(gen):
    x = torch.rand(2, 3, 8, 10, generator=gen)
    out = F.diff_translate_x(x, 3.0)
    torch.testing.assert_close(out[..., 3:], x[..., :-3], atol=1e-5, rtol=0)
    assert out[..., :3].abs().max() < 1e-6
    out = F.diff_translate_y(x, -2.0)
    torch.testing.assert_close(out[..., :-2, :], x[..., 2:, :], atol=1e-5, rtol=0)


def test_per_sample_magnitudes_act_per_sample(gen):
    x = torch.rand(3, 1, 9, 9, generator=gen)
    out = F.diff_rotate(x, torch.tensor([0.0, 90.0, -90.0]))
    torch.testing.assert_close(out[0], x[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], torch.rot90(x[1], 1, (-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[2], torch.rot90(x[2], -1, (-2, -1)), atol=1e-5, rtol=0)


def test_flips_are_exact(gen):
    x = torch.rand(2, 3, 5, 6, generator=gen)
    assert torch.equal(F.diff_hflip(x), x.flip(-1))
    assert torch.equal(F.diff_vflip(x), x.flip(-2))


@pytest.mark.parametrize(
    ("name", "pil"),
    [
        ("posterize", lambda im: ImageOps.posterize(im, 5)),
        ("solarize", lambda im: ImageOps.solarize(im, 120)),
        ("equalize", ImageOps.equalize),
    ],
)
def test_straight_through_ops_forward_is_pillow_exact(gen, name, pil):
    x = quantised(gen)
    magnitude = {"posterize": 5.0, "solarize": 120.0, "equalize": 1.0}[name]
    out = F.diff_apply_op(x, name, magnitude) * 255
    for i in range(x.shape[0]):
        torch.testing.assert_close(out[i], from_pil(pil(to_pil(x[i]))), atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", ["brightness", "color", "contrast", "sharpness", "autocontrast"])
def test_enhance_ops_match_pillow_within_rounding(gen, name):
    x = quantised(gen)
    if name == "autocontrast":
        out, ref = F.diff_autocontrast(x, 1.0), ImageOps.autocontrast
    else:
        cls = {"brightness": ImageEnhance.Brightness, "color": ImageEnhance.Color,
               "contrast": ImageEnhance.Contrast, "sharpness": ImageEnhance.Sharpness}[name]
        out = F.diff_apply_op(x, name, 1.6)

        def ref(im, cls=cls):
            return cls(im).enhance(1.6)
    for i in range(x.shape[0]):
        # PIL rounds to uint8 (and contrast uses the rounded mean): within ~1.5 levels
        assert (out[i] * 255 - from_pil(ref(to_pil(x[i])))).abs().max() <= 1.6


@given(seed=st.integers(0, 2**31 - 1), name=st.sampled_from(MAGNITUDE_OPS))
def test_neutral_magnitude_is_identity(seed, name):
    x = quantised(torch.Generator().manual_seed(seed), (2, 3, 12, 10))
    out = F.diff_apply_op(x, name, F.OP_NEUTRAL[name])
    torch.testing.assert_close(out, x, atol=2e-5, rtol=0)


@given(seed=st.integers(0, 2**31 - 1), name=st.sampled_from(F.DIFF_OP_NAMES), scale=st.floats(-1.0, 1.0))
def test_ops_stay_in_range_and_never_mutate(seed, name, scale):
    gen = torch.Generator().manual_seed(seed)
    x = quantised(gen, (3, 3, 10, 12))
    before = x.clone()
    neutral = F.OP_NEUTRAL[name]
    magnitude = None if neutral is None else neutral + scale * (TEST_MAGNITUDE[name] - neutral)
    out = F.diff_apply_op(x, name, magnitude)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    assert torch.equal(x, before)


def test_posterize_dither_rounds_stochastically_to_the_mean(gen):
    x = quantised(gen, (4000, 1, 2, 2))
    dither = F.rand((4000,), generator=gen)
    out = F.diff_posterize(x, 5.3, dither=dither)
    # 30% of samples keep 6 bits, 70% keep 5 bits; a 6-bit result keeps bit 2 (value 4) of the level
    levels = torch.round(out * 255).long()
    six_bit = ((levels & 4) != 0).any(dim=(1, 2, 3))
    assert ((levels & 3) == 0).all()
    # samples whose 6-bit posterize keeps bit 2 somewhere are a lower bound of the 6-bit share
    keeps_bit = ((torch.round(x * 255).long() & 4) != 0).any(dim=(1, 2, 3)).float().mean()
    assert abs(six_bit.float().mean() - 0.3 * keeps_bit) < 0.03


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", MAGNITUDE_OPS)
def test_every_op_magnitude_gets_a_finite_nonzero_gradient(gen, name):
    # skewed, low-contrast levels on 32x32 so that neither equalize nor autocontrast is the identity
    # (PIL's equalize step is 0 on tiny images; autocontrast does nothing to a full-range image)
    x = torch.round((0.2 + 0.6 * quantised(gen, (4, 3, 32, 32)) ** 2) * 255) / 255
    target = torch.rand(x.shape, generator=gen)
    magnitude = torch.full((x.shape[0],), TEST_MAGNITUDE[name], requires_grad=True)
    out = F.diff_apply_op(x, name, magnitude, dither=torch.full((x.shape[0],), 0.5))
    ((out - target) ** 2).mean().backward()
    assert torch.isfinite(magnitude.grad).all()
    assert (magnitude.grad.abs() > 0).all(), f"{name}: zero gradient for some sample: {magnitude.grad}"


@pytest.mark.parametrize("name", ["posterize", "equalize", "rotate", "sharpness", "solarize"])
def test_gradient_reaches_the_images(gen, name):
    """Straight-through ops pass gradients on, so ops earlier in a chain keep learning."""
    x = quantised(gen).requires_grad_(True)
    F.diff_apply_op(x, name, TEST_MAGNITUDE[name]).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("hard", [False, True])
def test_relaxed_augment_gives_every_logit_and_magnitude_a_gradient(gen, hard):
    k = len(F.DIFF_OP_NAMES)
    x = quantised(gen, (256 if hard else 8, 3, 12, 12))
    target = torch.rand(x.shape, generator=gen)
    logits = torch.zeros(k, requires_grad=True)
    mags = all_magnitudes().requires_grad_(True)
    out = F.relaxed_augment(x, logits, mags, ops=F.DIFF_OP_NAMES, random_sign=SIGNED, hard=hard,
                            num_layers=2, temperature=0.7, generator=gen)
    ((out - target) ** 2).mean().backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad.abs() > 0).all()
    has_mag = torch.tensor([F.OP_NEUTRAL[o] is not None for o in F.DIFF_OP_NAMES])
    assert torch.isfinite(mags.grad).all()
    assert (mags.grad[has_mag].abs() > 0).all(), dict(zip(F.DIFF_OP_NAMES, mags.grad.tolist()))
    assert (mags.grad[~has_mag] == 0).all()


def test_logit_gradient_points_away_from_a_harmful_op(gen):
    """If the loss wants the original image back, vflip (which changes it most) must be pushed down."""
    ops = ("identity", "vflip", "brightness")
    x = quantised(gen, (64, 1, 8, 8))
    logits = torch.zeros(3, requires_grad=True)
    out = F.relaxed_augment(x, logits, torch.tensor([0.0, 0.0, 1.05]), ops=ops, hard=True, generator=gen)
    ((out - x) ** 2).mean().backward()
    assert logits.grad[1] > 0 and logits.grad[1] > logits.grad[2]


# ----------------------------------------------------------------------------- relaxed vs hard, sampling


@given(
    seed=st.integers(0, 2**31 - 1),
    layers=st.integers(1, 3),
    ops=st.lists(st.sampled_from(F.DIFF_OP_NAMES), min_size=1, max_size=8, unique=True),
)
def test_hard_paths_reproduce_relaxed_forward(seed, layers, ops):
    """Grouped (CPU default) and masked (GPU default) dispatch draw the relaxed path's images."""
    gen = torch.Generator().manual_seed(seed)
    idx = [F.DIFF_OP_NAMES.index(o) for o in ops]
    x = quantised(gen, (6, 3, 11, 13))
    logits = F.randn((len(ops),), generator=gen)
    mags, signed = all_magnitudes()[idx], SIGNED[idx]
    noise = F.draw_policy_noise(layers, 6, len(ops), generator=gen)
    relaxed = F.relaxed_augment(x, logits, mags, ops=ops, random_sign=signed, num_layers=layers, noise=noise)
    hard = F.apply_sampled_ops(x, logits, mags, ops=ops, random_sign=signed, num_layers=layers, noise=noise)
    masked = F.apply_sampled_ops(x, logits, mags, ops=ops, random_sign=signed, num_layers=layers, noise=noise,
                                 dispatch="masked")
    close = ((relaxed - hard).abs() <= 1e-4) & ((masked - hard).abs() <= 1e-4)
    if layers == 1:
        assert close.all()
    else:
        # float noise of order 1e-7 from one layer can tip a later rounding boundary: posterize and
        # solarize move that pixel, equalize shifts its histogram and with it a few lut entries, and
        # each further layer carries those pixels on (and can tip more): allow 1% per extra layer
        assert close.float().mean() > 1.0 - 0.01 * (layers - 1)


def test_gumbel_max_draws_follow_the_softmax(gen):
    logits = torch.tensor([2.0, 0.0, -1.0, 0.5])
    noise = F.draw_policy_noise(1, 40_000, 4, generator=gen)
    counts = torch.bincount(F.sample_op_indices(logits, noise.gumbel[0]), minlength=4).float()
    expected = torch.softmax(logits, 0) * 40_000
    chi2 = (((counts - expected) ** 2) / expected).sum()
    assert chi2 < 16.3  # 99.9% quantile of chi-square with 3 degrees of freedom


def test_random_sign_mirrors_about_neutral(gen):
    noise = F.draw_policy_noise(1, 2000, 2, generator=gen)
    mags = F.signed_magnitudes(torch.tensor([20.0, 1.5]), noise.sign[0], torch.tensor([True, True]),
                               ("rotate", "contrast"))
    assert set(mags[:, 0].unique().tolist()) == {-20.0, 20.0}
    assert set(mags[:, 1].unique().tolist()) == {0.5, 1.5}
    assert abs((mags[:, 0] > 0).float().mean() - 0.5) < 0.05


def test_apply_sampled_ops_keeps_uint8_and_channels_last(gen):
    x = torch.randint(0, 256, (8, 3, 12, 12), dtype=torch.uint8, generator=gen)
    x = x.contiguous(memory_format=torch.channels_last)
    k = len(F.DIFF_OP_NAMES)
    out = F.apply_sampled_ops(x, torch.zeros(k), all_magnitudes(), ops=F.DIFF_OP_NAMES, random_sign=SIGNED,
                              num_layers=2, generator=gen)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_apply_sampled_ops_keeps_floating_dtypes(gen, dtype):
    x = quantised(gen, (6, 3, 10, 10))
    k = len(F.DIFF_OP_NAMES)
    args = (torch.zeros(k), all_magnitudes())
    kw = {"ops": F.DIFF_OP_NAMES, "random_sign": SIGNED, "num_layers": 2}
    noise = F.draw_policy_noise(2, 6, k, generator=gen)
    out = F.apply_sampled_ops(x.to(dtype), *args, **kw, noise=noise)
    reference = F.apply_sampled_ops(x.to(dtype).float(), *args, **kw, noise=noise)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), reference.to(dtype).float())


def test_same_generator_state_same_output(gen):
    x = quantised(gen, (8, 3, 12, 12))
    k = len(F.DIFF_OP_NAMES)
    args = (x, torch.zeros(k), all_magnitudes())
    kw = {"ops": F.DIFF_OP_NAMES, "random_sign": SIGNED, "num_layers": 2}
    a = F.apply_sampled_ops(*args, **kw, generator=torch.Generator().manual_seed(5))
    b = F.apply_sampled_ops(*args, **kw, generator=torch.Generator().manual_seed(5))
    c = F.apply_sampled_ops(*args, **kw, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_fail_loudly(gen):
    x = quantised(gen)
    with pytest.raises(TypeError, match="floating"):
        F.diff_rotate((x * 255).byte(), 10.0)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        F.diff_rotate(x, torch.zeros(3))
    with pytest.raises(ValueError, match="unknown op 'blur'"):
        F.diff_apply_op(x, "blur", 1.0)
    with pytest.raises(ValueError, match="needs a magnitude"):
        F.diff_apply_op(x, "rotate")
    with pytest.raises(ValueError, match="op_logits"):
        F.relaxed_augment(x, torch.zeros(2), torch.zeros(3), ops=("identity", "hflip", "rotate"))
    with pytest.raises(ValueError, match="repeat"):
        F.relaxed_augment(x, torch.zeros(2), torch.zeros(2), ops=("hflip", "hflip"))
    with pytest.raises(ValueError, match="noise was drawn"):
        F.relaxed_augment(x, torch.zeros(2), torch.zeros(2), ops=("identity", "hflip"),
                          noise=F.draw_policy_noise(1, 3, 2, generator=gen))
    with pytest.raises(ValueError, match="dispatch"):
        F.apply_sampled_ops(x, torch.zeros(2), torch.zeros(2), ops=("identity", "hflip"), dispatch="fast")
    with pytest.raises(ValueError, match="temperature"):
        F.relaxed_one_hot(torch.zeros(2), torch.zeros(4, 2), temperature=0.0)
