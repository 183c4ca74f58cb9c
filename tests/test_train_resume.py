"""Checkpoints and --resume: an interrupted and resumed run equals an uninterrupted one, bit for bit (CPU)."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from trainer_helpers import DEMO_CONFIG, tiny_overrides

from taxaug_train import checkpoint as ckpt
from taxaug_train.config import load_config
from taxaug_train.trainer import Trainer


def _config(labels: Path, out: Path, **extra):
    # 77 training samples / batch 8 = 10 batches per epoch (the last holds 5): 11 steps cross an epoch
    values = {"train.max_steps": 11, "train.eval_every": 4, "checkpoint.every": 4, "train.loggers": ["jsonl", "csv"],
              **extra}
    return load_config(DEMO_CONFIG, tiny_overrides(labels, out, **values))


def _comparable(out: Path) -> list[dict]:
    """metrics.jsonl and the CSV files without wall-clock columns (throughput, time), which differ between runs."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for name in ("metrics_train.csv", "metrics_eval.csv"):
        with (out / name).open(newline="") as f:
            records += [{"file": name, **row} for row in csv.DictReader(f)]
    for r in records:
        r.pop("img_per_s", None)
        r.pop("time", None)
    return records


@pytest.fixture(scope="module")
def reference(tiny_labels, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    trainer = Trainer(_config(tiny_labels, out))
    trainer.fit()
    assert len(trainer.sampler) == 10 and len(trainer.train_set) == 77
    return out, {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize(("every", "stop_after", "resume_step"), [(4, 6, 4), (10, 10, 10)],
                         ids=["mid-epoch", "epoch-boundary"])
def test_interrupted_and_resumed_equals_uninterrupted(tiny_labels, tmp_path, reference, every, stop_after,
                                                      resume_step):
    ref_out, ref_weights = reference
    out = tmp_path / "run"
    first = Trainer(_config(tiny_labels, out, **{"checkpoint.every": every}))
    assert first.fit(stop_after=stop_after) == {"step": stop_after, "stopped": True}
    assert ckpt.load_checkpoint(out / "checkpoints" / "last.pt")["loop"]["step"] == resume_step

    resumed = Trainer(_config(tiny_labels, out, **{"checkpoint.every": every}), resume=out)
    assert resumed.state.step == resume_step
    events = []
    run_event = resumed.engine.run
    resumed.engine.run = lambda event, state: (events.append((event.name, state.epoch)), run_event(event, state))[1]
    summary = resumed.fit()
    # epoch 0 started before the checkpoint, so only epoch 1 starts here; epoch 0 ends here in both cases
    assert [e for e in events if e[0] in ("EPOCH_START", "EPOCH_END")] == [
        ("EPOCH_END", 0), ("EPOCH_START", 1)]
    assert summary["step"] == 11
    assert _comparable(out) == _comparable(ref_out)  # every train loss and eval metric, exactly
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, ref_weights[name]), name


def test_ctrl_c_finishes_the_step_saves_and_the_resume_is_exact(tiny_labels, tmp_path, reference):
    ref_out, ref_weights = reference
    out = tmp_path / "run"
    first = Trainer(_config(tiny_labels, out, **{"checkpoint.every": 0}))  # no periodic checkpoints
    train_step = first._train_step

    def step_then_interrupt(batch):
        result = train_step(batch)
        if first.state.step == 6:
            os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of the run, like a Ctrl-C
        return result

    first._train_step = step_then_interrupt
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler put back
    assert ckpt.load_checkpoint(out / "checkpoints" / "last.pt")["loop"]["step"] == 6
    resumed = Trainer(_config(tiny_labels, out, **{"checkpoint.every": 0}), resume=out)
    assert resumed.fit()["step"] == 11
    assert _comparable(out) == _comparable(ref_out)
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, ref_weights[name]), name


def test_checkpoint_holds_everything_needed(tiny_labels, tmp_path, reference):
    ref_out, _ = reference
    payload = ckpt.load_checkpoint(ref_out)  # a run folder resolves to checkpoints/last.pt
    assert payload["loop"] == {"step": 11, "epoch": 1, "batch_in_epoch": 1, "samples_seen": 77 + 8}
    assert {"model", "optimizer", "scheduler", "scaler", "engine", "sampler", "rng", "config"} <= set(payload)
    assert set(payload["engine"]["algorithms"]) == {"0.trivial_augment", "1.selective_mix"}
    assert payload["sampler"]["group_rank"] == "taxa_L10"
    assert sorted(s for s, _ in ckpt.list_checkpoints(ref_out / "checkpoints")) == [4, 8, 11]


def test_keep_prunes_old_step_checkpoints(tmp_path):
    for step in (1, 2, 3):
        ckpt.save_checkpoint({"loop": {"step": step}}, ckpt.step_path(tmp_path, step))
    removed = ckpt.prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in removed] == ["step_00000001.pt"]
    assert ckpt.load_checkpoint(tmp_path / "last.pt", required=("loop",))["loop"]["step"] == 3
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_resume_errors_are_clear(tiny_labels, tmp_path):
    with pytest.raises(ckpt.CheckpointError, match=r"no last\.pt"):
        ckpt.load_checkpoint(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="cannot read checkpoint"):
        ckpt.load_checkpoint(tmp_path / "junk.pt")


def test_auto_batch_size_is_taken_from_the_checkpoint_on_resume(tiny_labels, tmp_path, reference):
    ref_out, _ = reference
    cfg = _config(tiny_labels, tmp_path, **{"train.batch_size": "auto", "train.auto_batch_memory_mb": 1})
    assert Trainer(cfg, write_files=False).batch_size != 8  # a fresh probe picks another size under this budget
    trainer = Trainer(cfg, resume=ref_out, write_files=False)
    assert trainer.batch_size == 8 and trainer.state.step == 11  # the checkpoint's size, not a new probe
