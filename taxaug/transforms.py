"""Transform classes over the batched policies, usable per image or per batch.

Each transform is an ``nn.Module`` that accepts a (C, H, W) image, a (B, C, H, W) batch or a
PIL image (returned as PIL), and owns an optional ``torch.Generator`` whose state travels in
``state_dict()`` (``get_extra_state``), so a resumed run draws the same augmentations.
Arguments are checked at construction by a dry run on a tiny batch.

``AugmentationPipeline`` chains transforms and fixes where they run: ``device="cpu"`` applies
them to one image at a time (a dataset transform, run in the loader's workers/threads),
``device="batch"`` to a whole batch on whatever device it lives (typically the GPU, after the
loader). With ``compile=True`` it measures ``torch.compile`` against eager on the first input and
keeps the faster one, saying why in a warning and in ``compile_report``.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from taxaug.functional import policies as P
from taxaug.functional import random as R
from taxaug.functional._validate import describe
from taxaug.functional.photometric import color_jitter
from taxaug.functional.registry import jitter_neutral

__all__ = [
    "AugMix",
    "AugmentationPipeline",
    "AutoAugment",
    "ColorJitter",
    "RandAugment",
    "RandomErasing",
    "TrivialAugmentWide",
]

log = logging.getLogger(__name__)


def _pil_to_tensor(image: Any) -> torch.Tensor:
    if image.mode not in ("L", "RGB"):
        raise ValueError(f"PIL images must be mode 'L' or 'RGB', got {image.mode!r}; convert it first")
    t = torch.from_numpy(np.asarray(image).copy())
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)


def _tensor_to_pil(t: torch.Tensor, mode: str) -> Any:
    from PIL import Image

    arr = t[0].numpy() if mode == "L" else t.permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(arr, mode=mode)


def _is_pil(x: object) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return False
    return isinstance(x, Image.Image)


class _BatchTransform(nn.Module):
    """Shared per-image / per-batch / PIL handling and generator state."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {describe(generator)}")
        self.generator = generator
        self._worker_key: tuple[int, int] | None = None
        self._dry_run()

    def _call_generator(self) -> torch.Generator | None:
        """The generator for this call; in a DataLoader worker process it is re-seeded once per worker.

        A generator object is copied as is into every worker process, so without this every worker
        would draw the same augmentations. The new seed mixes the generator's seed with the worker's
        seed (which the DataLoader derives from the main process's RNG), so runs stay reproducible.
        """
        if self.generator is None:
            return None
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker_key != (info.id, info.seed):
            self._worker_key = (info.id, info.seed)
            self.generator.manual_seed((self.generator.initial_seed() * 1_000_003 + info.seed) % (2**63))
        return self.generator

    def _apply(self, batch: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def _dry_run(self) -> None:
        """Fail at construction, not at the first batch, on bad arguments."""
        self._apply(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.Generator().manual_seed(0))

    def forward(self, images: Any) -> Any:
        if _is_pil(images):
            mode = images.mode
            out = self._apply(_pil_to_tensor(images).unsqueeze(0), self._call_generator())[0]
            return _tensor_to_pil(out, mode)
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects a tensor or PIL image, got {describe(images)}")
        if images.ndim == 3:
            return self._apply(images.unsqueeze(0), self._call_generator())[0]
        if images.ndim == 4:
            return self._apply(images, self._call_generator())
        raise ValueError(f"{type(self).__name__} expects (C, H, W) or (B, C, H, W), got {describe(images)}")

    def manual_seed(self, seed: int) -> _BatchTransform:
        """Give the transform its own CPU generator seeded with `seed` (draws then move to the batch)."""
        self.generator = torch.Generator().manual_seed(int(seed))
        return self

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": None if self.generator is None else self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        gen_state = state.get("generator")
        if gen_state is None:
            return
        if self.generator is None:
            self.generator = torch.Generator()
        self.generator.set_state(gen_state)


class AutoAugment(_BatchTransform):
    """AutoAugment with the published `policy` ("imagenet", "cifar10", "svhn"); one sub-policy per sample."""

    def __init__(self, policy: str = "imagenet", *, fill: Any = None, interpolation: str = "nearest",
                 clamp: bool = False, generator: torch.Generator | None = None) -> None:
        self.policy, self.fill, self.interpolation, self.clamp = policy, fill, interpolation, clamp
        super().__init__(generator)

    def _apply(self, batch, generator):
        return P.auto_augment(batch, self.policy, generator=generator, fill=self.fill,
                              interpolation=self.interpolation, clamp=self.clamp)

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}, fill={self.fill!r}, interpolation={self.interpolation!r}"


