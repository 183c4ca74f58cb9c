"""Contract harness: every registered algorithm obeys the engine, checkpoint, config and no-op contracts."""

from __future__ import annotations

import pytest
import torch
from algorithm_harness import (
    STEP_EVENTS,
    all_cases,
    assert_batches_identical,
    batch_tensors,
    make_batch,
    make_state,
    run_eval,
    run_step,
    run_steps,
    single_thread,
)

from taxaug.algorithms import Engine, Event, create, from_config, registered, to_config

CASES = all_cases()
NAMES = sorted(n for n in registered() if n in CASES)  # the test below fails for the rest
STEPS = 6

_single_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


def build(name: str, kwargs: dict | None = None):
    case = CASES[name]
    algorithm = create(name, **(case["kwargs"] if kwargs is None else kwargs))
    state = make_state(max_steps=STEPS)
    if case.get("prepare"):
        case["prepare"](state)
    return algorithm, state


def batches(dtype=torch.float32):
    return [make_batch(i, dtype=dtype) for i in range(STEPS)]


def test_every_registered_algorithm_has_a_case():
    missing = [n for n in registered() if n not in CASES]
    assert not missing, (
        f"registered algorithms without a harness case: {missing}; add one to tests/algorithm_cases_<area>.py "
        f"(see tests/algorithm_harness.py)"
    )


@pytest.mark.parametrize("name", NAMES)
def test_match_called_once_per_event_and_apply_only_when_matched(name):
    algorithm, state = build(name)
    log: list[tuple[str, Event, bool]] = []
    original_match, original_apply = algorithm.match, algorithm.apply

    def match(event, st):
        result = original_match(event, st)
        assert isinstance(result, bool), f"match must return a bool, got {result!r}"
        log.append(("match", event, result))
        return result

    def apply(event, st):
        assert log and log[-1][:2] == ("match", event) and log[-1][2], "apply ran without a matching match()"
        log.append(("apply", event, True))
        original_apply(event, st)

    algorithm.match, algorithm.apply = match, apply
    engine = Engine([algorithm], seed=1)
    fired = []
    for event in (Event.INIT, Event.FIT_START, Event.EPOCH_START):
        engine.run(event, state)
        fired.append(event)
    for b in batches()[:2]:
        run_step(engine, state, b)
        fired.extend(STEP_EVENTS)
    run_eval(engine, state, make_batch(99))
    fired.extend([Event.EVAL_START, Event.EVAL_BATCH_START, Event.EVAL_BATCH_END, Event.EVAL_END])
    matches = [(e, r) for kind, e, r in log if kind == "match"]
    applies = [e for kind, e, _ in log if kind == "apply"]
    # one match per fired event, in firing order (every training event of a step is fired)
    assert [e for e, _ in matches] == fired
    assert len([e for e, _ in matches if e is Event.AFTER_DATALOADER]) == 2
    assert applies == [e for e, r in matches if r]
    assert not any(e.is_eval for e in applies), "a training algorithm applied on an eval event"


@pytest.mark.parametrize("name", NAMES)
def test_resume_is_bit_exact(name):
    data = batches()
    algorithm, state = build(name)
    straight = run_steps(Engine([algorithm], seed=7), state, data)

    first, state = build(name)
    engine = Engine([first], seed=7)
    run_steps(engine, state, data[:3])
    checkpoint = {"engine": engine.state_dict(), "model": state.model.state_dict(),
                  "optimizer": state.optimizer.state_dict(), "step": state.step}
    config = to_config(list(engine.algorithms))

    rebuilt_algorithms = from_config(config)
    _, resumed_state = build(name)
    resumed_state.model.load_state_dict(checkpoint["model"])
    resumed_state.optimizer.load_state_dict(checkpoint["optimizer"])
    resumed_state.step = checkpoint["step"]
    resumed = Engine(rebuilt_algorithms, seed=7)
    resumed.load_state_dict(checkpoint["engine"])
    tail = run_steps(resumed, resumed_state, data[3:])
    for i, (a, b) in enumerate(zip(straight[3:], tail), start=3):
        assert_batches_identical(a["batch"], b["batch"], f"{name} step {i}")
        assert torch.equal(a["loss"], b["loss"]), f"{name} step {i}: loss differs"
    assert rebuilt_algorithms[0].last_step == algorithm.last_step


