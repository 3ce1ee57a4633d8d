"""Pixel grids in body coordinates, smooth masks, blur, smooth noise and drawn lines.

Body coordinates ("chest units") are isotropic: one unit is the height of a nominal
image frame, about 42 cm on a real radiograph, so 1 cm is about 0.0235 units. On a frontal
view ``x`` grows towards the viewer's right (the patient's left) with 0 on the midline; on a
lateral view ``x`` grows from anterior (viewer's left) to posterior. ``y`` grows downwards
with 0 at the level of the lung apices, in both views, so one patient's findings sit at the
same height in both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: Chest units per centimetre (1 unit ~ 42.5 cm, the height of a 3056-row MIMIC image).
UNITS_PER_CM = 1.0 / 42.5


@dataclass(frozen=True)
class ViewFrame:
    """Where the body lies on one rendered image.

    ``height`` x ``width``: the render grid (pixels). ``scale``: render pixels per chest
    unit. ``mid_col`` / ``apex_row``: the pixel position of body (0, 0). ``angle``: the
    body's rotation in the image plane (radians, positive = clockwise on screen).
    """

    height: int
    width: int
    scale: float
    mid_col: float
    apex_row: float
    angle: float

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Body coordinates of every pixel centre: ``X, Y`` of shape (height, width), float32."""
        u = ((np.arange(self.width, dtype=np.float32) + 0.5) - self.mid_col) / self.scale
        v = ((np.arange(self.height, dtype=np.float32) + 0.5) - self.apex_row) / self.scale
        c, s = math.cos(self.angle), math.sin(self.angle)
        x = c * u[None, :] + s * v[:, None]
        y = -s * u[None, :] + c * v[:, None]
        return x.astype(np.float32), y.astype(np.float32)

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        """Body points (N, 2) -> pixel positions (N, 2) as (column, row), float."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = c * p[:, 0] - s * p[:, 1]
        v = s * p[:, 0] + c * p[:, 1]
        return np.stack([u * self.scale + self.mid_col, v * self.scale + self.apex_row], axis=1)

    def window(self, x0: float, y0: float, x1: float, y1: float,
               margin_px: int = 3) -> Optional[tuple[slice, slice]]:
        """The pixel window (rows, cols) that covers the body box [x0, x1] x [y0, y1]; None
        when it lies wholly outside the image."""
        corners = self.to_pixels(np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]))
        c0 = max(int(math.floor(corners[:, 0].min())) - margin_px, 0)
        c1 = min(int(math.ceil(corners[:, 0].max())) + margin_px, self.width)
        r0 = max(int(math.floor(corners[:, 1].min())) - margin_px, 0)
        r1 = min(int(math.ceil(corners[:, 1].max())) + margin_px, self.height)
        if c1 <= c0 or r1 <= r0:
            return None
        return slice(r0, r1), slice(c0, c1)

    @property
    def pixel(self) -> float:
        """The size of one render pixel in chest units."""
        return 1.0 / self.scale


def smoothstep(edge0, edge1, x: np.ndarray) -> np.ndarray:
    """0 below ``edge0``, 1 above ``edge1``, a smooth cubic between (edges may be reversed;
    they may be arrays that broadcast with ``x``). Computed in place on one temporary."""
    t = np.subtract(x, edge0, dtype=np.float32)
    if not isinstance(t, np.ndarray) or t.ndim == 0:  # a single value
        t = min(max(float(t) / (float(np.subtract(edge1, edge0))), 0.0), 1.0)
        return np.float32(t * t * (3.0 - 2.0 * t))
    t *= 1.0 / np.subtract(edge1, edge0, dtype=np.float32)
    np.clip(t, 0.0, 1.0, out=t)
    out = t * t
    t *= -2.0
    t += 3.0
    out *= t
    return out


def box_blur(a: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)^2 square, edges clamped; O(pixels) whatever the radius."""
    if radius <= 0:
        return a
    out = a.astype(np.float32, copy=True)
    for axis in (0, 1):
        n = out.shape[axis]
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius + 1, radius)
        padded = np.pad(out, pad, mode="edge")
        c = np.cumsum(padded, axis=axis, dtype=np.float32)
        hi = np.take(c, np.arange(2 * radius + 1, 2 * radius + 1 + n), axis=axis)
        lo = np.take(c, np.arange(0, n), axis=axis)
        out = (hi - lo) / (2 * radius + 1)
    return out


def blur(a: np.ndarray, sigma_px: float) -> np.ndarray:
    """An approximate gaussian blur (three box passes) with standard deviation ``sigma_px``."""
    if sigma_px < 0.5:
        return a
    radius = max(int(round(math.sqrt(4.0 * sigma_px * sigma_px + 1.0) / 2.0 - 0.5)), 1)
    out = a
    for _ in range(3):
        out = box_blur(out, radius)
    return out


