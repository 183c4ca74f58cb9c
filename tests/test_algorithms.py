"""Exact semantics of the built-in algorithms: probability, levels, nulls, metadata, loss interpolation,
smoothing and where image augmentations run."""

from __future__ import annotations

import pytest
import torch
from algorithm_harness import (
    AUX_COMPONENTS,
    L10,
    L20,
    NUM_CLASSES,
    make_batch,
    make_state,
    per_sample_loss,
    run_step,
    run_steps,
    single_thread,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from taxaug import functional as F
from taxaug.algorithms import Engine, Event, State, create

_single_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


def mix_once(algorithm, batch=None, *, step=0, epoch=0, state=None):
    state = state or make_state(max_steps=100)
    state.step, state.epoch = step, epoch
    state.batch = make_batch(0) if batch is None else batch
    Engine([algorithm], seed=0).run(Event.AFTER_DATALOADER, state)
    return state


def test_probability_is_drawn_once_per_batch():
    algorithm = create("selective_mixup", prob=0.5)
    engine = Engine([algorithm], seed=3)
    state = make_state(max_steps=1000)
    batch = make_batch(0)
    mixed = 0
    for step in range(200):
        state.step, state.batch = step, batch
        engine.run(Event.AFTER_DATALOADER, state)
        info = state.scratch[algorithm.key]
        mixed += info["mixed"]
        if info["mixed"]:  # every eligible pair of a mixed batch is mixed: no second probability inside
            assert bool((info["perm"] != torch.arange(8)).sum() == 6)
    assert 75 <= mixed <= 125, f"p=0.5 mixed {mixed}/200 batches (p^2 would give ~50)"
    assert algorithm.mixed_batches == mixed


def test_probability_schedule_is_followed_exactly_at_its_ends():
    algorithm = create("selective_cutmix", prob={"kind": "linear", "start": 1.0, "end": 0.0, "end_steps": 10})
    engine = Engine([algorithm], seed=0)
    state = make_state(max_steps=100)
    decisions = []
    for step in [0, 10, 11, 50]:
        state.step, state.batch = step, make_batch(step)
        engine.run(Event.AFTER_DATALOADER, state)
        decisions.append(state.scratch[algorithm.key]["mixed"])
        assert state.scratch[algorithm.key]["prob"] == pytest.approx(max(0.0, 1 - step / 10))
    assert decisions == [True, False, False, False]


def test_level_switching_by_steps_and_epochs():
    by_steps = create("selective_mixup", group_levels=[L10, L20], level_switch_steps=[3])
    by_epochs = create("selective_mixup", group_levels=[L10, L20], level_switch_epochs=[1])
    state = State()
    assert [by_steps.level_at(State(step=s)) for s in (0, 2, 3, 100)] == [L10, L10, L20, L20]
    assert [by_epochs.level_at(State(epoch=e, step=99)) for e in (0, 1, 5)] == [L10, L20, L20]
    engine = Engine([by_steps], seed=0)
    state = make_state(max_steps=10)
    levels = []
    for step in range(5):
        state.step, state.batch = step, make_batch(step)
        engine.run(Event.AFTER_DATALOADER, state)
        info = state.scratch[by_steps.key]
        levels.append(info["level"])
        species, genus = make_batch(step).targets[L10], make_batch(step).targets[L20]
        perm = info["perm"]
        group = species if info["level"] == L10 else genus
        assert torch.equal(group[perm], group), "a partner from another group at the active level"
        if info["level"] == L20:
            assert bool((species[perm] != species).any()), "genus grouping never paired two species"
    assert levels == [L10, L10, L10, L20, L20]


@pytest.mark.parametrize("name", ["selective_mixup", "selective_cutmix", "selective_mix"])
@pytest.mark.parametrize("level", [L10, L20])
def test_selective_mixing_keeps_lineages_consistent(name, level):
    state = make_state()
    taxonomy = state.taxonomy
    engine = Engine([create(name, group_levels=[level])], seed=1)
    for step, produced in enumerate(run_steps(engine, state, [make_batch(i) for i in range(4)])):
        targets = produced["batch"].targets
        assert taxonomy.consistency_error(targets) < 1e-6
        for t in targets.values():
            assert torch.allclose(t.sum(dim=1), torch.ones(8))
        original = make_batch(step).targets
        # ranks at or above the grouping level stay one-hot and unchanged
        for rank in [L10, L20][[L10, L20].index(level):]:
            assert torch.equal(targets[rank], F.to_dense_targets(original, NUM_CLASSES)[rank])


def test_null_samples_are_never_mixed_and_small_groups_are_left_alone():
    batch = make_batch(0)
    null = batch.targets[L10] == 0
    state = mix_once(create("selective_mixup"), batch)
    perm = state.scratch["0.selective_mixup"]["perm"]
    assert torch.equal(perm[null], torch.nonzero(null).flatten())
    assert torch.equal(state.batch.images[null], batch.images[null])
    # every species appears twice, so a minimum group size of 3 mixes nobody
    state = mix_once(create("selective_mixup", min_group_size=3), batch)
    assert torch.equal(state.scratch["0.selective_mixup"]["perm"], torch.arange(8))
    assert torch.equal(state.batch.images, batch.images)


def test_metadata_chunks_come_whole_from_one_side():
    batch = make_batch(1)
    state = mix_once(create("selective_mixup", aux_components=AUX_COMPONENTS), batch)
    perm = state.scratch["0.selective_mixup"]["perm"]
    aux = state.batch.aux
    for start, end in F.aux_chunks_from_components(AUX_COMPONENTS):
        own = (aux[:, start:end] == batch.aux[:, start:end]).all(dim=1)
        partner = (aux[:, start:end] == batch.aux[perm, start:end]).all(dim=1)
        assert bool((own | partner).all())
    without = mix_once(create("selective_mixup"), batch)
    assert torch.equal(without.batch.aux, batch.aux), "no components given: metadata kept as is"


@pytest.mark.parametrize("name", ["selective_mixup", "selective_cutmix", "mixup", "cutmix"])
def test_interpolate_loss_equals_loss_on_mixed_targets(name):
    """Soft cross-entropy is linear in the target, so both ways must give the same loss."""
    data = [make_batch(i) for i in range(3)]
    mixed_state, interp_state = make_state(), make_state()
    mixed = run_steps(Engine([create(name)], seed=9), mixed_state, data)
    interp_alg = create(name, interpolate_loss=True)
    interp = run_steps(Engine([interp_alg], seed=9), interp_state, data)
    for m, i, original in zip(mixed, interp, data):
        assert torch.equal(m["batch"].images, i["batch"].images)
        assert i["batch"].targets is original.targets or all(
            torch.equal(i["batch"].targets[k], original.targets[k]) for k in original.targets)
        assert torch.allclose(m["loss"], i["loss"], atol=1e-5), (m["loss"], i["loss"])
    assert interp_state.scratch[interp_alg.key]["loss_interpolated"]


def test_interpolate_loss_needs_a_loss_fn_and_per_sample_losses_for_cutmix():
    state = make_state()
    state.loss_fn = None
    engine = Engine([create("selective_mixup", interpolate_loss=True)])
    state.batch = make_batch(0)
    engine.run(Event.AFTER_DATALOADER, state)
    state.outputs = state.model(state.batch.images)
    state.loss = per_sample_loss(state.outputs, state.batch.targets).mean()
    with pytest.raises(RuntimeError, match=r"interpolate_loss=True needs state.loss_fn"):
        engine.run(Event.AFTER_LOSS, state)

    def scalar_loss(outputs, targets):
        return per_sample_loss(outputs, targets).mean()

    state = make_state()
    state.loss_fn = scalar_loss
    run_step(Engine([create("mixup", interpolate_loss=True)]), state, make_batch(0))  # one lam: fine
    state = make_state()
    state.loss_fn = scalar_loss
    with pytest.raises(ValueError, match=r"lam differs between samples.*reduction='none'"):
        run_step(Engine([create("cutmix", interpolate_loss=True)]), state, make_batch(0))


@pytest.mark.parametrize(("switch_prob", "op"), [(0.0, "mixup"), (1.0, "cutmix")])
def test_selective_mix_switches_between_the_two(switch_prob, op):
    algorithm = create("selective_mix", switch_prob=switch_prob)
    engine = Engine([algorithm])
    state = make_state()
    ops = []
    for step in range(4):
        state.step, state.batch = step, make_batch(step)
        engine.run(Event.AFTER_DATALOADER, state)
        ops.append(state.scratch[algorithm.key]["op"])
    assert ops == [op] * 4
    both = create("selective_mix", switch_prob=0.5)
    engine = Engine([both])
    seen = set()
    for step in range(20):
        state.step, state.batch = step, make_batch(step)
        engine.run(Event.AFTER_DATALOADER, state)
        seen.add(state.scratch[both.key]["op"])
    assert seen == {"mixup", "cutmix"}


def test_num_classes_come_from_taxonomy_or_fail_clearly():
    state = make_state()
    state.num_classes = None
    mix_once(create("mixup"), state=state)  # taxonomy gives them
    state = State(batch=make_batch(0))
    with pytest.raises(ValueError, match=r"targets \['taxa_L10', 'taxa_L20'\] are class indices.*num_classes"):
        Engine([create("mixup")]).run(Event.AFTER_DATALOADER, state)
    state = State(batch=make_batch(0))
    Engine([create("mixup", num_classes=NUM_CLASSES)]).run(Event.AFTER_DATALOADER, state)
    assert state.batch.targets[L10].shape == (8, 5)


def test_second_selective_mix_groups_by_one_hot_rows():
    state = make_state()
    engine = Engine([create("selective_mixup"), create("selective_cutmix")], seed=2)
    produced = run_step(engine, state, make_batch(3))
    assert state.taxonomy.consistency_error(produced["batch"].targets) < 1e-6
    assert engine.trace[-1].key == "1.selective_cutmix"


def test_label_smoothing_values_and_null_rows():
    state = make_state()
    batch = make_batch(0)
    state.batch = batch
    Engine([create("label_smoothing", smoothing=0.2, tasks=[L10])]).run(Event.BEFORE_LOSS, state)
    smoothed = state.batch.targets[L10]
    dense = F.to_dense_targets(batch.targets, NUM_CLASSES)[L10]
    null = batch.targets[L10] == 0
    assert torch.allclose(smoothed[~null], 0.8 * dense[~null] + 0.2 / 5)
    assert torch.equal(smoothed[null], dense[null])
    assert torch.allclose(smoothed.sum(dim=1), torch.ones(8))
    assert state.batch.targets[L20] is batch.targets[L20], "tasks not listed are untouched"


def test_taxonomy_smoothing_applies_matrix_to_soft_targets():
    state = make_state()
    engine = Engine([create("selective_mixup"), create("taxonomy_label_smoothing", alpha=0.3, beta=2.0)], seed=4)
    state.batch = make_batch(2)
    engine.run(Event.AFTER_DATALOADER, state)
    mixed = state.batch.targets
    engine.run(Event.BEFORE_LOSS, state)
    for rank in (L10, L20):
        expected = mixed[rank] @ state.taxonomy.smoothing_matrix(rank, 0.3, 2.0)
        assert torch.allclose(state.batch.targets[rank], expected)
    with pytest.raises(ValueError, match=r"needs State\.taxonomy"):
        Engine([create("taxonomy_label_smoothing")]).run(Event.BEFORE_LOSS, State(batch=make_batch(0)))
    with pytest.raises(KeyError, match=r"rank\(s\) \['taxa_L99'\] are not in the taxonomy"):
        s = make_state()
        s.batch = make_batch(0)
        Engine([create("taxonomy_label_smoothing", ranks=["taxa_L99"])]).run(Event.BEFORE_LOSS, s)


def test_image_augmentation_per_sample_probability():
    algorithm = create("random_erasing", p=1.0, scale=[0.2, 0.3])
    state = make_state()
    state.batch = make_batch(0)
    Engine([algorithm]).run(Event.AFTER_DATALOADER, state)
    changed = (state.batch.images != make_batch(0).images).flatten(1).any(dim=1)
    assert bool(changed.all())
    trivial = create("trivial_augment", prob=0.5)
    engine = Engine([trivial], seed=5)
    replica = torch.Generator()
    replica.set_state(trivial.generator.get_state())
    chosen = F.rand((8,), generator=replica) < 0.5
    state.batch = make_batch(1)
    engine.run(Event.AFTER_DATALOADER, state)
    unchanged = (state.batch.images == make_batch(1).images).flatten(1).all(dim=1)
    assert bool(unchanged[~chosen].all()), "a sample not drawn for augmentation was changed"


def test_loader_side_augmentation_leaves_the_engine_batch_alone():
    algorithm = create("rand_augment", where="loader", prob={"kind": "step", "values": [0.0, 1.0],
                                                              "milestones": [2]})
    engine = Engine([algorithm], seed=0)
    assert engine.loader_transforms() == [algorithm.batch_transform]
    state = make_state()
    batch = make_batch(0)
    for step in range(3):
        state.step = step
        state.batch = batch
        engine.run(Event.BATCH_START, state)
        engine.run(Event.AFTER_DATALOADER, state)
        assert state.batch is batch
        out = algorithm.batch_transform(batch)
        if step < 2:
            assert out is batch, "prob is 0 before step 2"
        else:
            assert not torch.equal(out.images, batch.images)
    erase = create("random_erasing", where="loader", p=1.0)
    pair = Engine([algorithm, create("mixup"), erase], seed=0)
    composed = pair.loader_transform()
    out = composed(batch)
    assert not torch.equal(out.images, batch.images) and out.targets is batch.targets
    assert Engine([create("mixup")]).loader_transform() is None
    images = algorithm.batch_transform(batch.images)
    assert images.shape == batch.images.shape
    with pytest.raises(TypeError, match="batch_transform takes a MixBatch or"):
        algorithm.batch_transform([1, 2])


def test_where_must_be_device_or_loader():
    with pytest.raises(ValueError, match=r"where must be one of \['device', 'loader'\]"):
        create("augmix", where="gpu")


def _on(batch, device):
    return batch.to(device)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["selective_mixup", "selective_cutmix", "selective_mix", "mixup", "cutmix",
                                  "auto_augment", "rand_augment", "trivial_augment", "augmix", "random_erasing",
                                  "label_smoothing", "taxonomy_label_smoothing"])