class RandAugment(_BatchTransform):
    """RandAugment: `num_ops` ops per sample at magnitude bin `magnitude` of `num_magnitude_bins`."""

    def __init__(self, num_ops: int = 2, magnitude: float = 9, *, num_magnitude_bins: int = 31,
                 magnitude_std: float = 0.0, fill: Any = None, interpolation: str = "nearest",
                 clamp: bool = False, generator: torch.Generator | None = None) -> None:
        self.num_ops, self.magnitude, self.num_magnitude_bins = num_ops, magnitude, num_magnitude_bins
        self.magnitude_std, self.fill, self.interpolation, self.clamp = magnitude_std, fill, interpolation, clamp
        super().__init__(generator)

    def _apply(self, batch, generator):
        return P.rand_augment(batch, self.num_ops, self.magnitude, num_magnitude_bins=self.num_magnitude_bins,
                              magnitude_std=self.magnitude_std, generator=generator, fill=self.fill,
                              interpolation=self.interpolation, clamp=self.clamp)

    def extra_repr(self) -> str:
        return (f"num_ops={self.num_ops}, magnitude={self.magnitude}, num_magnitude_bins={self.num_magnitude_bins}, "
                f"magnitude_std={self.magnitude_std}")


class TrivialAugmentWide(_BatchTransform):
    """TrivialAugmentWide: one op, magnitude and sign per sample."""

    def __init__(self, *, num_magnitude_bins: int = 31, fill: Any = None, interpolation: str = "nearest",
                 clamp: bool = False, generator: torch.Generator | None = None) -> None:
        self.num_magnitude_bins, self.fill, self.interpolation, self.clamp = (
            num_magnitude_bins, fill, interpolation, clamp)
        super().__init__(generator)

    def _apply(self, batch, generator):
        return P.trivial_augment_wide(batch, num_magnitude_bins=self.num_magnitude_bins, generator=generator,
                                      fill=self.fill, interpolation=self.interpolation, clamp=self.clamp)

    def extra_repr(self) -> str:
        return f"num_magnitude_bins={self.num_magnitude_bins}"


class AugMix(_BatchTransform):
    """AugMix (AugmentAndMix) with per-sample chains, Dirichlet chain weights and Beta mix weight."""

    def __init__(self, *, severity: int = 3, width: int = 3, depth: int = -1, alpha: float = 1.0,
                 augmentation_set: str = "all", fill: Any = None, interpolation: str = "nearest",
                 clamp: bool = False, generator: torch.Generator | None = None) -> None:
        self.severity, self.width, self.depth, self.alpha = severity, width, depth, alpha
        self.augmentation_set, self.fill, self.interpolation, self.clamp = (
            augmentation_set, fill, interpolation, clamp)
        super().__init__(generator)

    def _apply(self, batch, generator):
        return P.augmix(batch, severity=self.severity, width=self.width, depth=self.depth, alpha=self.alpha,
                        augmentation_set=self.augmentation_set, generator=generator, fill=self.fill,
                        interpolation=self.interpolation, clamp=self.clamp)

    def extra_repr(self) -> str:
        return (f"severity={self.severity}, width={self.width}, depth={self.depth}, alpha={self.alpha}, "
                f"augmentation_set={self.augmentation_set!r}")