def smooth_noise(seed: int, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Zero-mean, unit-scale smooth noise of ``shape`` (rows, cols): a ``cells`` grid of
    random values interpolated bicubically, float32."""
    rng = np.random.default_rng(seed)
    low = rng.standard_normal((max(cells[0], 2), max(cells[1], 2))).astype(np.float32)
    img = Image.fromarray(low, mode="F").resize((shape[1], shape[0]), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def sample_noise(seed: int, x: np.ndarray, y: np.ndarray, period: float,
                 size: int = 24) -> np.ndarray:
    """Smooth periodic noise evaluated at body coordinates (feature size ~ period/size*3):
    the same body point gets the same value whatever the image, so a patient's texture
    is the same with and without a finding."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((size, size)).astype(np.float32)
    fx = (x / period) * size
    fy = (y / period) * size
    ix = np.floor(fx)
    iy = np.floor(fy)
    tx = fx - ix
    ty = fy - iy
    tx = tx * tx * (3 - 2 * tx)
    ty = ty * ty * (3 - 2 * ty)
    ix = ix.astype(np.int64) % size
    iy = iy.astype(np.int64) % size
    jx = (ix + 1) % size
    jy = (iy + 1) % size
    top = table[iy, ix] * (1 - tx) + table[iy, jx] * tx
    bottom = table[jy, ix] * (1 - tx) + table[jy, jx] * tx
    return (top * (1 - ty) + bottom * ty).astype(np.float32)


def bezier(control: Sequence[Sequence[float]], n: int = 24) -> np.ndarray:
    """Points (n, 2) along the Bezier curve of the given control points (any degree)."""
    pts = np.asarray(control, dtype=np.float64)
    t = np.linspace(0.0, 1.0, n)[:, None, None]
    p = np.broadcast_to(pts, (n, *pts.shape))
    while p.shape[1] > 1:  # de Casteljau, all parameters at once
        p = p[:, :-1] * (1.0 - t) + p[:, 1:] * t
    return p[:, 0]


@dataclass(frozen=True)
class Stroke:
    """A polyline to draw: ``points`` (N, 2) in body units, ``width`` in body units and the
    ``value`` (0..1) it leaves on the canvas (overlaps keep the last value drawn)."""

    points: np.ndarray
    width: float
    value: float = 1.0


def raster_strokes(frame: ViewFrame, strokes: Sequence[Stroke],
                   polygons: Sequence[tuple[np.ndarray, float]] = ()) -> Image.Image:
    """Strokes and filled polygons (body units, values 0..1) on an 8-bit canvas."""
    canvas = Image.new("L", (frame.width, frame.height), 0)
    draw = ImageDraw.Draw(canvas)
    for stroke in strokes:
        pix = frame.to_pixels(stroke.points)
        width = max(int(round(stroke.width * frame.scale)), 1)
        draw.line([tuple(p) for p in pix.tolist()], fill=int(round(255 * min(stroke.value, 1.0))),
                  width=width, joint="curve")
    for points, value in polygons:
        pix = frame.to_pixels(points)
        draw.polygon([tuple(p) for p in pix.tolist()], fill=int(round(255 * min(value, 1.0))))
    return canvas


def raster_segments(frame: ViewFrame, start: np.ndarray, end: np.ndarray, width: np.ndarray,
                    value: np.ndarray) -> Image.Image:
    """Many straight segments (body units; ``value`` 0..1 each) on an 8-bit canvas; the
    coordinate transform is done for all segments at once."""
    canvas = Image.new("L", (frame.width, frame.height), 0)
    draw = ImageDraw.Draw(canvas)
    a = frame.to_pixels(start).tolist()
    b = frame.to_pixels(end).tolist()
    widths = np.maximum(np.rint(np.asarray(width) * frame.scale), 1).astype(int).tolist()
    fills = np.rint(255 * np.clip(value, 0.0, 1.0)).astype(int).tolist()
    for p, q, wd, fill in zip(a, b, widths, fills):
        draw.line((p[0], p[1], q[0], q[1]), fill=fill, width=wd)
    return canvas


def soften(canvases: Sequence[Image.Image], blur_px: float) -> list[np.ndarray]:
    """Blur 8-bit canvases (gaussian, ``blur_px`` render pixels) and return them as float32
    arrays in 0..1."""
    out: list[np.ndarray] = []
    for canvas in canvases:
        if blur_px >= 0.3:
            canvas = canvas.filter(ImageFilter.GaussianBlur(blur_px))
        out.append(np.asarray(canvas, dtype=np.float32) * (1.0 / 255.0))
    return out


def draw_strokes(frame: ViewFrame, strokes: Sequence[Stroke],
                 polygons: Sequence[tuple[np.ndarray, float]] = (), blur_px: float = 0.0) -> np.ndarray:
    """Rasterise strokes and filled polygons (body units, values 0..1) onto a float32 canvas
    (H, W) in 0..1, optionally blurred (gaussian, ``blur_px`` render pixels)."""
    canvas = raster_strokes(frame, strokes, polygons)
    if blur_px >= 0.3:
        canvas = canvas.filter(ImageFilter.GaussianBlur(blur_px))
    return np.asarray(canvas, dtype=np.float32) * (1.0 / 255.0)


def draw_segments(frame: ViewFrame, start: np.ndarray, end: np.ndarray, width: np.ndarray,
                  value: np.ndarray, blur_px: float = 0.0) -> np.ndarray:
    """:func:`raster_segments` as a float32 canvas in 0..1, optionally blurred."""
    canvas = raster_segments(frame, start, end, width, value)
    if blur_px >= 0.3:
        canvas = canvas.filter(ImageFilter.GaussianBlur(blur_px))
    return np.asarray(canvas, dtype=np.float32) * (1.0 / 255.0)


def blur_image(a: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of a 0..1 image through 8-bit grey (PIL, fast); float32 out."""
    if sigma_px < 0.3:
        return a
    hi = Image.fromarray((np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L")
    return np.asarray(hi.filter(ImageFilter.GaussianBlur(sigma_px)), dtype=np.float32) * (1.0 / 255.0)


def mask_bbox(mask: np.ndarray, window: Optional[tuple[slice, slice]] = None
              ) -> Optional[tuple[int, int, int, int]]:
    """The (col0, row0, col1, row1) pixel bounds of the True cells of ``mask`` (exclusive
    ends), offset by ``window``; None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    r_off = window[0].start if window else 0
    c_off = window[1].start if window else 0
    return (int(cols[0]) + c_off, int(rows[0]) + r_off, int(cols[-1]) + 1 + c_off, int(rows[-1]) + 1 + r_off)
