"""Check a hybrid dataset before training: the labels file (schema and tree) and every image, read and
decoded exactly as the datasets do, in parallel, with thresholds and a JSON report."""

from __future__ import annotations

import json
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import h5py
import numpy as np

from taxaug.data import schema
from taxaug.data._io import ReadTimeout, call_with_timeout, check_read_timeout
from taxaug.data._progress import Progress
from taxaug.data.dataset import IdentifierArray, read_identifiers
from taxaug.data.images import DecodeSpec, ImageLoadError, ImageLocator, decode_image

__all__ = ["VerificationError", "VerifyReport", "verify_images"]

_OK, _MISSING, _BAD = 0, 1, 2
_KEEP_REASONS = 1000


class VerificationError(RuntimeError):
    """The labels file has problems, or more images are missing or unusable than the thresholds allow."""


@attrs.frozen
class VerifyReport:
    """What :func:`verify_images` found. ``passed`` is False on any labels problem or past a threshold.

    Thresholds apply to unusable images (missing + corrupt); with neither threshold given, none
    may be missing or corrupt (``max_missing_count`` 0). ``missing_ratio`` is missing / checked;
    ``unusable_ratio`` counts corrupt files too. "Corrupt" is anything present but not loadable: not
    decodable, a decompression bomb, a read that failed or timed out, an identifier pointing
    outside ``images_dir``; ``failure_reasons`` says which, for the first 1000 bad files.
    ``labels_problems`` lists schema problems and taxonomy conflicts of the labels file.
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
    failure_reasons: dict[str, str]
    labels_problems: list[str]
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
        verdict = "OK" if self.passed else "FAILED"
        limits = f"max_missing_count={self.max_missing_count}, max_missing_ratio={self.max_missing_ratio}"
        labels = f"; {len(self.labels_problems)} labels-file problem(s)" if self.labels_problems else ""
        return (f"verify {verdict}: {self.total_images_checked} checked, {self.missing_count} missing, "
                f"{self.corrupt_count} corrupt ({100 * self.unusable_ratio:.3f}% unusable; {limits}){labels} "
                f"in {self.seconds:.1f}s")

    def raise_if_failed(self) -> None:
        if not self.passed:
            shown = (self.missing_identifiers + self.corrupt_identifiers)[:10]
            raise VerificationError(f"{self.summary()}; first bad files: {shown}; labels problems: "
                                    f"{self.labels_problems[:3]}. Restore the files, give thresholds "
                                    "(max_missing_count / max_missing_ratio), or use missing='permissive' to "
                                    "train with counted placeholders.")


def _read_labels(labels_path: str | Path, check: bool) -> tuple[np.ndarray, list[str]]:
    """(identifiers, labels problems); raises :class:`schema.SchemaError` when images cannot be named."""
    if not check:
        with h5py.File(labels_path, "r") as f:
            return read_identifiers(f[schema.IDENTIFIERS]), []
    report = schema.validate(labels_path)
    fatal = [p for p in report.problems if p.startswith((schema.IDENTIFIERS, "file not found", "not an HDF5"))]
    if fatal:
        raise schema.SchemaError(labels_path, fatal)
    return report.identifiers, list(report.problems)  # the identifiers validate read; schema and tree problems


def _stat_file(path: Path) -> tuple[int, str]:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return _MISSING, "file not found"
    return (_OK, "") if stat.S_ISREG(mode) else (_BAD, "not a regular file")


def _check(locator: ImageLocator, identifier: str, spec: DecodeSpec | None, timeout: float | None) -> tuple[int, str]:
    """(status, reason) of one image: read (with the timeout) and, with a spec, decoded as the datasets do."""
    try:
        if spec is None:
            path = locator.path_for(identifier)
            return call_with_timeout(str(path), lambda: _stat_file(path), timeout)
        raw = locator.read(identifier, timeout)
        decode_image(raw, spec, name=identifier)
    except ReadTimeout as exc:
        return _BAD, f"stat {exc}"
    except ImageLoadError as exc:
        return (_MISSING if exc.reason == "file not found" else _BAD), exc.reason
    except OSError as exc:
        return _BAD, f"read failed ({exc})"
    return _OK, ""


def _check_all(locator: ImageLocator, ids: IdentifierArray, spec: DecodeSpec | None, timeout: float | None, *,
               num_workers: int, chunk_size: int, progress: bool | None) -> tuple[np.ndarray, dict[str, str]]:
    """Status per identifier and the reasons of the first bad ones; escaping identifiers are never read."""
    status = np.zeros(len(ids), dtype=np.int8)
    reasons: dict[str, str] = {}
    refused = np.zeros(len(ids), dtype=bool)
    refused[locator.escaping(ids.array)] = True
    bar = Progress(len(ids), "verify", enabled=progress)

    def run(lo: int) -> None:
        hi = min(lo + chunk_size, len(ids))
        for i in range(lo, hi):
            name = ids[i]
            code, why = (_BAD, "identifier points outside images_dir") if refused[i] else _check(
                locator, name, spec, timeout)
            status[i] = code
            if code and len(reasons) < _KEEP_REASONS:
                reasons[name] = why
        bar.update(hi - lo)

    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        list(pool.map(run, range(0, len(ids), chunk_size)))
    bar.close()
    return status, reasons


def _report(ids: IdentifierArray, file_rows: np.ndarray, status: np.ndarray, reasons: dict[str, str],
            problems: list[str], *, max_missing_ratio: float | None, max_missing_count: int | None,
            **fields: object) -> VerifyReport:
    """The report of one run: counts, the bad files by kind, and the verdict against the thresholds."""
    missing, corrupt = np.flatnonzero(status == _MISSING), np.flatnonzero(status == _BAD)
    total = len(ids)
    bad = missing.size + corrupt.size
    ratio = bad / total if total else 0.0
    passed = not (problems or (max_missing_count is not None and bad > max_missing_count)
                  or (max_missing_ratio is not None and ratio > max_missing_ratio))
    return VerifyReport(
        total_images_checked=total, missing_count=int(missing.size),
        missing_ratio=missing.size / total if total else 0.0, corrupt_count=int(corrupt.size),
        unusable_ratio=ratio, verification_timestamp=time.strftime("%Y-%m-%d %H:%M:%S"),
        missing_identifiers=[ids[int(i)] for i in missing], missing_indices=file_rows[missing].tolist(),
        corrupt_identifiers=[ids[int(i)] for i in corrupt], corrupt_indices=file_rows[corrupt].tolist(),
        failure_reasons=reasons, labels_problems=problems, max_missing_ratio=max_missing_ratio,
        max_missing_count=max_missing_count, passed=passed, **fields,  # type: ignore[arg-type]
    )


def _check_arguments(max_missing_ratio: float | None, max_missing_count: int | None, num_workers: int,
                     chunk_size: int, read_timeout: float | None) -> None:
    if max_missing_ratio is not None and not 0.0 <= max_missing_ratio <= 1.0:
        raise ValueError(f"max_missing_ratio must be in [0, 1] or None, got {max_missing_ratio}")
    if max_missing_count is not None and max_missing_count < 0:
        raise ValueError(f"max_missing_count must be >= 0 or None, got {max_missing_count}")
    if num_workers < 1 or chunk_size < 1:
        raise ValueError(f"num_workers and chunk_size must be >= 1, got {num_workers}, {chunk_size}")
    check_read_timeout(read_timeout)


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
    read_timeout: float | None = 60.0,
    max_pixels: int | None = None,
    exif_transpose: bool = True,
    decode_spec: DecodeSpec | None = None,
    check_labels: bool = True,
    identifiers: IdentifierArray | None = None,
) -> VerifyReport:
    """Check the labels file (schema, taxonomy tree) and that every image exists, reads and decodes.

    Images are read with the datasets' reader (`read_timeout` seconds per read) and decoded with
    :func:`~taxaug.data.images.decode_image` and `decode_spec` (default: 64x64 draft decode with
    `max_pixels` / `exif_transpose`); `decode=False` checks existence only. With no threshold, no
    image may be missing or corrupt. Raises :class:`~taxaug.data.schema.SchemaError` when the file
    cannot name its images (not HDF5, truncated, identifiers missing or not strings). The JSON
    report goes to `report_path` whenever one is given. `rows` (file rows, e.g. a dataset's
    ``file_rows``) restricts the image check; indices in the report are file rows. `check_labels`
    False skips the schema and tree checks (a dataset ran them when it opened); a caller that holds the
    identifiers of `rows` already (a dataset) passes them as `identifiers`, and the file is not read at all.
    """
    _check_arguments(max_missing_ratio, max_missing_count, num_workers, chunk_size, read_timeout)
    if max_missing_ratio is None and max_missing_count is None:
        max_missing_count = 0
    start = time.perf_counter()
    if identifiers is not None and not check_labels:
        file_rows = np.asarray(rows, dtype=np.int64) if rows is not None else np.arange(len(identifiers))
        if file_rows.shape != (len(identifiers),):
            raise ValueError(f"identifiers ({len(identifiers)}) must name exactly the {file_rows.size} rows given")
        ids, problems = identifiers, []
    else:
        all_ids, problems = _read_labels(labels_path, check_labels)
        file_rows = np.arange(len(all_ids)) if rows is None else np.asarray(rows, dtype=np.int64)
        ids = IdentifierArray(all_ids[file_rows])
    locator = ImageLocator(images_dir, file_extension=file_extension, shard_k=shard_k)
    spec = None if not decode else decode_spec or DecodeSpec(size=64, max_pixels=max_pixels,
                                                             exif_transpose=exif_transpose)
    status, reasons = _check_all(locator, ids, spec, read_timeout, num_workers=num_workers, chunk_size=chunk_size,
                                 progress=progress)
    report = _report(ids, file_rows, status, reasons, problems, max_missing_ratio=max_missing_ratio,
                     max_missing_count=max_missing_count, images_dir=str(images_dir), labels_path=str(labels_path),
                     decode_checked=decode, seconds=time.perf_counter() - start)
    if report_path is not None:
        report.write(report_path)
    return report
