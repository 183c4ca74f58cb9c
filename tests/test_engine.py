"""Engine: event order, the reverse rule, the trace, seeding and checkpoint keys."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from taxaug.algorithms import REVERSED_EVENTS, Algorithm, Engine, Event, State, TraceEntry, derive_seed

DESIGN_ORDER = [
    "INIT", "FIT_START", "EPOCH_START", "BEFORE_DATALOADER", "AFTER_DATALOADER", "BATCH_START", "BEFORE_FORWARD",
    "AFTER_FORWARD", "BEFORE_LOSS", "AFTER_LOSS", "BEFORE_BACKWARD", "AFTER_BACKWARD", "BATCH_END", "EPOCH_END",
    "EVAL_START", "EVAL_BATCH_START", "EVAL_BATCH_END", "EVAL_END", "FIT_END",
]


class Recorder(Algorithm):
    """Appends its tag to a shared log on every event it is given (test helper, not registered)."""

    name = "recorder"
    events = frozenset(Event)

    def __init__(self, *, tag: str = "a", log: list | None = None, only: list | None = None) -> None:
        super().__init__()
        self.tag = tag
        self.log = [] if log is None else log
        self.only = only

    def match(self, event, state):
        return self.only is None or event in self.only

    def apply(self, event, state):
        self._note_position(state)
        self.log.append((event, self.tag))
        state.scratch.setdefault("draws", {})[self.tag] = torch.rand(1, generator=self.generator).item()


def test_events_follow_design_order():
    assert [e.name for e in Event] == DESIGN_ORDER
    assert {e.name for e in REVERSED_EVENTS} == {"AFTER_FORWARD", "AFTER_LOSS", "AFTER_BACKWARD"}
    assert Event("after_loss") is Event.AFTER_LOSS and str(Event.AFTER_LOSS) == "after_loss"


@pytest.mark.parametrize("event", list(Event), ids=lambda e: e.name)
def test_list_order_except_after_forward_loss_backward(event):
    log: list = []
    engine = Engine([Recorder(tag=t, log=log) for t in "abc"])
    ran = engine.run(event, State(training=not event.is_eval))
    order = [tag for _, tag in log]
    expected = ["c", "b", "a"] if event in REVERSED_EVENTS else ["a", "b", "c"]
    assert order == expected
    assert ran == [f"{'abc'.index(t)}.recorder" for t in expected]
    assert [a.key for a in engine.order(event)] == ran


def test_after_dataloader_is_not_reversed_and_wrappers_nest():
    log: list = []
    engine = Engine([Recorder(tag=t, log=log) for t in "ab"])
    state = State()
    for event in (Event.AFTER_DATALOADER, Event.BEFORE_FORWARD, Event.AFTER_FORWARD, Event.BEFORE_LOSS,
                  Event.AFTER_LOSS, Event.BEFORE_BACKWARD, Event.AFTER_BACKWARD):
        engine.run(event, state)
    tags = "".join(t for _, t in log)
    assert tags == "ab" + "ab" + "ba" + "ab" + "ba" + "ab" + "ba"


def test_run_accepts_event_values_and_rejects_unknown():
    engine = Engine([Recorder()])
    assert engine.run("batch_start", State()) == ["0.recorder"]
    with pytest.raises(ValueError):
        engine.run("not_an_event", State())


def test_trace_records_every_apply_and_only_applies():
    log: list = []
    engine = Engine([Recorder(tag="a", log=log, only=[Event.BATCH_START]), Recorder(tag="b", log=log)])
    state = State(step=3, epoch=1)
    engine.run(Event.BATCH_START, state)
    engine.run(Event.BATCH_END, state)
    entries = list(engine.trace)
    assert [(e.event, e.key, e.step, e.epoch) for e in entries] == [
        (Event.BATCH_START, "0.recorder", 3, 1), (Event.BATCH_START, "1.recorder", 3, 1),
        (Event.BATCH_END, "1.recorder", 3, 1)]
    assert all(isinstance(e, TraceEntry) and e.seconds >= 0 for e in entries)
    assert "batch_start" in str(entries[0]) and "0.recorder" in str(entries[0])
    summary = engine.summary()
    assert "batch_end" in summary and "1.recorder" in summary


def test_trace_is_bounded_and_can_be_disabled():
    engine = Engine([Recorder()], trace_size=3)
    for step in range(10):
        engine.run(Event.BATCH_END, State(step=step))
    assert [e.step for e in engine.trace] == [7, 8, 9]
    silent = Engine([Recorder()], trace_size=0)
    silent.run(Event.BATCH_END, State())
    assert len(silent.trace) == 0


def test_engine_rejects_bad_algorithm_lists():
    with pytest.raises(TypeError, match=r"algorithms\[1\] must be a taxaug Algorithm"):
        Engine([Recorder(), "mixup"])
    shared = Recorder()
    with pytest.raises(ValueError, match="same algorithm instance"):
        Engine([shared, shared])


def test_generators_seeded_from_run_seed_and_index():
    a, b = Recorder(tag="a"), Recorder(tag="b")
    Engine([a, b], seed=11)
    assert (a.key, b.key) == ("0.recorder", "1.recorder")
    expected = torch.Generator().manual_seed(derive_seed(11, 0))
    assert torch.equal(a.generator.get_state(), expected.get_state())
    assert not torch.equal(a.generator.get_state(), b.generator.get_state())
    c = Recorder()
    Engine([c], seed=12)
    assert not torch.equal(a.generator.get_state(), c.generator.get_state())
    assert len({derive_seed(s, i) for s in range(20) for i in range(20)}) == 400


def test_state_dict_keys_by_instance_and_restores_generators():
    a, b = Recorder(tag="a"), Recorder(tag="b")
    engine = Engine([a, b], seed=1)
    state = State()
    engine.run(Event.BATCH_START, state)
    saved = engine.state_dict()
    assert saved["seed"] == 1 and list(saved["algorithms"]) == ["0.recorder", "1.recorder"]
    engine.run(Event.BATCH_START, state)
    continued = dict(state.scratch["draws"])

    a2, b2 = Recorder(tag="a"), Recorder(tag="b")
    engine2 = Engine([a2, b2], seed=1)
    engine2.load_state_dict(saved)
    state2 = State()
    engine2.run(Event.BATCH_START, state2)
    assert state2.scratch["draws"] == continued
    assert a2.calls == 2 and a2.last_step == 0


def test_load_state_dict_errors_name_what_differs():
    engine = Engine([Recorder(), Recorder()], seed=0)
    saved = engine.state_dict()
    with pytest.raises(KeyError, match=r"missing \['1.recorder'\]"):
        Engine([Recorder(), Recorder()]).load_state_dict({"algorithms": {k: v for k, v in saved["algorithms"].items()
                                                              if k == "0.recorder"}, "seed": 0})
    other = Engine([Recorder(tag="z"), Recorder()])
    with pytest.raises(ValueError, match=r"config differs \(tag: saved 'a' vs now 'z'\)"):
        other.load_state_dict(saved)
    other.load_state_dict(saved, strict=False)  # allowed explicitly


def test_state_progress_is_continuous():
    assert State(step=0, max_steps=1000).progress == 0.0
    assert State(step=333, max_steps=1000).progress == pytest.approx(0.333)
    assert State(step=2000, max_steps=1000).progress == 1.0
    assert State(step=5).progress == 0.0


def test_default_match_skips_eval_unless_event_is_eval():
    class OnBatchEnd(Algorithm):
        events = frozenset({Event.BATCH_END, Event.EVAL_BATCH_END})

        def apply(self, event, state):
            pass

    alg = OnBatchEnd()
    assert alg.match(Event.BATCH_END, State())
    assert not alg.match(Event.BATCH_END, State(training=False))
    assert alg.match(Event.EVAL_BATCH_END, State(training=False))
    assert not alg.match(Event.BATCH_START, State())


def test_subclass_with_var_kwargs_is_refused():
    with pytest.raises(TypeError, match="explicit keyword arguments"):
        class Bad(Algorithm):
            def __init__(self, **kwargs):
                super().__init__()


@given(matches=st.lists(st.sets(st.sampled_from(list(Event))), min_size=0, max_size=8),
       event=st.sampled_from(list(Event)))
def test_order_rule_holds_for_any_algorithm_list(matches, event):
    """Whatever each algorithm matches, those that run do so in list order (reversed on the 3 AFTER_ events)."""
    log: list = []
    algorithms = [Recorder(tag=str(i), log=log, only=sorted(m, key=list(Event).index)) for i, m in enumerate(matches)]
    engine = Engine(algorithms)
    ran = engine.run(event, State(training=not event.is_eval))
    expected = [str(i) for i, m in enumerate(matches) if event in m]
    if event in REVERSED_EVENTS:
        expected.reverse()
    assert [tag for _, tag in log] == expected
    assert ran == [f"{t}.recorder" for t in expected]


def test_errors_name_the_algorithm_and_event():
    class Broken(Algorithm):
        events = frozenset({Event.BATCH_START})

        def apply(self, event, state):
            raise ValueError("boom")

    engine = Engine([Recorder(), Broken()])
    with pytest.raises(ValueError, match="boom") as info:
        engine.run(Event.BATCH_START, State(step=4))
    notes = getattr(info.value, "__notes__", ["raised by algorithm 1.Broken on BATCH_START at step 4"])
    assert notes == ["raised by algorithm 1.Broken on BATCH_START at step 4"]


def test_generator_device_is_checkpointed_and_checked():
    engine = Engine([Recorder()], seed=0, generator_device="cpu")
    saved = engine.state_dict()
    assert saved["algorithms"]["0.recorder"]["generator_device"] == "cpu"
    saved["algorithms"]["0.recorder"]["generator_device"] = "cuda:0"
    with pytest.raises(ValueError, match=r"generator lived on cuda:0.*generator_device='cuda:0'"):
        Engine([Recorder()], seed=0).load_state_dict(saved)


@pytest.mark.cuda
def test_cuda_generators_resume_exactly():
    a = Recorder()
    engine = Engine([a], seed=3, generator_device="cuda")
    assert a.generator.device.type == "cuda"
    saved = engine.state_dict()
    first = torch.rand(4, generator=a.generator, device="cuda")
    b = Recorder()
    resumed = Engine([b], seed=3, generator_device="cuda")
    resumed.load_state_dict(saved)
    assert torch.equal(torch.rand(4, generator=b.generator, device="cuda"), first)