def test_cuda_batch_matches_cpu_and_resumes_exactly(name):
    """A CPU generator drives a CUDA batch: same draws, same result (up to float kernels), exact resume."""
    from algorithm_harness import CASES

    outputs = {}
    for device in ("cpu", "cuda"):
        algorithm = create(name, **CASES[name]["kwargs"])
        engine = Engine([algorithm], seed=8)
        state = make_state()
        produced = []
        for step in range(3):
            state.step, state.batch = step, _on(make_batch(step), device)
            engine.run(Event.AFTER_DATALOADER, state)
            engine.run(Event.BEFORE_LOSS, state)
            assert state.batch.images.device.type == device
            produced.append((state.batch, dict(state.scratch.get(algorithm.key) or {})))
        outputs[device] = (produced, engine.state_dict())
    for (cpu_batch, cpu_info), (gpu_batch, gpu_info) in zip(outputs["cpu"][0], outputs["cuda"][0]):
        if "perm" in cpu_info:
            assert torch.equal(cpu_info["perm"], gpu_info["perm"].cpu())
        diff = (cpu_batch.images.float() - gpu_batch.images.float().cpu()).abs()
        assert float(diff.mean()) < 1e-3
        for key in cpu_batch.targets:
            assert torch.allclose(cpu_batch.targets[key].float(), gpu_batch.targets[key].float().cpu(), atol=1e-5)
    # resume on CUDA: the generator lives on the CPU, so the checkpoint is device independent
    algorithm = create(name, **CASES[name]["kwargs"])
    engine = Engine([algorithm], seed=8)
    state = make_state()
    for step in range(3):
        state.step, state.batch = step, _on(make_batch(step), "cuda")
        engine.run(Event.AFTER_DATALOADER, state)
    saved = engine.state_dict()
    runs = []
    for _ in range(2):
        fresh = create(name, **CASES[name]["kwargs"])
        resumed = Engine([fresh], seed=8)
        resumed.load_state_dict(saved)
        state = make_state()
        state.step, state.batch = 3, _on(make_batch(3), "cuda")
        resumed.run(Event.AFTER_DATALOADER, state)
        runs.append(state.batch.images)
    assert torch.equal(runs[0], runs[1])


