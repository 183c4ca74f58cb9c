"""Locating and decoding images: flat or sharded folders, Pillow decode to uint8 (C, H, W) tensors."""

from __future__ import annotations

import io
import logging
import math
import threading
from pathlib import Path
from typing import Literal

import attrs
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = ["DecodeSpec", "ImageLoadError", "ImageLocator", "decode_image", "layout_path", "shard_name"]

log = logging.getLogger("taxaug.data")

ResizeMode = Literal["cover", "resize", "none"]


class ImageLoadError(RuntimeError):
    """An image could not be read or decoded; ``path`` (or identifier) names it."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"cannot load image {self.path}: {reason}. Run `taxaug-data verify` to list every bad file, or open "
            "the dataset with missing='permissive' to substitute counted placeholders."
        )


def shard_name(identifier: str, k: int) -> str:
    """Shard folder for `identifier` under the ``first_k_chars`` method (``"123456_0.jpg"``, 2 -> ``"12"``)."""
    if k < 1:
        raise ValueError(f"shard k must be >= 1, got {k}")
    return Path(identifier).name[:k]


def layout_path(images_dir: str | Path, name: str, shard_k: int | None) -> Path:
    """Where file `name` lives: ``images_dir/name`` (flat) or ``images_dir/<first k chars>/name``."""
    if shard_k is None:
        return Path(images_dir) / name
    return Path(images_dir) / shard_name(name, shard_k) / name


class ImageLocator:
    """Maps identifiers to files: ``images_dir/<id><ext>`` or, sharded, ``images_dir/<first k>/<id><ext>``.

    With sharding, a file missing from its shard is looked up in the flat layout; the fallback is
    logged once per locator (once per worker).
    """

    def __init__(self, images_dir: str | Path, *, file_extension: str = "", shard_k: int | None = None):
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"images_dir {self.images_dir} is not a directory")
        if file_extension and not file_extension.startswith("."):
            file_extension = "." + file_extension
        self.file_extension = file_extension
        if shard_k is not None and shard_k < 1:
            raise ValueError(f"shard_k must be None (flat layout) or >= 1, got {shard_k}")
        self.shard_k = shard_k
        self._warned = False
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def filename(self, identifier: str) -> str:
        if self.file_extension and not identifier.endswith(self.file_extension):
            return identifier + self.file_extension
        return identifier

    def path_for(self, identifier: str) -> Path:
        """The file for `identifier` (the sharded path if it exists, else the flat one)."""
        name = self.filename(identifier)
        if self.shard_k is None:
            return self.images_dir / name
        sharded = layout_path(self.images_dir, name, self.shard_k)
        if sharded.exists():
            return sharded
        flat = self.images_dir / name
        if flat.exists():
            with self._lock:
                if not self._warned:
                    self._warned = True
                    log.warning("sharded layout (k=%d) under %s lacks %s; falling back to the flat layout "
                                "(warned once)", self.shard_k, self.images_dir, name)
            return flat
        return sharded

    def read(self, identifier: str) -> bytes:
        path = self.path_for(identifier)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ImageLoadError(path, "file not found") from None
        except OSError as exc:
            raise ImageLoadError(path, f"read failed ({exc})") from exc


@attrs.frozen
class DecodeSpec:
    """How to turn an encoded image into a tensor.

    - ``size``: (H, W) of the output, or None to keep each image's size (batching then needs
      images of one size).
    - ``resize``: ``"cover"`` scales to cover (H, W) keeping aspect, then centre-crops (default);
      ``"resize"`` stretches to (H, W); ``"none"`` keeps the decoded size (``size`` must be None).
    - ``draft``: let libjpeg decode at a reduced scale (1/2, 1/4, 1/8) when the target is small
      enough, never below the size needed — much faster for large JPEGs.
    """

    size: tuple[int, int] | None = attrs.field(default=None, converter=lambda s: None if s is None else (
        (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))))
    resize: ResizeMode = attrs.field(default="cover", validator=attrs.validators.in_(("cover", "resize", "none")))
    draft: bool = True

    def __attrs_post_init__(self) -> None:
        if self.size is not None and min(self.size) < 1:
            raise ValueError(f"size must be positive (H, W), got {self.size}")
        if self.resize == "none" and self.size is not None:
            raise ValueError("resize='none' keeps decoded sizes; pass size=None with it")
        if self.resize != "none" and self.size is None:
            object.__setattr__(self, "resize", "none")

    def placeholder(self) -> torch.Tensor:
        if self.size is None:
            raise ValueError("a placeholder needs a fixed output size; set DecodeSpec.size")
        return torch.zeros((3, *self.size), dtype=torch.uint8)


def _draft_size(w0: int, h0: int, spec: DecodeSpec) -> tuple[int, int]:
    """Smallest decoded size that still covers the output without upscaling."""
    assert spec.size is not None
    h, w = spec.size
    if spec.resize == "resize":
        return w, h
    scale = max(h / h0, w / w0)
    return max(w, math.ceil(w0 * scale)), max(h, math.ceil(h0 * scale))


def _source_box(w0: int, h0: int, spec: DecodeSpec) -> tuple[float, float, float, float]:
    """Region of the source that maps onto the output: all of it ("resize"), or the centred crop ("cover")."""
    assert spec.size is not None
    h, w = spec.size
    if spec.resize == "resize":
        return 0.0, 0.0, float(w0), float(h0)
    scale = max(h / h0, w / w0)
    cw, ch = w / scale, h / scale
    left, top = (w0 - cw) / 2, (h0 - ch) / 2
    return left, top, left + cw, top + ch


def decode_image(data: bytes | np.ndarray, spec: DecodeSpec, *, name: str = "<bytes>") -> torch.Tensor:
    """Decode an encoded file (bytes) or an (H, W[, C]) uint8 array to a (3, H, W) uint8 tensor.

    Raises :class:`ImageLoadError` naming `name` when the bytes are not a decodable image.
    """
    try:
        if isinstance(data, np.ndarray) and data.ndim >= 2 and data.dtype == np.uint8 and data.ndim in (2, 3):
            img = Image.fromarray(data[..., 0] if data.ndim == 3 and data.shape[2] == 1 else data)
        else:
            img = Image.open(io.BytesIO(bytes(data) if not isinstance(data, bytes) else data))
            if spec.draft and spec.size is not None and img.format == "JPEG":
                img.draft("RGB", _draft_size(*img.size, spec))
        if img.mode != "RGB":
            img = img.convert("RGB")
        if spec.size is not None and (spec.size[1], spec.size[0]) != img.size:
            # one resampling pass over just the region that survives the crop
            img = img.resize((spec.size[1], spec.size[0]), Image.BILINEAR, box=_source_box(*img.size, spec))
        arr = np.array(img)  # writable copy: torch warns on read-only buffers
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(name, f"not a decodable image ({type(exc).__name__}: {exc})") from exc
    # transpose in numpy: a torch copy here would start an OpenMP team per call, from every decode thread
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
