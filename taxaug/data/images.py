"""Locating and decoding images: flat or sharded folders, Pillow decode to uint8 (C, H, W) tensors."""

from __future__ import annotations

import io
import logging
import math
import posixpath
import threading
from pathlib import Path
from typing import Literal

import attrs
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from taxaug.data._io import call_with_timeout

__all__ = ["DecodeSpec", "ImageLoadError", "ImageLocator", "decode_image", "identifier_str", "layout_path", "shard_name",
           "to_rgb"]

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

    def read(self, identifier: str, timeout: float | None = None) -> bytes:
        """The file's bytes; a read that has not returned after `timeout` seconds is a load failure."""
        path = self.path_for(identifier)
        try:
            return call_with_timeout(str(path), path.read_bytes, timeout)
        except FileNotFoundError:
            raise ImageLoadError(path, "file not found") from None
        except OSError as exc:
            raise ImageLoadError(path, f"read failed ({exc})") from exc

    def escaping(self, identifiers: np.ndarray) -> np.ndarray:
        """Positions of identifiers whose file would lie outside ``images_dir`` (vectorised).

        `identifiers` is a fixed-width bytes (UTF-8) or str array. Refused: absolute paths, ``..``
        components that climb out of the folder (also through a shard folder named ``..``) and NUL
        characters. The check is lexical (no symlink is followed), so a symlinked images folder works.
        """
        ids = np.asarray(identifiers)
        if ids.dtype.kind != "S":
            ids = np.char.encode(ids.astype(str), "utf-8", "surrogateescape")
        suspect = (np.char.find(ids, b"..") >= 0) | np.char.startswith(ids, b"/") | _inner_nul(ids)
        bad = [i for i in np.flatnonzero(suspect).tolist() if self._escapes(ids[i])]
        return np.asarray(bad, dtype=np.int64)

    def _escapes(self, identifier: bytes | str) -> bool:
        text = identifier_str(identifier)
        if "\x00" in text:
            return True
        name = self.filename(text)
        rels = [name] if self.shard_k is None else [name, f"{shard_name(name, self.shard_k)}/{name}"]
        for rel in rels:
            norm = posixpath.normpath(rel)
            if posixpath.isabs(norm) or norm == ".." or norm.startswith("../"):
                return True
        return False

    def check_identifiers(self, identifiers: np.ndarray, rows: np.ndarray | None = None, *,
                          source: str = "img_identifiers") -> None:
        """Raise ``ValueError`` naming the first identifiers (and their file rows) that escape ``images_dir``."""
        bad = self.escaping(identifiers)
        if bad.size == 0:
            return
        rows = np.arange(len(identifiers)) if rows is None else np.asarray(rows)
        shown = ", ".join(f"row {int(rows[i])}: {identifier_str(identifiers[i])!r}" for i in bad[:3])
        raise ValueError(f"{source}: {bad.size} identifier(s) point outside images_dir {self.images_dir} "
                         f"({shown}); identifiers must be relative paths inside the images folder (no '..', "
                         "no absolute path): fix them in the labels file")


def _inner_nul(ids: np.ndarray) -> np.ndarray:
    """Rows of a fixed-width bytes array holding a NUL before their last byte (padding NULs do not count)."""
    width = ids.dtype.itemsize
    if ids.size == 0 or width == 0:
        return np.zeros(ids.shape, dtype=bool)
    data = np.ascontiguousarray(ids).view(np.uint8)
    lengths = np.char.str_len(ids)  # one past the last non-NUL byte of each row
    if np.count_nonzero(data) == int(lengths.sum()):  # a row holds at most `length` non-NULs: none is inside
        return np.zeros(ids.shape, dtype=bool)
    nonzero = data.reshape(-1, width) != 0
    last = width - np.argmax(nonzero[:, ::-1], axis=1)  # one past the last non-NUL byte
    return nonzero.sum(axis=1) < np.where(nonzero.any(axis=1), last, 0)


def identifier_str(value: bytes | str) -> str:
    """An identifier as text: UTF-8 bytes decoded (undecodable bytes kept as surrogates), str as is."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _positive_or_none(_inst: object, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{attribute.name} must be a positive int or None, got {value!r}")


@attrs.frozen
class DecodeSpec:
    """How to turn an encoded image into a tensor.

    - ``size``: (H, W) of the output, or None to keep each image's size (batching then needs
      images of one size).
    - ``resize``: ``"cover"`` scales to cover (H, W) keeping aspect, then centre-crops (default);
      ``"resize"`` stretches to (H, W); ``"none"`` keeps the decoded size (``size`` must be None).
    - ``draft``: let libjpeg decode at a reduced scale (1/2, 1/4, 1/8) when the target is small
      enough, never below the size needed — much faster for large JPEGs.
    - ``max_pixels``: an image whose header claims more pixels is refused before decoding (a
      decompression bomb); None uses Pillow's limit ``PIL.Image.MAX_IMAGE_PIXELS``. A limit above
      Pillow's raises Pillow's (process-wide) so that such images can open at all.
    - ``exif_transpose``: apply the EXIF orientation tag, so images come out as a viewer shows them.
    """

    size: tuple[int, int] | None = attrs.field(default=None, converter=lambda s: None if s is None else (
        (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))))
    resize: ResizeMode = attrs.field(default="cover", validator=attrs.validators.in_(("cover", "resize", "none")))
    draft: bool = True
    max_pixels: int | None = attrs.field(default=None, validator=_positive_or_none)
    exif_transpose: bool = True

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

    def pixel_limit(self) -> int | None:
        """The limit in force: ``max_pixels``, else Pillow's current ``MAX_IMAGE_PIXELS`` (None: no limit)."""
        return self.max_pixels if self.max_pixels is not None else Image.MAX_IMAGE_PIXELS


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


