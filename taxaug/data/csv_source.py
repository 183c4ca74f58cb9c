"""Streaming reader for the builder's CSV: every cell checked, problems collected with their rows.

Rows are read in blocks of :data:`CHUNK_ROWS` and each column is converted with NumPy string
operations, so memory is bounded by the converted label columns (fixed-width identifiers and dates,
uint32 taxon ids, float32 metadata), not by a Python object per row. Row numbers count records
(the header is row 1, blank lines count), as a spreadsheet shows them even when a quoted cell spans
several lines.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np

from taxaug.data import encoders, schema

__all__ = ["METADATA_COLUMNS", "CsvTable", "Problems", "check_table", "read_csv", "utf8_bytes", "utf8_text"]

METADATA_COLUMNS = ("lat", "lon", "date", "elevation", "anomaly_score", "observer_id", "in_region")
CHUNK_ROWS = 1 << 14
#: Rows named per problem line; the rest are counted.
ROWS_SHOWN = 10
#: Cells meaning "unknown at this rank" in a taxon column (ids or names).
UNKNOWN_CELLS = ("", "0", "_unknown")
_FLOAT_LIMITS = {"lat": 90.0, "lon": 180.0, "elevation": np.inf, "anomaly_score": np.inf}
TAXON_ID_HINT = ("taxon ids are integers 0..4294967295 (empty or 0 = unknown); "
                 "pass --taxon-names (taxon_names=True) if the column holds names")


class Problems:
    """Problems keyed by subject and hint: the rows and cells of each, rendered one line per key."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str], tuple[list[str], list[int]]] = {}
        self._lines: list[str] = []

    def add(self, subject: str, hint: str, rows: np.ndarray, cells: Sequence[str] | np.ndarray | None = None, *,
            quote: bool = True) -> None:
        """Record `subject` at `rows` (CSV row numbers), showing each row's cell (quoted) when given."""
        if len(rows) == 0:
            return
        shown, count = self._found.setdefault((subject, hint), ([], [0]))
        for i in range(min(len(rows), ROWS_SHOWN - len(shown))):
            detail = "" if cells is None else f" ({str(cells[i])!r})" if quote else f" ({cells[i]})"
            shown.append(f"row {int(rows[i])}{detail}")
        count[0] += len(rows)

    def note(self, line: str) -> None:
        """A problem that is already one complete line."""
        self._lines.append(line)

    def lines(self) -> list[str]:
        out = list(self._lines)
        for (subject, hint), (shown, count) in self._found.items():
            more = f" and {count[0] - len(shown)} more row(s)" if count[0] > len(shown) else ""
            out.append(f"{subject} at {', '.join(shown)}{more}; {hint}")
        return out

    def __bool__(self) -> bool:
        return bool(self._lines or self._found)


@attrs.define
class CsvTable:
    """The converted CSV: one entry per kept row; ``rows`` are their CSV row numbers."""

    identifiers: np.ndarray  # fixed-width UTF-8 bytes
    rows: np.ndarray
    taxa: dict[str, np.ndarray]  # uint32 raw ids, 0 = unknown
    names: dict[str, dict[str, str]]  # rank -> {str(id): name}, for columns read as names
    metadata: dict[str, np.ndarray]  # write_labels keyword -> column


@attrs.define
class _Layout:
    """Where each used column sits in a row."""

    width: int
    identifier: int
    ranks: dict[str, int]
    metadata: dict[str, int]


def _cells(cells: Sequence[str], column: str, rows: np.ndarray, problems: Problems) -> np.ndarray:
    """One column's cells, stripped; bytes that were not UTF-8 are a problem (and the cell is blanked)."""
    a = np.strings.strip(np.array(cells, dtype=str))
    if a.dtype.itemsize == 0 or a.view(np.uint32).max(initial=0) < 0xD800:
        return a
    codes = a.view(np.uint32).reshape(a.shape[0], -1)
    bad = np.flatnonzero(((codes >= 0xD800) & (codes <= 0xDFFF)).any(axis=1))  # undecodable bytes, escaped
    problems.add(f"{column}: not valid UTF-8", "save the CSV as UTF-8 text", rows[bad])
    a[bad] = ""
    return a


def utf8_bytes(a: np.ndarray) -> np.ndarray:
    """A str array as fixed-width UTF-8 bytes (a plain cast when every cell is ASCII)."""
    try:
        return a.astype(np.bytes_)
    except UnicodeEncodeError:
        return np.strings.encode(a, "utf-8")


def utf8_text(a: np.ndarray) -> np.ndarray:
    """Fixed-width UTF-8 bytes back to str (a plain cast when every cell is ASCII)."""
    try:
        return a.astype(np.str_)
    except UnicodeDecodeError:
        return np.strings.decode(a, "utf-8")


