"""train.loggers: strict JSON lines, CSV and TensorBoard sinks, timestamps, the learned policy and summary.json."""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path

import pytest
from trainer_helpers import DEMO_CONFIG, tiny_overrides

from taxaug.algorithms import from_config, to_config
from taxaug_train.config import ConfigError, load_config
from taxaug_train.loggers import (
    CsvLogger,
    JsonlLogger,
    TensorBoardLogger,
    build_loggers,
    flatten,
    strict_json,
)
from taxaug_train.trainer import Trainer


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------ sinks


def test_jsonl_writes_strict_json_and_keeps_lines_up_to_the_resume_step(tmp_path):
    sink = JsonlLogger(tmp_path)
    sink.open(None)
    for step in (1, 2, 3):
        sink.log({"event": "train", "step": step, "loss": float("nan") if step == 2 else 0.5,
                  "ranks": {"a": {"top1": float("inf")}}})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert not any(token in line for line in lines for token in ("NaN", "Infinity"))
    assert json.loads(lines[1])["loss"] is None and json.loads(lines[0])["ranks"]["a"]["top1"] is None
    JsonlLogger(tmp_path).open(resume_step=2)
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    JsonlLogger(tmp_path).open(resume_step=None)  # a new run starts empty
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_strict_json_and_flatten_keep_every_finite_value():
    record = {"a": 1.5, "b": [float("-inf"), 2], "c": {"d": {"e": float("nan"), "f": "x"}}, "g": True}
    assert strict_json(record) == {"a": 1.5, "b": [None, 2], "c": {"d": {"e": None, "f": "x"}}, "g": True}
    assert flatten(strict_json(record)) == {"a": 1.5, "b": [None, 2], "c.d.e": None, "c.d.f": "x", "g": True}


def test_csv_one_file_per_event_widens_its_header_and_resumes(tmp_path):
    sink = CsvLogger(tmp_path)
    sink.open(None)
    sink.log({"event": "train", "step": 1, "loss": 2.0})
    sink.log({"event": "eval", "step": 1, "ranks": {"L10": {"top1": 0.25}}})
    sink.log({"event": "train", "step": 2, "loss": 1.0, "extra": [1, 2]})  # a new key: header widened
    sink.log({"event": "train", "step": 3, "loss": float("nan")})
    train = _csv_rows(tmp_path / "metrics_train.csv")
    assert list(train[0]) == ["event", "step", "loss", "extra"]
    assert [(r["step"], r["loss"], r["extra"]) for r in train] == [("1", "2.0", ""), ("2", "1.0", "[1, 2]"),
                                                                   ("3", "", "")]
    assert _csv_rows(tmp_path / "metrics_eval.csv") == [{"event": "eval", "step": "1", "ranks.L10.top1": "0.25"}]
    resumed = CsvLogger(tmp_path)
    resumed.open(resume_step=2)
    resumed.log({"event": "train", "step": 3, "loss": 0.5})
    assert [(r["step"], r["loss"]) for r in _csv_rows(tmp_path / "metrics_train.csv")] == [
        ("1", "2.0"), ("2", "1.0"), ("3", "0.5")]
    CsvLogger(tmp_path).open(resume_step=None)
    assert not list(tmp_path.glob("metrics_*.csv"))


def test_tensorboard_missing_is_a_one_line_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    with pytest.raises(ConfigError, match=r"^train\.loggers: 'tensorboard' needs .*pip install taxaug\[tensorboard\]"):
        TensorBoardLogger(tmp_path).open(None)
    with pytest.raises(ConfigError, match="unknown logger"):
        build_loggers(["jsonl", "wandb"], tmp_path)


# ------------------------------------------------------------------------------------------ in a run


LEARNED = [{"name": "learned_augment", "meta_every": 1, "lr": 0.5,
            "policy": {"num_layers": 1, "ops": {"identity": {}, "rotate": {"min": -30, "max": 30},
                                                "brightness": {"min": 0.1, "max": 1.9}}}},
           {"name": "selective_mixup", "group_levels": ["taxa_L20"], "prob": 1.0}]


