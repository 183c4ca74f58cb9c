"""Datasets over a labels.h5 file: hybrid (image folder) and pure-HDF5 (``images`` dataset).

Labels, metadata and identifiers are read once, vectorised, when the dataset opens; only image
bytes are read per sample. Raw taxon ids become contiguous class indices per rank (0 = null), the
:class:`~taxaug.taxonomy.Taxonomy` is built and checked from the same arrays, and every per-row
array (targets, aux, group ids) is aligned with the rows that remain after filtering.

Reading is split in two stages so the prefetching loader can run them on different threads:
:meth:`read_raw` (IO: encoded bytes) and :meth:`decode` (CPU: a uint8 (3, H, W) tensor).
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs
import h5py
import numpy as np
import torch

from taxaug.data import schema
from taxaug.data._io import ReadTimeout, call_with_timeout, check_read_timeout
from taxaug.data.filters import FilterConfig, apply_filters
from taxaug.data.images import DecodeSpec, ImageLoadError, ImageLocator, decode_image, identifier_str
from taxaug.data.split import split_indices

if TYPE_CHECKING:
    from taxaug.taxonomy import Conflict

__all__ = ["HybridDataset", "IdentifierArray", "LabelsDataset", "LoadFailures", "MissingImage", "PureHDF5Dataset",
           "read_identifiers"]

log = logging.getLogger("taxaug.data")

MissingMode = Literal["strict", "permissive"]


class MissingImage:
    """Stands in for raw bytes that could not be read (permissive mode); decodes to a placeholder."""

    __slots__ = ("name", "reason")

    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason


class LoadFailures:
    """Thread-safe count of images replaced by placeholders, with the first identifiers and reasons."""

    def __init__(self, keep: int = 1000):
        self._lock = threading.Lock()
        self.count = 0
        self.keep = keep
        self.examples: list[tuple[str, str]] = []

    def add(self, name: str, reason: str) -> None:
        with self._lock:
            first = self.count == 0
            self.count += 1
            if len(self.examples) < self.keep:
                self.examples.append((name, reason))
        if first:
            log.warning("image %s could not be loaded (%s); using a placeholder (permissive mode). "
                        "Further failures are counted; see dataset.failures.report().", name, reason)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def report(self) -> str:
        with self._lock:
            if not self.count:
                return "no image failed to load"
            shown = "\n  ".join(f"{n}: {r}" for n, r in self.examples[:20])
            return f"{self.count} image(s) replaced by placeholders:\n  {shown}"


class IdentifierArray:
    """Identifiers held as one fixed-width UTF-8 bytes array (no Python object per row).

    Forked DataLoader workers share its buffer instead of copying one refcounted string per row.
    Indexing with an int gives a ``str``; with a slice, mask or index array, another IdentifierArray.
    """

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        if array.dtype.kind != "S":
            raise TypeError(f"IdentifierArray holds a fixed-width bytes array, got dtype {array.dtype}")
        self.array = array

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __getitem__(self, key: Any) -> str | IdentifierArray:
        if isinstance(key, (int, np.integer)):
            return identifier_str(self.array[key])
        return IdentifierArray(self.array[key])

    def __iter__(self) -> Iterator[str]:
        return (identifier_str(b) for b in self.array)

    def tolist(self) -> list[str]:
        return [identifier_str(b) for b in self.array]

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def __repr__(self) -> str:
        return f"IdentifierArray({len(self)} identifiers, {self.array.dtype})"


def read_identifiers(ds: h5py.Dataset) -> np.ndarray:
    """``img_identifiers`` as a fixed-width bytes array (UTF-8), read once."""
    if ds.dtype.kind != "S" and h5py.check_string_dtype(ds.dtype) is None:
        raise schema.SchemaError(ds.file.filename, [f"{schema.IDENTIFIERS}: dtype must be variable-length string, "
                                                    f"got {ds.dtype}"])
    return schema.read_fixed_strings(ds)


#: File rows per slice when the aux features are assembled (bounds the temporaries of one slice).
AUX_BLOCK = 1 << 18


def _nonzero_rows(block: np.ndarray) -> np.ndarray:
    """Rows of a 2-D block holding a non-zero (or NaN) value, OR-ed column by column (NumPy's row-wise
    ``any`` over a few columns is several times slower)."""
    nonzero = block != 0
    rows = np.zeros(block.shape[0], dtype=bool)
    for col in range(block.shape[1]):
        rows |= nonzero[:, col]
    return rows


def _check_class_map(table: np.ndarray, rank: str) -> None:
    """A class map lists 0 (null), then positive taxon ids in ascending order (each id one class)."""
    ascending = table.ndim == 1 and table.size > 0 and table[0] == 0 and bool(np.all(np.diff(table) > 0))
    if not ascending:
        raise ValueError(f"class_maps[{rank!r}] must be 1-D: 0 (the null class) first, then distinct positive "
                         "taxon ids in ascending order, like a dataset's class_to_taxon_id")


@attrs.frozen
class _Columns:
    """What one open of the labels file reads before choosing rows: row count, raw rank ids (as stored,
    uint32), the columns the filters need, identifiers. Aux features are read later, per slice."""

    num_rows: int
    ranks: dict[str, np.ndarray]
    columns: dict[str, np.ndarray]
    identifiers: np.ndarray


class LabelsDataset:
    """Base class: everything except where image bytes come from (see the two subclasses).

    Parameters
    ----------
    labels_path: the labels.h5 file; validated on open (``SchemaError`` lists every problem).
    rank_names: ranks to load, finest first; default every ``taxa_LXX`` in the file.
    metadata: feature datasets concatenated into ``aux`` in this order, e.g.
        ``("spatial", "temporal", "elevation_multiscale")``; widths come from the file.
    filters: :class:`FilterConfig` (default keeps every row).
    image_size / resize / draft: decode options (:class:`~taxaug.data.images.DecodeSpec`).
    missing: ``"strict"`` raises :class:`ImageLoadError` naming the file; ``"permissive"`` returns a
        zero placeholder of ``image_size``, counted in ``dataset.failures``.
    class_maps: ``{rank: array}`` with ``array[c]`` = taxon id of class c (``array[0] = 0``), e.g. the
        training set's ``class_to_taxon_id``, so a pre-split validation file shares class indices;
        default: built from the rows kept here.
    rows: restrict to these file rows (after filtering they are intersected).
    read_timeout: seconds one image read may take before it counts as a load failure (a FIFO, a
        dead mount); None waits forever. Reads then run on a bounded pool of reader threads
        (:mod:`taxaug.data._io`).
    max_pixels / exif_transpose: decompression-bomb limit and EXIF orientation (:class:`DecodeSpec`).

    ``identifiers`` is an :class:`IdentifierArray` (fixed-width bytes, ``str`` per element).
    """

    def __init__(
        self,
        labels_path: str | Path,
        *,
        rank_names: Sequence[str] | None = None,
        metadata: Sequence[str] = (),
        filters: FilterConfig | None = None,
        image_size: int | tuple[int, int] | None = None,
        resize: Literal["cover", "resize", "none"] = "cover",
        draft: bool = True,
        missing: MissingMode = "strict",
        class_maps: Mapping[str, np.ndarray] | None = None,
        rows: Sequence[int] | np.ndarray | None = None,
        taxonomy_conflicts: Literal["raise", "majority"] = "raise",
        read_timeout: float | None = 60.0,
        max_pixels: int | None = None,
        exif_transpose: bool = True,
    ):
        self.labels_path = Path(labels_path)
        metadata = (metadata,) if isinstance(metadata, str) else tuple(metadata)
        self._configure(missing=missing, read_timeout=read_timeout, filters=filters,
                        decode_spec=DecodeSpec(size=image_size, resize=resize if image_size is not None else "none",
                                               draft=draft, max_pixels=max_pixels, exif_transpose=exif_transpose))
        report = schema.validate(self.labels_path, required_ranks=tuple(rank_names or ()),
                                 required_datasets=metadata, check_tree=False)  # the Taxonomy below checks it
        report.raise_if_invalid()
        with h5py.File(self.labels_path, "r") as f:
            cols = self._read_columns(f, list(rank_names or report.rank_names), metadata, report.identifiers)
            del report
            self._select_rows(cols, rows)
            self._build_targets(cols.ranks, class_maps)  # consumes cols.ranks
            del cols
            self._build_aux(f, metadata)

        from taxaug.taxonomy import Taxonomy, TaxonomyConflictError

        try:
            with warnings.catch_warnings():  # the majority fallback's warning, in taxon ids, comes below
                warnings.simplefilter("ignore")
                self.taxonomy = Taxonomy.from_labels(dict(self._targets), null_index=0, num_classes=self.num_classes,
                                                     on_conflict=taxonomy_conflicts)
        except TaxonomyConflictError as err:
            raise TaxonomyConflictError(err.conflicts, self._describe_conflicts(err.conflicts)) from None
        if self.taxonomy.conflicts:
            n = len(self.taxonomy.conflicts)
            warnings.warn(f"{str(self.labels_path)!r}: {n} {'taxon sits' if n == 1 else 'taxa sit'} under several "
                          f"parents; kept the most frequent parent of each (first: "
                          f"{self._describe_conflicts(self.taxonomy.conflicts[:1])[0]})", stacklevel=3)
        self._check_rows()

    def _describe_conflicts(self, conflicts: Sequence[Conflict]) -> list[str]:
        """The first conflicts in the file's taxon ids (and names, when the builder stored them)."""
        from taxaug.taxonomy import TaxonomyConflictError

        with h5py.File(self.labels_path, "r") as f:
            names = schema.taxon_names(f)
        ranks = list(self.class_to_taxon_id)
        parent_of = dict(itertools.pairwise(ranks))
        shown = schema.in_taxon_ids(conflicts[:TaxonomyConflictError.SHOWN], self.class_to_taxon_id, ranks)
        return [schema.describe_conflict(c, parent_of[c.rank], names) for c in shown]

    def _configure(self, *, missing: str, read_timeout: float | None, filters: FilterConfig | None,
                   decode_spec: DecodeSpec) -> None:
        """Check and store the per-sample options."""
        if missing not in ("strict", "permissive"):
            raise ValueError(f"missing must be 'strict' or 'permissive', got {missing!r}")
        self.read_timeout = check_read_timeout(read_timeout)
        self.missing: MissingMode = missing  # type: ignore[assignment]
        self.decode_spec = decode_spec
        if missing == "permissive" and decode_spec.size is None:
            raise ValueError("missing='permissive' needs image_size, so placeholders have the batch's shape")
        self.filters = filters or FilterConfig()
        self.failures = LoadFailures()

    def _read_columns(self, f: h5py.File, ranks: list[str], metadata: tuple[str, ...],
                      identifiers: np.ndarray) -> _Columns:
        """The arrays the dataset needs before choosing rows (ranks sorted finest first); `identifiers`
        as validation already read them."""
        for name in ranks:
            schema.rank_level(name)
        ranks.sort(key=schema.rank_level)
        needed = set(self.filters.required_metadata)
        if self.filters.in_region_only:
            needed.add("in_region")
        if self.filters.max_anomaly_score is not None:
            needed.add("anomaly_score")
        cols = _Columns(
            num_rows=f[schema.IDENTIFIERS].shape[0],
            ranks={r: f[r][()] for r in ranks},
            columns={c: f[c][()] for c in needed if c in f},
            identifiers=identifiers,
        )
        self.config_json = f[schema.METADATA_GROUP].attrs.get("config_json") if schema.METADATA_GROUP in f else None
        self._init_source(f)
        self.rank_names: tuple[str, ...] = tuple(ranks)
        return cols

    def _select_rows(self, cols: _Columns, rows: Sequence[int] | np.ndarray | None) -> None:
        """Apply the filters (and `rows`); sets ``file_rows`` and the kept identifiers."""
        n_file = cols.num_rows
        keep, removed = apply_filters(self.filters, ranks=cols.ranks, columns=cols.columns, num_rows=n_file)
        if rows is not None:
            chosen = np.zeros(n_file, dtype=bool)
            chosen[np.asarray(rows, dtype=np.int64)] = True
            keep &= chosen
        self.filter_report: dict[str, int] = removed
        if removed:
            log.info("%s: filters removed %s; %d of %d rows kept", self.labels_path.name, removed,
                     int(keep.sum()), n_file)
        self.file_rows = np.flatnonzero(keep).astype(np.int64, copy=False)
        if self.file_rows.size == 0:
            raise ValueError(f"no rows of {self.labels_path} remain after filtering ({removed}); "
                             "relax the filters (FilterConfig) or check the file")
        ids = cols.identifiers
        self.identifiers = IdentifierArray(ids if self.file_rows.size == n_file else ids[self.file_rows])

    def _build_targets(self, raw_ranks: dict[str, np.ndarray], class_maps: Mapping[str, np.ndarray] | None) -> None:
        """Contiguous int32 class indices per rank (0 = null), from `class_maps` or the kept rows.

        Each raw column is dropped from `raw_ranks` once mapped, so raw ids and targets of every rank
        are never all held at once.
        """
        self.class_to_taxon_id: dict[str, np.ndarray] = {}
        self._targets: dict[str, np.ndarray] = {}
        for r in self.rank_names:
            raw = raw_ranks.pop(r)
            raw = raw if raw.shape[0] == self.file_rows.size else raw[self.file_rows]  # all rows kept: no copy
            if class_maps is not None and r in class_maps:
                table = np.asarray(class_maps[r], dtype=np.int64)
                _check_class_map(table, r)
                idx, unseen = schema.class_indices(raw, table)
                if unseen:
                    log.warning("%s: %d row(s) at %s carry taxon ids absent from the given class map; "
                                "they are labelled null (0)", self.labels_path.name, unseen, r)
            else:
                table = schema.taxon_table(raw)
                idx, _ = schema.class_indices(raw, table)
            self.class_to_taxon_id[r] = table
            self._targets[r] = idx
        self.num_classes: dict[str, int] = {r: int(t.shape[0]) for r, t in self.class_to_taxon_id.items()}

    def _build_aux(self, f: h5py.File, metadata: tuple[str, ...]) -> None:
        """``aux`` (kept rows, metadata concatenated as float32, non-finite -> 0) and its per-component
        validity mask, filled :data:`AUX_BLOCK` file rows at a time straight from the file."""
        widths = [int(np.prod(f[name].shape[1:], dtype=np.int64)) for name in metadata]
        self.aux_components: list[tuple[str, int]] = list(zip(metadata, widths))
        if not metadata:
            self._aux = self._aux_mask = None
            return
        self._aux = np.empty((len(self.file_rows), sum(widths)), dtype=np.float32)
        self._aux_mask = np.empty((len(self.file_rows), len(metadata)), dtype=bool)
        n_file = f[schema.IDENTIFIERS].shape[0]
        for start in range(0, n_file, AUX_BLOCK):
            lo, hi = np.searchsorted(self.file_rows, [start, start + AUX_BLOCK])
            if lo == hi:
                continue
            local = None if len(self.file_rows) == n_file else self.file_rows[lo:hi] - start
            offset = 0
            for j, (name, width) in enumerate(self.aux_components):
                block = f[name][start:start + AUX_BLOCK]
                block = np.asarray(block if local is None else block[local], dtype=np.float32).reshape(hi - lo, -1)
                self._aux_mask[lo:hi, j] = _nonzero_rows(block)
                if not np.isfinite(block).all():  # raw columns may hold NaN: such rows count as unknown
                    finite = np.isfinite(block)
                    self._aux_mask[lo:hi, j] &= finite.all(axis=1)
                    block = np.where(finite, block, np.float32(0))
                self._aux[lo:hi, offset:offset + width] = block
                offset += width

    def _failed(self, name: str, reason: str) -> MissingImage:
        """A read failure: raised in strict mode, a MissingImage (decoded to a counted placeholder) otherwise."""
        if self.missing == "strict":
            raise ImageLoadError(name, reason)
        return MissingImage(name, reason)

    # ------------------------------------------------------------------ source hooks (subclasses)

    def _init_source(self, f: h5py.File) -> None:
        """Called once with the open labels file; subclasses record what they need to read images."""

    def _check_rows(self) -> None:
        """Called once the rows are chosen; subclasses refuse rows they could not read safely."""

    def read_raw(self, index: int) -> bytes | np.ndarray | MissingImage:
        """IO stage: the encoded bytes (or pixel array) of sample `index` (a position in this dataset).

        Strict mode raises :class:`ImageLoadError`; permissive mode returns a :class:`MissingImage`.
        """
        raise NotImplementedError

    def describe_source(self, index: int) -> str:
        return str(self.identifiers[index])

    # ------------------------------------------------------------------ per-sample access

    def __len__(self) -> int:
        return int(self.file_rows.shape[0])

    def decode(self, raw: bytes | np.ndarray | MissingImage, index: int) -> torch.Tensor:
        """CPU stage: a (3, H, W) uint8 tensor, or a counted placeholder in permissive mode."""
        if isinstance(raw, MissingImage):
            self.failures.add(raw.name, raw.reason)
            return self.decode_spec.placeholder()
        try:
            return decode_image(raw, self.decode_spec, name=self.describe_source(index))
        except ImageLoadError as exc:
            if self.missing == "strict":
                raise
            self.failures.add(exc.path, exc.reason)
            return self.decode_spec.placeholder()

    def load_image(self, index: int) -> torch.Tensor:
        """Both stages for one sample."""
        return self.decode(self.read_raw(index), index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One sample as a dict (for ``torch.utils.data.DataLoader``; collate with :meth:`collate`)."""
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        index %= len(self)
        return {"image": self.load_image(index), "index": index}

    # ------------------------------------------------------------------ batches

    def targets(self, indices: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """Class-index targets (long, 0 = null) of the given positions, per rank."""
        idx = np.asarray(indices, dtype=np.int64)
        return {r: torch.from_numpy(self._targets[r][idx].astype(np.int64)) for r in self.rank_names}

    def aux(self, indices: np.ndarray | torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(aux (B, D) float32, aux_mask (B, n_components) bool) of the given positions, or (None, None)."""
        if self._aux is None:
            return None, None
        idx = np.asarray(indices, dtype=np.int64)
        return torch.from_numpy(self._aux[idx]), torch.from_numpy(self._aux_mask[idx])

    def make_batch(self, images: torch.Tensor, indices: np.ndarray | torch.Tensor):
        """A :class:`taxaug.MixBatch` of `images` (B, C, H, W) with targets/aux of `indices`."""
        from taxaug.functional.batch import MixBatch

        idx = np.asarray(indices, dtype=np.int64)
        aux, aux_mask = self.aux(idx)
        return MixBatch(images=images, targets=self.targets(idx), aux=aux, aux_mask=aux_mask,
                        indices=torch.from_numpy(idx.copy()))

    def collate(self, samples: Sequence[dict[str, Any]]):
        """Collate ``__getitem__`` dicts into a MixBatch (``DataLoader(collate_fn=dataset.collate)``)."""
        images = torch.stack([s["image"] for s in samples])
        return self.make_batch(images, np.array([s["index"] for s in samples], dtype=np.int64))

    # ------------------------------------------------------------------ labels

    def group_ids(self, rank: str) -> np.ndarray:
        """int64 group id per sample for grouping at `rank`: its class index, with null -> -1.

        Aligned with this dataset's positions (after filtering and splitting), and equal by
        construction to what the mixing functions derive from the batch targets.
        """
        if rank not in self._targets:
            raise KeyError(f"rank {rank!r} not loaded; ranks are {self.rank_names}")
        ids = self._targets[rank].astype(np.int64)
        ids[ids == 0] = -1
        return ids

    def class_targets(self, rank: str) -> np.ndarray:
        """int64 class index (0 = null) per sample at `rank`."""
        return self._targets[rank].astype(np.int64)

    def taxon_ids(self, rank: str, classes: np.ndarray | torch.Tensor) -> np.ndarray:
        """Raw taxon ids of predicted class indices at `rank` (0 for the null class)."""
        return self.class_to_taxon_id[rank][np.asarray(classes, dtype=np.int64)]

    @property
    def aux_dim(self) -> int:
        return sum(w for _, w in self.aux_components)

    # ------------------------------------------------------------------ subsets and splits

    def subset(self, positions: Sequence[int] | np.ndarray) -> LabelsDataset:
        """A view on some positions sharing class maps, taxonomy and decode settings.

        Group ids, targets and aux of the view are aligned with its own positions; it has its own
        failure counter.
        """
        pos = np.asarray(positions, dtype=np.int64)
        if pos.size and (pos.min() < 0 or pos.max() >= len(self)):
            raise IndexError(f"positions must be in [0, {len(self)}), got min {pos.min()} max {pos.max()}")
        view = copy.copy(self)
        view.file_rows = self.file_rows[pos]
        view.identifiers = self.identifiers[pos]
        view._targets = {r: t[pos] for r, t in self._targets.items()}
        view._aux = None if self._aux is None else self._aux[pos]
        view._aux_mask = None if self._aux_mask is None else self._aux_mask[pos]
        view.failures = LoadFailures()
        view._subset_hook(pos)
        return view

    def _subset_hook(self, pos: np.ndarray) -> None:
        """Subclasses re-index their per-row source state."""

    def split(self, val_ratio: float, *, seed: int = 0, stratify_rank: str | None = None
              ) -> tuple[LabelsDataset, LabelsDataset]:
        """Deterministic (train, val) views by ratio and seed, optionally stratified by a rank.

        Class maps are the parent's, so both views share class indices; each view's group ids are
        aligned with its own positions.
        """
        strat = None if stratify_rank is None else self.class_targets(stratify_rank)
        train, val = split_indices(len(self), val_ratio, seed=seed, stratify=strat)
        return self.subset(train), self.subset(val)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.labels_path.name}, {len(self)} samples, ranks "
                f"{dict(self.num_classes)}, aux {self.aux_components}, missing={self.missing!r})")


