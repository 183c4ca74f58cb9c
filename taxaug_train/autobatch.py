"""``batch_size: auto``: the largest batch whose training step fits in memory.

`find_batch_size` searches with a `fits(batch_size) -> bool` probe: doubling from the smallest
size until a probe fails or the cap is reached, then a binary search between the last size that
fit and the first that did not. With ``even=True`` (the ``mixed-pairs`` sampler) only even sizes
are tried. `training_step_probe` builds that probe for a model: one forward and backward pass on
a synthetic batch of the run's image size, dtype, memory format and precision, on a copy of the
model (the real one keeps its weights, gradients and BatchNorm statistics).

- CUDA: a probe fits when it raises no out-of-memory error and its peak allocation, plus the
  optimizer state, stays within the budget (default: 90% of the device's memory, so the
  allocator has headroom).
- CPU: there is no out-of-memory signal worth waiting for (the machine swaps first), so the
  probe measures the bytes the step really holds: the tensors autograd saves for backward
  (counted through ``torch.autograd.graph.saved_tensors_hooks``), the batch, the weights, their
  gradients and the optimizer state, and compares them with ``train.auto_batch_memory_mb``
  (default: a quarter of the machine's physical memory). Those bytes are linear in the batch
  size, so two steps of 2 and 4 images measure them for every size.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["default_cpu_budget", "find_batch_size", "step_bytes", "training_step_probe"]

log = logging.getLogger("taxaug_train")


def find_batch_size(fits: Callable[[int], bool], *, max_batch: int, even: bool = False, min_batch: int | None = None
                    ) -> int:
    """Largest batch size in [min_batch, max_batch] for which `fits` holds (assumed monotone)."""
    unit = 2 if even else 1
    low = max(min_batch or unit, unit)
    if even and low % 2:
        low += 1
    top = max_batch - (max_batch % unit)
    if top < low:
        raise ValueError(f"auto batch size: the cap {max_batch} is below the smallest allowed size {low}")
    if not fits(low):
        raise RuntimeError(f"auto batch size: even a batch of {low} does not fit in memory; use a smaller "
                           "image size or model, or raise train.auto_batch_memory_mb")
    good = low
    bad = None
    while bad is None:
        nxt = min(good * 2, top)
        if nxt == good:
            return good
        if fits(nxt):
            good = nxt
        else:
            bad = nxt
    while bad - good > unit:  # invariant: good fits, bad does not, both multiples of unit
        mid = (good + bad) // 2
        mid -= mid % unit
        if mid <= good:
            break
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def default_cpu_budget() -> int:
    """A quarter of physical memory, in bytes."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 4 << 30


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _synthetic_batch(batch_size: int, image_size: int, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8, device=device)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def step_bytes(model: nn.Module, forward: Callable[[nn.Module, torch.Tensor], torch.Tensor], images: torch.Tensor
               ) -> int:
    """Bytes one training step on `images` holds beyond the weights: saved activations and the batch."""
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += _nbytes(t)
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = forward(model, images)
        loss.backward()
    finally:
        model.zero_grad(set_to_none=True)
    return saved + _nbytes(images) * 4  # uint8 batch, its float copy


def training_step_probe(
    model: nn.Module,
    *,
    image_size: int,
    device: torch.device,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    optimizer_state_factor: float = 2.0,
    budget_bytes: int | None = None,
    channels_last: bool = False,
) -> Callable[[int], bool]:
    """`fits(batch_size)` for `model`; `forward(model, images) -> scalar loss` runs one step's forward.

    On CPU a step's bytes are linear in the batch size (every saved activation has the batch as its
    leading dimension; weights are constant), so two small steps (batches of 2 and 4) give the line
    and every other size is answered from it without running it: the search takes a second, not
    minutes of probing 1024-image batches on a few cores.
    """
    params = sum(_nbytes(p) for p in model.parameters())
    fixed = int(params * (2.0 + optimizer_state_factor))  # weights, grads, optimizer moments
    probe_model = copy.deepcopy(model).to(device)
    probe_model.train()
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        budget = budget_bytes if budget_bytes is not None else int(total * 0.9)
        return _cuda_probe(probe_model, forward, image_size, device, channels_last, fixed, budget)
    budget = budget_bytes if budget_bytes is not None else default_cpu_budget()
    two, four = (step_bytes(probe_model, forward, _synthetic_batch(b, image_size, device, channels_last))
                 for b in (2, 4))
    per_sample = max((four - two) / 2, 1.0)
    base = two - 2 * per_sample + fixed
    log.info("batch_size auto (CPU): %.2f MiB per sample + %.1f MiB fixed, budget %.0f MiB", per_sample / 2**20,
             base / 2**20, budget / 2**20)
    return lambda batch_size: base + per_sample * batch_size <= budget


def _cuda_probe(probe_model: nn.Module, forward: Callable[[nn.Module, torch.Tensor], torch.Tensor], image_size: int,
                device: torch.device, channels_last: bool, fixed: int, budget: int) -> Callable[[int], bool]:
    results: dict[int, bool] = {}

    def fits(batch_size: int) -> bool:
        if batch_size in results:
            return results[batch_size]
        images = _synthetic_batch(batch_size, image_size, device, channels_last)
        ok, used = True, 0
        try:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            step_bytes(probe_model, forward, images)
            torch.cuda.synchronize(device)
            used = torch.cuda.max_memory_allocated(device) - base + fixed
            ok = used <= budget
        except torch.cuda.OutOfMemoryError:
            ok = False
        finally:
            del images
            torch.cuda.empty_cache()
        log.info("batch_size auto probe: %d -> %s (%.0f MiB of %.0f MiB)", batch_size, "fits" if ok else "too big",
                 used / 2**20, budget / 2**20)
        results[batch_size] = ok
        return ok

    return fits
