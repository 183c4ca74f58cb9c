"""TaxaugCallback with the real Lightning on CPU: batch replacement, events, sampler epochs, resume, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")  # an optional extra; `make test` installs it

import lightning.pytorch as pl

from taxaug.algorithms import Engine, Event, State, create
from taxaug.integrations.lightning import TaxaugCallback
from tests.lightning_helpers import NUM_CLASSES, TinyModule, trainer

MIX = {"name": "selective_mixup", "group_levels": "taxa_L10", "alpha": 0.8}


def _fit(tmp_path, algorithms, epochs=2, seed=0, module=None, **kw):
    pl.seed_everything(0, verbose=False)
    module = module or TinyModule()
    callback = TaxaugCallback(algorithms, seed=seed, num_classes=NUM_CLASSES)
    trainer(epochs, [callback], str(tmp_path), **kw).fit(module)
    return module, callback


def test_training_step_gets_the_batch_after_after_dataloader_and_epochs_advance(tmp_path):
    module, callback = _fit(tmp_path, [MIX, {"name": "random_erasing", "p": 0.5}])
    data, sampler_batches = module.data, module.make_loader().batch_sampler
    # the same algorithms, driven by hand over the sampler's batches of each epoch, give the same bytes
    reference = Engine([create(**{k: v for k, v in MIX.items() if k != "name"} | {"name": "selective_mixup"}),
                        create("random_erasing", p=0.5)], seed=0)
    state = State(num_classes=NUM_CLASSES)
    expected = []
    for epoch in range(2):
        for indices in sampler_batches.batches(epoch):
            state.batch, state.epoch = data.collate(indices.tolist()), epoch
            reference.run(Event.AFTER_DATALOADER, state)
            expected.append((indices.tolist(), state.batch))
            state.step += 1
    assert len(module.seen) == len(expected) == 2 * len(sampler_batches)
    for seen, (indices, batch) in zip(module.seen, expected):
        assert seen["indices"] == indices
        assert torch.equal(seen["images"], batch.images)
        assert torch.equal(seen["targets"]["taxa_L20"], batch.targets["taxa_L20"])
    per_epoch = len(sampler_batches)
    first = [s["indices"] for s in module.seen[:per_epoch]]
    second = [s["indices"] for s in module.seen[per_epoch:]]
    assert first != second  # set_epoch advanced: epoch 1 is not a replay of epoch 0
    assert any(not torch.equal(s["images"], data.images[s["indices"]]) for s in module.seen)
    trace = {(e.event, e.key) for e in callback.engine.trace}
    assert (Event.AFTER_DATALOADER, "0.selective_mixup") in trace


def test_label_smoothing_reaches_the_loss_through_the_helper(tmp_path):
    _, callback = _fit(tmp_path, [{"name": "label_smoothing", "smoothing": 0.2}], epochs=1)
    state = callback.state
    assert state.batch.targets["taxa_L20"].ndim == 2  # smoothed (dense) targets were what the loss saw
    known = state.batch.targets["taxa_L20"][:, 0] < 1
    assert bool((state.batch.targets["taxa_L20"][known] > 0).all())
    events = {e.event for e in callback.engine.trace}
    assert Event.BEFORE_LOSS in events


def test_a_loss_algorithm_without_the_helper_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match=r"\['0.label_smoothing'\] act at BEFORE_LOSS/AFTER_LOSS, but training_step "
                                           r"never called loss_targets"):
        _fit(tmp_path, [{"name": "label_smoothing"}], epochs=1, module=TinyModule(use_helper=False))


def test_a_batch_that_is_not_a_mixbatch_is_refused(tmp_path):
    class DictModule(TinyModule):
        def on_after_batch_transfer(self, batch, dataloader_idx):
            return {"images": batch.images}

    with pytest.raises(TypeError, match=r"TaxaugCallback: training batches must be a taxaug\.MixBatch, got dict"):
        _fit(tmp_path, [MIX], epochs=1, module=DictModule())


def _weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_resume_from_a_lightning_checkpoint_is_bit_exact(tmp_path):
    algorithms = [{"name": "selective_mix", "group_levels": "taxa_L10", "prob": 0.7}, {"name": "trivial_augment"}]
    straight, _ = _fit(tmp_path / "a", algorithms, epochs=3)
    pl.seed_everything(0, verbose=False)
    first = TinyModule()
    run = trainer(2, [TaxaugCallback(algorithms, num_classes=NUM_CLASSES)], str(tmp_path / "b"))
    run.fit(first)
    ckpt = tmp_path / "b" / "two.ckpt"
    run.save_checkpoint(ckpt)
    assert "TaxaugCallback" in str(torch.load(ckpt, weights_only=False)["callbacks"].keys())
    pl.seed_everything(99, verbose=False)  # the checkpoint, not the global seed, must decide what follows
    resumed = TinyModule()
    trainer(3, [TaxaugCallback(algorithms, num_classes=NUM_CLASSES)], str(tmp_path / "b")).fit(resumed, ckpt_path=ckpt)
    per_epoch = len(straight.seen) // 3
    tail = straight.seen[2 * per_epoch:]
    assert len(resumed.seen) == len(tail)
    for a, b in zip(tail, resumed.seen):
        assert a["indices"] == b["indices"] and torch.equal(a["images"], b["images"]) and a["loss"] == b["loss"]
    assert all(torch.equal(v, _weights(resumed)[k]) for k, v in _weights(straight).items())


def test_a_loader_passed_to_fit_follows_the_epochs_on_resume(tmp_path):
    module = TinyModule()
    run = trainer(1, [TaxaugCallback([MIX], num_classes=NUM_CLASSES)], str(tmp_path))
    run.fit(module, train_dataloaders=module.make_loader())
    run.save_checkpoint(tmp_path / "one.ckpt")
    again = TinyModule()
    trainer(2, [TaxaugCallback([MIX], num_classes=NUM_CLASSES)], str(tmp_path)).fit(
        again, train_dataloaders=again.make_loader(), ckpt_path=tmp_path / "one.ckpt")
    expected = [b.tolist() for b in again.make_loader().batch_sampler.batches(1)]
    assert [s["indices"] for s in again.seen] == expected and {s["epoch"] for s in again.seen} == {1}


def test_a_loader_iterated_before_the_epoch_hook_is_refused(tmp_path):
    """If the first batches were drawn before on_train_epoch_start, the epoch's order is already fixed: refuse."""

    class EarlyPeek(TinyModule):
        def on_train_start(self):
            next(iter(self.trainer.train_dataloader.batch_sampler))

    module = TinyModule()
    run = trainer(1, [TaxaugCallback([MIX], num_classes=NUM_CLASSES)], str(tmp_path))
    run.fit(module)
    run.save_checkpoint(tmp_path / "one.ckpt")
    with pytest.raises(RuntimeError, match="epoch 1 started with the GroupedBatchSampler at epoch 0"):
        trainer(2, [TaxaugCallback([MIX], num_classes=NUM_CLASSES)], str(tmp_path)).fit(
            EarlyPeek(), ckpt_path=tmp_path / "one.ckpt")


