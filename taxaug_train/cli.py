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

from taxaug_train.config import ConfigError, TrainerConfig, config_to_dict, load_config

__all__ = ["build_parser", "main"]

log = logging.getLogger("taxaug_train")


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
    p.add_argument("--print-config", action="store_true",
                   help="check everything that needs no data (keys, types, algorithm arguments, device, out_dir), "
                        "print the effective config and exit")
    p.add_argument("--list-algorithms", action="store_true", help="list the algorithm names usable in the config")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _setup_logging(verbose: bool) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    prefix = "[taxaug_train]" if int(os.environ.get("WORLD_SIZE", "1")) <= 1 else f"[taxaug_train rank {rank}]"
    logging.basicConfig(level=level, format=f"{prefix} %(message)s", stream=sys.stderr)
    logging.getLogger("taxaug_train").setLevel(level)


def _fail(err: BaseException, code: int) -> int:
    """One line on stderr (the traceback only with -v), and the exit status."""
    log.debug("traceback", exc_info=err)
    text = "; ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
    print(f"taxaug-train: error: {text}", file=sys.stderr)
    return code


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that describe something the user can fix (anything else is a bug: its traceback stays)."""
    from taxaug.data import SchemaError
    from taxaug.data.images import ImageLoadError
    from taxaug.taxonomy import TaxonomyConflictError
    from taxaug_train.checkpoint import CheckpointError
    from taxaug_train.trainer import TrainingError

    return (ConfigError, CheckpointError, SchemaError, TaxonomyConflictError, ImageLoadError, OSError,
            FloatingPointError, TrainingError)


def _print_config(cfg: TrainerConfig) -> int:
    """Every check that needs no data (keys, types, algorithm arguments, device, out_dir), then the config."""
    import yaml

    from taxaug_train.config import build_algorithms, config_warnings
    from taxaug_train.trainer import check_device, check_out_dir

    build_algorithms(cfg.algorithms)
    check_device(cfg)
    check_out_dir(cfg)
    for message in config_warnings(cfg, "cuda" if cfg.train.device != "cpu" and _cuda() else "cpu"):
        print(f"taxaug-train: warning: {message}", file=sys.stderr)
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 when done; 2 when nothing was trained because an input is wrong (config, argument, data file,
    checkpoint, device, out_dir); 1 when a run that started fails (unreadable image, damaged file, full disk,
    non-finite loss); 130 when interrupted. Errors are one line ``taxaug-train: error: ...``."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    trainer = None
    try:
        if args.list_algorithms:
            from taxaug.algorithms import format_algorithms

            print(format_algorithms())
            return 0
        try:
            cfg = load_config(args.config, args.overrides)
            if args.print_config:
                return _print_config(cfg)
            trainer = _start(cfg, args.resume)
        except _user_errors() as err:
            return _fail(err, 2)
        try:
            trainer.fit()
        except ConfigError as err:  # refused before the first step (e.g. another run's checkpoints in out_dir)
            return _fail(err, 2)
        except _user_errors() as err:
            return _fail(err, 1)
        finally:
            _shutdown(trainer)
    except KeyboardInterrupt:
        return _interrupted(trainer)
    return 0


def _start(cfg: TrainerConfig, resume: str | None):
    from taxaug_train.distributed import init_distributed, shutdown_distributed
    from taxaug_train.trainer import Trainer, check_device

    check_device(cfg)
    info = init_distributed(cfg.train.device)
    try:
        return Trainer(cfg, resume=resume, dist_info=info)
    except BaseException:
        shutdown_distributed(info)
        raise


def _shutdown(trainer) -> None:
    from taxaug_train.distributed import shutdown_distributed

    shutdown_distributed(trainer.dist)


def _interrupted(trainer) -> int:
    """Ctrl-C: the ``--resume`` hint only when this run saved a checkpoint to resume from."""
    saved = trainer is not None and (trainer.ckpt_dir / "last.pt").exists() and trainer.state.step > 0
    if saved:
        print(f"taxaug-train: interrupted; continue with --resume {trainer.out_dir}", file=sys.stderr)
    else:
        where = "during start-up" if trainer is None else "before the first checkpoint"
        print(f"taxaug-train: interrupted {where}; nothing was saved", file=sys.stderr)
    return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
