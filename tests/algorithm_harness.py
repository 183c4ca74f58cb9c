"""Shared helpers (no tests) for the algorithm tests: a tiny taxonomy, batches, a model, and a training-loop driver.

The contract harness (test_algorithms_contract.py) runs every registered algorithm through `run_steps`.
Each algorithm needs a *case*: a dict with
    "kwargs":   constructor kwargs for a case that actually changes the batch,
    "disabled": kwargs that make it an exact no-op (None if it has no such setting; every built-in has one),
    "prepare":  optional callable(state) that adds what the algorithm needs to the State.
Built-in cases are in CASES below; `all_cases()` adds those of the learned-augmentation algorithms.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from taxaug import functional as F
from taxaug.algorithms import Engine, Event, State
from taxaug.taxonomy import Taxonomy

L10, L20 = "taxa_L10", "taxa_L20"
# species 1..4 (0 = null); genus: species 1, 2 -> genus 1; species 3, 4 -> genus 2.
SPECIES_PARENT = {0: 0, 1: 1, 2: 1, 3: 2, 4: 2}
NUM_CLASSES = {L10: 5, L20: 3}
AUX_COMPONENTS = [["location", 3], ["elevation", 2]]
BATCH = 8
SIZE = 16


def taxonomy() -> Taxonomy:
    species = list(SPECIES_PARENT)
    return Taxonomy.from_labels({L10: species, L20: [SPECIES_PARENT[s] for s in species]})


def make_batch(seed: int, *, dtype: torch.dtype = torch.float32, batch: int = BATCH) -> F.MixBatch:
    """A batch with pairs of samples per species, one null-species sample, metadata and a validity mask."""
    g = torch.Generator().manual_seed(1000 + seed)
    species = torch.tensor([1, 1, 2, 2, 3, 3, 4, 0] * (batch // 8 + 1))[:batch]
    species = species[torch.randperm(batch, generator=g)]
    genus = torch.tensor([SPECIES_PARENT[int(s)] for s in species])
    images = torch.rand(batch, 3, SIZE, SIZE, generator=g)
    if dtype == torch.uint8:
        images = (images * 255).round().to(torch.uint8)
    else:
        images = images.to(dtype)
    aux = torch.randn(batch, 5, generator=g)
    aux_mask = torch.rand(batch, 2, generator=g) > 0.2
    return F.MixBatch(images=images, targets={L10: species, L20: genus}, aux=aux, aux_mask=aux_mask,
                      indices=torch.arange(batch) + 100 * seed)


class TinyModel(nn.Module):
    """Pooled pixels -> one linear head per rank."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({L10: nn.Linear(3 * 4 * 4, NUM_CLASSES[L10]),
                                    L20: nn.Linear(3 * 4 * 4, NUM_CLASSES[L20])})

    def forward(self, images: torch.Tensor, aux: torch.Tensor | None = None,
                aux_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        x = nn.functional.adaptive_avg_pool2d(images.float(), 4).flatten(1)
        return {k: head(x) for k, head in self.heads.items()}


def per_sample_loss(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Soft cross-entropy summed over ranks, per sample (B,)."""
    dense = F.to_dense_targets(targets, NUM_CLASSES)
    return sum(-(dense[k] * torch.log_softmax(outputs[k], dim=1)).sum(dim=1) for k in outputs)


def make_state(*, max_steps: int = 6) -> State:
    torch.manual_seed(0)
    model = TinyModel()
    return State(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), max_steps=max_steps,
                 taxonomy=taxonomy(), num_classes=dict(NUM_CLASSES), loss_fn=per_sample_loss)


TRAIN_EVENTS_BEFORE_FORWARD = (Event.BEFORE_DATALOADER, Event.AFTER_DATALOADER, Event.BATCH_START,
                               Event.BEFORE_FORWARD)
STEP_EVENTS = (*TRAIN_EVENTS_BEFORE_FORWARD, Event.AFTER_FORWARD, Event.BEFORE_LOSS, Event.AFTER_LOSS,
               Event.BEFORE_BACKWARD, Event.AFTER_BACKWARD, Event.BATCH_END)


def run_step(engine: Engine, state: State, batch: F.MixBatch) -> dict[str, Any]:
    """One training step fired exactly as docs/algorithms.md describes; returns what the step produced."""
    state.batch = batch
    for event in TRAIN_EVENTS_BEFORE_FORWARD:
        engine.run(event, state)
    images = state.batch.images
    state.outputs = state.model(images.float() / 255 if images.dtype == torch.uint8 else images)
    engine.run(Event.AFTER_FORWARD, state)
    engine.run(Event.BEFORE_LOSS, state)
    state.loss = state.loss_fn(state.outputs, state.batch.targets).mean()
    engine.run(Event.AFTER_LOSS, state)
    engine.run(Event.BEFORE_BACKWARD, state)
    state.optimizer.zero_grad()
    state.loss.backward()
    engine.run(Event.AFTER_BACKWARD, state)
    state.optimizer.step()
    engine.run(Event.BATCH_END, state)
    produced = {"batch": state.batch, "loss": state.loss.detach().clone()}
    state.step += 1
    state.samples_seen += batch.batch_size
    state.batch_in_epoch += 1
    return produced


def run_steps(engine: Engine, state: State, batches: list[F.MixBatch]) -> list[dict[str, Any]]:
    return [run_step(engine, state, b) for b in batches]


def run_eval(engine: Engine, state: State, batch: F.MixBatch) -> F.MixBatch:
    """An evaluation pass; returns the batch the eval events left in the State."""
    state.training = False
    state.batch = batch
    for event in (Event.EVAL_START, Event.EVAL_BATCH_START, Event.EVAL_BATCH_END, Event.EVAL_END):
        engine.run(event, state)
    state.training = True
    return state.batch


def batch_tensors(batch: F.MixBatch) -> dict[str, torch.Tensor]:
    out = {"images": batch.images}
    out.update({f"targets.{k}": v for k, v in batch.targets.items()})
    for name in ("aux", "aux_mask", "indices"):
        if getattr(batch, name) is not None:
            out[name] = getattr(batch, name)
    return out


def assert_batches_identical(a: F.MixBatch, b: F.MixBatch, what: str = "") -> None:
    ta, tb = batch_tensors(a), batch_tensors(b)
    assert ta.keys() == tb.keys(), f"{what}: fields differ {ta.keys()} vs {tb.keys()}"
    for key in ta:
        assert ta[key].dtype == tb[key].dtype and ta[key].shape == tb[key].shape, f"{what}: {key} layout differs"
        assert torch.equal(ta[key], tb[key]), f"{what}: {key} differs"


MIX_COMMON = {"aux_components": AUX_COMPONENTS}
SELECTIVE = {"group_levels": [L10], **MIX_COMMON}

CASES: dict[str, dict[str, Any]] = {
    "selective_mixup": {"kwargs": {**SELECTIVE, "alpha": 0.8, "prob": 0.7}, "disabled": {**SELECTIVE, "prob": 0.0}},
    "selective_cutmix": {"kwargs": {**SELECTIVE, "alpha": 1.0, "prob": {"kind": "linear", "start": 1.0,
                                                                        "end": 0.5, "end_fraction": 1.0}},
                         "disabled": {**SELECTIVE, "prob": 0.0}},
    "selective_mix": {"kwargs": {**SELECTIVE, "switch_prob": 0.5, "prob": 0.9},
                      "disabled": {**SELECTIVE, "prob": 0.0}},
    "mix": {"kwargs": {**SELECTIVE, "switch_prob": 0.5, "prob": 0.9}, "disabled": {**SELECTIVE, "prob": 0.0}},
    "mixup": {"kwargs": {**MIX_COMMON, "alpha": 0.4, "prob": 0.8}, "disabled": {**MIX_COMMON, "prob": 0.0}},
    "cutmix": {"kwargs": {**MIX_COMMON, "alpha": 1.0}, "disabled": {**MIX_COMMON, "prob": 0.0}},
    "auto_augment": {"kwargs": {"policy": "imagenet", "prob": 0.8}, "disabled": {"prob": 0.0}},
    "rand_augment": {"kwargs": {"num_ops": 2, "magnitude": 9, "magnitude_std": 0.5}, "disabled": {"prob": 0.0}},
    "trivial_augment": {"kwargs": {}, "disabled": {"prob": 0.0}},
    "augmix": {"kwargs": {"severity": 3, "width": 2, "depth": -1}, "disabled": {"prob": 0.0}},
    "random_erasing": {"kwargs": {"p": 0.6, "mode": "pixel"}, "disabled": {"p": 0.0}},
    "label_smoothing": {"kwargs": {"smoothing": {"kind": "step", "values": [0.1, 0.2], "milestones": [3]}},
                        "disabled": {"smoothing": 0.0}},
    "taxonomy_label_smoothing": {"kwargs": {"alpha": 0.2, "beta": 1.0}, "disabled": {"alpha": 0.0}},
}


def learned_cases() -> dict[str, dict[str, Any]]:
    """Cases for taxaug.algorithms.learned.

    They need State.model and State.loss_fn, which make_state provides; a meta step runs every
    second step so the resume test crosses one. They have no off switch ("disabled": None).
    """
    from taxaug.algorithms.learned import FixedPolicy

    return {
        "learned_augment": {"kwargs": {"meta_every": 2}, "disabled": None},
        "uniform_augment": {"kwargs": {}, "disabled": None},
        "fixed_policy_augment": {"kwargs": {"policy": FixedPolicy.uniform(None).to_dict()}, "disabled": None},
    }


def all_cases() -> dict[str, dict[str, Any]]:
    """The built-in cases and the learned-augmentation cases."""
    return {**CASES, **learned_cases()}


def single_thread():
    """Generator for an autouse fixture: tiny tensors run far faster on one thread on a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
