"""Shared helpers (no tests) for the trainer tests: the tiny demo dataset and config overrides that shrink
configs/demo.yaml to a few CPU-cheap steps. The dataset itself is the session fixture ``tiny_labels``
(conftest.py), written once per test run."""

from __future__ import annotations

import json
from pathlib import Path

from taxaug.data.demo import generate_demo

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"


def make_tiny_demo(root: Path) -> Path:
    """A 2x2x2 demo taxonomy, 12 images per species, 16x16 pixels: ~0.5 s to write."""
    return generate_demo(root, families=2, genera=2, species=2, per_species=12, image_size=16, seed=3)


def tiny_overrides(labels: Path, out_dir: Path, **extra: object) -> list[str]:
    """Overrides that shrink configs/demo.yaml to a few CPU-cheap steps on the tiny data."""
    values = {
        "data.labels": str(labels), "data.image_size": 16, "data.io_threads": 1, "data.decode_threads": 1,
        "data.stratify_rank": None, "model.width": 4, "train.out_dir": str(out_dir), "train.max_steps": 6,
        "train.batch_size": 8, "train.eval_every": 3, "train.log_every": 1, "train.threads": 1,
        "train.deterministic": True, "train.progress_bar": False, "train.device": "cpu", "checkpoint.every": 3,
        "checkpoint.keep": 0, "optim.warmup_steps": 0,
    }
    values.update(extra)
    return [f"{k}={json.dumps(v) if v is not None else 'null'}" for k, v in values.items()]
