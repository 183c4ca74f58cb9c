"""taxaug-data: build, verify, shard and inspect labels.h5 datasets (and generate a demo one)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _add_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="labels.h5 + images from a folder laid out by rank or from a CSV",
                       description="Build a dataset. Folder: coarsest rank first, e.g. family/genus/species/*.jpg "
                                   "(a folder named _unknown means unknown at that rank). CSV: an identifier column, "
                                   "taxa_LXX columns, optional lat, lon, date, elevation, anomaly_score, observer_id, "
                                   "in_region.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-folder", type=Path, help="image folder laid out by rank")
    src.add_argument("--from-csv", type=Path, help="CSV of identifiers, ranks and metadata")
    p.add_argument("--images-dir", type=Path, help="where the CSV's images are (with --from-csv)")
    p.add_argument("--out", type=Path, required=True, help="output folder (labels.h5, images/)")
    p.add_argument("--ranks", help="comma-separated rank names, finest first (default taxa_L10,taxa_L20,...)")
    p.add_argument("--identifier-column", default="identifier")
    p.add_argument("--taxon-names", action="store_true",
                   help="CSV rank cells are taxon names (ids 1..K by sorted name) instead of integer taxon ids")
    p.add_argument("--images", choices=("copy", "hardlink", "symlink", "none"), default="copy",
                   help="how images reach OUT/images (none: leave them in place)")
    p.add_argument("--shard-k", type=int, default=None, help="shard images by the first K characters")
    p.add_argument("--temporal-features", default="day_of_year", help="e.g. day_of_year,hour or month")
    p.add_argument("--elevation-scales", default="100,1000,10000", help="metres, comma-separated")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_run_build)


def _run_build(args: argparse.Namespace) -> int:
    from taxaug.data.build import build_from_csv, build_from_folder

    ranks = args.ranks.split(",") if args.ranks else None
    if args.from_folder is not None and args.taxon_names:
        print("error: --taxon-names applies to --from-csv; folder names are always taxon names", file=sys.stderr)
        return 2
    if args.from_folder is not None:
        result = build_from_folder(args.from_folder, args.out, rank_names=ranks, images=args.images,
                                   shard_k=args.shard_k, num_workers=args.workers, overwrite=args.overwrite,
                                   progress=None)
    else:
        if args.images_dir is None:
            print("error: --from-csv needs --images-dir (where the CSV's identifiers are)", file=sys.stderr)
            return 2
        scales = [float(s) for s in args.elevation_scales.split(",")]
        result = build_from_csv(args.from_csv, args.out, images_dir=args.images_dir,
                                identifier_column=args.identifier_column, rank_columns=ranks,
                                taxon_names=args.taxon_names, images=args.images,
                                shard_k=args.shard_k, temporal_features=args.temporal_features.split(","),
                                elevation_sets={"multiscale": scales}, num_workers=args.workers,
                                overwrite=args.overwrite, progress=None)
    print(f"wrote {result.labels_path} ({result.num_samples} samples, classes per rank incl. null "
          f"{result.num_classes}); images in {result.images_dir}"
          + (f" sharded k={result.shard_k}" if result.shard_k else ""))
    return 0


def _seconds(text: str) -> float | None:
    from taxaug.data._io import check_read_timeout  # (imports torch: not for --help)

    value = float(text)
    try:
        return check_read_timeout(value) if value else None  # 0 = no limit
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0 (0 = no limit), got {text}") from None


def _pixels(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of pixels, got {text}")
    return value


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check the labels file and that every image reads and decodes; exit 1 on any "
                                      "problem (thresholds opt in)",
                       description="Exit codes: 0 all good; 1 labels-file problems (schema, taxonomy tree, "
                                   "unreadable file) or more bad images than allowed (none unless a threshold is "
                                   "given); 2 bad arguments.")
    p.add_argument("labels", type=Path)
    p.add_argument("images_dir", type=Path)
    p.add_argument("--file-extension", default="")
    p.add_argument("--shard-k", type=int, default=None)
    p.add_argument("--no-decode", action="store_true", help="existence only (faster)")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=1000)
    p.add_argument("--max-missing-ratio", type=_ratio, default=None,
                   help="allow up to this fraction of missing+corrupt images (default: none allowed)")
    p.add_argument("--max-missing-count", type=_count, default=None,
                   help="allow up to this many missing+corrupt images (default: none allowed)")
    p.add_argument("--read-timeout", type=_seconds, default=60.0,
                   help="seconds one image read may take before it counts as corrupt (default 60; 0 = no limit)")
    p.add_argument("--max-pixels", type=_pixels, default=None,
                   help="decompression-bomb limit in pixels (default: Pillow's PIL.Image.MAX_IMAGE_PIXELS)")
    p.add_argument("--report", type=Path, default=None, help="write the JSON report here (always, pass or fail)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_verify)


def _verify_error(message: str, code: int) -> int:
    print(f"taxaug-data verify: error: {message}", file=sys.stderr)
    return code


def _print_verify(report) -> None:
    print(report.summary())
    for problem in report.labels_problems[:10]:
        print(f"  labels: {problem}")
    for kind, names in (("missing", report.missing_identifiers), ("corrupt", report.corrupt_identifiers)):
        for name in names[:10]:
            reason = report.failure_reasons.get(name, "")
            print(f"  {kind}: {name}" + (f" ({reason})" if reason and kind == "corrupt" else ""))


def _run_verify(args: argparse.Namespace) -> int:
    from taxaug.data.schema import SchemaError
    from taxaug.data.verify import verify_images

    if args.report is not None and args.report.is_dir():
        return _verify_error(f"--report {args.report} is a folder; give a file path such as "
                             f"{args.report / 'verify.json'}", 2)
    try:
        report = verify_images(args.labels, args.images_dir, file_extension=args.file_extension,
                               shard_k=args.shard_k, decode=not args.no_decode, num_workers=args.workers,
                               chunk_size=args.chunk_size, max_missing_ratio=args.max_missing_ratio,
                               max_missing_count=args.max_missing_count, read_timeout=args.read_timeout,
                               max_pixels=args.max_pixels, progress=None if not args.no_progress else False)
    except SchemaError as exc:
        return _verify_error(f"{exc.path} cannot be verified: {'; '.join(exc.problems)}; rebuild or fix the "
                             "labels file (`taxaug-data inspect` lists its problems)", 1)
    except FileNotFoundError as exc:  # images_dir
        return _verify_error(str(exc), 2)
    except OSError as exc:
        return _verify_error(f"cannot read {args.labels}: {exc}; the file may be damaged: rebuild it", 1)
    _print_verify(report)
    if args.report is not None:
        try:
            report.write(args.report)
        except OSError as exc:
            return _verify_error(f"cannot write --report {args.report}: {exc}", 2)
        print(f"report written to {args.report}")
    return 0 if report.passed else 1


def _add_shard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shard", help="migrate a flat image folder to the first_k_chars sharded layout")
    p.add_argument("input_dir", type=Path)
    p.add_argument("output_dir", type=Path)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--mode", choices=("hardlink", "copy", "symlink"), default="hardlink",
                   help="hardlink (falls back to copy where refused), copy or symlink")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_shard)


def _run_shard(args: argparse.Namespace) -> int:
    from taxaug.data.shard import shard_directory

    report = shard_directory(args.input_dir, args.output_dir, k=args.k, num_workers=args.workers, mode=args.mode,
                             progress=None if not args.no_progress else False)
    print(report.summary())
    for name, reason in report.failed[:10]:
        print(f"  {name}: {reason}")
    return 0 if not report.failed else 1


def _add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a labels.h5 against the schema and the tree; exit 1 if invalid")
    p.add_argument("labels", type=Path)
    p.set_defaults(func=_run_validate)


def _run_validate(args: argparse.Namespace) -> int:
    from taxaug.data.schema import validate

    report = validate(args.labels)
    print(report, file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="counts per rank, group sizes, most frequent taxa (names), metadata coverage, schema and tree problems")
    p.add_argument("labels", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from taxaug.data.inspect import format_inspection, inspect_labels

    info = inspect_labels(args.labels)
    print(json.dumps(info, indent=2) if args.json else format_inspection(info))
    return 0 if info["valid"] else 1


def _add_demo(sub: argparse._SubParsersAction, demo_module) -> None:
    p = sub.add_parser("demo", help="generate a small synthetic demo dataset (taxaug-data demo --help)")
    if demo_module is None:  # keep `taxaug-data --help` from importing the demo generator
        p.add_argument("rest", nargs=argparse.REMAINDER)
        return
    demo_module.add_arguments(p)
    p.set_defaults(func=demo_module.run)


def _demo_missing(reason: str) -> int:
    print(f"error: the demo generator (taxaug.data.demo) is not available ({reason}); it ships with the "
          "taxaug package, so reinstall it (pip install -e .) or check for an import error above", file=sys.stderr)
    return 2


def build_parser(demo_module=None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taxaug-data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_build(sub)
    _add_verify(sub)
    _add_shard(sub)
    _add_validate(sub)
    _add_inspect(sub)
    _add_demo(sub, demo_module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    demo_module = None
    if words and words[0] == "demo":  # imported only when asked for
        try:
            from taxaug.data import demo as demo_module
        except ImportError as exc:
            return _demo_missing(str(exc))
    args = build_parser(demo_module).parse_args(words)
    try:
        code = args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
