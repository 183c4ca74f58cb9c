"""taxaug algorithms inside a Lightning Trainer through TaxaugCallback, on a labels.h5 dataset.

    python examples/lightning_loop.py                  # writes a tiny demo dataset to a temp folder first
    python examples/lightning_loop.py --labels demo_data/labels.h5 --epochs 5

The callback hands training_step the batch after every algorithm's AFTER_DATALOADER work
(augmented, mixed in-species), sets the GroupedBatchSampler's epoch each epoch and checkpoints
the algorithms' state with Lightning's. compute_loss fires BEFORE_LOSS (label smoothing) and
AFTER_LOSS around the loss. The null class is masked as taxaug-train does.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from taxaug import functional as F
from taxaug.data import GroupedBatchSampler, HybridDataset
from taxaug.integrations.lightning import TaxaugCallback

ALGORITHMS = [
    {"name": "trivial_augment", "prob": 0.8},
    {"name": "selective_mix", "group_levels": ["taxa_L10"], "prob": 0.5},
    {"name": "label_smoothing", "smoothing": 0.1},
]


def masked_soft_ce(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                   num_classes: dict[str, int]) -> torch.Tensor:
    """Per-sample loss (B,): per rank the soft cross-entropy on the known share (class 0 never trained)."""
    dense = F.to_dense_targets(targets, num_classes)
    total = 0.0
    for rank, t in dense.items():
        known = 1.0 - t[:, 0]
        real = torch.cat([torch.zeros_like(t[:, :1]), t[:, 1:]], dim=1) / known.clamp_min(1e-12).unsqueeze(1)
        ce = -(real * logits[rank].log_softmax(dim=1)).sum(dim=1)
        total = total + ce * known * (known.numel() / known.sum().clamp_min(1e-12))
    return total / len(dense)


class Classifier(pl.LightningModule):
    def __init__(self, labels: Path, batch_size: int = 16):
        super().__init__()
        self.ds = HybridDataset(labels, labels.parent / "images", image_size=32)
        self.num_classes = self.ds.num_classes
        self.batch_size = batch_size
        self.heads = torch.nn.ModuleDict({r: torch.nn.Linear(3 * 8 * 8, k) for r, k in self.num_classes.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = torch.nn.functional.adaptive_avg_pool2d(images.float() / 255, 8).flatten(1)
        return {rank: head(x) for rank, head in self.heads.items()}

    def train_dataloader(self) -> DataLoader:
        # Built in the hook: under DDP Lightning re-creates the sampler with its rank.
        sampler = GroupedBatchSampler(self.ds.group_ids("taxa_L10"), self.batch_size, mode="mixed-pairs", seed=0)
        return DataLoader(self.ds, batch_sampler=sampler, collate_fn=self.ds.collate)

    def training_step(self, batch, batch_idx):
        outputs = self(batch.images)
        loss = TaxaugCallback.of(self.trainer).compute_loss(
            outputs, lambda out, targets: masked_soft_ce(out, targets, self.num_classes))
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, help="a labels.h5 with images/ beside it (default: a tiny demo)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/lightning_example"))
    args = parser.parse_args()
    if args.labels is None:
        from taxaug.data.demo import generate_demo

        folder = Path(tempfile.mkdtemp(prefix="taxaug_demo_"))
        args.labels = generate_demo(folder, families=2, genera=2, species=2, per_species=12, image_size=32)
    module = Classifier(args.labels)
    callback = TaxaugCallback(ALGORITHMS, seed=0, num_classes=module.num_classes)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", callbacks=[callback], default_root_dir=args.out,
                         logger=False, enable_progress_bar=False)
    trainer.fit(module)
    print(f"trained {trainer.global_step} steps; last loss {float(trainer.callback_metrics['loss']):.4f}")


if __name__ == "__main__":
    main()
