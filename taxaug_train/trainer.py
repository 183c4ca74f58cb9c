"""The reference training loop: taxaug's data layer, event engine and functional core, wired together.

The trainer is thin on purpose. Datasets, the grouped sampler and the prefetching loader come from
`taxaug.data`; every augmentation, mix and label smoothing is an algorithm of the config's
``algorithms:`` list run by `taxaug.algorithms.Engine`; the loop only sets the `State` fields and
fires the events in order (docs/algorithms.md, "Driving the engine from your own loop"). Validation
batches are never augmented: they come from their own loader, with no transforms, and only
``EVAL_*`` events fire while they are in flight.

What the loop adds: the model and the soft-target loss per rank, AMP and channels_last, DDP,
per-rank metrics (top-1, top-5, mistake severity), logging (tqdm, JSON lines, a summary table),
checkpoints and exact resume, and ``batch_size: auto``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import h5py
import numpy as np
import torch
from torch import nn

from taxaug import functional as F
from taxaug.algorithms import RANK_SEED_STRIDE, Engine, Event, LearnedAugment, State, to_config
from taxaug.data import FilterConfig, GroupedBatchSampler, HybridDataset, PrefetchLoader, SchemaError, schema
from taxaug.data._progress import Progress, is_tty
from taxaug.taxonomy import TaxonomyConflictError
from taxaug_train import checkpoint as ckpt
from taxaug_train.autobatch import find_batch_size, training_step_probe
from taxaug_train.config import (
    ConfigError,
    TrainerConfig,
    build_algorithms,
    check_ranks,
    config_to_dict,
    config_warnings,
    save_config,
)
from taxaug_train.distributed import (
    DistInfo,
    all_reduce_min,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    broadcast_object,
    init_distributed,
)
from taxaug_train.interrupt import GracefulInterrupt
from taxaug_train.loggers import MetricsLogger, build_loggers, strict_json
from taxaug_train.losses import HierarchicalLoss
from taxaug_train.metrics import RankMetrics
from taxaug_train.models import build_model

__all__ = ["Trainer", "TrainingError", "format_summary", "rank_label"]

log = logging.getLogger("taxaug_train")



class TrainingError(RuntimeError):
    """The run cannot go on (a non-finite loss, too many unreadable images); the message names the step."""


_RANK_WORDS = {10: "species", 20: "genus", 30: "family", 40: "order", 50: "class", 60: "phylum", 70: "kingdom"}


def rank_label(rank: str) -> str:
    """``taxa_L20`` -> ``taxa_L20 (genus)`` for the usual levels."""
    try:
        level = int(rank.rsplit("L", 1)[1])
    except (IndexError, ValueError):
        return rank
    word = _RANK_WORDS.get(level)
    return f"{rank} ({word})" if word else rank


# ---------------------------------------------------------------------------------------------- data


class _EpochBatches:
    """The batches one rank draws in one epoch, optionally without the first `skip` (resume mid-epoch)."""

    def __init__(self, sampler: GroupedBatchSampler, epoch: int, skip: int = 0):
        self.sampler = sampler
        self.batches = [b.tolist() for b in sampler.batches(epoch)][skip:]
        self.batch_size = sampler.batch_size

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)


class _ShardedEvalBatches:
    """In-order evaluation batches over positions ``rank, rank + world, ...``: every sample exactly once overall."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1):
        mine = np.arange(rank, n, world_size, dtype=np.int64)
        self.batches = [mine[i:i + batch_size].tolist() for i in range(0, mine.size, batch_size)]
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)


def check_device(cfg: TrainerConfig) -> None:
    """``train.device: cuda`` needs CUDA (checked before anything is loaded)."""
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' but no CUDA device is available (torch.cuda.is_available() is "
                          "False); set train.device: cpu or auto")


