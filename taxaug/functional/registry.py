"""The op registry: one record per image op, the single source of every per-op table.

A record holds the op's name, family, magnitude (neutral value, valid range, default range, whether a
random sign mirrors it), its batched torch kernel, its C kernel id (read from the library, checked at
import), its affine data (geometric ops), its degenerate image (enhance ops) and its differentiable
forward. The policies' op list (`OP_NAMES`), learned augmentation's (`DIFF_OP_NAMES`, `OP_NEUTRAL`,
`DEFAULT_BOUNDS`, `VALID_RANGES`), color_jitter's neutral values and the dispatcher's kernels are all
derived from `OPS`. Adding an op is one record here plus its kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import torch

from taxaug import _native
from taxaug.functional import _diff_ops as _diff
from taxaug.functional import geometry as _geometry
from taxaug.functional import photometric as _color

__all__ = [
    "DEFAULT_BOUNDS",
    "DIFF_OP_NAMES",
    "FAMILIES",
    "JITTER_OPS",
    "OPS",
    "OP_NAMES",
    "OP_NEUTRAL",
    "VALID_RANGES",
    "Op",
    "jitter_neutral",
]

Kernel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DiffForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
FAMILIES = ("identity", "flip", "geometric", "enhance", "tone", "hue")
"""identity; flips; affine warps (one warp per family pass); blends with a degenerate image (one blend
per family pass); per-pixel tone maps (posterize, solarize, ...); the HSV hue rotation."""

_ANY = (-math.inf, math.inf)


@attrs.frozen
class Op:
    """One image op. Magnitudes are in op units: degrees, pixels, shear or enhance factors, bits, 8-bit
    levels, turns (hue), or for learned equalize/autocontrast the strength of the blend with the full op.

    `kernel(x, params)` runs it on uint8 or float images with float64 (B,) parameters (the policy path;
    `kernel_` may overwrite a float input); `native` says it has a `taxaug_pointwise` kernel, whose id
`c_id` is read from the library (the set of names is checked against these records at import);
    `affine(params, h, w)` gives Pillow's inverse affine data (B, 6); `degenerate(x)` the image an
    enhance op blends with; `diff(x, magnitude, dither)` the differentiable forward on float images
    (None: not a learned op).
    """

    name: str
    family: str = attrs.field(validator=attrs.validators.in_(FAMILIES))
    kernel: Kernel
    neutral: float | None = None
    valid: tuple[float, float] = _ANY
    bounds: tuple[float, float] | None = None
    signed: bool = False
    kernel_: Kernel | None = None
    affine: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None
    degenerate: Callable[[torch.Tensor], torch.Tensor] | None = None
    diff: DiffForward | None = None
    native: bool = False

    @property
    def c_id(self) -> int | None:
        """The op's id in the C library (None without a C kernel or without the library)."""
        return _native.POINTWISE_OPS.get(self.name) if self.native else None

    @property
    def has_magnitude(self) -> bool:
        return self.neutral is not None


def _same(x: torch.Tensor, p: torch.Tensor | None = None) -> torch.Tensor:
    return x


def _hflip(x: torch.Tensor, p: torch.Tensor | None = None) -> torch.Tensor:
    return x.flip(-1)


def _vflip(x: torch.Tensor, p: torch.Tensor | None = None) -> torch.Tensor:
    return x.flip(-2)


def _zeros(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x[:, :1, :1, :1])


def _geometric(name: str, bounds: tuple[float, float]) -> Op:
    affine = _geometry.GEOMETRIC_DATA[name]
    return Op(name, "geometric", _same, neutral=0.0, bounds=bounds, signed=True, affine=affine,
              diff=_diff.geometric(_diff.AFFINE[name]))


def _in_place(name: str, kernel: Kernel) -> Kernel | None:
    """The op's in-place float kernel, when photometric has one."""
    in_place = _color.IN_PLACE_KERNELS.get(name)
    return None if in_place is None else _color._float_in_place(kernel, in_place)


