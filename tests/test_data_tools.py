"""taxaug-data tools: build (folder, CSV) -> validate -> dataset, verify thresholds, shard, inspect, CLI."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from taxaug.data import FilterConfig, HybridDataset, validate
from taxaug.data.build import BuildError, build_from_csv, build_from_folder
from taxaug.data.cli import main
from taxaug.data.inspect import inspect_labels
from taxaug.data.shard import shard_directory
from taxaug.data.verify import VerificationError, verify_images


def _img(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=90)


@pytest.fixture
def tree(tmp_path):
    """family/genus/species/*.jpg with a genus name reused under two families and an _unknown species."""
    root = tmp_path / "tree"
    layout = {("Fagaceae", "Quercus", "robur"): 3, ("Fagaceae", "Quercus", "alba"): 2,
              ("Fagaceae", "Fagus", "sylvatica"): 2, ("Pinaceae", "Quercus", "fake"): 2,
              ("Pinaceae", "Pinus", "_unknown"): 2}
    seed = 0
    for parts, count in layout.items():
        for i in range(count):
            _img(root.joinpath(*parts, f"IMG_{i}.jpg"), seed)
            seed += 1
    return root


def test_build_from_folder_round_trip(tree, tmp_path):
    result = build_from_folder(tree, tmp_path / "out", images="hardlink", shard_k=2)
    assert validate(result.labels_path).ok
    assert result.num_samples == 11
    # species: 4 known + null; genus: Fagaceae/Quercus, Fagaceae/Fagus, Pinaceae/Quercus, Pinaceae/Pinus + null
    assert result.num_classes == {"taxa_L10": 5, "taxa_L20": 5, "taxa_L30": 3}
    ds = result.open(image_size=(16, 16))
    assert ds.taxonomy.num_classes == ds.num_classes  # a valid tree: same genus name under two families is two taxa
    assert (ds.group_ids("taxa_L10") == -1).sum() == 2
    config = json.loads(ds.config_json)
    names = config["taxon_names"]["taxa_L20"]
    assert sorted(names.values()) == ["Fagaceae/Fagus", "Fagaceae/Quercus", "Pinaceae/Pinus", "Pinaceae/Quercus"]
    # every image decodes to the same pixels as its source file
    for i in range(len(ds)):
        rel = config["relative_paths"][ds.file_rows[i]]
        src = torch.from_numpy(np.array(Image.open(tree / rel).convert("RGB").resize((16, 16)))).permute(2, 0, 1)
        assert ds.load_image(i).shape == src.shape
        assert ds.locator.path_for(ds.identifiers[i]).parent.name == ds.identifiers[i][:2]  # sharded
    same_sp = ds.class_targets("taxa_L10") == ds.class_targets("taxa_L10")[0]
    assert len(set(ds.class_targets("taxa_L20")[same_sp])) == 1


def test_build_in_place_and_bad_layouts(tree, tmp_path):
    result = build_from_folder(tree, tmp_path / "o", images="none")
    ds = HybridDataset(result.labels_path, result.images_dir, image_size=8)
    assert ds.identifiers[0].count("/") == 3 and ds.load_image(0).shape == (3, 8, 8)
    _img(tree / "stray.jpg", 99)
    with pytest.raises(ValueError, match="same folder depth"):
        build_from_folder(tree, tmp_path / "o2")
    with pytest.raises(ValueError, match="2 rank names"):
        os.remove(tree / "stray.jpg")
        build_from_folder(tree, tmp_path / "o3", rank_names=["taxa_L10", "taxa_L20"])
    with pytest.raises(FileExistsError):
        build_from_folder(tree, tmp_path / "o", images="none")


def test_build_from_csv_with_metadata(tmp_path):
    src = tmp_path / "src"
    for i in range(4):
        _img(src / f"{i}.jpg", i)
    csv_path = tmp_path / "data.csv"
    csv_path.write_text(
        "identifier,taxa_L10,taxa_L20,lat,lon,date,elevation,in_region,anomaly_score,observer_id\n"
        "0.jpg,5,50,10.5,20,2021-03-01,100,1,0.25,7\n"
        "1.jpg,5,50,,,,,0,,\n"
        "2.jpg,,60,-5,100,2021-08-01T10:00:00,2500,1,1.5,-3\n"
        "3.jpg,7,60,0,0,2022-01-01,0,,0,12\n"
    )
    result = build_from_csv(csv_path, tmp_path / "out", images_dir=src, images="copy",
                            temporal_features=["month"], elevation_sets={"coarse": [1000]})
    assert validate(result.labels_path).ok
    ds = result.open(image_size=8, metadata=("spatial", "temporal", "elevation_coarse"))
    assert ds.aux_components == [("spatial", 3), ("temporal", 2), ("elevation_coarse", 2)]
    assert ds.aux(np.arange(4))[1].tolist() == [[True, True, True], [False, False, False],
                                                 [True, True, True], [True, True, True]]
    np.testing.assert_array_equal(ds.taxon_ids("taxa_L10", ds.class_targets("taxa_L10")), [5, 5, 0, 7])
    with h5py.File(result.labels_path) as f:  # empty cells: NaN where NaN means unknown, else 0
        assert f["anomaly_score"][()].tolist() == [0.25, 0.0, 1.5, 0.0]
        assert f["observer_id"][()].tolist() == [7, 0, -3, 12] and f["in_region"][()].tolist() == [1, 0, 1, 0]
        assert np.isnan(f["raw_lat"][1]) and f["raw_date_observed"].asstr()[1] == ""
    bad = tmp_path / "bad.csv"
    bad.write_text("identifier,taxa_L10\nnope.jpg,1\n")
    with pytest.raises(BuildError, match=r"no such file in the images folder at row 2 \('nope\.jpg'\)"):
        build_from_csv(bad, tmp_path / "o2", images_dir=src)
    with pytest.raises(ValueError, match="no identifier column"):
        build_from_csv(bad, tmp_path / "o3", images_dir=src, identifier_column="id")


@pytest.fixture
def built(tree, tmp_path):
    return build_from_folder(tree, tmp_path / "ds", images="copy")


def test_verify_thresholds_and_report(built, tmp_path):
    report_path = tmp_path / "rep" / "report.json"
    ok = verify_images(built.labels_path, built.images_dir, max_missing_count=0, report_path=report_path,
                       num_workers=3, chunk_size=4)
    assert ok.passed and ok.total_images_checked == 11
    assert json.loads(report_path.read_text())["missing_count"] == 0
    ids = sorted(os.listdir(built.images_dir))
    os.remove(built.images_dir / ids[0])
    (built.images_dir / ids[1]).write_bytes(b"\xff\xd8broken")
    report = verify_images(built.labels_path, built.images_dir, max_missing_count=0, report_path=report_path)
    assert not report.passed
    assert report.missing_identifiers == [ids[0]] and report.corrupt_identifiers == [ids[1]]
    data = json.loads(report_path.read_text())  # written on failure too
    for key in ("total_images_checked", "missing_count", "missing_ratio", "missing_identifiers", "missing_indices",
                "verification_timestamp", "images_dir"):
        assert key in data
    assert data["missing_count"] == 1 and data["corrupt_count"] == 1
    with pytest.raises(VerificationError, match=ids[0]):
        report.raise_if_failed()
    assert verify_images(built.labels_path, built.images_dir, max_missing_count=2).passed
    assert verify_images(built.labels_path, built.images_dir, max_missing_ratio=0.2).passed
    assert not verify_images(built.labels_path, built.images_dir, max_missing_ratio=0.1).passed
    assert not verify_images(built.labels_path, built.images_dir).passed  # no threshold: none may fail
    exists_only = verify_images(built.labels_path, built.images_dir, decode=False)
    assert exists_only.missing_count == 1 and exists_only.corrupt_count == 0


def test_cli_verify_exit_codes(built, tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(["verify", str(built.labels_path), str(built.images_dir), "--max-missing-count", "0",
                 "--report", str(report), "--no-progress"]) == 0
    os.remove(next(built.images_dir.iterdir()))
    assert main(["verify", str(built.labels_path), str(built.images_dir), "--max-missing-count", "0",
                 "--report", str(report), "--no-progress"]) == 1
    assert json.loads(report.read_text())["missing_count"] == 1
    assert "FAILED" in capsys.readouterr().out
    assert main(["verify", str(built.labels_path), str(built.images_dir), "--max-missing-ratio", "0.5"]) == 0


def test_shard_hardlinks_resumes_and_falls_back_to_copy(built, tmp_path, monkeypatch):
    out = tmp_path / "sharded"
    first = shard_directory(built.images_dir, out, k=2, num_workers=3)
    assert (first.linked, first.copied, first.skipped, first.failed) == (11, 0, 0, [])
    name = sorted(os.listdir(built.images_dir))[0]
    assert os.path.samefile(out / name[:2] / name, built.images_dir / name)  # a hardlink, no copy
    again = shard_directory(built.images_dir, out, k=2)
    assert again.skipped == 11 and again.linked == 0
    os.remove(out / name[:2] / name)  # as if interrupted
    resumed = shard_directory(built.images_dir, out, k=2)
    assert resumed.linked == 1 and resumed.skipped == 10

    def refuse(*_a, **_k):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    copied = shard_directory(built.images_dir, tmp_path / "copied", k=1)
    assert copied.copied == 11 and copied.linked == 0
    target = tmp_path / "copied" / name[:1] / name
    assert target.read_bytes() == (built.images_dir / name).read_bytes()
    assert not os.path.samefile(target, built.images_dir / name)
    ds = HybridDataset(built.labels_path, out, shard_k=2, image_size=8)
    assert len(ds) == 11 and ds.load_image(3).shape == (3, 8, 8)


def test_inspect_counts_and_cli(built, capsys):
    info = inspect_labels(built.labels_path)
    assert info["valid"] and info["num_samples"] == 11
    assert info["ranks"]["taxa_L10"]["unknown"] == 2
    assert info["ranks"]["taxa_L10"]["groups"] == 4 and info["ranks"]["taxa_L10"]["max"] == 3
    assert info["ranks"]["taxa_L30"]["groups"] == 2
    assert info["ranks"]["taxa_L10"]["most_frequent"][0] == {"id": 3, "count": 3, "name": "Fagaceae/Quercus/robur"}
    assert [t["name"] for t in info["ranks"]["taxa_L30"]["most_frequent"]] == ["Fagaceae", "Pinaceae"]
    assert main(["inspect", str(built.labels_path)]) == 0
    out = capsys.readouterr().out
    assert "taxa_L10" in out and "valid" in out
    assert "taxa_L30   Fagaceae (7), Pinaceae (4)" in out  # names, not class indices
    assert main(["inspect", str(built.labels_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_samples"] == 11


def test_cli_build_and_shard(tree, tmp_path, capsys):
    assert main(["build", "--from-folder", str(tree), "--out", str(tmp_path / "c"), "--shard-k", "1"]) == 0
    assert "11 samples" in capsys.readouterr().out
    assert validate(tmp_path / "c" / "labels.h5").ok
    assert main(["build", "--from-folder", str(tree), "--out", str(tmp_path / "c")]) == 2  # exists
    assert "overwrite" in capsys.readouterr().err
    assert main(["build", "--from-folder", str(tree), "--out", str(tmp_path / "d"), "--taxon-names"]) == 2
    assert "--taxon-names applies to --from-csv" in capsys.readouterr().err
    csv_path = tmp_path / "no_id.csv"
    csv_path.write_text("file,taxa_L10\na.jpg,1\n")
    assert main(["build", "--from-csv", str(csv_path), "--images-dir", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert f"error: {csv_path}: row 1: no identifier column 'identifier'" in capsys.readouterr().err
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        _img(flat / f"ab{i}.jpg", i)
    assert main(["shard", str(flat), str(tmp_path / "s"), "--k", "2", "--no-progress"]) == 0
    assert sorted(os.listdir(tmp_path / "s" / "ab")) == ["ab0.jpg", "ab1.jpg", "ab2.jpg"]


def test_cli_demo_without_generator_fails_clearly(monkeypatch, capsys, tmp_path):
    import sys

    import taxaug.data

    # as if demo.py were absent, even when an earlier test already imported it
    monkeypatch.setitem(sys.modules, "taxaug.data.demo", None)
    monkeypatch.delattr(taxaug.data, "demo", raising=False)
    assert main(["demo", "--out", str(tmp_path / "x")]) == 2
    assert "demo generator (taxaug.data.demo) is not available" in capsys.readouterr().err


def test_dataset_verify_counts_only_its_rows(built, tmp_path):
    ds = built.open(image_size=8, filters=FilterConfig(required_ranks=("taxa_L10",)))
    assert len(ds) == 9
    unknown_row = int(np.flatnonzero(~np.isin(np.arange(11), ds.file_rows))[0])
    excluded = HybridDataset(built.labels_path, built.images_dir).identifiers[unknown_row]
    os.remove(built.images_dir / excluded)  # a filtered-out row's image: not this dataset's problem
    assert ds.verify(max_missing_count=0).total_images_checked == 9
    kept = ds.identifiers[4]
    os.remove(built.images_dir / kept)
    report_path = tmp_path / "v.json"
    with pytest.raises(VerificationError, match=kept):
        ds.verify(max_missing_count=0, report_path=report_path)
    data = json.loads(report_path.read_text())
    assert data["missing_indices"] == [int(ds.file_rows[4])]  # file rows, as in the labels file
    assert not ds.verify(max_missing_ratio=0.0, raise_on_failure=False).passed


def test_dataset_verify_uses_the_identifiers_it_holds(built, monkeypatch):
    ds = built.open(image_size=8, filters=FilterConfig(required_ranks=("taxa_L10",)))
    os.remove(built.images_dir / ds.identifiers[2])
    expected = verify_images(built.labels_path, built.images_dir, rows=ds.file_rows, max_missing_count=1)
    from taxaug.data import verify

    def no_read(*_args, **_kwargs):
        raise AssertionError("the file was read again")

    monkeypatch.setattr(verify, "_read_labels", no_read)
    got = ds.verify(max_missing_count=1)
    assert got.missing_indices == expected.missing_indices == [int(ds.file_rows[2])]
    assert got.total_images_checked == expected.total_images_checked == 9
    with pytest.raises(ValueError, match="must name exactly the 3 rows given"):
        verify_images(built.labels_path, built.images_dir, rows=ds.file_rows[:3], identifiers=ds.identifiers,
                      check_labels=False)


def test_csv_build_memory_is_bounded_by_the_label_columns(tmp_path, monkeypatch):
    """Streamed in blocks: peak traced memory stays within a few times the converted columns (a dict per
    row, as csv.DictReader keeps, is ~10x them)."""
    import tracemalloc

    from taxaug.data import csv_source

    n = 20_000
    rng = np.random.default_rng(0)
    species = rng.integers(0, 500, n)
    lines = [f"{i:08d}_x.jpg,{s or ''},{s // 7 + 1},{s // 50 + 1},{rng.uniform(-60, 60):.5f},12.5,2021-05-03,"
             f"{i % 900}.5,{i % 2}" for i, s in enumerate(species.tolist())]
    path = tmp_path / "big.csv"
    path.write_text("identifier,taxa_L10,taxa_L20,taxa_L30,lat,lon,date,elevation,in_region\n" + "\n".join(lines))
    monkeypatch.setattr(csv_source, "CHUNK_ROWS", 2_000)
    tracemalloc.start()
    try:
        table, problems = csv_source.read_csv(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not problems and table.identifiers.shape == (n,)
    columns = sum(a.nbytes for a in (table.identifiers, table.rows, *table.taxa.values(), *table.metadata.values()))
    assert peak < 4 * columns, (peak, columns)
    np.testing.assert_array_equal(table.taxa["taxa_L10"], species)