def _digits_only(a: np.ndarray) -> np.ndarray:
    return (np.strings.lstrip(a, "0123456789") == "") & (a != "")


def _layout(header: list[str], identifier: str, rank_columns: Sequence[str] | None, problems: Problems) -> _Layout:
    """Column positions; a missing identifier or rank column is fatal (ValueError), other header problems listed."""
    if identifier not in header:
        raise ValueError(f"row 1: no identifier column {identifier!r}; the columns are {header} "
                         "(choose it with --identifier-column)")
    ranks = list(rank_columns) if rank_columns else schema.rank_names_in(header)
    for r in ranks:
        schema.rank_level(r)
    if not ranks or any(r not in header for r in ranks):
        raise ValueError(f"row 1: rank columns {ranks or '(none found)'} must be CSV columns named taxa_LXX; "
                         f"the columns are {header}")
    ranks.sort(key=schema.rank_level)
    for name in sorted({c for c in header if header.count(c) > 1}):
        problems.note(f"row 1: column {name!r} appears {header.count(name)} times; name each column once")
    known = {identifier, *ranks, *METADATA_COLUMNS}
    unknown = [c for c in header if c not in known]
    if unknown:
        problems.note(f"row 1: unknown column(s) {unknown}; the builder reads {identifier!r}, the rank columns "
                      f"{ranks} and {list(METADATA_COLUMNS)}: remove or rename the others")
    if ("lat" in header) != ("lon" in header):
        problems.note("row 1: 'lat' and 'lon' must be given together; add the missing column")
    return _Layout(len(header), header.index(identifier), {r: header.index(r) for r in ranks},
                   {m: header.index(m) for m in METADATA_COLUMNS if m in header})


def _has_nul(a: np.ndarray) -> np.ndarray:
    """Rows holding a NUL character (NumPy's string search treats NUL as padding, so compare code points)."""
    if a.dtype.itemsize == 0 or a.shape[0] == 0:
        return np.zeros(a.shape[0], dtype=bool)
    codes = a.view(np.uint32).reshape(a.shape[0], -1)
    return ((codes == 0) & (np.arange(codes.shape[1]) < np.strings.str_len(a)[:, None])).any(axis=1)


def _identifiers(cells: Sequence[str], rows: np.ndarray, problems: Problems) -> np.ndarray:
    """Identifiers as UTF-8 bytes; empty ones and ones leaving the images folder are problems."""
    a = _cells(cells, "identifier", rows, problems)
    problems.add("identifier: empty", "every row needs the image's file name", rows[a == ""])
    wrapped = np.strings.add(np.strings.add("/", np.strings.replace(a, "\\", "/")), "/")
    escapes = np.strings.startswith(a, "/") | (np.strings.find(wrapped, "/../") >= 0) | _has_nul(a)
    bad = np.flatnonzero(escapes)
    problems.add("identifier: leaves the images folder (an absolute path, a '..' part or a NUL)",
                 "identifiers are file paths relative to the images folder", rows[bad], a[bad])
    return utf8_bytes(a)


def _taxon_ids(cells: Sequence[str], rank: str, rows: np.ndarray, problems: Problems) -> np.ndarray:
    """uint32 ids from integer cells; empty and 0 are unknown (0); anything else is a problem."""
    a = _cells(cells, rank, rows, problems)
    unknown = np.isin(a, ("", "0"))
    digits = _digits_only(a) & (np.strings.str_len(a) <= 19)
    values = np.zeros(a.shape[0], np.uint64)
    values[digits] = a[digits].astype(np.uint64)
    bad = np.flatnonzero(~unknown & (~digits | (values > np.iinfo(np.uint32).max)))
    problems.add(f"{rank}: not a taxon id", TAXON_ID_HINT, rows[bad], a[bad])
    values[bad] = 0
    return values.astype(np.uint32)


def _taxon_names(cells: Sequence[str], rank: str, lookup: dict[str, int], rows: np.ndarray,
                 problems: Problems) -> np.ndarray:
    """Provisional uint32 ids (order of first appearance, from 1) for names; unknown cells give 0."""
    a = _cells(cells, rank, rows, problems)
    uniq, inverse = np.unique(a, return_inverse=True)
    ids = np.array([0 if u in UNKNOWN_CELLS else lookup.setdefault(str(u), len(lookup) + 1) for u in uniq],
                   dtype=np.uint32)
    return ids[inverse]


