"""``taxaug-train --config FILE.yaml [--set key=value ...] [--resume PATH]`` (also ``python -m taxaug_train``).

Under ``torchrun --nproc_per_node=N -m taxaug_train ...`` every process runs this; rank 0 logs,
writes metrics and checkpoints.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from taxaug_train.config import ConfigError, config_to_dict, load_config

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="taxaug-train",
        description="Train a hierarchical (multi-rank) classifier on a labels.h5 dataset with taxaug's algorithms.",
        epilog="Config reference: docs/trainer.md. Example: taxaug-train --config configs/demo.yaml "
               "--set train.max_steps=100 --set data.labels=my_data/labels.h5",
    )
    p.add_argument("--config", help="YAML config file (sections data, model, loss, optim, train, checkpoint, "
                                    "algorithms); omitted = all defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set train.max_steps=500 (repeatable; YAML values)")
    p.add_argument("--resume", metavar="PATH", help="checkpoint file, or a run folder (its checkpoints/last.pt)")
    p.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    p.add_argument("--list-algorithms", action="store_true", help="list the algorithm names usable in the config")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _setup_logging(verbose: bool) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    prefix = "[taxaug_train]" if int(os.environ.get("WORLD_SIZE", "1")) <= 1 else f"[taxaug_train rank {rank}]"
    logging.basicConfig(level=level, format=f"{prefix} %(message)s", stream=sys.stderr)
    logging.getLogger("taxaug_train").setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    if args.list_algorithms:
        from taxaug.algorithms import format_algorithms

        print(format_algorithms())
        return 0
    cfg = None
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
            return 0
        from taxaug_train.checkpoint import CheckpointError
        from taxaug_train.distributed import init_distributed, shutdown_distributed
        from taxaug_train.trainer import Trainer, TrainingError

        info = init_distributed(cfg.train.device)
        try:
            Trainer(cfg, resume=args.resume, dist_info=info).fit()
        finally:
            shutdown_distributed(info)
    except (ConfigError, CheckpointError, TrainingError) as err:
        print(f"taxaug-train: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = f" with --resume {cfg.train.out_dir}" if cfg is not None else ""
        print(f"taxaug-train: interrupted; continue from the last checkpoint{where}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
