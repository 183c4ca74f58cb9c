"""LearnedAugment: config and bounds, hypergradients, flat memory, unlearning a harmful op, export."""

from __future__ import annotations

import gc
import json
import math
import resource
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import taxaug.functional as F
from taxaug.algorithms import Engine, Event, State, create, from_config, to_config
from taxaug.algorithms.learned import (
    DEFAULT_BOUNDS,
    AugmentPolicy,
    FixedPolicy,
    LearnedAugment,
    MetaLearner,
    PolicyConfig,
    UniformAugment,
    meta_gradients,
)
from taxaug.functional.batch import MixBatch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids thread-pool spinning on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(channels: int = 3, size: int = 12, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * size * size, classes),
    )


def batch(gen: torch.Generator, n: int = 16, size: int = 12, classes: int = 3):
    # low-contrast, skewed levels on the 8-bit grid so equalize/autocontrast/posterize all change them
    x = torch.round((0.2 + 0.6 * F.rand((n, 3, size, size), generator=gen) ** 2) * 255) / 255
    return x, F.randint(classes, (n,), generator=gen)


def orientation_data(gen: torch.Generator, n: int, size: int = 8):
    """Class 0: bright top half, class 1: bright bottom half (vflip swaps the labels; hflip keeps them)."""
    y = F.randint(2, (n,), generator=gen)
    rows = torch.arange(size).view(1, size, 1)
    top = (rows < size // 2).float()
    blob = torch.where(y.view(-1, 1, 1) == 0, top, 1 - top).unsqueeze(1)
    strength = 0.3 + 0.3 * F.rand((n, 1, 1, 1), generator=gen)
    x = (0.3 * F.rand((n, 1, size, size), generator=gen) + strength * blob).clamp(0, 1)
    return torch.round(x * 255).to(torch.uint8), y


# ----------------------------------------------------------------------------- config


def test_default_config_has_every_op_with_the_documented_bounds():
    cfg = PolicyConfig.from_dict({})
    assert cfg.names == F.DIFF_OP_NAMES
    bounds = {o.name: (o.low, o.high) for o in cfg.ops if o.has_magnitude}
    assert bounds["rotate"] == (-30, 30) and bounds["translate_x"] == (-20, 20)
    assert bounds["shear_y"] == (-0.3, 0.3) and bounds["sharpness"] == (0.1, 1.9)
    assert bounds["posterize"] == (4, 8) and bounds["solarize"] == (1, 256)
    assert {n: b for n, b in DEFAULT_BOUNDS.items() if b is not None} == bounds


def test_yaml_and_json_configs_load(tmp_path):
    cfg = PolicyConfig.load(REPO / "configs" / "learned_augment.yaml")
    assert "vflip" not in cfg.names and cfg.num_layers == 2
    tx = next(o for o in cfg.ops if o.name == "translate_x")
    assert tx.unit == "fraction" and tx.high == 0.2
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"ops": {"rotate": [-10, 10], "hflip": {}}, "num_layers": 1}))
    cfg = PolicyConfig.load(path)
    assert cfg.names == ("rotate", "hflip") and cfg.ops[0].init == 5.0
    assert PolicyConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("config", "error", "match"),
    [
        ({"ops": {"rotate": {"min": 30, "max": -30}}}, ValueError, r"min \(30.0\) is greater than max"),
        ({"ops": ["rotate", "blur"]}, ValueError, "unknown op 'blur'.*known ops: identity"),
        ({"ops": {"rotate": {"maximum": 3}}}, ValueError, r"unknown key\(s\) \['maximum'\]"),
        ({"ops": {"rotate": {"min": -5, "max": 5, "init": 9}}}, ValueError, "init .* strictly inside"),
        ({"ops": {"posterize": {"min": 2, "max": 9}}}, ValueError, "valid range"),
        ({"ops": {"posterize": {"random_sign": True}}}, ValueError, "random_sign only applies"),
        ({"ops": {"hflip": {"min": 0, "max": 1}}}, ValueError, "has no magnitude"),
        ({"ops": {"rotate": {"unit": "fraction"}}}, ValueError, "only applies to translate"),
        ({"ops": {"rotate": {"min": "a"}}}, TypeError, "rotate.min must be a finite number"),
        ({"ops": []}, ValueError, "at least one op"),
        ({"layers": 2}, ValueError, r"unknown policy config key\(s\) \['layers'\]"),
        ({"num_layers": 0}, ValueError, "num_layers"),
    ],
)
def test_bad_configs_fail_with_clear_errors(config, error, match):
    with pytest.raises(error, match=match):
        PolicyConfig.from_dict(config)


