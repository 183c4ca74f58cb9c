"""Two gloo processes on CPU: the sampler shards per rank, metrics are reduced, rank 0 writes."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from trainer_helpers import DEMO_CONFIG, tiny_overrides


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, labels: str, out: str, report_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from taxaug_train.config import load_config
    from taxaug_train.distributed import init_distributed, shutdown_distributed
    from taxaug_train.trainer import Trainer

    cfg = load_config(DEMO_CONFIG, tiny_overrides(Path(labels), Path(out), **{"train.max_steps": 6,
                                                                              "train.eval_every": 6}))
    info = init_distributed("cpu")
    try:
        trainer = Trainer(cfg, dist_info=info)
        seen: list[list[int]] = []
        step = trainer._train_step

        def spy(batch):
            seen.append([trainer.state.epoch, *batch.indices.tolist()])
            return step(batch)

        trainer._train_step = spy
        summary = trainer.fit()
        # parameters and buffers (BatchNorm statistics): replicas must hold the same model after evaluation
        weights = [float(v.double().sum()) for v in trainer.model.state_dict().values() if v.is_floating_point()]
        report = {"seen": seen, "summary": summary, "last_eval": trainer.last_eval, "weights": weights,
                  "epoch_batches": len(trainer.sampler), "n_train": len(trainer.train_set),
                  "n_val": len(trainer.val_set), "batch_size": trainer.batch_size}
        Path(report_dir, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        shutdown_distributed(info)


@pytest.fixture(scope="module")
def two_process_run(tiny_labels, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    labels = tiny_labels
    out, reports = root / "run", root / "reports"
    reports.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(labels), str(out), str(reports)), nprocs=2, join=True)
    return out, [json.loads((reports / f"rank{r}.json").read_text()) for r in range(2)]


def test_ranks_see_disjoint_samples(two_process_run):
    _, (r0, r1) = two_process_run
    assert len(r0["seen"]) == len(r1["seen"]) == 6  # same number of steps: collectives stay in lockstep
    by_epoch: dict[int, list[set[int]]] = {}
    for rank, report in enumerate((r0, r1)):
        for epoch, *indices in report["seen"]:
            by_epoch.setdefault(epoch, [set(), set()])[rank].update(indices)
    for epoch, (a, b) in by_epoch.items():
        assert a and b
        assert not a & b, f"epoch {epoch}: ranks shared samples {sorted(a & b)}"
    # 77 training samples, batch 8 per rank: epoch 0 has 4 full batches per rank + a split remainder
    assert r0["epoch_batches"] == r1["epoch_batches"] == 5
    a, b = by_epoch[0]
    assert len(a | b) == r0["n_train"], "epoch 0 did not cover the training split exactly once"


def test_ranks_agree_on_metrics_and_weights(two_process_run):
    _, (r0, r1) = two_process_run
    assert r0["last_eval"] == r1["last_eval"]
    assert r0["summary"]["ranks"] == r1["summary"]["ranks"]
    # every validation sample counted once over both ranks (families are never null in the demo)
    assert r0["last_eval"]["ranks"]["taxa_L30"]["n"] == r0["n_val"]
    assert r0["weights"] == r1["weights"]  # DDP keeps parameters identical; buffers are broadcast before eval
    assert r0["summary"]["world_size"] == 2


def test_only_rank_zero_writes(two_process_run):
    out, _ = two_process_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "train"] == [1, 2, 3, 4, 5, 6]  # once, not per rank
    payload = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert payload["world_size"] == 2 and payload["loop"]["step"] == 6
