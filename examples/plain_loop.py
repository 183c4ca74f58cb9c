"""Selective mixing in a plain PyTorch loop, end to end on a labels.h5 dataset.

    python examples/plain_loop.py                      # writes a tiny demo dataset to a temp folder first
    python examples/plain_loop.py --labels demo_data/labels.h5 --steps 200

Data: HybridDataset + GroupedBatchSampler (same-species pairs in every batch) + a plain DataLoader.
Mixing: F.selective_mix groups by species and never pairs a sample whose label is unknown.
Loss: the unknown (null) class is masked as taxaug-train does: a target's null share is not trained,
the rest is renormalised, and each sample weighs by its known share.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from taxaug import functional as F
from taxaug.data import GroupedBatchSampler, HybridDataset


def masked_soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean soft cross-entropy over the known share of each row (class 0 = unknown, never trained)."""
    known = 1.0 - target[:, 0]
    real = target.clone()
    real[:, 0] = 0.0
    real = real / known.clamp_min(1e-12).unsqueeze(1)
    per_sample = -(real * logits.log_softmax(dim=1)).sum(dim=1)
    return (per_sample * known).sum() / known.sum().clamp_min(1e-12)


class TinyNet(torch.nn.Module):
    """A stand-in model: one linear head per rank on pooled pixels. Replace it with yours."""

    def __init__(self, num_classes: dict[str, int]):
        super().__init__()
        self.heads = torch.nn.ModuleDict({r: torch.nn.Linear(3 * 8 * 8, k) for r, k in num_classes.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = torch.nn.functional.adaptive_avg_pool2d(images, 8).flatten(1)
        return {rank: head(x) for rank, head in self.heads.items()}


def train(labels: Path, steps: int, batch_size: int = 16, image_size: int = 32) -> list[float]:
    ds = HybridDataset(labels, labels.parent / "images", image_size=image_size)
    num_classes = ds.num_classes  # per rank, index 0 = unknown
    sampler = GroupedBatchSampler(ds.group_ids("taxa_L10"), batch_size, mode="mixed-pairs", seed=0)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=ds.collate)
    model = TinyNet(num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses, epoch = [], 0
    while len(losses) < steps:
        sampler.set_epoch(epoch)  # a new batch order every epoch
        for batch in loader:  # a taxaug.MixBatch: uint8 images, targets per rank (class indices)
            # Group by species; samples unknown at any rank get group -1 and are never mixed.
            groups = F.exclude_null_samples(batch.targets["taxa_L10"].long(), batch.targets)
            mixed = F.selective_mix(batch, groups, num_classes=num_classes, generator=gen).batch
            logits = model(mixed.images.float() / 255)
            loss = sum(masked_soft_ce(logits[r], mixed.targets[r]) for r in num_classes) / len(num_classes)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            print(f"step {len(losses)} loss {losses[-1]:.4f}")
            if len(losses) == steps:
                break
        epoch += 1
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, help="a labels.h5 with images/ beside it (default: a tiny demo)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if args.labels is None:
        from taxaug.data.demo import generate_demo

        folder = Path(tempfile.mkdtemp(prefix="taxaug_demo_"))
        args.labels = generate_demo(folder, families=2, genera=2, species=2, per_species=12, image_size=32)
    train(args.labels, args.steps)


if __name__ == "__main__":
    main()