def _floats(cells: Sequence[str], column: str, rows: np.ndarray, problems: Problems) -> np.ndarray:
    """float32 values; empty and ``nan`` are NaN; non-numbers and values out of range are problems."""
    a = _cells(cells, column, rows, problems)
    values = np.full(a.shape[0], np.nan)
    filled = np.flatnonzero(a != "")
    try:
        values[filled] = a[filled].astype(np.float64)
    except ValueError:
        for i in filled:
            try:
                values[i] = float(a[i])
            except ValueError:
                problems.add(f"{column}: not a number", "write a decimal number or leave the cell empty",
                             rows[i:i + 1], a[i:i + 1])
    limit = _FLOAT_LIMITS[column]
    with np.errstate(invalid="ignore"):
        out = np.flatnonzero(np.isinf(values) | (np.abs(values) > limit))
    span = "finite" if np.isinf(limit) else f"within [-{limit:g}, {limit:g}]"
    problems.add(f"{column}: out of range", f"values must be {span}", rows[out], a[out])
    values[out] = np.nan
    return values.astype(np.float32)


def _observer_ids(cells: Sequence[str], rows: np.ndarray, problems: Problems) -> np.ndarray:
    a = _cells(cells, "observer_id", rows, problems)
    body = np.where(np.strings.startswith(a, "-"), np.strings.slice(a, 1, None), a)
    ok = _digits_only(body) & (np.strings.str_len(body) <= 10)
    values = np.zeros(a.shape[0], np.int64)
    values[ok] = a[ok].astype(np.int64)
    info = np.iinfo(np.int32)
    bad = np.flatnonzero((a != "") & (~ok | (values < info.min) | (values > info.max)))
    problems.add("observer_id: not an int32 integer", "write an integer or leave the cell empty (= 0)",
                 rows[bad], a[bad])
    values[bad] = 0
    return values.astype(np.int32)


def _in_region(cells: Sequence[str], rows: np.ndarray, problems: Problems) -> np.ndarray:
    a = _cells(cells, "in_region", rows, problems)
    bad = np.flatnonzero(~np.isin(a, ("", "0", "1")))
    problems.add("in_region: not 0 or 1", "write 1 (inside), 0 (outside) or leave the cell empty (= 0)",
                 rows[bad], a[bad])
    return (a == "1").astype(np.uint8)


def _dates(cells: Sequence[str], rows: np.ndarray, problems: Problems) -> np.ndarray:
    a = _cells(cells, "date", rows, problems)
    bad = np.flatnonzero((a != "") & ~encoders.parse_iso_dates(a)["parsed"])
    problems.add("date: not an ISO 8601 date", "write e.g. 2021-05-03 or 2021-05-03T14:30:00, or leave it empty",
                 rows[bad], a[bad])
    return utf8_bytes(a)


class _Columns:
    """Converted blocks per column, concatenated once at the end."""

    def __init__(self, layout: _Layout, taxon_names: bool):
        self.layout, self.taxon_names = layout, taxon_names
        self.blocks: dict[str, list[np.ndarray]] = {}
        self.lookups: dict[str, dict[str, int]] = {r: {} for r in layout.ranks} if taxon_names else {}

    def _keep(self, key: str, block: np.ndarray) -> None:
        self.blocks.setdefault(key, []).append(block)

    def add(self, records: list[list[str]], rows: np.ndarray, problems: Problems) -> None:
        """Convert one block of rows (each with exactly ``layout.width`` cells; `rows` their row numbers)."""
        cols = list(zip(*records))
        self._keep("rows", rows)
        self._keep("identifiers", _identifiers(cols[self.layout.identifier], rows, problems))
        for rank, j in self.layout.ranks.items():
            ids = (_taxon_names(cols[j], rank, self.lookups[rank], rows, problems) if self.taxon_names
                   else _taxon_ids(cols[j], rank, rows, problems))
            self._keep(rank, ids)
        for name, j in self.layout.metadata.items():
            if name in _FLOAT_LIMITS:
                self._keep(name, _floats(cols[j], name, rows, problems))
            elif name == "observer_id":
                self._keep(name, _observer_ids(cols[j], rows, problems))
            elif name == "in_region":
                self._keep(name, _in_region(cols[j], rows, problems))
            else:
                self._keep(name, _dates(cols[j], rows, problems))

    def table(self) -> CsvTable:
        joined = {k: np.concatenate(v) for k, v in self.blocks.items()}
        taxa = {r: joined.pop(r) for r in self.layout.ranks}
        names: dict[str, dict[str, str]] = {}
        for rank, lookup in self.lookups.items():  # ids by sorted name, so a rebuild gives the same ids
            ordered = sorted(lookup)
            remap = np.zeros(len(lookup) + 1, np.uint32)
            remap[[lookup[n] for n in ordered]] = np.arange(1, len(ordered) + 1, dtype=np.uint32)
            taxa[rank] = remap[taxa[rank]]
            names[rank] = {str(i + 1): n for i, n in enumerate(ordered)}
        if "anomaly_score" in joined:  # an empty cell is 0 (the dataset holds no NaN)
            joined["anomaly_score"] = np.nan_to_num(joined["anomaly_score"], nan=0.0)
        meta = {{"date": "dates"}.get(k, k): joined[k] for k in self.layout.metadata}
        return CsvTable(joined["identifiers"], joined["rows"], taxa, names, meta)


