"""taxaug: taxonomy-aware augmentation for hierarchical image classifiers."""

from taxaug import functional
from taxaug.functional.batch import MixBatch, MixResult
from taxaug.taxonomy import Taxonomy, TaxonomyConflictError

__version__ = "0.1.0"

__all__ = ["MixBatch", "MixResult", "Taxonomy", "TaxonomyConflictError", "__version__", "functional"]
