"""Where metrics records go: one small class per sink behind one interface.

A record is a flat-or-nested dict with at least ``event`` (``train``, ``eval``, ``error``) and
``step``; the trainer adds ``time`` (wall clock, Unix seconds). ``train.loggers`` picks the sinks:

- ``jsonl``: ``metrics.jsonl``, one strict JSON object per line (non-finite numbers become ``null``);
- ``csv``: ``metrics_<event>.csv``, one file per event, nested keys flattened with dots
  (``ranks.taxa_L10.top1``); a key that appears later widens the header (the file is rewritten once);
- ``tensorboard``: every numeric value as a scalar ``<event>/<flattened key>`` at the record's step,
  under ``out_dir/tensorboard`` (needs the ``tensorboard`` package: ``pip install taxaug[tensorboard]``).

On resume every sink keeps what it logged up to the checkpoint's step and drops later entries, which
the resumed run writes again.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from taxaug_train.config import ConfigError

__all__ = [
    "LOGGERS",
    "CsvLogger",
    "JsonlLogger",
    "MetricsLogger",
    "TensorBoardLogger",
    "build_loggers",
    "flatten",
    "strict_json",
]


def strict_json(value: Any) -> Any:
    """`value` with every non-finite float replaced by ``None``, so ``json.dumps(allow_nan=False)`` holds."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


class MetricsLogger:
    """One sink. ``open`` once before the first record (``resume_step``: keep entries up to that
    step, None: start empty), then ``log`` per record, ``close`` at the end (also after an error)."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)

    def open(self, resume_step: int | None) -> None:
        raise NotImplementedError

    def log(self, record: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release files (default: nothing held open)."""


def _step_of(record: Mapping[str, Any]) -> float:
    try:
        return float(record.get("step") or 0)
    except (TypeError, ValueError):
        return 0.0


class JsonlLogger(MetricsLogger):
    """``metrics.jsonl``: one strict JSON object per line."""

    def __init__(self, out_dir: str | Path):
        super().__init__(out_dir)
        self.path = self.out_dir / "metrics.jsonl"

    def open(self, resume_step: int | None) -> None:
        kept = []
        if resume_step is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                with contextlib.suppress(ValueError, AttributeError):
                    if _step_of(json.loads(line)) <= resume_step:
                        kept.append(line + "\n")
        self.path.write_text("".join(kept))

    def log(self, record: Mapping[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(strict_json(record), allow_nan=False, default=str) + "\n")


class CsvLogger(MetricsLogger):
    """``metrics_<event>.csv``: flattened records, one file per event."""

    def open(self, resume_step: int | None) -> None:
        self.headers: dict[str, list[str]] = {}
        for path in sorted(self.out_dir.glob("metrics_*.csv")):
            rows = self._read(path)
            if resume_step is None or not rows:
                path.unlink()
                continue
            header = list(rows[0])
            self._write(path, header, [r for r in rows if _step_of(r) <= resume_step])
            self.headers[path.stem[len("metrics_"):]] = header

    def log(self, record: Mapping[str, Any]) -> None:
        event = str(record.get("event", "record"))
        row = {k: json.dumps(v) if isinstance(v, (list, tuple)) else v for k, v in flatten(strict_json(record)).items()}
        path = self.out_dir / f"metrics_{event}.csv"
        header = self.headers.get(event)
        if header is None or any(k not in header for k in row):
            widened = (header or []) + [k for k in row if k not in (header or [])]
            self._write(path, widened, self._read(path) if header is not None else [])
            self.headers[event] = header = widened
        with path.open("a", newline="") as f:
            csv.DictWriter(f, header).writerow(row)

    @staticmethod
    def _read(path: Path) -> list[dict[str, str]]:
        if not path.is_file():
            return []
        with path.open(newline="") as f:
            return list(csv.DictReader(f))

    @staticmethod
    def _write(path: Path, header: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, header)
            writer.writeheader()
            writer.writerows(rows)


class TensorBoardLogger(MetricsLogger):
    """Scalars ``<event>/<flattened key>`` in ``out_dir/tensorboard`` (torch.utils.tensorboard)."""

    def open(self, resume_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.loggers: 'tensorboard' needs the tensorboard package; install it with "
                              "`pip install taxaug[tensorboard]` or remove tensorboard from train.loggers") from None
        # purge_step drops events at or after it, which the resumed run logs again
        self.writer = SummaryWriter(str(self.out_dir / "tensorboard"),
                                    purge_step=None if resume_step is None else resume_step + 1)

    def log(self, record: Mapping[str, Any]) -> None:
        step = int(_step_of(record))
        event = record.get("event", "record")
        for key, value in flatten(record).items():
            if key in ("step", "event", "time") or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"{event}/{key}", value, step, walltime=record.get("time"))

    def close(self) -> None:
        self.writer.close()


LOGGERS: dict[str, type[MetricsLogger]] = {"jsonl": JsonlLogger, "csv": CsvLogger, "tensorboard": TensorBoardLogger}


def build_loggers(names: Sequence[str], out_dir: str | Path) -> list[MetricsLogger]:
    """One sink per name of ``train.loggers`` (duplicates ignored)."""
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ConfigError(f"train.loggers: unknown logger(s) {unknown}; choose from {sorted(LOGGERS)}")
    return [LOGGERS[n](out_dir) for n in dict.fromkeys(names)]
