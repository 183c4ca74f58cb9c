"""Build a dataset (labels.h5 + images, optionally sharded) from a folder laid out by rank or a CSV.

Folder layout, coarsest rank first, e.g. ``family/genus/species/*.jpg``: the deepest folder is the
finest rank (``taxa_L10``), its parent ``taxa_L20``, and so on. A folder named ``_unknown`` means
"unknown at this rank" (taxon id 0). Taxa are identified by their full folder path, so the same
genus name under two families is two taxa and the result is always a tree.

CSV: one row per image with an identifier column (file name relative to ``images_dir``; no ``..``
part, no leading ``/``), one column per rank (integer taxon ids, or names with ``taxon_names=True``;
empty and 0 = unknown) and optional metadata columns ``lat``, ``lon``, ``date``, ``elevation``,
``anomaly_score``, ``observer_id``, ``in_region``; any other column is an error. The CSV is read
and checked by :mod:`taxaug.data.csv_source`.
"""

from __future__ import annotations

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
from taxaug.data.csv_source import ROWS_SHOWN, CsvTable, Problems, check_table, read_csv, utf8_text
from taxaug.data.images import layout_path
from taxaug.data.shard import place_file

__all__ = ["BuildError", "BuildResult", "build_from_csv", "build_from_folder"]

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


class BuildError(ValueError):
    """The build's input has problems; ``problems`` lists every one found, each naming its row or path."""

    def __init__(self, source: str | Path, problems: Sequence[str]):
        self.source = str(source)
        self.problems = list(problems)
        listed = "\n  - ".join(self.problems)
        super().__init__(f"{self.source}: {len(self.problems)} problem(s), nothing was built:\n  - {listed}")


def _ids_from_names(column: Sequence[str]) -> tuple[np.ndarray, dict[int, str]]:
    """Taxon ids 1..K for names (sorted), 0 for empty / unknown."""
    names = sorted({c for c in column if c and c != UNKNOWN_FOLDER})
    lookup = {n: i + 1 for i, n in enumerate(names)}
    return np.array([lookup.get(c, 0) for c in column], dtype=np.int64), {v: k for k, v in lookup.items()}


def _check_output(out_dir: Path, overwrite: bool) -> Path:
    """``out_dir/labels.h5``, refused up front (before any image is placed) when it exists."""
    labels = out_dir / "labels.h5"
    if labels.exists() and not overwrite:
        raise FileExistsError(f"{labels} exists; pass --overwrite (overwrite=True) to replace it")
    return labels


def _write_checked(labels: Path, identifiers: Sequence[str] | np.ndarray, taxa: Mapping[str, np.ndarray],
                   **kwargs) -> None:
    """Write under a staging name, validate it (schema + tree), and only then move it to `labels`."""
    staged = labels.with_name(labels.name + ".unchecked")
    schema.write_labels(staged, identifiers, taxa, overwrite=True, **kwargs)
    report = schema.validate(staged)
    if not report.ok:
        staged.unlink()
        raise BuildError(labels, [f"the written file fails validation: {p}" for p in report.problems])
    staged.replace(labels)


def _scan_folder(source: Path, extensions: Sequence[str]) -> list[Path]:
    """Image files under `source` (relative), all at one depth; names that are not UTF-8 are refused."""
    exts = {e.lower() for e in extensions}
    files = sorted(
        Path(root, name).relative_to(source)
        for root, _, names in os.walk(source)
        for name in names
        if Path(name).suffix.lower() in exts and not name.startswith(".")
    )
    if not files:
        raise ValueError(f"no image files ({', '.join(sorted(exts))}) under {source}")
    undecodable = [f for f in files if not _is_utf8(str(f))]
    if undecodable:
        shown = schema.MAX_CONFLICTS_SHOWN
        more = [f"... and {len(undecodable) - shown} more such paths"] if len(undecodable) > shown else []
        raise BuildError(source, [f"path {os.fsencode(source / f)!r}: the name is not valid UTF-8; rename it "
                                  "(identifiers and taxon names are UTF-8)" for f in undecodable[:shown]] + more)
    depths = {len(f.parts) - 1 for f in files}
    if len(depths) != 1 or 0 in depths:
        examples = {d: next(str(f) for f in files if len(f.parts) - 1 == d) for d in sorted(depths)}
        raise ValueError(f"images under {source} must all sit at the same folder depth (one folder per rank), "
                         f"found depths {sorted(depths)}, e.g. {examples}")
    return files


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")  # os.walk maps undecodable bytes to lone surrogates, which do not encode
    except UnicodeEncodeError:
        return False
    return True


