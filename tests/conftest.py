"""Shared test configuration: hypothesis profiles and small fixtures."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# "ci" is derandomised and bounded so the whole suite stays fast and
# reproducible; "dev" explores more. CI=true selects "ci"; TAXAUG_HYPOTHESIS
# overrides.
settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("TAXAUG_HYPOTHESIS", "ci" if os.environ.get("CI") else "dev"))

# Test tensors are tiny: one intra-op thread avoids OpenMP start-up and oversubscription,
# which made small ops 20-40x slower on the shared 2-core machines.
torch.set_num_threads(1)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(scope="session")
def tiny_labels(tmp_path_factory):
    """The tiny demo dataset (2x2x2 taxonomy, 16 px images) shared by the trainer tests; read-only:
    a test that damages files makes its own copy (trainer_helpers.make_tiny_demo)."""
    from trainer_helpers import make_tiny_demo

    return make_tiny_demo(tmp_path_factory.mktemp("tiny_demo"))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)
