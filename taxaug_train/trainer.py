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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from taxaug import functional as F
from taxaug.algorithms import Engine, Event, State, from_config
from taxaug.data import FilterConfig, GroupedBatchSampler, HybridDataset, PrefetchLoader, SchemaError
from taxaug_train import checkpoint as ckpt
from taxaug_train.autobatch import find_batch_size, training_step_probe
from taxaug_train.config import ConfigError, TrainerConfig, config_to_dict, save_config
from taxaug_train.distributed import (
    DistInfo,
    all_reduce_min,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    init_distributed,
)
from taxaug_train.interrupt import GracefulInterrupt
from taxaug_train.losses import HierarchicalLoss
from taxaug_train.metrics import RankMetrics
from taxaug_train.models import build_model

__all__ = ["Trainer", "format_summary", "rank_label"]

log = logging.getLogger("taxaug_train")

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


def _file_ranks(path: Path) -> list[str]:
    with h5py.File(path, "r") as f:
        return sorted(k for k in f if k.startswith("taxa_L"))


def build_datasets(cfg: TrainerConfig) -> tuple[HybridDataset, HybridDataset]:
    """(train, val) datasets of the config, with errors that name the config key to fix."""
    d = cfg.data
    labels = Path(d.labels)
    if not labels.is_file():
        hint = (" (generate the demo data with `taxaug-data demo --out demo_data`)" if "demo" in str(labels) else
                "; point data.labels at your labels.h5 (build one with `taxaug-data build`)")
        raise ConfigError(f"data.labels: file {str(labels)!r} does not exist{hint}")
    images_dir = Path(d.images_dir) if d.images_dir else (labels.parent / "images")
    if not images_dir.is_dir():
        raise ConfigError(f"data.images_dir: folder {str(images_dir)!r} does not exist; set data.images_dir to the "
                          "folder holding the image files named in img_identifiers")
    try:
        present = _file_ranks(labels)
    except OSError as err:
        raise ConfigError(f"data.labels: cannot open {str(labels)!r} as HDF5: {err}") from None
    missing = [r for r in d.ranks if r not in present]
    if missing:
        raise ConfigError(f"data.ranks: {missing} not in {str(labels)!r}; it holds {present or 'no taxa_LXX datasets'}")
    kwargs: dict[str, Any] = dict(
        rank_names=list(d.ranks), metadata=tuple(d.metadata), image_size=d.image_size,
        filters=FilterConfig(partial_labels=d.partial_labels), missing="strict" if d.strict else "permissive",
        file_extension=d.file_extension,
    )
    try:
        full = HybridDataset(labels, images_dir, **kwargs)
        if d.val_labels:
            val_path = Path(d.val_labels)
            if not val_path.is_file():
                raise ConfigError(f"data.val_labels: file {str(val_path)!r} does not exist")
            train = full
            val = HybridDataset(val_path, Path(d.images_dir) if d.images_dir else val_path.parent / "images",
                                class_maps=full.class_to_taxon_id, **kwargs)
            val.taxonomy = full.taxonomy
        else:
            if d.val_ratio <= 0:
                raise ConfigError("data.val_ratio must be > 0 (or give data.val_labels): the trainer validates "
                                  "on held-out data")
            train, val = full.split(d.val_ratio, seed=d.split_seed, stratify_rank=d.stratify_rank)
    except SchemaError as err:
        raise ConfigError(f"data.labels: {err}") from None
    except KeyError as err:  # a metadata component the file does not hold
        raise ConfigError(f"data.metadata: {err}") from None
    if len(val) == 0:
        raise ConfigError(f"data.val_ratio {d.val_ratio} leaves no validation samples out of {len(full)}")
    return train, val


# ---------------------------------------------------------------------------------------------- the loop


