"""Faults a user meets building and checking a dataset: each reproduced with real files and the CLI.

Each case runs the CLI, ``python -m taxaug.data.cli`` in a subprocess (or its ``main`` in-process
where a subprocess adds only start-up time), and asserts the exit code and the one-line message
naming the row (or path) at fault.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import taxaug
from taxaug.data import build, validate, write_labels
from taxaug.data.cli import main

REPO = Path(taxaug.__file__).resolve().parents[1]


def cli(*args: object) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "taxaug.data.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def cli_here(capsys, *args: object) -> subprocess.CompletedProcess:
    """The same CLI entry point in this process: exit code, stdout and stderr."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def problem_lines(err: str) -> list[str]:
    return [line.strip()[2:] for line in err.splitlines() if line.strip().startswith("- ")]


def jpeg(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)


def photos(folder: Path, count: int) -> Path:
    for i in range(count):
        jpeg(folder / f"{i}.jpg", i)
    return folder


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_identifier_escaping_the_images_folder_is_refused_and_nothing_is_written_outside(tmp_path):
    src = photos(tmp_path / "photos" / "sub", 2)
    jpeg(tmp_path / "victim" / "p0.jpg", 99)  # exists, so an unchecked build would copy it
    out = tmp_path / "o1" / "o2"  # out/images/../../victim/p0.jpg == o1/victim/p0.jpg
    csv = tmp_path / "obs.csv"
    csv.write_text(f"identifier,taxa_L10\n0.jpg,1\n../../victim/p0.jpg,2\n{tmp_path / 'victim/p0.jpg'},3\n"
                   "a/../../1.jpg,4\n")
    before = files_under(tmp_path)
    proc = cli("build", "--from-csv", csv, "--images-dir", src, "--out", out)
    assert proc.returncode == 2, proc.stderr
    (line,) = [p for p in problem_lines(proc.stderr) if "leaves the images folder" in p]
    assert "row 3 ('../../victim/p0.jpg')" in line and "row 4 (" in line and "row 5 ('a/../../1.jpg')" in line
    assert files_under(tmp_path) == before  # nothing created, nothing replaced, inside --out or outside