@given(
    low=st.floats(-40, 40), width=st.floats(0.01, 40), init_at=st.floats(0.01, 0.99),
    theta=st.floats(-1e4, 1e4),
)
def test_magnitudes_start_at_init_and_never_leave_their_bounds(low, width, init_at, theta):
    high = low + width
    init = low + init_at * width
    policy = AugmentPolicy({"ops": {"rotate": {"min": low, "max": high, "init": init}}, "num_layers": 1})
    assert policy.magnitudes()[0].item() == pytest.approx(init, rel=1e-4, abs=1e-4 * width)
    with torch.no_grad():
        policy.magnitude_logits.fill_(theta)
    m = policy.magnitudes()[0].item()
    assert low - 1e-4 <= m <= high + 1e-4
    exported = FixedPolicy.from_dict(policy.export_policy().to_dict()).magnitudes[0]
    assert low <= exported <= high  # clamped: float32 rounding may put m a hair outside
    assert exported == pytest.approx(m, abs=1e-5 * max(1.0, abs(low), abs(high)))


def test_missing_config_file_and_bad_algorithm_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PolicyConfig.load(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="meta_every"):
        create("learned_augment", meta_every=0)
    with pytest.raises(ValueError, match="validation"):
        create("learned_augment", validation="test_set")


# ----------------------------------------------------------------------------- hypergradients


