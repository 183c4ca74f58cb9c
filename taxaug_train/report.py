"""taxaug-report: compare taxaug-train runs in a markdown table per rank and PNG plots.

``taxaug-report RUN [RUN ...] --out DIR`` reads each run folder (``metrics.jsonl``, ``summary.json``,
``config.yaml``), groups the runs whose configs differ only by ``train.seed`` (and ``train.out_dir``),
and writes ``DIR/report.md``: per rank the final validation top-1, top-5, severity with the number of
mistakes it rests on, hierarchical distance @k where recorded, and n, as mean ± std over each group's
seeds, plus the config keys that differ between groups. PNGs: training loss, learning rate, per-rank
validation top-1 over steps, images/s, and per run the mistakes by LCA distance. Metric keys are read
defensively: runs written by older trainers lack some of them, and the report says what it derived.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from taxaug_train.loggers import flatten

__all__ = ["Run", "build_report", "load_run", "main"]

IGNORED_KEYS = ("train.seed", "train.out_dir")
_HDIST = re.compile(r"^(?:hdist|hier_?dist)@(\d+)$")


class ReportError(Exception):
    """A run folder or the output folder the report cannot use (one line)."""


@attrs.frozen
class Run:
    """One run folder: its flattened config, metrics records and final per-rank metrics."""

    name: str
    path: Path
    config: dict[str, str] | None
    records: list[dict[str, Any]]
    final: dict[str, dict[str, Any]]

    def series(self, event: str, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of `key` over the records of `event`, skipping missing or null values."""
        steps, values = [], []
        for r in self.records:
            value = r.get(key)
            if r.get("event") == event and isinstance(value, (int, float)) and math.isfinite(value):
                steps.append(r.get("step", len(steps)))
                values.append(float(value))
        return steps, values


def _config_leaves(config: Mapping[str, Any]) -> dict[str, str]:
    """A config as dotted keys, every leaf (lists included) as its JSON text, for comparison."""
    return {k: json.dumps(v, sort_keys=True, default=str) for k, v in flatten(config).items()}


