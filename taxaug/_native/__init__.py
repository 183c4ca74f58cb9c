"""Optional C kernels for the CPU image passes of Mixup and CutMix.

``kernels.c`` is built at install time when a C compiler is present and loaded
here through ctypes. Callers ask :func:`available` and otherwise run their
torch code; ``TAXAUG_NATIVE=0`` in the environment, or :func:`disabled`,
turns the kernels off (to compare, or to rule them out in a bug report).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.machinery
import os
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["available", "disabled", "kernel_isa", "mix_u8", "paste_boxes"]

_HERE = Path(__file__).resolve().parent
_enabled = os.environ.get("TAXAUG_NATIVE", "1") != "0"


def _load() -> ctypes.CDLL | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = _HERE / f"kernels{suffix}"
        if path.exists():
            try:
                library = ctypes.CDLL(str(path))
            except OSError:
                return None
            pointer, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
            library.taxaug_mix_u8.argtypes = [pointer, pointer, pointer, pointer, i64, i64, i32]
            library.taxaug_paste_boxes.argtypes = [pointer, pointer, pointer, pointer, i64, i64, i64, i64, i64,
                                                   i32, i32]
            library.taxaug_kernel_isa.restype = ctypes.c_char_p
            return library
    return None


_library = _load()


def available() -> bool:
    """True when the kernels were built and are not turned off."""
    return _enabled and _library is not None


def kernel_isa() -> str:
    """Which row kernel this CPU runs ("avx2" or "scalar"), or "none" when not built."""
    return _library.taxaug_kernel_isa().decode() if _library is not None else "none"


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Runs the block on the torch code paths, as on an install without the kernels."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def sample_blocks_match(x: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether each sample of x (and out, laid out alike) is one dense block of memory the kernels can walk."""
    if x.device.type != "cpu" or out.stride() != x.stride() or x.ndim != 4:
        return False
    return x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)


_BYTES_PER_THREAD = 2**18  # below this a thread costs more than it saves


def _threads(nbytes: int) -> int:
    return max(1, min(torch.get_num_threads(), nbytes // _BYTES_PER_THREAD))


def mix_u8(x: torch.Tensor, perm: torch.Tensor, weights: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[i] = round(lerp(x[perm[i]], x[i], weights[i])) for uint8 x; same bytes as the torch path."""
    perm = perm.contiguous()
    weights = weights.to(torch.float32).contiguous()
    sample_bytes = x[0].numel() if x.shape[0] else 0
    _library.taxaug_mix_u8(out.data_ptr(), x.data_ptr(), perm.data_ptr(), weights.data_ptr(), x.shape[0],
                           sample_bytes, _threads(x.numel()))
    return out


def paste_boxes(x: torch.Tensor, perm: torch.Tensor, boxes: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[i] = x[i] with box (y1, x1, y2, x2) of row i copied from x[perm[i]], any dtype."""
    perm = perm.contiguous()
    boxes = boxes.to(torch.int64).contiguous()
    batch, channels, height, width = x.shape
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    _library.taxaug_paste_boxes(out.data_ptr(), x.data_ptr(), perm.data_ptr(), boxes.data_ptr(), batch, channels,
                                height, width, x.element_size(), int(channels_last),
                                _threads(x.numel() * x.element_size()))
    return out