DDP_SCRIPT = '''
import json, sys
import lightning.pytorch as pl
sys.path.insert(0, {root!r})
from taxaug.integrations.lightning import TaxaugCallback
from tests.lightning_helpers import NUM_CLASSES, TinyModule, trainer

pl.seed_everything({seed}, verbose=False)
module = TinyModule()
callback = TaxaugCallback([{{"name": "selective_mixup", "group_levels": "taxa_L10"}}], num_classes=NUM_CLASSES)
run = trainer({epochs}, [callback], {out!r}, strategy="ddp", devices=2)
run.fit(module, ckpt_path={ckpt!r})
if {ckpt!r} is None:
    run.save_checkpoint({out!r} + "/ddp.ckpt")
record = {{"rank": run.global_rank, "seed": callback.engine.seed,
          "batches": [[s["epoch"], s["indices"], s["targets"]["taxa_L10"].ndim] for s in module.seen],
          "mixed": [[s["epoch"], s["indices"], s["targets"]["taxa_L10"].tolist(), s["images"].sum().item()]
                    for s in module.seen]}}
with open({out!r} + f"/{tag}{{run.global_rank}}.json", "w") as f:
    json.dump(record, f)
'''


def _ddp_run(tmp_path: Path, tag: str, *, epochs: int, seed: int = 0, ckpt: str | None = None) -> list[dict]:
    """Run DDP_SCRIPT on 2 CPU processes; each rank's record."""
    root = str(Path(__file__).resolve().parents[1])
    script = tmp_path / f"ddp_{tag}.py"
    script.write_text(DDP_SCRIPT.format(root=root, out=str(tmp_path), epochs=epochs, seed=seed, ckpt=ckpt, tag=tag))
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((tmp_path / f"{tag}{r}.json").read_text()) for r in (0, 1)]


