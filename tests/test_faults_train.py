"""Trainer faults, reproduced with real files and processes: each asserts the one-line error, the exit code,
the refusal or the counted placeholder (issue 13 items 2, 3, 6, 15, 16, 17)."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainer_helpers import DEMO_CONFIG, REPO, make_tiny_demo, tiny_overrides

from taxaug_train import checkpoint as ckpt
from taxaug_train.config import ConfigError, load_config
from taxaug_train.trainer import Trainer, TrainingError


def _config(labels: Path, out: Path, **extra):
    return load_config(DEMO_CONFIG, tiny_overrides(labels, out, **extra))


def _cli(labels: Path, out: Path, *args: str, **extra) -> subprocess.CompletedProcess:
    sets = [a for o in tiny_overrides(labels, out, **extra) for a in ("--set", o)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "taxaug_train", "--config", str(DEMO_CONFIG), *sets, *args],
                          capture_output=True, text=True, env=env, timeout=300)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The CLI's error: the last stderr line, and no traceback anywhere."""
    assert "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("taxaug-train: error: "), proc.stderr
    return line


def _strict_records(out: Path) -> list[dict]:
    """metrics.jsonl parsed with NaN / Infinity tokens refused."""

    def refuse(token: str) -> None:
        raise AssertionError(f"non-strict JSON token {token} in metrics.jsonl")

    return [json.loads(line, parse_constant=refuse) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _steps(out: Path) -> list[int]:
    return [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")]


# ------------------------------------------------------------------------------------------ non-finite loss


def test_huge_lr_stops_the_cli_at_the_non_finite_step_without_saving_it(tiny_labels, tmp_path):
    out = tmp_path / "run"
    proc = _cli(tiny_labels, out, "--set", "optim.lr=1.0e+30", **{"checkpoint.every": 1})  # YAML needs the dot
    assert proc.returncode == 1  # a run that started fails: exit 1 (start-up errors: 2)
    line = _error_line(proc)
    records = _strict_records(out)
    bad_step = records[-1]["step"]
    assert records[-1]["event"] == "error" and f"step {bad_step}: " in line and "optim.lr" in line
    assert all(r["step"] < bad_step for r in records if r["event"] in ("train", "eval"))
    for step in _steps(out):  # every checkpoint written is finite and precedes the bad step
        assert step < bad_step
        model = torch.load(ckpt.step_path(out / "checkpoints", step), weights_only=False)["model"]
        assert all(torch.isfinite(v).all() for v in model.values())


def test_a_nan_loss_mid_run_names_its_step_and_keeps_earlier_checkpoints(tiny_labels, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(_config(tiny_labels, out, **{"train.log_every": 4, "checkpoint.every": 3}))
    combine = trainer.loss._combine

    def nan_at_step_5(terms):
        per_sample, per_rank = combine(terms)
        return (per_sample * float("nan"), per_rank) if trainer.state.step == 4 else (per_sample, per_rank)

    trainer.loss._combine = nan_at_step_5
    with pytest.raises(TrainingError, match=r"^step 5: the training loss became non-finite") as err:
        trainer.fit()
    assert "\n" not in str(err.value) and "last checkpoint (step 3)" in str(err.value)
    assert _steps(out) == [3]  # step 6 (and the step 6 evaluation) never happen
    assert [r["step"] for r in _strict_records(out) if r["event"] != "error"] == [3, 4]


def test_non_finite_weights_after_a_finite_loss_are_never_saved(tiny_labels, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(_config(tiny_labels, out, **{"checkpoint.every": 2, "train.eval_every": 0}))
    step = trainer._train_step

    def poison_after_step_2(batch):
        result = step(batch)
        if trainer.state.step == 2:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("inf"))
        return result

    trainer._train_step = poison_after_step_2
    with pytest.raises(TrainingError, match=r"^step 2: the model weights \(after a finite loss\)"):
        trainer.fit()
    assert _steps(out) == []
    assert [r["step"] for r in _strict_records(out) if r["event"] == "train"] == [1]


# ------------------------------------------------------------------------------------------ resume


@pytest.fixture(scope="module")
def finished_run(tiny_labels, tmp_path_factory) -> Path:
    """A 6-step run with checkpoints at steps 3 and 6 (last.pt is a hard link to step 6)."""
    out = tmp_path_factory.mktemp("finished")
    Trainer(_config(tiny_labels, out)).fit()
    assert _steps(out) == [3, 6]
    return out


def test_resume_with_another_width_names_the_parameter_and_the_config_key(tiny_labels, finished_run, tmp_path):
    run = tmp_path / "run"
    os.link(finished_run / "checkpoints" / "step_00000006.pt", tmp_path / "step6.pt")
    proc = _cli(tiny_labels, run, "--resume", str(tmp_path / "step6.pt"), **{"model.width": 8, "train.max_steps": 9})
    assert proc.returncode == 2
    line = _error_line(proc)
    assert "step6.pt" in line and "does not fit this model" in line
    assert "in the checkpoint" in line and "model.width (4 in the checkpoint, 8 now)" in line
    assert not (run / "checkpoints").exists()


def test_resume_without_the_metadata_branch_names_the_parameters_and_the_key(tiny_labels, finished_run, tmp_path):
    step6 = finished_run / "checkpoints" / "step_00000006.pt"
    saved = torch.load(step6, weights_only=False)["model"]
    with pytest.raises(ckpt.CheckpointError) as err:
        Trainer(_config(tiny_labels, tmp_path, **{"model.metadata_branch": False}), resume=step6, write_files=False)
    message = str(err.value)
    mine = Trainer(_config(tiny_labels, tmp_path, **{"model.metadata_branch": False}), write_files=False).model
    only_saved = [k for k in saved if k not in mine.state_dict()]
    assert only_saved and "\n" not in message
    assert f"{len(only_saved)} parameter(s) only in the checkpoint (first {only_saved[0]})" in message
    assert "model.metadata_branch (True in the checkpoint, False now)" in message


def test_a_checkpoint_missing_keys_is_a_one_line_error_naming_them(finished_run, tmp_path):
    payload = torch.load(finished_run / "checkpoints" / "step_00000003.pt", weights_only=False)
    del payload["sampler"], payload["rng"]
    torch.save(payload, tmp_path / "partial.pt")
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_checkpoint(tmp_path / "partial.pt")
    message = str(err.value)
    assert "\n" not in message and "partial.pt" in message and "['sampler', 'rng']" in message


def test_a_truncated_last_pt_falls_back_to_the_newest_intact_checkpoint(tiny_labels, finished_run, tmp_path, caplog):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    for step in (3, 6):
        name = f"step_{step:08d}.pt"
        (out / "checkpoints" / name).write_bytes((finished_run / "checkpoints" / name).read_bytes())
    os.link(out / "checkpoints" / "step_00000006.pt", out / "checkpoints" / "last.pt")
    with open(out / "checkpoints" / "last.pt", "r+b") as f:  # truncates step 6 too: they are one file
        f.truncate(f.seek(0, 2) // 2)
    with caplog.at_level(logging.WARNING, logger="taxaug_train"):
        trainer = Trainer(_config(tiny_labels, out, **{"train.max_steps": 9}), resume=out)
    assert trainer.state.step == 3
    warning = next(r.getMessage() for r in caplog.records if "newest intact" in r.getMessage())
    assert "last.pt" in warning and "step_00000003.pt" in warning
    assert trainer.fit()["step"] == 9


def test_no_intact_checkpoint_at_all_is_one_error(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"\x80\x02 truncated")
    (tmp_path / "step_00000002.pt").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match=r"cannot read checkpoint .*last\.pt.*no intact step_\*\.pt"):
        ckpt.load_checkpoint(tmp_path)


# ------------------------------------------------------------------------------------------ saving


def test_a_full_disk_removes_the_temp_file_and_says_disk_full(tiny_labels, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(_config(tiny_labels, out))
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    tmp = ckpt_dir / f".step_00000003.pt.tmp-{os.getpid()}"
    tmp.symlink_to("/dev/full")  # the save's temporary file: every write gets ENOSPC from the kernel
    with pytest.raises(ckpt.CheckpointError) as err:
        trainer.fit()
    message = str(err.value)
    assert "\n" not in message and "step_00000003.pt" in message
    assert "disk full" in message and errno.errorcode[errno.ENOSPC] in message and "removed" in message
    assert not tmp.is_symlink() and not list(ckpt_dir.iterdir())  # nothing left behind
    assert trainer.save() == ckpt.step_path(ckpt_dir, 3)  # with the space back, the same save succeeds
    assert ckpt.load_checkpoint(out)["loop"]["step"] == 3


# ------------------------------------------------------------------------------------------ out_dir


def test_a_new_run_refuses_another_runs_checkpoints(tiny_labels, finished_run, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    foreign = out / "checkpoints" / "step_00000040.pt"
    foreign.write_bytes((finished_run / "checkpoints" / "step_00000006.pt").read_bytes())
    proc = _cli(tiny_labels, out)
    assert proc.returncode == 2
    line = _error_line(proc)
    assert "step_00000040.pt" in line and f"--resume {out}" in line and "checkpoint.overwrite: true" in line
    assert foreign.is_file() and not (out / "metrics.jsonl").exists()

    Trainer(_config(tiny_labels, out, **{"checkpoint.overwrite": True})).fit()
    assert _steps(out) == [3, 6] and ckpt.load_checkpoint(out)["loop"]["step"] == 6


def test_the_refusal_comes_before_anything_is_written(tiny_labels, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"old")
    with pytest.raises(ConfigError, match="already holds checkpoints of another run"):
        Trainer(_config(tiny_labels, out)).fit()
    assert sorted(p.name for p in out.rglob("*")) == ["checkpoints", "last.pt"]


# ------------------------------------------------------------------------------------------ placeholders


def _labels_with_missing_images(root: Path, every: int) -> tuple[Path, set[str]]:
    labels = make_tiny_demo(root)
    trainer = Trainer(_config(labels, root / "probe"), write_files=False)
    names = [str(n) for n in trainer.train_set.identifiers] + [str(n) for n in trainer.val_set.identifiers]
    gone = set(names[::every])
    for name in gone:
        (labels.parent / "images" / name).unlink()
    return labels, gone


def test_too_many_unreadable_images_stop_a_permissive_run(tmp_path):
    labels, _ = _labels_with_missing_images(tmp_path / "data", every=4)
    out = tmp_path / "run"
    proc = _cli(labels, out, **{"data.strict": False, "data.max_load_failures": 0.05})
    assert proc.returncode == 1
    line = _error_line(proc)
    assert "data.max_load_failures:" in line and "train images in epoch 0" in line and "limit 5.0%" in line
    assert "replaced by placeholders" in line and "raise data.max_load_failures" in line
    assert not (out / "checkpoints").exists()  # stopped within the first steps, before any checkpoint
    assert _strict_records(out)[-1]["event"] == "error"


def test_permissive_runs_count_replaced_images_per_split(tmp_path, capsys, caplog):
    labels, gone = _labels_with_missing_images(tmp_path / "data", every=10)
    out = tmp_path / "run"
    # one epoch exactly (77 samples, batch 8: 10 steps), so every training image is read once
    trainer = Trainer(_config(labels, out, **{"data.strict": False, "data.max_load_failures": 0.5,
                                              "train.max_steps": 10, "train.eval_every": 5, "checkpoint.every": 0}))
    missing_train = sum(str(n) in gone for n in trainer.train_set.identifiers)
    missing_val = sum(str(n) in gone for n in trainer.val_set.identifiers)
    assert missing_train and missing_val
    with caplog.at_level(logging.WARNING, logger="taxaug_train"):
        summary = trainer.fit()
    assert f"{missing_train} of 77 train images in epoch 0 ({missing_train / 77:.1%}) replaced" in caplog.text
    expected = {"train": (missing_train, 77), "val": (2 * missing_val, 2 * len(trainer.val_set))}  # 2 evaluations
    for split, (replaced, loaded) in expected.items():
        assert (summary["load_failures"][split]["replaced"], summary["load_failures"][split]["loaded"]) == (
            replaced, loaded)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["load_failures"]["train"]["replaced"] == missing_train
    assert saved["load_failures"]["val"]["examples"][0].split(":")[0].endswith(tuple(gone))
    records = _strict_records(out)
    assert records[-1]["load_failures"] == {"train": missing_train, "val": 2 * missing_val}
    assert [r["load_failures"]["val"] for r in records if r["event"] == "eval"] == [missing_val, 2 * missing_val]
    table = capsys.readouterr().out
    assert f"train {missing_train} of 77" in table and f"val {2 * missing_val} of {2 * len(trainer.val_set)}" in table
