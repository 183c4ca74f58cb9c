"""Pure functions: no state, no config. Tensors in, tensors out.

Each submodule owns one area and declares its public names in ``__all__``;
this package re-exports them all.
"""

from taxaug.functional import differentiable as _differentiable
from taxaug.functional import random as _random
from taxaug.functional.differentiable import *
from taxaug.functional.random import *

__all__ = [*_random.__all__, *_differentiable.__all__]