@pytest.fixture(scope="module")
def logged_run(tiny_labels, tmp_path_factory):
    out = tmp_path_factory.mktemp("logged")
    overrides = tiny_overrides(tiny_labels, out, **{"train.loggers": ["jsonl", "csv", "tensorboard"],
                                                    "train.seed": 7})
    trainer = Trainer(load_config(DEMO_CONFIG, [*overrides, "algorithms=" + json.dumps(LEARNED)]))
    started = time.time()
    summary = trainer.fit()
    return out, trainer, summary, (started, time.time())


def test_every_metrics_line_has_a_wall_clock_timestamp(logged_run):
    out, _, _, (started, ended) = logged_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] for r in records]
    assert len(records) == 6 + 2 and all(started - 0.01 <= t <= ended + 0.01 for t in times)
    assert times == sorted(times)


def test_csv_and_tensorboard_hold_what_metrics_jsonl_holds(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _, _, _ = logged_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    rows = _csv_rows(out / "metrics_train.csv")
    assert [(int(r["step"]), float(r["loss"]), float(r["rank_loss.taxa_L20"])) for r in rows] == [
        (r["step"], r["loss"], r["rank_loss"]["taxa_L20"]) for r in train]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("train/loss")
    assert [s.step for s in scalars] == [r["step"] for r in train]
    assert [s.value for s in scalars] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    evals = [r for r in records if r["event"] == "eval"]
    top1 = events.Scalars("eval/ranks.taxa_L10.top1")
    assert [(s.step, s.value) for s in top1] == [(r["step"], pytest.approx(r["ranks"]["taxa_L10"]["top1"]))
                                                 for r in evals]
    assert [s.wall_time for s in scalars] == pytest.approx([r["time"] for r in train])


def test_the_learned_policy_is_logged_at_each_evaluation_and_in_the_summary(logged_run):
    out, trainer, _, _ = logged_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    policies = [r["policy"]["0.learned_augment"] for r in records if r["event"] == "eval"]
    assert len(policies) == 2 and set(policies[0]) == {"identity", "rotate", "brightness"}
    for policy in policies:
        assert math.isclose(sum(op["p"] for op in policy.values()), 1.0, rel_tol=1e-5)
        assert "magnitude" in policy["rotate"] and "magnitude" not in policy["identity"]
    assert policies[0] != policies[1]  # it learned between the two evaluations
    final = trainer.engine[0].export_policy().to_dict()
    assert {op: e["p"] for op, e in final["ops"].items()} == pytest.approx({op: e["p"] for op, e in
                                                                            policies[-1].items()})
    saved = json.loads((out / "summary.json").read_text())
    assert saved["policies"]["0.learned_augment"] == json.loads(json.dumps(final))
    rerun = from_config([{"name": "fixed_policy_augment", "policy": saved["policies"]["0.learned_augment"]}])[0]
    assert rerun.policy.probabilities == pytest.approx(tuple(e["p"] for e in final["ops"].values()))
    eval_csv = _csv_rows(out / "metrics_eval.csv")
    assert float(eval_csv[-1]["policy.0.learned_augment.rotate.p"]) == policies[-1]["rotate"]["p"]


def test_summary_records_seed_algorithms_and_load_failures(logged_run):
    out, trainer, summary, _ = logged_run
    saved = json.loads((out / "summary.json").read_text())
    assert saved["seed"] == summary["seed"] == 7
    assert saved["algorithms"] == json.loads(json.dumps(to_config(trainer.engine.algorithms)))
    assert [a["name"] for a in saved["algorithms"]] == ["learned_augment", "selective_mixup"]
    assert to_config(from_config(saved["algorithms"])) == to_config(trainer.engine.algorithms)  # rebuildable
    assert saved["load_failures"]["strict"] is True
    assert saved["load_failures"]["train"] == {"replaced": 0, "loaded": 6 * 8, "share": 0.0, "examples": []}
    assert saved["load_failures"]["val"]["loaded"] == 2 * len(trainer.val_set)
