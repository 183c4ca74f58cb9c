"""Algorithms: stateful, resumable augmentations driven by training-loop events (the Composer pattern).

    engine = Engine([create("selective_mixup", group_levels=["taxa_L10"]), create("rand_augment")], seed=0)
    engine.run(Event.AFTER_DATALOADER, state)

See docs/algorithms.md for which State fields a loop sets around each event.
"""

from taxaug.algorithms.base import Algorithm, derive_seed
from taxaug.algorithms.engine import RANK_SEED_STRIDE, Engine, TraceEntry
from taxaug.algorithms.events import EVAL_EVENTS, REVERSED_EVENTS, Event
from taxaug.algorithms.image import AugMix, AutoAugment, RandAugment, RandomErasing, TrivialAugment
from taxaug.algorithms.learned import FixedPolicyAugment, LearnedAugment, UniformAugment
from taxaug.algorithms.mixing import CutMix, Mix, MixUp, SelectiveCutMix, SelectiveMix, SelectiveMixup
from taxaug.algorithms.registry import (
    ENTRY_POINT_GROUP,
    UnknownAlgorithmError,
    create,
    format_algorithms,
    from_config,
    list_algorithms,
    register,
    registered,
    to_config,
)
from taxaug.algorithms.schedules import (
    Constant,
    Cosine,
    Linear,
    Schedule,
    Step,
    as_schedule,
    schedule_from_config,
)
from taxaug.algorithms.smoothing import LabelSmoothing, TaxonomyLabelSmoothing
from taxaug.algorithms.state import State

__all__ = [
    "ENTRY_POINT_GROUP",
    "EVAL_EVENTS",
    "RANK_SEED_STRIDE",
    "REVERSED_EVENTS",
    "Algorithm",
    "AugMix",
    "AutoAugment",
    "Constant",
    "Cosine",
    "CutMix",
    "Engine",
    "Event",
    "FixedPolicyAugment",
    "LabelSmoothing",
    "LearnedAugment",
    "Linear",
    "Mix",
    "MixUp",
    "RandAugment",
    "RandomErasing",
    "Schedule",
    "SelectiveCutMix",
    "SelectiveMix",
    "SelectiveMixup",
    "State",
    "Step",
    "TaxonomyLabelSmoothing",
    "TraceEntry",
    "TrivialAugment",
    "UniformAugment",
    "UnknownAlgorithmError",
    "as_schedule",
    "create",
    "derive_seed",
    "format_algorithms",
    "from_config",
    "list_algorithms",
    "register",
    "registered",
    "schedule_from_config",
    "to_config",
]