class HybridDataset(LabelsDataset):
    """labels.h5 + a folder of image files named by ``img_identifiers``.

    ``images_dir`` holds ``<identifier><file_extension>`` flat, or sharded as
    ``<first shard_k chars>/<identifier><file_extension>`` when ``shard_k`` is set (falling back to
    the flat layout, warned once). Other parameters: :class:`LabelsDataset`.
    """

    def __init__(self, labels_path: str | Path, images_dir: str | Path, *, file_extension: str = "",
                 shard_k: int | None = None, **kwargs: Any):
        self.locator = ImageLocator(images_dir, file_extension=file_extension, shard_k=shard_k)
        super().__init__(labels_path, **kwargs)

    def describe_source(self, index: int) -> str:
        return str(self.locator.path_for(str(self.identifiers[index])))

    def verify(self, *, max_missing_ratio: float | None = None, max_missing_count: int | None = None,
               report_path: str | Path | None = None, decode: bool = True, num_workers: int = 8,
               raise_on_failure: bool = True, progress: bool | None = None):
        """Check this dataset's images (only the rows kept after filtering) read and decode as in training.

        Reads use this dataset's ``read_timeout``, decoding its :class:`DecodeSpec`. Thresholds: with
        neither given none may fail, 0 = none allowed. Raises ``VerificationError`` past a threshold
        when `raise_on_failure`; the JSON report is written to `report_path` either way. Returns the
        :class:`~taxaug.data.verify.VerifyReport`.
        """
        from taxaug.data.verify import verify_images

        report = verify_images(self.labels_path, self.locator.images_dir, file_extension=self.locator.file_extension,
                               shard_k=self.locator.shard_k, decode=decode, num_workers=num_workers,
                               max_missing_ratio=max_missing_ratio, max_missing_count=max_missing_count,
                               report_path=report_path, progress=progress, rows=self.file_rows,
                               read_timeout=self.read_timeout, decode_spec=self.decode_spec, check_labels=False,
                               identifiers=self.identifiers)
        if raise_on_failure:
            report.raise_if_failed()
        return report

    def read_raw(self, index: int) -> bytes | MissingImage:
        try:
            return self.locator.read(self.identifiers[index], self.read_timeout)
        except ImageLoadError as exc:
            return self._failed(exc.path, exc.reason)

    def _check_rows(self) -> None:
        """Refuse identifiers whose file would lie outside ``images_dir`` (vectorised, once at open)."""
        self.locator.check_identifiers(self.identifiers.array, self.file_rows)


