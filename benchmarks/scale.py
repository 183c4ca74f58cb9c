"""Scale benchmark: iNaturalist-sized labels files and taxonomies (millions of rows, 10k-100k species, 7 ranks).

One table. File rows (a generated N-row x S-species labels.h5): ``write_labels``,
``validate`` and opening it as a dataset against the floor of reading the same
columns with plain h5py, and ``Taxonomy.from_labels``. Per-batch rows (B=256,
512 features, at S species from the file and at a generated 100k-species
7-rank taxonomy): taxonomy smoothing of every rank's soft targets, a metrics
update, the loss forward+backward, each head's forward+backward, against a
flat linear head's forward+backward with cross-entropy on the same batch (the
floor); each head's parameters; a scheduled alpha over many steps (memory
growth). Peak memory per row is the process's high-water RSS above its RSS
before the row (``/proc/self/clear_refs``); for the floor, validate and the opens it
is measured in a fresh interpreter (above its RSS after the imports), where no freed
heap of an earlier row hides part of it. Floor, validate and opens are timed in
turns. Then it runs
``taxaug-train`` on a 100k-species 7-rank labels.h5 and reports its peak RSS
beyond the model and optimizer.

``--quick``: 200k rows, 2k and 20k species, a 20k-species training file, for a smoke run.
``--parts file,batch,train`` picks the sections (all by default); ``--ops metrics,loss`` keeps only the
per-batch rows whose names start so (the flat head always runs).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Table, parse_args, time_call, time_interleaved

from taxaug import Taxonomy
from taxaug.data import schema
from taxaug.data.dataset import HybridDataset, LabelsDataset
from taxaug_train.losses import HierarchicalLoss
from taxaug_train.metrics import RankMetrics
from taxaug_train.models import FlatHeads, HierarchicalSoftmaxHead, ParentConditionedHead

RANKS = [f"taxa_L{10 * (i + 1)}" for i in range(7)]
RATIOS = (1, 3, 10, 30, 100, 300, 2000)  # species per class at each rank
METADATA = ("spatial", "temporal", "elevation_multiscale")


# ---------------------------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class Peak:
    """High-water RSS above the RSS at entry, in MiB (resets the kernel's high-water mark on entry)."""

    def __enter__(self) -> Peak:
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        self.start = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        self.mib = (_status_kib("VmHWM") - self.start) / 1024


# ---------------------------------------------------------------------------------------------- data


def tree_parents(species: int, rng: np.random.Generator) -> tuple[dict[str, int], list[np.ndarray]]:
    """Class counts per rank (null included) and random parent tables; ~1% of classes have no known parent."""
    sizes = {r: max(species // ratio, 2) + 1 for r, ratio in zip(RANKS, RATIOS)}
    parents = []
    for k in range(len(RANKS) - 1):
        child, parent = sizes[RANKS[k]], sizes[RANKS[k + 1]]
        table = np.r_[0, rng.integers(1, parent, child - 1)]
        table[1:][rng.random(child - 1) < 0.01] = 0
        parents.append(table)
    return sizes, parents


def label_columns(rows: int, species: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Long-tailed species per row (Zipf-like, every species at least once when rows allow), ~5% unknown."""
    _, parents = tree_parents(species, rng)
    weights = 1.0 / np.arange(1, species + 1) ** 0.8
    drawn = rng.choice(np.arange(1, species + 1), size=rows, p=weights / weights.sum())
    drawn[: min(rows, species)] = np.arange(1, min(rows, species) + 1)
    cols = {RANKS[0]: drawn}
    for k in range(len(RANKS) - 1):
        cols[RANKS[k + 1]] = parents[k][cols[RANKS[k]]]
    cols[RANKS[0]] = np.where(rng.random(rows) < 0.05, 0, cols[RANKS[0]])
    return {r: (c * 7 + 3) * (c > 0) for r, c in cols.items()}  # raw taxon ids, not class indices


def write_file(path: Path, rows: int, species: int, rng: np.random.Generator) -> dict[str, object]:
    taxa = label_columns(rows, species, rng)
    days = rng.integers(0, 3650, rows)
    dates = (np.datetime64("2015-01-01") + days.astype("timedelta64[D]")).astype(str).tolist()
    return dict(identifiers=[f"{i:09d}" for i in range(rows)], taxa=taxa,
                lat=rng.uniform(-60, 70, rows).astype(np.float32), lon=rng.uniform(-180, 180, rows).astype(np.float32),
                dates=dates, elevation=rng.uniform(0, 3000, rows).astype(np.float32))


def h5py_floor(path: Path) -> int:
    """Read the columns a dataset open needs with plain h5py; returns their in-memory bytes."""
    total = 0
    with h5py.File(path, "r") as f:
        for name in [schema.IDENTIFIERS, *RANKS, *METADATA]:
            data = f[name][()]
            total += data.nbytes + (sum(len(s) for s in data) if data.dtype == object else 0)
    return total


def file_calls(path: Path) -> dict[str, Callable[[], object]]:
    """The file rows' operations on `path`, by row name (the first is the floor)."""
    images = path.parent / "images"
    images.mkdir(exist_ok=True)
    return {
        "h5py read of the columns": lambda: h5py_floor(path),
        "validate": lambda: schema.validate(path).raise_if_invalid(),
        "open (LabelsDataset)": lambda: LabelsDataset(path, rank_names=RANKS, metadata=METADATA),
        "open (HybridDataset)": lambda: HybridDataset(path, images, rank_names=RANKS, metadata=METADATA),
    }


def fresh_peak(name: str, path: Path) -> float:
    """High-water RSS of one file-row call in a fresh interpreter, above its RSS after the imports, in MiB.

    In this process freed heap of earlier rows stays resident and would hide part of the peak.
    """
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import scale\n"
              "start = scale._status_kib('VmRSS')\n"
              f"held = scale.file_calls(scale.Path({str(path)!r}))[{name!r}]()\n"
              "print('PEAK_KIB', scale._status_kib('VmHWM') - start)\n")
    # run from this folder: `-c` puts the working directory first on sys.path, which must not shadow PYTHONPATH
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).parent, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return int(done.stdout.split("PEAK_KIB")[-1].split()[0]) / 1024


def file_rows(table: Table, args: argparse.Namespace, folder: Path) -> Taxonomy:
    """Write, then validate and open timed in turns with the h5py floor (load drift hits all alike)."""
    case = f"file {args.rows:,} rows x {args.species:,} species"
    rng = np.random.default_rng(0)
    columns = write_file(folder / "labels.h5", args.rows, args.species, rng)
    path = folder / "labels.h5"
    with Peak() as peak:
        start = time.perf_counter()
        schema.write_labels(path, overwrite=True, **columns)
        seconds = time.perf_counter() - start
    del columns
    table.add(case, "write_labels", seconds, note=f"peak +{peak.mib:.0f} MiB; {args.rows / seconds:,.0f} rows/s")
    fns = file_calls(path)
    floor = next(iter(fns))
    nbytes = h5py_floor(path)
    peaks = {name: fresh_peak(name, path) for name in fns}
    times = time_interleaved(fns, repeats=args.file_repeats, warmup=0)
    for name, seconds in times.items():
        target = "; target <= 3x floor" if name.startswith("open") else ""
        ratio = peaks[name] * 2**20 / nbytes
        note = (f"floor; columns {nbytes / 2**20:.0f} MiB in memory; peak +{peaks[name]:.0f} MiB" if name == floor
                else f"peak +{peaks[name]:.0f} MiB = {ratio:.2f}x columns{' (target <= 2x)' if target else ''}{target}")
        table.add(case, name, seconds, floor=None if name == floor else floor, note=note)
    data = LabelsDataset(path, rank_names=RANKS, metadata=METADATA)
    labels = {r: data._targets[r] for r in RANKS}
    with Peak() as peak:
        seconds = time_call(lambda: Taxonomy.from_labels(labels, num_classes=data.num_classes),
                            repeats=args.file_repeats, warmup=0)
    table.add(case, "Taxonomy.from_labels", seconds, floor=floor, note=f"peak +{peak.mib:.0f} MiB")
    return data.taxonomy


# ---------------------------------------------------------------------------------------------- per batch


def batch_inputs(tax: Taxonomy, batch: int, features: int, g: torch.Generator):
    species = torch.randint(1, tax.num_classes[RANKS[0]], (batch,), generator=g)
    species[: batch // 20] = 0  # ~5% unknown species
    targets = tax.expand(RANKS[0], species)
    perm = torch.randperm(batch, generator=g)
    soft = {r: 0.7 * torch.nn.functional.one_hot(t, tax.num_classes[r]).float()
            + 0.3 * torch.nn.functional.one_hot(t[perm], tax.num_classes[r]).float() for r, t in targets.items()}
    return torch.randn(batch, features, generator=g), targets, soft


def flat_step(head: torch.nn.Module, feats: torch.Tensor, targets: dict[str, torch.Tensor]) -> Callable[[], None]:
    def step() -> None:
        out = head(feats)
        loss = sum(torch.nn.functional.cross_entropy(out[r].float(), targets[r]) for r in targets)
        loss.backward()
        head.zero_grad(set_to_none=True)

    return step


def batch_rows(table: Table, tax: Taxonomy, case: str, args: argparse.Namespace) -> None:
    """Every per-batch operation timed in turns with the flat head (so load drift hits all alike)."""
    g = torch.Generator().manual_seed(0)
    feats, targets, soft = batch_inputs(tax, args.batch, args.features, g)
    flat = FlatHeads(args.features, tax.num_classes)
    logits = {r: x.detach() for r, x in flat(feats).items()}
    floor = "flat head fwd+bwd"
    fns: dict[str, Callable[[], object]] = {floor: flat_step(flat, feats, targets)}
    notes = {floor: f"floor: Linear({args.features}, K) per rank + CE; {_params(flat):,} params"}
    fns["taxonomy smoothing, 7 ranks"] = lambda: [tax.smooth(soft[r], r, 0.1, 1.0) for r in RANKS]
    notes["taxonomy smoothing, 7 ranks"] = "mixed soft targets; target <= 0.2x"
    alphas = itertools.count()
    name = "taxonomy smoothing, 7 ranks, new alpha each call"
    fns[name] = lambda: [tax.smooth(soft[r], r, 0.1 * (1 + next(alphas) % 1000) / 1000, 1.0) for r in RANKS]
    notes[name] = "a scheduled alpha: nothing rebuilt"
    for crm in (False, True):
        name = "metrics update" + (" + CRM" if crm else "")
        metrics = RankMetrics(tax, crm=crm)
        fns[name] = lambda m=metrics: m.update(logits, targets)
        notes[name] = "7 ranks" + ("; target <= 0.05x" if not crm else "")
    for smoothing in (0.0, 0.1):
        name = f"loss fwd+bwd (taxonomy_smoothing={smoothing})"
        leaves = {r: x.clone().requires_grad_() for r, x in logits.items()}
        loss_fn = HierarchicalLoss(tax, taxonomy_smoothing=smoothing)
        fns[name] = lambda fn=loss_fn, x=leaves: fn(x, targets)[0].backward()
        notes[name] = "index targets, logits given"
    old = sum((args.features + tax.num_classes[RANKS[k + 1]] + 1) * tax.num_classes[RANKS[k]] for k in range(6))
    for name, head in (("parent_conditioned head fwd+bwd", ParentConditionedHead(args.features, tax, embedding=32)),
                       ("hierarchical_softmax head fwd+bwd", HierarchicalSoftmaxHead(args.features, tax))):
        fns[name] = flat_step(head, feats, targets)
        extra = f"; Linear(features + K_parent, K_child) heads would hold {old:,}" if "parent" in name else ""
        notes[name] = f"{_params(head):,} params{extra}"
    fns = {name: fn for name, fn in fns.items() if name == floor or _picked(name, args.ops)}
    peaks = {}
    for name, fn in fns.items():
        fn()  # warm: builds cached structure
        with Peak() as peak:
            fn()
        peaks[name] = peak.mib
    times = time_interleaved(fns, repeats=args.repeats, warmup=1)
    for name, seconds in times.items():
        table.add(case, name, seconds, floor=None if name == floor else floor,
                  note=f"{notes[name]}; peak +{peaks[name]:.0f} MiB")
    if _picked("alpha scheduled", args.ops):
        schedule_row(table, tax, case, soft, args)


def _picked(name: str, ops: str | None) -> bool:
    """Whether per-batch row `name` is among the comma list `ops` of name prefixes (all rows without one)."""
    return ops is None or any(name.startswith(p.strip()) for p in ops.split(","))


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def schedule_row(table: Table, tax: Taxonomy, case: str, soft: dict[str, torch.Tensor],
                 args: argparse.Namespace) -> None:
    """Memory over many steps of a scheduled alpha (every rank smoothed each step)."""
    steps, rss = args.schedule_steps, []
    start_cache = tax._cache.size_bytes
    for step in range(steps):
        for r in RANKS:
            tax.smooth(soft[r], r, 0.1 * (step + 1) / steps, 1.0)
        if step in (4, steps - 1):
            gc.collect()
            rss.append(_status_kib("VmRSS") / 1024)
    table.add(case, f"alpha scheduled over {steps} steps: growth", None,
              note=f"RSS {rss[1] - rss[0]:+.1f} MiB from step 5 to {steps}; taxonomy cache "
                   f"{(tax._cache.size_bytes - start_cache) / 2**20:+.2f} MiB, {tax._cache.size_bytes / 2**20:.1f} MiB in all "
                   "(target: no growth)")


def generated_taxonomy(species: int) -> Taxonomy:
    sizes, parents = tree_parents(species, np.random.default_rng(1))
    return Taxonomy(RANKS, sizes, parents)


# ---------------------------------------------------------------------------------------------- trainer run


def train_row(table: Table, args: argparse.Namespace, folder: Path) -> None:
    """`taxaug-train` on a 7-rank labels.h5 holding every one of `train_species` species (tiny images)."""
    from PIL import Image

    rng = np.random.default_rng(2)
    rows = args.train_species + args.train_species // 10
    cols = write_file(folder / "train.h5", rows, args.train_species, rng)
    images = folder / "images"
    images.mkdir(exist_ok=True)
    for i, name in enumerate(cols["identifiers"]):  # hard links to a few tiny images (ext4 allows 65000 links)
        source = folder / f"source{i // 60_000}.png"
        if i % 60_000 == 0:
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(source)
        os.link(source, images / name)
    schema.write_labels(folder / "train.h5", overwrite=True, **cols)
    overrides = {"data.labels": str(folder / "train.h5"), "data.ranks": json.dumps(RANKS), "data.image_size": 16,
                 "data.val_ratio": 0.05, "data.metadata": "[]", "data.io_threads": 1, "data.decode_threads": 1,
                 "model.width": 8, "model.head": "flat", "train.max_steps": 5, "train.batch_size": 64,
                 "train.eval_every": 0, "train.device": "cpu", "train.threads": 1, "train.progress_bar": "false",
                 "train.out_dir": str(folder / "run"), "checkpoint.every": 0, "algorithms": "[]"}
    sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    # VmHWM is this process's own high-water mark (ru_maxrss would carry the forking parent's over exec)
    hwm = "[int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM')][0]"
    script = ("import runpy, sys; sys.argv = ['taxaug-train'] + sys.argv[1:]\n"
              "try:\n    runpy.run_module('taxaug_train', run_name='__main__')\nfinally:\n"
              f"    print('MAXRSS_KIB', {hwm}, file=sys.stderr)\n")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, *sets], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    seconds = time.perf_counter() - start
    case = f"taxaug-train, {args.train_species:,} species x 7 ranks"
    if done.returncode != 0:
        table.add(case, "5 steps + eval", None, note=f"failed: {done.stderr.strip().splitlines()[-1][:200]}")
        return
    peak = int(done.stderr.split("MAXRSS_KIB")[-1].split()[0]) / 1024
    base = subprocess.run([sys.executable, "-c", f"import taxaug_train.trainer; print({hwm})"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    interp = int(base.stdout.strip()) / 1024
    sizes = generated_taxonomy(args.train_species).num_classes
    params = sum((8 * 4 + 1) * k for k in sizes.values())  # small_cnn width 8 -> 32 features; heads dominate
    model_opt = params * 4 * 4 / 2**20  # weights, grads, two AdamW moments
    table.add(case, "5 steps + eval", seconds,
              note=f"peak RSS {peak:.0f} MiB; interpreter+imports {interp:.0f} MiB; heads+optimizer ~{model_opt:.0f} "
                   f"MiB; beyond model+optimizer {peak - model_opt:.0f} MiB (target < 2048), "
                   f"{peak - interp - model_opt:.0f} MiB beyond the imports too; {rows:,} rows")


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--rows", type=int, default=None, help="rows of the generated file (default 2,700,000)")
    own.add_argument("--species", type=int, default=None, help="species in the file (default 10,000)")
    own.add_argument("--big-species", type=int, default=None, help="species of the generated taxonomy (100,000)")
    own.add_argument("--batch", type=int, default=256)
    own.add_argument("--features", type=int, default=512)
    own.add_argument("--parts", default="file,batch,train",
                     help="comma list of file (write/validate/open), batch (per-batch ops), train (taxaug-train run)")
    own.add_argument("--ops", default=None,
                     help="comma list of per-batch row name prefixes to time (with the flat head), e.g. 'metrics'")
    own.add_argument("--train-species", type=int, default=100_000)
    own.add_argument("--file-repeats", type=int, default=None,
                     help="timed turns of the file rows (floor, validate, opens); default 5 (1 with --quick)")
    ours, rest = own.parse_known_args()
    sys.argv = [sys.argv[0], *rest]
    args = parse_args(__doc__.splitlines()[0], repeats=5)
    for key, value in vars(ours).items():
        setattr(args, key, value)
    args.rows = args.rows or (200_000 if args.quick else 2_700_000)
    args.species = args.species or (2_000 if args.quick else 10_000)
    args.big_species = args.big_species or (20_000 if args.quick else 100_000)
    args.file_repeats = args.file_repeats or (1 if args.quick else 5)
    args.schedule_steps = 20 if args.quick else 50
    args.train_species = args.train_species if not args.quick or args.train_species != 100_000 else 20_000
    table = Table(f"Scale ({'quick' if args.quick else 'full'} run, B={args.batch}, {args.features} features)")
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        if "file" in parts:
            small = file_rows(table, args, Path(tmp))
            gc.collect()
        if "batch" in parts:
            if "file" not in parts:
                small = generated_taxonomy(args.species)
            batch_rows(table, small, f"{small.num_classes[RANKS[0]] - 1:,} species", args)
            batch_rows(table, generated_taxonomy(args.big_species), f"{args.big_species:,} species", args)
        if "train" in parts:
            train_row(table, args, Path(tmp))
    table.emit(args.out, "scale")


if __name__ == "__main__":
    main()
