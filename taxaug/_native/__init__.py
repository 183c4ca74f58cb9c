"""Optional C kernels for the CPU image passes of Mixup, CutMix and the policies' per-pixel ops, and the
evaluation metrics' top-k.

The C sources beside this file (``kernels.h`` lists them) are built into one
library at install time when a C compiler is present, and loaded here through
ctypes. Callers ask :func:`available` and otherwise run their torch code;
the kernels serve the "cpu" strategy of :func:`device_strategy` only;
``TAXAUG_NATIVE=0`` in the environment, or :func:`disabled`, turns the kernels
off (to compare, or to rule them out in a bug report).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.machinery
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

__all__ = [
    "MIX_DTYPES",
    "POINTWISE_OPS",
    "available",
    "check_pointwise_ops",
    "device_strategy",
    "disabled",
    "forced_strategy",
    "ingroup_perm",
    "kernel_isa",
    "mix",
    "own_threads",
    "paste_boxes",
    "pointwise",
    "thread_pool",
    "top_k",
    "warp_nearest",
]

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
            if not hasattr(library, "taxaug_pointwise_op_count"):
                if not _enabled:
                    return None
                raise ImportError(f"{path} is older than taxaug's sources (no taxaug_pointwise_op_count); rebuild "
                                  "it (python setup.py build_ext --inplace) or set TAXAUG_NATIVE=0")
            pointer, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
            library.taxaug_mix.argtypes = [pointer, pointer, pointer, pointer, i64, i64, i32, i32]
            library.taxaug_paste_boxes.argtypes = [pointer, pointer, pointer, pointer, i64, i64, i64, i64, i64,
                                                   i32, i32]
            library.taxaug_pointwise.argtypes = [i32, i32, pointer, pointer, pointer, pointer, pointer, i64, i64, i64,
                                                 i64, i32]
            library.taxaug_warp_nearest.argtypes = [pointer, pointer, pointer, pointer, pointer, i64, i64, i64, i64,
                                                    i64, i32]
            library.taxaug_kernel_isa.restype = ctypes.c_char_p
            library.taxaug_thread_pool.argtypes = [i32]
            library.taxaug_ingroup_perm.argtypes = [pointer, pointer, pointer, i64, i64]
            library.taxaug_topk.argtypes = [pointer, pointer, pointer, pointer, pointer, i64, i64, i64, i64, i32, i32]
            library.taxaug_pointwise_op_name.argtypes = [i32]
            library.taxaug_pointwise_op_name.restype = ctypes.c_char_p
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


def thread_pool() -> str:
    """Where the kernels run their threads: "openmp" (the pool torch's own ops run on), "own" or "none"."""
    if _library is None:
        return "none"
    return "openmp" if _library.taxaug_thread_pool(-1) else "own"


_prefer_openmp = True


@contextlib.contextmanager
def own_threads() -> Iterator[None]:
    """Runs the block's kernels on threads of their own instead of torch's OpenMP pool (to compare the two)."""
    global _prefer_openmp
    previous, _prefer_openmp = _prefer_openmp, False
    if _library is not None:
        _library.taxaug_thread_pool(0)
    try:
        yield
    finally:
        _prefer_openmp = previous
        if _library is not None:
            _library.taxaug_thread_pool(int(previous))


STRATEGIES = ("auto", "cpu", "accelerator")
STRATEGY_VARIABLE = "TAXAUG_DEVICE_STRATEGY"
_forced_strategy = os.environ.get(STRATEGY_VARIABLE, "auto")  # read once: a lookup per op call is measurable


def device_strategy(device: torch.device) -> str:
    """How the image ops run on `device`: "cpu" (grouped by op, C kernels, cache-sized blocks) or
    "accelerator" (one pass per op family over the whole batch, masks, no host sync).

    ``TAXAUG_DEVICE_STRATEGY=cpu|accelerator`` in the environment (read at import) or
    :func:`forced_strategy` forces one on any device (so CPU CI runs every branch a GPU takes);
    ``auto`` (the default) picks "cpu" on CPU and "accelerator" elsewhere.
    """
    if _forced_strategy == "auto":
        return "cpu" if device.type == "cpu" else "accelerator"
    if _forced_strategy not in STRATEGIES:
        raise ValueError(f"{STRATEGY_VARIABLE} must be one of {', '.join(STRATEGIES)}, got {_forced_strategy!r}")
    return _forced_strategy


@contextlib.contextmanager
def forced_strategy(name: str) -> Iterator[None]:
    """Runs the block with every device on strategy `name` ("auto", "cpu" or "accelerator")."""
    global _forced_strategy
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    previous, _forced_strategy = _forced_strategy, name
    try:
        yield
    finally:
        _forced_strategy = previous


def sample_blocks_match(x: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether each sample of x (and out, laid out alike) is one dense block of memory the kernels can walk."""
    # C kernels need host memory, and the cpu strategy (forced strategies apply on any device)
    if x.device.type != "cpu" or device_strategy(x.device) != "cpu" or out.stride() != x.stride() or x.ndim != 4:
        return False
    return x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)


# Work per extra thread: waking a worker of torch's OpenMP pool pays off from ~128 KB (measured on
# uint8 Mixup, with and without a torch op just before); starting a thread of our own costs ~80 us,
# the time to move 1-2 MB.
_BYTES_PER_POOL_THREAD = 2**17
_BYTES_PER_OWN_THREAD = 2**21


def _threads(nbytes: int) -> int:
    pooled = _library is not None and _library.taxaug_thread_pool(-1)
    return max(1, min(torch.get_num_threads(), nbytes // (_BYTES_PER_POOL_THREAD if pooled else _BYTES_PER_OWN_THREAD)))


MIX_DTYPES = (torch.uint8, torch.float32)


def mix(x: torch.Tensor, perm: torch.Tensor, weights: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[i] = lerp(x[perm[i]], x[i], weights[i]) for uint8 (rounded half to even) or float32 x; the torch bytes."""
    if x.dtype not in MIX_DTYPES:
        raise TypeError(f"the mix kernel takes uint8 or float32 images, got {x.dtype}")
    perm = perm.contiguous()
    weights = weights.to(torch.float32).contiguous()
    sample_bytes = x[0].numel() * x.element_size() if x.shape[0] else 0
    status = _library.taxaug_mix(out.data_ptr(), x.data_ptr(), perm.data_ptr(), weights.data_ptr(), x.shape[0],
                                 sample_bytes, int(x.dtype == torch.float32),
                                 _threads(x.numel() * x.element_size()))
    if status != 0:
        raise MemoryError("the mix kernel could not allocate its cycle list")
    return out


def ingroup_perm(group_ids: torch.Tensor, shuffled: torch.Tensor, min_size: int) -> torch.Tensor | None:
    """ingroup_permutation's pairing of CPU ``group_ids`` in the random order ``shuffled`` (the same perm as
    its torch code), or None where the ids are too large for the kernel's packed keys."""
    group_ids, shuffled = group_ids.contiguous(), shuffled.contiguous()
    perm = torch.empty_like(shuffled)
    status = _library.taxaug_ingroup_perm(perm.data_ptr(), group_ids.data_ptr(), shuffled.data_ptr(),
                                          group_ids.shape[0], min_size)
    return perm if status == 0 else None


def paste_boxes(x: torch.Tensor, perm: torch.Tensor, boxes: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[i] = x[i] with box (y1, x1, y2, x2) of row i copied from x[perm[i]], any dtype."""
    perm = perm.contiguous()
    boxes = boxes.to(torch.int64).contiguous()
    batch, channels, height, width = x.shape
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    status = _library.taxaug_paste_boxes(out.data_ptr(), x.data_ptr(), perm.data_ptr(), boxes.data_ptr(), batch,
                                         channels, height, width, x.element_size(), int(channels_last),
                                         _threads(x.numel() * x.element_size()))
    if status != 0:
        raise MemoryError("the CutMix paste kernel could not allocate its cycle list")
    return out


def _contiguous_cpu_pair(x: torch.Tensor, out: torch.Tensor) -> bool:
    """Kernels on, and x and out contiguous (B, C, H, W) CPU batches of one dtype and shape (out may be x)."""
    return (available() and x.device.type == "cpu" and device_strategy(x.device) == "cpu" and x.ndim == 4
            and x.is_contiguous() and out.is_contiguous() and out.dtype == x.dtype and out.shape == x.shape)


def _pointwise_ids() -> dict[str, int]:
    """Op name -> id of `taxaug_pointwise`, as the library numbers them (empty when not built)."""
    if _library is None:
        return {}
    count = _library.taxaug_pointwise_op_count()
    return {_library.taxaug_pointwise_op_name(i).decode(): i for i in range(count)}


POINTWISE_OPS = _pointwise_ids()
"""The ops `pointwise` runs (per pixel, from per-sample parameters, statistics or, for sharpness, the 3x3
neighbourhood), name -> the library's op id; contrast on uint8 only (the float mean is a float64 torch
reduction whose summation order C would not reproduce), hue on RGB. Source and output may be the same
batch (in place). ``taxaug.functional.registry`` checks these names against its records at import."""


def check_pointwise_ops(expected: Iterable[str]) -> None:
    """Raise unless the library's pointwise ops are exactly `expected` (the registry's ops with a C kernel);
    nothing to check when the library is not built."""
    if _library is None or not _enabled:
        return
    expected = set(expected)
    if expected != set(POINTWISE_OPS):
        raise ImportError(
            f"taxaug's C kernels name the pointwise ops {sorted(POINTWISE_OPS)} but the op registry expects "
            f"{sorted(expected)}; rebuild the kernels (python setup.py build_ext --inplace) or set TAXAUG_NATIVE=0")


def pointwise_applies(name: str, x: torch.Tensor, out: torch.Tensor, values: torch.Tensor | None = None) -> bool:
    """Whether `pointwise` can run op `name` from batch x into out (contiguous, same layout, CPU).
    Hue needs its `values` (shifts in turns) within [-0.5, 0.5], torchvision's and ColorJitter's range."""
    return (name in POINTWISE_OPS and _contiguous_cpu_pair(x, out)
            and (x.dtype == torch.uint8 or (x.dtype == torch.float32 and name != "contrast"))
            and (name not in ("color", "contrast") or x.shape[1] in (1, 3))
            and (name != "hue" or (x.shape[1] == 3 and values is not None and bool((values.abs() <= 0.5).all()))))


def _pointwise_params(name: str, dtype: torch.dtype, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The per-sample float32 parameters the C op takes, derived as the torch kernel derives them."""
    from taxaug.functional import photometric  # (imports this module)

    if name == "posterize":
        step = photometric.posterize_step(value)
        return ((256 - step) if dtype == torch.uint8 else step).to(torch.float32), None  # the bit mask / the step
    if name == "solarize":
        if dtype == torch.uint8:
            thr = photometric.solarize_level(value)
            return thr.clamp(max=255).to(torch.uint8).float(), ((thr < 256) * 255).float()
        return photometric.solarize_float_threshold(value, torch.float32), None  # the first inverted value
    return value.to(torch.float32), None


def pointwise(name: str, x: torch.Tensor, rows: torch.Tensor, value: torch.Tensor, out: torch.Tensor) -> None:
    """out[rows[k]] = op(x[rows[k]], value[k]) for a policy op of POINTWISE_OPS, as its torch kernel computes it."""
    rows = rows.contiguous()
    param, param2 = _pointwise_params(name, x.dtype, value)
    param = param.contiguous()
    param2 = param2.contiguous() if param2 is not None else None
    _, channels, height, width = x.shape
    status = _library.taxaug_pointwise(POINTWISE_OPS[name], int(x.dtype == torch.float32), out.data_ptr(),
                                       x.data_ptr(), rows.data_ptr(), param.data_ptr(),
                                       param2.data_ptr() if param2 is not None else None, rows.shape[0], channels,
                                       height, height * width, _threads(rows.shape[0] * x[0].numel() * x.element_size()))
    if status != 0:
        raise ValueError(f"the C kernels could not run {name} on {x.dtype} (unsupported, or out of memory)")


def warp_applies(x: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether `warp_nearest` can warp batch x into out (contiguous, same layout, CPU; out may be x)."""
    return _contiguous_cpu_pair(x, out) and x.element_size() in (1, 2, 4, 8) and x.shape[2] * x.shape[3] < 2**31


def warp_nearest(x: torch.Tensor, rows: torch.Tensor, data: torch.Tensor, fill: torch.Tensor,
                 out: torch.Tensor) -> torch.Tensor:
    """out[rows[k]] = nearest-neighbour warp of x[rows[k]] by Pillow affine data[k] (float64), outside
    pixels `fill` (C values of x's dtype): the bytes of geometry._warp_nearest."""
    rows = rows.contiguous()
    data = data.to(torch.float64).contiguous()
    fill = fill.to(dtype=x.dtype).contiguous()
    _, channels, height, width = x.shape
    status = _library.taxaug_warp_nearest(out.data_ptr(), x.data_ptr(), rows.data_ptr(), data.data_ptr(),
                                          fill.data_ptr(), rows.shape[0], channels, height, width, x.element_size(),
                                          _threads(rows.shape[0] * x[0].numel() * x.element_size()))
    if status != 0:
        raise MemoryError("warp_nearest: no memory for its row buffers")
    return out


TOPK_MAX = 64  # kernels.h's TOPK_MAX


def top_k(scores: list[torch.Tensor], counts: list[int], k: int, skip: int) -> torch.Tensor | None:
    """(len(scores), B, k) int64: per row of each (B, K_m) matrix its best ``counts[m]`` columns other than
    `skip`, best first (the order of a stable descending torch.sort: NaN above all, ties to the lower column;
    torch.topk may order ties either way), the best one repeated
    in the slots after them. None where the kernels cannot take it (the caller runs torch.topk): not built,
    not host memory under the cpu strategy, not float32/float64, or k above TOPK_MAX."""
    if not (available() and scores and 1 <= k <= TOPK_MAX and all(1 <= c <= k for c in counts)):
        return None
    device, dtype = scores[0].device, scores[0].dtype
    if device.type != "cpu" or device_strategy(device) != "cpu" or dtype not in (torch.float32, torch.float64):
        return None
    batch = scores[0].shape[0]
    if any(s.dtype != dtype or s.ndim != 2 or s.shape[0] != batch or s.shape[1] < 1 for s in scores):
        return None
    scores = [s if s.stride(1) == 1 else s.contiguous() for s in scores]
    pointers = (ctypes.c_void_p * len(scores))(*[s.data_ptr() for s in scores])
    meta = torch.tensor([[s.shape[1] for s in scores], [s.stride(0) for s in scores], counts], dtype=torch.int64)
    out = torch.empty(len(scores), batch, k, dtype=torch.int64)
    nbytes = sum(s.numel() for s in scores) * scores[0].element_size()
    status = _library.taxaug_topk(out.data_ptr(), pointers, meta[0].data_ptr(), meta[1].data_ptr(), meta[2].data_ptr(),
                                  len(scores), batch, k, skip, int(dtype == torch.float64), _threads(nbytes))
    if status != 0:
        raise ValueError(f"taxaug_topk refused k={k}, counts={counts}")
    return out
