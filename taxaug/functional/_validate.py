"""Input checks shared by the functional core.

Every check raises early with a message that names the argument, what was
expected and what was received, so a user can fix the call without reading
the source.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
IMAGE_DTYPES = (torch.uint8, *FLOAT_DTYPES)


def describe(x: object) -> str:
    """Short description of a value for error messages (shape and dtype for tensors)."""
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype} on {x.device}"
    return f"{type(x).__name__} {x!r}"


def check_tensor(x: object, name: str) -> torch.Tensor:
    """A tensor holding data: meta tensors (shape only) are refused by name, before any op touches them."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {describe(x)}")
    if x.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (a shape without data); move it to a real device "
                         f"(cpu, cuda) first")
    return x


def check_generator(generator: object, name: str = "generator") -> torch.Generator | None:
    """None or a torch.Generator (an int seed is not accepted: seed one with torch.Generator().manual_seed)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {describe(generator)}; pass "
                        f"torch.Generator().manual_seed(seed) to seed the draws")
    return generator


def _byte_span(x: torch.Tensor) -> tuple[int, int]:
    """[first, last) bytes a tensor's elements can touch (its strided extent)."""
    if x.numel() == 0:
        return x.data_ptr(), x.data_ptr()
    extent = sum((size - 1) * abs(stride) for size, stride in zip(x.shape, x.stride())) + 1
    return x.data_ptr(), x.data_ptr() + extent * x.element_size()


def check_no_overlap(out: torch.Tensor, x: torch.Tensor, out_name: str = "out", x_name: str = "images") -> None:
    """Refuse an output buffer sharing any memory span with an input (inputs are never mutated).

    Compares the strided byte extents, so two interleaved views that never touch the same element
    are refused as well: pass a separate buffer.
    """
    if out.device != x.device:
        return
    a0, a1 = _byte_span(out)
    b0, b1 = _byte_span(x)
    if a0 < b1 and b0 < a1:
        how = "is" if (a0, a1) == (b0, b1) else "partly overlaps"
        raise ValueError(f"{out_name} {how} the memory of {x_name}; writing there would corrupt the input "
                         f"(inputs are never mutated): pass a separate buffer or out=None")


def check_images(x: object, name: str = "images") -> torch.Tensor:
    """A (B, C, H, W) batch of uint8 or floating images."""
    x = check_tensor(x, name)
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {describe(x)}")
    if x.dtype not in IMAGE_DTYPES:
        raise TypeError(
            f"{name} must be uint8 or floating ({', '.join(str(d) for d in FLOAT_DTYPES)}), got {describe(x)}"
        )
    return x


def check_group_ids(group_ids: object, batch_size: int | None = None, name: str = "group_ids") -> torch.Tensor:
    """A 1-D long tensor of group ids, -1 meaning "never mix"."""
    g = check_tensor(group_ids, name)
    if g.dtype != torch.long:
        raise TypeError(f"{name} must be a long (int64) tensor, got {describe(g)}; call .long() first")
    if g.ndim != 1:
        raise ValueError(f"{name} must be 1-D of shape (B,), got {describe(g)}")
    if batch_size is not None and g.shape[0] != batch_size:
        raise ValueError(f"{name} has {g.shape[0]} entries but the batch has {batch_size} samples")
    return g


def check_probability(value: object, name: str) -> float:
    if not isinstance(value, Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number in [0, 1], got {describe(value)}")
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {v}")
    return v


def check_positive(value: object, name: str) -> float:
    if not isinstance(value, Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a positive real number, got {describe(value)}")
    v = float(value)
    if not v > 0.0:
        raise ValueError(f"{name} must be > 0, got {v}")
    return v


def check_lam(lam: object, batch_size: int, device: torch.device, name: str = "lam") -> torch.Tensor:
    """lam as a float (one per batch) or a (B,) tensor (one per sample), all in [0, 1].

    Returns a float32 (B,) tensor on `device`. Range checks on a tensor need a
    host sync, so they only run for tensors on the CPU; a CUDA lam is trusted.
    """
    if isinstance(lam, torch.Tensor):
        if lam.ndim == 0:
            lam = lam.reshape(1).expand(batch_size)
        if lam.ndim != 1 or lam.shape[0] != batch_size:
            raise ValueError(f"{name} must be a float or a tensor of shape ({batch_size},), got {describe(lam)}")
        if not lam.is_floating_point():
            raise TypeError(f"{name} must be floating, got {describe(lam)}")
        if lam.device.type == "cpu" and bool(((lam < 0) | (lam > 1) | lam.isnan()).any()):
            bad = lam[(lam < 0) | (lam > 1) | lam.isnan()][:3].tolist()
            raise ValueError(f"{name} must lie in [0, 1], got values such as {bad}")
        return lam.to(device=device, dtype=torch.float32)
    value = check_probability(lam, name)
    return torch.full((batch_size,), value, device=device, dtype=torch.float32)


def check_targets(targets: object, batch_size: int, name: str = "targets") -> Mapping[str, torch.Tensor]:
    """A dict task -> class indices (B,) long or dense probabilities (B, K) float."""
    if not isinstance(targets, Mapping):
        raise TypeError(f"{name} must be a dict mapping task name to a tensor, got {describe(targets)}")
    for key, t in targets.items():
        t = check_tensor(t, f"{name}[{key!r}]")
        if t.ndim == 1:
            if t.dtype not in (torch.long, torch.int32, torch.int16, torch.uint8):
                raise TypeError(f"{name}[{key!r}] as class indices must be an integer tensor, got {describe(t)}")
        elif t.ndim == 2:
            if not t.is_floating_point():
                raise TypeError(f"{name}[{key!r}] as dense probabilities must be floating, got {describe(t)}")
        else:
            raise ValueError(f"{name}[{key!r}] must be indices (B,) or probabilities (B, K), got {describe(t)}")
        if t.shape[0] != batch_size:
            raise ValueError(f"{name}[{key!r}] has batch size {t.shape[0]} but the images have {batch_size}")
    return targets
