"""Reference trainer: end-to-end smoke on the demo config, event order, outputs, bad configs, preview."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from trainer_helpers import DEMO_CONFIG, tiny_overrides

from taxaug.algorithms import Event
from taxaug.data.demo import generate_demo
from taxaug_train import cli
from taxaug_train.config import ConfigError, load_config
from taxaug_train.trainer import Trainer


def _records(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------ smoke


def test_demo_config_trains_end_to_end_and_fires_every_event_in_order(tiny_labels, tmp_path, capsys):
    cfg = load_config(DEMO_CONFIG, tiny_overrides(tiny_labels, tmp_path / "run"))
    trainer = Trainer(cfg)
    fired: list[Event] = []
    run = trainer.engine.run
    trainer.engine.run = lambda event, state: (fired.append(event), run(event, state))[1]
    seen_training_flags = []
    original_step = trainer._train_step

    def spy(batch):
        seen_training_flags.append(trainer.state.training)
        return original_step(batch)

    trainer._train_step = spy
    summary = trainer.fit()

    # events: INIT, FIT_START, then per epoch EPOCH_START, per batch the 10 step events, EPOCH_END; evals nest
    assert fired[:3] == [Event.INIT, Event.FIT_START, Event.EPOCH_START]
    assert fired[-1] == Event.FIT_END
    step_events = [Event.BEFORE_DATALOADER, Event.AFTER_DATALOADER, Event.BATCH_START, Event.BEFORE_FORWARD,
                   Event.AFTER_FORWARD, Event.BEFORE_LOSS, Event.AFTER_LOSS, Event.BEFORE_BACKWARD,
                   Event.AFTER_BACKWARD, Event.BATCH_END]
    starts = [i for i, e in enumerate(fired) if e == Event.BEFORE_DATALOADER]
    assert len(starts) == 6
    for i in starts:
        assert fired[i:i + len(step_events)] == step_events
    evals = [i for i, e in enumerate(fired) if e == Event.EVAL_START]
    assert len(evals) == 2  # steps 3 and 6
    for i in evals:
        j = fired.index(Event.EVAL_END, i)
        inner = set(fired[i + 1:j])
        assert inner <= {Event.EVAL_BATCH_START, Event.EVAL_BATCH_END}, "training events fired during evaluation"
    assert all(seen_training_flags)

    out = tmp_path / "run"
    recs = _records(out)
    assert [r["step"] for r in recs if r["event"] == "train"] == [1, 2, 3, 4, 5, 6]
    evals = [r for r in recs if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6]
    n_val = len(trainer.val_set)
    for r in evals:
        assert set(r["ranks"]) == {"taxa_L10", "taxa_L20", "taxa_L30"}
        for m in r["ranks"].values():
            assert 0.0 <= m["top1"] <= 1.0 and (m["top5"] is None or m["top1"] <= m["top5"] <= 1.0)  # n/a: null
            assert m["n"] <= n_val
        assert r["ranks"]["taxa_L30"]["n"] == n_val  # no family is null in the demo
    # effective config saved and loadable back to the same config
    assert load_config(out / "config.yaml") == cfg
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt", "step_00000003.pt",
                                                                        "step_00000006.pt"]
    assert json.loads((out / "summary.json").read_text())["step"] == 6
    printed = capsys.readouterr().out
    assert "taxa_L10 (species)" in printed and "chance" in printed
    assert summary["ranks"]["taxa_L30"]["chance"] == pytest.approx(0.5)


def test_validation_batches_are_never_augmented(tiny_labels, tmp_path):
    cfg = load_config(DEMO_CONFIG, tiny_overrides(tiny_labels, tmp_path / "run", **{"train.max_steps": 1}))
    trainer = Trainer(cfg, write_files=False)
    seen = []
    original_update = trainer.metrics.update

    def spy(outputs, targets):
        seen.append({r: t.clone() for r, t in targets.items()})
        return original_update(outputs, targets)

    trainer.metrics.update = spy
    raw_images = {}
    forward = trainer._forward

    def capture(model, batch):
        if not trainer.state.training:
            for i, idx in enumerate(batch.indices.tolist()):
                raw_images[idx] = batch.images[i].clone()
        return forward(model, batch)

    trainer._forward = capture
    trainer.evaluate()
    assert all(t.ndim == 1 and t.dtype == torch.long for batch in seen for t in batch.values())
    assert sorted(raw_images) == list(range(len(trainer.val_set)))
    for idx, image in list(raw_images.items())[:5]:  # exactly the decoded file, pixel for pixel
        assert torch.equal(image, trainer.val_set.load_image(idx))


# ------------------------------------------------------------------------------------------ config errors


def test_unknown_key_is_rejected_by_name(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"train": {"max_step": 10}}))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'max_step' in train; valid keys: out_dir, max_steps"):
        load_config(path)


def test_wrong_type_is_rejected_by_name():
    with pytest.raises(ConfigError, match=r"train\.max_steps: expected int, got str 'many'"):
        load_config(None, ["train.max_steps=many"])
    with pytest.raises(ConfigError, match=r"train.max_steps must be > 0"):
        load_config(None, ["train.max_steps=0"])
    with pytest.raises(ConfigError, match=r"data\.sampler: expected 'standard' or 'mixed-pairs'"):
        load_config(None, ["data.sampler=pairs"])


def test_missing_dataset_file_is_a_clear_error(tmp_path, capsys):
    rc = cli.main(["--set", f"data.labels={tmp_path}/nowhere/labels.h5", "--set", "train.device=cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "data.labels" in err and "does not exist" in err and "nowhere/labels.h5" in err


def test_rank_missing_from_labels_is_a_clear_error(tiny_labels, tmp_path):
    cfg = load_config(DEMO_CONFIG, tiny_overrides(tiny_labels, tmp_path, **{"data.ranks": ["taxa_L10", "taxa_L20", "taxa_L30", "taxa_L40"]}))
    with pytest.raises(ConfigError, match=r"data\.ranks: \['taxa_L40'\] not in .*labels\.h5.*taxa_L10"):
        Trainer(cfg, write_files=False)


def test_unknown_algorithm_names_the_entry(tiny_labels, tmp_path):
    cfg = load_config(DEMO_CONFIG, tiny_overrides(tiny_labels, tmp_path))
    data = yaml.safe_load(DEMO_CONFIG.read_text())
    data["algorithms"].append({"name": "selective_mixupp"})
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    cfg = load_config(bad, tiny_overrides(tiny_labels, tmp_path))
    with pytest.raises(ConfigError, match=r"algorithms\[2\] \(selective_mixupp\).*selective_mixup"):
        Trainer(cfg, write_files=False)


def test_odd_batch_for_mixed_pairs_is_rejected(tiny_labels, tmp_path):
    cfg = load_config(DEMO_CONFIG, tiny_overrides(tiny_labels, tmp_path, **{"train.batch_size": 7}))
    with pytest.raises(ConfigError, match="even batch size, got 7"):
        Trainer(cfg, write_files=False)


# ------------------------------------------------------------------------------------------ preview


def test_preview_writes_png_of_expected_size(tiny_labels, tmp_path, capsys):
    from taxaug_train import preview

    out = tmp_path / "grid.png"
    args = ["--config", str(DEMO_CONFIG), "--out", str(out), "--count", "8", "--cols", "4", "--cell", "40"]
    for item in tiny_overrides(tiny_labels, tmp_path / "p", **{"train.batch_size": 8}):
        args += ["--set", item]
    args += ["--set", "algorithms=" + json.dumps([{"name": "selective_mixup", "group_levels": ["taxa_L10"],
                                                   "prob": 1.0}])]
    assert preview.main(args) == 0
    with Image.open(out) as img:
        assert img.format == "PNG"
        rows = math.ceil(8 / 4)
        assert img.size == (4 * 40, preview.HEADER_HEIGHT + rows * (40 + preview.TEXT_LINES * preview.LINE_HEIGHT))
        pixels = np.asarray(img.convert("RGB"))
    # the first tile holds an image (not the blank canvas) and the text strip has ink
    tile = pixels[preview.HEADER_HEIGHT:preview.HEADER_HEIGHT + 40, :40]
    assert tile.std() > 5
    strip = pixels[preview.HEADER_HEIGHT + 40:preview.HEADER_HEIGHT + 40 + 36, :40]
    assert (strip < 128).any()
    assert "preview written" in capsys.readouterr().out


def test_preview_reports_the_mixing_partner_and_lam(tiny_labels, tmp_path):
    from taxaug_train.preview import preview_batch

    overrides = tiny_overrides(tiny_labels, tmp_path, **{"train.batch_size": 8})
    overrides.append("algorithms=" + json.dumps([{"name": "selective_mixup", "group_levels": ["taxa_L10"],
                                                  "prob": 1.0}]))
    info = preview_batch(Trainer(load_config(DEMO_CONFIG, overrides), write_files=False))
    perm, lam, labels = info["perm"], info["lam"], info["labels"]["taxa_L10"]
    mixed = perm != torch.arange(perm.numel())
    assert mixed.any()
    assert torch.equal(labels[perm[mixed]], labels[mixed])  # partners share the species
    assert ((lam[mixed] > 0) & (lam[mixed] < 1)).all() and (lam[~mixed] == 1).all()


# ------------------------------------------------------------------------------------------ demo data


def test_taxaug_data_demo_writes_a_real_tree_through_the_builder(tmp_path, capsys):
    import h5py

    from taxaug.data import HybridDataset, validate
    from taxaug.data.cli import main as data_main

    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--families", "2", "--genera", "2", "--species", "3", "--per-species", "6",
            "--image-size", "24"]
    assert data_main(args) == 0
    assert "demo dataset written" in capsys.readouterr().out
    assert validate(out / "labels.h5").ok
    assert (out / "observations.csv").is_file()  # the CSV the builder read
    with h5py.File(out / "labels.h5") as f:
        assert "taxaug-data build" in f["metadata"].attrs["config_json"]
    ds = HybridDataset(out / "labels.h5", out / "images", metadata=("spatial", "elevation_multiscale"))
    assert len(ds) == 2 * 2 * 3 * 6
    assert ds.num_classes == {"taxa_L10": 13, "taxa_L20": 5, "taxa_L30": 3}
    tax = ds.taxonomy  # every species has one genus, every genus one family
    assert sorted(np.bincount(tax.parent_array(0)[1:]).tolist()) == [0, 3, 3, 3, 3]
    assert sorted(np.bincount(tax.parent_array(1)[1:]).tolist()) == [0, 2, 2]
    assert ds.load_image(0).shape == (3, 24, 24)
    # location follows the family: the two families' mean positions are far apart
    aux, _ = ds.aux(np.arange(len(ds)))
    fam = torch.from_numpy(ds.class_targets("taxa_L30"))
    means = torch.stack([aux[fam == k, :3].mean(0) for k in (1, 2)])
    assert (means[0] - means[1]).norm() > 0.5
    # a second run does not overwrite silently
    capsys.readouterr()
    assert data_main(args) != 0
    assert "exists; pass overwrite=True (--overwrite)" in capsys.readouterr().err


def test_a_separate_validation_file_uses_the_training_class_indices(tiny_labels, tmp_path):
    val_labels = generate_demo(tmp_path / "val", families=2, genera=2, species=2, per_species=3, image_size=16,
                               seed=11)
    cfg = load_config(DEMO_CONFIG, tiny_overrides(tiny_labels, tmp_path / "run", **{
        "data.val_labels": str(val_labels), "train.max_steps": 1, "train.eval_every": 1}))
    trainer = Trainer(cfg, write_files=False)
    assert len(trainer.train_set) == 96 and len(trainer.val_set) == 24  # the whole training file trains
    for rank in trainer.ranks:  # same taxon -> same class index in both files
        train_ids = trainer.train_set.taxon_ids(rank, trainer.train_set.class_targets(rank))
        val_ids = trainer.val_set.taxon_ids(rank, trainer.val_set.class_targets(rank))
        assert set(val_ids) <= set(train_ids)
        assert np.array_equal(trainer.val_set.class_to_taxon_id[rank], trainer.train_set.class_to_taxon_id[rank])
    summary = trainer.fit()
    assert summary["ranks"]["taxa_L30"]["n"] == 24
