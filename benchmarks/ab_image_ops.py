"""Interleaved A/B of the image_ops policy rows between two checkouts of taxaug.

Two long-lived worker processes, one importing taxaug from each tree (PYTHONPATH), run the same
policy call on the same batch (64x3x224x224 uint8 and float32, fixed seed) in turns: A B, B A,
A B, ... so that both see the same mix of quiet and busy moments on a shared machine. Before each
call both workers reseed their generator with the same value, so the two versions draw from the
same generator state. Each call's wall time and process CPU time (all threads) are recorded; the
table gives the medians, the after/before ratios of the medians, the medians of the per-turn
ratios (after / before of the same seed, timed back to back) and how often the outputs were identical.

Run: .venv/bin/python benchmarks/ab_image_ops.py --before TREE --after TREE [--threads 1]
     [--repeats 21] [--rows rand_augment,augmix] [--dtypes uint8] [--out FILE [--append]]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROWS = ("auto_augment", "rand_augment", "trivial_augment_wide", "augmix", "random_erasing", "color_jitter")
DTYPES = ("uint8", "float32")
WARMUP = 3


# ---------------------------------------------------------------- worker side (imports its own taxaug)

def _worker(threads: int, batch: int, side: int) -> None:
    """Answers 'row dtype seed' lines with one JSON line: wall and CPU seconds, output digest."""
    import hashlib
    import time

    import torch

    # the rows exactly as the image_ops benchmark calls them, with taxaug from this worker's tree
    from image_ops import _taxaug_policies

    import taxaug

    torch.set_num_threads(threads)
    data = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, generator=data)
    inputs = {"uint8": x8, "float32": x8.float() / 255}
    gen = torch.Generator()
    calls = _taxaug_policies(gen)
    print(json.dumps({"taxaug": taxaug.__file__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        row, dtype, seed = line.split()
        gen.manual_seed(int(seed))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        out = calls[row](inputs[dtype])
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        digest = hashlib.blake2b(out.contiguous().numpy().tobytes(), digest_size=8).hexdigest()
        print(json.dumps({"wall": wall, "cpu": cpu, "digest": digest}), flush=True)


# ---------------------------------------------------------------- parent side

class Worker:
    """One worker process importing taxaug from `tree`."""

    def __init__(self, tree: Path, threads: int, batch: int, side: int) -> None:
        env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(threads))
        cmd = [sys.executable, __file__, "--worker", "--threads", str(threads), "--batch", str(batch),
               "--side", str(side)]
        self.proc = subprocess.Popen(cmd, env=env, cwd=tree, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.hello = json.loads(self.proc.stdout.readline())
        if not self.hello["taxaug"].startswith(str(tree)):
            raise SystemExit(f"worker for {tree} imported taxaug from {self.hello['taxaug']}; check PYTHONPATH")

    def call(self, row: str, dtype: str, seed: int) -> dict:
        self.proc.stdin.write(f"{row} {dtype} {seed}\n")
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _measure(a: Worker, b: Worker, row: str, dtype: str, repeats: int) -> dict[str, float]:
    """Medians of `repeats` alternations, A first on even turns and B first on odd ones."""
    for seed in range(WARMUP):
        a.call(row, dtype, seed)
        b.call(row, dtype, seed)
    samples: dict[str, list[dict]] = {"a": [], "b": []}
    for i in range(repeats):
        order = (("a", a), ("b", b)) if i % 2 == 0 else (("b", b), ("a", a))
        for key, worker in order:
            samples[key].append(worker.call(row, dtype, 1000 + i))
    med = {f"{key}_{m}": statistics.median(s[m] for s in samples[key]) for key in samples for m in ("wall", "cpu")}
    for m in ("wall", "cpu"):  # same seed, adjacent in time: robust to load drift and to the op draw
        med[f"paired_{m}"] = statistics.median(y[m] / x[m] for x, y in zip(samples["a"], samples["b"]))
    med["same"] = sum(x["digest"] == y["digest"] for x, y in zip(samples["a"], samples["b"]))
    return med


def _commit(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _table(results: list[tuple[str, str, dict]], repeats: int) -> list[str]:
    lines = ["| row | dtype | before ms (wall) | after ms (wall) | ratio wall | before ms (CPU) | after ms (CPU) "
             "| ratio CPU | paired ratio wall | paired ratio CPU | same output |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row, dtype, m in results:
        lines.append(f"| {row} | {dtype} | {m['a_wall'] * 1e3:.2f} | {m['b_wall'] * 1e3:.2f} "
                     f"| {m['b_wall'] / m['a_wall']:.3f} | {m['a_cpu'] * 1e3:.2f} | {m['b_cpu'] * 1e3:.2f} "
                     f"| {m['b_cpu'] / m['a_cpu']:.3f} | {m['paired_wall']:.3f} | {m['paired_cpu']:.3f} "
                     f"| {m['same']}/{repeats} |")
    return lines


def _run(args: argparse.Namespace) -> list[str]:
    a = Worker(args.before, args.threads, args.batch, args.side)
    b = Worker(args.after, args.threads, args.batch, args.side)
    load0, started = _uptime(), datetime.datetime.now(datetime.timezone.utc)
    results = []
    try:
        for row in args.rows:
            for dtype in args.dtypes:
                results.append((row, dtype, _measure(a, b, row, dtype, args.repeats)))
                print(f"  {row} {dtype}: {results[-1][2]}", file=sys.stderr, flush=True)
    finally:
        a.close()
        b.close()
    head = [f"### {args.batch}x3x{args.side}x{args.side}, torch threads = {args.threads}, "
            f"medians over {args.repeats} alternations",
            "",
            f"- before: `{_commit(args.before)}` ({args.before}); after: `{_commit(args.after)}` ({args.after})",
            f"- started {started:%Y-%m-%d %H:%M} UTC; load at start: `{load0}`; at end: `{_uptime()}`",
            ""]
    return head + _table(results, args.repeats) + [""]


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--before", type=Path, help="tree of the 'before' checkout (C kernels built in place)")
    p.add_argument("--after", type=Path, help="tree of the 'after' checkout")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads in both workers")
    p.add_argument("--repeats", type=int, default=21, help="alternations per row (median reported)")
    p.add_argument("--rows", type=lambda s: s.split(","), default=list(ROWS))
    p.add_argument("--dtypes", type=lambda s: s.split(","), default=list(DTYPES))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--side", type=int, default=224)
    p.add_argument("--out", type=Path, default=None, help="markdown file to write the table into")
    p.add_argument("--append", action="store_true", help="append to --out instead of overwriting it")
    return p.parse_args()


def main() -> None:
    args = _parse()
    if args.worker:
        _worker(args.threads, args.batch, args.side)
        return
    if args.before is None or args.after is None:
        raise SystemExit("--before and --after are required: the two taxaug trees to compare")
    args.before, args.after = args.before.resolve(), args.after.resolve()
    lines = _run(args)
    print("\n".join(lines))
    if args.out is not None:
        with args.out.open("a" if args.append else "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