def test_identifier_linking_outside_the_images_folder_is_refused(tmp_path, capsys):
    src = photos(tmp_path / "photos", 1)
    jpeg(tmp_path / "elsewhere.jpg", 5)
    os.symlink(tmp_path / "elsewhere.jpg", src / "link.jpg")
    csv = tmp_path / "obs.csv"
    csv.write_text("identifier,taxa_L10\n0.jpg,1\nlink.jpg,2\n")
    proc = cli_here(capsys, "build", "--from-csv", csv, "--images-dir", src, "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert any("outside the images folder at row 3 ('link.jpg')" in p for p in problem_lines(proc.stderr))
    assert not (tmp_path / "out").exists()


def test_taxon_columns_are_numeric_unless_told_names(tmp_path):
    src = photos(tmp_path / "photos", 7)
    csv = tmp_path / "obs.csv"
    csv.write_text("identifier,taxa_L10,taxa_L20\n0.jpg,500,1\n1.jpg,7.0,1\n2.jpg,700,1\n3.jpg,N/A,2\n"
                   "4.jpg,-5,2\n5.jpg,,2\n6.jpg,0,99999999999\n")
    proc = cli("build", "--from-csv", csv, "--images-dir", src, "--out", tmp_path / "out", "--images", "none")
    assert proc.returncode == 2
    lines = problem_lines(proc.stderr)
    assert len(lines) == 2, lines
    assert lines[0].startswith("taxa_L10: not a taxon id at row 3 ('7.0'), row 5 ('N/A'), row 6 ('-5');")
    assert "--taxon-names" in lines[0]
    assert lines[1].startswith("taxa_L20: not a taxon id at row 8 ('99999999999')")
    assert not (tmp_path / "out" / "labels.h5").exists()

    csv.write_text("identifier,taxa_L10,taxa_L20\n0.jpg,500,1\n1.jpg,,1\n2.jpg,700,1\n3.jpg,0,2\n")
    ids = build.build_from_csv(csv, tmp_path / "ids", images_dir=src, images="none")
    with h5py.File(ids.labels_path) as f:
        assert f["taxa_L10"][()].tolist() == [500, 0, 700, 0]  # ids kept, empty and 0 unknown


def test_taxon_names_mode_and_inspect_shows_the_names(tmp_path):
    src = photos(tmp_path / "photos", 4)
    csv = tmp_path / "obs.csv"
    csv.write_text("identifier,taxa_L10,taxa_L20\n0.jpg,Quercus robur,Quercus\n1.jpg,N/A,Quercus\n"
                   "2.jpg,,Fagus\n3.jpg,Fagus sylvatica,Fagus\n")
    named = build.build_from_csv(csv, tmp_path / "names", images_dir=src, images="none", taxon_names=True)
    with h5py.File(named.labels_path) as f:
        assert f["taxa_L10"][()].tolist() == [3, 2, 0, 1]  # ids by sorted name: Fagus s., N/A, Quercus r.
        names = json.loads(f["metadata"].attrs["config_json"])["taxon_names"]
    assert names["taxa_L10"] == {"1": "Fagus sylvatica", "2": "N/A", "3": "Quercus robur"}
    shown = cli("inspect", named.labels_path)
    assert shown.returncode == 0, shown.stderr
    top = {line.split()[0]: line.split(None, 1)[1] for line in shown.stdout.splitlines()[-2:]}
    assert top == {"taxa_L10": "Fagus sylvatica (1), N/A (1), Quercus robur (1)", "taxa_L20": "Fagus (2), Quercus (2)"}


def test_every_row_problem_is_listed_with_its_row(tmp_path):
    src = photos(tmp_path / "photos", 8)
    csv = tmp_path / "obs.csv"
    csv.write_text(
        "identifier,taxa_L10,taxa_L20,date,in_region,lat,lon,notes\n"
        "0.jpg,1,10,2021-05-03,1,10,20,x\n"
        "1.jpg,1,20,2021-02-30,0,10,20,x\n"  # species 1 under genus 10 and 20; invalid date
        "2.jpg,2,10\n"  # short row
        "3.jpg,2,10,,yes,95,20,x\n"  # in_region, latitude out of range
        "0.jpg,3,30,2021-13-01,1,,,x\n"  # duplicate identifier, invalid month
        "\n"  # a blank line is skipped but counts as a row
        "5.jpg,4,40,,1,,,x,extra\n"  # long row
    )
    proc = cli("build", "--from-csv", csv, "--images-dir", src, "--out", tmp_path / "out")
    assert proc.returncode == 2
    lines = problem_lines(proc.stderr)
    expected = {
        "row 1: unknown column(s) ['notes']": "notes",
        "row length: not one cell per column at row 4 (3 cells), row 8 (9 cells)": "short and long rows",
        "in_region: not 0 or 1 at row 5 ('yes')": "in_region",
        "lat: out of range at row 5 ('95')": "latitude",
        "date: not an ISO 8601 date at row 3 ('2021-02-30'), row 6 ('2021-13-01')": "dates",
        "identifier '0.jpg': on rows 2, 6": "duplicates",
        "tree: taxa_L10 taxon 1 sits under 2 parents at taxa_L20: 10 (1 row, first at row 2), "
        "20 (1 row, first at row 3)": "tree",
    }
    for start, what in expected.items():
        assert sum(line.startswith(start) for line in lines) == 1, (what, lines)
    assert len(lines) == len(expected)
    assert "7 problem(s), nothing was built" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_utf8_bom_is_accepted_and_bytes_that_are_not_utf8_are_reported(tmp_path):
    src = photos(tmp_path / "photos", 2)
    csv = tmp_path / "obs.csv"
    csv.write_bytes("\ufeffidentifier,taxa_L10,date\n0.jpg,1,2021-01-01\n1.jpg,2,\"2021-01-02\"\n".encode())
    assert build.build_from_csv(csv, tmp_path / "out", images_dir=src).num_samples == 2
    csv.write_bytes(b"identifier,taxa_L10\n0.jpg,1\n1.jpg,\xff\n")
    bad = cli("build", "--from-csv", csv, "--images-dir", src, "--out", tmp_path / "o2")
    assert bad.returncode == 2
    assert problem_lines(bad.stderr) == ["taxa_L10: not valid UTF-8 at row 3; save the CSV as UTF-8 text"]


def test_folder_file_names_that_are_not_utf8_are_reported_by_path(tmp_path, capsys):
    root = tmp_path / "tree"
    jpeg(root / "Fagaceae" / "Quercus" / "a.jpg")
    jpeg(root / "Fagaceae" / "Quercus" / "b.jpg", 1)
    bad = os.fsencode(root / "Fagaceae" / "Quercus") + b"/caf\xe9.jpg"
    with open(bad, "wb") as handle:
        handle.write((root / "Fagaceae" / "Quercus" / "a.jpg").read_bytes())
    proc = cli_here(capsys, "build", "--from-folder", root, "--out", tmp_path / "out")
    assert proc.returncode == 2
    (line,) = problem_lines(proc.stderr)
    assert line.startswith(f"path {bad!r}: the name is not valid UTF-8")
    assert not (tmp_path / "out").exists()


def test_validate_and_inspect_report_a_species_under_two_genera(tmp_path, capsys):
    path = write_labels(tmp_path / "labels.h5", ["a", "b", "c", "d"],
                        {"taxa_L10": [7, 7, 7, 8], "taxa_L20": [50, 50, 60, 60], "taxa_L30": [1, 1, 1, 1]})
    expected = "tree: taxa_L10 taxon 7 sits under 2 parents at taxa_L20: 50 (2 rows), 60 (1 row)"
    proc = cli("validate", path)
    assert proc.returncode == 1 and expected in proc.stderr
    shown = cli_here(capsys, "inspect", path)
    assert shown.returncode == 1 and f"! {expected}" in shown.stdout and "INVALID (1 problem(s))" in shown.stdout
    good = write_labels(tmp_path / "good.h5", ["a", "b"], {"taxa_L10": [7, 8], "taxa_L20": [50, 50]})
    assert validate(good).ok and validate(path, check_tree=False).ok
    assert [(c.rank, c.child, c.parents, c.counts) for c in validate(path).conflicts] == [
        ("taxa_L10", 7, (50, 60), (2, 1))]


def test_builder_validates_what_it_wrote(tmp_path, monkeypatch):
    src = photos(tmp_path / "photos", 2)
    csv = tmp_path / "obs.csv"
    csv.write_text("identifier,taxa_L10\n0.jpg,1\n1.jpg,2\n")
    real = build.schema.write_labels

    def damaged(path, *args, **kwargs):  # a writer bug: the file holds NaN features
        real(path, *args, **kwargs)
        with h5py.File(path, "a") as f:
            f.create_dataset("spatial", data=np.full((2, 3), np.nan, np.float32))

    monkeypatch.setattr(build.schema, "write_labels", damaged)
    with pytest.raises(build.BuildError, match="the written file fails validation: spatial: 6 NaN"):
        build.build_from_csv(csv, tmp_path / "out", images_dir=src, images="none")
    assert list((tmp_path / "out").glob("labels.h5*")) == []


def test_tree_conflicts_name_the_taxa_when_the_file_carries_names(tmp_path):
    src = photos(tmp_path / "photos", 3)
    csv = tmp_path / "obs.csv"
    csv.write_text("identifier,taxa_L10,taxa_L20\n0.jpg,Quercus robur,Quercus\n1.jpg,Quercus robur,Fagus\n"
                   "2.jpg,Fagus sylvatica,Fagus\n")
    with pytest.raises(build.BuildError) as info:
        build.build_from_csv(csv, tmp_path / "out", images_dir=src, images="none", taxon_names=True)
    assert info.value.problems == ["tree: taxa_L10 taxon 2 ('Quercus robur') sits under 2 parents at taxa_L20: "
                                   "1 ('Fagus') (1 row, first at row 3), 2 ('Quercus') (1 row, first at row 2); "
                                   "a taxon has one parent, fix the rows"]
    path = write_labels(tmp_path / "labels.h5", ["a", "b"], {"taxa_L10": [2, 2], "taxa_L20": [1, 2]},
                        config={"taxon_names": {"taxa_L10": {"2": "Quercus robur"}, "taxa_L20": {"1": "Fagus"}}})
    assert validate(path).problems == ("tree: taxa_L10 taxon 2 ('Quercus robur') sits under 2 parents at taxa_L20: "
                                       "1 ('Fagus') (1 row), 2 (1 row); a taxon has one parent, fix the rows",)