def check_out_dir(cfg: TrainerConfig) -> None:
    """``train.out_dir`` must be a folder, or creatable as one, and writable."""
    out = Path(cfg.train.out_dir)
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is None:  # pragma: no cover - the filesystem root always exists
        return
    if not existing.is_dir():
        what = "is a file, not a folder" if existing == out else f"cannot be created: {str(existing)!r} is a file"
        raise ConfigError(f"train.out_dir: {str(out)!r} {what}; choose another train.out_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"train.out_dir: {str(existing)!r} is not writable; choose another train.out_dir")


def _file_contents(path: Path) -> tuple[list[str], list[str], dict[str, Any]]:
    """(rank datasets finest first, encoded metadata datasets, the builder's config) of a labels file."""
    try:
        with h5py.File(path, "r") as f:
            names = [k for k, v in f.items() if isinstance(v, h5py.Dataset)]
            built = schema.read_config(f) or {}
    except OSError as err:
        raise ConfigError(f"data.labels: cannot open {str(path)!r} as HDF5 ({err}); point data.labels at a "
                          "labels.h5 (build one with `taxaug-data build`)") from None
    features = [n for n in schema.FEATURE_DATASETS if n in names] + sorted(n for n in names if schema.is_elevation(n))
    return schema.rank_names_in(names), features, built


def _labels_path(d: Any) -> Path:
    labels = Path(d.labels)
    if not labels.is_file():
        hint = (" (generate the demo data with `taxaug-data demo --out demo_data`)" if "demo" in str(labels) else
                "; point data.labels at your labels.h5 (build one with `taxaug-data build`)")
        raise ConfigError(f"data.labels: file {str(labels)!r} does not exist{hint}")
    return labels


def resolve_data_config(cfg: TrainerConfig) -> TrainerConfig:
    """`cfg` with the keys that default to the labels file filled in, checked against it.

    ``data.ranks`` null: every ``taxa_LXX`` dataset of the file; ``data.metadata`` null: every encoded
    metadata dataset (spatial, temporal, elevation_*); ``loss.rank_weights`` keep the ranks trained
    (with ranks taken from the file, weights for ranks it lacks are dropped); ``model.metadata_branch``
    ``auto``: on when there is metadata.
    """
    d = cfg.data
    labels = _labels_path(d)
    present, features, _ = _file_contents(labels)
    if d.ranks is None:
        ranks = present
        check_ranks(cfg, ranks, f"the ranks of {str(labels)!r} (data.ranks: null)")
        dropped = sorted(set(cfg.loss.rank_weights) - set(ranks))
        if dropped:
            log.info("loss.rank_weights: %s not in %s; ignored", dropped, labels)
    else:
        ranks = list(d.ranks)
        missing = [r for r in ranks if r not in present]
        if missing:
            raise ConfigError(f"data.ranks: {missing} not in {str(labels)!r}; it holds "
                              f"{present or 'no taxa_LXX datasets'}")
    metadata = features if d.metadata is None else list(d.metadata)
    absent = [m for m in metadata if m not in features]
    if absent:
        raise ConfigError(f"data.metadata: {absent} not in {str(labels)!r}; it holds {features} "
                          "(use [] for none, or null for all)")
    branch = cfg.model.metadata_branch
    if branch == "auto":
        branch = bool(metadata)
    elif branch and not metadata:
        raise ConfigError(f"model.metadata_branch is true but the run has no metadata ({str(labels)!r} holds "
                          f"{features or 'none'}); set data.metadata, or model.metadata_branch: false or auto")
    weights = {r: w for r, w in cfg.loss.rank_weights.items() if r in ranks}
    return attrs.evolve(cfg, data=attrs.evolve(d, ranks=ranks, metadata=metadata),
                        loss=attrs.evolve(cfg.loss, rank_weights=weights),
                        model=attrs.evolve(cfg.model, metadata_branch=branch))


def _images_dir(given: str | None, labels: Path, key: str) -> Path:
    """`given`, else the images/ folder next to `labels`, else the folder a ``--images none`` build left them in."""
    if given:
        images_dir = Path(given)
    else:
        images_dir = labels.parent / "images"
        built = {} if images_dir.is_dir() else _file_contents(labels)[2]
        source = built.get("source")
        if built.get("images") == "none" and source and Path(source).is_dir():
            images_dir = Path(source)
    if not images_dir.is_dir():
        raise ConfigError(f"{key}: folder {str(images_dir)!r} does not exist; set {key} to the folder holding "
                          f"the image files named in img_identifiers of {str(labels)!r}")
    return images_dir


def build_datasets(cfg: TrainerConfig) -> tuple[HybridDataset, HybridDataset]:
    """(train, val) datasets of the config, with errors that name the config key to fix."""
    return _build_datasets(resolve_data_config(cfg))


def _build_datasets(cfg: TrainerConfig) -> tuple[HybridDataset, HybridDataset]:
    """`build_datasets` for a config `resolve_data_config` already filled in."""
    d = cfg.data
    labels = Path(d.labels)
    images_dir = _images_dir(d.images_dir, labels, "data.images_dir")
    kwargs: dict[str, Any] = dict(
        rank_names=list(d.ranks), metadata=tuple(d.metadata), image_size=d.image_size,
        filters=FilterConfig(partial_labels=d.partial_labels), missing="strict" if d.strict else "permissive",
        file_extension=d.file_extension, read_timeout=d.read_timeout, max_pixels=d.max_pixels,
        exif_transpose=d.exif_transpose,
    )
    current = labels
    try:
        full = HybridDataset(labels, images_dir, taxonomy_conflicts=d.taxonomy_conflicts, **kwargs)
        if d.val_labels:
            current = val_path = Path(d.val_labels)
            if not val_path.is_file():
                raise ConfigError(f"data.val_labels: file {str(val_path)!r} does not exist")
            train = full
            val = HybridDataset(val_path, _images_dir(d.images_dir, val_path, "data.images_dir"),
                                class_maps=full.class_to_taxon_id, taxonomy_conflicts="majority", **kwargs)
            val.taxonomy = full.taxonomy
        else:
            train, val = full.split(d.val_ratio, seed=d.split_seed, stratify_rank=d.stratify_rank)
    except ConfigError:
        raise
    except SchemaError as err:
        raise ConfigError(f"data.labels: {_one_line(str(err))}") from None
    except TaxonomyConflictError as err:
        raise ConfigError(_conflict_message(err, labels)) from None
    except ValueError as err:  # e.g. no row left after data.partial_labels: false
        raise ConfigError(f"data.labels: {_one_line(str(err))}") from None
    except OSError as err:  # h5py reports a damaged chunk as a bare OSError
        raise ConfigError(_damage_message(current, err)) from None
    for part, name in ((train, "training"), (val, "validation")):
        if len(part) == 0:
            raise ConfigError(f"data.val_ratio {d.val_ratio} leaves no {name} samples out of {len(full)}; "
                              "use a share in (0, 1) that leaves rows on both sides")
    return train, val


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _conflict_message(err: TaxonomyConflictError, labels: Path) -> str:
    """The dataset's description of the first conflicts (taxon ids and names), and the two ways out."""
    more = f" (and {len(err.conflicts) - 3} more)" if len(err.conflicts) > 3 else ""
    return (f"data.labels: the labels of {str(labels)!r} do not form a tree: {'; '.join(err.lines[:3])}{more}; fix "
            "the label columns and rebuild the file, or set data.taxonomy_conflicts: majority to keep each taxon's "
            "most frequent parent")


def _damage_message(path: Path, err: OSError) -> str:
    """Name the dataset of `path` that cannot be read (found by reading each one in blocks)."""
    bad = None
    try:
        with h5py.File(path, "r") as f:
            datasets: list[h5py.Dataset] = []
            f.visititems(lambda _name, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
            for ds in datasets:
                try:
                    for start in range(0, ds.shape[0] if ds.shape else 1, 1 << 20):
                        ds[start:start + (1 << 20)] if ds.shape else ds[()]
                except OSError as inner:
                    bad, err = ds.name.lstrip("/"), inner
                    break
    except OSError as inner:
        err = inner
    where = f"dataset {bad!r} of {str(path)!r}" if bad else repr(str(path))
    return (f"data.labels: cannot read {where} ({_one_line(str(err))}); the file is damaged: rebuild it with "
            "`taxaug-data build` or restore a copy")


# ---------------------------------------------------------------------------------------------- the loop


class Trainer:
    """One training run described by a `TrainerConfig`.

    ``Trainer(cfg).fit()`` trains and returns the final metrics; ``resume=`` a checkpoint file
    (or a run folder) continues it exactly. Building the trainer loads the data, the model and
    the algorithms, so configuration errors surface before any training.
    """

    def __init__(self, cfg: TrainerConfig, *, resume: str | Path | None = None, dist_info: DistInfo | None = None,
                 write_files: bool = True):
        check_device(cfg)
        self.dist = dist_info or init_distributed(cfg.train.device)
        self.device = self.dist.device
        self.is_main = self.dist.is_main
        self.write_files = write_files and self.is_main
        if self.write_files:
            check_out_dir(cfg)
        self.cfg = cfg = resolve_data_config(cfg)
        if self.is_main:
            for message in config_warnings(cfg, self.device.type):
                log.warning("%s", message)
        self.out_dir = Path(cfg.train.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        t = cfg.train
        self._set_torch_modes()
        _seed_everything(t.seed)
        self._build_data_and_model()
        if t.generator_device == "cuda" and self.device.type != "cuda":
            raise ConfigError("train.generator_device: cuda needs the run on a CUDA device; use cpu")
        self.engine = Engine(self._build_algorithms(), seed=t.seed + RANK_SEED_STRIDE * self.dist.rank,
                             generator_device=self.device if t.generator_device == "cuda" else "cpu")

        # read a checkpoint first: an `auto` batch size is taken from it, not probed again
        self._resume_payload = ckpt.load_checkpoint(resume, map_location="cpu") if resume is not None else None
        self.batch_size = self._resolve_batch_size()
        self.eval_batch_size = t.eval_batch_size or self.batch_size
        self.optimizer = self._build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.amp == "fp16")
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model: nn.Module = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.train_model = self.model

        self.state = State(model=self.train_model, optimizer=self.optimizer, max_steps=t.max_steps,
                           taxonomy=self.taxonomy, num_classes=dict(self.taxonomy.num_classes),
                           loss_fn=self.loss.per_sample)
        self._build_loaders()
        self.metrics = RankMetrics(self.taxonomy, crm=cfg.train.crm)
        self.history: list[dict[str, Any]] = []
        self.resumed_from: Path | None = None
        self.replaced = {"train": _Replaced(self.train_set), "val": _Replaced(self.val_set)}
        self.loggers: list[MetricsLogger] = []
        self._saved_step: int | None = None
        if resume is not None:
            self._load(resume, self._resume_payload)
            self._resume_payload = None

    # ------------------------------------------------------------------------------------ construction

    def _set_torch_modes(self) -> None:
        """Threads, determinism and cuDNN autotuning as the config asks."""
        t = self.cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        if t.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if t.amp != "none" and self.device.type == "cpu" and t.amp == "fp16":
            raise ConfigError("train.amp: fp16 needs a CUDA device; use bf16 on CPU")

    def _build_data_and_model(self) -> None:
        """Datasets, taxonomy, model (on the device) and loss."""
        cfg = self.cfg
        self.train_set, self.val_set = _build_datasets(cfg)
        self.taxonomy = self.train_set.taxonomy
        self.ranks = list(self.train_set.rank_names)
        self.aux_components = list(self.train_set.aux_components)
        aux_chunks = F.aux_chunks_from_components(self.aux_components) if self.aux_components else []
        model = build_model(cfg.model, self.taxonomy, image_size=cfg.data.image_size, aux_chunks=aux_chunks,
                            aux_dim=self.train_set.aux_dim).to(self.device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.loss = HierarchicalLoss(self.taxonomy, rank_weights=cfg.loss.rank_weights,
                                     taxonomy_smoothing=cfg.loss.taxonomy_smoothing,
                                     taxonomy_smoothing_beta=cfg.loss.taxonomy_smoothing_beta,
                                     label_smoothing=cfg.loss.label_smoothing).to(self.device)

    def _build_loaders(self) -> None:
        """The grouped training sampler and the prefetching training and (sharded) validation loaders."""
        cfg = self.cfg
        self.group_rank = self._group_rank()
        self.sampler = self._build_sampler(self.group_rank)
        loader_kwargs = dict(num_io_threads=cfg.data.io_threads, num_decode_threads=cfg.data.decode_threads,
                             batch_concurrency=cfg.data.prefetch_batches, max_ready_batches=cfg.data.prefetch_batches,
                             cache_bytes=cfg.data.cache_mb << 20, monitor_interval=None,
                             pin_memory=self.device.type == "cuda")
        self.train_loader = PrefetchLoader(self.train_set, self.sampler, batch_transform=self.engine.loader_transform(),
                                           **loader_kwargs)
        self.val_loader = PrefetchLoader(
            self.val_set, _ShardedEvalBatches(len(self.val_set), self.eval_batch_size, self.dist.rank,
                                              self.dist.world_size), **loader_kwargs)

    def _build_algorithms(self) -> list[Any]:
        return build_algorithms(self.cfg.algorithms, self.aux_components)

    def _resolve_batch_size(self) -> int:
        t, d = self.cfg.train, self.cfg.data
        even = d.sampler == "mixed-pairs"
        per_rank_samples = max(len(self.train_set) // self.dist.world_size, 2)
        if t.batch_size != "auto":
            size = int(t.batch_size)
            if even and size % 2:
                raise ConfigError(f"train.batch_size: the mixed-pairs sampler needs an even batch size, got {size}")
            return size
        if self._resume_payload is not None:
            size = int(self._resume_payload["sampler"]["batch_size"])
            if self.is_main:
                log.info("batch_size auto: %d per process, as in the checkpoint being resumed", size)
            return size
        # CPU: past a few hundred images a step gets slower without learning faster
        cap = min(t.auto_batch_max or (1024 if self.device.type == "cuda" else 256), per_rank_samples)
        budget = t.auto_batch_memory_mb << 20 if t.auto_batch_memory_mb else None
        if self.is_main:
            log.info("batch_size auto: searching the largest batch up to %d that fits in memory", cap)
        try:
            fits = training_step_probe(self.model, image_size=d.image_size, device=self.device,
                                       forward=self._probe_loss, budget_bytes=budget, channels_last=t.channels_last,
                                       optimizer_state_factor=2.0 if self.cfg.optim.name == "adamw" else 1.0)
            local = find_batch_size(fits, max_batch=cap, even=even)
        except (RuntimeError, ValueError) as err:
            raise ConfigError(f"train.batch_size: {err}") from None
        size = all_reduce_min(local)
        if self.is_main:
            log.info("batch_size auto: %d per process (largest that fits%s, cap %d%s)", size,
                     "; even for mixed-pairs" if even else "", cap,
                     f", min over {self.dist.world_size} processes" if self.dist.distributed else "")
        return size

    def _probe_loss(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        aux = aux_mask = None
        if self.train_set.aux_dim:
            aux = torch.zeros(b, self.train_set.aux_dim, device=images.device)
            aux_mask = torch.ones(b, len(self.aux_components), dtype=torch.bool, device=images.device)
        with self._autocast():
            out = model(images, aux=aux, aux_mask=aux_mask)
            targets = {r: torch.ones(b, dtype=torch.long, device=images.device) for r in self.ranks}
            return self.loss(out, targets)[0]

    def _build_optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if o.name == "sgd":
            return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0)
        return torch.optim.AdamW(groups, lr=o.lr)

    def _lr_factor(self, step: int) -> float:
        o, total = self.cfg.optim, self.cfg.train.max_steps
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        span = max(total - o.warmup_steps, 1)
        frac = min(max((step - o.warmup_steps) / span, 0.0), 1.0)
        if o.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * frac))
        if o.schedule == "linear":
            return 1.0 - frac
        return 1.0

    def _group_rank(self) -> str:
        if self.cfg.data.group_rank:
            return self.cfg.data.group_rank
        for algorithm in self.engine.algorithms:
            if hasattr(algorithm, "level_at"):
                level = algorithm.level_at(self.state)
                if level not in self.ranks:
                    raise ConfigError(f"algorithm {algorithm.key} groups by {level!r}, which is not one of "
                                      f"data.ranks {self.ranks}")
                self._log_group_rank(level, f"the level of algorithm {algorithm.key}")
                return level
        self._log_group_rank(self.ranks[0], "the finest rank")
        return self.ranks[0]

    def _log_group_rank(self, rank: str, why: str) -> None:
        if self.is_main and not getattr(self, "_group_rank_logged", False):
            self._group_rank_logged = True
            log.info("the sampler groups batches by %s (%s, data.group_rank: null); set data.group_rank to compare "
                     "runs with different algorithms on the same batches", rank, why)

    def _build_sampler(self, group_rank: str) -> GroupedBatchSampler:
        d = self.cfg.data
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sampler = GroupedBatchSampler(self.train_set.group_ids(group_rank), self.batch_size, mode=d.sampler,
                                          seed=self.cfg.train.seed, num_replicas=self.dist.world_size,
                                          rank=self.dist.rank)
        for w in caught:
            if self.is_main:
                log.warning("%s", w.message)
        return sampler

    @contextlib.contextmanager
    def _autocast(self):
        amp = self.cfg.train.amp
        if amp == "none":
            yield
            return
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            yield

    # ------------------------------------------------------------------------------------ batches

    def _to_device(self, batch: Any) -> Any:
        if batch.device != self.device:
            batch = batch.to(self.device, non_blocking=True)
        if self.cfg.train.channels_last and not batch.images.is_contiguous(memory_format=torch.channels_last):
            batch = batch.replace(images=batch.images.contiguous(memory_format=torch.channels_last))
        return batch

    def _forward(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        return model(batch.images, aux=batch.aux, aux_mask=batch.aux_mask)

    # ------------------------------------------------------------------------------------ fit

    def fit(self, *, stop_after: int | None = None) -> dict[str, Any]:
        """Train to ``train.max_steps``; returns the final summary (metrics per rank, chance, wall time).

        `stop_after` ends the loop early after that many optimizer steps, as an interruption would
        (no final evaluation or checkpoint beyond the periodic ones); tests use it.
        """
        t = self.cfg.train
        state, engine = self.state, self.engine
        self._open_outputs()
        start_wall = time.perf_counter()
        progress = _FitState(len(self.ranks), stop_after)
        try:
            engine.run(Event.INIT, state)
            engine.run(Event.FIT_START, state)
            progress.bar = self._progress_bar()
            self.train_model.train()
            with GracefulInterrupt() as interrupt:
                while state.step < t.max_steps and not progress.stopped:
                    self._run_epoch(progress, interrupt)
            progress.close_bar()  # its last line comes before the evaluation and the final table
            if progress.interrupted:
                self._check_finite(progress.window, weights=True)
                path = self.save()
                if self.is_main:
                    log.warning("interrupted at step %d; checkpoint %s; continue with --resume %s", state.step,
                                path, self.out_dir)
                raise KeyboardInterrupt
            if stop_after is not None and state.step < t.max_steps:
                return {"step": state.step, "stopped": True}
            if progress.last_eval_step != state.step:
                self.evaluate()
            engine.run(Event.FIT_END, state)
            return self._finish(time.perf_counter() - start_wall)
        except TrainingError as err:
            self._write_record({"event": "error", "step": state.step, "message": str(err)})
            raise
        finally:
            progress.close_bar()
            for logger in self.loggers:
                logger.close()
            self.loggers = []

    def _run_epoch(self, progress: _FitState, interrupt: GracefulInterrupt) -> None:
        """One epoch, or its rest after a resume."""
        state, engine = self.state, self.engine
        batches = self._start_epoch()
        self.train_loader.batch_sampler = batches
        iterator = iter(self.train_loader)
        try:
            for _ in range(len(batches)):
                engine.run(Event.BEFORE_DATALOADER, state)
                batch = self._to_device(next(iterator))
                loss, rank_losses, n = self._train_step(batch)
                progress.window.add(state.step, loss, rank_losses, n)
                if progress.bar is not None:
                    progress.bar.update(1)
                self._after_step(progress)
                if progress.stopped:
                    break
                if interrupt.any_requested():
                    progress.stopped = progress.interrupted = True
                    break
        finally:
            self.train_loader.close()
        if state.batch_in_epoch >= len(self.sampler) and not progress.interrupted:
            self._check_load_failures("train", pass_done=True)  # the whole epoch's share, exactly
            engine.run(Event.EPOCH_END, state)
            state.epoch += 1
            state.batch_in_epoch = 0

    def _start_epoch(self) -> _EpochBatches:
        """EPOCH_START (not again for an epoch resumed mid-way), regrouping, and the epoch's remaining batches."""
        state, engine = self.state, self.engine
        if state.batch_in_epoch and state.batch_in_epoch >= len(self.sampler):  # resumed right after an epoch's end
            engine.run(Event.EPOCH_END, state)
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        resumed = state.batch_in_epoch > 0
        if not resumed:  # a checkpoint taken mid-epoch was taken after this epoch's EPOCH_START had run
            engine.run(Event.EPOCH_START, state)
        rank = self.group_rank if resumed else self._group_rank()  # a resumed epoch keeps its grouping
        if rank != self.group_rank:  # level switching: regroup the sampler at the new level
            self.group_rank, self.sampler = rank, self._build_sampler(rank)
            if self.is_main:
                log.info("epoch %d: sampler groups by %s", state.epoch, rank)
        batches = _EpochBatches(self.sampler, state.epoch, state.batch_in_epoch)
        if len(batches) == 0:
            raise RuntimeError("the training split yields no batch; lower train.batch_size")
        self.replaced["train"].start_pass(sum(len(b) for b in batches.batches), f"epoch {state.epoch}")
        return batches

    def _after_step(self, progress: _FitState) -> None:
        """Log, evaluate, checkpoint and decide whether to stop, as the config asks at this step."""
        t, c, state = self.cfg.train, self.cfg.checkpoint, self.state
        step = state.step
        last = step >= t.max_steps
        log_now = step % t.log_every == 0 or last
        eval_now = bool(t.eval_every and step % t.eval_every == 0) or last
        save_now = bool(c.every and step % c.every == 0) or last
        if log_now or eval_now or save_now:  # nothing non-finite is logged, evaluated or saved
            self._check_finite(progress.window, weights=eval_now or save_now)
        if log_now:
            record = progress.window.flush(step, state.epoch, self.optimizer.param_groups[0]["lr"], self.ranks)
            record["load_failures"] = self._check_load_failures("train")
            self._write_record(record)
            if progress.bar is not None:
                progress.bar.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{record['img_per_s']:.0f}")
        if eval_now:
            self.evaluate()
            progress.last_eval_step = step
        if save_now:
            self.save()
        progress.stopped = last or (progress.stop_after is not None and step >= progress.stop_after)

    def _check_finite(self, window: _Window, *, weights: bool) -> None:
        """Raise `TrainingError` naming the first step whose loss (or, with `weights`, the model) is not finite."""
        bad = all_reduce_min(window.first_nonfinite_step() or _NEVER)
        what = "the training loss"
        if bad == _NEVER and weights:
            finite = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()
            if all_reduce_min(int(finite)) == 0:
                bad, what = self.state.step, "the model weights (after a finite loss)"
        if bad == _NEVER:
            return
        saved = (f"the last checkpoint (step {self._saved_step}) is intact" if self._saved_step is not None
                 else "no checkpoint was written")
        raise TrainingError(f"step {bad}: {what} became non-finite (nan or inf); stopped before logging or saving "
                            f"it ({saved}); lower optim.lr (now {self.cfg.optim.lr:g}), set optim.grad_clip, or "
                            "check the data and loss settings")

    def _check_load_failures(self, split: str, *, pass_done: bool = False) -> dict[str, int]:
        """Images replaced so far per split; raise `TrainingError` when this pass of `split` is over the limit.

        The limit applies to a pass (an epoch, an evaluation): mid-pass it stops as soon as the pass can only end
        above it; a finished pass with replaced images is logged.
        """
        limit, tracker = self.cfg.data.max_load_failures, self.replaced[split]
        counts = self._failure_counts()
        replaced, size = counts[f"{split}_pass"], counts[f"{split}_pass_size"]
        share = f"{replaced} of {size} {split} images in {tracker.label} ({replaced / max(size, 1):.1%})"
        if replaced > limit * size:
            example = tracker.example()
            raise TrainingError(
                f"data.max_load_failures: {share} could not be loaded and were replaced by placeholders, above the "
                f"limit {limit:.1%}{f' (e.g. {example})' if example else ''}; fix the files (taxaug-data verify lists "
                "them), data.images_dir or data.file_extension, or raise data.max_load_failures")
        if pass_done and replaced and self.is_main:
            log.warning("%s replaced by placeholders (limit %.1f%%)", share, 100 * limit)
        return {"train": counts["train"], "val": counts["val"]}

    def _failure_counts(self) -> dict[str, int]:
        """Replaced-image totals and current-pass counts of both splits, summed over processes."""
        keys = [f"{s}{k}" for s in ("train", "val") for k in ("", "_loaded", "_pass", "_pass_size")]
        train, val = self.replaced["train"], self.replaced["val"]
        local = [train.total(), self.state.samples_seen, train.in_pass(), train.size,
                 val.total(), val.loaded, val.in_pass(), val.size]
        totals = all_reduce_sum(torch.tensor(local, dtype=torch.float64))
        return dict(zip(keys, (int(v) for v in totals.tolist())))

    def _train_step(self, batch: Any) -> tuple[float, list[float], int]:
        state, engine = self.state, self.engine
        state.batch = batch
        engine.run(Event.AFTER_DATALOADER, state)
        engine.run(Event.BATCH_START, state)
        engine.run(Event.BEFORE_FORWARD, state)
        with self._autocast():
            state.outputs = self._forward(self.train_model, state.batch)
        engine.run(Event.AFTER_FORWARD, state)
        engine.run(Event.BEFORE_LOSS, state)
        with self._autocast():
            per_sample, per_rank = self.loss._combine(self.loss.rank_terms(state.outputs, state.batch.targets))
            state.loss = per_sample.mean()
        engine.run(Event.AFTER_LOSS, state)
        engine.run(Event.BEFORE_BACKWARD, state)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(state.loss).backward()
        engine.run(Event.AFTER_BACKWARD, state)
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        engine.run(Event.BATCH_END, state)
        n = state.batch.batch_size
        state.step += 1
        state.samples_seen += n
        state.batch_in_epoch += 1
        loss = state.loss.detach()
        rank_losses = [per_rank[r].detach() if r in per_rank else loss.new_zeros(()) for r in self.ranks]
        return loss, rank_losses, n

    # ------------------------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Validation pass (no augmentation; EVAL_* events); metrics reduced over processes and logged."""
        state, engine = self.state, self.engine
        broadcast_buffers(self.model)  # every rank evaluates rank 0's model, the one checkpointed
        self.model.eval()
        state.training = False
        engine.run(Event.EVAL_START, state)
        self.metrics.reset()
        val_images = len(range(self.dist.rank, len(self.val_set), self.dist.world_size))
        self.replaced["val"].start_pass(val_images, f"the evaluation at step {state.step}")
        loss_sums = torch.zeros(len(self.ranks), 2, dtype=torch.float64, device=self.device)
        train_batch = state.batch
        try:
            for batch in self.val_loader:
                batch = self._to_device(batch)
                state.batch = batch
                engine.run(Event.EVAL_BATCH_START, state)
                with self._autocast():
                    outputs = self._forward(self.model, batch)
                state.outputs = outputs
                self.metrics.update(outputs, batch.targets)
                terms = self.loss.rank_terms(outputs, batch.targets)
                loss_sums += torch.stack([torch.stack([(terms[r][0] * terms[r][1]).sum(), terms[r][1].sum()])
                                          for r in self.ranks]).double()
                engine.run(Event.EVAL_BATCH_END, state)
        finally:
            self.val_loader.close()
        engine.run(Event.EVAL_END, state)
        state.batch = train_batch
        state.training = True
        self.model.train()
        self.replaced["val"].loaded += val_images
        self.metrics.reduce_()
        loss_sums = all_reduce_sum(loss_sums)
        per_rank = self.metrics.compute()
        weights = self.loss.rank_weights
        val_loss = sum(weights[r] * float(loss_sums[i, 0] / max(loss_sums[i, 1], 1e-12))
                       for i, r in enumerate(self.ranks)) / max(sum(weights.values()), 1e-12)
        record = {"event": "eval", "step": state.step, "epoch": state.epoch, "val_loss": val_loss,
                  "ranks": {r: {**per_rank[r], "loss": float(loss_sums[i, 0] / max(loss_sums[i, 1], 1e-12))}
                            for i, r in enumerate(self.ranks)}}
        record["load_failures"] = self._check_load_failures("val", pass_done=True)
        policies = self._policies()
        if policies:  # op probabilities and magnitudes of each learned policy
            record["policy"] = {key: {op: {k: v for k, v in entry.items() if k in ("p", "magnitude")}
                                      for op, entry in policy["ops"].items()} for key, policy in policies.items()}
        self._write_record(record)
        if self.is_main:
            parts = ", ".join(f"{r} top1 {per_rank[r]['top1']:.3f}" for r in self.ranks)
            log.info("step %d eval: loss %.4f, %s", state.step, val_loss, parts)
        self.last_eval = record
        return record

    # ------------------------------------------------------------------------------------ outputs

    def _progress_bar(self):
        """tqdm on a terminal; elsewhere (a log, a pipe) one whole line per interval, nothing redrawn."""
        if not (self.cfg.train.progress_bar and self.is_main):
            return None
        if not is_tty(sys.stderr):
            return Progress(self.cfg.train.max_steps, "train", enabled=True, stream=sys.stderr,
                            initial=self.state.step, unit="step")
        from tqdm.auto import tqdm

        return tqdm(total=self.cfg.train.max_steps, initial=self.state.step, desc="train", unit="step",
                    dynamic_ncols=True, mininterval=0.5, file=sys.stderr)

    def _open_outputs(self) -> None:
        refusal = self._claim_out_dir() if self.write_files else None
        refusal = broadcast_object(refusal)  # every process stops, not only the one that writes
        if refusal:
            raise ConfigError(refusal)
        if not self.write_files:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.out_dir / "config.yaml")
        resume_step = self.state.step if self.resumed_from is not None else None
        if resume_step is None and (self.out_dir / "metrics.jsonl").is_file():
            log.warning("%s exists and is replaced (a new run in the same out_dir)", self.out_dir / "metrics.jsonl")
        self.loggers = build_loggers(self.cfg.train.loggers, self.out_dir)
        for logger in self.loggers:  # a resumed run keeps what was logged up to its checkpoint
            logger.open(resume_step)

    def _claim_out_dir(self) -> str | None:
        """Refusal message when a new run would mix with another run's checkpoints (None: go ahead)."""
        if self.resumed_from is not None:
            return None
        found = [p for _, p in ckpt.list_checkpoints(self.ckpt_dir)]
        found += [p for p in (self.ckpt_dir / "last.pt",) if p.exists()]
        if not found:
            return None
        if self.cfg.checkpoint.overwrite:
            for p in found:
                p.unlink(missing_ok=True)
            log.warning("checkpoint.overwrite: removed %d checkpoint file(s) of an earlier run from %s", len(found),
                        self.ckpt_dir)
            return None
        shown = ", ".join(p.name for p in found[-3:])
        return (f"train.out_dir {str(self.out_dir)!r} already holds checkpoints of another run ({shown}); continue "
                f"that run with --resume {self.out_dir}, or set checkpoint.overwrite: true to replace them (or "
                "choose another train.out_dir)")

    def _write_record(self, record: dict[str, Any]) -> None:
        """Log `record` with a wall-clock ``time`` (Unix seconds) to every sink (rank 0) and `history`."""
        timed = {**record, "time": round(time.time(), 3)}
        self.history.append(timed)
        for logger in self.loggers:
            logger.log(timed)

    def _policies(self) -> dict[str, dict[str, Any]]:
        """Each learned augmentation's current policy, as ``FixedPolicy.to_dict()``, keyed like the engine state."""
        return {a.key: a.export_policy().to_dict() for a in self.engine.algorithms if isinstance(a, LearnedAugment)}

    def _summary(self, wall_s: float) -> dict[str, Any]:
        chance = self.metrics.chance()
        ev = self.last_eval
        return {
            "step": self.state.step,
            "epochs": self.state.epoch,
            "samples_seen": self.state.samples_seen * self.dist.world_size,
            "wall_s": wall_s,
            "batch_size": self.batch_size,
            "world_size": self.dist.world_size,
            "seed": self.cfg.train.seed,
            "val_loss": ev["val_loss"],
            "ranks": {r: {**ev["ranks"][r], "chance": chance[r], "classes": self.taxonomy.num_classes[r] - 1}
                      for r in self.ranks},
            "load_failures": self._load_failure_summary(),
            "algorithms": _algorithm_configs(self.engine.algorithms),
            "policies": self._policies(),
            "out_dir": str(self.out_dir),
        }

    def _load_failure_summary(self) -> dict[str, Any]:
        """Per split: images replaced by placeholders, images loaded and the share (plus the mode and limit)."""
        counts = self._failure_counts()
        out: dict[str, Any] = {"strict": self.cfg.data.strict, "limit": self.cfg.data.max_load_failures}
        for split in ("train", "val"):
            replaced, loaded = counts[split], counts[f"{split}_loaded"]
            out[split] = {"replaced": replaced, "loaded": loaded, "share": replaced / loaded if loaded else 0.0,
                          "examples": [f"{n}: {r}" for n, r in self.replaced[split].failures.examples[:5]]}
        return out

    def _finish(self, wall_s: float) -> dict[str, Any]:
        """Write summary.json (strict JSON), print the final table."""
        summary = self._summary(wall_s)
        if self.write_files:
            text = json.dumps(strict_json(summary), indent=2, allow_nan=False, default=str)
            (self.out_dir / "summary.json").write_text(text)
        if self.is_main:
            print(format_summary(summary), flush=True)
        barrier()
        return summary

    # ------------------------------------------------------------------------------------ checkpoints

    def checkpoint_state(self) -> dict[str, Any]:
        s = self.state
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "engine": self.engine.state_dict(),
            "loop": {"step": s.step, "epoch": s.epoch, "batch_in_epoch": s.batch_in_epoch,
                     "samples_seen": s.samples_seen},
            "sampler": {"seed": self.sampler.seed, "mode": self.sampler.mode, "batch_size": self.batch_size,
                        "group_rank": self.group_rank, "epoch": s.epoch, "num_replicas": self.dist.world_size},
            "rng": ckpt.capture_rng(self.device),
            "config": config_to_dict(self.cfg),
            "world_size": self.dist.world_size,
        }

    def save(self) -> Path | None:
        """Checkpoint at the current step (rank 0 writes; others wait)."""
        path = None
        failures = self._failure_counts()  # summed over processes: every rank takes part
        if self.write_files:
            payload = self.checkpoint_state()
            payload["load_failures"] = {s: {"replaced": failures[s], "loaded": failures[f"{s}_loaded"]}
                                        for s in ("train", "val")}
            path = ckpt.save_checkpoint(payload, ckpt.step_path(self.ckpt_dir, self.state.step))
            ckpt.prune_checkpoints(self.ckpt_dir, self.cfg.checkpoint.keep)
            log.debug("checkpoint %s", path)
        self._saved_step = self.state.step
        barrier()
        return path

    def _load(self, where: str | Path, payload: dict[str, Any]) -> None:
        if payload.get("world_size") != self.dist.world_size:
            log.warning("resuming a %s-process run with %d processes: samplers shard differently, so the run "
                        "continues but not bit for bit", payload.get("world_size"), self.dist.world_size)
        source = payload.get("loaded_from", str(where))
        changed = _config_changes(payload.get("config", {}), config_to_dict(self.cfg))
        if changed and self.is_main:
            log.warning("resuming with config changes: %s", ", ".join(f"{k} ({a!r} -> {b!r})" for k, a, b in changed))
        if payload["sampler"]["batch_size"] != self.batch_size:
            raise ckpt.CheckpointError(f"checkpoint was trained with batch size {payload['sampler']['batch_size']}, "
                                       f"this run resolves {self.batch_size}; set train.batch_size to match")
        _check_model_fits(self.model, payload["model"], source, changed)
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        try:
            self.engine.load_state_dict(payload["engine"])
        except (KeyError, ValueError) as err:
            raise ckpt.CheckpointError(f"the checkpoint's algorithms do not match the config's: {err}") from None
        loop = payload["loop"]
        self.state.step, self.state.epoch = loop["step"], loop["epoch"]
        self.state.batch_in_epoch, self.state.samples_seen = loop["batch_in_epoch"], loop["samples_seen"]
        saved_rank = payload["sampler"].get("group_rank", self.group_rank)
        if saved_rank != self.group_rank:
            self.group_rank, self.sampler = saved_rank, self._build_sampler(saved_rank)
        ckpt.restore_rng(payload["rng"], self.device)
        if self.dist.rank == 0:  # totals are global: one process carries them on
            for split, saved in payload.get("load_failures", {}).items():
                self.replaced[split].base, self.replaced[split].loaded = saved["replaced"], saved["loaded"]
        self.resumed_from, self._saved_step = Path(where), self.state.step
        if self.is_main:
            log.info("resumed from %s at step %d (epoch %d, batch %d)", source, self.state.step, self.state.epoch,
                     self.state.batch_in_epoch)


# ---------------------------------------------------------------------------------------------- helpers


def _config_changes(saved: dict[str, Any], mine: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, checkpoint value, current value)`` for every config value that differs (out_dir aside)."""
    return [(f"{sec}.{k}", saved[sec].get(k), v) for sec, values in mine.items()
            if isinstance(values, dict) and isinstance(saved.get(sec), dict)
            for k, v in values.items() if v != saved[sec].get(k) and (sec, k) != ("train", "out_dir")]


def _check_model_fits(model: nn.Module, saved: dict[str, torch.Tensor], source: str,
                      changed: Sequence[tuple[str, Any, Any]]) -> None:
    """A one-line `CheckpointError` naming the first mismatching parameter and the config keys likely behind it."""
    mine = model.state_dict()
    shape = {k: tuple(getattr(v, "shape", ())) for k, v in saved.items()}  # non-tensor entries count as scalars
    shapes = [k for k in mine if k in saved and shape[k] != tuple(getattr(mine[k], "shape", ()))]
    missing, unexpected = [k for k in mine if k not in saved], [k for k in saved if k not in mine]
    if not (shapes or missing or unexpected):
        return
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(f"{k} has shape {shape[k]} in the checkpoint, {tuple(mine[k].shape)} in this model"
                     + (f" ({len(shapes) - 1} more shapes differ)" if len(shapes) > 1 else ""))
    for keys, where in ((unexpected, "only in the checkpoint"), (missing, "only in this model")):
        if keys:
            parts.append(f"{len(keys)} parameter(s) {where} (first {keys[0]})")
    suspects = [f"{k} ({a!r} in the checkpoint, {b!r} now)" for k, a, b in changed if k.startswith(("model.", "data."))]
    hint = (f"likely because of {', '.join(suspects)}" if suspects
            else "the model settings (model.*) or the data's classes (data.labels, data.ranks) differ")
    raise ckpt.CheckpointError(f"checkpoint {source!r} does not fit this model: {', '.join(parts)}; {hint}; resume with the "
                               "checkpoint's settings, or start a new run in another train.out_dir")


def _algorithm_configs(algorithms: Sequence[Any]) -> list[dict[str, Any]]:
    """The registry's ``to_config`` of each algorithm (an unregistered one is recorded by class name)."""
    out = []
    for a in algorithms:
        try:
            out.append(to_config(a))
        except ValueError:
            out.append({"name": type(a).__name__})
    return out


_NEVER = 2**62  # "no step" in an all-reduced minimum


class _FitState:
    """What the epochs of one `fit` share: the loss window, the progress bar and the stop flags."""

    def __init__(self, num_ranks: int, stop_after: int | None):
        self.window = _Window(num_ranks)
        self.bar: Any = None
        self.stop_after = stop_after
        self.last_eval_step = -1
        self.stopped = self.interrupted = False

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _Replaced:
    """Images of one split replaced by placeholders (permissive mode): run totals and the current pass.

    The dataset's ``failures.count`` grows in the loader threads of this process; `base` is what a
    resumed checkpoint carried; a pass (an epoch, an evaluation) counts from its `start_pass` mark.
    """

    def __init__(self, dataset: Any):
        self.failures = dataset.failures
        self.base = 0
        self.loaded = 0  # images read by finished evaluations (the training split uses samples_seen)
        self.size = 0
        self.label = ""
        self._mark = self.failures.count

    def start_pass(self, size: int, label: str) -> None:
        self._mark, self.size, self.label = self.failures.count, size, label

    def in_pass(self) -> int:
        return self.failures.count - self._mark

    def total(self) -> int:
        return self.base + self.failures.count

    def example(self) -> str:
        examples = self.failures.examples
        return f"{examples[-1][0]}: {examples[-1][1]}" if examples else ""


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class _Window:
    """Running sums of the training loss between log lines, reduced over processes when flushed."""

    def __init__(self, num_ranks: int):
        self.num_ranks = num_ranks
        self.reset()

    def reset(self) -> None:
        self.sums: list[torch.Tensor] = []
        self.samples = 0
        self.steps = 0
        self.first_step = 0
        self.started = time.perf_counter()

    def add(self, step: int, loss: torch.Tensor, rank_losses: Sequence[torch.Tensor], n: int) -> None:
        # stays on the training device: no host sync until the next log line
        if not self.sums:
            self.first_step = step
        self.sums.append(torch.stack([loss.float(), *[r.float() for r in rank_losses]]))
        self.samples += n
        self.steps += 1

    def first_nonfinite_step(self) -> int | None:
        """Step of the window's first nan or inf loss, None if all are finite (one host sync)."""
        if not self.sums:
            return None
        bad = ~torch.isfinite(torch.stack([s[0] for s in self.sums]))
        first = int(torch.where(bad.any(), bad.int().argmax(), -1))
        return None if first < 0 else self.first_step + first

    def flush(self, step: int, epoch: int, lr: float, ranks: Sequence[str]) -> dict[str, Any]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        local = torch.stack(self.sums).sum(0).cpu() if self.sums else torch.zeros(self.num_ranks + 1)
        totals = all_reduce_sum(torch.cat([local.double(), torch.tensor([self.steps, self.samples], dtype=torch.float64)]))
        steps = max(float(totals[-2]), 1.0)
        record = {"event": "train", "step": step, "epoch": epoch, "loss": float(totals[0] / steps),
                  "rank_loss": {r: float(totals[1 + i] / steps) for i, r in enumerate(ranks)}, "lr": lr,
                  "img_per_s": float(totals[-1]) / elapsed}
        self.reset()
        return record


def _cell(value: float, spec: str, width: int) -> str:
    return f"{'n/a':>{width}}" if value != value else f"{value:>{width}{spec}}"  # NaN: undefined here


def format_summary(summary: dict[str, Any]) -> str:
    """The final table: per rank, classes, chance, top-1, top-5, mistake severity (over how many mistakes),
    hierarchical distance @1/@5, and the CRM decision's top-1 and hdist@1 when it was evaluated."""
    crm = any("crm_top1" in m for m in summary["ranks"].values())
    lines = [
        f"finished {summary['step']} steps in {summary['wall_s']:.0f} s "
        f"({summary['world_size']} process(es), batch {summary['batch_size']} each); validation loss "
        f"{summary['val_loss']:.4f}",
        "",
        f"{'rank':<20} {'classes':>7} {'chance':>7} {'top-1':>7} {'top-5':>7} {'severity':>9} {'mistakes':>8} "
        f"{'hdist@1':>7} {'hdist@5':>7}" + (f" {'crm top-1':>9} {'crm hd@1':>8}" if crm else "") + f" {'n':>6}",
    ]
    for r, m in summary["ranks"].items():
        lines.append(f"{rank_label(r):<20} {m['classes']:>7d} {m['chance']:>7.1%} {_cell(m['top1'], '.1%', 7)} "
                     f"{_cell(m['top5'], '.1%', 7)} {_cell(m['severity'], '.2f', 9)} {m.get('mistakes', 0):>8d} "
                     f"{_cell(m.get('hdist@1', float('nan')), '.3f', 7)} {_cell(m.get('hdist@5', float('nan')), '.3f', 7)}"
                     + (f" {_cell(m['crm_top1'], '.1%', 9)} {_cell(m['crm_hdist@1'], '.3f', 8)}" if crm else "")
                     + f" {m['n']:>6d}")
    lines += _replaced_lines(summary.get("load_failures"))
    lines += ["", "top-1/top-5: validation accuracy (null labels excluded; n/a with <= 5 classes); chance: "
              "1/classes; severity: mean taxonomic distance of the wrong top-1 predictions (1 = right parent, "
              "wrong class), over `mistakes` of them; hdist@k: mean distance of the top-k predictions to the "
              "truth over all samples" + ("; crm: the least-expected-distance decision" if crm else ""),
              f"metrics: {summary['out_dir']}/metrics.jsonl, checkpoints: {summary['out_dir']}/checkpoints/"]
    return "\n".join(lines)


def _replaced_lines(failures: dict[str, Any] | None) -> list[str]:
    """The final table's line on images replaced by placeholders (permissive mode, or any replaced)."""
    if not failures or (failures["strict"] and not failures["train"]["replaced"] and not failures["val"]["replaced"]):
        return []
    parts = [f"{s} {failures[s]['replaced']} of {failures[s]['loaded']} ({failures[s]['share']:.1%})"
             for s in ("train", "val")]
    return ["", f"images replaced by placeholders (data.strict: false): {', '.join(parts)}; "
                f"limit {failures['limit']:.1%} per epoch or evaluation (data.max_load_failures)"]
