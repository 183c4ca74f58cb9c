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
    "parse_iso_dates",
    "unit_sphere",
]

#: Temporal features and their period: each gives a (sin, cos) pair.
TEMPORAL_FEATURES = {"day_of_year": 365.25, "month": 12.0, "hour": 24.0}


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


def parse_iso_dates(values: Sequence[str | bytes | None]) -> dict[str, np.ndarray]:
    """Parse ISO 8601 strings into float arrays ``day_of_year``, ``month``, ``hour`` (NaN where unknown).

    Accepts dates (``2021-05-03``) and date-times (``2021-05-03T14:30:00``, a trailing ``Z`` or offset);
    the hour is NaN for a date without a time. Empty, None or unparsable strings give NaN everywhere.
    """
    n = len(values)
    day = np.full(n, np.nan)
    month = np.full(n, np.nan)
    hour = np.full(n, np.nan)
    for i, raw in enumerate(values):
        if raw is None:
            continue
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        text = text.strip()
        if not text:
            continue
        try:
            stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            continue
        day[i] = stamp.timetuple().tm_yday - 1
        month[i] = stamp.month - 1
        if "T" in text or " " in text:
            hour[i] = stamp.hour + stamp.minute / 60.0 + stamp.second / 3600.0
    return {"day_of_year": day, "month": month, "hour": hour}


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
