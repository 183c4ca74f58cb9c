"""HierarchicalLoss paths (index gather vs dense, structured smoothing) and the linear-size parent_conditioned head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taxaug import Taxonomy
from taxaug_train.config import ConfigError, ModelConfig, load_config
from taxaug_train.losses import HierarchicalLoss
from taxaug_train.models import ParentConditionedHead, build_model
from tests.test_taxonomy_scale import dense_smoothing


def _tree() -> Taxonomy:
    # species 1..6 -> genera 1..3 (species 6 has no genus) -> families 1..2
    return Taxonomy(["s", "g", "f"], {"s": 7, "g": 4, "f": 3}, [[0, 1, 1, 2, 2, 3, 0], [0, 1, 1, 2]])


def test_index_targets_take_the_gather_path_with_the_dense_result():
    tax = _tree()
    g = torch.Generator().manual_seed(0)
    logits = {r: torch.randn(6, k, generator=g, requires_grad=True) for r, k in tax.num_classes.items()}
    targets = {"s": torch.tensor([1, 0, 3, 6, 2, 0]), "g": torch.tensor([1, 0, 2, 0, 1, 1])}
    dense = {r: torch.nn.functional.one_hot(t, tax.num_classes[r]).float() for r, t in targets.items()}
    loss = HierarchicalLoss(tax)
    by_index, by_dense = loss.per_sample(logits, targets), loss.per_sample(logits, dense)
    assert torch.allclose(by_index, by_dense, atol=1e-6)
    grads = torch.autograd.grad(by_index.mean(), [logits["s"]])[0], torch.autograd.grad(by_dense.mean(), [logits["s"]])[0]
    assert torch.allclose(*grads, atol=1e-7)
    assert torch.equal(grads[0][1], torch.zeros(7))  # a null sample trains nothing
    with pytest.raises(ValueError, match=r"targets\['s'\] holds indices outside \[0, 7\)"):
        loss(logits, {"s": torch.tensor([1, 7, 0, 0, 0, 0])})


def test_taxonomy_smoothing_in_the_loss_equals_the_dense_matrix():
    tax = _tree()
    g = torch.Generator().manual_seed(1)
    logits = {"s": torch.randn(4, 7, generator=g)}
    target = torch.tensor([1, 3, 6, 5])
    loss = HierarchicalLoss(tax, taxonomy_smoothing=0.2, taxonomy_smoothing_beta=1.5)
    smoothed = torch.nn.functional.one_hot(target, 7).double() @ dense_smoothing(tax, 0, 0.2, 1.5)
    manual = -(smoothed.float() * logits["s"].log_softmax(1)).sum(1).mean()
    assert torch.allclose(loss(logits, {"s": target})[0], manual, atol=1e-6)


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("embedding", [0, 8, 16])
def test_parent_conditioned_head_grows_linearly_in_the_classes(embedding):
    n_species, n_genus, n_family, features = 3001, 1001, 11, 16
    rng = np.random.default_rng(0)
    tax = Taxonomy(["s", "g", "f"], {"s": n_species, "g": n_genus, "f": n_family},
                   [np.r_[0, rng.integers(1, n_genus, n_species - 1)], np.r_[0, rng.integers(1, n_family, n_genus - 1)]])
    head = ParentConditionedHead(features, tax, embedding=embedding)
    linear = (features + 1) * (n_species + n_genus + n_family)
    # species see genera through a (1001, d) embedding; genera see the 11 families as they are when d >= 11
    genus_input = n_family if embedding >= n_family else embedding
    embed = embedding * (n_species + n_genus) + genus_input * n_genus + (n_family * embedding if embedding < n_family
                                                                         else 0)
    assert _params(head) == linear + embed + 2  # + one prior scale per rank transition
    assert ("g" in head.embed) == (0 < embedding < n_family)
    out = head(torch.randn(5, features))
    assert {r: tuple(o.shape) for r, o in out.items()} == {"s": (5, n_species), "g": (5, n_genus), "f": (5, n_family)}
    sum(o.logsumexp(1).sum() for o in out.values()).backward()
    assert head.prior_scale.grad is not None and bool(torch.isfinite(head.prior_scale.grad).all())


def test_parent_embedding_config_key_reaches_the_head(tmp_path):
    tax = _tree()
    model = build_model(ModelConfig(width=4, head="parent_conditioned", parent_embedding=3), tax)
    assert model.head.embed["s"].weight.shape == (3, 4)  # 4 genera -> width 3
    assert "g" not in model.head.embed and model.head.fc["g"].in_features == 16 + 3  # 3 families fed as they are
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {parent_embedding: -1}\n")
    with pytest.raises(ConfigError, match="parent_embedding"):
        load_config(cfg)
