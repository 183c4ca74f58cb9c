"""Every benchmark script still runs: its --quick mode prints its table and writes nothing without --out.

Timings are not checked here (benchmarks measure, tests never assert a time); this catches a script
broken by a change to the code it measures before `make bench` does.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
# ab_*.py compare two checkouts named by hand; _harness.py is shared code
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("[!_]*.py") if not p.name.startswith("ab_"))


def _results_snapshot() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((BENCHMARKS / "results").glob("*"))}


def test_every_benchmark_script_is_covered():
    assert {"scale.py", "mixing.py", "image_ops.py", "data_build.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_quick_mode_prints_its_table(script, tmp_path):
    before = _results_snapshot()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert len(rows) >= 3 and rows[1].startswith("|---"), proc.stdout[-2000:]  # header, rule, at least one row
    assert _results_snapshot() == before, "a benchmark wrote into benchmarks/results without --out"
    assert list(tmp_path.iterdir()) == [], "a benchmark left files in its working folder"
