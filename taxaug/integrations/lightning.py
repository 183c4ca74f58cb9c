"""Lightning adapter: one callback runs a taxaug Engine inside ``lightning.Trainer``.

``TaxaugCallback`` fires the engine's events at the matching Lightning hooks and hands
``training_step`` the batch every algorithm's AFTER_DATALOADER work produced (augmented, mixed).
A callback cannot replace a batch, so on ``setup`` it wraps the ``on_after_batch_transfer`` hook of
whichever object Lightning calls it on (the module, or a DataModule that overrides it): the engine
runs right after the batch reached the training device, as in the reference trainer. It sets each
``GroupedBatchSampler``'s epoch at every epoch start (Lightning only calls ``set_epoch`` on a
``sampler``), saves every rank's engine state in Lightning checkpoints, and restores it on resume.
See docs/algorithms.md, "With Lightning".
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.model_helpers import is_overridden
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("taxaug.integrations.lightning needs Lightning: pip install 'taxaug[lightning]'") from err

from taxaug.algorithms import RANK_SEED_STRIDE, Algorithm, Engine, Event, State, from_config
from taxaug.data.sampler import GroupedBatchSampler
from taxaug.functional.batch import MixBatch
from taxaug.taxonomy import Taxonomy

__all__ = ["TaxaugCallback"]

_LOSS_EVENTS = (Event.BEFORE_LOSS, Event.AFTER_LOSS)


def _algorithms(algorithms: Iterable[Algorithm | Mapping[str, Any]]) -> list[Algorithm]:
    out: list[Algorithm] = []
    for entry in algorithms:
        out += [entry] if isinstance(entry, Algorithm) else from_config([entry])
    return out


def _grouped_samplers(loaders: Any) -> list[GroupedBatchSampler]:
    """Every GroupedBatchSampler behind a loader or a (nested) collection of loaders."""
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return [s for loader in loaders for s in _grouped_samplers(loader)]
    found = getattr(loaders, "batch_sampler", None)
    return [found] if isinstance(found, GroupedBatchSampler) else []


class TaxaugCallback(pl.Callback):
    """Run taxaug algorithms inside a Lightning ``Trainer``.

    Args:
        algorithms: Algorithm instances or config entries (``{"name": ..., **kwargs}``), in run order.
        seed: engine seed; rank r of a DDP run uses ``seed + 100003 * r``.
        taxonomy: the run's Taxonomy (taxonomy smoothing needs it; mixing reads classes from it).
        num_classes: classes per task (index 0 = null) for densifying index targets.

    The training batches must be ``taxaug.MixBatch`` (``DataLoader(collate_fn=dataset.collate)``). In
    ``training_step`` call :meth:`loss_targets` on the model outputs (or :meth:`compute_loss`) when an
    algorithm acts at BEFORE_LOSS or AFTER_LOSS (label smoothing, ``interpolate_loss``); the callback
    refuses to step past a batch where such an algorithm was never given the chance.
    """

    def __init__(self, algorithms: Iterable[Algorithm | Mapping[str, Any]], *, seed: int = 0,
                 taxonomy: Taxonomy | None = None, num_classes: Mapping[str, int] | None = None) -> None:
        self.algorithms = _algorithms(algorithms)
        self.seed = int(seed)
        self.engine = Engine(self.algorithms, seed=self.seed)
        self.state = State(taxonomy=taxonomy, num_classes=None if num_classes is None else dict(num_classes))
        self._wrapped: list[tuple[Any, str]] = []
        self._loss_seen = False
        self._pending: dict[str, Any] | None = None
        self._eval_saved: tuple[Any, Any] | None = None
        self._first_epoch = True

    # --- finding the callback ---------------------------------------------------------------

    @staticmethod
    def of(trainer: pl.Trainer) -> TaxaugCallback:
        """The trainer's TaxaugCallback (for ``training_step``: ``TaxaugCallback.of(self.trainer)``)."""
        found = [c for c in trainer.callbacks if isinstance(c, TaxaugCallback)]
        if len(found) != 1:
            raise LookupError(f"the trainer holds {len(found)} TaxaugCallback(s); pass exactly one in "
                              f"Trainer(callbacks=[...])")
        return found[0]

    # --- setup: wrap the batch hook -----------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        rank_seed = self.seed + RANK_SEED_STRIDE * trainer.global_rank
        if self.engine.seed != rank_seed:
            self.engine = Engine(self.algorithms, seed=rank_seed)
        self.state.model = pl_module
        owner = pl_module
        if trainer.datamodule is not None and is_overridden("on_after_batch_transfer", trainer.datamodule):
            owner = trainer.datamodule
        self._wrap_after_transfer(owner, trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for owner, name in self._wrapped:
            owner.__dict__.pop(name, None)
        self._wrapped.clear()

    def _wrap_after_transfer(self, owner: Any, trainer: pl.Trainer) -> None:
        """Replace `owner.on_after_batch_transfer` (an instance attribute, removed at teardown)."""
        original = owner.on_after_batch_transfer

        @functools.wraps(original)
        def hook(batch: Any, dataloader_idx: int = 0) -> Any:
            batch = original(batch, dataloader_idx)
            return self._after_dataloader(trainer, batch) if trainer.training else batch

        object.__setattr__(owner, "on_after_batch_transfer", hook)
        self._wrapped.append((owner, "on_after_batch_transfer"))

    def _after_dataloader(self, trainer: pl.Trainer, batch: Any) -> MixBatch:
        if not isinstance(batch, MixBatch):
            raise TypeError(f"TaxaugCallback: training batches must be a taxaug.MixBatch, got {type(batch).__name__}; "
                            f"build the DataLoader with collate_fn=dataset.collate (or return MixBatch(images, "
                            f"targets) from on_after_batch_transfer)")
        state = self.state
        state.step, state.training, state.batch = trainer.global_step, True, batch
        self._loss_seen = False
        self.engine.run(Event.BEFORE_DATALOADER, state)
        self.engine.run(Event.AFTER_DATALOADER, state)
        return state.batch

    # --- loop events ------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._first_epoch = True
        self.engine.run(Event.INIT, self.state)
        self.engine.run(Event.FIT_START, self.state)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = self.state
        state.optimizer = trainer.optimizers[0] if trainer.optimizers else None
        state.max_steps = trainer.max_steps if trainer.max_steps > 0 else int(trainer.estimated_stepping_batches)
        state.step = trainer.global_step
        if self._pending is not None:
            state.epoch, state.batch_in_epoch = self._pending["epoch"], self._pending["batch_in_epoch"]
            state.samples_seen = self._pending["samples_seen"]
            self._pending = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        first, self._first_epoch = self._first_epoch, False
        for sampler in _grouped_samplers(trainer.train_dataloader):
            if first and sampler.iterated_epoch not in (None, trainer.current_epoch):
                raise RuntimeError(
                    f"TaxaugCallback: epoch {trainer.current_epoch} started with the GroupedBatchSampler at epoch "
                    f"{sampler.iterated_epoch}: the loader was iterated before the epoch hook, so this epoch would "
                    f"replay another's order; do not iterate the training loader before on_train_epoch_start")
            sampler.set_epoch(trainer.current_epoch)
        if self.state.epoch != trainer.current_epoch:
            self.state.epoch, self.state.batch_in_epoch = trainer.current_epoch, 0
        self.engine.run(Event.EPOCH_START, self.state)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.engine.run(Event.BATCH_START, self.state)
        self.engine.run(Event.BEFORE_FORWARD, self.state)

    def loss_targets(self, outputs: Any = None) -> dict[str, torch.Tensor]:
        """Fire AFTER_FORWARD and BEFORE_LOSS on the model `outputs`; the targets to compute the loss on.

        Call it in ``training_step`` after the forward pass: label smoothing (and any BEFORE_LOSS
        algorithm) acts on the mixed targets here. Index targets of an unmixed batch stay indices.
        """
        state = self.state
        if state.batch is None:
            raise RuntimeError("TaxaugCallback.loss_targets: no training batch yet; call it inside training_step")
        state.outputs = outputs
        self.engine.run(Event.AFTER_FORWARD, state)
        self.engine.run(Event.BEFORE_LOSS, state)
        self._loss_seen = True
        return dict(state.batch.targets)

    def compute_loss(self, outputs: Any, loss_fn: Callable[[Any, dict], torch.Tensor]) -> torch.Tensor:
        """:meth:`loss_targets`, then ``loss_fn(outputs, targets)`` (per-sample (B,) or scalar), AFTER_LOSS.

        The returned scalar is what to return from ``training_step``; ``interpolate_loss`` mixing
        recomputes it through ``loss_fn`` at AFTER_LOSS.
        """
        targets = self.loss_targets(outputs)
        loss = loss_fn(outputs, targets)
        self.state.loss_fn = loss_fn
        self.state.loss = loss.mean() if loss.ndim else loss
        self.engine.run(Event.AFTER_LOSS, self.state)
        return self.state.loss

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if not self._loss_seen:
            waiting = [a.key for a in self.engine.algorithms if any(a.match(e, self.state) for e in _LOSS_EVENTS)]
            if waiting:
                raise RuntimeError(f"TaxaugCallback: {waiting} act at BEFORE_LOSS/AFTER_LOSS, but training_step never "
                                   f"called loss_targets(outputs) or compute_loss(outputs, loss_fn); call one of them")
        self.state.loss = loss
        self.engine.run(Event.BEFORE_BACKWARD, self.state)

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.engine.run(Event.AFTER_BACKWARD, self.state)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        state = self.state
        self.engine.run(Event.BATCH_END, state)
        state.step = trainer.global_step
        state.batch_in_epoch += 1
        state.samples_seen += state.batch.batch_size if isinstance(state.batch, MixBatch) else 0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.engine.run(Event.EPOCH_END, self.state)
        self.state.epoch, self.state.batch_in_epoch = trainer.current_epoch + 1, 0

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.engine.run(Event.FIT_END, self.state)

    # --- evaluation: eval events on the validation batches, training state kept aside ---------

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_saved = (self.state.batch, self.state.outputs)
        self.state.training = False
        self.engine.run(Event.EVAL_START, self.state)

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self.state.batch = batch if isinstance(batch, MixBatch) else None
        self.engine.run(Event.EVAL_BATCH_START, self.state)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self.state.outputs = outputs
        self.engine.run(Event.EVAL_BATCH_END, self.state)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.engine.run(Event.EVAL_END, self.state)
        if self._eval_saved is not None:
            self.state.batch, self.state.outputs = self._eval_saved
            self._eval_saved = None
        self.state.training = True

    # --- checkpoints: every rank's engine ------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Engine states of every rank (gathered under DDP; Lightning calls this on all ranks) and loop counters."""
        mine = self.engine.state_dict()
        engines = [mine]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            engines = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(engines, mine)
        s = self.state
        return {"engines": engines, "loop": {"epoch": s.epoch, "batch_in_epoch": s.batch_in_epoch,
                                             "samples_seen": s.samples_seen}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        engines = state_dict["engines"]
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if len(engines) != world:
            raise ValueError(f"TaxaugCallback: the checkpoint holds engine states of {len(engines)} rank(s), this run "
                             f"has {world}; resume with the same number of processes")
        self.engine.load_state_dict(engines[rank])
        self._pending = dict(state_dict["loop"])
