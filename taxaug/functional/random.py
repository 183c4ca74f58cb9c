"""Seeded random draws that honour an explicit ``torch.Generator``.

``torch.distributions`` ignores generators, so Beta, Gamma and Dirichlet draws
are built here from uniform and normal draws taken from the caller's
generator. Values are drawn on the generator's device and moved to the
requested device, so a CPU generator can drive a CUDA batch (the result is
then identical on both devices).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taxaug.functional._validate import check_positive

__all__ = ["rand", "randint", "randn", "randperm", "sample_beta", "sample_dirichlet", "sample_gamma"]


def _draw_device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


def rand(
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform draws in [0, 1)."""
    out = torch.rand(tuple(shape), generator=generator, device=_draw_device(generator, device), dtype=dtype)
    return out.to(device) if device is not None else out


def randn(
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal draws."""
    out = torch.randn(tuple(shape), generator=generator, device=_draw_device(generator, device), dtype=dtype)
    return out.to(device) if device is not None else out


def randint(
    high: int | torch.Tensor,
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Integers uniform in [0, high); `high` may be a tensor broadcast against `shape` (per-element bound)."""
    u = rand(shape, generator=generator, device=device, dtype=torch.float64)
    if isinstance(high, torch.Tensor):
        high = high.to(u.device)
    return (u * high).floor().long().clamp_min(0)


def randperm(
    n: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A uniformly random permutation of 0..n-1 (long)."""
    out = torch.randperm(n, generator=generator, device=_draw_device(generator, device))
    return out.to(device) if device is not None else out


def sample_gamma(
    concentration: float | torch.Tensor,
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Gamma(concentration, 1) draws (float32) by Marsaglia and Tsang's method, vectorised.

    Each element gets up to 16 candidate proposals at once (acceptance is
    above 95% per proposal); the rare element still rejected after that is
    redrawn in a short loop, so the result is exact, not truncated.
    """
    shape = tuple(shape)
    conc = torch.as_tensor(concentration, dtype=torch.float64)
    conc = conc.to(_draw_device(generator, device)).expand(shape) if shape else conc
    if bool((conc <= 0).any()):
        raise ValueError(f"concentration must be > 0, got {concentration!r}")
    boosted = conc < 1
    a = torch.where(boosted, conc + 1.0, conc)
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    result = torch.empty(shape, dtype=torch.float64, device=conc.device)
    pending = torch.ones(shape, dtype=torch.bool, device=conc.device)
    candidates = 16
    while bool(pending.any()):
        z = randn((candidates, *shape), generator=generator, dtype=torch.float64)
        u = rand((candidates, *shape), generator=generator, dtype=torch.float64)
        z, u = z.to(conc.device), u.to(conc.device)
        v = (1.0 + c * z) ** 3
        ok = (v > 0) & (torch.log(u.clamp_min(1e-300)) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        first = ok.double().argmax(dim=0, keepdim=True)
        any_ok = ok.any(dim=0)
        value = (d * v).gather(0, first).squeeze(0)
        take = pending & any_ok
        result = torch.where(take, value, result)
        pending = pending & ~any_ok
    if bool(boosted.any()):
        u = rand(shape, generator=generator, dtype=torch.float64).to(conc.device)
        result = torch.where(boosted, result * u.clamp_min(1e-300) ** (1.0 / conc), result)
    out = result.float()
    return out.to(device) if device is not None else out


def sample_beta(
    alpha: float | torch.Tensor,
    beta: float | torch.Tensor | None = None,
    shape: Sequence[int] = (),
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Beta(alpha, beta) draws (beta defaults to alpha), float32."""
    if not isinstance(alpha, torch.Tensor):
        check_positive(alpha, "alpha")
    if beta is None:
        beta = alpha
    elif not isinstance(beta, torch.Tensor):
        check_positive(beta, "beta")
    ga = sample_gamma(alpha, shape, generator=generator)
    gb = sample_gamma(beta, shape, generator=generator)
    out = ga / (ga + gb).clamp_min(torch.finfo(torch.float32).tiny)
    return out.to(device) if device is not None else out


def sample_dirichlet(
    concentration: Sequence[float] | torch.Tensor,
    batch: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(batch, K) Dirichlet draws, rows summing to 1."""
    conc = torch.as_tensor(concentration, dtype=torch.float64)
    if conc.ndim != 1 or conc.numel() == 0:
        raise ValueError(f"concentration must be a non-empty 1-D sequence, got shape {tuple(conc.shape)}")
    g = sample_gamma(conc, (batch, conc.numel()), generator=generator)
    out = g / g.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return out.to(device) if device is not None else out
