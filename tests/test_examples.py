"""The runnable examples the README points to run as written (each writes its own tiny demo dataset)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, cwd: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "examples" / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_plain_loop_example_trains_the_requested_steps(tmp_path):
    out = _run("plain_loop.py", "--steps", "5", cwd=tmp_path)
    losses = [float(v) for v in re.findall(r"^step \d+ loss (\S+)$", out, flags=re.MULTILINE)]
    assert len(losses) == 5 and all(math.isfinite(v) and v > 0 for v in losses)


def test_lightning_example_trains_with_the_callback(tmp_path):
    pytest.importorskip("lightning")
    out = _run("lightning_loop.py", "--epochs", "1", "--out", str(tmp_path / "run"), cwd=tmp_path)
    match = re.search(r"trained (\d+) steps; last loss (\S+)", out)
    assert match and int(match.group(1)) > 0 and math.isfinite(float(match.group(2)))
