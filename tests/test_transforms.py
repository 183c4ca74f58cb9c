"""Transform classes and AugmentationPipeline: per image vs per batch, PIL, state, compile probe."""

from __future__ import annotations

import warnings

import pytest
import torch
from PIL import Image

from taxaug import transforms as T
from taxaug.functional import policies as P


def _images(seed: int = 0, shape=(6, 3, 20, 22)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)


_FACTORIES = [
    lambda: T.AutoAugment("cifar10"),
    lambda: T.RandAugment(2, 12),
    lambda: T.TrivialAugmentWide(),
    lambda: T.AugMix(width=2),
    lambda: T.RandomErasing(p=1.0),
    lambda: T.ColorJitter(0.4, 0.4, 0.4, 0.1),
]


@pytest.mark.parametrize("factory", _FACTORIES)
def test_per_image_per_batch_and_pil(factory):
    x = _images()
    t = factory().manual_seed(3)
    batch = t(x)
    assert batch.shape == x.shape and batch.dtype == x.dtype
    single = factory().manual_seed(3)(x[0])
    assert single.shape == x[0].shape
    im = Image.fromarray(x[0].permute(1, 2, 0).numpy())
    out = factory().manual_seed(3)(im)
    assert isinstance(out, Image.Image) and out.size == im.size
    # the PIL path is the (C, H, W) path: same draws, same pixels
    assert torch.equal(torch.from_numpy(__import__("numpy").asarray(out).copy()).permute(2, 0, 1), single)


