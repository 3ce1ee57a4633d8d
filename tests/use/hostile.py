"""Hostile uploads (issue 24): files a user may hand `limitr search --image`, `limitr ground`
and the explore page. Each is written without holding its pixels in memory."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(path: Path, width: int = 20000, height: int = 10000) -> Path:
    """A valid grey PNG of ``width`` x ``height`` pixels (200 megapixels by default), all
    black: about 200 KB on disk, 200 MB once decoded. Written row by row."""
    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte 0, then the pixels
    body = bytearray()
    for _ in range(height):
        body += packer.compress(row)
    body += packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", bytes(body)) + _chunk(b"IEND", b""))
    return path


def grey_pattern(height: int = 96, width: int = 80) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return ((yy * 255) // height * 0.6 + (xx * 255) // width * 0.4).astype(np.uint8)


def png16(path: Path) -> Path:
    """A 16-bit grey PNG (as DICOM exports are), values over the whole 16-bit range."""
    values = grey_pattern().astype(np.uint16) * 257
    Image.fromarray(values).save(path, format="PNG")  # PIL mode I;16
    return path


def cmyk_jpeg(path: Path) -> Path:
    """A CMYK JPEG (as some scanners and print workflows write)."""
    grey = grey_pattern()
    Image.fromarray(np.stack([grey] * 3, axis=-1), mode="RGB").convert("CMYK").save(path, format="JPEG", quality=95)
    return path


def pdf_named_png(path: Path) -> Path:
    path.write_bytes(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n")
    return path


def empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def make_all(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "huge": huge_png(folder / "huge.png"),
        "empty": empty(folder / "empty.jpg"),
        "pdf": pdf_named_png(folder / "scan.png"),
        "png16": png16(folder / "sixteen.png"),
        "cmyk": cmyk_jpeg(folder / "cmyk.jpg"),
    }
