"""Schedules: exact values at given steps, by steps and by fraction, config round trip, bad specs."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taxaug.algorithms import Constant, Cosine, Linear, State, Step, as_schedule, schedule_from_config


def test_constant():
    s = Constant(0.3)
    assert s.value(0) == s.value(10**6, 100) == 0.3
    assert s.bounds() == (0.3, 0.3)


@pytest.mark.parametrize(("step", "expected"), [(0, 1.0), (1, 0.92), (5, 0.6), (10, 0.2), (11, 0.2), (500, 0.2)])
def test_linear_by_steps_exact(step, expected):
    assert Linear(start=1.0, end=0.2, end_steps=10).value(step) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("step", "expected"), [(0, 1.0), (125, 0.8), (250, 0.6), (499, 0.2016), (500, 0.2),
                                                 (999, 0.2)])
def test_linear_by_fraction_reads_continuous_progress(step, expected):
    s = Linear(start=1.0, end=0.2, end_fraction=0.5)
    assert s.value(step, 1000) == pytest.approx(expected, abs=1e-12)
    assert s.at(State(step=step, max_steps=1000)) == pytest.approx(expected, abs=1e-12)


def test_linear_defaults_to_whole_run():
    s = Linear(start=0.0, end=1.0)
    assert s.end_fraction == 1.0
    assert s.value(37, 100) == pytest.approx(0.37)


def test_cosine_exact_points():
    s = Cosine(start=1.0, end=0.0, end_steps=100)
    assert s.value(0) == 1.0
    assert s.value(50) == pytest.approx(0.5)
    assert s.value(25) == pytest.approx(1.0 - (1 - math.cos(math.pi / 4)) / 2)
    assert s.value(100) == pytest.approx(0.0) and s.value(1000) == pytest.approx(0.0)
    assert Cosine(start=0.2, end=0.8, end_fraction=0.5).value(125, 1000) == pytest.approx(
        0.2 + 0.6 * (1 - math.cos(math.pi / 4)) / 2)


def test_step_by_steps_boundaries_inclusive():
    s = Step(values=[1.0, 0.5, 0.1], milestones=[10, 20])
    assert [s.value(i) for i in (0, 9, 10, 19, 20, 99)] == [1.0, 1.0, 0.5, 0.5, 0.1, 0.1]


def test_step_by_fraction():
    s = Step(values=[0.0, 1.0], milestones=[0.25], unit="fraction")
    assert s.value(249, 1000) == 0.0 and s.value(250, 1000) == 1.0


def test_zero_length_ramps_jump_to_end():
    assert Linear(start=1.0, end=0.0, end_steps=0).value(0) == 0.0
    assert Linear(start=1.0, end=0.0, end_fraction=0.0).value(0, 10) == 0.0


def test_fraction_schedule_without_max_steps_explains():
    with pytest.raises(ValueError, match=r"set State.max_steps"):
        Linear(start=1.0, end=0.0, end_fraction=0.5).at(State(step=3))
    with pytest.raises(ValueError, match=r"max_steps"):
        Step(values=[0.0, 1.0], milestones=[0.5], unit="fraction").value(3)


@pytest.mark.parametrize("schedule", [
    Constant(0.25), Linear(start=1.0, end=0.2, end_fraction=0.5), Linear(start=0.0, end=1.0, end_steps=7),
    Cosine(start=0.9, end=0.1, end_steps=50), Step(values=[0.1, 0.2, 0.3], milestones=[0.2, 0.7], unit="fraction"),
])
def test_config_round_trip(schedule):
    config = schedule.to_config()
    assert schedule_from_config(config) == schedule
    assert as_schedule(config, "x") == schedule
    assert " at 0x" not in repr(schedule)


def test_as_schedule_accepts_numbers_and_checks_range():
    assert as_schedule(0.4, "prob", low=0, high=1) == Constant(0.4)
    with pytest.raises(ValueError, match=r"prob must stay within \[0, 1\]"):
        as_schedule(1.5, "prob", low=0, high=1)
    with pytest.raises(ValueError, match=r"reaches \[-0.1, 1.0\]"):
        as_schedule({"kind": "linear", "start": 1.0, "end": -0.1}, "prob", low=0, high=1)
    with pytest.raises(TypeError, match="prob must be a number"):
        as_schedule("high", "prob")
    with pytest.raises(TypeError):
        as_schedule(True, "prob")


@pytest.mark.parametrize(("config", "message"), [
    ({"kind": "exponential"}, r"unknown schedule kind 'exponential'; valid kinds: \['constant', 'cosine'"),
    ({"start": 1.0}, r"'kind' key"),
    ({"kind": "linear", "start": 1, "end": 0, "end_epochs": 3}, r"unknown argument\(s\) \['end_epochs'\].*valid"),
    ({"kind": "linear", "start": 1, "end": 0, "end_steps": 5, "end_fraction": 0.5}, "not both"),
    ({"kind": "linear", "start": 1, "end": 0, "end_fraction": 1.5}, r"end_fraction must be in \[0, 1\]"),
    ({"kind": "linear", "start": 1, "end": 0, "end_steps": -2}, "end_steps must be an int >= 0"),
    ({"kind": "step", "values": [1, 0], "milestones": [5, 3]}, "exactly|one more value"),
    ({"kind": "step", "values": [1, 0, 2], "milestones": [5, 3]}, "strictly increasing"),
    ({"kind": "step", "values": [1, 0], "milestones": [2], "unit": "fraction"}, r"must lie in \[0, 1\]"),
    ({"kind": "step", "values": [1, 0], "milestones": [2], "unit": "epochs"}, "unit"),
])
def test_bad_configs_explain(config, message):
    with pytest.raises((ValueError, TypeError), match=message):
        schedule_from_config(config)


@given(start=st.floats(0, 1), end=st.floats(0, 1), end_steps=st.integers(1, 1000), step=st.integers(0, 2000))
def test_linear_and_cosine_stay_between_endpoints_and_are_monotone(start, end, end_steps, step):
    for cls in (Linear, Cosine):
        s = cls(start=start, end=end, end_steps=end_steps)
        v, w = s.value(step), s.value(step + 1)
        lo, hi = min(start, end), max(start, end)
        assert lo - 1e-12 <= v <= hi + 1e-12
        assert (w - v) * (end - start) >= -1e-12  # never moves away from `end`
