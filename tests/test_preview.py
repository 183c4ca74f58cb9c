"""taxaug-preview shows taxon names when the labels file carries them (a folder build), indices otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from trainer_helpers import DEMO_CONFIG, tiny_overrides

from taxaug_train import preview

SPECIES = {("Felidae", "Felis", "catus"), ("Felidae", "Felis", "silvestris"), ("Felidae", "Panthera", "leo"),
           ("Felidae", "Panthera", "tigris"), ("Canidae", "Canis", "lupus"), ("Canidae", "Canis", "latrans"),
           ("Canidae", "Vulpes", "vulpes"), ("Canidae", "Vulpes", "zerda")}


@pytest.fixture(scope="module")
def named_labels(tmp_path_factory) -> Path:
    from taxaug.data.build import build_from_folder

    root = tmp_path_factory.mktemp("named")
    rng = np.random.default_rng(0)
    for parts in sorted(SPECIES):
        folder = root.joinpath("photos", *parts)
        folder.mkdir(parents=True)
        for k in range(8):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    return build_from_folder(root / "photos", root / "data", images="copy", progress=False).labels_path


def _trainer(labels: Path, out: Path):
    from taxaug_train.config import load_config
    from taxaug_train.trainer import Trainer

    overrides = tiny_overrides(labels, out, **{"data.metadata": [], "model.metadata_branch": False})
    return Trainer(load_config(DEMO_CONFIG, overrides), write_files=False)


def test_preview_cells_name_the_taxa(named_labels, tmp_path):
    trainer = _trainer(named_labels, tmp_path / "run")
    names = preview.class_names(trainer.train_set)
    assert set(names["taxa_L10"][1:]) <= {s for _, _, s in SPECIES} and names["taxa_L10"][0] == "-"
    assert set(names["taxa_L30"][1:]) == {"Felidae", "Canidae"}
    info = preview.preview_batch(trainer)
    batch = info["batch"]
    for i in range(batch.batch_size):
        line1, _, line3 = preview.cell_lines(info, i)
        species = names["taxa_L10"][int(info["labels"]["taxa_L10"][i])]
        assert line1.startswith(f"{i}: {species}")
        partner = int(info["perm"][i])
        if partner != i:  # selective mixing inside a species: the partner carries the same name
            assert line1 == f"{i}: {species}->{names['taxa_L10'][int(info['labels']['taxa_L10'][partner])]}"
        assert species in line3
    out = tmp_path / "grid.png"
    assert preview.render_grid(info, cols=4, cell=48, count=8).size == (4 * 48, preview.HEADER_HEIGHT + 2 * (
        48 + preview.TEXT_LINES * preview.LINE_HEIGHT))
    preview.render_grid(info).save(out)


def test_without_names_the_cells_keep_class_indices(named_labels, tmp_path):
    trainer = _trainer(named_labels, tmp_path / "run")
    trainer.train_set.config_json = None  # a file written without taxon_names
    info = preview.preview_batch(trainer)
    assert info["names"] == {}
    labels = info["labels"]
    line1 = preview.cell_lines(info, 0)[0]
    assert line1.startswith("0: " + "/".join(str(int(labels[r][0])) for r in info["ranks"]))
