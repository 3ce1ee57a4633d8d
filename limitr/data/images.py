"""Image decoding, resizing and padding, and the geometry that maps back to original pixels.

An original image of ``orig_height x orig_width`` pixels is resized by ``scale`` so its long
side is ``image_size`` and zero-padded to an ``image_size`` square, ``pad_left`` / ``pad_top``
pixels before it (the convention of :mod:`limitr.data.schema`)::

    x_resized = x_original * scale + pad_left
    y_resized = y_original * scale + pad_top

Coordinates are continuous with pixel edges at integers (pixel ``i`` spans ``[i, i + 1)``), so
a box maps by its edges and the resize is exact in that frame: the resampling reads the
source rectangle ``[0, resized_width / scale) x [0, resized_height / scale)``.

Large JPEGs are decoded with PIL's draft mode (libjpeg scales by 1/2, 1/4 or 1/8 in the
DCT domain, skipping most of the inverse transform), then resized exactly with an area
(box) filter; the result agrees with a full decode + area resize to well under a grey level.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from limitr.settings import default_of

#: PNG zlib level: 1 is about 4x faster than the default 6 for some 15% more bytes.
PNG_COMPRESS_LEVEL = 1


class BadImage(Exception):
    """An image that cannot be used; ``reason`` is one of missing, empty, truncated, corrupt."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Geometry:
    """How one original image became the model's input (all lengths in pixels).

    The first five fields say where the original sits in its padded square (see the module
    docstring; they are the schema's geometry columns). ``image_size`` (the padded square's
    side) and ``crop_size`` (the side of the centre crop the model saw; equal to
    ``image_size`` for no crop) complete it for maps over the crop; they are ``None`` where
    only the square matters (preprocessing). See :meth:`with_crop`.
    """

    orig_height: int
    orig_width: int
    scale: float
    pad_left: int
    pad_top: int
    image_size: Optional[int] = None
    crop_size: Optional[int] = None

    @property
    def crop_offset(self) -> int:
        """Pixels of the padded square before the centre crop (on both axes)."""
        if self.image_size is None or self.crop_size is None:
            raise ValueError("this geometry has no crop: set image_size and crop_size (with_crop)")
        return center_crop_offset(self.image_size, self.crop_size)

    def with_crop(self, image_size: int, crop_size: int) -> "Geometry":
        """The same placement, seen through the centre ``crop_size`` crop of the
        ``image_size`` square."""
        return replace(self, image_size=int(image_size), crop_size=int(crop_size))

    @property
    def resized_width(self) -> int:
        return resized_length(self.orig_width, self.scale)

    @property
    def resized_height(self) -> int:
        return resized_length(self.orig_height, self.scale)

    def columns(self, prefix: str = "") -> dict[str, object]:
        """The schema's geometry columns, e.g. ``frontal_orig_height``."""
        return {
            f"{prefix}orig_height": self.orig_height,
            f"{prefix}orig_width": self.orig_width,
            f"{prefix}scale": self.scale,
            f"{prefix}pad_left": self.pad_left,
            f"{prefix}pad_top": self.pad_top,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, object], prefix: str = "") -> "Geometry":
        """Read the geometry columns (``prefix`` e.g. ``"frontal_"``) of a shard row."""
        return cls(
            orig_height=int(row[f"{prefix}orig_height"]),  # type: ignore[arg-type]
            orig_width=int(row[f"{prefix}orig_width"]),  # type: ignore[arg-type]
            scale=float(row[f"{prefix}scale"]),  # type: ignore[arg-type]
            pad_left=int(row[f"{prefix}pad_left"]),  # type: ignore[arg-type]
            pad_top=int(row[f"{prefix}pad_top"]),  # type: ignore[arg-type]
        )

    def after_crop(self, left: int, top: int) -> "Geometry":
        """The geometry in the frame of a crop whose top-left corner is ``(left, top)`` of the
        padded square (e.g. the 224 center crop of a 256 square): the padding shifts."""
        return Geometry(self.orig_height, self.orig_width, self.scale,
                        self.pad_left - int(left), self.pad_top - int(top))


def center_crop_offset(size: int, crop: int) -> int:
    """Pixels before a centred ``crop`` in ``size`` (the evaluation crop; a random training
    crop draws its offset instead)."""
    return (int(size) - int(crop)) // 2


def resized_length(length: int, scale: float) -> int:
    """The resized length of an original side (at least one pixel), rounded down so the
    source rectangle it covers never reaches past the image."""
    return max(1, math.floor(length * scale + 1e-6))