def _folder_taxa(files: Sequence[Path], ranks: Sequence[str]) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Taxon ids per rank from the folder path prefixes (the deepest folder is the finest rank)."""
    depth = len(ranks)
    taxa: dict[str, np.ndarray] = {}
    names: dict[str, dict[int, str]] = {}
    for level, rank in enumerate(ranks):
        upto = depth - level
        keys = ["" if f.parts[upto - 1] == UNKNOWN_FOLDER else "/".join(f.parts[:upto]) for f in files]
        taxa[rank], names[rank] = _ids_from_names(keys)
    return taxa, names


def _check_images_mode(images: str, shard_k: int | None) -> None:
    if images not in ("copy", "hardlink", "symlink", "none"):
        raise ValueError(f"images must be 'copy', 'hardlink', 'symlink' or 'none', got {images!r}")
    if images == "none" and shard_k is not None:
        raise ValueError("shard_k needs the images placed in out_dir (images='copy', 'hardlink' or 'symlink')")


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
    ``metadata/config_json`` under ``taxon_names``. The written file is validated before it is
    moved into place; file names that are not UTF-8 are refused (:class:`BuildError`).
    """
    source, out_dir = Path(source), Path(out_dir)
    if not source.is_dir():
        raise FileNotFoundError(f"source {source} is not a directory")
    _check_images_mode(images, shard_k)
    labels = _check_output(out_dir, overwrite)
    files = _scan_folder(source, extensions)
    depth = len(files[0].parts) - 1
    ranks = list(rank_names) if rank_names else _default_ranks(depth)
    if len(ranks) != depth:
        raise ValueError(f"{depth} folder levels but {len(ranks)} rank names {ranks}")
    for r in ranks:
        schema.rank_level(r)
    taxa, names = _folder_taxa(files, ranks)
    relative = [f.as_posix() for f in files]
    if images == "none":
        ids, images_dir = relative, source
    else:
        ids = [_identifier(r) for r in relative]
        images_dir = out_dir / "images"
        _place_images([source / f for f in files], ids, images_dir, shard_k, images, num_workers, progress)
    config = {"builder": "taxaug-data build", "source": str(source), "layout": "folder", "ranks": ranks,
              "images": images, "shard_k": shard_k, "relative_paths": relative if images != "none" else None,
              "taxon_names": {r: {str(k): v for k, v in n.items()} for r, n in names.items()}}
    _write_checked(labels, ids, taxa, config=config)
    return BuildResult(labels, images_dir, shard_k, len(ids), {r: len(n) + 1 for r, n in names.items()})


def _check_sources(src_dir: Path, table: CsvTable, source: Path) -> None:
    """Every identifier names a file inside `src_dir` (after resolving links); refused with rows otherwise."""
    root = os.path.realpath(src_dir)
    problems = Problems()
    missing, outside = [], []
    for i, name in enumerate(table.identifiers.tolist()):
        path = os.path.join(root, name.decode())
        if not os.path.isfile(path):
            missing.append(i)
        elif not os.path.realpath(path).startswith(root + os.sep):
            outside.append(i)
    for rows, subject, hint in (
        (missing, "identifier: no such file in the images folder",
         "fix the CSV, or build with --images none (images='none') and run `taxaug-data verify` later"),
        (outside, "identifier: resolves (through a link) outside the images folder",
         "copy the image into the images folder or fix the link"),
    ):
        idx = np.asarray(rows, dtype=np.int64)
        problems.add(subject, hint, table.rows[idx], [table.identifiers[i].decode() for i in idx[:ROWS_SHOWN]])
    if problems:
        raise BuildError(source, problems.lines())


def build_from_csv(
    csv_path: str | Path,
    out_dir: str | Path,
    *,
    images_dir: str | Path,
    identifier_column: str = "identifier",
    rank_columns: Sequence[str] | None = None,
    taxon_names: bool = False,
    images: ImagesMode = "copy",
    shard_k: int | None = None,
    temporal_features: Sequence[str] = ("day_of_year",),
    elevation_sets: Mapping[str, Sequence[float]] | None = None,
    num_workers: int = 8,
    overwrite: bool = False,
    progress: bool | None = None,
) -> BuildResult:
    """Write ``out_dir/labels.h5`` from a CSV and place its images (see the module docstring).

    ``rank_columns`` default to the CSV's ``taxa_LXX`` columns; their cells are integer taxon ids,
    or names with ``taxon_names=True`` (ids 1..K by sorted name, stored under ``taxon_names`` in
    ``metadata/config_json``). Every cell is checked while the CSV streams; all problems are raised
    together as a :class:`BuildError` naming the rows, and nothing is written then. With
    ``images="none"`` the images stay in `images_dir`.
    """
    csv_path, out_dir, src_dir = Path(csv_path), Path(out_dir), Path(images_dir)
    _check_images_mode(images, shard_k)
    labels = _check_output(out_dir, overwrite)
    table, problems = read_csv(csv_path, identifier_column=identifier_column, rank_columns=rank_columns,
                               taxon_names=taxon_names)
    check_table(table, problems)
    if problems:
        raise BuildError(csv_path, problems.lines())
    target = src_dir if images == "none" else out_dir / "images"
    if images != "none":
        _check_sources(src_dir, table, csv_path)
        names = utf8_text(table.identifiers).tolist()
        _place_images([src_dir / i for i in names], names, target, shard_k, images, num_workers, progress)
    ranks = list(table.taxa)
    config = {"builder": "taxaug-data build", "source": str(csv_path), "layout": "csv", "ranks": ranks,
              "images": images, "shard_k": shard_k, "taxon_names": table.names}
    kwargs = dict(table.metadata)
    if "dates" in kwargs:
        kwargs["temporal_features"] = temporal_features
    if "elevation" in kwargs:
        kwargs["elevation_sets"] = elevation_sets
    _write_checked(labels, table.identifiers, table.taxa, config=config, **kwargs)
    num_classes = {r: int(np.unique(t[t != 0]).size) + 1 for r, t in table.taxa.items()}
    return BuildResult(labels, target, shard_k, table.identifiers.shape[0], num_classes)
