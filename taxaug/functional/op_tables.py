"""Op tables of the policies: which ops each policy draws, their magnitude ranges and signs in that
policy, and the published AutoAugment sub-policies. Pure data plus `op_parameters`. The ops
themselves (names, kernels, neutral values, valid ranges) are the records of `registry.OPS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import torch

from taxaug.functional.registry import OP_NAMES

__all__ = [
    "AUGMIX_OPS",
    "AUGMIX_SETS",
    "AUTOAUGMENT_BINS",
    "AUTOAUGMENT_OPS",
    "AUTOAUGMENT_POLICIES",
    "OP_NAMES",
    "OP_TABLES",
    "RANDAUGMENT_OPS",
    "TRIVIAL_AUGMENT_WIDE_OPS",
    "OpSpec",
    "op_parameters",
]

@attrs.frozen
class OpSpec:
    """One op of a policy and how a magnitude maps to its parameter.

    A magnitude fraction f in [0, 1] (bin / (num_bins - 1)) gives ``low + (high - low) * f``;
    `relative` ("width"/"height") scales that by the image size (translations); `signed` ops get a
    random sign; `offset` is added after the sign (enhance factors are 1 + m); `integer` rounds
    (posterize bits). `fn` is the public batched op in `taxaug.functional`.
    """

    name: str = attrs.field(validator=attrs.validators.in_(OP_NAMES))
    low: float = 0.0
    high: float = 0.0
    signed: bool = False
    relative: str | None = attrs.field(default=None, validator=attrs.validators.in_((None, "width", "height")))
    offset: float = 0.0
    integer: bool = False

    @property
    def fn(self) -> Callable[..., torch.Tensor]:
        from taxaug.functional import image_ops

        return getattr(image_ops, self.name)

    @property
    def has_magnitude(self) -> bool:
        return self.low != self.high


def _enhance(name: str, high: float) -> OpSpec:
    return OpSpec(name, 0.0, high, signed=True, offset=1.0)


def _table(shear: float, translate: float, relative: str | None, rotate: float, enhance: float,
           post_low: float, identity: bool, invert: bool) -> tuple[OpSpec, ...]:
    ops = [OpSpec("identity")] if identity else []
    ops += [
        OpSpec("shear_x", 0.0, shear, signed=True),
        OpSpec("shear_y", 0.0, shear, signed=True),
        OpSpec("translate_x", 0.0, translate, signed=True, relative=relative and "width"),
        OpSpec("translate_y", 0.0, translate, signed=True, relative=relative and "height"),
        OpSpec("rotate", 0.0, rotate, signed=True),
        _enhance("brightness", enhance),
        _enhance("color", enhance),
        _enhance("contrast", enhance),
        _enhance("sharpness", enhance),
        OpSpec("posterize", 8.0, post_low, integer=True),
        OpSpec("solarize", 255.0, 0.0),
        OpSpec("autocontrast"),
        OpSpec("equalize"),
    ]
    if invert:
        ops.append(OpSpec("invert"))
    return tuple(ops)


# Ranges as in torchvision's AutoAugment/RandAugment/TrivialAugmentWide (image-size translations
# are 150/331 of the side for AutoAugment and RandAugment, 32 px for TrivialAugmentWide).
AUTOAUGMENT_OPS = _table(0.3, 150.0 / 331.0, "rel", 30.0, 0.9, 4.0, identity=False, invert=True)
RANDAUGMENT_OPS = _table(0.3, 150.0 / 331.0, "rel", 30.0, 0.9, 4.0, identity=True, invert=False)
TRIVIAL_AUGMENT_WIDE_OPS = _table(0.99, 32.0, None, 135.0, 0.99, 2.0, identity=True, invert=False)
AUGMIX_OPS = (
    OpSpec("autocontrast"),
    OpSpec("equalize"),
    OpSpec("posterize", 4.0, 0.0, integer=True),
    OpSpec("rotate", 0.0, 30.0, signed=True),
    OpSpec("solarize", 256.0, 0.0),
    OpSpec("shear_x", 0.0, 0.3, signed=True),
    OpSpec("shear_y", 0.0, 0.3, signed=True),
    OpSpec("translate_x", 0.0, 1.0 / 3.0, signed=True, relative="width"),
    OpSpec("translate_y", 0.0, 1.0 / 3.0, signed=True, relative="height"),
    OpSpec("color", 0.1, 1.9),
    OpSpec("contrast", 0.1, 1.9),
    OpSpec("brightness", 0.1, 1.9),
    OpSpec("sharpness", 0.1, 1.9),
)
"""AugMix ops with their ranges at severity 10 (`augmix` samples levels as the AugMix paper does)."""

OP_TABLES: dict[str, tuple[OpSpec, ...]] = {
    "autoaugment": AUTOAUGMENT_OPS,
    "randaugment": RANDAUGMENT_OPS,
    "trivial_augment_wide": TRIVIAL_AUGMENT_WIDE_OPS,
    "augmix": AUGMIX_OPS,
}

AUGMIX_SETS: dict[str, tuple[str, ...]] = {
    "all": ("autocontrast", "equalize", "posterize", "rotate", "solarize", "shear_x", "shear_y",
            "translate_x", "translate_y", "color", "contrast", "brightness", "sharpness"),
    # drops the ops that overlap the ImageNet-C / CIFAR-10-C corruptions
    "safe": ("autocontrast", "equalize", "posterize", "rotate", "solarize", "shear_x", "shear_y",
             "translate_x", "translate_y"),
    # "all" with the original AugMix sampling of the enhance factors (0.1 + 0.18 * level)
    "original": ("autocontrast", "equalize", "posterize", "rotate", "solarize", "shear_x", "shear_y",
                 "translate_x", "translate_y", "color", "contrast", "brightness", "sharpness"),
}

_P = tuple[tuple[str, float, int | None], tuple[str, float, int | None]]

# Published AutoAugment sub-policies (Cubuk et al. 2019), (op, probability, magnitude bin of 10).
AUTOAUGMENT_POLICIES: dict[str, tuple[_P, ...]] = {
    "imagenet": (
        (("posterize", 0.4, 8), ("rotate", 0.6, 9)),
        (("solarize", 0.6, 5), ("autocontrast", 0.6, None)),
        (("equalize", 0.8, None), ("equalize", 0.6, None)),
        (("posterize", 0.6, 7), ("posterize", 0.6, 6)),
        (("equalize", 0.4, None), ("solarize", 0.2, 4)),
        (("equalize", 0.4, None), ("rotate", 0.8, 8)),
        (("solarize", 0.6, 3), ("equalize", 0.6, None)),
        (("posterize", 0.8, 5), ("equalize", 1.0, None)),
        (("rotate", 0.2, 3), ("solarize", 0.6, 8)),
        (("equalize", 0.6, None), ("posterize", 0.4, 6)),
        (("rotate", 0.8, 8), ("color", 0.4, 0)),
        (("rotate", 0.4, 9), ("equalize", 0.6, None)),
        (("equalize", 0.0, None), ("equalize", 0.8, None)),
        (("invert", 0.6, None), ("equalize", 1.0, None)),
        (("color", 0.6, 4), ("contrast", 1.0, 8)),
        (("rotate", 0.8, 8), ("color", 1.0, 2)),
        (("color", 0.8, 8), ("solarize", 0.8, 7)),
        (("sharpness", 0.4, 7), ("invert", 0.6, None)),
        (("shear_x", 0.6, 5), ("equalize", 1.0, None)),
        (("color", 0.4, 0), ("equalize", 0.6, None)),
        (("equalize", 0.4, None), ("solarize", 0.2, 4)),
        (("solarize", 0.6, 5), ("autocontrast", 0.6, None)),
        (("invert", 0.6, None), ("equalize", 1.0, None)),
        (("color", 0.6, 4), ("contrast", 1.0, 8)),
        (("equalize", 0.8, None), ("equalize", 0.6, None)),
    ),
    "cifar10": (
        (("invert", 0.1, None), ("contrast", 0.2, 6)),
        (("rotate", 0.7, 2), ("translate_x", 0.3, 9)),
        (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)),
        (("shear_y", 0.5, 8), ("translate_y", 0.7, 9)),
        (("autocontrast", 0.5, None), ("equalize", 0.9, None)),
        (("shear_y", 0.2, 7), ("posterize", 0.3, 7)),
        (("color", 0.4, 3), ("brightness", 0.6, 7)),
        (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
        (("equalize", 0.6, None), ("equalize", 0.5, None)),
        (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
        (("color", 0.7, 7), ("translate_x", 0.5, 8)),
        (("equalize", 0.3, None), ("autocontrast", 0.4, None)),
        (("translate_y", 0.4, 3), ("sharpness", 0.2, 6)),
        (("brightness", 0.9, 6), ("color", 0.2, 8)),
        (("solarize", 0.5, 2), ("invert", 0.0, None)),
        (("equalize", 0.2, None), ("autocontrast", 0.6, None)),
        (("equalize", 0.2, None), ("equalize", 0.6, None)),
        (("color", 0.9, 9), ("equalize", 0.6, None)),
        (("autocontrast", 0.8, None), ("solarize", 0.2, 8)),
        (("brightness", 0.1, 3), ("color", 0.7, 0)),
        (("solarize", 0.4, 5), ("autocontrast", 0.9, None)),
        (("translate_y", 0.9, 9), ("translate_y", 0.7, 9)),
        (("autocontrast", 0.9, None), ("solarize", 0.8, 3)),
        (("equalize", 0.8, None), ("invert", 0.1, None)),
        (("translate_y", 0.7, 9), ("autocontrast", 0.9, None)),
    ),
    "svhn": (
        (("shear_x", 0.9, 4), ("invert", 0.2, None)),
        (("shear_y", 0.9, 8), ("invert", 0.7, None)),
        (("equalize", 0.6, None), ("solarize", 0.6, 6)),
        (("invert", 0.9, None), ("equalize", 0.6, None)),
        (("equalize", 0.6, None), ("rotate", 0.9, 3)),
        (("shear_x", 0.9, 4), ("autocontrast", 0.8, None)),
        (("shear_y", 0.9, 8), ("invert", 0.4, None)),
        (("shear_y", 0.9, 5), ("solarize", 0.2, 6)),
        (("invert", 0.9, None), ("autocontrast", 0.8, None)),
        (("equalize", 0.6, None), ("rotate", 0.9, 3)),
        (("shear_x", 0.9, 4), ("solarize", 0.3, 3)),
        (("shear_y", 0.8, 8), ("invert", 0.7, None)),
        (("equalize", 0.9, None), ("translate_y", 0.6, 6)),
        (("invert", 0.9, None), ("equalize", 0.6, None)),
        (("contrast", 0.3, 3), ("rotate", 0.8, 4)),
        (("invert", 0.8, None), ("translate_y", 0.0, 2)),
        (("shear_y", 0.7, 6), ("solarize", 0.4, 8)),
        (("invert", 0.6, None), ("rotate", 0.8, 4)),
        (("shear_y", 0.3, 7), ("translate_x", 0.9, 3)),
        (("shear_x", 0.1, 6), ("invert", 0.6, None)),
        (("solarize", 0.7, 2), ("translate_y", 0.6, 7)),
        (("shear_y", 0.8, 4), ("invert", 0.8, None)),
        (("shear_x", 0.7, 9), ("translate_y", 0.8, 3)),
        (("shear_y", 0.8, 5), ("autocontrast", 0.7, None)),
        (("shear_x", 0.7, 2), ("invert", 0.1, None)),
    ),
}
AUTOAUGMENT_BINS = 10


def op_parameters(
    specs: Sequence[OpSpec],
    op_indices: torch.Tensor,
    fraction: torch.Tensor,
    negate: torch.Tensor | None,
    height: int,
    width: int,
) -> torch.Tensor:
    """Per-sample op parameters (float64, (B,)) from op indices into `specs`, magnitude fractions in
    [0, 1] and a bool `negate` (signed ops only)."""
    dev = op_indices.device
    low = torch.tensor([s.low for s in specs], dtype=torch.float64, device=dev)[op_indices]
    high = torch.tensor([s.high for s in specs], dtype=torch.float64, device=dev)[op_indices]
    size = [float(width) if s.relative == "width" else float(height) if s.relative == "height" else 1.0
            for s in specs]
    scale = torch.tensor(size, dtype=torch.float64, device=dev)[op_indices]
    signed = torch.tensor([s.signed for s in specs], device=dev)[op_indices]
    offset = torch.tensor([s.offset for s in specs], dtype=torch.float64, device=dev)[op_indices]
    integer = torch.tensor([s.integer for s in specs], device=dev)[op_indices]
    value = (low + (high - low) * fraction.double()) * scale
    value = torch.where(integer, value.round(), value)
    if negate is not None:
        value = torch.where(signed & negate, -value, value)
    return value + offset