class PureHDF5Dataset(LabelsDataset):
    """labels.h5 whose ``images`` dataset holds the images: encoded files (vlen uint8) or a uint8
    (N, H, W[, C]) pixel array. The file is reopened lazily per process (fork-safe).
    """

    def _init_source(self, f: h5py.File) -> None:
        if schema.IMAGES not in f:
            raise schema.SchemaError(self.labels_path, [f"{schema.IMAGES}: dataset is missing; pure-HDF5 mode "
                                                        "reads images from it (use HybridDataset for an image "
                                                        "folder)"])
        self._handle: h5py.File | None = None
        self._pid = -1
        self._handle_lock = threading.Lock()

    def _images(self) -> h5py.Dataset:
        with self._handle_lock:
            if self._handle is None or self._pid != os.getpid():
                self._handle = h5py.File(self.labels_path, "r")
                self._pid = os.getpid()
            return self._handle[schema.IMAGES]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"], state["_pid"], state["_handle_lock"] = None, -1, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._handle_lock = threading.Lock()

    def describe_source(self, index: int) -> str:
        return f"{self.labels_path}:{schema.IMAGES}[{int(self.file_rows[index])}] ({self.identifiers[index]})"

    def read_raw(self, index: int) -> bytes | np.ndarray | MissingImage:
        row = int(self.file_rows[index])
        try:
            data = call_with_timeout(str(self.labels_path), lambda: self._images()[row],
                                     self.read_timeout)  # keyed by file: h5py reads one at a time anyway
        except ReadTimeout as exc:
            return self._failed(self.describe_source(index), str(exc))
        except OSError as exc:  # a damaged chunk: h5py's message names neither file nor row
            return self._failed(self.describe_source(index), f"read failed ({exc})")
        if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 1:
            if data.size == 0:
                return self._failed(self.describe_source(index), "empty entry in the images dataset")
            return data.tobytes()
        return data
