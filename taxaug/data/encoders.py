"""Metadata encoders: raw location, date and elevation to model features.

Pure functions over numpy arrays. A missing raw value (NaN, empty or
unparsable date) encodes to an all-zero row: no valid encoding is all zero
(a unit vector, or sin/cos pairs with sin^2 + cos^2 = 1), so the datasets
derive each component's validity mask from "row is not all zero".
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np

__all__ = [
    "TEMPORAL_FEATURES",
    "cyclical",
    "cyclical_date",
    "multiscale_elevation",
    "parse_iso_date",
    "parse_iso_dates",
    "unit_sphere",
]

#: Temporal features and their period: each gives a (sin, cos) pair.
TEMPORAL_FEATURES = {"day_of_year": 365.25, "month": 12.0, "hour": 24.0}
#: Rows per vectorised date-parsing block (bounds the temporary code-point matrix).
DATE_BLOCK = 1 << 16
_MONTH_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
_MONTH_START = np.concatenate([[0], np.cumsum(_MONTH_DAYS)[:-1]])


def _float_array(values: object, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def unit_sphere(lat: object, lon: object) -> np.ndarray:
    """(N, 3) float32 xyz on the unit sphere from latitude/longitude in degrees.

    Rows where lat or lon is NaN are all zero (missing).
    """
    lat_a, lon_a = _float_array(lat, "lat"), _float_array(lon, "lon")
    if lat_a.shape != lon_a.shape:
        raise ValueError(f"lat and lon must have the same shape, got {lat_a.shape} and {lon_a.shape}")
    bad_lat = np.abs(lat_a) > 90
    bad_lon = np.abs(lon_a) > 180
    if bad_lat.any() or bad_lon.any():
        raise ValueError(
            f"lat must be in [-90, 90] and lon in [-180, 180] degrees; got {int(bad_lat.sum())} lat and "
            f"{int(bad_lon.sum())} lon values outside (first rows: "
            f"{np.flatnonzero(bad_lat | bad_lon)[:5].tolist()})"
        )
    phi, lam = np.radians(lat_a), np.radians(lon_a)
    xyz = np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], axis=1)
    xyz[~np.isfinite(xyz).all(axis=1)] = 0.0
    return xyz.astype(np.float32)


def cyclical(values: object, period: float) -> np.ndarray:
    """(N, 2) float32 ``[sin(2 pi v / period), cos(2 pi v / period)]``; NaN rows are zero."""
    if not period > 0:
        raise ValueError(f"period must be > 0, got {period}")
    v = _float_array(values, "values")
    angle = 2.0 * np.pi * v / period
    out = np.stack([np.sin(angle), np.cos(angle)], axis=1)
    out[~np.isfinite(v)] = 0.0
    return out.astype(np.float32)


def parse_iso_date(text: str) -> tuple[float, float, float] | None:
    """One ISO 8601 string -> ``(day_of_year, month, hour)`` (0-based; hour NaN without a time), or None.

    The per-row reference: :func:`parse_iso_dates` gives the same result for every string.
    """
    text = text.strip()
    if not text:
        return None
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    hour = stamp.hour + stamp.minute / 60.0 + stamp.second / 3600.0 if ("T" in text or " " in text) else np.nan
    return float(stamp.timetuple().tm_yday - 1), float(stamp.month - 1), hour


def _text_array(values: Sequence[str | bytes | None] | np.ndarray) -> np.ndarray:
    """A fixed-width str array (None -> "", bytes decoded as UTF-8 with replacement)."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "U":
        return values.reshape(-1)
    if isinstance(values, np.ndarray) and values.dtype.kind == "S":
        try:
            return values.reshape(-1).astype(np.str_)  # all ASCII: a plain cast
        except UnicodeDecodeError:
            return np.strings.decode(values.reshape(-1), "utf-8", "replace")
    return np.array(["" if v is None else v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                     for v in values], dtype=str).reshape(-1)


