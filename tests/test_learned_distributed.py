"""LearnedAugment under torch.distributed: hypergradients are averaged, so every rank keeps the same policy."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from taxaug.algorithms.learned import AugmentPolicy, MetaLearner, meta_gradients

POLICY = {"ops": ["identity", "hflip", "rotate", "contrast", "posterize"], "num_layers": 1, "hard": False}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 64, 3))


def _batch(rank: int):
    gen = torch.Generator().manual_seed(100 + rank)  # every rank sees different data
    x = torch.rand(16, 3, 8, 8, generator=gen)
    y = torch.randint(0, 3, (16,), generator=gen)
    return (x[:8], y[:8]), (x[8:], y[8:])


def _worker(rank: int, port: int, queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        learner = MetaLearner(AugmentPolicy(POLICY), lr=0.1, inner_lr=0.5)
        train, val = _batch(rank)
        noise = learner.policy.draw_noise(8, generator=torch.Generator().manual_seed(7))
        learner.meta_step(_model(), nn.functional.cross_entropy, train, val, noise=noise)
        # plain lists: shared-memory tensors would die with this process before the parent reads them
        queue.put((rank, {n: p.detach().tolist() for n, p in learner.policy.named_parameters()}))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_policies_stay_identical_across_ranks_with_the_mean_hypergradient():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {rank: {n: torch.tensor(v) for n, v in params.items()}
               for rank, params in (queue.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for name in results[0]:
        assert torch.equal(results[0][name], results[1][name]), f"{name} differs across ranks"

    # the same step taken by hand with the mean of the two ranks' hypergradients
    noise = AugmentPolicy(POLICY).draw_noise(8, generator=torch.Generator().manual_seed(7))
    grads = [meta_gradients(AugmentPolicy(POLICY), _model(), nn.functional.cross_entropy, *_batch(r),
                            inner_lr=0.5, noise=noise)[0] for r in range(2)]
    expected = MetaLearner(AugmentPolicy(POLICY), lr=0.1, inner_lr=0.5)
    for n, p in expected.policy.named_parameters():
        p.grad = (grads[0][n] + grads[1][n]) / 2
    expected.optimizer.step()
    for n, p in expected.policy.named_parameters():
        torch.testing.assert_close(results[0][n], p.detach())
    assert not torch.equal(grads[0]["op_logits"], grads[1]["op_logits"])  # the ranks did disagree
