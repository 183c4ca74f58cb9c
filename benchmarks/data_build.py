"""Data tools throughput and peak memory: CSV build, validate, pure-HDF5 image writes, date parsing.

``validate_schema`` is the schema checks alone (``check_tree=False``), ``validate`` adds the tree check.

Generates an iNaturalist-like CSV (identifiers, 3 ranks with ~5% unknown species, lat/lon, dates with
and without times, elevation, in_region) and runs each step in a fresh subprocess so its peak RSS
(``ru_maxrss``) is its own. ``--code DIR`` picks the taxaug checkout to import (to compare two
versions on the same files). Prints wall and CPU seconds, rows per CPU second (steadier than wall
time on a shared machine) and peak RSS above the interpreter + imports baseline.

Usage: ``python benchmarks/data_build.py [--rows 300000] [--images 20000] [--code DIR] [--work DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

STEPS = ("imports", "csv_build", "validate_schema", "validate", "write_images", "dates")

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
step, work, n_images = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
import numpy as np
from taxaug.data import schema, encoders
from taxaug.data.build import build_from_csv
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
t0, c0 = time.perf_counter(), cpu()
rows = None
if step == "csv_build":
    res = build_from_csv(work / "obs.csv", work / "out", images_dir=work, images="none", overwrite=True,
                         progress=False)
    rows = res.num_samples
elif step in ("validate", "validate_schema"):
    import inspect
    tree = "check_tree" in inspect.signature(schema.validate).parameters  # absent before the tree check
    kwargs = {"check_tree": False} if tree and step == "validate_schema" else {}
    rep = schema.validate(work / "out" / "labels.h5", **kwargs)
    assert rep.ok, rep.problems
    rows = rep.num_samples
elif step == "write_images":
    blobs = [bytes([i % 251]) * (1500 + i % 1000) for i in range(n_images)]
    t0, c0 = time.perf_counter(), cpu()
    schema.write_labels(work / "img.h5", [f"{i}.jpg" for i in range(n_images)],
                        {"taxa_L10": np.arange(n_images) % 100 + 1}, images=blobs, overwrite=True)
    rows = n_images
elif step == "dates":
    import csv
    with open(work / "obs.csv", newline="") as h:
        r = csv.reader(h); col = next(r).index("date"); dates = [row[col] for row in r]
    t0, c0 = time.perf_counter(), cpu()
    encoders.parse_iso_dates(dates)
    rows = len(dates)
dt, dc = time.perf_counter() - t0, cpu() - c0
print(json.dumps({"step": step, "rows": rows, "seconds": dt, "cpu_seconds": dc,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_csv(path: Path, rows: int, seed: int = 0) -> None:
    """Write an iNaturalist-like CSV of `rows` rows (about 90 bytes a row)."""
    rng = np.random.default_rng(seed)
    species = rng.zipf(1.3, rows) % 10_000 + 1
    genus = species // 7 + 1
    family = genus // 13 + 1
    species[rng.random(rows) < 0.05] = 0
    lat = np.round(rng.uniform(-60, 70, rows), 5)
    lon = np.round(rng.uniform(-180, 180, rows), 5)
    elev = np.round(rng.uniform(-10, 4000, rows), 1)
    doy = rng.integers(0, 365, rows)
    dates = (np.datetime64("2015-01-01") + doy.astype("timedelta64[D]")
             + rng.integers(0, 6, rows).astype("timedelta64[Y]").astype("timedelta64[D]"))
    with_time = rng.random(rows) < 0.5
    hours = rng.integers(0, 24, rows)
    with path.open("w") as out:
        out.write("identifier,taxa_L10,taxa_L20,taxa_L30,lat,lon,date,elevation,in_region\n")
        for i in range(rows):
            date = str(dates[i]) + (f"T{hours[i]:02d}:15:00" if with_time[i] else "")
            out.write(f"{i:08d}_{species[i]}.jpg,{species[i] or ''},{genus[i]},{family[i]},{lat[i]},{lon[i]},"
                      f"{date},{elev[i]},{int(i % 3 == 0)}\n")


def run_step(step: str, work: Path, code: Path, n_images: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code))
    proc = subprocess.run([sys.executable, "-c", _CHILD, step, str(work), str(n_images)], env=env, cwd=work,
                          capture_output=True, text=True, check=False)  # cwd: import taxaug from `code` only
    if proc.returncode:
        raise RuntimeError(f"step {step} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--images", type=int, default=20_000, help="blobs for the pure-HDF5 image write")
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--work", type=Path, default=None, help="reuse this folder (keeps the CSV)")
    parser.add_argument("--out", type=Path, default=None, help="folder to write the markdown table into")
    parser.add_argument("--quick", action="store_true", help="5,000 rows and 500 blobs, for a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.images = 5_000, 500
    if args.work is not None:
        report(args, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="taxaug-build-bench-") as work:
            report(args, Path(work))


def report(args: argparse.Namespace, work: Path) -> None:
    """Run every step in `work` (the CSV is made once and kept there) and print the table."""
    work.mkdir(parents=True, exist_ok=True)
    csv_path = work / "obs.csv"
    if not csv_path.exists():
        make_csv(csv_path, args.rows)
    size_mb = csv_path.stat().st_size / 2**20
    base = run_step("imports", work, args.code, args.images)["peak_mb"]
    lines = [f"code {args.code}; CSV {args.rows:,} rows ({size_mb:.1f} MB)", "",
             "| step | rows | wall s | CPU s | rows/CPU s | peak RSS MB | above imports MB |",
             "|---|---|---|---|---|---|---|"]
    for step in STEPS[1:]:
        r = run_step(step, work, args.code, args.images)
        lines.append(f"| {step} | {r['rows']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | "
                     f"{r['rows'] / r['cpu_seconds']:,.0f} | {r['peak_mb']:.0f} | {r['peak_mb'] - base:.0f} |")
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "data_build.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
