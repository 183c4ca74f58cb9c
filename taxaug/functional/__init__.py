"""Pure functions: no state, no config. Tensors in, tensors out.

Each submodule owns one area and declares its public names in ``__all__``;
this package re-exports them all.
"""

from taxaug.functional import aux as _aux
from taxaug.functional import boxes as _boxes
from taxaug.functional import differentiable as _differentiable
from taxaug.functional import groups as _groups
from taxaug.functional import image_ops as _image_ops
from taxaug.functional import mixing as _mixing
from taxaug.functional import policies as _policies
from taxaug.functional import random as _random
from taxaug.functional import targets as _targets
from taxaug.functional.aux import *
from taxaug.functional.boxes import *
from taxaug.functional.differentiable import *
from taxaug.functional.groups import *
from taxaug.functional.image_ops import *
from taxaug.functional.mixing import *
from taxaug.functional.policies import *
from taxaug.functional.random import *
from taxaug.functional.targets import *

__all__ = [
    *_aux.__all__,
    *_boxes.__all__,
    *_differentiable.__all__,
    *_groups.__all__,
    *_image_ops.__all__,
    *_mixing.__all__,
    *_policies.__all__,
    *_random.__all__,
    *_targets.__all__,
]
