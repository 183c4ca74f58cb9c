"""taxaug-train faults a user meets in the first hour: each reproduced with real files and processes.

Exit status: 2 when nothing was trained because an input is wrong (config, data file, device, out_dir),
1 when a started run fails, 130 on Ctrl-C; every error is one line ``taxaug-train: error: ...``.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from taxaug.data import schema
from taxaug.data._progress import Progress
from taxaug.data.cli import main as data_main
from taxaug.data.demo import generate_demo
from taxaug_train import cli
from taxaug_train.autobatch import step_bytes
from taxaug_train.config import ConfigError, load_config
from taxaug_train.models import build_model
from taxaug_train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "configs" / "example_own_data.yaml"
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A 2x2x2 demo taxonomy with spatial/temporal/elevation metadata, 16-pixel images."""
    return generate_demo(tmp_path_factory.mktemp("demo"), families=2, genera=2, species=2, per_species=10,
                         image_size=16, seed=5)


def small(labels: Path, out_dir: Path, **extra: object) -> list[str]:
    """`--set` arguments for a CPU-cheap run of a few steps."""
    values = {"data.labels": str(labels), "data.image_size": 16, "data.io_threads": 1, "data.decode_threads": 1,
              "model.width": 4, "train.out_dir": str(out_dir), "train.max_steps": 2, "train.batch_size": 8,
              "train.eval_every": 0, "train.threads": 1, "train.device": "cpu", "train.progress_bar": False}
    values.update(extra)
    out = []
    for k, v in values.items():
        out += ["--set", f"{k}={json.dumps(v) if v is not None else 'null'}"]
    return out