def _enhance(name: str, kernel: Kernel, degenerate: Callable[[torch.Tensor], torch.Tensor]) -> Op:
    return Op(name, "enhance", kernel, neutral=1.0, valid=(0.0, math.inf), bounds=(0.1, 1.9), signed=True, native=True,
              kernel_=_in_place(name, kernel), degenerate=degenerate, diff=_diff.plain(kernel))


def _tone(name: str, kernel: Kernel, **fields) -> Op:
    return Op(name, "tone", kernel, kernel_=_in_place(name, kernel), **fields)


_RECORDS = (
    Op("identity", "identity", _same, diff=_diff.plain(_same)),
    Op("hflip", "flip", _hflip, diff=_diff.plain(_hflip)),
    Op("vflip", "flip", _vflip, diff=_diff.plain(_vflip)),
    _geometric("rotate", (-30.0, 30.0)),
    _geometric("translate_x", (-20.0, 20.0)),
    _geometric("translate_y", (-20.0, 20.0)),
    _geometric("shear_x", (-0.3, 0.3)),
    _geometric("shear_y", (-0.3, 0.3)),
    _enhance("brightness", _color._k_brightness, _zeros),
    _enhance("color", _color._k_color, _color._gray),
    _enhance("contrast", _color._k_contrast, _color._contrast_degenerate),
    _enhance("sharpness", _color._k_sharpness, lambda x: _color._smooth(x, as_float=True)),
    _tone("posterize", _color._k_posterize, native=True, neutral=8.0, valid=(0.0, 8.0), bounds=(4.0, 8.0),
          diff=_diff.posterize(_color._k_posterize)),
    _tone("solarize", _color._k_solarize, native=True, neutral=256.0, valid=(0.0, 256.0), bounds=(1.0, 256.0),
          diff=_diff.solarize(_color._k_solarize)),
    _tone("equalize", _color._k_equalize, native=True, neutral=0.0, valid=(0.0, 1.0), bounds=(0.0, 1.0),
          diff=_diff.strength(_color._k_equalize, straight_through=True)),
    _tone("autocontrast", _color._k_autocontrast, native=True, neutral=0.0, valid=(0.0, 1.0), bounds=(0.0, 1.0),
          diff=_diff.strength(_color._k_autocontrast, straight_through=False)),
    _tone("solarize_add", _color._k_solarize_add, neutral=0.0, valid=(-255.0, 255.0)),
    _tone("invert", _color._k_invert, native=True),
    Op("hue", "hue", _color._k_hue, neutral=0.0, valid=(-0.5, 0.5), native=True),
)

OPS: dict[str, Op] = {op.name: op for op in _RECORDS}
"""Every op, by name, in the order of the learned default policy."""

OP_NAMES: tuple[str, ...] = tuple(OPS)
"""Every op the dispatcher can run (`apply_ops_per_sample`)."""

DIFF_OP_NAMES: tuple[str, ...] = tuple(n for n, op in OPS.items() if op.diff is not None)
"""The ops of learned augmentation, in the order the default policy uses them."""

OP_NEUTRAL: dict[str, float | None] = {n: OPS[n].neutral for n in DIFF_OP_NAMES}
"""The magnitude at which each learned op leaves the image unchanged (None: no magnitude)."""

DEFAULT_BOUNDS: dict[str, tuple[float, float] | None] = {n: OPS[n].bounds for n in DIFF_OP_NAMES}
"""Default learned magnitude bounds per op (the policies' ranges: degrees, pixels, factors, bits, levels)."""

VALID_RANGES: dict[str, tuple[float, float]] = {n: op.valid for n, op in OPS.items() if op.has_magnitude}
"""The magnitudes each op accepts."""

JITTER_OPS = ("brightness", "contrast", "color", "hue")
"""color_jitter's ops, in the order of its `order` argument (color is the saturation factor)."""


def jitter_neutral() -> tuple[float, ...]:
    """The magnitude at which each of color_jitter's ops leaves the image unchanged."""
    return tuple(float(OPS[n].neutral) for n in JITTER_OPS)


_native.check_pointwise_ops(n for n, op in OPS.items() if op.native)
