"""Migrate a flat image folder to the ``first_k_chars`` sharded layout: hardlinks, copy fallback,
parallel, resumable (files already in place are skipped; copies land atomically)."""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import attrs

from taxaug.data._progress import Progress
from taxaug.data.images import layout_path

__all__ = ["ShardReport", "place_file", "shard_directory"]

LinkMode = Literal["hardlink", "copy", "symlink"]


@attrs.frozen
class ShardReport:
    """Counts of what :func:`shard_directory` did; ``failed`` lists (file, reason)."""

    total: int
    linked: int
    copied: int
    skipped: int
    failed: list[tuple[str, str]]
    seconds: float

    def summary(self) -> str:
        return (f"shard: {self.total} files: {self.linked} hardlinked, {self.copied} copied, {self.skipped} already "
                f"in place, {len(self.failed)} failed, in {self.seconds:.1f}s")


def place_file(src: Path, dst: Path, mode: LinkMode = "hardlink") -> str:
    """Put `src` at `dst`: ``"skipped"`` if an equal-size file is there, else ``"linked"`` / ``"copied"``.

    A hardlink that the filesystem refuses (other device, no permission) falls back to a copy. Copies
    go through a temporary name and ``os.replace``, so an interrupted run never leaves a partial file
    at `dst`.
    """
    try:
        if dst.stat().st_size == src.stat().st_size:
            return "skipped"
        dst.unlink()
    except FileNotFoundError:
        pass
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "symlink":
        os.symlink(os.path.abspath(src), dst)
        return "linked"
    if mode == "hardlink":
        try:
            os.link(src, dst)
            return "linked"
        except FileExistsError:
            return "skipped"
        except OSError:
            pass  # cross-device or not permitted: copy instead
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.partial")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return "copied"


def shard_directory(
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    k: int = 2,
    num_workers: int = 8,
    mode: LinkMode = "hardlink",
    progress: bool | None = None,
) -> ShardReport:
    """Place every file of the flat `input_dir` at ``output_dir/<first k chars>/<name>``.

    Re-running after an interruption skips files already placed. Sub-folders of `input_dir` and
    hidden files are ignored.
    """
    if mode not in ("hardlink", "copy", "symlink"):
        raise ValueError(f"mode must be 'hardlink', 'copy' or 'symlink', got {mode!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    start = time.perf_counter()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input_dir {input_dir} is not a directory")
    names = sorted(e.name for e in os.scandir(input_dir) if e.is_file() and not e.name.startswith("."))
    output_dir.mkdir(parents=True, exist_ok=True)
    bar = Progress(len(names), "shard", enabled=progress)

    def run(name: str) -> tuple[str, str]:
        try:
            outcome = place_file(input_dir / name, layout_path(output_dir, name, k), mode)
        except OSError as exc:
            outcome = f"failed: {exc}"
        bar.update()
        return name, outcome

    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        results = list(pool.map(run, names))
    bar.close()
    counts = {"linked": 0, "copied": 0, "skipped": 0}
    failed = []
    for name, outcome in results:
        if outcome in counts:
            counts[outcome] += 1
        else:
            failed.append((name, outcome))
    return ShardReport(total=len(names), linked=counts["linked"], copied=counts["copied"], skipped=counts["skipped"],
                       failed=failed, seconds=time.perf_counter() - start)