def one_error_line(err: str) -> str:
    """The stderr of a failed run: exactly one line, the error, and no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    errors = [line for line in lines if line.startswith("taxaug-train: error: ")]
    assert len(errors) == 1, err
    return errors[0]


def run_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "taxaug_train", *args], capture_output=True, text=True,
                          env=ENV, timeout=300, **kwargs)


# ------------------------------------------------------------------------------------------ config errors


BAD_CONFIGS = [  # docs/trainer.md's examples first, then non-finite numbers and ranges
    (["train.max_step=5"], r"unknown key(s) 'max_step' in train; valid keys: out_dir, max_steps"),
    (["train.max_steps=many"], "train.max_steps: expected int, got str 'many'"),
    (["data.sampler=pairs"], "data.sampler: expected 'standard' or 'mixed-pairs'"),
    (["optim.lr=.inf"], "optim.lr: must be a finite number, got inf"),
    (["optim.lr=.nan"], "optim.lr: must be a finite number, got nan"),
    (["optim.lr=1.0e+400"], "optim.lr: must be a finite number, got inf"),
    (["optim.grad_clip=-.inf"], "optim.grad_clip: must be a finite number, got -inf"),
    (["loss.rank_weights={taxa_L10: .nan}"], "loss.rank_weights.taxa_L10: must be a finite number"),
    (["data.read_timeout=.inf"], "data.read_timeout: must be a finite number"),
    (["algorithms=[{name: mixup, alpha: .inf}]"], "algorithms[0].alpha: must be a finite number, got inf"),
    (["data.val_ratio=1.0"], "data.val_ratio: 1.0 leaves no training rows"),
    (["data.val_ratio=0"], "data.val_ratio: 0.0 leaves no validation rows"),
    (["data.ranks=[taxa_L10]", "data.group_rank=taxa_L20"], "data.group_rank: 'taxa_L20' is not one of data.ranks"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_CONFIGS)
def test_each_bad_config_is_one_line_and_exit_2(overrides, message, tmp_path, capsys):
    args = [a for o in overrides for a in ("--set", o)]
    assert cli.main([*args, "--set", f"train.out_dir={tmp_path}/run"]) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def _float_keys() -> list[str]:
    """The dotted key of every float-typed value of every config section (read from the annotations)."""
    import typing

    import attrs

    from taxaug_train.config import TrainerConfig

    def has_float(tp) -> bool:
        return tp is float or any(has_float(a) for a in typing.get_args(tp))

    keys = []
    for section, cls in typing.get_type_hints(TrainerConfig).items():
        if not attrs.has(cls):
            continue
        for name, tp in typing.get_type_hints(cls).items():
            if has_float(tp):
                keys.append(f"{section}.{name}" + (".taxa_L10" if typing.get_origin(tp) is dict else ""))
    return keys


def test_every_float_key_rejects_inf_and_nan():
    keys = _float_keys()
    assert {"optim.lr", "data.val_ratio", "loss.rank_weights.taxa_L10", "optim.grad_clip",
            "data.read_timeout"} <= set(keys)
    for key in keys:
        for value, shown in ((".inf", "inf"), ("-.inf", "-inf"), (".nan", "nan"), ("1.0e+400", "inf")):
            with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: must be a finite number, got {shown}$"):
                load_config(None, [f"{key}={value}"])


def test_bad_config_in_a_real_process_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"max_step": 5}}))
    done = run_cli(["--config", str(bad)])
    assert done.returncode == 2
    assert "unknown key(s) 'max_step' in train" in one_error_line(done.stderr)


def test_data_errors_from_the_docs_name_the_key(demo, tmp_path, capsys):
    assert cli.main(small(tmp_path / "nowhere" / "labels.h5", tmp_path / "r")) == 2
    assert "data.labels: file" in one_error_line(capsys.readouterr().err)
    assert cli.main(small(demo, tmp_path / "r", **{"data.ranks": ["taxa_L10", "taxa_L40"]})) == 2
    assert "data.ranks: ['taxa_L40'] not in" in one_error_line(capsys.readouterr().err)
    assert cli.main(small(demo, tmp_path / "r", **{"data.metadata": ["spatial", "weather"]})) == 2
    assert "data.metadata: ['weather'] not in" in one_error_line(capsys.readouterr().err)
    assert cli.main(small(demo, tmp_path / "r", algorithms=[{"name": "selective_mixupp"}])) == 2
    assert "algorithms[0] (selective_mixupp)" in one_error_line(capsys.readouterr().err)


def test_print_config_checks_algorithm_arguments_without_data(tmp_path, capsys):
    args = ["--print-config", "--set", f"data.labels={tmp_path}/absent/labels.h5"]
    assert cli.main([*args, "--set", "algorithms=[{name: mixup, alpha: -1}]"]) == 2
    assert "algorithms[0] (mixup): mixup: alpha must be > 0" in one_error_line(capsys.readouterr().err)
    assert cli.main([*args, "--set", "algorithms=[{name: mixup, alpah: 1}]"]) == 2
    assert "alpah" in one_error_line(capsys.readouterr().err)
    assert cli.main([*args, "--set", "algorithms=[{name: mixup, alpha: 0.4}]"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["algorithms"] == [{"name": "mixup", "alpha": 0.4}]
    assert printed["data"]["ranks"] is None  # the file decides, once it exists


def test_cuda_without_cuda_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["--set", "train.device=cuda", "--set", f"train.out_dir={tmp_path}/r"]) == 2
    assert "train.device: 'cuda' but no CUDA device is available" in one_error_line(capsys.readouterr().err)
    assert cli.main(["--print-config", "--set", "train.device=cuda"]) == 2


def test_out_dir_that_is_a_file_is_refused(demo, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    assert cli.main(small(demo, blocker)) == 2
    assert f"train.out_dir: '{blocker}' is a file, not a folder" in one_error_line(capsys.readouterr().err)
    assert cli.main(small(demo, blocker / "run")) == 2
    assert f"'{blocker}' is a file" in one_error_line(capsys.readouterr().err)
    assert blocker.read_text() == "not a folder"


# ------------------------------------------------------------------------------------------ data faults


def _labels_with_images(root: Path, genus_of_species: list[int], species: list[int]) -> Path:
    images = root / "images"
    images.mkdir(parents=True)
    ids = [f"img{i}" for i in range(len(species))]
    rng = np.random.default_rng(0)
    for name in ids:
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(images / name, format="PNG")
    taxa = {"taxa_L10": np.array(species), "taxa_L20": np.array(genus_of_species), "taxa_L30": np.ones(len(species))}
    names = {"taxa_L10": {"7": "Quercus robur"}, "taxa_L20": {"10": "Quercus", "20": "Pinus"}}
    return schema.write_labels(root / "labels.h5", ids, taxa, config={"taxon_names": names})


def test_species_under_two_genera_names_rank_and_taxa(tmp_path, capsys):
    # species 7 sits under genus 10 in three rows and genus 20 in one
    species = [7, 7, 7, 7, 8, 8, 8, 8, 9, 9, 9, 9]
    genus = [10, 10, 10, 20, 10, 10, 10, 10, 20, 20, 20, 20]
    labels = _labels_with_images(tmp_path / "ds", genus, species)
    assert cli.main(small(labels, tmp_path / "r", **{"train.batch_size": 4})) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "do not form a tree" in line and str(labels) in line
    assert "taxa_L10 taxon 7 ('Quercus robur') sits under 2 parents at taxa_L20: 10 ('Quercus') (3 rows), " \
           "20 ('Pinus') (1 row)" in line
    assert "data.taxonomy_conflicts: majority" in line
    cfg = load_config(None, [a for a in small(labels, tmp_path / "r", **{"train.batch_size": 4,
                                                                        "data.taxonomy_conflicts": "majority"})
                             if a != "--set"])
    with pytest.warns(UserWarning, match=r"1 taxon sits under several parents; .*taxa_L10 taxon 7 \('Quercus robur'\)"):
        trainer = Trainer(cfg, write_files=False)  # majority: species 7 keeps genus 10
    tax, tables = trainer.taxonomy, trainer.train_set.class_to_taxon_id
    seven = int(np.flatnonzero(tables["taxa_L10"] == 7)[0])
    assert tables["taxa_L20"][int(tax.parent_array("taxa_L10")[seven])] == 10


def test_damaged_hdf5_chunk_names_file_and_dataset(demo, tmp_path, capsys):
    ds_dir = tmp_path / "ds"
    ds_dir.mkdir()
    labels = ds_dir / "labels.h5"
    labels.write_bytes(demo.read_bytes())
    (ds_dir / "images").symlink_to(demo.parent / "images")
    with h5py.File(labels, "a") as f:  # re-store taxa_L20 compressed in chunks, then break one chunk
        data = f["taxa_L20"][()]
        del f["taxa_L20"]
        f.create_dataset("taxa_L20", data=data, chunks=(16,), compression="gzip")
    with h5py.File(labels, "r") as f:
        info = f["taxa_L20"].id.get_chunk_info(1)
    with labels.open("r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    assert cli.main(small(labels, tmp_path / "r")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot read dataset 'taxa_L20' of '{labels}'" in line and "damaged" in line


def test_missing_image_while_training_is_one_line_and_exit_1(tmp_path, capsys):
    labels = _labels_with_images(tmp_path / "ds", [10] * 6 + [20] * 6, [7] * 6 + [8] * 6)
    (tmp_path / "ds" / "images" / "img3").unlink()
    args = small(labels, tmp_path / "r", **{"train.batch_size": 4, "train.max_steps": 4, "data.val_ratio": 0.25})
    assert cli.main(args) == 1
    assert "img3" in one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------------------ interrupts


def test_ctrl_c_during_start_up_in_a_real_process_says_nothing_was_saved(demo, tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from taxaug_train import cli, trainer
        def slow(cfg):
            print("READY", file=sys.stderr, flush=True)
            time.sleep(60)
        trainer.resolve_data_config = slow
        sys.exit(cli.main({small(demo, tmp_path / "run")!r}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert proc.stderr.readline().strip() == "READY"
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
    assert rest.strip() == "taxaug-train: interrupted during start-up; nothing was saved"
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_ctrl_c_before_any_checkpoint_gives_no_resume_hint(demo, tmp_path, monkeypatch, capsys):
    def interrupted(self, **_):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", interrupted)
    assert cli.main(small(demo, tmp_path / "r")) == 130
    err = capsys.readouterr().err
    assert "nothing was saved" in err and "--resume" not in err


# ------------------------------------------------------------------------------------------ the example config


def test_example_config_trains_on_a_folder_build_as_is(tmp_path, caplog):
    tree = tmp_path / "photos"
    rng = np.random.default_rng(1)
    for family, genus, species in [("F1", "G1", "s1"), ("F1", "G1", "s2"), ("F1", "G2", "s3"), ("F2", "G3", "s4")]:
        folder = tree / family / genus / species
        folder.mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    built = tmp_path / "built"  # not ./data: the example must find images/ next to labels.h5 itself
    assert data_main(["build", "--from-folder", str(tree), "--out", str(built), "--workers", "1"]) == 0
    out = tmp_path / "run"
    fast = {"train.max_steps": 2, "data.image_size": 32, "train.out_dir": str(out), "train.eval_every": 0,
            "data.io_threads": 1, "data.decode_threads": 1, "data.cache_mb": 8, "train.threads": 1,
            "data.val_ratio": 0.25, "train.progress_bar": False}
    args = ["--config", str(EXAMPLE), "--set", f"data.labels={built / 'labels.h5'}"]
    for k, v in fast.items():
        args += ["--set", f"{k}={v}"]
    with caplog.at_level("INFO", logger="taxaug_train"):
        assert cli.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["ranks"]) == ["taxa_L10", "taxa_L20", "taxa_L30"]
    effective = yaml.safe_load((out / "config.yaml").read_text())
    assert effective["data"]["ranks"] == ["taxa_L10", "taxa_L20", "taxa_L30"]
    assert effective["data"]["metadata"] == [] and effective["model"]["metadata_branch"] is False
    assert effective["loss"]["rank_weights"] == {"taxa_L10": 1.0, "taxa_L20": 0.5, "taxa_L30": 0.25}
    assert effective["data"]["images_dir"] is None
    text = caplog.text
    assert "optim.warmup_steps (1000) >= train.max_steps (2)" in text
    assert "bf16 autocast on CPU" in text
    assert "batch_size auto: searching the largest batch up to" in text


def test_metadata_defaults_to_every_encoded_dataset_of_the_file(demo, tmp_path):
    args = [a for a in small(demo, tmp_path / "r", **{"model.metadata_branch": "auto"}) if a != "--set"]
    trainer = Trainer(load_config(None, args), write_files=False)
    names = [n for n, _ in trainer.aux_components]
    with h5py.File(demo, "r") as f:
        expected = [n for n in ("spatial", "temporal") if n in f] + sorted(n for n in f if n.startswith("elevation_"))
    assert names == expected and len(names) >= 3
    assert trainer.cfg.model.metadata_branch is True and trainer.model.metadata is not None
    explicit = load_config(None, [*args, "data.metadata=[]"])
    assert Trainer(explicit, write_files=False).aux_components == []


# ------------------------------------------------------------------------------------------ auto batch, progress


def test_cpu_step_bytes_are_linear_in_the_batch(demo):
    """What the two-probe CPU search relies on: bytes(b) is exactly a line through bytes(2) and bytes(4)."""
    from taxaug.taxonomy import Taxonomy
    from taxaug_train.config import ModelConfig

    tax = Taxonomy.from_labels({"taxa_L10": np.array([1, 2, 3]), "taxa_L20": np.array([1, 1, 2])}, null_index=0,
                               num_classes={"taxa_L10": 4, "taxa_L20": 3})
    model = build_model(ModelConfig(width=8, head="parent_conditioned"), tax, image_size=24)

    def forward(m, images):
        return sum(v.float().logsumexp(1).mean() for v in m(images).values())

    measured = {b: step_bytes(model, forward, torch.zeros(b, 3, 24, 24, dtype=torch.uint8)) for b in (2, 4, 11)}
    assert measured[11] - measured[2] == (measured[4] - measured[2]) * 9 // 2


def test_progress_off_a_terminal_writes_whole_lines():
    log = io.StringIO()
    bar = Progress(10, "train", enabled=True, stream=log, interval=0.0, unit="step")
    for _ in range(10):
        bar.update(1)
        bar.set_postfix(loss="0.5")
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 10 and lines[-1].startswith("train: 10/10 (100.0%)") and "loss 0.5" in lines[-1]

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    bar = Progress(3, "verify", enabled=True, stream=term, interval=0.0)
    bar.update(3)
    bar.close()
    assert term.getvalue().startswith("\rverify: 3/3") and term.getvalue().endswith("\n")


def test_training_log_in_a_pipe_has_no_carriage_returns(demo, tmp_path):
    done = run_cli(small(demo, tmp_path / "r", **{"train.progress_bar": True, "train.max_steps": 4,
                                                  "train.eval_every": 2}))
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    lines = done.stderr.splitlines()
    evals = [line for line in lines if " eval: loss " in line]
    assert len(evals) == 2 and all(line.startswith("[taxaug_train] step ") for line in evals)
    assert any(line.startswith("train: 4/4 (100.0%)") for line in lines)


def test_images_left_in_place_by_the_builder_are_found(tmp_path):
    tree = tmp_path / "photos"
    rng = np.random.default_rng(2)
    for genus, species in [("G1", "s1"), ("G1", "s2"), ("G2", "s3")]:
        (tree / genus / species).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tree / genus / species / f"{i}.png")
    built = tmp_path / "built"
    assert data_main(["build", "--from-folder", str(tree), "--out", str(built), "--images", "none"]) == 0
    assert not (built / "images").exists()
    args = [a for a in small(built / "labels.h5", tmp_path / "r", **{"train.batch_size": 4, "data.val_ratio": 0.25,
                                                                      "data.stratify_rank": None}) if a != "--set"]
    trainer = Trainer(load_config(None, args), write_files=False)
    assert trainer.train_set.locator.images_dir == tree
    image = trainer.train_set.load_image(0)
    assert image.shape == (3, 16, 16) and float(image.float().std()) > 0  # strict mode: a real decode