def _number(cols: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """The ASCII number in character columns [start, stop) (`cols` is (width, N)), and whether all were digits."""
    value = np.zeros(cols.shape[1], np.int64)
    ok = np.ones(cols.shape[1], dtype=bool)
    for j in range(start, stop):
        digit = cols[j] - np.uint32(ord("0"))  # wraps around below "0"
        ok &= digit <= 9
        value = value * 10 + digit
    return value, ok


def _fast_dates(text: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised parse of ``YYYY-MM-DD``, optionally + ``[T ]HH:MM[:SS]`` + ``Z`` or ``+HH:MM``.

    Returns (handled, day, month, hour); rows not handled (other forms) go to the per-row reference.
    """
    n, chars = text.shape[0], text.dtype.itemsize // 4
    cols = np.zeros((max(chars, 19) + 6, n), np.uint32)  # one row per character position
    if n and chars:
        cols[:chars] = text.view(np.uint32).reshape(n, chars).T
    length = np.strings.str_len(text)
    year, ok_y = _number(cols, 0, 4)
    month, ok_m = _number(cols, 5, 7)
    day, ok_d = _number(cols, 8, 10)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month0 = np.clip(month - 1, 0, 11)
    handled = (ok_y & ok_m & ok_d & (cols[4] == ord("-")) & (cols[7] == ord("-")) & (year >= 1) & (month >= 1)
               & (month <= 12) & (day >= 1) & (day <= _MONTH_DAYS[month0] + (leap & (month == 2))))
    hh, ok_h = _number(cols, 11, 13)
    mi, ok_mi = _number(cols, 14, 16)
    ss, ok_s = _number(cols, 17, 19)
    clock = (((cols[10] == ord("T")) | (cols[10] == ord(" "))) & ok_h & ok_mi & (cols[13] == ord(":"))
             & (hh <= 23) & (mi <= 59))
    seconds = (cols[16] == ord(":")) & ok_s & (ss <= 59)
    end = np.where(seconds, 19, 16)
    tail = np.where(seconds, cols[19:25], cols[16:22])  # the 6 characters after the clock
    oh, ok_oh = _number(tail, 1, 3)
    om, ok_om = _number(tail, 4, 6)
    offset = ((tail[0] == ord("+")) | (tail[0] == ord("-"))) & (tail[3] == ord(":")) & ok_oh & ok_om
    offset &= (oh <= 23) & (om <= 59)
    timed = clock & ((length == end) | ((length == end + 1) & (tail[0] == ord("Z")))
                     | ((length == end + 6) & offset))
    handled &= (length == 10) | timed
    doy = (_MONTH_START[month0] + (leap & (month > 2)) + day - 1).astype(np.float64)
    hour = np.where(timed, hh + mi / 60.0 + np.where(seconds, ss, 0) / 3600.0, np.nan)
    return handled, doy, (month - 1).astype(np.float64), hour


def parse_iso_dates(values: Sequence[str | bytes | None] | np.ndarray) -> dict[str, np.ndarray]:
    """Parse ISO 8601 strings into float arrays ``day_of_year``, ``month``, ``hour`` (NaN where unknown).

    Accepts dates (``2021-05-03``) and date-times (``2021-05-03T14:30:00``, a trailing ``Z`` or offset);
    the hour is NaN for a date without a time. Empty, None or unparsable strings give NaN everywhere;
    ``parsed`` (bool) says which rows parsed. The common forms are parsed vectorised, in blocks of
    :data:`DATE_BLOCK` rows; other forms row by row with :func:`parse_iso_date` (same result either way).
    """
    n = len(values)
    out = {key: np.full(n, np.nan) for key in ("day_of_year", "month", "hour")}
    parsed = np.zeros(n, dtype=bool)
    for start in range(0, n, DATE_BLOCK):
        text = _text_array(values[start:start + DATE_BLOCK])
        handled, day, month, hour = _fast_dates(text)
        rows = slice(start, start + text.shape[0])
        for key, column in zip(out, (day, month, hour)):
            out[key][rows] = np.where(handled, column, np.nan)
        parsed[rows] = handled
        for i in np.flatnonzero(~handled & (np.strings.str_len(text) > 0)):
            result = parse_iso_date(str(text[i]))
            if result is not None:
                for key, value in zip(out, result):
                    out[key][start + i] = value
                parsed[start + i] = True
    return {**out, "parsed": parsed}


def cyclical_date(values: Sequence[str | bytes | None], features: Sequence[str] = ("day_of_year",)) -> np.ndarray:
    """(N, 2 * len(features)) float32 cyclical encoding of ISO date strings.

    ``features`` are names from :data:`TEMPORAL_FEATURES`, e.g. ``("month",)`` (2 columns) or
    ``("day_of_year", "hour")`` (4 columns). Unknown parts encode to zeros.
    """
    unknown = [f for f in features if f not in TEMPORAL_FEATURES]
    if unknown or not features:
        raise ValueError(f"features must be a non-empty subset of {sorted(TEMPORAL_FEATURES)}, got {list(features)}")
    parsed = parse_iso_dates(values)
    return np.concatenate([cyclical(parsed[f], TEMPORAL_FEATURES[f]) for f in features], axis=1)


def multiscale_elevation(elevation: object, scales: Sequence[float]) -> np.ndarray:
    """(N, 2 * len(scales)) float32 pairs ``[sin(2 pi e / s), cos(2 pi e / s)]`` per scale s (metres).

    NaN elevations encode to zeros.
    """
    scales = [float(s) for s in scales]
    if not scales or any(not s > 0 for s in scales):
        raise ValueError(f"scales must be a non-empty list of positive numbers, got {scales}")
    e = _float_array(elevation, "elevation")
    return np.concatenate([cyclical(e, s) for s in scales], axis=1)


def column_names(prefix: str, labels: Sequence[str]) -> list[str]:
    """``[f"{prefix}_{label}_sin", f"{prefix}_{label}_cos", ...]`` for the attribute ``column_names``."""
    return [f"{prefix}_{lab}_{part}" for lab in labels for part in ("sin", "cos")]