def test_ddp_on_cpu_with_two_processes_splits_the_grouped_batches(tmp_path):
    records = _ddp_run(tmp_path, "rank", epochs=2)
    assert records[0]["seed"] != records[1]["seed"]  # each rank draws its own numbers
    for epoch in (0, 1):
        mine = [[i for e, b, _ in r["batches"] if e == epoch for i in b] for r in records]
        assert not set(mine[0]) & set(mine[1])  # disjoint replicas
        assert len(mine[0]) == len(mine[1])
        assert sorted(mine[0] + mine[1]) == list(range(48))  # 48 samples, 6 batches of 8: nothing dropped
    orders = [[b for e, b, _ in records[0]["batches"] if e == epoch] for epoch in (0, 1)]
    assert orders[0] != orders[1]
    assert any(ndim == 2 for r in records for _, _, ndim in r["batches"])  # mixing ran in the workers
    saved = torch.load(tmp_path / "ddp.ckpt", weights_only=False)
    engines = next(v for k, v in saved["callbacks"].items() if "TaxaugCallback" in k)["engines"]
    assert len(engines) == 2 and engines[0]["seed"] != engines[1]["seed"]
    # resumed on 2 processes, each rank takes back its own engine: epoch 2 mixes as an unbroken 3-epoch run
    resumed = _ddp_run(tmp_path, "resumed", epochs=3, seed=99, ckpt=str(tmp_path / "ddp.ckpt"))
    straight = _ddp_run(tmp_path, "straight", epochs=3)
    for rank in (0, 1):
        assert resumed[rank]["seed"] == straight[rank]["seed"] == records[rank]["seed"]
        tail = [m for m in straight[rank]["mixed"] if m[0] == 2]
        assert tail and resumed[rank]["mixed"] == tail  # same batches, same mixed targets and images
    assert resumed[0]["mixed"] != resumed[1]["mixed"]


def test_a_datamodule_batch_hook_runs_before_the_algorithms(tmp_path):
    """Lightning calls a DataModule's on_after_batch_transfer instead of the module's: the callback wraps that one."""
    from taxaug import MixBatch

    class Data(pl.LightningDataModule):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def train_dataloader(self):
            loader = self.module.make_loader()
            loader.collate_fn = lambda idx: {"idx": idx}  # a plain dict batch, made a MixBatch in the hook
            return loader

        def on_after_batch_transfer(self, batch, dataloader_idx):
            return self.module.data.collate(batch["idx"]) if isinstance(batch, dict) else batch

    pl.seed_everything(0, verbose=False)
    module = TinyModule()
    callback = TaxaugCallback([MIX], num_classes=NUM_CLASSES)
    trainer(1, [callback], str(tmp_path)).fit(module, datamodule=Data(module))
    assert module.seen and isinstance(callback.state.batch, MixBatch)
    assert any(not torch.equal(s["images"], module.data.images[s["indices"]]) for s in module.seen)