def geometry_for(orig_height: int, orig_width: int, image_size: int) -> Geometry:
    """The geometry of an ``orig_height x orig_width`` image in an ``image_size`` square:
    long side scaled to ``image_size``, the short side centred."""
    scale = image_size / max(orig_height, orig_width)
    new_w, new_h = resized_length(orig_width, scale), resized_length(orig_height, scale)
    return Geometry(orig_height, orig_width, scale, (image_size - new_w) // 2, (image_size - new_h) // 2)


def map_box_to_resized(box: Sequence[float], geometry: Geometry) -> tuple[float, float, float, float]:
    """``[x, y, w, h]`` in original pixels -> the same box in the padded square's pixels."""
    x, y, w, h = (float(v) for v in box)
    s = geometry.scale
    return (x * s + geometry.pad_left, y * s + geometry.pad_top, w * s, h * s)


def map_box_to_original(box: Sequence[float], geometry: Geometry) -> tuple[float, float, float, float]:
    """``[x, y, w, h]`` in the padded square's pixels -> original pixels (the inverse)."""
    x, y, w, h = (float(v) for v in box)
    s = geometry.scale
    return ((x - geometry.pad_left) / s, (y - geometry.pad_top) / s, w / s, h / s)


def image_mask(geometry: Geometry, size: int) -> np.ndarray:
    """``(size, size)`` bool, True on pixels of the padded square (or a crop of it) whose
    centre lies on the image, False on padding."""
    centres = np.arange(size) + 0.5
    x0, y0 = geometry.pad_left, geometry.pad_top
    x1 = x0 + geometry.orig_width * geometry.scale
    y1 = y0 + geometry.orig_height * geometry.scale
    cols = (centres >= x0) & (centres < x1)
    rows = (centres >= y0) & (centres < y1)
    return rows[:, None] & cols[None, :]


def map_to_original(values: np.ndarray, geometry: Geometry, size: Optional[int] = None) -> np.ndarray:
    """Resample a map over the padded square back onto the original image's pixels.

    values: ``(h, w)`` float map covering the ``size`` x ``size`` square (any resolution, e.g.
    a 19 x 19 region grid or the full square; ``size`` defaults to ``w``). Returns
    ``(orig_height, orig_width)`` float32, bilinear, padding dropped.
    """
    values = np.asarray(values, dtype=np.float32)
    h, w = values.shape
    size = w if size is None else size
    per_cell_x, per_cell_y = w / size, h / size
    s = geometry.scale
    box = (geometry.pad_left * per_cell_x, geometry.pad_top * per_cell_y,
           (geometry.pad_left + geometry.orig_width * s) * per_cell_x,
           (geometry.pad_top + geometry.orig_height * s) * per_cell_y)
    src = Image.fromarray(values, mode="F")
    out = src.resize((geometry.orig_width, geometry.orig_height), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.float32)


def _to_grey(img: Image.Image) -> Image.Image:
    """8-bit grey from the modes an X-ray file comes in (L, RGB, RGBA, P, 16-bit)."""
    if img.mode == "L":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    return img.convert("L")


#: Default pixel limit (width x height) above which an image is refused as ``too_large``
#: before it is decoded (MIMIC-CXR's largest are about 4,300 x 3,500 = 15 million);
#: the setting preprocess.max_pixels.
MAX_PIXELS: int = default_of("preprocess", "max_pixels")


def decode(data: bytes, image_size: Optional[int] = None, draft: bool = True,
           max_pixels: Optional[int] = MAX_PIXELS) -> tuple[Image.Image, tuple[int, int], tuple[float, float, float, float]]:
    """Decode image bytes to grey.

    Returns ``(image, (orig_width, orig_height), box)``: ``box`` is the original image's
    extent in the decoded image's pixels (smaller than the original under draft mode).
    With ``draft`` and ``image_size``, a JPEG is decoded at the smallest DCT scale that still
    leaves its long side at least ``image_size``. An image of more than ``max_pixels`` pixels
    is refused from its header, before any pixel is decoded (``too_large``). Raises
    :class:`BadImage`.
    """
    if not data:
        raise BadImage("empty", "zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None  # the size is checked below, against max_pixels
            try:
                img = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = limit
        orig_w, orig_h = img.size
        if max_pixels is not None and orig_w * orig_h > max_pixels:
            raise BadImage("too_large", f"{orig_w} x {orig_h} pixels, more than the limit of {max_pixels} "
                                        "(preprocess.max_pixels)")
        box: tuple[float, float, float, float] = (0.0, 0.0, float(orig_w), float(orig_h))
        if draft and image_size is not None and img.format == "JPEG":
            ratio = image_size / max(orig_w, orig_h)
            request = (max(1, math.ceil(orig_w * ratio)), max(1, math.ceil(orig_h * ratio)))
            mode = "L" if img.mode in ("L", "RGB", "YCbCr") else img.mode
            drafted = img.draft(mode, request)
            if drafted is not None:
                box = tuple(float(v) for v in drafted[1])  # type: ignore[assignment]
        if img.format == "JPEG" and b"\xff\xd9" not in data[-64:]:
            raise BadImage("truncated", "no end-of-image marker")
        img.load()
    except BadImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise BadImage("corrupt", str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - a damaged file can make any decoder step fail
        text = str(exc)
        reason = "truncated" if ("truncated" in text or "premature end" in text.lower()) else "corrupt"
        raise BadImage(reason, text) from exc
    return _to_grey(img), (orig_w, orig_h), box


def resize_and_pad(img: Image.Image, box: tuple[float, float, float, float], geometry: Geometry,
                   image_size: int) -> Image.Image:
    """Resize the original extent ``box`` of ``img`` by the geometry's scale and paste it on
    a black ``image_size`` square. Area (box) filter when shrinking, bicubic when enlarging."""
    new_w, new_h = geometry.resized_width, geometry.resized_height
    # read exactly the source rectangle that new_w x new_h pixels cover at this scale
    src_w = (new_w / geometry.scale) * (box[2] - box[0]) / geometry.orig_width
    src_h = (new_h / geometry.scale) * (box[3] - box[1]) / geometry.orig_height
    src_box = (box[0], box[1], box[0] + src_w, box[1] + src_h)
    shrinking = new_w <= (box[2] - box[0])
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
    if (new_w, new_h) == img.size and src_box == (0.0, 0.0, float(img.width), float(img.height)):
        resized = img
    else:
        resized = img.resize((new_w, new_h), resample, box=src_box)
    square = Image.new("L", (image_size, image_size), 0)
    square.paste(resized, (geometry.pad_left, geometry.pad_top))
    return square


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_png(img: Image.Image) -> bytes:
    """Lossless 8-bit grey PNG bytes, deterministic for the same pixels.

    Written directly (every row with the PNG "Up" filter, one zlib stream at level
    :data:`PNG_COMPRESS_LEVEL`): half the time of PIL's encoder, which tries several
    filters per row, for files of the same size; any PNG reader decodes it.
    """
    pixels = np.asarray(img.convert("L") if img.mode != "L" else img, dtype=np.uint8)
    height, width = pixels.shape
    filtered = np.empty((height, width + 1), np.uint8)
    filtered[:, 0] = 2  # filter type Up: each byte minus the byte above it, modulo 256
    filtered[0, 1:] = pixels[0]
    np.subtract(pixels[1:], pixels[:-1], out=filtered[1:, 1:])  # uint8 wraps modulo 256
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(filtered.tobytes(), PNG_COMPRESS_LEVEL))
            + _png_chunk(b"IEND", b""))


def process_image_bytes(data: bytes, image_size: int, draft: bool = True,
                        max_pixels: Optional[int] = MAX_PIXELS) -> tuple[bytes, Geometry]:
    """Image file bytes -> (PNG bytes of the grey ``image_size`` square, geometry)."""
    img, (orig_w, orig_h), box = decode(data, image_size, draft=draft, max_pixels=max_pixels)
    geometry = geometry_for(orig_h, orig_w, image_size)
    return encode_png(resize_and_pad(img, box, geometry, image_size)), geometry


def process_image_file(path: Path, image_size: int, draft: bool = True,
                       max_pixels: Optional[int] = MAX_PIXELS) -> tuple[bytes, Geometry]:
    """Like :func:`process_image_bytes` for a file; a missing file raises ``BadImage("missing")``."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise BadImage("missing", str(path)) from exc
    except IsADirectoryError as exc:
        raise BadImage("corrupt", f"{path} is a folder") from exc
    return process_image_bytes(data, image_size, draft=draft, max_pixels=max_pixels)


def png_to_array(png: bytes) -> np.ndarray:
    """PNG bytes from a shard -> ``(size, size)`` uint8 array."""
    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img.convert("L"))