@pytest.mark.parametrize("name", NAMES)
def test_algorithm_changes_the_batch_it_is_meant_to(name):
    """Guards the harness itself: the case's kwargs must make the algorithm do something in 6 steps."""
    algorithm, state = build(name)
    data = batches()
    produced = run_steps(Engine([algorithm], seed=3), state, data)
    changed = any(
        any(not torch.equal(v, batch_tensors(d)[k]) if k in batch_tensors(d) and v.shape == batch_tensors(d)[k].shape
            else True for k, v in batch_tensors(p["batch"]).items())
        for p, d in zip(produced, data)
    )
    assert changed, f"{name}: the harness case never changed a batch; pick kwargs that act"


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name):
    algorithm, _ = build(name)
    config = to_config(algorithm)
    assert config["name"] == name
    clone = from_config([config])[0]
    assert type(clone) is type(algorithm)
    assert to_config(clone) == config
    assert repr(clone) == repr(algorithm)
    assert " at 0x" not in repr(algorithm), "repr must not contain a memory address"


@pytest.mark.parametrize("name", NAMES)
def test_two_instances_checkpoint_separately(name):
    a, state = build(name)
    b = create(name, **CASES[name]["kwargs"])
    engine = Engine([a, b], seed=5)
    sd = engine.state_dict()["algorithms"]
    assert list(sd) == [f"0.{name}", f"1.{name}"]
    assert not torch.equal(sd[f"0.{name}"]["generator"], sd[f"1.{name}"]["generator"])
    # loading swaps nothing: each key restores its own instance
    run_steps(engine, state, batches()[:2])
    saved = engine.state_dict()
    a2, b2 = create(name, **CASES[name]["kwargs"]), create(name, **CASES[name]["kwargs"])
    engine2 = Engine([a2, b2], seed=5)
    engine2.load_state_dict(saved)
    assert torch.equal(a2.generator.get_state(), a.generator.get_state())
    assert torch.equal(b2.generator.get_state(), b.generator.get_state())


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("name", NAMES)
def test_inputs_are_not_mutated(name, dtype):
    algorithm, state = build(name)
    data = batches(dtype)[:3]
    before = [{k: v.clone() for k, v in batch_tensors(b).items()} for b in data]
    produced = run_steps(Engine([algorithm], seed=2), state, data)
    for b, saved, p in zip(data, before, produced):
        for key, value in batch_tensors(b).items():
            assert torch.equal(value, saved[key]), f"{name} mutated input {key}"
        assert p["batch"].images.dtype == dtype, f"{name} changed the image dtype"


def test_every_builtin_case_has_a_disabled_setting():
    from algorithm_harness import CASES as BUILTIN_CASES

    assert all(case.get("disabled") is not None for case in BUILTIN_CASES.values())


@pytest.mark.parametrize("name", [n for n in NAMES if CASES[n].get("disabled") is not None])
def test_disabled_setting_is_an_exact_no_op(name):
    algorithm, state = build(name, CASES[name]["disabled"])
    data = batches()[:3]
    produced = run_steps(Engine([algorithm], seed=4), state, data)
    reference_state = make_state(max_steps=STEPS)
    reference = run_steps(Engine([], seed=4), reference_state, data)
    for p, r, d in zip(produced, reference, data):
        assert_batches_identical(p["batch"], d, f"{name} disabled")
        assert torch.equal(p["loss"], r["loss"]), f"{name} disabled changed the loss"


@pytest.mark.parametrize("name", NAMES)
def test_eval_batches_are_never_touched(name):
    algorithm, state = build(name)
    engine = Engine([algorithm], seed=6)
    run_steps(engine, state, batches()[:1])
    eval_batch = make_batch(42)
    left = run_eval(engine, state, eval_batch)
    assert left is eval_batch
    # an AFTER_DATALOADER fired while evaluating (training=False) must not touch the batch either
    state.training = False
    state.batch = eval_batch
    assert engine.run(Event.AFTER_DATALOADER, state) == []
    assert state.batch is eval_batch
