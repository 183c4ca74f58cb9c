"""Loader throughput: JPEG decode + resize to 224 through taxaug's PrefetchLoader vs torch DataLoader.

Generates JPEGs of about 500x375 into a temporary folder, writes a labels.h5, and times one epoch
(images/s) through:

- the floor: single-thread Pillow decode (same decode function) times the cores used;
- taxaug.data.PrefetchLoader with that many decode threads (cache off: every epoch is cold);
- torch.utils.data.DataLoader with that many worker processes, same dataset and decode.

Usage: ``python benchmarks/loader.py [--quick] [--out DIR] [--repeats N] [--workers 2]``.
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _harness import Table, parse_args
from PIL import Image

from taxaug.data import GroupedBatchSampler, HybridDataset, PrefetchLoader, write_labels
from taxaug.data.images import DecodeSpec, decode_image

SIZE = (500, 375)
BATCH = 64


def make_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """Photo-like JPEGs (smooth gradients, shapes and mild noise), quality 90."""
    rng = np.random.default_rng(seed)
    w, h = SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    names = []
    for i in range(count):
        base = np.stack([
            (np.sin(xx / rng.uniform(20, 80) + rng.uniform(0, 6)) + 1) * 60 + rng.uniform(0, 100),
            (np.cos(yy / rng.uniform(20, 80) + rng.uniform(0, 6)) + 1) * 60 + rng.uniform(0, 100),
            (xx + yy) / (w + h) * 120 + rng.uniform(0, 100),
        ], axis=2)
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(30, 120)
        base[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] *= 0.5
        base += rng.normal(0, 6, base.shape)
        name = f"{i:06d}_0.jpg"
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(folder / name, quality=90)
        names.append(name)
    return names


def _cpu_seconds() -> float:
    """CPU seconds of this process (all threads) plus its reaped children (DataLoader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _rounds(fns: dict[str, Callable[[], None]], repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and CPU seconds of each fn, run in rotating order so load from other processes hits all alike."""
    for fn in fns.values():
        fn()  # warm-up: page cache, imports, worker start-up paths
    samples: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        order = list(fns)[r % len(fns):] + list(fns)[: r % len(fns)]
        for key in order:
            cpu_start = _cpu_seconds()
            start = time.perf_counter()
            fns[key]()
            samples[key].append(time.perf_counter() - start)
            cpu[key].append(_cpu_seconds() - cpu_start)
    return ({k: statistics.median(v) for k, v in samples.items()},
            {k: statistics.median(v) for k, v in cpu.items()})


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    workers = int(os.environ.get("TAXAUG_BENCH_WORKERS", "2"))
    count = 300 if args.quick else 2000
    repeats = min(args.repeats, 2 if args.quick else 5)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        start = time.perf_counter()
        names = make_images(folder, count)
        print(f"generated {count} JPEGs of {SIZE[0]}x{SIZE[1]} in {time.perf_counter() - start:.1f}s", flush=True)
        species = np.arange(count) % 50 + 1
        labels = write_labels(Path(tmp) / "labels.h5", names, {"taxa_L10": species, "taxa_L20": species % 7 + 1})
        ds = HybridDataset(labels, folder, image_size=224)
        spec = DecodeSpec(size=224)
        sampler = GroupedBatchSampler(ds.group_ids("taxa_L10"), BATCH, mode="standard", seed=0)

        def single_thread() -> None:
            for name in names:
                decode_image((folder / name).read_bytes(), spec)

        def taxaug_loader() -> None:
            loader = PrefetchLoader(ds, sampler, num_io_threads=2, num_decode_threads=workers, batch_concurrency=4,
                                    max_ready_batches=4, cache_bytes=0, monitor_interval=None)
            seen = sum(b.batch_size for b in loader)
            assert seen == count, (seen, count)

        def torch_loader() -> None:
            loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers,
                                                 collate_fn=ds.collate, prefetch_factor=4)
            seen = sum(b.batch_size for b in loader)
            assert seen == count, (seen, count)

        table = Table(f"Loader: {count} JPEGs {SIZE[0]}x{SIZE[1]} -> 224x224 uint8, batch {BATCH}, "
                      f"{workers} workers/decode threads, {os.cpu_count()} cores visible, load average "
                      f"{os.getloadavg()[0]:.1f} at start (median of {repeats})")
        case = f"{count} images"
        fns = {"single": single_thread, "taxaug PrefetchLoader": taxaug_loader, "torch DataLoader": torch_loader}
        rows, cpu_rows = _rounds(fns, repeats)
        single = rows.pop("single")
        floor = single / workers
        table.add(case, "Pillow decode, 1 thread", single, floor="floor",
                  note=f"{count / single:.0f} img/s")
        table.add(case, "floor", floor, floor="floor",
                  note=f"{count / floor:.0f} img/s = 1-thread rate x {workers} cores")
        for label, seconds in rows.items():
            rate = count / seconds
            table.add(case, label, seconds, floor="floor",
                      note=f"{rate:.0f} img/s = {rate / (count / floor):.2f}x floor throughput")
        cpu_case = "CPU time (all threads + workers)"
        table.add(cpu_case, "Pillow decode, 1 thread", cpu_rows.pop("single"), floor="Pillow decode, 1 thread",
                  note="the work itself")
        for label, seconds in cpu_rows.items():
            table.add(cpu_case, label, seconds, floor="Pillow decode, 1 thread", note="overhead = ratio - 1")
        ratio = rows["torch DataLoader"] / rows["taxaug PrefetchLoader"]
        table.add(case, "taxaug vs DataLoader", None, note=f"taxaug {ratio:.2f}x the DataLoader's throughput")
        table.emit(args.out, "loader")


if __name__ == "__main__":
    main()