def _read_records(path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as err:
            raise ReportError(f"{path}:{number}: not a JSON line ({err})") from None
    return records


def load_run(path: str | Path) -> Run:
    """Read one run folder; a missing metrics.jsonl is an error naming the folder."""
    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ReportError(f"{path}: no metrics.jsonl; pass the out_dir of a taxaug-train run")
    records = _read_records(metrics)
    config = None
    if (path / "config.yaml").is_file():
        import yaml

        config = _config_leaves(yaml.safe_load((path / "config.yaml").read_text()) or {})
    final: dict[str, dict[str, Any]] = {}
    if (path / "summary.json").is_file():
        final = json.loads((path / "summary.json").read_text()).get("ranks") or {}
    if not final:
        evals = [r for r in records if r.get("event") == "eval"]
        final = evals[-1].get("ranks", {}) if evals else {}
    return Run(name=path.name or str(path), path=path, config=config, records=records, final=final)


def group_runs(runs: Sequence[Run]) -> list[list[Run]]:
    """Runs whose configs agree on every key but the ignored ones, in first-seen order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        if run.config is None:
            key = f"unknown config: {run.path}"
        else:
            key = json.dumps({k: v for k, v in run.config.items() if k not in IGNORED_KEYS}, sort_keys=True)
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def differing_keys(groups: Sequence[Sequence[Run]]) -> list[str]:
    """Config keys whose value differs between groups (ignored keys left out)."""
    configs = [g[0].config or {} for g in groups]
    keys = sorted(set().union(*configs)) if configs else []
    return [k for k in keys if k not in IGNORED_KEYS and len({c.get(k, "<absent>") for c in configs}) > 1]


# ------------------------------------------------------------------------------------------ tables


def _number(metrics: Mapping[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def mistakes_of(metrics: Mapping[str, Any]) -> tuple[float | None, bool]:
    """(number of wrong top-1 predictions, derived?): the recorded count, else n * (1 - top-1)."""
    recorded = _number(metrics, "mistakes")
    if recorded is not None:
        return recorded, False
    n, top1 = _number(metrics, "n"), _number(metrics, "top1")
    if n is None or top1 is None:
        return None, False
    return float(round(n * (1.0 - top1))), True


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _cell(values: Sequence[float | None], scale: float = 1.0, digits: int = 2) -> str:
    present = [v * scale for v in values if v is not None]
    if not present:
        return "n/a"
    mean, std = mean_std(present)
    text = f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")
    return text + ("" if len(present) == len(values) else f" ({len(present)}/{len(values)} runs)")


def _hdist_keys(groups: Sequence[Sequence[Run]], rank: str) -> list[str]:
    keys = {k for g in groups for run in g for k in run.final.get(rank, {}) if _HDIST.match(k)}
    return sorted(keys, key=lambda k: int(_HDIST.match(k).group(1)))


def rank_table(rank: str, groups: Sequence[Sequence[Run]], labels: Sequence[str]) -> tuple[list[str], bool]:
    """Markdown lines of one rank's table; and whether a mistake count had to be derived."""
    hdist = _hdist_keys(groups, rank)
    head = ["group", "runs", "top-1 %", "top-5 %", "severity (mistakes)", *hdist, "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    derived_any = False
    for label, group in zip(labels, groups):
        metrics = [run.final.get(rank, {}) for run in group]
        counts = [mistakes_of(m) for m in metrics]
        derived_any |= any(d for _, d in counts)
        mistakes = _cell([c for c, _ in counts], digits=0) + ("*" if any(d for _, d in counts) else "")
        row = [label, str(len(group)), _cell([_number(m, "top1") for m in metrics], 100, 1),
               _cell([_number(m, "top5") for m in metrics], 100, 1),
               f"{_cell([_number(m, 'severity') for m in metrics])} ({mistakes})",
               *[_cell([_number(m, k) for m in metrics]) for k in hdist], _cell([_number(m, "n") for m in metrics], digits=0)]
        lines.append("| " + " | ".join(row) + " |")
    return lines, derived_any


def _group_lines(groups: Sequence[Sequence[Run]], labels: Sequence[str], keys: Sequence[str]) -> list[str]:
    if len(groups) == 1:
        lines = ["All runs share one config apart from the seed."]
    elif keys:
        lines = [f"Config keys that differ between the groups: {', '.join(f'`{k}`' for k in keys)}."]
    else:
        lines = ["The groups' configs could not be compared (a run has no config.yaml)."]
    for label, group in zip(labels, groups):
        values = "; ".join(f"`{k}` = {(group[0].config or {}).get(k, '<absent>')}" for k in keys)
        seeds = ", ".join((run.config or {}).get("train.seed", "?") for run in group)
        lines.append(f"- **{label}**: {', '.join(run.name for run in group)} (seeds {seeds})"
                     + (f"; {values}" if values else ""))
    return lines


# ------------------------------------------------------------------------------------------ plots


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    fig.clf()
    return path


def _line_plot(plt: Any, runs: Sequence[Run], key: str, ylabel: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        steps, values = run.series("train", key)
        ax.plot(steps, values, label=run.name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    saved = _save(fig, path)
    plt.close(fig)
    return saved


def _eval_top1(run: Run, rank: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for r in run.records:
        value = _number((r.get("ranks") or {}).get(rank, {}), "top1") if r.get("event") == "eval" else None
        if value is not None:
            steps.append(r.get("step", len(steps)))
            values.append(100 * value)
    return steps, values


def _accuracy_plot(plt: Any, runs: Sequence[Run], ranks: Sequence[str], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(ranks), figsize=(4 * len(ranks), 3.5), squeeze=False)
    for ax, rank in zip(axes[0], ranks):
        for run in runs:
            ax.plot(*_eval_top1(run, rank), marker="o", markersize=3, label=run.name)
        ax.set_title(rank)
        ax.set_xlabel("step")
        ax.set_ylabel("validation top-1 %")
    axes[0][0].legend(fontsize="small")
    saved = _save(fig, path)
    plt.close(fig)
    return saved


def mistakes_by_distance(metrics: Mapping[str, Any]) -> dict[int, float] | None:
    """{LCA distance: mistakes} when the run recorded it (`mistakes_by_distance` or `mistakes@d<k>` keys)."""
    table = metrics.get("mistakes_by_distance")
    if isinstance(table, Mapping):
        return {int(k): float(v) for k, v in table.items() if isinstance(v, (int, float))}
    found = {int(m.group(1)): float(v) for k, v in metrics.items()
             if (m := re.match(r"^mistakes@d(\d+)$", k)) and isinstance(v, (int, float))}
    return found or None


def _mistake_plot(plt: Any, run: Run, path: Path) -> tuple[Path, bool]:
    """Mistakes by LCA distance per rank; without per-distance counts, mistakes per rank at their mean distance."""
    ranks = list(run.final)
    tables = {r: mistakes_by_distance(run.final[r]) for r in ranks}
    fig, ax = plt.subplots(figsize=(7, 4))
    complete = all(t is not None for t in tables.values()) and bool(ranks)
    if complete:
        distances = sorted({d for t in tables.values() for d in t})
        width = 0.8 / max(len(ranks), 1)
        for i, r in enumerate(ranks):
            ax.bar([d + i * width for d in distances], [tables[r].get(d, 0) for d in distances], width, label=r)
        ax.set_xlabel("LCA distance of the wrong top-1 prediction")
        ax.legend(fontsize="small")
    else:
        counts = [mistakes_of(run.final[r])[0] or 0 for r in ranks]
        bars = ax.bar(ranks, counts)
        for bar, r in zip(bars, ranks):
            severity = _number(run.final[r], "severity")
            ax.annotate("n/a" if severity is None else f"mean d {severity:.2f}", (bar.get_x(), bar.get_height()))
        ax.set_xlabel("rank (per-distance counts not recorded: bars are all mistakes, label the mean distance)")
    ax.set_ylabel("mistakes")
    ax.set_title(f"{run.name}: mistakes by LCA distance")
    saved = _save(fig, path)
    plt.close(fig)
    return saved, complete


# ------------------------------------------------------------------------------------------ report


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "run"


def build_report(runs: Sequence[Run], out_dir: Path, plt: Any) -> str:
    """Write report.md and the PNGs into `out_dir`; return the markdown."""
    groups = group_runs(runs)
    labels = [f"G{i + 1}" for i in range(len(groups))]
    ranks = list(dict.fromkeys(r for run in runs for r in run.final))
    lines = [f"# taxaug-report: {len(runs)} run(s) in {len(groups)} group(s)", "",
             *_group_lines(groups, labels, differing_keys(groups)), "",
             "Final validation metrics, mean ± std over each group's runs (std needs two runs). Severity is the mean "
             "LCA distance of the wrong top-1 predictions; in brackets the number of mistakes it rests on.", ""]
    derived = False
    for rank in ranks:
        table, rank_derived = rank_table(rank, groups, labels)
        derived |= rank_derived
        lines += [f"## {rank}", "", *table, ""]
    if derived:
        lines += ["\\* mistake count not recorded by the run: derived as n × (1 − top-1).", ""]
    if not ranks:
        lines += ["No run holds a validation result yet (no eval record, no summary.json).", ""]
    plots = [_line_plot(plt, runs, "loss", "training loss", out_dir / "loss.png"),
             _line_plot(plt, runs, "lr", "learning rate", out_dir / "lr.png"),
             _line_plot(plt, runs, "img_per_s", "images / s", out_dir / "throughput.png")]
    if ranks:
        plots.append(_accuracy_plot(plt, runs, ranks, out_dir / "val_top1.png"))
    partial = []
    for i, run in enumerate(runs):
        path, complete = _mistake_plot(plt, run, out_dir / f"mistakes_{i + 1}_{_safe(run.name)}.png")
        plots.append(path)
        partial += [] if complete else [run.name]
    if partial:
        lines += [f"Per-distance mistake counts are not in the files of {', '.join(partial)}: their mistake charts "
                  "show all mistakes per rank, labelled with the mean LCA distance (severity).", ""]
    lines += ["## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    text = "\n".join(lines)
    (out_dir / "report.md").write_text(text)
    return text


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ReportError("plots need matplotlib: pip install 'taxaug[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="taxaug-report", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="taxaug-train out_dir folders")
    parser.add_argument("--out", required=True, type=Path, help="folder for report.md and the PNG plots")
    args = parser.parse_args(argv)
    try:
        plt = _pyplot()
        runs = [load_run(path) for path in args.runs]
        if args.out.exists() and not args.out.is_dir():
            raise ReportError(f"--out {args.out} is a file; give a folder")
        args.out.mkdir(parents=True, exist_ok=True)
        text = build_report(runs, args.out, plt)
    except (ReportError, OSError, ValueError) as err:
        print(f"taxaug-report: error: {err}", file=sys.stderr)
        return 2
    print(text)
    print(f"\nwritten: {args.out / 'report.md'} and its PNG plots", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
