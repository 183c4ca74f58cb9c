"""Models: a backbone from a factory, one head per rank, optional metadata branch.

`HierarchicalClassifier(images, aux=None, aux_mask=None) -> {rank: logits}`.
Images may be uint8 (0..255) or float (0..1); the model normalises them
itself so the augmentation pipeline can stay in uint8 as long as it likes.

Heads (``ModelConfig.head``):
- ``flat``: an independent linear layer per rank.
- ``parent_conditioned``: coarsest rank first; each finer rank sees the
  features plus the parent rank's probabilities, projected to width
  ``d = parent_embedding`` by a learned embedding (``(B, K_parent) @
  (K_parent, d)``) when the parent rank has more than d classes, as they are
  otherwise; its logits get the log-probability of each class's *own* parent
  (through the taxonomy's parent table) added with a learned scale, so a
  child cannot outscore its parent's verdict for free. Parameters grow as
  ``K_parent * d + (features + d) * K_child``: linear in the classes.
- ``hierarchical_softmax``: ``log p(c) = log p(c | parent(c)) + log p(parent(c))``
  with the conditional a softmax over siblings only. Outputs are normalised
  log-probabilities, and the marginals are consistent with the tree by
  construction (summing children gives the parent exactly).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from taxaug.taxonomy import Taxonomy
from taxaug_train.config import ConfigError, ModelConfig

__all__ = [
    "FlatHeads",
    "HierarchicalClassifier",
    "HierarchicalSoftmaxHead",
    "MetadataBranch",
    "ParentConditionedHead",
    "SmallCNN",
    "build_backbone",
    "build_model",
    "segment_log_softmax",
]

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU stages with stride-2 downsampling, then global average pooling."""

    def __init__(self, in_channels: int = 3, width: int = 32, dropout: float = 0.0):
        super().__init__()
        chans = [width, width * 2, width * 4, width * 4]
        layers: list[nn.Module] = []
        prev = in_channels
        for i, c in enumerate(chans):
            layers += [
                nn.Conv2d(prev, c, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.Conv2d(c, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
            ]
            prev = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.num_features = prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.pool(self.features(x)).flatten(1))


def _import_callable(spec: str) -> Callable[..., nn.Module]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"model.backbone: cannot import module {module_name!r} from {spec!r}: {err}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"model.backbone: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model.backbone: {spec!r} is not callable")
    return obj


def _feature_dim(module: nn.Module, in_channels: int = 3, size: int = 32) -> int:
    dim = getattr(module, "num_features", None)
    if isinstance(dim, int) and dim > 0:
        return dim
    was_training = module.training
    module.eval()
    with torch.no_grad():
        out = module(torch.zeros(2, in_channels, size, size))
    module.train(was_training)
    if out.ndim != 2:
        raise ConfigError(
            f"model.backbone must return (B, features) pooled features, got a tensor of shape {tuple(out.shape)}; "
            "wrap it so it pools and flattens"
        )
    return int(out.shape[1])


def build_backbone(cfg: ModelConfig, image_size: int = 32) -> tuple[nn.Module, int]:
    """(backbone, feature_dim) from ``cfg.backbone``.

    ``small_cnn``; ``timm:<name>`` (``timm.create_model(name, num_classes=0)``,
    which returns pooled features); or ``package.module:callable`` called with
    ``backbone_kwargs``, which must return an ``nn.Module`` mapping images to
    ``(B, features)``.
    """
    name = cfg.backbone
    kwargs = dict(cfg.backbone_kwargs)
    if name == "small_cnn":
        net = SmallCNN(width=cfg.width, dropout=cfg.dropout, **kwargs)
        return net, net.num_features
    if name.startswith("timm:"):
        try:
            timm = importlib.import_module("timm")
        except ImportError:
            raise ConfigError(
                f"model.backbone {name!r} needs timm, which is not installed; `pip install timm` or use small_cnn"
            ) from None
        net = timm.create_model(name[len("timm:") :], pretrained=cfg.pretrained, num_classes=0, **kwargs)
        return net, int(net.num_features)
    if ":" in name:
        net = _import_callable(name)(**kwargs)
        if not isinstance(net, nn.Module):
            raise ConfigError(f"model.backbone {name!r} returned {type(net).__name__}, not an nn.Module")
        return net, _feature_dim(net, size=image_size)
    raise ConfigError(
        f"model.backbone: unknown backbone {name!r}; use 'small_cnn', 'timm:<model name>' or 'package.module:callable'"
    )


class MetadataBranch(nn.Module):
    """MLP over the aux vector; invalid chunks (per `aux_mask`) are zeroed and the mask is an input too."""

    def __init__(self, chunks: Sequence[tuple[int, int]], aux_dim: int, hidden: int):
        super().__init__()
        self.chunks = [tuple(c) for c in chunks]
        col_chunk = torch.full((aux_dim,), -1, dtype=torch.long)
        for j, (start, end) in enumerate(self.chunks):
            col_chunk[start:end] = j
        self.register_buffer("col_chunk", col_chunk, persistent=False)
        self.net = nn.Sequential(
            nn.Linear(aux_dim + len(self.chunks), hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.out_features = hidden

    def forward(self, aux: torch.Tensor, aux_mask: torch.Tensor | None) -> torch.Tensor:
        aux = aux.float()
        if aux_mask is None:
            mask = torch.ones(aux.shape[0], len(self.chunks), device=aux.device)
        else:
            mask = aux_mask.float()
        if len(self.chunks):
            valid_cols = torch.where(
                self.col_chunk >= 0, mask[:, self.col_chunk.clamp_min(0)], torch.ones((), device=aux.device)
            )
            aux = aux * valid_cols
        return self.net(torch.cat([aux, mask], dim=1))


class FlatHeads(nn.Module):
    def __init__(self, in_features: int, num_classes: Mapping[str, int]):
        super().__init__()
        self.ranks = list(num_classes)
        self.fc = nn.ModuleDict({r: nn.Linear(in_features, k) for r, k in num_classes.items()})

    def forward(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        return {r: self.fc[r](feats) for r in self.ranks}


class ParentConditionedHead(nn.Module):
    """Coarse to fine; rank k sees features + p(rank k+1) (embedded to width `embedding` when the parent
    rank has more classes than that) and gets ``scale * log p(parent(c))`` added.

    ``embedding=0`` keeps only the additive parent prior.
    """

    def __init__(self, in_features: int, taxonomy: Taxonomy, *, embedding: int = 32):
        super().__init__()
        if embedding < 0:
            raise ValueError(f"parent embedding width must be >= 0, got {embedding}")
        self.ranks = list(taxonomy.rank_names)
        nc = taxonomy.num_classes
        self.fc = nn.ModuleDict()
        self.embed = nn.ModuleDict()
        for k, r in enumerate(self.ranks):
            parents = nc[self.ranks[k + 1]] if k + 1 < len(self.ranks) and embedding else 0
            self.fc[r] = nn.Linear(in_features + min(parents, embedding), nc[r])
            if parents > embedding:
                self.embed[r] = nn.Linear(parents, embedding, bias=False)
        self.with_parent = {r for k, r in enumerate(self.ranks) if k + 1 < len(self.ranks) and embedding}
        for k in range(len(self.ranks) - 1):
            self.register_buffer(f"parent_{k}", torch.from_numpy(taxonomy.parent_array(k)).long(), persistent=False)
        self.prior_scale = nn.Parameter(torch.ones(max(len(self.ranks) - 1, 1)))

    def forward(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        coarse = self.ranks[-1]
        out[coarse] = self.fc[coarse](feats)
        for k in reversed(range(len(self.ranks) - 1)):
            rank = self.ranks[k]
            parent_logp = torch.log_softmax(out[self.ranks[k + 1]].float(), dim=1).to(feats.dtype)
            inputs = feats
            if rank in self.with_parent:
                parent_p = parent_logp.exp()
                inputs = torch.cat([feats, self.embed[rank](parent_p) if rank in self.embed else parent_p], dim=1)
            logits = self.fc[rank](inputs)
            parent_of = getattr(self, f"parent_{k}")
            out[rank] = logits + self.prior_scale[k] * parent_logp[:, parent_of]
        return {r: out[r] for r in self.ranks}


def segment_log_softmax(scores: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """log softmax of (B, K) `scores` within each segment (classes sharing `segment[c]`), vectorised."""
    idx = segment.unsqueeze(0).expand_as(scores)
    seg_max = torch.full((scores.shape[0], num_segments), float("-inf"), device=scores.device, dtype=scores.dtype)
    seg_max = seg_max.scatter_reduce(1, idx, scores, reduce="amax", include_self=True)
    shifted = scores - seg_max.gather(1, idx).detach()
    sums = torch.zeros_like(seg_max).scatter_add(1, idx, shifted.exp())
    return shifted - sums.gather(1, idx).log()


class HierarchicalSoftmaxHead(nn.Module):
    """``log p(c) = log softmax_siblings(s)[c] + log p(parent(c))``; outputs are log-probabilities."""

    def __init__(self, in_features: int, taxonomy: Taxonomy):
        super().__init__()
        self.ranks = list(taxonomy.rank_names)
        self.num_classes = dict(taxonomy.num_classes)
        self.fc = nn.ModuleDict({r: nn.Linear(in_features, k) for r, k in taxonomy.num_classes.items()})
        for k in range(len(self.ranks) - 1):
            self.register_buffer(f"parent_{k}", torch.from_numpy(taxonomy.parent_array(k)).long(), persistent=False)

    def forward(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        coarse = self.ranks[-1]
        out[coarse] = torch.log_softmax(self.fc[coarse](feats).float(), dim=1)
        for k in reversed(range(len(self.ranks) - 1)):
            parent_of = getattr(self, f"parent_{k}")
            parent_rank = self.ranks[k + 1]
            cond = segment_log_softmax(self.fc[self.ranks[k]](feats).float(), parent_of, self.num_classes[parent_rank])
            out[self.ranks[k]] = cond + out[parent_rank][:, parent_of]
        return {r: out[r] for r in self.ranks}


class HierarchicalClassifier(nn.Module):
    """Backbone -> (features ++ metadata features) -> per-rank logits."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        taxonomy: Taxonomy,
        *,
        head: str = "flat",
        metadata: MetadataBranch | None = None,
        parent_embedding: int = 32,
    ):
        super().__init__()
        self.backbone = backbone
        self.metadata = metadata
        in_features = feature_dim + (metadata.out_features if metadata is not None else 0)
        if head == "flat":
            self.head = FlatHeads(in_features, taxonomy.num_classes)
        elif head == "parent_conditioned":
            self.head = ParentConditionedHead(in_features, taxonomy, embedding=parent_embedding)
        elif head == "hierarchical_softmax":
            self.head = HierarchicalSoftmaxHead(in_features, taxonomy)
        else:
            raise ConfigError(f"model.head: unknown head {head!r}")
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        if x.shape[1] == 3:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return x

    def forward(
        self, images: torch.Tensor, aux: torch.Tensor | None = None, aux_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        feats = self.backbone(self.normalize(images))
        if self.metadata is not None:
            if aux is None:
                raise ValueError("this model has a metadata branch but the batch carries no aux metadata")
            feats = torch.cat([feats, self.metadata(aux.to(feats.device), aux_mask).to(feats.dtype)], dim=1)
        return self.head(feats)


def build_model(
    cfg: ModelConfig,
    taxonomy: Taxonomy,
    *,
    image_size: int = 32,
    aux_chunks: Sequence[tuple[int, int]] = (),
    aux_dim: int = 0,
) -> HierarchicalClassifier:
    """The model a `ModelConfig` describes, with heads sized from `taxonomy`."""
    backbone, dim = build_backbone(cfg, image_size)
    branch = None
    if cfg.metadata_branch:
        if aux_dim <= 0:
            raise ConfigError(
                "model.metadata_branch is true but the dataset provides no metadata; list components in "
                "data.metadata (e.g. [spatial, temporal, elevation]) or set model.metadata_branch: false"
            )
        branch = MetadataBranch(aux_chunks, aux_dim, cfg.metadata_hidden)
    return HierarchicalClassifier(backbone, dim, taxonomy, head=cfg.head, metadata=branch,
                                  parent_embedding=cfg.parent_embedding)