class RandomErasing(_BatchTransform):
    """Random Erasing per sample (see `taxaug.functional.random_erasing` for modes and values)."""

    def __init__(self, p: float = 0.5, *, scale: tuple[float, float] = (0.02, 0.33),
                 ratio: tuple[float, float] = (0.3, 3.3), mode: str = "const", value: Any = 0, count: int = 1,
                 max_attempts: int = 10, generator: torch.Generator | None = None) -> None:
        self.p, self.scale, self.ratio, self.mode = p, tuple(scale), tuple(ratio), mode
        self.value, self.count, self.max_attempts = value, count, max_attempts
        super().__init__(generator)

    def _apply(self, batch, generator):
        return P.random_erasing(batch, p=self.p, scale=self.scale, ratio=self.ratio, mode=self.mode,
                                value=self.value, count=self.count, max_attempts=self.max_attempts,
                                generator=generator)

    def extra_repr(self) -> str:
        return f"p={self.p}, scale={self.scale}, ratio={self.ratio}, mode={self.mode!r}, count={self.count}"


def _jitter_range(value: Any, name: str, center: float, bound: tuple[float, float]) -> tuple[float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
        lo, hi = center - value, center + value
        lo = max(lo, bound[0])
    else:
        try:
            lo, hi = (float(v) for v in value)
        except Exception:
            raise TypeError(f"{name} must be a number or a (min, max) pair, got {value!r}") from None
    if not (bound[0] <= lo <= hi <= bound[1]):
        raise ValueError(f"{name} range must satisfy {bound[0]} <= min <= max <= {bound[1]}, got ({lo}, {hi})")
    return float(lo), float(hi)


class ColorJitter(_BatchTransform):
    """torchvision-style ColorJitter with per-sample factors and a per-sample order of the four ops.

    brightness/contrast/saturation: b -> factor uniform in [max(0, 1 - b), 1 + b] (or a (min, max)
    pair); hue: h in [0, 0.5] -> shift uniform in [-h, h]. Applied with probability `p` per sample.
    """

    def __init__(self, brightness: Any = 0.0, contrast: Any = 0.0, saturation: Any = 0.0, hue: Any = 0.0,
                 *, p: float = 1.0, clamp: bool = False, generator: torch.Generator | None = None) -> None:
        inf = float("inf")
        self.brightness = _jitter_range(brightness, "brightness", 1.0, (0.0, inf))
        self.contrast = _jitter_range(contrast, "contrast", 1.0, (0.0, inf))
        self.saturation = _jitter_range(saturation, "saturation", 1.0, (0.0, inf))
        self.hue = _jitter_range(hue, "hue", 0.0, (-0.5, 0.5))
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p, self.clamp = p, clamp
        super().__init__(generator)

    def _apply(self, batch, generator):
        b, dev = batch.shape[0], batch.device
        params = []
        neutral = jitter_neutral()
        apply = R.rand((b,), generator=generator, device=dev) < self.p
        for (lo, hi), n in zip((self.brightness, self.contrast, self.saturation, self.hue), neutral):
            u = R.rand((b,), generator=generator, device=dev, dtype=torch.float64)
            params.append(torch.where(apply, lo + (hi - lo) * u, n))
        order = torch.argsort(R.rand((b, 4), generator=generator, device=dev), dim=1)
        return color_jitter(batch, *params, order=order, clamp=self.clamp)

    def extra_repr(self) -> str:
        return f"brightness={self.brightness}, contrast={self.contrast}, saturation={self.saturation}, hue={self.hue}"


PIPELINE_DEVICES = ("cpu", "batch")


class AugmentationPipeline(nn.Module):
    """Transforms in order, run per sample on CPU (``device="cpu"``) or over a batch (``"batch"``).

    ``compile=True`` wraps the chain in ``torch.compile`` after a start-up probe on the first input:
    both forms run `probe_repeats` times (after a warm-up that includes compilation) and the compiled
    one is kept only if it is at least `min_speedup` times faster. Otherwise, or if compilation fails,
    the pipeline stays eager and says why (a ``RuntimeWarning`` and a log line); ``compile_report``
    holds the figures. Generator states are restored after the probe, so probing changes no draws.
    """

    def __init__(self, transforms: Sequence[Callable[[Any], Any]], device: str = "batch", compile: bool = False,
                 *, compile_options: dict[str, Any] | None = None, probe_repeats: int = 3,
                 min_speedup: float = 1.05) -> None:
        super().__init__()
        if device not in PIPELINE_DEVICES:
            raise ValueError(f"device must be one of {PIPELINE_DEVICES}, got {device!r}")
        transforms = list(transforms)
        for i, t in enumerate(transforms):
            if not callable(t):
                raise TypeError(f"transforms[{i}] is not callable: {describe(t)}")
        self.transforms = nn.ModuleList([t for t in transforms if isinstance(t, nn.Module)])
        self._chain = transforms
        self.device = device
        self.compile_enabled = bool(compile)
        self.compile_options = dict(compile_options or {})
        self.probe_repeats = int(probe_repeats)
        self.min_speedup = float(min_speedup)
        self.compile_report: dict[str, Any] | None = None
        self._runner: Callable[[Any], Any] | None = None if self.compile_enabled else self._eager

    @property
    def runs_per_sample(self) -> bool:
        """True when the pipeline belongs in the dataset (per image), False when it runs on batches."""
        return self.device == "cpu"

    def _eager(self, x: Any) -> Any:
        for t in self._chain:
            x = t(x)
        return x

    def _check(self, x: Any) -> None:
        if self.device == "cpu":
            if _is_pil(x):
                return
            if not isinstance(x, torch.Tensor) or x.ndim != 3:
                raise ValueError(
                    f"AugmentationPipeline(device='cpu') runs per sample and expects a (C, H, W) tensor or a "
                    f"PIL image, got {describe(x)}; use device='batch' for (B, C, H, W) batches"
                )
            if x.device.type != "cpu":
                raise ValueError(f"AugmentationPipeline(device='cpu') got a tensor on {x.device}; "
                                 "use device='batch' to augment on the accelerator")
        elif not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(
                f"AugmentationPipeline(device='batch') expects a (B, C, H, W) tensor, got {describe(x)}; "
                "use device='cpu' for per-image dataset transforms"
            )

    def forward(self, x: Any) -> Any:
        self._check(x)
        if self._runner is None:
            self._runner = self._probe(x)
        return self._runner(x)

    # -- torch.compile probe ---------------------------------------------------------------------

    def _generators(self) -> list[torch.Generator]:
        return [t.generator for t in self._chain if isinstance(getattr(t, "generator", None), torch.Generator)]

    def _time(self, fn: Callable[[Any], Any], x: Any) -> float:
        cuda = isinstance(x, torch.Tensor) and x.device.type == "cuda"
        samples = []
        for _ in range(max(1, self.probe_repeats)):
            if cuda:
                torch.cuda.synchronize(x.device)
            start = time.perf_counter()
            fn(x)
            if cuda:
                torch.cuda.synchronize(x.device)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    def _probe(self, x: Any) -> Callable[[Any], Any]:
        gens = self._generators()
        saved = [g.get_state() for g in gens]
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        report: dict[str, Any] = {"used": "eager"}
        try:
            try:
                compiled = torch.compile(self._eager, **self.compile_options)
                compiled(x)  # compiles
                report["compiled_ms"] = self._time(compiled, x) * 1e3
            except Exception as exc:  # any backend failure falls back
                report["reason"] = f"torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                return self._fallback(report)
            self._eager(x)
            report["eager_ms"] = self._time(self._eager, x) * 1e3
            if report["compiled_ms"] * self.min_speedup <= report["eager_ms"]:
                report["used"] = "compiled"
                self.compile_report = report
                log.info("AugmentationPipeline: using torch.compile (%.2f ms vs eager %.2f ms)",
                         report["compiled_ms"], report["eager_ms"])
                return compiled
            report["reason"] = (f"no speed-up: compiled {report['compiled_ms']:.2f} ms vs eager "
                                f"{report['eager_ms']:.2f} ms (needs {self.min_speedup:.2f}x)")
            return self._fallback(report)
        finally:
            for g, s in zip(gens, saved):
                g.set_state(s)
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)

    def _fallback(self, report: dict[str, Any]) -> Callable[[Any], Any]:
        self.compile_report = report
        message = f"AugmentationPipeline: running eager; {report['reason']}"
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)
        return self._eager

    def extra_repr(self) -> str:
        return f"device={self.device!r}, compile={self.compile_enabled}"
