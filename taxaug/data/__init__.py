"""HDF5 data layer: the labels.h5 schema, datasets, grouped batch sampler and prefetching loader.

Typical use::

    from taxaug.data import HybridDataset, GroupedBatchSampler, PrefetchLoader

    ds = HybridDataset("labels.h5", "images/", image_size=224, metadata=("spatial", "temporal"))
    train, val = ds.split(0.1, seed=0, stratify_rank="taxa_L10")
    sampler = GroupedBatchSampler(train.group_ids("taxa_L10"), 64, mode="mixed-pairs", seed=0)
    loader = PrefetchLoader(train, sampler)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:          # taxaug.MixBatch
            ...
"""

from taxaug.cache import LRUCache, nbytes
from taxaug.data import encoders
from taxaug.data.build import BuildResult, build_from_csv, build_from_folder
from taxaug.data.dataset import HybridDataset, LabelsDataset, LoadFailures, MissingImage, PureHDF5Dataset
from taxaug.data.filters import FilterConfig, apply_filters
from taxaug.data.images import DecodeSpec, ImageLoadError, ImageLocator, decode_image, shard_name
from taxaug.data.inspect import format_inspection, inspect_labels
from taxaug.data.loader import PrefetchLoader, train_val_loaders
from taxaug.data.sampler import GroupedBatchSampler
from taxaug.data.schema import SchemaError, ValidationReport, validate, write_labels
from taxaug.data.shard import ShardReport, shard_directory
from taxaug.data.split import split_indices
from taxaug.data.verify import VerificationError, VerifyReport, verify_images

__all__ = [
    "BuildResult",
    "DecodeSpec",
    "FilterConfig",
    "GroupedBatchSampler",
    "HybridDataset",
    "ImageLoadError",
    "ImageLocator",
    "LRUCache",
    "LabelsDataset",
    "LoadFailures",
    "MissingImage",
    "PrefetchLoader",
    "PureHDF5Dataset",
    "SchemaError",
    "ShardReport",
    "ValidationReport",
    "VerificationError",
    "VerifyReport",
    "apply_filters",
    "build_from_csv",
    "build_from_folder",
    "decode_image",
    "encoders",
    "format_inspection",
    "inspect_labels",
    "nbytes",
    "shard_directory",
    "shard_name",
    "split_indices",
    "train_val_loaders",
    "validate",
    "verify_images",
    "write_labels",
]
