"""Seeded draws: distributions match their moments and honour the generator."""

from __future__ import annotations

import pytest
import torch

from taxaug import functional as F


@pytest.mark.parametrize(("a", "b"), [(0.2, 0.2), (1.0, 1.0), (2.0, 5.0)])
def test_beta_moments(a, b):
    x = F.sample_beta(a, b, shape=(40_000,), generator=torch.Generator().manual_seed(0))
    mean, var = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    assert abs(float(x.mean()) - mean) < 0.01
    assert abs(float(x.var()) - var) < 0.01
    assert bool(((x >= 0) & (x <= 1)).all())


@pytest.mark.parametrize("k", [0.3, 1.0, 4.0])
def test_gamma_moments(k):
    x = F.sample_gamma(k, (40_000,), generator=torch.Generator().manual_seed(1))
    assert abs(float(x.mean()) - k) < 0.05 * max(k, 1)
    assert abs(float(x.var()) - k) < 0.1 * max(k, 1)


def test_dirichlet_rows_sum_to_one_and_match_mean():
    x = F.sample_dirichlet([1.0, 2.0, 3.0], 20_000, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(x.sum(1), torch.ones(20_000), atol=1e-5)
    assert torch.allclose(x.mean(0), torch.tensor([1 / 6, 2 / 6, 3 / 6]), atol=0.01)


def test_same_generator_state_same_draws():
    a = F.sample_beta(0.4, shape=(5,), generator=torch.Generator().manual_seed(3))
    b = F.sample_beta(0.4, shape=(5,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(F.randperm(9, generator=torch.Generator().manual_seed(4)),
                       F.randperm(9, generator=torch.Generator().manual_seed(4)))


def test_randint_respects_per_element_bounds():
    high = torch.tensor([1, 2, 5, 100])
    x = F.randint(high, (1000, 4), generator=torch.Generator().manual_seed(5))
    assert bool(((x >= 0) & (x < high)).all())
    assert x[:, 3].unique().numel() > 50


def test_bad_concentration():
    with pytest.raises(ValueError, match="concentration must be > 0"):
        F.sample_gamma(-1.0, (3,))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        F.sample_dirichlet([], 3)
