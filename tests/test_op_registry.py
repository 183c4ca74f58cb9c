"""The op registry and the dispatcher's two strategies: derived tables, C ids, one convention for the
policy ops and their differentiable twins, and the same bytes from both strategies."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import taxaug.functional as F
from taxaug import _native
from taxaug.algorithms.learned import FixedPolicy, OpSpec
from taxaug.functional import registry
from taxaug.functional.dispatch import _dispatch
from taxaug.transforms import ColorJitter

# ----------------------------------------------------------------------------- the tables


def test_every_table_is_derived_from_the_records():
    ops = registry.OPS
    assert registry.OP_NAMES == tuple(ops) == F.OP_NAMES
    assert tuple(n for n in ops if ops[n].diff is not None) == F.DIFF_OP_NAMES
    assert {n: ops[n].neutral for n in F.DIFF_OP_NAMES} == F.OP_NEUTRAL
    assert registry.jitter_neutral() == tuple(ops[n].neutral for n in registry.JITTER_OPS)
    for name, op in ops.items():
        assert (op.affine is not None) == (op.family == "geometric"), name
        assert (op.degenerate is not None) == (op.family == "enhance"), name
        if op.has_magnitude:
            low, high = op.valid
            assert low <= op.neutral <= high, name
            if op.bounds is not None:
                assert low <= op.bounds[0] < op.bounds[1] <= high, name


@pytest.mark.skipif(not _native.available(), reason="the C kernels are not built")
def test_c_ids_are_the_librarys_and_each_runs_its_records_op():
    assert {n for n, op in registry.OPS.items() if op.native} == set(_native.POINTWISE_OPS)
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (3, 3, 9, 11), dtype=torch.uint8, generator=gen)
    values = {"posterize": 3.0, "solarize": 100.0, "hue": 0.2}
    for name, op_id in _native.POINTWISE_OPS.items():
        assert registry.OPS[name].c_id == op_id
        for batch in (x, x.float() / 255):
            if not _native.pointwise_applies(name, batch, batch, torch.full((3,), values.get(name, 1.4))):
                continue
            value = torch.full((3,), values.get(name, 1.4), dtype=torch.float64)
            out = torch.empty_like(batch)
            _native.pointwise(name, batch, torch.arange(3), value, out)
            assert torch.equal(out, registry.OPS[name].kernel(batch, value)), (name, batch.dtype)


def test_a_library_that_disagrees_with_the_records_is_refused():
    if not _native.available():
        pytest.skip("the C kernels are not built")
    with pytest.raises(ImportError, match="rebuild the kernels"):
        _native.check_pointwise_ops([*_native.POINTWISE_OPS, "new_op"])


def test_a_bad_strategy_is_a_one_line_error_naming_the_variable():
    code = "import torch, taxaug.functional as F; F.rand_augment(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))"
    env = {**os.environ, "TAXAUG_DEVICE_STRATEGY": "gpu"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert "TAXAUG_DEVICE_STRATEGY" in last and "'gpu'" in last and "accelerator" in last


# ----------------------------------------------------------------------------- one convention


def _quantised(seed: int, shape=(4, 3, 17, 23)) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed)).float() / 255


# per op: a magnitude, the policy op's call, and the largest difference allowed between the
# differentiable op and the policy op on float images (geometric: bilinear zero-fill warps, which
# sample the same points; the rest run the policy kernel itself)
TWINS = {
    "rotate": (17.0, lambda x, m: F.rotate(x, m, interpolation="bilinear"), 1e-5),
    "translate_x": (2.5, lambda x, m: F.translate_x(x, m, interpolation="bilinear"), 1e-5),
    "translate_y": (-1.5, lambda x, m: F.translate_y(x, m, interpolation="bilinear"), 1e-5),
    "shear_x": (0.2, lambda x, m: F.shear_x(x, m, interpolation="bilinear"), 1e-5),
    "shear_y": (-0.15, lambda x, m: F.shear_y(x, m, interpolation="bilinear"), 1e-5),
    "brightness": (1.4, F.brightness, 0.0),
    "color": (0.6, F.color, 0.0),
    "contrast": (1.5, F.contrast, 0.0),
    "sharpness": (1.7, F.sharpness, 0.0),
    "posterize": (5.0, F.posterize, 0.0),
    "solarize": (120.0, F.solarize, 0.0),
    "equalize": (1.0, lambda x, m: F.equalize(x), 1e-7),
    "autocontrast": (1.0, lambda x, m: F.autocontrast(x), 1e-7),
    "hflip": (None, lambda x, m: F.hflip(x), 0.0),
    "vflip": (None, lambda x, m: x.flip(-2), 0.0),
    "identity": (None, lambda x, m: x, 0.0),
}


def test_every_learned_op_has_a_twin_check():
    assert set(TWINS) == set(F.DIFF_OP_NAMES)


@pytest.mark.parametrize("name", sorted(TWINS))
def test_differentiable_op_equals_its_policy_op(name):
    magnitude, policy_op, tolerance = TWINS[name]
    x = _quantised(1)
    out = F.diff_apply_op(x, name, magnitude)
    assert (out - policy_op(x, magnitude)).abs().max().item() <= tolerance


@pytest.mark.parametrize("name", ["brightness", "color", "contrast", "sharpness", "posterize", "solarize"])
def test_differentiable_op_is_the_uint8_policy_op_within_one_and_a_half_levels(name):
    """uint8 truncates the blend (Pillow) and blends with the rounded grey level: up to ~1.2 levels apart."""
    magnitude = TWINS[name][0]
    x8 = (_quantised(2) * 255).round().to(torch.uint8)
    out = F.diff_apply_op(x8.float() / 255, name, magnitude) * 255
    assert (out - getattr(F, name)(x8, magnitude).float()).abs().max().item() <= 1.5


@pytest.mark.parametrize("name", ["brightness", "solarize", "shear_x", "rotate"])
def test_an_exported_policy_runs_the_registrys_op(name):
    magnitude, policy_op, tolerance = TWINS[name]
    low, high = sorted((magnitude, registry.OPS[name].neutral))
    spec = OpSpec.from_dict(name, {"min": low, "max": high, "random_sign": False})
    fixed = FixedPolicy(ops=(spec,), probabilities=(1.0,), magnitudes=(magnitude,), num_layers=1)
    x = _quantised(4)
    out = fixed(x, generator=torch.Generator().manual_seed(0))
    assert (out - policy_op(x, magnitude)).abs().max().item() <= max(tolerance, 1e-6)


# ----------------------------------------------------------------------------- two strategies, same bytes


POLICIES = {
    "auto_augment": lambda x, g: F.auto_augment(x, "imagenet", generator=g, fill=(10, 20, 30)[: x.shape[1]]),
    "rand_augment": lambda x, g: F.rand_augment(x, 2, 13, generator=g),
    "trivial_augment_wide": lambda x, g: F.trivial_augment_wide(x, generator=g),
    "augmix": lambda x, g: F.augmix(x, generator=g),
    "color_jitter": lambda x, g: ColorJitter(0.4, 0.4, 0.4, 0.1, generator=g)(x),
    "random_erasing": lambda x, g: F.random_erasing(x, p=0.8, count=2, value=(9, 99, 199)[: x.shape[1]], generator=g),
}


@settings(deadline=None)
@given(policy=st.sampled_from(sorted(POLICIES)), seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 9),
       channels=st.sampled_from([1, 3]), height=st.integers(3, 20), width=st.integers(3, 20))
def test_both_strategies_give_the_same_bytes_for_uint8_policies(policy, seed, batch, channels, height, width):
    x = torch.randint(0, 256, (batch, channels, height, width), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(seed))
    outs = {}
    for name in ("cpu", "accelerator"):
        with _native.forced_strategy(name):
            outs[name] = POLICIES[policy](x, torch.Generator().manual_seed(seed))
    assert torch.equal(outs["cpu"], outs["accelerator"])


@settings(deadline=None)
@given(seed=st.integers(0, 2**31 - 1), ops=st.lists(st.sampled_from(F.OP_NAMES), min_size=1, max_size=8, unique=True),
       dtype=st.sampled_from([torch.uint8, torch.float32]))
def test_both_strategies_run_every_op_alike(seed, ops, dtype):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (7, 3, 10, 13), dtype=torch.uint8, generator=gen)
    x = x if dtype == torch.uint8 else x.float() / 255
    op = torch.randint(0, len(ops), (7,), generator=gen)
    value = torch.tensor([{"posterize": 3.0, "solarize": 99.5, "hue": 0.3, "solarize_add": 40.0}.get(ops[k], 0.7)
                          for k in op.tolist()], dtype=torch.float64)
    fill = (5, 6, 7) if dtype == torch.uint8 else (0.1, 0.2, 0.3)
    cpu = _dispatch(x, op, value, ops, fill, "nearest", strategy="cpu")
    accelerator = _dispatch(x, op, value, ops, fill, "nearest", strategy="accelerator")
    assert torch.equal(cpu, accelerator)


@settings(deadline=None)
@given(seed=st.integers(0, 2**31 - 1), layers=st.integers(1, 3),
       ops=st.lists(st.sampled_from(F.DIFF_OP_NAMES), min_size=1, max_size=8, unique=True))
def test_both_strategies_give_the_same_learned_draws(seed, layers, ops):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (6, 3, 11, 13), dtype=torch.uint8, generator=gen)
    logits = torch.randn(len(ops), generator=gen)
    magnitudes = torch.tensor([TWINS[o][0] or 0.0 for o in ops]) * 0.7 + 0.1
    noise = F.draw_policy_noise(layers, 6, len(ops), generator=gen)
    grouped = F.apply_sampled_ops(x, logits, magnitudes, ops=ops, num_layers=layers, noise=noise, dispatch="grouped")
    masked = F.apply_sampled_ops(x, logits, magnitudes, ops=ops, num_layers=layers, noise=noise, dispatch="masked")
    assert torch.equal(grouped, masked)