class Trainer:
    """One training run described by a `TrainerConfig`.

    ``Trainer(cfg).fit()`` trains and returns the final metrics; ``resume=`` a checkpoint file
    (or a run folder) continues it exactly. Building the trainer loads the data, the model and
    the algorithms, so configuration errors surface before any training.
    """

    def __init__(self, cfg: TrainerConfig, *, resume: str | Path | None = None, dist_info: DistInfo | None = None,
                 write_files: bool = True):
        self.cfg = cfg
        self.dist = dist_info or init_distributed(cfg.train.device)
        self.device = self.dist.device
        self.is_main = self.dist.is_main
        self.write_files = write_files and self.is_main
        self.out_dir = Path(cfg.train.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        t = cfg.train
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
        _seed_everything(t.seed)

        self.train_set, self.val_set = build_datasets(cfg)
        self.taxonomy = self.train_set.taxonomy
        self.ranks = list(self.train_set.rank_names)
        self.aux_components = list(self.train_set.aux_components)
        aux_chunks = F.aux_chunks_from_components(self.aux_components) if self.aux_components else []

        model = build_model(cfg.model, self.taxonomy, image_size=cfg.data.image_size, aux_chunks=aux_chunks,
                            aux_dim=self.train_set.aux_dim).to(self.device)
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.loss = HierarchicalLoss(self.taxonomy, rank_weights=cfg.loss.rank_weights,
                                     taxonomy_smoothing=cfg.loss.taxonomy_smoothing,
                                     taxonomy_smoothing_beta=cfg.loss.taxonomy_smoothing_beta,
                                     label_smoothing=cfg.loss.label_smoothing).to(self.device)
        if t.generator_device == "cuda" and self.device.type != "cuda":
            raise ConfigError("train.generator_device: cuda needs the run on a CUDA device; use cpu")
        self.engine = Engine(self._build_algorithms(), seed=t.seed + 100_003 * self.dist.rank,
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
            self.train_model: nn.Module = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        else:
            self.train_model = model

        self.state = State(model=self.train_model, optimizer=self.optimizer, max_steps=t.max_steps,
                           taxonomy=self.taxonomy, num_classes=dict(self.taxonomy.num_classes),
                           loss_fn=self.loss.per_sample)
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
        self.metrics = RankMetrics(self.taxonomy, crm=cfg.train.crm)
        self.history: list[dict[str, Any]] = []
        self.resumed_from: Path | None = None
        if resume is not None:
            self._load(resume, self._resume_payload)
            self._resume_payload = None

    # ------------------------------------------------------------------------------------ construction

    def _build_algorithms(self) -> list[Any]:
        algorithms = []
        for i, entry in enumerate(self.cfg.algorithms):
            entry = dict(entry)
            name = entry.get("name")
            if self.aux_components and "aux_components" not in entry and _accepts(name, "aux_components"):
                # mix metadata chunk by chunk (location, date, elevation each taken whole)
                entry["aux_components"] = [[n, w] for n, w in self.aux_components]
            try:
                algorithms += from_config([entry])
            except Exception as err:  # the registry raises KeyError/TypeError/ValueError: name the entry
                raise ConfigError(f"algorithms[{i}] ({name}): {err}") from None
        return algorithms

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
        cap = min(t.auto_batch_max, per_rank_samples)
        budget = t.auto_batch_memory_mb << 20 if t.auto_batch_memory_mb else None
        fits = training_step_probe(self.model, image_size=d.image_size, device=self.device, forward=self._probe_loss,
                                   budget_bytes=budget, channels_last=t.channels_last,
                                   optimizer_state_factor=2.0 if self.cfg.optim.name == "adamw" else 1.0)
        local = find_batch_size(fits, max_batch=cap, even=even)
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
                return level
        return self.ranks[0]

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
        engine.run(Event.INIT, state)
        engine.run(Event.FIT_START, state)
        bar = self._progress_bar()
        window = _Window(len(self.ranks))
        last_eval_step = -1
        skip = state.batch_in_epoch
        stopped = interrupted = False
        self.train_model.train()
        with GracefulInterrupt() as interrupt:
            while state.step < t.max_steps and not stopped:
                skip, stopped, interrupted, last_eval_step = self._run_epoch(
                    skip, window, bar, interrupt, stop_after, last_eval_step)
        if bar is not None:
            bar.close()
        if interrupted:
            path = self.save()
            if self.is_main:
                log.warning("interrupted at step %d; checkpoint %s; continue with --resume %s", state.step, path,
                            self.out_dir)
            raise KeyboardInterrupt
        if stop_after is not None and state.step < t.max_steps:
            return {"step": state.step, "stopped": True}
        if last_eval_step != state.step:
            self.evaluate()
        engine.run(Event.FIT_END, state)
        summary = self._summary(time.perf_counter() - start_wall)
        if self.write_files:
            (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if self.is_main:
            print(format_summary(summary), flush=True)
        barrier()
        return summary

    def _run_epoch(self, skip: int, window: _Window, bar: Any, interrupt: GracefulInterrupt,
                   stop_after: int | None, last_eval_step: int) -> tuple[int, bool, bool, int]:
        """One epoch, or its rest after a resume; returns (skip, stopped, interrupted, last_eval_step)."""
        t, c = self.cfg.train, self.cfg.checkpoint
        state, engine = self.state, self.engine
        stopped = interrupted = False
        if skip and skip >= len(self.sampler):  # resumed right after the last batch of an epoch
            engine.run(Event.EPOCH_END, state)
            state.epoch, state.batch_in_epoch, skip = state.epoch + 1, 0, 0
        state.batch_in_epoch = skip
        if skip == 0:  # a checkpoint taken mid-epoch was taken after this epoch's EPOCH_START had run
            engine.run(Event.EPOCH_START, state)
        rank = self._group_rank() if skip == 0 else self.group_rank  # a resumed epoch keeps its grouping
        if rank != self.group_rank:  # level switching: regroup the sampler at the new level
            self.group_rank, self.sampler = rank, self._build_sampler(rank)
            if self.is_main:
                log.info("epoch %d: sampler groups by %s", state.epoch, rank)
        batches = _EpochBatches(self.sampler, state.epoch, skip)
        skip = 0
        if len(batches) == 0:
            raise RuntimeError("the training split yields no batch; lower train.batch_size")
        self.train_loader.batch_sampler = batches
        iterator = iter(self.train_loader)
        try:
            for _ in range(len(batches)):
                engine.run(Event.BEFORE_DATALOADER, state)
                tic = time.perf_counter()
                batch = self._to_device(next(iterator))
                loss, rank_losses, n = self._train_step(batch)
                window.add(loss, rank_losses, n, time.perf_counter() - tic)
                if bar is not None:
                    bar.update(1)
                step = state.step
                if step % t.log_every == 0 or step == t.max_steps:
                    record = window.flush(step, state.epoch, self.optimizer.param_groups[0]["lr"], self.ranks)
                    self._write_record(record)
                    if bar is not None:
                        bar.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{record['img_per_s']:.0f}")
                if (t.eval_every and step % t.eval_every == 0) or step == t.max_steps:
                    self.evaluate()
                    last_eval_step = step
                if (c.every and step % c.every == 0) or step == t.max_steps:
                    self.save()
                if step >= t.max_steps or (stop_after is not None and step >= stop_after):
                    stopped = True
                    break
                if interrupt.any_requested():
                    stopped = interrupted = True
                    break
        finally:
            self.train_loader.close()
        if state.batch_in_epoch >= len(self.sampler) and not interrupted:
            engine.run(Event.EPOCH_END, state)
            state.epoch += 1
            state.batch_in_epoch = 0
        return skip, stopped, interrupted, last_eval_step

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
        self.metrics.reduce_()
        loss_sums = all_reduce_sum(loss_sums)
        per_rank = self.metrics.compute()
        weights = self.loss.rank_weights
        val_loss = sum(weights[r] * float(loss_sums[i, 0] / max(loss_sums[i, 1], 1e-12))
                       for i, r in enumerate(self.ranks)) / max(sum(weights.values()), 1e-12)
        record = {"event": "eval", "step": state.step, "epoch": state.epoch, "val_loss": val_loss,
                  "ranks": {r: {**per_rank[r], "loss": float(loss_sums[i, 0] / max(loss_sums[i, 1], 1e-12))}
                            for i, r in enumerate(self.ranks)}}
        self._write_record(record)
        if self.is_main:
            parts = ", ".join(f"{r} top1 {per_rank[r]['top1']:.3f}" for r in self.ranks)
            log.info("step %d eval: loss %.4f, %s", state.step, val_loss, parts)
        self.last_eval = record
        return record

    # ------------------------------------------------------------------------------------ outputs

    def _progress_bar(self):
        if not (self.cfg.train.progress_bar and self.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.cfg.train.max_steps, initial=self.state.step, desc="train", unit="step",
                    dynamic_ncols=True, mininterval=0.5, file=sys.stderr)

    def _open_outputs(self) -> None:
        if not self.write_files:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.out_dir / "config.yaml")
        metrics = self.out_dir / "metrics.jsonl"
        kept: list[str] = []
        if self.resumed_from is not None and metrics.is_file():
            # keep what the interrupted run logged up to the checkpoint; later lines are redone
            for line in metrics.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    if json.loads(line).get("step", 0) <= self.state.step:
                        kept.append(line)
        elif metrics.is_file():
            log.warning("%s exists and is replaced (a new run in the same out_dir)", metrics)
        metrics.write_text("".join(k + "\n" for k in kept))

    def _write_record(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.write_files:
            with (self.out_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")

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
            "val_loss": ev["val_loss"],
            "ranks": {r: {**ev["ranks"][r], "chance": chance[r], "classes": self.taxonomy.num_classes[r] - 1}
                      for r in self.ranks},
            "out_dir": str(self.out_dir),
        }

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
        if self.write_files:
            payload = self.checkpoint_state()
            path = ckpt.save_checkpoint(payload, ckpt.step_path(self.ckpt_dir, self.state.step))
            ckpt.prune_checkpoints(self.ckpt_dir, self.cfg.checkpoint.keep)
            log.debug("checkpoint %s", path)
        barrier()
        return path

    def _load(self, where: str | Path, payload: dict[str, Any]) -> None:
        if payload.get("world_size") != self.dist.world_size:
            log.warning("resuming a %s-process run with %d processes: samplers shard differently, so the run "
                        "continues but not bit for bit", payload.get("world_size"), self.dist.world_size)
        saved_cfg = payload.get("config", {})
        mine = config_to_dict(self.cfg)
        changed = [f"{sec}.{k}" for sec in mine if isinstance(mine[sec], dict) and isinstance(saved_cfg.get(sec), dict)
                   for k in mine[sec] if mine[sec][k] != saved_cfg[sec].get(k) and (sec, k) != ("train", "out_dir")]
        if changed and self.is_main:
            log.warning("resuming with config changes: %s", ", ".join(changed))
        if payload["sampler"]["batch_size"] != self.batch_size:
            raise ckpt.CheckpointError(f"checkpoint was trained with batch size {payload['sampler']['batch_size']}, "
                                       f"this run resolves {self.batch_size}; set train.batch_size to match")
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
        self.resumed_from = Path(where)
        if self.is_main:
            log.info("resumed from %s at step %d (epoch %d, batch %d)", where, self.state.step, self.state.epoch,
                     self.state.batch_in_epoch)


# ---------------------------------------------------------------------------------------------- helpers


def _accepts(name: Any, parameter: str) -> bool:
    import inspect

    from taxaug.algorithms import registered

    cls = registered().get(name) if isinstance(name, str) else None
    if cls is None:
        return False
    try:
        return parameter in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False


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
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, rank_losses: Sequence[torch.Tensor], n: int, _seconds: float) -> None:
        # stays on the training device: no host sync until the next log line
        self.sums.append(torch.stack([loss.float(), *[r.float() for r in rank_losses]]))
        self.samples += n
        self.steps += 1

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
    lines += ["", "top-1/top-5: validation accuracy (null labels excluded; n/a with <= 5 classes); chance: "
              "1/classes; severity: mean taxonomic distance of the wrong top-1 predictions (1 = right parent, "
              "wrong class), over `mistakes` of them; hdist@k: mean distance of the top-k predictions to the "
              "truth over all samples" + ("; crm: the least-expected-distance decision" if crm else ""),
              f"metrics: {summary['out_dir']}/metrics.jsonl, checkpoints: {summary['out_dir']}/checkpoints/"]
    return "\n".join(lines)


def run_training(cfg: TrainerConfig, *, resume: str | Path | None = None,
                 on_ready: Callable[[Trainer], None] | None = None) -> dict[str, Any]:
    """Build a trainer for `cfg` and fit it (the CLI's entry)."""
    trainer = Trainer(cfg, resume=resume)
    if on_ready is not None:
        on_ready(trainer)
    return trainer.fit()
