"""torch.distributed setup for the trainer: one process per device, launched by ``torchrun``.

``torchrun --nproc_per_node=N -m taxaug_train --config ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous variables; `init_distributed` reads them and starts the
process group (``nccl`` when the run uses CUDA, ``gloo`` on CPU). Without them it returns a
single-process `DistInfo` and every helper here is a no-op, so the trainer has one code path.
"""

from __future__ import annotations

import datetime
import os

import attrs
import torch
import torch.distributed as dist

__all__ = ["DistInfo", "all_reduce_min", "all_reduce_sum", "barrier", "broadcast_buffers", "broadcast_object",
           "init_distributed", "shutdown_distributed"]


@attrs.frozen
class DistInfo:
    """Where this process sits: `rank` of `world_size`, its `local_rank` and training `device`."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA when available; ``cuda`` fails clearly without a GPU."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but torch.cuda.is_available() is False; "
                               "set train.device: cpu (or auto)")
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def init_distributed(requested_device: str = "auto", *, timeout_s: float = 600.0) -> DistInfo:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank)
    if world <= 1:
        return DistInfo(0, 1, 0, device, False)
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, False)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, True)


def shutdown_distributed(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _reduce_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of `values` over all processes (a new CPU float64 tensor; identity in one process)."""
    out = values.detach().to(torch.float64).cpu().clone()
    if _active():
        buf = out.to(_reduce_device())
        dist.all_reduce(buf)
        out = buf.cpu()
    return out


def all_reduce_min(value: int) -> int:
    """The smallest `value` over all processes (every rank gets the same number)."""
    if not _active():
        return int(value)
    buf = torch.tensor([int(value)], dtype=torch.long, device=_reduce_device())
    dist.all_reduce(buf, op=dist.ReduceOp.MIN)
    return int(buf.item())


def broadcast_object(obj, src: int = 0):
    """`obj` from rank `src` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if _active():
        dist.barrier()


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each training forward, and each rank then updates them
    with its own batch; before evaluating or saving, this makes every rank hold rank 0's model.
    """
    if not _active():
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=src)