# EXIF orientation tag value -> the transpose that shows the image upright (as ImageOps.exif_transpose)
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG = 0x0112
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _orientation(img: Image.Image) -> Image.Transpose | None:
    """The transpose EXIF asks for, or None (no tag, orientation 1, or unreadable EXIF)."""
    try:
        return _ORIENTATION.get(int(img.getexif().get(_ORIENTATION_TAG, 1)))
    except Exception:  # a damaged EXIF block leaves the image as stored
        return None


def _check_pixels(img: Image.Image, spec: DecodeSpec, name: str) -> None:
    limit = spec.pixel_limit()
    w, h = img.size
    if limit is not None and w * h > limit:
        raise ImageLoadError(name, f"decompression bomb: {w}x{h} = {w * h} pixels exceeds the limit of {limit} "
                                   "(max_pixels); raise max_pixels if the image is genuine")


def _allow_pillow(spec: DecodeSpec) -> None:
    """Pillow refuses images above twice its global limit before we can look; raise it to ours."""
    if spec.max_pixels is not None and Image.MAX_IMAGE_PIXELS is not None and spec.max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = spec.max_pixels


def _grey16_to_8(values: np.ndarray) -> np.ndarray:
    """16-bit grey (or 32-bit ints read from 16-bit files) to 8 bits: round(v * 255 / 65535), clipped."""
    v = np.clip(values.astype(np.int64), 0, 65535)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def _float_to_8(values: np.ndarray) -> np.ndarray:
    """Float intensities in [0, 1] (clipped; NaN -> 0) to round(v * 255)."""
    v = np.clip(np.nan_to_num(values.astype(np.float64), nan=0.0), 0.0, 1.0)
    return np.rint(v * 255.0).astype(np.uint8)


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """Composite (H, W, 4) uint8 over white: round((c * a + 255 * (255 - a)) / 255), exact in integers."""
    a = rgba[..., 3:4].astype(np.uint32)
    out = (rgba[..., :3].astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB image as a viewer shows `img`.

    16-bit grey (``I;16*``) and ``I`` scale 0..65535 to 0..255; ``F`` reads [0, 1] as 0..255;
    images with transparency (``RGBA``, ``LA``, ``PA``, ``P``/``L``/``RGB`` with a transparency
    entry) are composited over white; everything else (``L``, ``P``, ``1``, ``CMYK``, ``YCbCr``)
    goes through Pillow's own conversion.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img)
        grey = _float_to_8(arr) if mode == "F" else _grey16_to_8(arr)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2))
    if mode in _ALPHA_MODES or "transparency" in img.info:
        return Image.fromarray(_over_white(np.asarray(img.convert("RGBA"))))
    return img.convert("RGB")


def _open(data: bytes | np.ndarray, spec: DecodeSpec, name: str) -> Image.Image:
    """Open, refuse bombs, draft-decode JPEGs (sized in the displayed orientation), apply EXIF orientation."""
    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim in (2, 3):
        return Image.fromarray(data[..., 0] if data.ndim == 3 and data.shape[2] == 1 else data)
    _allow_pillow(spec)
    img = Image.open(io.BytesIO(data if isinstance(data, bytes) else bytes(data)))
    _check_pixels(img, spec, name)
    turn = _orientation(img) if spec.exif_transpose else None
    if spec.draft and spec.size is not None and img.format == "JPEG":
        w0, h0 = img.size
        if turn in (Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90,
                    Image.Transpose.ROTATE_270):
            dh, dw = _draft_size(h0, w0, spec)  # the draft is asked in stored orientation
            img.draft("RGB", (dw, dh))
        else:
            img.draft("RGB", _draft_size(w0, h0, spec))
    img = to_rgb(img)
    return img.transpose(turn) if turn is not None else img


def decode_image(data: bytes | np.ndarray, spec: DecodeSpec, *, name: str = "<bytes>") -> torch.Tensor:
    """Decode an encoded file (bytes) or an (H, W[, C]) uint8 array to a (3, H, W) uint8 tensor.

    One function for the datasets and ``taxaug-data verify``: modes converted by :func:`to_rgb`,
    EXIF orientation applied (``spec.exif_transpose``), images above ``spec.max_pixels`` refused.
    Raises :class:`ImageLoadError` naming `name` when the bytes are not a decodable image.
    """
    try:
        img = _open(data, spec, name)
        if spec.size is not None and (spec.size[1], spec.size[0]) != img.size:
            # one resampling pass over just the region that survives the crop
            img = img.resize((spec.size[1], spec.size[0]), Image.BILINEAR, box=_source_box(*img.size, spec))
        arr = np.array(img)  # writable copy: torch warns on read-only buffers
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the warning, when made an error
        raise ImageLoadError(name, f"decompression bomb ({exc}); raise max_pixels if the image is genuine") from exc
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not a decodable image (unknown format or damaged header)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(name, f"not a decodable image ({type(exc).__name__}: {exc})") from exc
    # transpose in numpy: a torch copy here would start an OpenMP team per call, from every decode thread
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
