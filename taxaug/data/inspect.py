"""Summaries of a labels.h5 file: counts per rank, group sizes, most frequent taxa by name, metadata coverage."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from taxaug.data import schema

__all__ = ["format_inspection", "inspect_labels"]

#: Taxa listed per rank, most frequent first.
TOP_TAXA = 5


def _rank_summary(ids: np.ndarray, names: dict[str, str]) -> dict:
    """Known/unknown counts, group-size statistics and the :data:`TOP_TAXA` most frequent taxa (id,
    count, and name when the file carries one) of one rank column."""
    n = ids.shape[0]
    taxa, counts = np.unique(ids[ids != 0], return_counts=True)
    known = int(counts.sum())
    out = {"known": known, "unknown": n - known, "known_fraction": known / n if n else 0.0}
    if counts.size == 0:
        return {**out, "groups": 0, "min": 0, "median": 0.0, "mean": 0.0, "max": 0, "singletons": 0, "below_4": 0,
                "most_frequent": []}
    top = np.argsort(-counts, kind="stable")[:TOP_TAXA]
    return {**out, "groups": int(counts.size), "min": int(counts.min()), "median": float(np.median(counts)),
            "mean": float(counts.mean()), "max": int(counts.max()), "singletons": int((counts == 1).sum()),
            "below_4": int((counts < 4).sum()),
            "most_frequent": [{"id": int(taxa[i]), "count": int(counts[i]),
                               **({"name": names[str(taxa[i])]} if str(taxa[i]) in names else {})} for i in top]}


def _coverage(name: str, obj: h5py.Dataset, n: int) -> dict | None:
    """How many rows hold a known value of a metadata dataset (None for other datasets)."""
    if name in schema.FEATURE_DATASETS or schema.is_elevation(name):
        block = obj[()].reshape(n, -1)
        valid = (block != 0).any(axis=1) & np.isfinite(block).all(axis=1)
        return {"width": int(block.shape[1]), "valid": int(valid.sum()), "coverage": float(valid.mean()) if n else 0.0}
    if name in schema.RAW_FLOATS and obj.dtype.kind == "f":
        valid = np.isfinite(obj[()])
    elif name == "raw_date_observed" and h5py.check_string_dtype(obj.dtype) is not None:
        valid = schema.read_fixed_strings(obj) != b""
    elif name == "in_region":
        return {"in_region": int((obj[()] == 1).sum())}
    else:
        return None
    return {"valid": int(valid.sum()), "coverage": float(valid.mean()) if n else 0.0}


def inspect_labels(path: str | Path) -> dict:
    """A JSON-ready summary: validation problems (schema and tree), per-rank counts, group sizes and most
    frequent taxa (with names when the file carries ``taxon_names``, as the builder writes), metadata coverage."""
    report = schema.validate(path)
    out: dict = {"path": str(path), "valid": report.ok, "problems": list(report.problems),
                 "num_samples": report.num_samples, "ranks": {}, "metadata": {}, "datasets": {}}
    if report.num_samples is None:
        return out
    n = report.num_samples
    with h5py.File(path, "r") as f:
        config = schema.read_config(f)
        out["config_keys"] = sorted(config) if config is not None else []
        names = schema.taxon_names(f)
        for name, obj in f.items():
            if isinstance(obj, h5py.Dataset):
                out["datasets"][name] = {"shape": list(obj.shape), "dtype": str(obj.dtype)}
                coverage = _coverage(name, obj, n) if obj.shape[:1] == (n,) else None
                if coverage is not None:
                    out["metadata"][name] = coverage
        for rank in report.rank_names:
            ids = f[rank][()].astype(np.int64) if f[rank].shape == (n,) else np.zeros(n, np.int64)
            out["ranks"][rank] = _rank_summary(ids, names.get(rank, {}))
    return out


def format_inspection(info: dict) -> str:
    """The summary as aligned text."""
    lines = [f"{info['path']}: {info['num_samples']} samples, "
             + ("valid" if info["valid"] else f"INVALID ({len(info['problems'])} problem(s))")]
    lines += [f"  ! {p}" for p in info["problems"]]
    if info["ranks"]:
        lines.append("ranks (finest first):")
        lines.append(f"  {'rank':<10} {'known':>9} {'unknown':>9} {'groups':>7} {'min':>5} {'median':>7} "
                     f"{'max':>6} {'single':>7} {'<4':>5}")
        for rank, r in info["ranks"].items():
            lines.append(f"  {rank:<10} {r['known']:>9} {r['unknown']:>9} {r['groups']:>7} {r['min']:>5} "
                         f"{r['median']:>7.1f} {r['max']:>6} {r['singletons']:>7} {r['below_4']:>5}")
        lines.append("most frequent taxa (name or id, rows):")
        for rank, r in info["ranks"].items():
            top = ", ".join(f"{t.get('name', t['id'])} ({t['count']})" for t in r.get("most_frequent", []))
            lines.append(f"  {rank:<10} {top or '-'}")
    if info["metadata"]:
        lines.append("metadata coverage:")
        for name, m in info["metadata"].items():
            if "coverage" in m:
                width = f" ({m['width']} cols)" if "width" in m else ""
                lines.append(f"  {name:<24} {100 * m['coverage']:6.1f}%  {m['valid']} rows{width}")
            else:
                lines.append(f"  {name:<24} {m['in_region']} rows in region")
    return "\n".join(lines)
