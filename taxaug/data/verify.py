"""Parallel existence and decode check of a hybrid dataset's images, with thresholds and a JSON report."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import h5py
import numpy as np
from PIL import Image

from taxaug.data import schema
from taxaug.data._progress import Progress
from taxaug.data.images import ImageLocator

__all__ = ["VerificationError", "VerifyReport", "verify_images"]


class VerificationError(RuntimeError):
    """More images are missing or corrupt than the thresholds allow."""


@attrs.frozen
class VerifyReport:
    """What :func:`verify_images` found. ``passed`` is False when a threshold is exceeded.

    Thresholds apply to unusable images (missing + corrupt); ``None`` means no limit, 0 means none
    allowed. ``missing_ratio`` is missing / checked (as in linnaeus reports); ``unusable_ratio``
    counts corrupt files too.
    """

    total_images_checked: int
    missing_count: int
    missing_ratio: float
    corrupt_count: int
    unusable_ratio: float
    images_dir: str
    labels_path: str
    decode_checked: bool
    verification_timestamp: str
    missing_identifiers: list[str]
    missing_indices: list[int]
    corrupt_identifiers: list[str]
    corrupt_indices: list[int]
    max_missing_ratio: float | None
    max_missing_count: int | None
    passed: bool
    seconds: float

    def to_dict(self) -> dict:
        return attrs.asdict(self)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def summary(self) -> str:
        verdict = "OK" if self.passed else "FAILED (threshold exceeded)"
        limits = f"max_missing_count={self.max_missing_count}, max_missing_ratio={self.max_missing_ratio}"
        return (f"verify {verdict}: {self.total_images_checked} checked, {self.missing_count} missing, "
                f"{self.corrupt_count} corrupt ({100 * self.unusable_ratio:.3f}% unusable; {limits}) "
                f"in {self.seconds:.1f}s")

    def raise_if_failed(self) -> None:
        if not self.passed:
            shown = (self.missing_identifiers + self.corrupt_identifiers)[:10]
            raise VerificationError(f"{self.summary()}; first bad files: {shown}. Restore the files, lower the "
                                    "thresholds, or use missing='permissive' to train with counted placeholders.")


def _check(path: Path, decode: bool) -> int:
    """0 ok, 1 missing, 2 corrupt."""
    try:
        if not decode:
            return 0 if os.path.isfile(path) else 1
        with Image.open(path) as img:
            img.draft("RGB", (64, 64))
            img.load()
        return 0
    except FileNotFoundError:
        return 1
    except Exception:
        return 2


def verify_images(
    labels_path: str | Path,
    images_dir: str | Path,
    *,
    file_extension: str = "",
    shard_k: int | None = None,
    decode: bool = True,
    num_workers: int = 8,
    chunk_size: int = 1000,
    max_missing_ratio: float | None = None,
    max_missing_count: int | None = None,
    report_path: str | Path | None = None,
    progress: bool | None = None,
    rows: np.ndarray | None = None,
) -> VerifyReport:
    """Check every identifier of `labels_path` exists under `images_dir` (and decodes, with `decode`).

    Runs `num_workers` threads over chunks of `chunk_size`. The JSON report is written to
    `report_path` whenever one is given, pass or fail. Covers the whole labels file unless `rows`
    (file rows, e.g. a filtered dataset's ``file_rows``) restricts it; indices in the report are
    file rows either way.
    """
    if max_missing_ratio is not None and not 0.0 <= max_missing_ratio <= 1.0:
        raise ValueError(f"max_missing_ratio must be in [0, 1] or None, got {max_missing_ratio}")
    if max_missing_count is not None and max_missing_count < 0:
        raise ValueError(f"max_missing_count must be >= 0 or None, got {max_missing_count}")
    if num_workers < 1 or chunk_size < 1:
        raise ValueError(f"num_workers and chunk_size must be >= 1, got {num_workers}, {chunk_size}")
    start = time.perf_counter()
    with h5py.File(labels_path, "r") as f:
        if schema.IDENTIFIERS not in f:
            raise schema.SchemaError(labels_path, [f"{schema.IDENTIFIERS}: mandatory dataset is missing"])
        all_ids = f[schema.IDENTIFIERS].asstr()[()]
    file_rows = np.arange(len(all_ids)) if rows is None else np.asarray(rows, dtype=np.int64)
    ids = [str(all_ids[r]) for r in file_rows]
    locator = ImageLocator(images_dir, file_extension=file_extension, shard_k=shard_k)
    status = np.zeros(len(ids), dtype=np.int8)
    bar = Progress(len(ids), "verify", enabled=progress)

    def run(lo: int) -> None:
        hi = min(lo + chunk_size, len(ids))
        for i in range(lo, hi):
            status[i] = _check(locator.path_for(ids[i]), decode)
        bar.update(hi - lo)

    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        list(pool.map(run, range(0, len(ids), chunk_size)))
    bar.close()
    missing = np.flatnonzero(status == 1)
    corrupt = np.flatnonzero(status == 2)
    total = len(ids)
    bad = missing.size + corrupt.size
    ratio = bad / total if total else 0.0
    passed = not ((max_missing_count is not None and bad > max_missing_count)
                  or (max_missing_ratio is not None and ratio > max_missing_ratio))
    report = VerifyReport(
        total_images_checked=total,
        missing_count=int(missing.size),
        missing_ratio=missing.size / total if total else 0.0,
        corrupt_count=int(corrupt.size),
        unusable_ratio=ratio,
        images_dir=str(images_dir),
        labels_path=str(labels_path),
        decode_checked=decode,
        verification_timestamp=time.strftime("%Y-%m-%d %H:%M:%S"),
        missing_identifiers=[ids[i] for i in missing],
        missing_indices=file_rows[missing].tolist(),
        corrupt_identifiers=[ids[i] for i in corrupt],
        corrupt_indices=file_rows[corrupt].tolist(),
        max_missing_ratio=max_missing_ratio,
        max_missing_count=max_missing_count,
        passed=passed,
        seconds=time.perf_counter() - start,
    )
    if report_path is not None:
        report.write(report_path)
    return report
