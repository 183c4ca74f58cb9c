"""Value classes that carry a batch through the mixing functions."""

from __future__ import annotations

import attrs
import torch

from taxaug.functional._validate import check_images, check_targets, check_tensor, describe


@attrs.frozen(eq=False)
class MixBatch:
    """Images, per-task targets and optional metadata for one batch.

    - ``images``: (B, C, H, W) uint8 or floating.
    - ``targets``: dict task -> class indices (B,) or dense probabilities (B, K).
    - ``aux``: optional (B, D) floating metadata (location, date, elevation features...).
    - ``aux_mask``: optional (B, n_chunks) bool, True where a metadata chunk is valid.
    - ``indices``: optional (B,) long dataset row indices, carried through unchanged.
    """

    images: torch.Tensor
    targets: dict[str, torch.Tensor] = attrs.field(factory=dict)
    aux: torch.Tensor | None = None
    aux_mask: torch.Tensor | None = None
    indices: torch.Tensor | None = None

    def __attrs_post_init__(self) -> None:
        check_images(self.images, "images")
        size = self.images.shape[0]
        check_targets(self.targets, size, "targets")
        if self.aux is not None:
            aux = check_tensor(self.aux, "aux")
            if aux.ndim != 2 or aux.shape[0] != size or not aux.is_floating_point():
                raise ValueError(f"aux must be floating (B={size}, D), got {describe(aux)}")
        if self.aux_mask is not None:
            mask = check_tensor(self.aux_mask, "aux_mask")
            if mask.ndim != 2 or mask.shape[0] != size or mask.dtype != torch.bool:
                raise ValueError(f"aux_mask must be bool (B={size}, n_chunks), got {describe(mask)}")
            if self.aux is None:
                raise ValueError("aux_mask was given without aux")
        if self.indices is not None:
            idx = check_tensor(self.indices, "indices")
            if idx.ndim != 1 or idx.shape[0] != size:
                raise ValueError(f"indices must have shape ({size},), got {describe(idx)}")

    @property
    def batch_size(self) -> int:
        return int(self.images.shape[0])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def replace(self, **changes: object) -> MixBatch:
        """A copy with some fields replaced (validated again)."""
        return attrs.evolve(self, **changes)

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> MixBatch:
        """Every tensor moved to `device`."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return MixBatch(
            images=self.images.to(device, non_blocking=non_blocking),
            targets={k: v.to(device, non_blocking=non_blocking) for k, v in self.targets.items()},
            aux=move(self.aux),
            aux_mask=move(self.aux_mask),
            indices=move(self.indices),
        )


@attrs.frozen(eq=False)
class MixResult:
    """What a mixing function did.

    - ``batch``: the mixed MixBatch (targets dense float).
    - ``perm``: (B,) partner of each sample; ``perm[i] == i`` means i was not mixed.
    - ``lam``: (B,) weight of each sample's own content (1.0 where unmixed; for
      CutMix the exact fraction of its own pixels kept).
    - ``boxes``: CutMix only, (B, 4) long ``y1, x1, y2, x2``, half-open; an
      empty box (all zero) where nothing was pasted.
    """

    batch: MixBatch
    perm: torch.Tensor
    lam: torch.Tensor
    boxes: torch.Tensor | None = None

    @property
    def mixed(self) -> torch.Tensor:
        """(B,) bool, True where a sample was mixed with a partner."""
        return self.perm != torch.arange(self.perm.shape[0], device=self.perm.device)
