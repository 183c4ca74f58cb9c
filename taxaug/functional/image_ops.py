"""Batched image ops with per-sample parameters (one public namespace for photometric.py and geometry.py).

Each op takes ``images`` (B, C, H, W) uint8 or float in [0, 1] and per-sample parameters as
(B,) tensors (a python number broadcasts); it returns a new tensor of the same dtype, device
and memory format. See docs/augmentations.md for units, PIL fidelity and tolerances.
"""

from __future__ import annotations

from taxaug.functional import geometry as _geometry
from taxaug.functional import photometric as _color
from taxaug.functional.geometry import *  # noqa: F403
from taxaug.functional.photometric import *  # noqa: F403

__all__ = [*_color.__all__, *_geometry.__all__]
