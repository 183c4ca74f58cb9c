"""A tiny in-memory dataset and LightningModule for the Lightning callback tests (and the DDP script)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from taxaug import MixBatch
from taxaug import functional as F
from taxaug.data import GroupedBatchSampler
from taxaug.integrations.lightning import TaxaugCallback

NUM_CLASSES = {"taxa_L10": 7, "taxa_L20": 4}
N = 48


class TinySet(Dataset):
    """N 3x8x8 uint8 images; species 1..6 (genus = (species + 1) // 2), every 12th sample unknown."""

    def __init__(self, n: int = N) -> None:
        g = torch.Generator().manual_seed(123)
        self.images = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
        species = torch.arange(n) % 6 + 1
        species[::12] = 0
        self.targets = {"taxa_L10": species, "taxa_L20": (species + 1) // 2}

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int]) -> MixBatch:
        idx = torch.tensor(indices, dtype=torch.long)
        return MixBatch(self.images[idx], {k: v[idx] for k, v in self.targets.items()}, indices=idx)

    def group_ids(self) -> np.ndarray:
        ids = self.targets["taxa_L10"].numpy().copy()
        ids[ids == 0] = -1
        return ids


def soft_ce(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-sample soft cross-entropy summed over ranks, the null class masked as the trainer does."""
    dense = F.to_dense_targets(targets, NUM_CLASSES)
    total = 0
    for rank, t in dense.items():
        known = 1.0 - t[:, 0]
        t = torch.cat([torch.zeros_like(t[:, :1]), t[:, 1:]], dim=1) / known.clamp_min(1e-12)[:, None]
        total = total + known * -(t * outputs[rank].log_softmax(1)).sum(1)
    return total


class TinyModule(pl.LightningModule):
    """Linear heads on flattened images; records what training_step receives."""

    def __init__(self, *, batch_size: int = 8, build_loader: bool = True, use_helper: bool = True,
                 mode: str = "strict-group") -> None:
        super().__init__()
        self.heads = torch.nn.ModuleDict({r: torch.nn.Linear(3 * 8 * 8, k) for r, k in NUM_CLASSES.items()})
        self.data = TinySet()
        self.batch_size, self.build_loader, self.use_helper, self.mode = batch_size, build_loader, use_helper, mode
        self.seen: list[dict[str, Any]] = []

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = images.float().flatten(1) / 255
        return {r: head(flat) for r, head in self.heads.items()}

    def make_loader(self) -> DataLoader:
        sampler = GroupedBatchSampler(self.data.group_ids(), self.batch_size, mode=self.mode, seed=5)
        return DataLoader(self.data, batch_sampler=sampler, collate_fn=self.data.collate)

    def train_dataloader(self) -> DataLoader:
        return self.make_loader()

    def training_step(self, batch: MixBatch, batch_idx: int) -> torch.Tensor:
        outputs = self(batch.images)
        if self.use_helper:
            loss = TaxaugCallback.of(self.trainer).compute_loss(outputs, soft_ce)
        else:
            loss = soft_ce(outputs, batch.targets).mean()
        self.seen.append({"epoch": self.current_epoch, "indices": batch.indices.tolist(),
                          "images": batch.images.clone(), "targets": {k: v.clone() for k, v in batch.targets.items()},
                          "loss": float(loss.detach())})
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer(max_epochs: int, callbacks: list, root: str, **kw: Any) -> pl.Trainer:
    settings = dict(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                    default_root_dir=root)
    settings.update(kw)
    return pl.Trainer(callbacks=callbacks, **settings)
