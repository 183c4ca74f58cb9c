"""taxaug-report on real tiny demo runs: tables against the runs' own files, plots, per-distance counts, errors."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from trainer_helpers import DEMO_CONFIG, tiny_overrides

from taxaug_train import report
from taxaug_train.config import load_config
from taxaug_train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
RUNS = {"a0": {"train.seed": 0}, "a1": {"train.seed": 1},
        "b0": {"train.seed": 0, "loss.label_smoothing": 0.1}, "b1": {"train.seed": 1, "loss.label_smoothing": 0.1}}


@pytest.fixture(scope="module")
def runs(tiny_labels, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report_runs")
    for name, extra in RUNS.items():
        Trainer(load_config(DEMO_CONFIG, tiny_overrides(tiny_labels, root / name, **extra))).fit()
    return {name: root / name for name in RUNS}


def _final(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())["ranks"]


def _expected_cell(values: list[float], scale: float, digits: int) -> str:
    mean, std = report.mean_std([v * scale for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _rows(text: str, rank: str) -> dict[str, list[str]]:
    section = text.split(f"## {rank}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| G")]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in rows}


def test_tables_are_the_seed_means_of_each_group(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert report.main([str(p) for p in runs.values()] + ["--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert text.rstrip("\n") == capsys.readouterr().out.rstrip("\n")
    assert "Config keys that differ between the groups: `loss.label_smoothing`." in text
    assert "- **G1**: a0, a1 (seeds 0, 1)" in text and "- **G2**: b0, b1 (seeds 0, 1)" in text
    for rank in _final(runs["a0"]):
        rows = _rows(text, rank)
        for group, names in (("G1", ["a0", "a1"]), ("G2", ["b0", "b1"])):
            finals = [_final(runs[n])[rank] for n in names]
            row = rows[group]
            assert row[1] == "2"
            assert row[2] == _expected_cell([f["top1"] for f in finals], 100, 1)
            mistakes = [f["mistakes"] for f in finals]  # the runs record the count the severity rests on
            assert row[4] == f"{_expected_cell([f['severity'] for f in finals], 1, 2)} " \
                             f"({_expected_cell(mistakes, 1, 0)})"
    assert "Per-distance mistake counts are not in the files" not in text


def test_plots_are_written_and_drawn(runs, tmp_path):
    out = tmp_path / "report"
    assert report.main([str(runs["a0"]), str(runs["b0"]), "--out", str(out)]) == 0
    names = ["loss", "lr", "throughput", "val_top1", "mistakes_1_a0", "mistakes_2_b0"]
    for name in names:
        pixels = np.asarray(Image.open(out / f"{name}.png").convert("L"), dtype=np.float64)
        assert pixels.shape[0] > 100 and pixels.std() > 5  # something drawn, not a blank canvas
        assert f"![{name}]({name}.png)" in (out / "report.md").read_text()


def test_recorded_counts_and_hierarchical_distances_are_used(runs, tmp_path):
    richer = tmp_path / "richer"
    shutil.copytree(runs["a0"], richer)
    summary = json.loads((richer / "summary.json").read_text())
    for i, metrics in enumerate(summary["ranks"].values()):
        metrics.update({"mistakes": 7 + i, "hdist@1": 0.25 * (i + 1), "hdist@5": 1.5,
                        "mistakes_by_distance": {"1": 4 + i, "2": 3}})
    (richer / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "report"
    assert report.main([str(richer), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "All runs share one config apart from the seed." in text
    first_rank = next(iter(summary["ranks"]))
    header = text.split(f"## {first_rank}\n\n", 1)[1].splitlines()[0]
    assert header == "| group | runs | top-1 % | top-5 % | severity (mistakes) | hdist@1 | hdist@5 | n |"
    row = _rows(text, first_rank)["G1"]
    assert row[4].endswith("(7)") and row[5] == "0.25" and row[6] == "1.50"
    assert "*" not in row[4] and "Per-distance mistake counts are not" not in text
    assert report.mistakes_by_distance(summary["ranks"][first_rank]) == {1: 4.0, 2: 3.0}


def test_a_run_without_a_seed_twin_shows_no_std_and_null_metrics_are_n_a(runs, tmp_path):
    nulls = tmp_path / "nulls"
    shutil.copytree(runs["b0"], nulls)
    summary = json.loads((nulls / "summary.json").read_text())
    for metrics in summary["ranks"].values():
        metrics["top5"] = None  # strict JSON writes NaN (a rank with <= 5 classes) as null
    (nulls / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "report"
    assert report.main([str(nulls), "--out", str(out)]) == 0
    row = _rows((out / "report.md").read_text(), next(iter(summary["ranks"])))["G1"]
    top1 = next(iter(summary["ranks"].values()))["top1"]
    assert row[2] == f"{100 * top1:.1f}" and row[3] == "n/a"
    assert not math.isnan(top1)


def test_missing_matplotlib_is_one_line(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert report.main([str(runs["a0"]), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == "taxaug-report: error: plots need matplotlib: pip install 'taxaug[report]'\n"
    assert not (tmp_path / "r").exists()


def test_cli_names_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "taxaug_train.report", str(tmp_path / "empty"), "--out",
                           str(tmp_path / "r")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == f"taxaug-report: error: {tmp_path / 'empty'}: no metrics.jsonl; pass the out_dir of a " \
                          f"taxaug-train run\n"


def test_a_run_without_mistake_counts_derives_them_and_says_so(runs, tmp_path):
    older = tmp_path / "older"  # a run written before the trainer recorded the counts
    shutil.copytree(runs["a0"], older)
    summary = json.loads((older / "summary.json").read_text())
    for metrics in summary["ranks"].values():
        del metrics["mistakes"], metrics["mistakes_by_distance"]
    (older / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "report"
    assert report.main([str(older), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    first_rank, final = next(iter(summary["ranks"].items()))
    derived = round(final["n"] * (1 - final["top1"]))
    assert _rows(text, first_rank)["G1"][4].endswith(f"({derived}*)")
    assert "derived as n × (1 − top-1)" in text and "Per-distance mistake counts are not in the files of older" in text
