"""Build a dataset (labels.h5 + images, optionally sharded) from a folder laid out by rank or a CSV.

Folder layout, coarsest rank first, e.g. ``family/genus/species/*.jpg``: the deepest folder is the
finest rank (``taxa_L10``), its parent ``taxa_L20``, and so on. A folder named ``_unknown`` means
"unknown at this rank" (taxon id 0). Taxa are identified by their full folder path, so the same
genus name under two families is two taxa and the result is always a tree.

CSV: one row per image with an identifier column (file name relative to ``images_dir``), one
column per rank (integer taxon ids, or names that get ids; empty = unknown) and optional metadata
columns ``lat``, ``lon``, ``date``, ``elevation``, ``anomaly_score``, ``observer_id``, ``in_region``.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import attrs
import numpy as np

from taxaug.data import schema
from taxaug.data._progress import Progress
from taxaug.data.images import layout_path
from taxaug.data.shard import place_file

__all__ = ["BuildResult", "build_from_csv", "build_from_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
UNKNOWN_FOLDER = "_unknown"
ImagesMode = Literal["copy", "hardlink", "symlink", "none"]


@attrs.frozen
class BuildResult:
    """Where the build wrote: ``labels_path``; ``images_dir`` and ``shard_k`` to open it with."""

    labels_path: Path
    images_dir: Path
    shard_k: int | None
    num_samples: int
    num_classes: dict[str, int]

    def open(self, **kwargs):
        """A :class:`~taxaug.data.HybridDataset` over the built files."""
        from taxaug.data.dataset import HybridDataset

        return HybridDataset(self.labels_path, self.images_dir, shard_k=self.shard_k, **kwargs)


def _default_ranks(depth: int) -> list[str]:
    return [f"taxa_L{10 * (i + 1)}" for i in range(depth)]


def _identifier(relative: str) -> str:
    """Stable unique flat name: 8 hex chars of the relative path's SHA-1, then the file name.

    The hex prefix also spreads files evenly over ``first_k_chars`` shards.
    """
    digest = hashlib.sha1(relative.encode()).hexdigest()[:8]
    return f"{digest}_{Path(relative).name}"


def _place_images(sources: Sequence[Path], names: Sequence[str], images_dir: Path, shard_k: int | None,
                  mode: ImagesMode, num_workers: int, progress: bool | None) -> None:
    bar = Progress(len(sources), "build", enabled=progress)

    def run(i: int) -> None:
        place_file(sources[i], layout_path(images_dir, names[i], shard_k), "copy" if mode == "copy" else mode)
        bar.update()

    images_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        list(pool.map(run, range(len(sources))))
    bar.close()


def _ids_from_names(column: Sequence[str]) -> tuple[np.ndarray, dict[int, str]]:
    """Taxon ids 1..K for names (sorted), 0 for empty / unknown."""
    names = sorted({c for c in column if c and c != UNKNOWN_FOLDER})
    lookup = {n: i + 1 for i, n in enumerate(names)}
    return np.array([lookup.get(c, 0) for c in column], dtype=np.int64), {v: k for k, v in lookup.items()}


def build_from_folder(
    source: str | Path,
    out_dir: str | Path,
    *,
    rank_names: Sequence[str] | None = None,
    images: ImagesMode = "copy",
    shard_k: int | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    num_workers: int = 8,
    overwrite: bool = False,
    progress: bool | None = None,
) -> BuildResult:
    """Scan `source` (``rank/.../rank/file``), write ``out_dir/labels.h5`` and place the images.

    ``images``: ``"copy"``, ``"hardlink"`` (copy fallback), ``"symlink"`` into ``out_dir/images``
    (sharded with ``shard_k``), or ``"none"`` to leave them where they are (identifiers are then
    paths relative to `source`, which becomes the images dir). Taxon names per id are stored in
    ``metadata/config_json`` under ``taxon_names``.
    """
    source, out_dir = Path(source), Path(out_dir)
    if not source.is_dir():
        raise FileNotFoundError(f"source {source} is not a directory")
    if images not in ("copy", "hardlink", "symlink", "none"):
        raise ValueError(f"images must be 'copy', 'hardlink', 'symlink' or 'none', got {images!r}")
    if images == "none" and shard_k is not None:
        raise ValueError("shard_k needs the images placed in out_dir (images='copy', 'hardlink' or 'symlink')")
    exts = {e.lower() for e in extensions}
    files = sorted(
        Path(root, name).relative_to(source)
        for root, _, names in os.walk(source)
        for name in names
        if Path(name).suffix.lower() in exts and not name.startswith(".")
    )
    if not files:
        raise ValueError(f"no image files ({', '.join(sorted(exts))}) under {source}")
    depths = {len(f.parts) - 1 for f in files}
    if len(depths) != 1 or 0 in depths:
        examples = {d: next(str(f) for f in files if len(f.parts) - 1 == d) for d in sorted(depths)}
        raise ValueError(f"images under {source} must all sit at the same folder depth (one folder per rank), "
                         f"found depths {sorted(depths)}, e.g. {examples}")
    depth = depths.pop()
    ranks = list(rank_names) if rank_names else _default_ranks(depth)
    if len(ranks) != depth:
        raise ValueError(f"{depth} folder levels but {len(ranks)} rank names {ranks}")
    for r in ranks:
        schema.rank_level(r)
    taxa: dict[str, np.ndarray] = {}
    names: dict[str, dict[int, str]] = {}
    for level, rank in enumerate(ranks):
        # rank 0 (finest) is the deepest folder: parts[depth - 1]; identify by the full path prefix
        upto = depth - level
        keys = ["" if f.parts[upto - 1] == UNKNOWN_FOLDER else "/".join(f.parts[:upto]) for f in files]
        taxa[rank], names[rank] = _ids_from_names(keys)
    relative = [f.as_posix() for f in files]
    if images == "none":
        ids, images_dir = relative, source
    else:
        ids = [_identifier(r) for r in relative]
        images_dir = out_dir / "images"
        _place_images([source / f for f in files], ids, images_dir, shard_k, images, num_workers, progress)
    labels = out_dir / "labels.h5"
    config = {"builder": "taxaug-data build", "source": str(source), "layout": "folder", "ranks": ranks,
              "images": images, "shard_k": shard_k, "relative_paths": relative if images != "none" else None,
              "taxon_names": {r: {str(k): v for k, v in n.items()} for r, n in names.items()}}
    schema.write_labels(labels, ids, taxa, config=config, overwrite=overwrite)
    return BuildResult(labels, images_dir, shard_k, len(ids), {r: len(n) + 1 for r, n in names.items()})


def _float_column(rows: list[dict[str, str]], key: str) -> np.ndarray:
    out = np.full(len(rows), np.nan)
    for i, row in enumerate(rows):
        text = (row.get(key) or "").strip()
        if text:
            try:
                out[i] = float(text)
            except ValueError:
                raise ValueError(f"CSV row {i + 2}: column {key!r} must be a number, got {text!r}") from None
    return out


def build_from_csv(
    csv_path: str | Path,
    out_dir: str | Path,
    *,
    images_dir: str | Path,
    identifier_column: str = "identifier",
    rank_columns: Sequence[str] | None = None,
    images: ImagesMode = "copy",
    shard_k: int | None = None,
    temporal_features: Sequence[str] = ("day_of_year",),
    elevation_sets: Mapping[str, Sequence[float]] | None = None,
    num_workers: int = 8,
    overwrite: bool = False,
    progress: bool | None = None,
) -> BuildResult:
    """Write ``out_dir/labels.h5`` from a CSV and place its images (see the module docstring).

    ``rank_columns`` default to the CSV's ``taxa_LXX`` columns. Identifiers are kept as given; with
    ``images="none"`` the images stay in `images_dir`.
    """
    csv_path, out_dir, src_dir = Path(csv_path), Path(out_dir), Path(images_dir)
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        rows = list(reader)
    if identifier_column not in header:
        raise ValueError(f"{csv_path}: no identifier column {identifier_column!r}; columns are {header}")
    ranks = list(rank_columns) if rank_columns else schema.rank_names_in(header)
    if not ranks or any(r not in header for r in ranks):
        raise ValueError(f"{csv_path}: rank columns {ranks or '(none found)'} must be CSV columns "
                         f"named taxa_LXX; columns are {header}")
    ranks.sort(key=schema.rank_level)
    if not rows:
        raise ValueError(f"{csv_path} has no rows")
    ids = [row[identifier_column].strip() for row in rows]
    taxa: dict[str, np.ndarray] = {}
    names: dict[str, dict[str, str]] = {}
    for r in ranks:
        column = [(row.get(r) or "").strip() for row in rows]
        if all(c == "" or c.isdigit() for c in column):
            taxa[r] = np.array([int(c) if c else 0 for c in column], dtype=np.int64)
        else:
            taxa[r], lookup = _ids_from_names(column)
            names[r] = {str(k): v for k, v in lookup.items()}
    kwargs: dict = {}
    if "lat" in header and "lon" in header:
        kwargs["lat"], kwargs["lon"] = _float_column(rows, "lat"), _float_column(rows, "lon")
    if "date" in header:
        kwargs["dates"] = [(row.get("date") or "").strip() for row in rows]
        kwargs["temporal_features"] = temporal_features
    if "elevation" in header:
        kwargs["elevation"] = _float_column(rows, "elevation")
        kwargs["elevation_sets"] = elevation_sets
    if "anomaly_score" in header:
        kwargs["anomaly_score"] = np.nan_to_num(_float_column(rows, "anomaly_score"))
    if "observer_id" in header:
        kwargs["observer_id"] = np.nan_to_num(_float_column(rows, "observer_id")).astype(np.int32)
    if "in_region" in header:
        kwargs["in_region"] = np.nan_to_num(_float_column(rows, "in_region")).astype(np.uint8)
    if images == "none":
        if shard_k is not None:
            raise ValueError("shard_k needs the images placed in out_dir (images='copy', 'hardlink' or 'symlink')")
        target = src_dir
    else:
        target = out_dir / "images"
        missing = [i for i in ids if not (src_dir / i).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) listed in {csv_path} are not in {src_dir}, e.g. "
                                    f"{missing[:5]}; fix the CSV or run with images='none' and verify later")
        _place_images([src_dir / i for i in ids], ids, target, shard_k, images, num_workers, progress)
    config = {"builder": "taxaug-data build", "source": str(csv_path), "layout": "csv", "ranks": ranks,
              "images": images, "shard_k": shard_k, "taxon_names": names}
    labels = out_dir / "labels.h5"
    schema.write_labels(labels, ids, taxa, config=config, overwrite=overwrite, **kwargs)
    num_classes = {r: int(np.unique(t[t != 0]).size) + 1 for r, t in taxa.items()}
    return BuildResult(labels, target, shard_k, len(ids), num_classes)
