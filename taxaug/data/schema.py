"""The ``labels.h5`` schema: names, a validator that reports every problem (schema and tree), and a writer.

Layout (N samples)::

    img_identifiers        (N,)  variable-length str   mandatory; image file names (hybrid mode)
    taxa_LXX               (N,)  uint32                 mandatory, one per rank; 0 = unknown at that rank
    raw_lat, raw_lon       (N,)  float32                degrees, NaN = unknown
    spatial                (N, 3) float32               unit-sphere xyz (all zero = unknown)
    raw_date_observed      (N,)  str                    ISO 8601, "" = unknown
    temporal               (N, D_t) float32             cyclical sin/cos pairs (all zero = unknown)
    raw_elevation          (N,)  float32                metres, NaN = unknown
    elevation_<set>        (N, 2*S) float32             sin/cos per scale; attribute ``scales``
    anomaly_score          (N,)  float32
    observer_id            (N,)  int32
    in_region              (N,)  uint8 (0/1)
    images                 (N,) vlen uint8 (encoded files) or (N, H, W, C) uint8   pure-HDF5 mode only
    metadata/              group, attribute ``config_json`` (JSON string)

Feature datasets carry ``column_names`` and ``method`` attributes (``scales`` for elevation).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import h5py
import numpy as np

from taxaug.data import encoders

if TYPE_CHECKING:
    from taxaug.taxonomy import Conflict

__all__ = [
    "IDENTIFIERS",
    "IMAGES",
    "METADATA_GROUP",
    "RANK_PATTERN",
    "SchemaError",
    "ValidationReport",
    "class_indices",
    "describe_conflict",
    "in_taxon_ids",
    "rank_level",
    "rank_names_in",
    "read_config",
    "read_fixed_strings",
    "taxon_names",
    "taxon_table",
    "tree_conflicts",
    "tree_problem",
    "validate",
    "write_labels",
]

IDENTIFIERS = "img_identifiers"
IMAGES = "images"
METADATA_GROUP = "metadata"
RANK_PATTERN = re.compile(r"^taxa_L(\d+)$")
#: Encoded feature datasets (besides ``elevation_<set>``): must be finite, rows all-zero = unknown.
FEATURE_DATASETS = ("spatial", "temporal")
RAW_FLOATS = ("raw_lat", "raw_lon", "raw_elevation")
#: Tree conflicts listed one per line in a report; the rest are counted.
MAX_CONFLICTS_SHOWN = 20
#: Rows per slice when writing strings and encoded images.
WRITE_BLOCK = 1 << 16
#: Rows per slice when reading variable-length strings.
READ_BLOCK = 1 << 16
#: Raw taxon ids below this (or below the row count) become class indices through a dense lookup
#: table (one pass over the rows); larger ids through a sort.
LOOKUP_IDS = 1 << 22


def rank_level(name: str) -> int:
    """The numeric level of a rank dataset name (``taxa_L20`` -> 20)."""
    match = RANK_PATTERN.match(name)
    if match is None:
        raise ValueError(f"{name!r} is not a rank dataset name (expected taxa_L<digits>, e.g. taxa_L10)")
    return int(match.group(1))


def rank_names_in(names: Sequence[str]) -> list[str]:
    """Rank dataset names among `names`, finest (lowest level) first."""
    return sorted((n for n in names if RANK_PATTERN.match(n)), key=rank_level)


def is_elevation(name: str) -> bool:
    return name.startswith("elevation_")


class SchemaError(ValueError):
    """A labels file that does not follow the schema; ``problems`` lists every one found."""

    def __init__(self, path: str | Path, problems: Sequence[str]):
        self.path = str(path)
        self.problems = list(problems)
        listed = "\n  - ".join(self.problems)
        super().__init__(
            f"{self.path} is not a valid labels.h5 ({len(self.problems)} problem(s)):\n  - {listed}\n"
            "Fix the file (taxaug.data.write_labels writes a valid one) or run `taxaug-data inspect` on it."
        )


@attrs.frozen
class ValidationReport:
    """Outcome of :func:`validate`: ``ok`` when ``problems`` is empty."""

    path: str
    num_samples: int | None
    rank_names: tuple[str, ...]
    problems: tuple[str, ...]
    conflicts: tuple[Conflict, ...] = ()  # taxa under several parents (raw ids); also listed in problems
    #: ``img_identifiers`` as read by the check (fixed-width UTF-8 bytes), for readers that open the file next
    identifiers: np.ndarray | None = attrs.field(default=None, repr=False, eq=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_invalid(self) -> None:
        if self.problems:
            raise SchemaError(self.path, self.problems)

    def __str__(self) -> str:
        if self.ok:
            return f"{self.path}: valid ({self.num_samples} samples, ranks {', '.join(self.rank_names)})"
        return str(SchemaError(self.path, self.problems))


def _is_string(ds: h5py.Dataset) -> bool:
    return h5py.check_string_dtype(ds.dtype) is not None or ds.dtype.kind in ("S", "U")


def _is_vlen_bytes(ds: h5py.Dataset) -> bool:
    base = h5py.check_vlen_dtype(ds.dtype)
    return base is not None and np.dtype(base) == np.uint8


def _check_attrs(ds: h5py.Dataset, width: int, problems: list[str]) -> None:
    name = ds.name.lstrip("/")
    if "column_names" in ds.attrs:
        cols = np.atleast_1d(ds.attrs["column_names"])
        if len(cols) != width:
            problems.append(f"{name}: attribute column_names has {len(cols)} entries but the dataset has "
                            f"{width} columns")
    if "method" in ds.attrs:
        method = ds.attrs["method"]
        if not isinstance(method, (str, bytes)):
            problems.append(f"{name}: attribute method must be a string, got {type(method).__name__}")


def _check_finite(ds: h5py.Dataset, problems: list[str], *, allow_nan: bool = False) -> np.ndarray | None:
    name = ds.name.lstrip("/")
    if ds.dtype.kind != "f":
        problems.append(f"{name}: dtype must be float32, got {ds.dtype}")
        return None
    data = ds[()]
    if np.isfinite(data).all():
        return data
    bad = np.isinf(data) if allow_nan else ~np.isfinite(data)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1)) if data.ndim > 1 else np.flatnonzero(bad)
        kind = "infinite values" if allow_nan else "NaN/infinite values"
        problems.append(f"{name}: {int(bad.sum())} {kind} (first rows {rows[:5].tolist()}); "
                        + ("use NaN for unknown" if allow_nan else "encode unknown rows as all zeros"))
    return data


# ------------------------------------------------------------------ per-dataset checks (one per schema row)


def read_fixed_strings(ds: h5py.Dataset) -> np.ndarray:
    """A 1-D string dataset as a fixed-width bytes array (UTF-8), read :data:`READ_BLOCK` rows at a time.

    h5py gives one Python bytes object per variable-length string; converting slice by slice keeps
    one slice of them alive, not one per row of the file. HDF5 strings hold no NUL, so the
    fixed-width form loses nothing.
    """
    if ds.dtype.kind == "S":
        return ds[()]
    blocks = [ds[start:start + READ_BLOCK].astype(np.bytes_) for start in range(0, ds.shape[0], READ_BLOCK)]
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype="S1")


def _check_identifiers(ds: h5py.Dataset, problems: list[str]) -> np.ndarray | None:
    """Non-empty, unique strings: a sorted fixed-width bytes array, no object-array unique. Returns that
    array (UTF-8 bytes, file order), so a reader of the file need not read the identifiers again."""
    if not _is_string(ds):
        problems.append(f"{IDENTIFIERS}: dtype must be variable-length string, got {ds.dtype}")
        return None
    fixed = read_fixed_strings(ds)
    ordered = np.sort(fixed)  # UTF-8 byte order is code point order
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if ordered.size and ordered[0] == b"":
        empty = np.flatnonzero(fixed == b"")
        problems.append(f"{IDENTIFIERS}: {empty.size} empty identifier(s) (first rows {empty[:5].tolist()})")
    if repeated.size:
        dup = np.unique(repeated)
        shown = [d.decode("utf-8", "replace") for d in dup[:3]]
        problems.append(f"{IDENTIFIERS}: {dup.size} duplicated identifier(s), e.g. {shown}")
    return fixed


def _check_rank(obj: h5py.Dataset, problems: list[str]) -> None:
    name = obj.name.lstrip("/")
    if obj.ndim != 1:
        problems.append(f"{name}: must be 1-D (N,), got shape {obj.shape}")
    if obj.dtype != np.uint32:
        problems.append(f"{name}: dtype must be uint32 (taxon ids, 0 = unknown), got {obj.dtype}; "
                        "write it with .astype(np.uint32)")


def _check_pairs(obj: h5py.Dataset, problems: list[str]) -> None:
    """Encoded sin/cos pairs (``temporal``, ``elevation_<set>``)."""
    name = obj.name.lstrip("/")
    if obj.shape[1] % 2:
        problems.append(f"{name}: must have an even number of columns (sin/cos pairs), got {obj.shape[1]}")
    if is_elevation(name) and "scales" in obj.attrs:
        scales = np.atleast_1d(obj.attrs["scales"])
        if 2 * len(scales) != obj.shape[1]:
            problems.append(f"{name}: attribute scales has {len(scales)} entries but the dataset has "
                            f"{obj.shape[1]} columns (expected 2 per scale)")
        if not np.all(np.asarray(scales, dtype=float) > 0):
            problems.append(f"{name}: attribute scales must be positive, got {scales.tolist()}")


def _check_feature(obj: h5py.Dataset, problems: list[str]) -> None:
    """Encoded feature block (N, D): finite, consistent attributes; all-zero rows mean unknown."""
    name = obj.name.lstrip("/")
    if obj.ndim != 2:
        problems.append(f"{name}: must be 2-D (N, D), got shape {obj.shape}")
        return
    if name == "spatial" and obj.shape[1] != 3:
        problems.append(f"spatial: must have 3 columns (unit-sphere xyz), got {obj.shape[1]}")
    if name != "spatial":
        _check_pairs(obj, problems)
    _check_attrs(obj, obj.shape[1], problems)
    _check_finite(obj, problems)


def _check_raw_float(obj: h5py.Dataset, problems: list[str]) -> None:
    name = obj.name.lstrip("/")
    data = _check_finite(obj, problems, allow_nan=True)
    limit = {"raw_lat": 90.0, "raw_lon": 180.0}.get(name)
    if data is not None and limit is not None:
        with np.errstate(invalid="ignore"):
            out = np.flatnonzero(np.abs(data) > limit)
        if out.size:
            problems.append(f"{name}: {out.size} value(s) outside [-{limit:g}, {limit:g}] degrees "
                            f"(first rows {out[:5].tolist()})")


def _check_date(obj: h5py.Dataset, problems: list[str]) -> None:
    if not _is_string(obj):
        problems.append(f"raw_date_observed: dtype must be variable-length string, got {obj.dtype}")


def _check_anomaly(obj: h5py.Dataset, problems: list[str]) -> None:
    _check_finite(obj, problems)


def _check_observer(obj: h5py.Dataset, problems: list[str]) -> None:
    if obj.dtype.kind not in "iu":
        problems.append(f"observer_id: dtype must be int32, got {obj.dtype}")


def _check_in_region(obj: h5py.Dataset, problems: list[str]) -> None:
    if obj.dtype.kind not in "iub":
        problems.append(f"in_region: dtype must be uint8 (0/1), got {obj.dtype}")
        return
    data = obj[()]
    bad = (data != 0) & (data != 1)
    if bad.any():
        problems.append(f"in_region: values must be 0 or 1, got {np.unique(data)[:5].tolist()} "
                        f"(first bad rows {np.flatnonzero(bad)[:5].tolist()})")


def _check_images(obj: h5py.Dataset, problems: list[str]) -> None:
    if not (_is_vlen_bytes(obj) or (obj.dtype == np.uint8 and obj.ndim in (3, 4))):
        problems.append(f"images: must be vlen uint8 (encoded image files) or uint8 (N, H, W[, C]), "
                        f"got dtype {obj.dtype} shape {obj.shape}")
    elif obj.ndim == 4 and obj.shape[3] not in (1, 3):
        problems.append(f"images: last axis must be 1 or 3 channels, got {obj.shape[3]}")


_Check = Callable[[h5py.Dataset, list[str]], object]  # the identifiers' check returns what it read
#: The check for each named dataset; ``taxa_LXX`` and ``elevation_<set>`` are matched by pattern.
DATASET_CHECKS: dict[str, _Check] = {
    IDENTIFIERS: _check_identifiers,
    "spatial": _check_feature,
    "temporal": _check_feature,
    "raw_lat": _check_raw_float,
    "raw_lon": _check_raw_float,
    "raw_elevation": _check_raw_float,
    "raw_date_observed": _check_date,
    "anomaly_score": _check_anomaly,
    "observer_id": _check_observer,
    "in_region": _check_in_region,
    IMAGES: _check_images,
}


def _check_for(name: str) -> _Check | None:
    if RANK_PATTERN.match(name):
        return _check_rank
    if is_elevation(name):
        return _check_feature
    return DATASET_CHECKS.get(name)


def _check_metadata(group: h5py.Group, problems: list[str]) -> None:
    if "config_json" in group.attrs:
        try:
            json.loads(group.attrs["config_json"])
        except (TypeError, ValueError) as exc:
            problems.append(f"{METADATA_GROUP}: attribute config_json is not valid JSON ({exc})")


# ------------------------------------------------------------------ the tree


def _lookup_size(raw: np.ndarray) -> int | None:
    """Entries of a dense lookup table over the ids in `raw`, or None when its ids are negative or
    too large for one (then ids are matched through a sort)."""
    if raw.size == 0:
        return 1
    top, low = int(raw.max()), int(raw.min())
    return top + 1 if low >= 0 and top < max(LOOKUP_IDS, raw.shape[0]) else None


def taxon_table(raw: np.ndarray) -> np.ndarray:
    """``table[c]`` = taxon id of class c: 0 (null), then the distinct non-zero ids of `raw`, ascending (int64)."""
    size = _lookup_size(raw)
    seen = np.unique(raw) if size is None else np.flatnonzero(np.bincount(raw.astype(np.intp, copy=False), minlength=size))
    return np.concatenate([[0], seen[seen != 0]]).astype(np.int64)


def class_indices(raw: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, int]:
    """int32 class index per row of raw taxon ids, given ``table[c]`` = taxon id of class c (0 first, then
    ascending distinct positive ids), and the number of rows whose non-zero id is not in it (-> 0).

    One pass over the rows through a dense lookup table; a sort (searchsorted) when ids are too large.
    """
    known = table[1:]
    size = _lookup_size(raw)
    if size is not None:
        lut = np.zeros(size, dtype=np.int32)
        inside = known < size  # ids no row can carry need no entry
        lut[known[inside]] = np.flatnonzero(inside) + 1
        idx = lut[raw]
    else:
        pos = np.minimum(np.searchsorted(known, raw), max(known.shape[0] - 1, 0))
        found = (raw != 0) & (known[pos] == raw) if known.shape[0] else np.zeros(raw.shape, dtype=bool)
        idx = np.where(found, pos + 1, 0).astype(np.int32)
    return idx, int(np.count_nonzero(raw)) - int(np.count_nonzero(idx))


def tree_conflicts(columns: Mapping[str, np.ndarray]) -> tuple[Conflict, ...]:
    """Taxa seen under more than one parent, in raw taxon ids (``Conflict.child`` / ``parents``).

    `columns` maps rank names, finest first, to raw taxon-id columns of equal length (0 = unknown).
    The detection is :meth:`taxaug.taxonomy.Taxonomy.from_labels` on ids made contiguous per rank.
    """
    from taxaug.taxonomy import Taxonomy, TaxonomyConflictError

    names = list(columns)
    tables, compact = {}, {}
    for name in names:
        raw = np.asarray(columns[name]).reshape(-1)
        tables[name] = taxon_table(raw)
        compact[name], _ = class_indices(raw, tables[name])
    try:
        Taxonomy.from_labels(compact, null_index=0, on_conflict="raise")
    except TaxonomyConflictError as exc:
        return in_taxon_ids(exc.conflicts, tables, names)
    return ()


def in_taxon_ids(conflicts: Sequence[Conflict], tables: Mapping[str, np.ndarray],
                 ranks: Sequence[str]) -> tuple[Conflict, ...]:
    """Conflicts in class indices -> the same in raw taxon ids, through each rank's class -> taxon id table
    (`ranks` finest first)."""
    from taxaug.taxonomy import Conflict

    parent_of = dict(itertools.pairwise(ranks))
    return tuple(Conflict(c.rank, int(tables[c.rank][c.child]),
                          tuple(int(tables[parent_of[c.rank]][p]) for p in c.parents), c.counts)
                 for c in conflicts)


def describe_conflict(conflict: Conflict, parent_rank: str, names: Mapping[str, Mapping[str, str]] | None = None,
                      first_rows: Sequence[int] | None = None) -> str:
    """The taxon, its rank and every parent it was seen under, with row counts, in one phrase.

    ``names`` (rank -> {str(id): name}, the builder's ``taxon_names``) adds each taxon's name;
    ``first_rows`` (one per parent) the first row that puts the taxon under it.
    """
    def label(rank: str, taxon: int) -> str:
        name = (names or {}).get(rank, {}).get(str(taxon))
        return str(taxon) if name is None else f"{taxon} ({name!r})"

    rows = first_rows if first_rows is not None else [None] * len(conflict.parents)
    seen = ", ".join(f"{label(parent_rank, p)} ({c} row{'s' if c != 1 else ''}"
                     f"{'' if row is None else f', first at row {row}'})"
                     for p, c, row in zip(conflict.parents, conflict.counts, rows))
    return (f"{conflict.rank} taxon {label(conflict.rank, conflict.child)} sits under {len(conflict.parents)} "
            f"parents at {parent_rank}: {seen}")


def tree_problem(description: str) -> str:
    """A problem line of a labels file or CSV for one `describe_conflict` phrase."""
    return f"tree: {description}; a taxon has one parent, fix the rows"


def read_config(f: h5py.File) -> dict | None:
    """``metadata/config_json`` of an open file as a dict; None when absent or not a JSON object."""
    try:
        config = json.loads(f[METADATA_GROUP].attrs["config_json"])
    except (KeyError, TypeError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def taxon_names(f: h5py.File) -> dict[str, dict[str, str]]:
    """The builder's ``taxon_names`` (rank -> {str(id): name}) of an open file; {} when it carries none."""
    names = (read_config(f) or {}).get("taxon_names")
    return {r: v for r, v in names.items() if isinstance(v, dict)} if isinstance(names, dict) else {}


def _check_tree(f: h5py.File, ranks: Sequence[str], n: int | None, problems: list[str]) -> tuple[Conflict, ...]:
    usable = [r for r in ranks if isinstance(f[r], h5py.Dataset) and f[r].shape == (n,) and f[r].dtype.kind == "u"]
    if n is None or len(usable) != len(ranks) or len(ranks) < 2:
        return ()
    conflicts = tree_conflicts({r: f[r][()] for r in ranks})
    parent_of = dict(itertools.pairwise(ranks))
    names = taxon_names(f) if conflicts else {}
    problems.extend(tree_problem(describe_conflict(c, parent_of[c.rank], names))
                    for c in conflicts[:MAX_CONFLICTS_SHOWN])
    if len(conflicts) > MAX_CONFLICTS_SHOWN:
        problems.append(f"tree: ... and {len(conflicts) - MAX_CONFLICTS_SHOWN} more taxa with several parents")
    return conflicts


# ------------------------------------------------------------------ validate


def _identifier_count(f: h5py.File, problems: list[str]) -> int | None:
    """N from ``img_identifiers``, or None (with a problem) when it is missing or not 1-D."""
    if IDENTIFIERS not in f:
        problems.append(f"{IDENTIFIERS}: mandatory dataset is missing")
        return None
    ds = f[IDENTIFIERS]
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 1:
        problems.append(f"{IDENTIFIERS}: must be a 1-D dataset, got shape {getattr(ds, 'shape', None)}")
        return None
    return ds.shape[0]


def _check_presence(f: h5py.File, ranks: list[str], required_ranks: Sequence[str],
                    required_datasets: Sequence[str], problems: list[str]) -> None:
    if not ranks:
        problems.append("no rank datasets: at least one taxa_LXX (e.g. taxa_L10) is mandatory")
    problems.extend(f"{name}: required rank dataset is missing (present: {ranks})"
                    for name in required_ranks if name not in f)
    problems.extend(f"{name}: required dataset is missing" for name in required_datasets if name not in f)


def _check_datasets(f: h5py.File, n: int | None, problems: list[str]) -> np.ndarray | None:
    """Run each dataset's check; returns the identifiers as read by their check (None if not read)."""
    identifiers = None
    for name, obj in f.items():
        if isinstance(obj, h5py.Group):
            if name == METADATA_GROUP:
                _check_metadata(obj, problems)
            continue
        if n is not None and (obj.ndim == 0 or obj.shape[0] != n):
            problems.append(f"{name}: length {obj.shape[0] if obj.ndim else 'scalar'} does not match "
                            f"{IDENTIFIERS} length {n}")
            continue
        check = _check_for(name)
        if check is not None and (n is not None or name != IDENTIFIERS):
            result = check(obj, problems)
            if name == IDENTIFIERS:
                identifiers = result
    return identifiers


def validate(
    path: str | Path,
    *,
    required_ranks: Sequence[str] = (),
    required_datasets: Sequence[str] = (),
    check_tree: bool = True,
) -> ValidationReport:
    """Check a labels.h5 file against the schema and report every problem at once.

    Checks mandatory datasets, lengths against ``img_identifiers``, dtypes, NaNs in encoded
    features, value ranges, attributes (``column_names``, ``method``, ``scales``, ``config_json``),
    empty or duplicate identifiers, the presence of ``required_ranks`` / ``required_datasets`` and,
    with ``check_tree``, that the ranks form a tree (no taxon under two parents; ``conflicts`` on the
    report). Never raises for a bad file: call ``.raise_if_invalid()`` on the result.
    """
    path = Path(path)
    if not path.is_file():
        return ValidationReport(str(path), None, (), (f"file not found: {path}",))
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        return ValidationReport(str(path), None, (), (f"not an HDF5 file ({exc})",))
    problems: list[str] = []
    with handle as f:
        ranks = rank_names_in(list(f.keys()))
        n = _identifier_count(f, problems)
        _check_presence(f, ranks, required_ranks, required_datasets, problems)
        identifiers = _check_datasets(f, n, problems)
        conflicts = _check_tree(f, ranks, n, problems) if check_tree else ()
    return ValidationReport(str(path), n, tuple(ranks), tuple(problems), conflicts, identifiers)


# ---------------------------------------------------------------------------------------------- writer


def _column(values: object, n: int, name: str, dtype: np.dtype) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape[:1] != (n,):
        raise ValueError(f"{name} must have length {n} (one per identifier), got shape {arr.shape}")
    return arr.astype(dtype)


def _str_block(values: Sequence[str | bytes | None] | np.ndarray) -> np.ndarray:
    """An object array of str or UTF-8 bytes for one slice (None -> "")."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "SU":
        return values.astype(object)  # h5py stores bytes objects in a UTF-8 string dataset as they are
    return np.array(["" if v is None else v.decode() if isinstance(v, bytes) else str(v) for v in values],
                    dtype=object)


def _write_strings(f: h5py.File, name: str, values: Sequence[str | bytes | None] | np.ndarray) -> None:
    """A variable-length UTF-8 string dataset, converted and written :data:`WRITE_BLOCK` rows at a time."""
    n = len(values)
    ds = f.create_dataset(name, (n,), dtype=h5py.string_dtype())
    for start in range(0, n, WRITE_BLOCK):
        ds[start:start + WRITE_BLOCK] = _str_block(values[start:start + WRITE_BLOCK])


def _write_taxa(f: h5py.File, taxa: Mapping[str, object], n: int) -> None:
    for name, values in taxa.items():
        arr = np.asarray(values)
        if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.uint32).max):
            raise ValueError(f"taxa[{name!r}] must hold non-negative taxon ids that fit uint32")
        f.create_dataset(name, data=_column(arr, n, f"taxa[{name!r}]", np.uint32))


def _write_feature(f: h5py.File, name: str, data: np.ndarray, method: str, columns: Sequence[str]) -> h5py.Dataset:
    ds = f.create_dataset(name, data=data)
    ds.attrs["column_names"] = list(columns)
    ds.attrs["method"] = method
    return ds


def _write_location(f: h5py.File, lat: object, lon: object, n: int) -> None:
    lat_a, lon_a = _column(lat, n, "lat", np.float32), _column(lon, n, "lon", np.float32)
    f.create_dataset("raw_lat", data=lat_a)
    f.create_dataset("raw_lon", data=lon_a)
    _write_feature(f, "spatial", encoders.unit_sphere(lat_a, lon_a), "unit_sphere",
                   ["spatial_x", "spatial_y", "spatial_z"])


def _write_dates(f: h5py.File, dates: Sequence[str | None] | np.ndarray, features: Sequence[str], n: int) -> None:
    if len(dates) != n:
        raise ValueError(f"dates must have length {n}, got {len(dates)}")
    encoded = encoders.cyclical_date(dates, features)
    _write_strings(f, "raw_date_observed", dates)
    _write_feature(f, "temporal", encoded, "sinusoidal", encoders.column_names("temporal", features))


def _write_elevation(f: h5py.File, elevation: object, sets: Mapping[str, Sequence[float]] | None, n: int) -> None:
    elev = _column(elevation, n, "elevation", np.float32)
    f.create_dataset("raw_elevation", data=elev)
    for set_name, scales in (sets or {"multiscale": (100.0, 1000.0, 10000.0)}).items():
        ds = _write_feature(f, f"elevation_{set_name}", encoders.multiscale_elevation(elev, scales), "sinusoidal",
                            encoders.column_names("elev", [f"{s:g}" for s in scales]))
        ds.attrs["scales"] = np.asarray(scales, dtype=np.float32)


def _write_images(f: h5py.File, images: Sequence[bytes] | np.ndarray, n: int) -> None:
    """Pixels (N, H, W[, C]) uint8 in one dataset, or encoded files as vlen uint8, :data:`WRITE_BLOCK` at a time."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim in (3, 4):
        if images.shape[0] != n:
            raise ValueError(f"images must have {n} rows, got shape {images.shape}")
        f.create_dataset(IMAGES, data=images, chunks=(1, *images.shape[1:]))
        return
    if len(images) != n:
        raise ValueError(f"images must have {n} entries, got {len(images)}")
    ds = f.create_dataset(IMAGES, (n,), dtype=h5py.vlen_dtype(np.uint8))
    for start in range(0, n, WRITE_BLOCK):
        chunk = images[start:start + WRITE_BLOCK]
        block = np.empty(len(chunk), dtype=object)
        for i, blob in enumerate(chunk):
            block[i] = np.frombuffer(blob, dtype=np.uint8)
        # write_direct keeps the object array 1-D (setitem reads equal-length blobs as a 2-D block)
        ds.write_direct(block, dest_sel=np.s_[start:start + len(chunk)])


def _check_write_args(path: Path, taxa: Mapping[str, object], no_lat: bool, no_lon: bool, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if not taxa:
        raise ValueError("taxa must hold at least one rank, e.g. {'taxa_L10': species_ids}")
    for name in taxa:
        rank_level(name)
    if no_lat != no_lon:
        raise ValueError("lat and lon must be given together")


def write_labels(
    path: str | Path,
    identifiers: Sequence[str] | np.ndarray,
    taxa: Mapping[str, object],
    *,
    lat: object | None = None,
    lon: object | None = None,
    dates: Sequence[str | None] | np.ndarray | None = None,
    temporal_features: Sequence[str] = ("day_of_year",),
    elevation: object | None = None,
    elevation_sets: Mapping[str, Sequence[float]] | None = None,
    anomaly_score: object | None = None,
    observer_id: object | None = None,
    in_region: object | None = None,
    images: Sequence[bytes] | np.ndarray | None = None,
    extra: Mapping[str, object] | None = None,
    config: Mapping[str, object] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a schema-conforming labels.h5 and return its path.

    ``taxa`` maps rank names (``taxa_L10``...) to raw taxon ids (0 = unknown). Raw metadata is
    stored and encoded in one go: ``lat``/``lon`` -> ``raw_lat``/``raw_lon`` + ``spatial``;
    ``dates`` (ISO strings) -> ``raw_date_observed`` + ``temporal`` (``temporal_features`` from
    :data:`taxaug.data.encoders.TEMPORAL_FEATURES`); ``elevation`` -> ``raw_elevation`` +
    ``elevation_<set>`` for each ``elevation_sets`` entry (default ``{"multiscale": (100, 1000, 10000)}``).
    ``images`` (pure-HDF5 mode) is a list of encoded image files (bytes) or a uint8 (N, H, W, C) array.
    ``extra`` adds datasets as given; ``config`` is stored as JSON in ``metadata/config_json``.
    Identifiers and dates may be str sequences or str/UTF-8 bytes arrays; strings and images are
    written in slices.
    """
    path = Path(path)
    _check_write_args(path, taxa, lat is None, lon is None, overwrite)
    n = len(identifiers)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with h5py.File(tmp, "w") as f:
        _write_strings(f, IDENTIFIERS, identifiers)
        _write_taxa(f, taxa, n)
        if lat is not None:
            _write_location(f, lat, lon, n)
        if dates is not None:
            _write_dates(f, dates, temporal_features, n)
        if elevation is not None:
            _write_elevation(f, elevation, elevation_sets, n)
        for name, values, dtype in (("anomaly_score", anomaly_score, np.float32), ("observer_id", observer_id,
                                    np.int32), ("in_region", in_region, np.uint8)):
            if values is not None:
                f.create_dataset(name, data=_column(values, n, name, dtype))
        if images is not None:
            _write_images(f, images, n)
        for name, values in (extra or {}).items():
            f.create_dataset(name, data=values)
        f.create_group(METADATA_GROUP).attrs["config_json"] = json.dumps(dict(config or {}), default=str,
                                                                          sort_keys=True)
    tmp.replace(path)
    return path
