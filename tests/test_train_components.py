"""Trainer parts: auto batch size, loss, metrics, heads, AMP/channels_last, learned augmentation, CUDA."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from trainer_helpers import DEMO_CONFIG, tiny_overrides

from taxaug.taxonomy import Taxonomy
from taxaug_train.autobatch import find_batch_size
from taxaug_train.config import ConfigError, ModelConfig, load_config
from taxaug_train.losses import HierarchicalLoss
from taxaug_train.metrics import RankMetrics
from taxaug_train.models import HierarchicalSoftmaxHead, build_model
from taxaug_train.trainer import Trainer


def _tree() -> Taxonomy:
    # species 1..4 -> genus 1,1,2,2 -> family 1,1 ; plus null 0 everywhere
    return Taxonomy.from_labels({"taxa_L10": [1, 2, 3, 4], "taxa_L20": [1, 1, 2, 2], "taxa_L30": [1, 1, 1, 1]})


# ------------------------------------------------------------------------------------------ auto batch


@given(limit=st.integers(1, 600), cap=st.integers(2, 512), even=st.booleans())
def test_find_batch_size_returns_the_largest_fitting_size(limit, cap, even):
    calls = []

    def fits(b):
        calls.append(b)
        return b <= limit

    smallest = 2 if even else 1
    if limit < smallest:
        with pytest.raises(RuntimeError, match="does not fit"):
            find_batch_size(fits, max_batch=cap, even=even)
        return
    got = find_batch_size(fits, max_batch=cap, even=even)
    best = min(limit, cap)
    if even:
        best -= best % 2
    assert got == best
    assert not even or all(b % 2 == 0 for b in calls)
    assert len(calls) <= 2 * (cap.bit_length() + 1)  # doubling then bisection, not a linear scan


def test_auto_batch_follows_the_memory_budget_and_is_even_for_mixed_pairs(tiny_labels, tmp_path, caplog):
    sizes = {}
    # width 16 at 32x32: about 0.75 MiB of saved activations per sample plus ~2 MiB of weights and state
    for budget in (8, 32):
        cfg = load_config(DEMO_CONFIG, tiny_overrides(tiny_labels, tmp_path, **{
            "train.batch_size": "auto", "train.auto_batch_memory_mb": budget, "train.auto_batch_max": 64,
            "model.width": 16, "data.image_size": 32}))
        with caplog.at_level(logging.INFO, logger="taxaug_train"):
            sizes[budget] = Trainer(cfg, write_files=False).batch_size
    assert sizes[8] % 2 == 0 and sizes[32] % 2 == 0
    assert 2 <= sizes[8] < sizes[32] < 64  # the budget, not the cap, decided
    assert sizes[32] > 3 * sizes[8]
    assert f"batch_size auto: {sizes[32]} per process" in caplog.text


def test_auto_batch_with_a_budget_too_small_says_what_to_do(tiny_labels, tmp_path):
    cfg = load_config(DEMO_CONFIG, tiny_overrides(tiny_labels, tmp_path, **{
        "train.batch_size": "auto", "train.auto_batch_memory_mb": 1, "model.width": 64, "data.image_size": 64}))
    with pytest.raises(ConfigError, match="auto_batch_memory_mb"):
        Trainer(cfg, write_files=False)


# ------------------------------------------------------------------------------------------ loss


def test_per_sample_losses_average_to_the_batch_loss():
    tax = _tree()
    loss = HierarchicalLoss(tax, rank_weights={"taxa_L10": 2.0, "taxa_L20": 1.0, "taxa_L30": 0.5})
    g = torch.Generator().manual_seed(0)
    logits = {r: torch.randn(6, k, generator=g) for r, k in tax.num_classes.items()}
    targets = {"taxa_L10": torch.tensor([1, 2, 0, 3, 4, 0]), "taxa_L20": torch.tensor([1, 1, 1, 2, 2, 2]),
               "taxa_L30": torch.ones(6, dtype=torch.long)}
    total, per_rank = loss(logits, targets)
    assert torch.allclose(loss.per_sample(logits, targets).mean(), total)
    expected = (2 * per_rank["taxa_L10"] + per_rank["taxa_L20"] + 0.5 * per_rank["taxa_L30"]) / 3.5
    assert torch.allclose(total, expected)


def test_null_labels_are_masked_out():
    tax = _tree()
    loss = HierarchicalLoss(tax)
    g = torch.Generator().manual_seed(1)
    logits = {r: torch.randn(4, k, generator=g) for r, k in tax.num_classes.items()}
    targets = {"taxa_L10": torch.tensor([1, 0, 3, 0]), "taxa_L20": torch.tensor([1, 1, 2, 2])}
    _, before = loss(logits, targets)
    changed = {r: t.clone() for r, t in logits.items()}
    changed["taxa_L10"][[1, 3]] = torch.randn(2, 5, generator=g) * 10  # null rows: any logits
    _, after = loss(changed, targets)
    assert torch.equal(before["taxa_L10"], after["taxa_L10"])
    known = torch.nn.functional.cross_entropy(logits["taxa_L10"][[0, 2]], torch.tensor([1, 3]))
    assert torch.allclose(before["taxa_L10"], known)


def test_soft_targets_and_taxonomy_smoothing_act_on_mixtures():
    tax = _tree()
    g = torch.Generator().manual_seed(2)
    logits = {"taxa_L10": torch.randn(3, 5, generator=g)}
    a, b = torch.tensor([1, 2, 3]), torch.tensor([2, 1, 4])
    lam = 0.3
    eye = torch.eye(5)
    mixed = {"taxa_L10": lam * eye[a] + (1 - lam) * eye[b]}
    plain = HierarchicalLoss(tax)
    by_parts = lam * plain.per_sample(logits, {"taxa_L10": a}) + (1 - lam) * plain.per_sample(logits, {"taxa_L10": b})
    assert torch.allclose(plain.per_sample(logits, mixed), by_parts, atol=1e-6)
    smoothed = HierarchicalLoss(tax, taxonomy_smoothing=0.2)
    target = tax.smooth(mixed["taxa_L10"], "taxa_L10", 0.2, 1.0)
    manual = -(target * logits["taxa_L10"].log_softmax(1)).sum(1).mean()
    assert torch.allclose(smoothed(logits, mixed)[0], manual, atol=1e-6)


# ------------------------------------------------------------------------------------------ metrics, heads


def test_metrics_top1_top5_and_mistake_severity():
    tax = _tree()
    m = RankMetrics(tax, topk=2)
    # predictions: species 1 (right), 2 for a 1 (sibling: distance 1), 3 for a 1 (cousin: distance 2), null row
    logits = torch.linspace(-5.4, -5.0, 5).repeat(4, 1)  # no ties: class 4 is the second pick by default
    logits[0, 1] = logits[1, 2] = logits[2, 3] = logits[3, 1] = 5.0
    logits[1, 1] = 4.0  # the right answer is second: counts for top-2
    m.update({"taxa_L10": logits}, {"taxa_L10": torch.tensor([1, 1, 1, 0])})
    out = m.compute()["taxa_L10"]
    assert out["n"] == 3
    assert out["top1"] == pytest.approx(1 / 3) and out["top5"] == pytest.approx(2 / 3)
    assert out["severity"] == pytest.approx((1 + 2) / 2)
    assert m.chance()["taxa_L10"] == pytest.approx(1 / 4)


def test_hierarchical_softmax_marginals_are_consistent_with_the_tree():
    tax = _tree()
    head = HierarchicalSoftmaxHead(8, tax)
    out = head(torch.randn(5, 8))
    for k, (fine, coarse) in enumerate([("taxa_L10", "taxa_L20"), ("taxa_L20", "taxa_L30")]):
        summed = out[fine].exp() @ tax.parent_matrix(k)
        assert torch.allclose(summed, out[coarse].exp(), atol=1e-5)
    assert torch.allclose(out["taxa_L10"].exp().sum(1), torch.ones(5), atol=1e-5)


@pytest.mark.parametrize("head", ["flat", "parent_conditioned", "hierarchical_softmax"])
def test_every_head_trains_through_the_metadata_branch(head):
    tax = _tree()
    model = build_model(ModelConfig(width=4, head=head, metadata_branch=True), tax, aux_chunks=[(0, 3), (3, 5)],
                        aux_dim=5)
    out = model(torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8), aux=torch.randn(2, 5),
                aux_mask=torch.tensor([[True, False], [True, True]]))
    assert {r: o.shape for r, o in out.items()} == {r: (2, k) for r, k in tax.num_classes.items()}
    sum(o.sum() for o in out.values()).backward()
    assert model.metadata.net[0].weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ precision, algorithms


def test_bf16_autocast_and_channels_last_on_cpu(tiny_labels, tmp_path):
    cfg = load_config(DEMO_CONFIG, tiny_overrides(tiny_labels, tmp_path, **{
        "train.amp": "bf16", "train.channels_last": True, "train.max_steps": 2, "train.eval_every": 2}))
    trainer = Trainer(cfg, write_files=False)
    formats = []
    step = trainer._train_step

    def spy(batch):
        formats.append(batch.images.is_contiguous(memory_format=torch.channels_last))
        return step(batch)

    trainer._train_step = spy
    summary = trainer.fit()
    assert formats == [True, True]
    assert trainer.model.backbone.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(torch.tensor(summary["val_loss"]))


def test_fp16_on_cpu_is_refused(tiny_labels, tmp_path):
    cfg = load_config(DEMO_CONFIG, tiny_overrides(tiny_labels, tmp_path, **{"train.amp": "fp16"}))
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        Trainer(cfg, write_files=False)


def test_learned_augment_runs_in_the_trainer_and_is_checkpointed(tiny_labels, tmp_path):
    algorithms = [{"name": "learned_augment", "meta_every": 1, "lr": 0.5,
                   "policy": {"num_layers": 1, "ops": {"identity": {}, "rotate": {"min": -30, "max": 30},
                                                       "brightness": {"min": 0.1, "max": 1.9}}}},
                  {"name": "selective_mixup", "group_levels": ["taxa_L20"], "prob": 1.0}]
    overrides = tiny_overrides(tiny_labels, tmp_path / "run", **{"train.max_steps": 2, "train.eval_every": 2})
    overrides.append("algorithms=" + json.dumps(algorithms))
    trainer = Trainer(load_config(DEMO_CONFIG, overrides))
    before = {k: v.clone() for k, v in trainer.engine[0].policy.state_dict().items()}
    trainer.fit()
    after = trainer.engine[0].policy.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "the policy never took a meta step"
    assert trainer.group_rank == "taxa_L20"  # the sampler pairs at the mixing level
    payload = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert "0.learned_augment" in payload["engine"]["algorithms"]


def test_mixing_gets_the_dataset_metadata_layout(tiny_labels, tmp_path):
    cfg = load_config(DEMO_CONFIG, tiny_overrides(tiny_labels, tmp_path))
    trainer = Trainer(cfg, write_files=False)
    mixer = trainer.engine[1]
    assert mixer.config()["aux_components"] == [["spatial", 3], ["temporal", 2], ["elevation_multiscale", 6]]


# ------------------------------------------------------------------------------------------ CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_training_augments_on_the_gpu(tiny_labels, tmp_path, amp):
    cfg = load_config(DEMO_CONFIG, tiny_overrides(tiny_labels, tmp_path, **{
        "train.device": "cuda", "train.amp": amp, "train.channels_last": True, "train.max_steps": 3,
        "train.eval_every": 3, "train.deterministic": False}))
    trainer = Trainer(cfg, write_files=False)
    devices = []
    run = trainer.engine.run

    def spy(event, state):
        out = run(event, state)
        if event.name == "AFTER_DATALOADER":
            devices.append(state.batch.images.device.type)
        return out

    trainer.engine.run = spy
    summary = trainer.fit()
    assert devices == ["cuda"] * 3
    assert torch.isfinite(torch.tensor(summary["val_loss"]))


@pytest.mark.cuda
def test_cuda_auto_batch_size_is_even_and_bounded(tiny_labels, tmp_path):
    cfg = load_config(DEMO_CONFIG, tiny_overrides(tiny_labels, tmp_path, **{
        "train.device": "cuda", "train.batch_size": "auto", "train.auto_batch_max": 64}))
    size = Trainer(cfg, write_files=False).batch_size
    assert size % 2 == 0 and 2 <= size <= 64


# ------------------------------------------------------------------------------------------ example configs


@pytest.mark.parametrize("name", ["demo.yaml", "demo_learned.yaml", "example_own_data.yaml"])
def test_example_configs_validate_and_build_their_algorithms(name, monkeypatch):
    from taxaug.algorithms import from_config

    monkeypatch.chdir(DEMO_CONFIG.parent.parent)  # policy paths are relative to the repository root
    cfg = load_config(DEMO_CONFIG.parent / name)
    algorithms = from_config(cfg.algorithms)
    assert [a.name for a in algorithms] == [entry["name"] for entry in cfg.algorithms]


def test_interpolated_loss_and_taxonomy_smoothing_run_through_the_loss_fn(tiny_labels, tmp_path):
    # grouped by genus, so a partner is usually another species: its labels must enter the loss
    algorithms = [{"name": "selective_mixup", "group_levels": ["taxa_L20"], "prob": 1.0, "interpolate_loss": True},
                  {"name": "taxonomy_label_smoothing", "alpha": 0.1}]
    overrides = tiny_overrides(tiny_labels, tmp_path, **{"train.max_steps": 2, "train.eval_every": 2})
    overrides.append("algorithms=" + json.dumps(algorithms))
    trainer = Trainer(load_config(DEMO_CONFIG, overrides), write_files=False)
    losses = []
    run = trainer.engine.run

    def spy(event, state):
        out = run(event, state)
        if event.name == "AFTER_LOSS":
            own = trainer.loss.per_sample(state.outputs, state.batch.targets).mean()
            info = state.scratch["0.selective_mixup"]
            other_species = bool((state.batch.targets["taxa_L10"].argmax(1)
                                  != state.batch.targets["taxa_L10"].argmax(1)[info["perm"]]).any())
            losses.append((float(state.loss.detach()), float(own.detach()), info["mixed"] and other_species))
        return out

    trainer.engine.run = spy
    trainer.fit()
    assert len(losses) == 2
    for replaced, own_targets_only, mixed in losses:
        assert mixed
        assert replaced != pytest.approx(own_targets_only)  # the partner's share entered the loss


def pooled_backbone(channels: int = 6) -> torch.nn.Module:
    """A user backbone for the factory test: images -> (B, channels)."""
    return torch.nn.Sequential(torch.nn.Conv2d(3, channels, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten())


def test_user_backbone_through_the_factory(tiny_labels, tmp_path):
    cfg = load_config(DEMO_CONFIG, tiny_overrides(tiny_labels, tmp_path, **{
        "model.backbone": "test_train_components:pooled_backbone", "model.backbone_kwargs": {"channels": 5},
        "train.max_steps": 1, "train.eval_every": 1}))
    trainer = Trainer(cfg, write_files=False)
    assert isinstance(trainer.model.backbone, torch.nn.Sequential)
    assert trainer.model.head.fc["taxa_L30"].in_features == 5 + cfg.model.metadata_hidden
    assert torch.isfinite(torch.tensor(trainer.fit()["val_loss"]))


@pytest.mark.parametrize(("spec", "message"), [
    ("resnet", "unknown backbone 'resnet'"),
    ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
    ("torch.nn:Identity", r"must return \(B, features\) pooled features"),
])
def test_bad_backbones_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        build_model(ModelConfig(backbone=spec), _tree(), image_size=16)