def test_transforms_match_functional_forms():
    x = _images(1)
    assert torch.equal(T.RandAugment(3, 7).manual_seed(5)(x),
                       P.rand_augment(x, 3, 7, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(T.AutoAugment("svhn", fill=9).manual_seed(5)(x),
                       P.auto_augment(x, "svhn", fill=9, generator=torch.Generator().manual_seed(5)))


def test_generator_state_round_trips_through_state_dict():
    x = _images(2)
    a = T.TrivialAugmentWide().manual_seed(0)
    a(x)
    state = a.state_dict()
    expected = a(x)
    b = T.TrivialAugmentWide().manual_seed(123)
    b.load_state_dict(state)
    assert torch.equal(b(x), expected)


def test_color_jitter_ranges_and_probability():
    x = _images(3).float() / 255
    assert torch.equal(T.ColorJitter(0.5, 0.5, 0.5, 0.2, p=0.0).manual_seed(0)(x), x)
    out = T.ColorJitter(brightness=(0.5, 0.5)).manual_seed(0)(x)
    assert torch.allclose(out, x * 0.5, atol=1e-6)
    with pytest.raises(ValueError, match="hue"):
        T.ColorJitter(hue=0.7)
    with pytest.raises(ValueError, match="brightness must be >= 0"):
        T.ColorJitter(brightness=-1)


def test_constructor_errors_surface_early():
    with pytest.raises(ValueError, match="unknown AutoAugment policy"):
        T.AutoAugment("mnist")
    with pytest.raises(ValueError, match="magnitude must be a bin"):
        T.RandAugment(2, 40)
    with pytest.raises(ValueError, match="num_ops"):
        T.RandAugment(-2)
    with pytest.raises(ValueError, match="unknown augmentation_set"):
        T.AugMix(augmentation_set="nope")
    with pytest.raises(ValueError, match="unknown mode"):
        T.RandomErasing(mode="x")
    with pytest.raises(TypeError, match="generator"):
        T.TrivialAugmentWide(generator=3)
    with pytest.raises(ValueError, match=r"\(C, H, W\) or \(B, C, H, W\)"):
        T.TrivialAugmentWide()(torch.zeros(8, 8, dtype=torch.uint8))


def test_pipeline_devices():
    x = _images(4)
    batch_pipe = T.AugmentationPipeline([T.TrivialAugmentWide().manual_seed(0), T.RandomErasing().manual_seed(1)])
    assert not batch_pipe.runs_per_sample and batch_pipe(x).shape == x.shape
    with pytest.raises(ValueError, match="device='cpu'"):
        batch_pipe(x[0])
    cpu_pipe = T.AugmentationPipeline([T.TrivialAugmentWide().manual_seed(0)], device="cpu")
    assert cpu_pipe.runs_per_sample and cpu_pipe(x[0]).shape == x[0].shape
    with pytest.raises(ValueError, match="device='batch'"):
        cpu_pipe(x)
    im = Image.fromarray(x[0].permute(1, 2, 0).numpy())
    assert isinstance(cpu_pipe(im), Image.Image)
    with pytest.raises(ValueError, match="device must be one of"):
        T.AugmentationPipeline([], device="gpu")
    with pytest.raises(TypeError, match="not callable"):
        T.AugmentationPipeline([3])


def test_same_pipeline_per_sample_equals_batch_draws_for_one_sample():
    x = _images(5, (1, 3, 20, 22))
    a = T.AugmentationPipeline([T.RandAugment().manual_seed(0)], device="cpu")(x[0])
    b = T.AugmentationPipeline([T.RandAugment().manual_seed(0)], device="batch")(x)[0]
    assert torch.equal(a, b)


class _FakeClock:
    """Stands in for time.perf_counter in taxaug.transforms: each reading advances 1 ms, and a fake compiled
    function adds its own delay, so the probe's timings are exact without sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1e-3
        return self.now


def _fake_compile(monkeypatch, delay_compiled: float, fail: bool = False) -> None:
    clock = _FakeClock()
    monkeypatch.setattr(T.time, "perf_counter", clock.perf_counter)

    def compile_(fn, **kwargs):
        if fail:
            raise RuntimeError("inductor needs a C++ compiler\nmore details")

        def wrapped(x):
            clock.now += delay_compiled
            return fn(x)
        wrapped.is_compiled = True
        return wrapped
    monkeypatch.setattr(torch, "compile", compile_)


def test_compile_probe_falls_back_when_compilation_fails(monkeypatch):
    _fake_compile(monkeypatch, 0.0, fail=True)
    pipe = T.AugmentationPipeline([T.TrivialAugmentWide().manual_seed(0)], compile=True)
    x = _images(6)
    with pytest.warns(RuntimeWarning, match="torch.compile failed: RuntimeError: inductor needs a C\\+\\+ compiler"):
        out = pipe(x)
    assert pipe.compile_report["used"] == "eager"
    assert torch.equal(out, T.TrivialAugmentWide().manual_seed(0)(x))  # probing consumed no draws


def test_compile_probe_falls_back_without_speed_up(monkeypatch):
    _fake_compile(monkeypatch, 0.02)
    pipe = T.AugmentationPipeline([T.TrivialAugmentWide().manual_seed(0)], compile=True, probe_repeats=2)
    x = _images(7)
    with pytest.warns(RuntimeWarning, match="no speed-up: compiled .* ms vs eager .* ms"):
        out = pipe(x)
    report = pipe.compile_report
    assert report["used"] == "eager" and report["compiled_ms"] > report["eager_ms"]
    assert torch.equal(out, T.TrivialAugmentWide().manual_seed(0)(x))


def test_compile_probe_keeps_a_faster_compiled_function(monkeypatch):
    _fake_compile(monkeypatch, 0.0)
    pipe = T.AugmentationPipeline([T.AugMix(width=2).manual_seed(0)], compile=True, probe_repeats=2,
                                  min_speedup=0.0)
    x = _images(8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = pipe(x)
    assert pipe.compile_report["used"] == "compiled" and getattr(pipe._runner, "is_compiled", False)
    assert torch.equal(out, T.AugMix(width=2).manual_seed(0)(x))


@pytest.mark.cuda
def test_batch_pipeline_on_cuda():
    x = _images(9).cuda()
    pipe = T.AugmentationPipeline([T.RandAugment().manual_seed(0), T.RandomErasing().manual_seed(1)])
    out = pipe(x)
    assert out.is_cuda and out.dtype == torch.uint8
    with pytest.raises(ValueError, match="use device='batch'"):
        T.AugmentationPipeline([T.RandAugment()], device="cpu")(x[0])


def test_dataloader_workers_get_distinct_streams(monkeypatch):
    from types import SimpleNamespace

    x = _images(10)
    outs = []
    for worker_id in (0, 1):
        info = SimpleNamespace(id=worker_id, seed=1000 + worker_id)
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda info=info: info)
        outs.append(T.TrivialAugmentWide().manual_seed(7)(x))
    assert not torch.equal(outs[0], outs[1])  # a copied generator must not repeat across workers
    info = SimpleNamespace(id=0, seed=1000)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)
    assert torch.equal(T.TrivialAugmentWide().manual_seed(7)(x), outs[0])  # still reproducible
