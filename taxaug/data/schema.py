"""The ``labels.h5`` schema: names, a validator that reports every problem, and a writer.

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

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
import h5py
import numpy as np

from taxaug.data import encoders

__all__ = [
    "IDENTIFIERS",
    "IMAGES",
    "METADATA_GROUP",
    "RANK_PATTERN",
    "SchemaError",
    "ValidationReport",
    "rank_level",
    "rank_names_in",
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
STRING_DATASETS = (IDENTIFIERS, "raw_date_observed")


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
    bad = np.isinf(data) if allow_nan else ~np.isfinite(data)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1)) if data.ndim > 1 else np.flatnonzero(bad)
        kind = "infinite values" if allow_nan else "NaN/infinite values"
        problems.append(f"{name}: {int(bad.sum())} {kind} (first rows {rows[:5].tolist()}); "
                        + ("use NaN for unknown" if allow_nan else "encode unknown rows as all zeros"))
    return data


def validate(
    path: str | Path,
    *,
    required_ranks: Sequence[str] = (),
    required_datasets: Sequence[str] = (),
) -> ValidationReport:
    """Check a labels.h5 file against the schema and report every problem at once.

    Checks mandatory datasets, lengths against ``img_identifiers``, dtypes, NaNs in encoded
    features, value ranges, attributes (``column_names``, ``method``, ``scales``, ``config_json``),
    empty or duplicate identifiers, and the presence of ``required_ranks`` / ``required_datasets``.
    Never raises for a bad file: call ``.raise_if_invalid()`` on the result.
    """
    path = Path(path)
    problems: list[str] = []
    if not path.is_file():
        return ValidationReport(str(path), None, (), (f"file not found: {path}",))
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        return ValidationReport(str(path), None, (), (f"not an HDF5 file ({exc})",))
    with handle as f:
        names = list(f.keys())
        ranks = rank_names_in(names)
        n: int | None = None
        if IDENTIFIERS not in f:
            problems.append(f"{IDENTIFIERS}: mandatory dataset is missing")
        else:
            ds = f[IDENTIFIERS]
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 1:
                problems.append(f"{IDENTIFIERS}: must be a 1-D dataset, got shape {getattr(ds, 'shape', None)}")
            else:
                n = ds.shape[0]
                if not _is_string(ds):
                    problems.append(f"{IDENTIFIERS}: dtype must be variable-length string, got {ds.dtype}")
                else:
                    ids = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()].astype(str)
                    empty = np.flatnonzero(np.char.str_len(ids.astype(str)) == 0) if n else np.array([], int)
                    if empty.size:
                        problems.append(f"{IDENTIFIERS}: {empty.size} empty identifier(s) (first rows "
                                        f"{empty[:5].tolist()})")
                    uniq, counts = np.unique(ids, return_counts=True)
                    dup = uniq[counts > 1]
                    if dup.size:
                        problems.append(f"{IDENTIFIERS}: {dup.size} duplicated identifier(s), e.g. "
                                        f"{[str(d) for d in dup[:3]]}")
        if not ranks:
            problems.append("no rank datasets: at least one taxa_LXX (e.g. taxa_L10) is mandatory")
        for name in required_ranks:
            if name not in f:
                problems.append(f"{name}: required rank dataset is missing (present: {ranks})")
        for name in required_datasets:
            if name not in f:
                problems.append(f"{name}: required dataset is missing")

        for name in names:
            obj = f[name]
            if isinstance(obj, h5py.Group):
                if name == METADATA_GROUP and "config_json" in obj.attrs:
                    try:
                        json.loads(obj.attrs["config_json"])
                    except (TypeError, ValueError) as exc:
                        problems.append(f"{METADATA_GROUP}: attribute config_json is not valid JSON ({exc})")
                continue
            if n is not None and (obj.ndim == 0 or obj.shape[0] != n):
                problems.append(f"{name}: length {obj.shape[0] if obj.ndim else 'scalar'} does not match "
                                f"{IDENTIFIERS} length {n}")
                continue
            if RANK_PATTERN.match(name):
                if obj.ndim != 1:
                    problems.append(f"{name}: must be 1-D (N,), got shape {obj.shape}")
                if obj.dtype != np.uint32:
                    problems.append(f"{name}: dtype must be uint32 (taxon ids, 0 = unknown), got {obj.dtype}; "
                                    "write it with .astype(np.uint32)")
            elif name in FEATURE_DATASETS or is_elevation(name):
                if obj.ndim != 2:
                    problems.append(f"{name}: must be 2-D (N, D), got shape {obj.shape}")
                    continue
                if name == "spatial" and obj.shape[1] != 3:
                    problems.append(f"spatial: must have 3 columns (unit-sphere xyz), got {obj.shape[1]}")
                if is_elevation(name):
                    if obj.shape[1] % 2:
                        problems.append(f"{name}: must have an even number of columns (sin/cos pairs), "
                                        f"got {obj.shape[1]}")
                    if "scales" in obj.attrs:
                        scales = np.atleast_1d(obj.attrs["scales"])
                        if 2 * len(scales) != obj.shape[1]:
                            problems.append(f"{name}: attribute scales has {len(scales)} entries but the "
                                            f"dataset has {obj.shape[1]} columns (expected 2 per scale)")
                        if not np.all(np.asarray(scales, dtype=float) > 0):
                            problems.append(f"{name}: attribute scales must be positive, got {scales.tolist()}")
                elif name == "temporal" and obj.shape[1] % 2:
                    problems.append(f"temporal: must have an even number of columns (sin/cos pairs), "
                                    f"got {obj.shape[1]}")
                _check_attrs(obj, obj.shape[1], problems)
                _check_finite(obj, problems)
            elif name in RAW_FLOATS:
                data = _check_finite(obj, problems, allow_nan=True)
                limit = {"raw_lat": 90.0, "raw_lon": 180.0}.get(name)
                if data is not None and limit is not None:
                    with np.errstate(invalid="ignore"):
                        out = np.flatnonzero(np.abs(data) > limit)
                    if out.size:
                        problems.append(f"{name}: {out.size} value(s) outside [-{limit:g}, {limit:g}] degrees "
                                        f"(first rows {out[:5].tolist()})")
            elif name == "raw_date_observed":
                if not _is_string(obj):
                    problems.append(f"raw_date_observed: dtype must be variable-length string, got {obj.dtype}")
            elif name == "anomaly_score":
                _check_finite(obj, problems)
            elif name == "observer_id":
                if obj.dtype.kind not in "iu":
                    problems.append(f"observer_id: dtype must be int32, got {obj.dtype}")
            elif name == "in_region":
                if obj.dtype.kind not in "iub":
                    problems.append(f"in_region: dtype must be uint8 (0/1), got {obj.dtype}")
                else:
                    values = np.unique(obj[()])
                    if not np.isin(values, (0, 1)).all():
                        problems.append(f"in_region: values must be 0 or 1, got {values[:5].tolist()}")
            elif name == IMAGES:
                if not (_is_vlen_bytes(obj) or (obj.dtype == np.uint8 and obj.ndim in (3, 4))):
                    problems.append(f"images: must be vlen uint8 (encoded image files) or uint8 (N, H, W[, C]), "
                                    f"got dtype {obj.dtype} shape {obj.shape}")
                elif obj.ndim == 4 and obj.shape[3] not in (1, 3):
                    problems.append(f"images: last axis must be 1 or 3 channels, got {obj.shape[3]}")
    return ValidationReport(str(path), n, tuple(ranks), tuple(problems))


# ---------------------------------------------------------------------------------------------- writer


def _column(values: object, n: int, name: str, dtype: np.dtype) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape[:1] != (n,):
        raise ValueError(f"{name} must have length {n} (one per identifier), got shape {arr.shape}")
    return arr.astype(dtype)


def write_labels(
    path: str | Path,
    identifiers: Sequence[str],
    taxa: Mapping[str, object],
    *,
    lat: object | None = None,
    lon: object | None = None,
    dates: Sequence[str | None] | None = None,
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
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    ids = [str(i) for i in identifiers]
    n = len(ids)
    if not taxa:
        raise ValueError("taxa must hold at least one rank, e.g. {'taxa_L10': species_ids}")
    for name in taxa:
        rank_level(name)
    if (lat is None) != (lon is None):
        raise ValueError("lat and lon must be given together")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with h5py.File(tmp, "w") as f:
        f.create_dataset(IDENTIFIERS, data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        for name, values in taxa.items():
            arr = np.asarray(values)
            if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.uint32).max):
                raise ValueError(f"taxa[{name!r}] must hold non-negative taxon ids that fit uint32")
            f.create_dataset(name, data=_column(arr, n, f"taxa[{name!r}]", np.uint32))
        if lat is not None:
            lat_a = _column(lat, n, "lat", np.float32)
            lon_a = _column(lon, n, "lon", np.float32)
            f.create_dataset("raw_lat", data=lat_a)
            f.create_dataset("raw_lon", data=lon_a)
            ds = f.create_dataset("spatial", data=encoders.unit_sphere(lat_a, lon_a))
            ds.attrs["column_names"] = ["spatial_x", "spatial_y", "spatial_z"]
            ds.attrs["method"] = "unit_sphere"
        if dates is not None:
            if len(dates) != n:
                raise ValueError(f"dates must have length {n}, got {len(dates)}")
            f.create_dataset("raw_date_observed", data=np.array(["" if d is None else str(d) for d in dates],
                                                                dtype=object), dtype=h5py.string_dtype())
            ds = f.create_dataset("temporal", data=encoders.cyclical_date(dates, temporal_features))
            ds.attrs["column_names"] = encoders.column_names("temporal", temporal_features)
            ds.attrs["method"] = "sinusoidal"
        if elevation is not None:
            elev = _column(elevation, n, "elevation", np.float32)
            f.create_dataset("raw_elevation", data=elev)
            for set_name, scales in (elevation_sets or {"multiscale": (100.0, 1000.0, 10000.0)}).items():
                ds = f.create_dataset(f"elevation_{set_name}", data=encoders.multiscale_elevation(elev, scales))
                ds.attrs["scales"] = np.asarray(scales, dtype=np.float32)
                ds.attrs["method"] = "sinusoidal"
                ds.attrs["column_names"] = encoders.column_names("elev", [f"{s:g}" for s in scales])
        if anomaly_score is not None:
            f.create_dataset("anomaly_score", data=_column(anomaly_score, n, "anomaly_score", np.float32))
        if observer_id is not None:
            f.create_dataset("observer_id", data=_column(observer_id, n, "observer_id", np.int32))
        if in_region is not None:
            f.create_dataset("in_region", data=_column(in_region, n, "in_region", np.uint8))
        if images is not None:
            if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim in (3, 4):
                if images.shape[0] != n:
                    raise ValueError(f"images must have {n} rows, got shape {images.shape}")
                f.create_dataset(IMAGES, data=images, chunks=(1, *images.shape[1:]))
            else:
                if len(images) != n:
                    raise ValueError(f"images must have {n} entries, got {len(images)}")
                ds = f.create_dataset(IMAGES, (n,), dtype=h5py.vlen_dtype(np.uint8))
                for i, blob in enumerate(images):
                    ds[i] = np.frombuffer(bytes(blob), dtype=np.uint8)
        for name, values in (extra or {}).items():
            f.create_dataset(name, data=values)
        group = f.create_group(METADATA_GROUP)
        group.attrs["config_json"] = json.dumps(dict(config or {}), default=str, sort_keys=True)
    tmp.replace(path)
    return path
