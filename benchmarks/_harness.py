"""Shared timing and table code for the benchmark scripts.

Every script measures its operation, its floor and every importable peer in
one process and prints one markdown table of medians and ratios. Timings are
medians over repeats because these machines are noisy.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def parse_args(description: str, *, repeats: int = 15) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=None, help="folder to write the markdown table into")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed repeats per row (median reported)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats, for a smoke run")
    parser.add_argument("--device", action="append", default=None, help="device(s) to run on; default cpu (+cuda)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's); 1 is steadier on a shared machine")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device is None:
        args.device = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.quick:
        args.repeats = min(args.repeats, 3)
    return args


def optional_import(name: str):
    """The module if importable, else None (peers are optional)."""
    try:
        return importlib.import_module(name)
    except Exception:
        return None


def _sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], *, repeats: int, warmup: int = 2, device: str = "cpu") -> float:
    """Median wall time of fn() in seconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def time_interleaved(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 2,
                     device: str = "cpu") -> dict[str, float]:
    """Median wall time of each fn, timed in turns (a, b, c, a, b, c, ...).

    On a shared machine the load drifts during a run; taking the contenders in turns gives each
    the same mix of quiet and busy moments, so their ratio is steadier than with one block each.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


class Table:
    """Rows of (operation, time, reference) rendered with ratios to a named floor row."""

    def __init__(self, title: str, columns: tuple[str, ...] = ("case", "operation", "median ms")):
        self.title = title
        self.rows: list[dict[str, object]] = []
        self.columns = columns

    def add(self, case: str, operation: str, seconds: float | None, *, floor: str | None = None,
            note: str = "") -> None:
        self.rows.append({"case": case, "operation": operation, "seconds": seconds, "floor": floor, "note": note})

    def _lookup(self, case: str, operation: str) -> float | None:
        for row in self.rows:
            if row["case"] == case and row["operation"] == operation:
                return row["seconds"]  # type: ignore[return-value]
        return None

    def render(self) -> str:
        lines = [
            f"### {self.title}",
            "",
            f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads",
            "",
            "| case | operation | median ms | vs floor | note |",
            "|---|---|---:|---:|---|",
        ]
        for row in self.rows:
            seconds = row["seconds"]
            ms = "n/a" if seconds is None else f"{seconds * 1e3:.3f}"
            ratio = ""
            if row["floor"] and seconds is not None:
                base = self._lookup(row["case"], row["floor"])  # type: ignore[arg-type]
                if base:
                    ratio = f"{seconds / base:.2f}x {row['floor']}"
            lines.append(f"| {row['case']} | {row['operation']} | {ms} | {ratio} | {row['note']} |")
        return "\n".join(lines) + "\n"

    def emit(self, out_dir: Path | None, name: str) -> None:
        text = self.render()
        print(text)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"{name}.md").write_text(text)
