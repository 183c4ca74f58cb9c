"""Training step time with LearnedAugment (meta step every k=1 and k=5) against the RandAugment-style baseline
on the same ops (uniform_augment) and against no augmentation, same model, same process; plus the accuracy
each reaches on the harmful-op set (orientation classes that vertical flip swaps), same seeds and steps.

Each timed row runs blocks of 5 full training steps (engine AFTER_DATALOADER with the algorithm, forward,
loss, backward, SGD step) and reports the median per-step time. kornia's RandAugment (a peer without
learning) is timed as augmentation + the same training step; torchvision's when importable.

    .venv/bin/python benchmarks/learned.py --quick
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Table, optional_import, parse_args

from taxaug import functional as F
from taxaug.algorithms import Engine, Event, State, create
from taxaug.functional.batch import MixBatch

BLOCK = 5
POLICY = {
    "num_layers": 2,
    "ops": {
        "identity": {}, "hflip": {}, "vflip": {}, "rotate": {}, "translate_x": {"min": -0.2, "max": 0.2, "unit": "fraction"},
        "translate_y": {"min": -0.2, "max": 0.2, "unit": "fraction"}, "shear_x": {}, "shear_y": {},
        "brightness": {}, "color": {}, "contrast": {}, "sharpness": {}, "posterize": {}, "solarize": {},
        "equalize": {}, "autocontrast": {},
    },
}


def cnn(in_channels: int, classes: int, width: int) -> nn.Module:
    torch.manual_seed(0)
    layers, prev = [], in_channels
    for i, c in enumerate((width, 2 * width, 4 * width)):
        layers += [nn.Conv2d(prev, c, 3, stride=1 if i == 0 else 2, padding=1, bias=False), nn.BatchNorm2d(c),
                   nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        prev = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, classes))


def loss_fn(outputs: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(outputs, targets["y"], reduction="none")


def orientation_data(gen: torch.Generator, n: int, size: int, device: str):
    """Class 0: bright top half, class 1: bright bottom half, on noise (vflip swaps the classes)."""
    y = F.randint(2, (n,), generator=gen)
    rows = torch.arange(size).view(1, size, 1)
    top = (rows < size // 2).float()
    blob = torch.where(y.view(-1, 1, 1) == 0, top, 1 - top).unsqueeze(1)
    strength = 0.1 + 0.25 * F.rand((n, 1, 1, 1), generator=gen)
    x = (0.6 * F.rand((n, 3, size, size), generator=gen) + strength * blob).clamp(0, 1)
    return torch.round(x * 255).to(torch.uint8).to(device), y.to(device)


def algorithms(variant: str) -> list:
    if variant == "none" or variant.startswith("kornia"):
        return []
    if variant == "uniform_augment":
        return [create("uniform_augment", policy=POLICY)]
    k = int(variant.rsplit("=", 1)[1])
    return [create("learned_augment", policy=POLICY, meta_every=k, lr=0.05)]


class Trainer:
    """A minimal loop driving the engine, as a user's own loop would."""

    def __init__(self, variant: str, width: int, device: str, seed: int = 0) -> None:
        self.model = cnn(3, 2, width).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.engine = Engine(algorithms(variant), seed=seed)
        self.state = State(model=self.model, optimizer=self.optimizer, loss_fn=loss_fn)
        self.kornia = None
        if variant == "kornia RandAugment":
            self.kornia = optional_import("kornia.augmentation.auto").RandAugment(n=2, m=10)

    def step(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        state = self.state
        state.batch = MixBatch(images=images, targets={"y": targets})
        self.engine.run(Event.AFTER_DATALOADER, state)
        x = state.batch.images.float() / 255.0
        if self.kornia is not None:
            x = self.kornia(x)
        loss = loss_fn(self.model(x), state.batch.targets).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        state.step += 1
        return loss

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) on clean images; the loss also shows label noise that argmax hides."""
        self.model.eval()
        logits = self.model(images.float() / 255.0)
        self.model.train()
        accuracy = (logits.argmax(1) == targets).float().mean().item()
        return accuracy, nn.functional.cross_entropy(logits, targets).item()


def learned_vflip(trainer: Trainer) -> float | None:
    for a in trainer.engine.algorithms:
        if a.name == "learned_augment":
            return float(a.policy.probabilities().detach()[a.policy.ops.index("vflip")])
        if a.name == "uniform_augment":
            return a.policy.probabilities[a.policy.names.index("vflip")]
    return None


def time_variant(variant: str, *, batch: int, size: int, width: int, repeats: int, device: str) -> float:
    trainer = Trainer(variant, width, device)
    gen = torch.Generator().manual_seed(1)
    data = [orientation_data(gen, batch, size, device) for _ in range(BLOCK)]

    def block() -> None:
        for images, targets in data:
            trainer.step(images, targets)

    block()  # warm-up (first meta step builds the policy optimizer state)
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        block()
        if device == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) / BLOCK)
    return statistics.median(samples)


def accuracy_variant(variant: str, *, steps: int, batch: int, size: int, width: int,
                     device: str) -> tuple[float, float, float | None]:
    trainer = Trainer(variant, width, device, seed=0)
    gen = torch.Generator().manual_seed(123)
    for _ in range(steps):
        trainer.step(*orientation_data(gen, batch, size, device))
    test = orientation_data(torch.Generator().manual_seed(999), 2048, size, device)
    return (*trainer.evaluate(*test), learned_vflip(trainer))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    # one intra-op thread: the tensors are small, and on a shared machine thread-pool spinning dominates
    torch.set_num_threads(1)
    batch, size, width = (32, 16, 8) if args.quick else (64, 32, 16)
    steps = 60 if args.quick else 300
    variants = ["none", "uniform_augment", "learned_augment k=1", "learned_augment k=5"]
    kornia_ok = optional_import("kornia.augmentation.auto") is not None
    table = Table(f"LearnedAugment training step: batch {batch}, {size}x{size}, CNN width {width}; "
                  f"accuracy on the harmful-op set after {steps} steps")
    for device in args.device:
        case = f"{device} b{batch} {size}px"
        times = {v: time_variant(v, batch=batch, size=size, width=width, repeats=args.repeats, device=device)
                 for v in variants}
        for v in variants:
            acc, nll, p_vflip = accuracy_variant(v, steps=steps, batch=batch, size=size, width=width,
                                                 device=device)
            note = f"acc {acc:.3f}, test loss {nll:.3f}"
            if p_vflip is not None:
                note += f", p(vflip) {p_vflip:.3f} (start {1 / len(POLICY['ops']):.3f})"
            note += f"; {times[v] / times['none']:.2f}x no augmentation"
            floor = None if v in ("none", "uniform_augment") else "uniform_augment"
            table.add(case, v, times[v], floor=floor, note=note)
        if kornia_ok:
            t = time_variant("kornia RandAugment", batch=batch, size=size, width=width, repeats=args.repeats,
                             device=device)
            table.add(case, "kornia RandAugment (peer, n=2 m=10)", t, floor="uniform_augment",
                      note=f"{t / times['none']:.2f}x no augmentation; one op chain per batch, not per sample; "
                           "not learned")
        else:
            table.add(case, "kornia RandAugment (peer)", None, note="not importable")
        tv = optional_import("torchvision.transforms.v2")
        table.add(case, "torchvision RandAugment (peer)", None,
                  note="not importable" if tv is None else "per-batch op choice only; not comparable per sample")
    table.emit(args.out, "learned")


if __name__ == "__main__":
    main()
