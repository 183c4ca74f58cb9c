"""Row filters applied once, vectorised, before class mapping, splitting and group ids."""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np

__all__ = ["FilterConfig", "apply_filters"]


def _tuple(values: object) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        return (values,)
    return tuple(values)  # type: ignore[arg-type]


@attrs.frozen
class FilterConfig:
    """Which rows of a labels file a dataset keeps.

    - ``partial_labels``: keep rows whose label is unknown (0) at some of the dataset's ranks
      (default). With False, a row needs a known label at every rank.
    - ``required_ranks``: ranks at which a row must have a known label (kept even with partial labels).
    - ``in_region_only``: keep rows with ``in_region == 1`` (needs the ``in_region`` dataset).
    - ``required_metadata``: feature datasets (``spatial``, ``temporal``, ``elevation_<set>``) that must
      be known for a row (a row that is all zero there is dropped).
    - ``max_anomaly_score``: drop rows whose ``anomaly_score`` is above this.
    """

    partial_labels: bool = True
    required_ranks: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    in_region_only: bool = False
    required_metadata: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    max_anomaly_score: float | None = None


def apply_filters(
    config: FilterConfig,
    *,
    ranks: Mapping[str, np.ndarray],
    columns: Mapping[str, np.ndarray],
    num_rows: int,
) -> tuple[np.ndarray, dict[str, int]]:
    """Boolean keep-mask over the file's rows and the number of rows each rule removed.

    ``ranks`` maps the dataset's rank names to raw taxon ids; ``columns`` holds the other datasets
    the rules need (``in_region``, ``anomaly_score``, required feature datasets). A rule naming a
    dataset that is absent raises ``ValueError`` listing what is missing.
    """
    keep = np.ones(num_rows, dtype=bool)
    removed: dict[str, int] = {}

    def drop(reason: str, bad: np.ndarray) -> None:
        newly = int((keep & bad).sum())
        if newly:
            removed[reason] = removed.get(reason, 0) + newly
        keep[bad] = False

    missing = [r for r in config.required_ranks if r not in ranks]
    missing += [m for m in config.required_metadata if m not in columns]
    if config.in_region_only and "in_region" not in columns:
        missing.append("in_region")
    if config.max_anomaly_score is not None and "anomaly_score" not in columns:
        missing.append("anomaly_score")
    if missing:
        raise ValueError(f"filters need datasets that are not loaded or not in the file: {missing}; "
                         f"available ranks {sorted(ranks)}, columns {sorted(columns)}")
    check = list(ranks) if not config.partial_labels else list(config.required_ranks)
    for rank in check:
        drop(f"unknown {rank}", ranks[rank] == 0)
    if config.in_region_only:
        drop("not in_region", columns["in_region"] != 1)
    for name in config.required_metadata:
        block = columns[name].reshape(num_rows, -1)
        drop(f"unknown {name}", ~(block != 0).any(axis=1))
    if config.max_anomaly_score is not None:
        drop(f"anomaly_score > {config.max_anomaly_score:g}", ~(columns["anomaly_score"] <= config.max_anomaly_score))
    return keep, removed