def _empty_table(layout: _Layout) -> CsvTable:
    return CsvTable(np.zeros(0, "S1"), np.zeros(0, np.int64), {r: np.zeros(0, np.uint32) for r in layout.ranks},
                    {}, {})


def _stream(reader, layout: _Layout, columns: _Columns, problems: Problems) -> None:
    """Feed rows to `columns` block by block; short and long rows become problems, blank lines are skipped."""
    row = 1  # the header
    while block := list(itertools.islice(reader, CHUNK_ROWS)):
        rows = np.arange(row + 1, row + 1 + len(block), dtype=np.int64)
        row += len(block)
        cells = np.fromiter(map(len, block), dtype=np.int64, count=len(block))
        uneven = np.flatnonzero((cells != layout.width) & (cells != 0))
        problems.add("row length: not one cell per column", f"the header has {layout.width} columns",
                     rows[uneven], [f"{c} cells" for c in cells[uneven[:ROWS_SHOWN]]], quote=False)
        keep = np.flatnonzero(cells == layout.width)
        if keep.size < len(block):
            block = [block[i] for i in keep]
        if block:
            columns.add(block, rows[keep], problems)


def read_csv(path: str | Path, *, identifier_column: str = "identifier", rank_columns: Sequence[str] | None = None,
             taxon_names: bool = False) -> tuple[CsvTable, Problems]:
    """Read and check the whole CSV; the table is complete only when the returned problems are empty.

    Raises ValueError for an empty file or a header without the identifier or rank columns.
    """
    path = Path(path)
    problems = Problems()
    # utf-8-sig accepts a BOM; bytes that are not UTF-8 become lone surrogates that _cells reports by row
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        reader = csv.reader(handle)
        try:
            header = [c.strip() for c in next(reader)]
        except StopIteration:
            raise ValueError(f"{path} is empty; it needs a header row and one row per image") from None
        except csv.Error as exc:
            raise ValueError(f"{path}: row 1 cannot be read ({exc})") from None
        try:
            layout = _layout(header, identifier_column, rank_columns, problems)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        columns = _Columns(layout, taxon_names)
        try:
            _stream(reader, layout, columns, problems)
        except csv.Error as exc:
            problems.note(f"line {reader.line_num + 1}: cannot be read ({exc})")
    table = columns.table() if columns.blocks else _empty_table(layout)
    if table.identifiers.shape[0] == 0 and not problems:
        problems.note(f"{path} has a header but no rows")
    return table, problems


def _duplicates(table: CsvTable, problems: Problems) -> None:
    """One line per duplicated identifier (the first few), naming all its rows."""
    order = np.argsort(table.identifiers, kind="stable")
    ordered = table.identifiers[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, ordered.shape[0]])
    groups = np.flatnonzero(sizes > 1)
    for g in groups[:schema.MAX_CONFLICTS_SHOWN]:
        rows = np.sort(table.rows[order[starts[g]:starts[g] + sizes[g]]])
        shown = ", ".join(str(r) for r in rows[:ROWS_SHOWN]) + (" ..." if rows.size > ROWS_SHOWN else "")
        problems.note(f"identifier {ordered[starts[g]].decode()!r}: on rows {shown}; identifiers must be unique "
                      "(one row per image)")
    if groups.size > schema.MAX_CONFLICTS_SHOWN:
        problems.note(f"identifier: ... and {groups.size - schema.MAX_CONFLICTS_SHOWN} more duplicated identifiers")


def _tree(table: CsvTable, problems: Problems) -> None:
    """One line per taxon under several parents, naming the first row of each parent."""
    ranks = list(table.taxa)
    parent_of = dict(itertools.pairwise(ranks))
    conflicts = schema.tree_conflicts(table.taxa)
    for c in conflicts[:schema.MAX_CONFLICTS_SHOWN]:
        child, parent = table.taxa[c.rank], table.taxa[parent_of[c.rank]]
        first = [int(table.rows[np.flatnonzero((child == c.child) & (parent == p))[0]]) for p in c.parents]
        problems.note(schema.tree_problem(schema.describe_conflict(c, parent_of[c.rank], table.names, first)))
    if len(conflicts) > schema.MAX_CONFLICTS_SHOWN:
        problems.note(f"tree: ... and {len(conflicts) - schema.MAX_CONFLICTS_SHOWN} more taxa with several parents")


def check_table(table: CsvTable, problems: Problems) -> None:
    """Checks across rows: unique identifiers, one parent per taxon."""
    if table.identifiers.shape[0]:
        _duplicates(table, problems)
        _tree(table, problems)