@pytest.mark.parametrize("hard", [False, True])
def test_every_logit_and_learnable_magnitude_gets_a_finite_nonzero_hypergradient(gen, hard):
    policy = AugmentPolicy({"hard": hard, "num_layers": 2})
    n = 96 if hard else 16
    x, y = batch(gen, n)
    model = tiny_model()
    grads, train_loss, val_loss, augmented = meta_gradients(
        policy, model, nn.functional.cross_entropy, (x[: n // 2], y[: n // 2]), (x[n // 2:], y[n // 2:]),
        inner_lr=0.5, generator=gen,
    )
    learnable = torch.tensor([o.learnable for o in policy.config.ops])
    for name, g in grads.items():
        assert torch.isfinite(g).all(), name
    assert (grads["op_logits"].abs() > 0).all(), grads["op_logits"]
    mag = grads["magnitude_logits"]
    assert (mag[learnable].abs() > 0).all(), dict(zip(policy.ops, mag.tolist()))
    assert (mag[~learnable] == 0).all()
    assert augmented.grad_fn is None and train_loss.grad_fn is None and val_loss.grad_fn is None


def test_meta_gradients_match_a_finite_difference(gen):
    """The torch.func hypergradient is the derivative of the post-step validation loss."""
    policy = AugmentPolicy({"ops": ["brightness", "contrast"], "num_layers": 1, "hard": False})
    x, y = batch(gen, 16)
    # smooth activations: with ReLU the inner gradient jumps where a unit switches, and a finite
    # difference straddling such a switch measures the jump, not the derivative
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(6 * 144, 3))
    noise = policy.draw_noise(8, generator=gen)
    args = (model, nn.functional.cross_entropy, (x[:8], y[:8]), (x[8:], y[8:]))
    grads, *_ = meta_gradients(policy, *args, inner_lr=1.0, noise=noise)

    def val_loss() -> float:
        return float(meta_gradients(policy, *args, inner_lr=1.0, noise=noise)[2])

    eps = 1e-3
    with torch.no_grad():
        policy.magnitude_logits[0] += eps
        up = val_loss()
        policy.magnitude_logits[0] -= 2 * eps
        down = val_loss()
        policy.magnitude_logits[0] += eps
    numeric = (up - down) / (2 * eps)
    assert math.isclose(float(grads["magnitude_logits"][0]), numeric, rel_tol=0.05, abs_tol=1e-6)


def test_meta_step_leaves_the_model_untouched_and_moves_the_policy(gen):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    learner = MetaLearner(AugmentPolicy({"num_layers": 1, "hard": False}), lr=0.1, inner_lr=0.5)
    logits = learner.policy.op_logits.detach().clone()
    x, y = batch(gen)
    result = learner.meta_step(model, nn.functional.cross_entropy, (x[:8], y[:8]), (x[8:], y[8:]), generator=gen)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"meta step changed model {k}"
    assert not torch.equal(learner.policy.op_logits.detach(), logits)
    assert torch.isfinite(result.val_loss) and result.grad_norm > 0
    assert all(p.grad is None for p in learner.policy.parameters())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc")
def test_memory_stays_flat_over_200_meta_steps(gen):
    """Resident memory after 200 meta steps is within 8 MiB of where it was after 30, and no autograd graph
    survives a step. A graph kept alive per step would add ~0.5 MiB each (>80 MiB over the run)."""
    gc.collect()
    before = {id(t) for t in _graph_tensors()}  # tensors other tests left alive are not this test's concern
    model = tiny_model(size=12)
    learner = MetaLearner(AugmentPolicy({"num_layers": 2}), lr=0.05, inner_lr=0.1)
    x, y = batch(gen, 32)
    train, val = (x[:16], y[:16]), (x[16:], y[16:])
    samples = []
    for step in range(200):
        learner.meta_step(model, nn.functional.cross_entropy, train, val, generator=gen)
        if step >= 30 and step % 10 == 0:
            samples.append(_rss_bytes())
    gc.collect()
    samples.append(_rss_bytes())
    growth = max(samples) - samples[0]
    assert growth < 8 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB over 170 meta steps"
    live_graphs = [t for t in _graph_tensors() if id(t) not in before]
    assert not live_graphs, f"{len(live_graphs)} tensors still hold an autograd graph"


def _graph_tensors() -> list[torch.Tensor]:
    with warnings.catch_warnings():  # isinstance() on some torch module objects warns about deprecations
        warnings.simplefilter("ignore")
        return [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.grad_fn is not None]


@pytest.mark.cuda
def test_cuda_memory_stays_flat_over_200_meta_steps():
    gen = torch.Generator(device="cuda").manual_seed(0)
    model = tiny_model().cuda()
    learner = MetaLearner(AugmentPolicy({"num_layers": 2}).cuda(), lr=0.05, inner_lr=0.1)
    x, y = batch(torch.Generator().manual_seed(0), 32)
    x, y = x.cuda(), y.cuda()
    peaks = []
    for step in range(200):
        learner.meta_step(model, nn.functional.cross_entropy, (x[:16], y[:16]), (x[16:], y[16:]), generator=gen)
        if step in (30, 199):
            peaks.append(torch.cuda.max_memory_allocated())
    assert peaks[1] - peaks[0] < 2**20


# ----------------------------------------------------------------------------- the harmful op


def test_a_label_destroying_op_is_unlearned_while_a_harmless_one_is_kept():
    """Orientation classes: vflip swaps them, hflip does not. Through the engine, meta step every step,
    validation split of each batch: vflip's probability must fall far below its uniform start (0.2)."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ops = {"identity": {}, "hflip": {}, "vflip": {}, "brightness": {}, "contrast": {}}
    algo = create("learned_augment", policy={"ops": ops, "num_layers": 1}, meta_every=1, lr=0.05)
    engine = Engine([algo], seed=0)

    def loss_fn(out, targets):
        return nn.functional.cross_entropy(out, targets["y"], reduction="none")

    state = State(model=model, optimizer=optimizer, loss_fn=loss_fn, max_steps=150)
    start = algo.policy.probabilities().detach().clone()
    for step in range(150):
        x, y = orientation_data(gen, 64)
        state.step = step
        state.batch = MixBatch(images=x, targets={"y": y})
        engine.run(Event.AFTER_DATALOADER, state)
        assert state.batch.images.dtype == torch.uint8
        loss = loss_fn(model(state.batch.images.float() / 255), state.batch.targets).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    p = dict(zip(algo.policy.ops, algo.policy.probabilities().tolist()))
    assert torch.allclose(start, torch.full((5,), 0.2))
    assert p["vflip"] < 0.05, p
    assert p["hflip"] > 0.15, p
    assert algo.meta_steps == 150 and len(algo.history) == 150
    assert algo.history[-1]["policy"]["vflip"]["p"] == pytest.approx(p["vflip"])
    x, y = orientation_data(gen, 256)
    assert (model(x.float() / 255).argmax(1) == y).float().mean() > 0.95


# ----------------------------------------------------------------------------- export and baselines


def test_exported_policy_reproduces_the_learned_distribution(gen):
    ops = {"identity": {}, "hflip": {}, "vflip": {}, "brightness": {"min": 0.3, "max": 0.9, "random_sign": False}}
    policy = AugmentPolicy({"ops": ops, "num_layers": 1})
    with torch.no_grad():
        policy.op_logits.copy_(torch.tensor([1.0, 0.0, -1.0, 0.5]))
        policy.magnitude_logits.fill_(0.4)
    exported = policy.export_policy()
    assert exported.probabilities == pytest.approx(policy.probabilities().tolist())
    assert exported.magnitudes == pytest.approx(policy.magnitudes().tolist())

    n = 4000
    image = F.rand((1, 3, 6, 6), generator=gen)
    out = exported(image.expand(n, -1, -1, -1), generator=gen)
    m = exported.magnitudes[3]
    candidates = torch.stack([image[0], image[0].flip(-1), image[0].flip(-2), (image[0] * m).clamp(0, 1)])
    which = (out.unsqueeze(1) - candidates.unsqueeze(0)).abs().flatten(2).amax(-1).argmin(1)
    assert (out - candidates[which]).abs().max() < 1e-5, "an output matches none of the four ops"
    counts = torch.bincount(which, minlength=4).float()
    expected = policy.probabilities().detach() * n
    chi2 = (((counts - expected) ** 2) / expected).sum()
    assert chi2 < 16.3  # 99.9% quantile of chi-square with 3 degrees of freedom

    # same draws as the policy itself (relaxed forward and hard sample), and a lossless round trip
    x, _ = batch(gen, 8)
    noise = policy.draw_noise(8, generator=gen)
    torch.testing.assert_close(exported(x, noise=noise), policy(x, noise=noise).detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(exported(x, noise=noise), policy.sample(x, noise=noise), atol=1e-6, rtol=0)
    assert FixedPolicy.from_dict(json.loads(json.dumps(exported.to_dict()))) == exported


def test_uniform_baseline_and_fixed_policy_algorithms(gen):
    uniform = create("uniform_augment", policy={"ops": ["identity", "rotate", "contrast"], "num_layers": 2})
    assert isinstance(uniform, UniformAugment)
    assert uniform.policy.probabilities == pytest.approx((1 / 3,) * 3)
    assert uniform.policy.magnitudes == (0.0, 15.0, 1.45)
    learned = LearnedAugment(policy={"ops": ["identity", "rotate"], "num_layers": 1})
    fixed = create("fixed_policy_augment", policy=learned.export_policy().to_dict())
    (rebuilt,) = from_config([to_config(fixed)])
    assert rebuilt.policy == fixed.policy
    engine = Engine([fixed], seed=3)
    x = (batch(gen)[0] * 255).round().to(torch.uint8)
    state = State(batch=MixBatch(images=x, targets={}))
    engine.run(Event.AFTER_DATALOADER, state)
    assert state.batch.images.dtype == torch.uint8 and not torch.equal(state.batch.images, x)
    state.training = False
    state.batch = MixBatch(images=x, targets={})
    engine.run(Event.AFTER_DATALOADER, state)
    assert state.batch.images is x, "validation batches must never be augmented"


# ----------------------------------------------------------------------------- engine wiring


def _run(engine: Engine, state: State, steps, gen: torch.Generator) -> list[torch.Tensor]:
    outs = []
    for step in steps:
        x, y = batch(gen)
        state.step = step
        state.batch = MixBatch(images=(x * 255).round().to(torch.uint8), targets={"y": y})
        engine.run(Event.AFTER_DATALOADER, state)
        outs.append(state.batch.images)
    return outs


def _loss(out, targets):
    return nn.functional.cross_entropy(out, targets["y"])


def test_meta_step_every_k_and_checkpoint_resume_is_exact():
    config = {"policy": {"num_layers": 1}, "meta_every": 3, "lr": 0.05}
    model = tiny_model()
    engine = Engine([create("learned_augment", **config)], seed=7)
    state = State(model=model, loss_fn=_loss, optimizer=torch.optim.SGD(model.parameters(), lr=0.2))
    gen = torch.Generator().manual_seed(1)
    _run(engine, state, range(7), gen)
    algo = engine[0]
    assert algo.meta_steps == 3  # steps 0, 3, 6
    assert [r["step"] for r in algo.history] == [0, 3, 6]
    assert state.scratch[algo.key]["meta_step"] is True
    saved = engine.state_dict()
    gen_state = gen.get_state()
    after = _run(engine, state, range(7, 10), gen)

    resumed = Engine([create("learned_augment", **config)], seed=7)
    resumed.load_state_dict(saved)
    gen.set_state(gen_state)
    again = _run(resumed, state, range(7, 10), gen)
    for a, b in zip(after, again):
        assert torch.equal(a, b)
    assert torch.equal(resumed[0].policy.op_logits, algo.policy.op_logits)


def test_validation_source_and_missing_wiring_errors(gen):
    model = tiny_model()
    algo = create("learned_augment", policy={"num_layers": 1}, meta_every=1, validation="source")
    engine = Engine([algo])
    state = State(model=model, loss_fn=_loss)
    with pytest.raises(ValueError, match="set_validation_source"):
        _run(engine, state, [0], gen)
    held_out = [MixBatch(images=batch(gen)[0], targets={"y": batch(gen)[1]}) for _ in range(2)]
    algo.set_validation_source(held_out)
    _run(engine, state, range(3), gen)  # cycles over the two held-out batches
    assert algo.meta_steps == 3
    algo = create("learned_augment", policy={"num_layers": 1})
    with pytest.raises(ValueError, match=r"State.model and State.loss_fn"):
        _run(Engine([algo]), State(model=model), [0], gen)


def test_unrolled_inner_steps_match_plain_autograd(gen):
    """inner_steps=2: two SGD steps on the two halves of the augmented batch, differentiated end to end."""
    from torch.func import functional_call

    policy = AugmentPolicy({"ops": ["identity", "rotate", "contrast", "posterize"], "num_layers": 1, "hard": False})
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 144, 3))
    x, y = batch(gen, 24)
    noise = policy.draw_noise(16, generator=gen)
    lf = nn.functional.cross_entropy
    grads, *_ = meta_gradients(policy, model, lf, (x[:16], y[:16]), (x[16:], y[16:]), inner_lr=0.5,
                               inner_steps=2, noise=noise)
    augmented = policy(x[:16], noise=noise)
    weights = dict(model.named_parameters())
    for idx in (slice(0, 8), slice(8, 16)):
        loss = lf(functional_call(model, weights, (augmented[idx],)), y[:16][idx])
        g = torch.autograd.grad(loss, list(weights.values()), create_graph=True)
        weights = {n: w - 0.5 * gw for (n, w), gw in zip(weights.items(), g)}
    val = lf(functional_call(model, weights, (x[16:],)), y[16:])
    expected = torch.autograd.grad(val, [policy.op_logits, policy.magnitude_logits])
    torch.testing.assert_close(grads["op_logits"], expected[0], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(grads["magnitude_logits"], expected[1], rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="inner_steps"):
        meta_gradients(policy, model, lf, (x[:4], y[:4]), (x[4:8], y[4:8]), inner_lr=0.5, inner_steps=5)


class _MetadataModel(nn.Module):
    """Like the trainer's models: forward(images, aux=None, aux_mask=None) -> dict of logits per rank."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.meta = nn.Linear(2 + 1, 4)
        self.head = nn.Linear(8, 3)
        self.seen_aux: list[int] = []

    def forward(self, images, aux=None, aux_mask=None):
        if aux is None:
            raise ValueError("metadata expected")
        self.seen_aux.append(aux.shape[0])
        feats = torch.cat([self.image(images), self.meta(torch.cat([aux, aux_mask.float()], 1))], 1)
        return {"taxa_L10": self.head(feats)}


def test_batches_with_metadata_reach_the_model_split_consistently(gen):
    model = _MetadataModel()

    def loss_fn(outputs, targets):
        return nn.functional.cross_entropy(outputs["taxa_L10"], targets["taxa_L10"], reduction="none"), {}

    algo = create("learned_augment", policy={"num_layers": 1}, meta_every=1, val_fraction=0.25)
    x, y = batch(gen, 16)
    aux, mask = F.rand((16, 2), generator=gen), F.rand((16, 1), generator=gen) > 0.5
    state = State(model=model, loss_fn=loss_fn,
                  batch=MixBatch(images=x, targets={"taxa_L10": y}, aux=aux, aux_mask=mask))
    Engine([algo]).run(Event.AFTER_DATALOADER, state)
    assert model.seen_aux == [12, 4]  # inner step on 12 augmented samples, outer loss on 4 clean ones
    assert torch.equal(state.batch.aux, aux) and state.batch.images.dtype == x.dtype
    assert algo.meta_steps == 1 and math.isfinite(algo.history[-1]["val_loss"])


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_func_and_autograd_backends_agree(gen, inner_steps):
    """Nested torch.func.grad and autograd.grad(create_graph=True) are the same derivative (BN model, hard ST)."""
    policy = AugmentPolicy({"num_layers": 2, "hard": True})
    model = tiny_model()
    x, y = batch(gen, 32)
    noise = policy.draw_noise(16, generator=gen)
    args = (policy, model, nn.functional.cross_entropy, (x[:16], y[:16]), (x[16:], y[16:]))
    by_func = meta_gradients(*args, inner_lr=0.3, inner_steps=inner_steps, noise=noise, backend="func")
    by_autograd = meta_gradients(*args, inner_lr=0.3, inner_steps=inner_steps, noise=noise, backend="autograd")
    for name in by_func[0]:
        torch.testing.assert_close(by_func[0][name], by_autograd[0][name], rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(by_func[2], by_autograd[2])
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="backend"):
        meta_gradients(*args, inner_lr=0.3, backend="higher")


def test_a_destructive_magnitude_is_learned_down():
    """Shifting the orientation images vertically by 3 of 8 rows moves the bright half across the middle:
    the learned translate_y magnitude must shrink (from 3 px) while the op is kept at a lower rate."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ops = {"identity": {}, "translate_y": {"min": -4, "max": 4, "init": 3}, "brightness": {}}
    algo = create("learned_augment", policy={"ops": ops, "num_layers": 1}, meta_every=1, lr=0.05)
    engine = Engine([algo], seed=0)

    def loss_fn(out, targets):
        return nn.functional.cross_entropy(out, targets["y"])

    state = State(model=model, optimizer=optimizer, loss_fn=loss_fn)
    for step in range(40):
        x, y = orientation_data(gen, 64)
        state.step = step
        state.batch = MixBatch(images=x, targets={"y": y})
        engine.run(Event.AFTER_DATALOADER, state)
        loss = loss_fn(model(state.batch.images.float() / 255), state.batch.targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    summary = algo.policy.summary()
    assert abs(summary["translate_y"]["magnitude"]) < 2.0, summary
    assert summary["translate_y"]["p"] < 1 / 3, summary
