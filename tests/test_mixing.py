"""Selective Mixup/CutMix and their group-agnostic forms: taxonomy invariants, exact semantics, bad inputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from taxaug import MixBatch
from taxaug import functional as F
from tests.strategies import RANKS, images_for, lineage_batches

lams = st.floats(0.0, 1.0)
image_dtypes = st.sampled_from([torch.uint8, torch.float32, torch.float16, torch.bfloat16, torch.float64])


def _mix(kind, batch, groups, lam, num_classes, seed, **kw):
    gen = torch.Generator().manual_seed(seed)
    fn = F.selective_mixup if kind == "mixup" else F.selective_cutmix
    return fn(batch, groups, lam, num_classes=num_classes, generator=gen, **kw)


@given(lineage_batches(null_ratio=True), st.sampled_from(RANKS), st.sampled_from(["mixup", "cutmix"]), lams,
       st.booleans(), st.integers(0, 10_000))
def test_mixed_targets_stay_in_the_taxonomy(data, group_rank, kind, lam, per_sample_lam, seed):
    taxonomy, targets = data
    size = targets[RANKS[0]].shape[0]
    groups = F.exclude_null_samples(targets[group_rank].clone(), targets)
    if per_sample_lam:
        lam = torch.rand(size, generator=torch.Generator().manual_seed(seed))
    batch = MixBatch(images_for(size, torch.float32, seed), targets)
    result = _mix(kind, batch, groups, lam, taxonomy.num_classes, seed)
    mixed = result.batch.targets
    # hierarchy consistency: targets[k+1] == targets[k] @ A[k->k+1]
    assert taxonomy.consistency_error(mixed) < 1e-5
    for rank in RANKS:
        assert torch.allclose(mixed[rank].sum(1), torch.ones(size), atol=1e-5)
    # ranks at or above the grouping rank stay one-hot and unchanged
    for rank in RANKS[RANKS.index(group_rank):]:
        expected = torch.nn.functional.one_hot(targets[rank], taxonomy.num_classes[rank]).float()
        assert torch.equal(mixed[rank], expected)
    # partners share the group; unmixed samples are untouched with lam 1
    perm = result.perm
    moved = perm != torch.arange(size)
    assert torch.equal(groups[perm][moved], groups[moved])
    assert bool((groups[moved] >= 0).all())
    assert torch.equal(result.lam[~moved], torch.ones(int((~moved).sum())))
    assert torch.equal(result.batch.images[~moved], batch.images[~moved])


@given(st.integers(2, 10), st.integers(3, 17), st.integers(3, 17), lams, st.booleans(), st.booleans(),
       st.integers(0, 10_000))
def test_cutmix_lam_is_exact_pixel_fraction(size, height, width, lam, per_sample, use_minmax, seed):
    x = torch.arange(size * height * width, dtype=torch.float32).reshape(size, 1, height, width)
    targets = {"y": torch.zeros(size, dtype=torch.long)}
    result = F.selective_cutmix(MixBatch(x, targets), torch.zeros(size, dtype=torch.long), lam,
                                per_sample_boxes=per_sample, minmax=(0.2, 0.8) if use_minmax else None,
                                num_classes=1, generator=torch.Generator().manual_seed(seed))
    # every pixel value is unique to its sample, so equality counts the pixels kept
    own = (result.batch.images == x).flatten(1).double().sum(1) / (height * width)
    assert float((result.lam.double() - own).abs().max()) <= 1e-7
    y1, x1, y2, x2 = result.boxes.unbind(1)
    assert bool(((y1 >= 0) & (y1 <= y2) & (y2 <= height) & (x1 >= 0) & (x1 <= x2) & (x2 <= width)).all())
    if not per_sample:
        moved = result.perm != torch.arange(size)
        assert len({tuple(b) for b in result.boxes[moved].tolist()}) <= 1


@given(lineage_batches(), st.sampled_from(["mixup", "cutmix"]), image_dtypes, st.booleans(), lams,
       st.integers(0, 10_000))
def test_dtype_layout_seed_and_no_mutation(data, kind, dtype, channels_last, lam, seed):
    taxonomy, targets = data
    size = targets[RANKS[0]].shape[0]
    x = images_for(size, dtype, seed, channels_last)
    aux = torch.rand(size, 5, generator=torch.Generator().manual_seed(seed))
    mask = torch.rand(size, 2, generator=torch.Generator().manual_seed(seed + 1)) > 0.3
    batch = MixBatch(x, targets, aux=aux, aux_mask=mask)
    snapshot = (x.clone(), {k: v.clone() for k, v in targets.items()}, aux.clone(), mask.clone())
    groups = targets[RANKS[1]].clone()
    first = _mix(kind, batch, groups, lam, taxonomy.num_classes, seed, aux_chunks=[(0, 3), (3, 5)])
    second = _mix(kind, batch, groups, lam, taxonomy.num_classes, seed, aux_chunks=[(0, 3), (3, 5)])
    out = first.batch.images
    assert out.dtype == dtype and out.shape == x.shape
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(out, second.batch.images) and torch.equal(first.perm, second.perm)
    assert torch.equal(first.batch.aux, second.batch.aux)
    assert torch.equal(x, snapshot[0]) and torch.equal(aux, snapshot[2]) and torch.equal(mask, snapshot[3])
    assert all(torch.equal(targets[k], snapshot[1][k]) for k in targets)


@given(st.integers(2, 8), lams, st.integers(0, 10_000))
def test_uint8_and_float_mixup_agree_within_rounding(size, lam, seed):
    x8 = images_for(size, torch.uint8, seed)
    groups = torch.zeros(size, dtype=torch.long)
    targets = {"y": torch.zeros(size, dtype=torch.long)}
    a = _mix("mixup", MixBatch(x8, targets), groups, lam, 1, seed).batch.images
    b = _mix("mixup", MixBatch(x8.float() / 255, targets), groups, lam, 1, seed).batch.images
    assert (a.float() - b * 255).abs().max() <= 0.5 + 1e-3


def test_mixup_example_hand_computed():
    x = torch.tensor([0.0, 10.0, 20.0, 30.0]).view(4, 1, 1, 1)
    targets = {"s": torch.tensor([1, 2, 3, 3]), "g": torch.tensor([1, 1, 2, 2])}
    perm = torch.tensor([1, 0, 2, 3])  # 0 and 1 swap; 2 and 3 stay
    result = F.selective_mixup(MixBatch(x, targets), targets["g"], torch.tensor([0.75, 0.5, 0.1, 0.9]), perm=perm,
                               num_classes={"s": 4, "g": 3})
    assert result.batch.images.flatten().tolist() == [2.5, 5.0, 20.0, 30.0]
    assert result.lam.tolist() == [0.75, 0.5, 1.0, 1.0]
    assert result.batch.targets["s"].tolist() == [[0, 0.75, 0.25, 0], [0, 0.5, 0.5, 0], [0, 0, 0, 1], [0, 0, 0, 1]]
    assert result.batch.targets["g"].tolist() == [[0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]]


def test_mixup_uint8_rounds_to_nearest():
    x = torch.tensor([0, 101], dtype=torch.uint8).view(2, 1, 1, 1)
    result = F.selective_mixup(MixBatch(x, {}), torch.zeros(2, dtype=torch.long), 0.3)
    assert result.batch.images.flatten().tolist() == [71, 30]  # 70.7 and 30.3


def test_cutmix_example_box_and_lam():
    x = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
    targets = {"y": torch.tensor([0, 1])}
    result = F.selective_cutmix(MixBatch(x, targets), torch.zeros(2, dtype=torch.long), 0.75,
                                num_classes=2, generator=torch.Generator().manual_seed(0))
    for i, (y1, x1, y2, x2) in enumerate(result.boxes.tolist()):
        inside = torch.zeros(4, 4, dtype=torch.bool)
        inside[y1:y2, x1:x2] = True
        own_value, other = float(i), float(1 - i)
        assert bool((result.batch.images[i, 0][inside] == other).all())
        assert bool((result.batch.images[i, 0][~inside] == own_value).all())
        assert result.lam[i] == 1 - inside.float().mean()
        # target weight follows the exact kept fraction
        assert torch.allclose(result.batch.targets["y"][i, i], result.lam[i])


def test_mixup_batch_is_group_agnostic_and_deranged():
    x = torch.rand(6, 3, 4, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    xm, ym, lam, perm = F.mixup_batch(x, y, alpha=1.0, num_classes=3, generator=torch.Generator().manual_seed(1))
    assert bool((perm != torch.arange(6)).all())
    assert torch.allclose(xm, lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[perm], atol=1e-6)
    assert torch.allclose(ym.sum(1), torch.ones(6)) and lam.shape == (6,)


def test_alpha_zero_is_a_no_op():
    x = torch.rand(4, 3, 5, 5)
    y = torch.tensor([0, 1, 2, 1])
    for fn in (F.mixup_batch, F.cutmix_batch):
        out = fn(x, y, alpha=0.0, num_classes=3)
        assert torch.equal(out[0], x) and out[0] is not x
        assert torch.equal(out[1], torch.nn.functional.one_hot(y, 3).float())
        assert torch.equal(out[2], torch.ones(4)) and torch.equal(out[-1], torch.arange(4))


def test_cutmix_batch_dict_targets_and_boxes():
    x = torch.rand(5, 3, 8, 8)
    y = {"a": torch.tensor([0, 1, 2, 0, 1]), "b": torch.tensor([1, 1, 0, 1, 0])}
    _xm, ym, lam, boxes, perm = F.cutmix_batch(x, y, num_classes={"a": 3, "b": 2},
                                              generator=torch.Generator().manual_seed(2))
    assert set(ym) == {"a", "b"} and boxes.shape == (5, 4)
    for i in range(5):
        expected = lam[i] * torch.nn.functional.one_hot(y["a"][i], 3) + (1 - lam[i]) * torch.nn.functional.one_hot(
            y["a"][perm[i]], 3)
        assert torch.allclose(ym["a"][i], expected.float())


def test_out_buffer_form_matches():
    x = torch.rand(6, 3, 8, 8)
    groups = torch.tensor([0, 0, 1, 1, 1, -1])
    out = torch.empty_like(x)
    a = F.selective_mixup(MixBatch(x, {}), groups, 0.4, generator=torch.Generator().manual_seed(5), out=out)
    b = F.selective_mixup(MixBatch(x, {}), groups, 0.4, generator=torch.Generator().manual_seed(5))
    assert a.batch.images is out and torch.equal(out, b.batch.images)


# ---------------------------------------------------------------------------------------------- bad inputs


def _batch(size=4):
    return MixBatch(torch.rand(size, 3, 4, 4), {"y": torch.zeros(size, dtype=torch.long)})


@pytest.mark.parametrize("fn", [F.selective_mixup, F.selective_cutmix])
def test_batch_size_disagreement(fn):
    with pytest.raises(ValueError, match="group_ids has 3 entries but the batch has 4"):
        fn(_batch(4), torch.zeros(3, dtype=torch.long), 0.5, num_classes=1)


@pytest.mark.parametrize("fn", [F.selective_mixup, F.selective_cutmix])
@pytest.mark.parametrize(("groups", "error", "match"), [
    (torch.zeros(4, dtype=torch.int32), TypeError, "group_ids must be a long"),
    (torch.zeros(4, 1, dtype=torch.long), ValueError, "group_ids must be 1-D"),
])
def test_bad_group_ids(fn, groups, error, match):
    with pytest.raises(error, match=match):
        fn(_batch(4), groups, 0.5, num_classes=1)


@pytest.mark.parametrize("lam", [-0.1, 1.5, torch.tensor([0.5, 0.5, 2.0, 0.5])])
@pytest.mark.parametrize("fn", [F.selective_mixup, F.selective_cutmix])
def test_lam_outside_unit_interval(fn, lam):
    with pytest.raises(ValueError, match="lam must"):
        fn(_batch(4), torch.zeros(4, dtype=torch.long), lam, num_classes=1)


def test_lam_tensor_of_wrong_length():
    with pytest.raises(ValueError, match=r"lam must be a float or a tensor of shape \(4,\)"):
        F.selective_mixup(_batch(4), torch.zeros(4, dtype=torch.long), torch.ones(3), num_classes=1)


@pytest.mark.parametrize("fn", [F.mixup_batch, F.cutmix_batch])
def test_negative_alpha(fn):
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        fn(torch.rand(2, 3, 4, 4), torch.tensor([0, 1]), alpha=-1.0, num_classes=2)


def test_beta_draw_needs_positive_alpha():
    with pytest.raises(ValueError, match="alpha must be > 0"):
        F.sample_beta(0.0, shape=(2,))


def test_target_index_out_of_range():
    batch = MixBatch(torch.rand(2, 3, 4, 4), {"taxa_L10": torch.tensor([1, 5])})
    with pytest.raises(ValueError, match=r"targets\['taxa_L10'\] holds class index 5 outside \[0, 3\)"):
        F.selective_mixup(batch, torch.zeros(2, dtype=torch.long), 0.5, num_classes={"taxa_L10": 3})


def test_index_targets_need_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        F.selective_mixup(_batch(2), torch.zeros(2, dtype=torch.long), 0.5)


def test_batch_box_refuses_per_sample_lam():
    with pytest.raises(ValueError, match="per_sample_boxes=False"):
        F.selective_cutmix(_batch(4), torch.zeros(4, dtype=torch.long), torch.full((4,), 0.5),
                           per_sample_boxes=False, num_classes=1)


@pytest.mark.parametrize("minmax", [(0.8, 0.2), (-0.1, 0.5), (0.2, 1.5)])
def test_bad_minmax(minmax):
    with pytest.raises(ValueError, match="minmax"):
        F.selective_cutmix(_batch(4), torch.zeros(4, dtype=torch.long), 0.5, minmax=minmax, num_classes=1)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"images": torch.rand(4, 4, 4)}, "images must have shape"),
    ({"images": torch.zeros(2, 3, 4, 4, dtype=torch.int32)}, "images must be uint8 or floating"),
    ({"targets": {"y": torch.zeros(3, dtype=torch.long)}}, "batch size 3"),
    ({"aux": torch.rand(3, 2)}, "aux must be floating"),
    ({"aux": torch.rand(2, 2), "aux_mask": torch.ones(2, 2)}, "aux_mask must be bool"),
])
def test_mixbatch_validation(kwargs, match):
    fields = {"images": torch.rand(2, 3, 4, 4), "targets": {}} | kwargs
    with pytest.raises((TypeError, ValueError), match=match):
        MixBatch(**fields)


def test_out_buffer_must_match():
    with pytest.raises(ValueError, match="out must match"):
        F.selective_mixup(_batch(2), torch.zeros(2, dtype=torch.long), 0.5, num_classes=1,
                          out=torch.empty(2, 3, 4, 5))


@pytest.mark.cuda
def test_cuda_matches_cpu_with_cpu_generator():
    x = torch.rand(8, 3, 16, 16)
    targets = {"y": torch.tensor([1, 2, 1, 2, 1, 2, 1, 2])}
    groups = targets["y"].clone()
    for fn in (F.selective_mixup, F.selective_cutmix):
        cpu = fn(MixBatch(x, targets), groups, 0.6, num_classes=3, generator=torch.Generator().manual_seed(0))
        gpu = fn(MixBatch(x, targets).to("cuda"), groups.cuda(), 0.6, num_classes=3,
                 generator=torch.Generator().manual_seed(0))
        assert gpu.batch.images.is_cuda
        assert torch.allclose(gpu.batch.images.cpu(), cpu.batch.images, atol=1e-6)
        assert torch.equal(gpu.perm.cpu(), cpu.perm)


@given(st.integers(2, 9), image_dtypes, st.booleans(), st.booleans(), lams, st.integers(0, 10_000))
def test_cutmix_matches_a_per_sample_reference(size, dtype, channels_last, per_sample, lam, seed):
    x = images_for(size, dtype, seed, channels_last, hw=(13, 10))
    groups = torch.tensor([i % 3 for i in range(size)])
    result = F.selective_cutmix(MixBatch(x, {}), groups, lam, per_sample_boxes=per_sample,
                                generator=torch.Generator().manual_seed(seed))
    expected = x.clone()
    for i, (y1, x1, y2, x2) in enumerate(result.boxes.tolist()):
        expected[i, :, y1:y2, x1:x2] = x[result.perm[i], :, y1:y2, x1:x2]
    assert torch.equal(result.batch.images, expected)


@given(st.integers(2, 9), image_dtypes, st.booleans(), st.integers(0, 10_000))
def test_mixup_matches_a_float64_reference(size, dtype, channels_last, seed):
    x = images_for(size, dtype, seed, channels_last)
    lam = torch.rand(size, generator=torch.Generator().manual_seed(seed))
    groups = torch.tensor([i % 2 for i in range(size)])
    result = F.selective_mixup(MixBatch(x, {}), groups, lam, generator=torch.Generator().manual_seed(seed))
    w = result.lam.double().view(-1, 1, 1, 1)
    reference = w * x.double() + (1 - w) * x[result.perm].double()
    if dtype == torch.uint8:
        assert (result.batch.images.double() - reference).abs().max() <= 0.5 + 1e-3
    else:
        tolerance = {torch.float16: 1e-3, torch.bfloat16: 8e-3}.get(dtype, 1e-6)
        assert torch.allclose(result.batch.images.double(), reference, atol=tolerance)


def _mix_batch(size: int = 8, seed: int = 0) -> MixBatch:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (size, 3, 6, 6), generator=g, dtype=torch.uint8)
    targets = {"a": torch.randint(1, 4, (size,), generator=g), "b": torch.randint(0, 2, (size,), generator=g)}
    aux = torch.rand(size, 3, generator=g)
    return MixBatch(images, targets, aux=aux, aux_mask=torch.rand(size, 2, generator=g) > 0.3)


def _same_result(a, b) -> None:
    assert torch.equal(a.perm, b.perm) and torch.equal(a.lam, b.lam)
    assert torch.equal(a.batch.images, b.batch.images) and torch.equal(a.batch.aux, b.batch.aux)
    assert torch.equal(a.batch.aux_mask, b.batch.aux_mask)
    assert (a.boxes is None) == (b.boxes is None)
    assert a.boxes is None or torch.equal(a.boxes, b.boxes)
    for k in a.batch.targets:
        assert torch.equal(a.batch.targets[k], b.batch.targets[k])


@given(seed=st.integers(0, 50), switch=st.sampled_from([0.0, 0.5, 1.0]), per_sample_lam=st.booleans(),
       per_sample_boxes=st.booleans())
def test_mix_takes_the_draws_of_selective_mix_with_one_group(seed, switch, per_sample_lam, per_sample_boxes):
    batch = _mix_batch(seed=seed)
    one_group = torch.zeros(8, dtype=torch.long)
    kw = dict(switch_prob=switch, per_sample_lam=per_sample_lam, per_sample_boxes=per_sample_boxes,
              aux_chunks=[(0, 2), (2, 3)], num_classes={"a": 4, "b": 2})
    a = F.mix(batch, generator=torch.Generator().manual_seed(seed), **kw)
    b = F.selective_mix(batch, one_group, generator=torch.Generator().manual_seed(seed), **kw)
    _same_result(a, b)
    assert bool(a.mixed.all())  # one group of 8: everybody has a partner


def test_mix_reads_only_the_unknown_entries_of_group_ids():
    batch = _mix_batch()
    groups = torch.tensor([3, 3, 5, -1, 5, 9, -1, 9])
    a = F.mix(batch, groups, switch_prob=0.0, num_classes={"a": 4, "b": 2}, generator=torch.Generator().manual_seed(1))
    ref_ids = torch.where(groups < 0, groups, torch.zeros_like(groups))
    b = F.selective_mix(batch, ref_ids, switch_prob=0.0, num_classes={"a": 4, "b": 2},
                        generator=torch.Generator().manual_seed(1))
    _same_result(a, b)
    assert a.perm[3] == 3 and a.perm[6] == 6 and a.lam[3] == 1 and a.lam[6] == 1


@pytest.mark.parametrize("per_sample_lam", [False, True])
@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_plain_forms_follow_the_documented_draw_order(kind, per_sample_lam):
    """mixup_batch / cutmix_batch: permutation, then lam (one or B Beta draws), then the mix itself."""
    batch = _mix_batch(seed=3)
    gen = torch.Generator().manual_seed(7)
    if kind == "mixup":
        x, y, lam, perm = F.mixup_batch(batch.images, batch.targets, num_classes={"a": 4, "b": 2},
                                        per_sample_lam=per_sample_lam, generator=gen)
        alpha = 0.8  # the selective default
    else:
        x, y, lam, _boxes, perm = F.cutmix_batch(batch.images, batch.targets, num_classes={"a": 4, "b": 2},
                                                 per_sample_lam=per_sample_lam, generator=gen)
        alpha = 1.0
    ref = torch.Generator().manual_seed(7)
    zeros = torch.zeros(8, dtype=torch.long)
    ref_perm = F.ingroup_permutation(zeros, generator=ref)
    draws = F.sample_beta(alpha, shape=(8 if per_sample_lam else 1,), generator=ref)
    ref_lam = draws if per_sample_lam else float(draws[0])
    fn = F.selective_mixup if kind == "mixup" else F.selective_cutmix
    expected = fn(MixBatch(batch.images, batch.targets), zeros, ref_lam, perm=ref_perm,
                  num_classes={"a": 4, "b": 2}, generator=ref)
    assert torch.equal(perm, ref_perm) and torch.equal(x, expected.batch.images)
    assert torch.equal(lam, expected.lam) and torch.equal(y["a"], expected.batch.targets["a"])
    if kind == "mixup":
        assert (lam.unique().numel() == 1) != per_sample_lam


def test_mix_alpha_zero_for_the_drawn_op_leaves_the_batch():
    batch = _mix_batch()
    result = F.mix(batch, cutmix_alpha=0.0, switch_prob=1.0, num_classes={"a": 4, "b": 2})
    assert torch.equal(result.batch.images, batch.images) and result.batch.images is not batch.images
    assert torch.equal(result.boxes, torch.zeros(8, 4, dtype=torch.long)) and not bool(result.mixed.any())
    assert torch.equal(result.batch.targets["a"], torch.nn.functional.one_hot(batch.targets["a"], 4).float())


def test_mix_algorithm_is_selective_mix_with_one_word_changed():
    from taxaug.algorithms import Engine, Event, State, create

    def run(name, targets):
        images = torch.randint(0, 256, (8, 3, 6, 6), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
        state = State(num_classes={"a": 4, "b": 2}, batch=MixBatch(images, targets))
        Engine([create(name, group_levels="a", switch_prob=0.5, per_sample_lam=True)], seed=3).run(
            Event.AFTER_DATALOADER, state)
        return state
    one_group = {"a": torch.full((8,), 2), "b": torch.tensor([1, 0, 1, 1, 1, 1, 0, 1])}
    a, b = run("mix", one_group), run("selective_mix", one_group)
    assert torch.equal(a.batch.images, b.batch.images)
    assert all(torch.equal(a.batch.targets[k], b.batch.targets[k]) for k in one_group)
    # With several groups in the batch `mix` pairs across them; null samples ("b" == 0) stay unmixed in both.
    many = {"a": torch.tensor([1, 1, 2, 2, 3, 3, 1, 2]), "b": one_group["b"]}
    perm = run("mix", many).scratch["0.mix"]["perm"]
    assert perm[1] == 1 and perm[6] == 6
    assert bool((many["a"][perm] != many["a"]).any())
