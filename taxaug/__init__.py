"""taxaug: taxonomy-aware augmentation for hierarchical image classifiers."""

from taxaug import functional

__version__ = "0.1.0"

__all__ = ["__version__", "functional"]