@given(seed=st.integers(0, 2**31 - 1), level=st.sampled_from([L10, L20]), switch_prob=st.sampled_from([0.0, 0.5, 1.0]),
       per_sample_lam=st.booleans(), batch=st.sampled_from([8, 16, 24]))
@settings(max_examples=20)
def test_any_selective_mix_keeps_lineages_and_never_self_pairs(seed, level, switch_prob, per_sample_lam, batch):
    state = make_state()
    algorithm = create("selective_mix", group_levels=[level], switch_prob=switch_prob, per_sample_lam=per_sample_lam,
                       aux_components=AUX_COMPONENTS)
    engine = Engine([algorithm], seed=seed)
    original = make_batch(seed % 97, batch=batch)
    state.batch = original
    engine.run(Event.AFTER_DATALOADER, state)
    info = state.scratch[algorithm.key]
    perm, lam = info["perm"], info["lam"]
    assert state.taxonomy.consistency_error(state.batch.targets) < 1e-6
    groups = F.exclude_null_samples(original.targets[level], original.targets)
    assert torch.equal(groups[perm], groups)
    unmixed = perm == torch.arange(batch)
    assert bool((lam[unmixed] == 1).all())
    assert torch.equal(state.batch.images[unmixed], original.images[unmixed])
    counts = (groups[:, None] == groups[None, :]).sum(dim=1)
    assert torch.equal(unmixed, (groups == -1) | (counts < 2)), "unpaired exactly when null or alone in its group"


def test_interpolate_loss_composes_with_label_smoothing():
    data = [make_batch(i) for i in range(3)]
    mixed = run_steps(Engine([create("selective_cutmix"), create("label_smoothing", smoothing=0.2)], seed=5),
                      make_state(), data)
    interp = run_steps(Engine([create("selective_cutmix", interpolate_loss=True),
                               create("label_smoothing", smoothing=0.2)], seed=5), make_state(), data)
    for m, i in zip(mixed, interp):
        assert torch.allclose(m["loss"], i["loss"], atol=1e-5)
