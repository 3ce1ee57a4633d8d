"""The frontal (PA or AP) chest: geometry and the density of the normal anatomy.

Radiological convention: the patient's right is on the viewer's left. ``side`` is -1 for
the patient's right (image left) and +1 for the patient's left (image right); ``u = side * x``
is the distance from the midline towards that side's chest wall.

Density is in arbitrary attenuation units: 0 is air outside the body, soft tissue of an
average body is about 1, the aerated lung takes about 0.5 away, bone and metal add.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from limitr.synthetic.anatomy import Anatomy, VesselTree, frontal_vessels
from limitr.synthetic.canvas import (
    Stroke, ViewFrame, bezier, raster_segments, raster_strokes, smooth_noise, smoothstep, soften,
)

SIDES = (-1, 1)


@dataclass(frozen=True)
class FrontalChest:
    """One frontal view's geometry: the patient's anatomy as this projection shows it.

    ``heart_scale`` multiplies the heart's size (AP magnification, cardiomegaly);
    ``dome_lift`` raises a hemidiaphragm (atelectasis volume loss), per side.
    """

    anatomy: Anatomy
    view: str = "PA"
    heart_scale: float = 1.0
    dome_lift: dict[int, float] = field(default_factory=dict)

    # --- sizes -------------------------------------------------------------------------
    @property
    def half_width(self) -> float:
        return self.anatomy.lung_half_width

    @property
    def lung_height(self) -> float:
        # a supine or semi-erect AP film shows lower lung volumes
        return self.anatomy.lung_height * (0.94 if self.view == "AP" else 1.0)

    @property
    def carina(self) -> tuple[float, float]:
        return (-0.006, 0.33 * self.lung_height)

    def hilum(self, side: int) -> tuple[float, float]:
        return (side * 0.1, (0.42 - (0.03 if side > 0 else 0.0)) * self.lung_height)

    # --- boundaries --------------------------------------------------------------------
    def dome_y(self, u: np.ndarray, side: int) -> np.ndarray:
        """The hemidiaphragm's upper edge at distance ``u`` from the midline."""
        a = self.anatomy
        base = self.lung_height
        lift = (a.right_dome_raise if side < 0 else 0.0) + self.dome_lift.get(side, 0.0)
        peak_u = 0.5 * self.half_width
        # flatter towards the midline, where the dome meets the heart
        w = np.where(u < peak_u, 0.9, 0.56) * self.half_width
        bump = 1.0 - ((u - peak_u) / w) ** 2
        return base - lift - a.dome_height * bump

    def mediastinum_u(self, y: np.ndarray, side: int) -> np.ndarray:
        """Where the lung's medial edge lies (distance from midline); the aortic knob
        bulges into the left upper lung."""
        a = self.anatomy
        u = a.mediastinum_half_width + 0.01 * smoothstep(0.0, 0.3, y)
        if side > 0:
            knob_y = 0.19 * self.lung_height
            u = u + a.aortic_knob * np.exp(-(((y - knob_y) / 0.035) ** 2))
        return u

    def lateral_u(self, y: np.ndarray) -> np.ndarray:
        """The lateral lung edge (distance from midline): narrow at the apex, widening fast,
        nearly vertical over the lower half."""
        t = np.clip(y / (0.62 * self.lung_height), 0.0, 1.0)
        return self.half_width * np.sqrt(1.0 - (1.0 - t) ** 2.2)

    def lung_depth(self, x: np.ndarray, y: np.ndarray, side: int) -> np.ndarray:
        """Signed distance-like depth inside one lung (positive inside, body units)."""
        u = side * x
        d_lateral = (self.lateral_u(y) - u) * 0.8
        d_apex = y - 2.2 * (u - 0.13) ** 2 + 0.012
        d_dome = self.dome_y(u, side) - y
        d_medial = u - self.mediastinum_u(y, side)
        return np.minimum(np.minimum(d_lateral, d_apex), np.minimum(d_dome, d_medial))

    def heart_level(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """< 1 inside the heart's silhouette (an ellipse level set)."""
        a = self.anatomy
        mag = 1.17 if self.view == "AP" else 1.0
        width = a.cardiothoracic_ratio * 2.0 * self.half_width * mag * self.heart_scale
        tilt = a.heart_tilt
        # a wide dome sitting on the diaphragm, its long axis tilted down to the apex on
        # the patient's left, so the left border slopes and the right border is short
        semi_a = 0.5 * width / math.cos(tilt)
        semi_b = 0.36 * self.lung_height * (1.0 + 0.4 * (self.heart_scale - 1.0)) * (1.08 if mag > 1 else 1.0)
        hx = (a.heart_left_share - 0.5) * width
        hy = 0.93 * self.lung_height
        c, s = math.cos(tilt), math.sin(tilt)
        dx, dy = x - hx, y - hy
        ex = (c * dx + s * dy) / semi_a
        ey = (-s * dx + c * dy) / semi_b
        return ex * ex + ey * ey

    def heart_box(self) -> tuple[float, float, float, float]:
        """A generous body-space box (x0, y0, x1, y1) around the heart."""
        a = self.anatomy
        mag = 1.17 if self.view == "AP" else 1.0
        width = a.cardiothoracic_ratio * 2.0 * self.half_width * mag * self.heart_scale
        hx = (a.heart_left_share - 0.5) * width
        top = 0.93 * self.lung_height - 0.5 * self.lung_height * (1.0 + 0.4 * (self.heart_scale - 1.0))
        return (hx - 0.65 * width, top, hx + 0.65 * width, self.lung_height + 0.04)

    def diaphragm_y(self, x: np.ndarray) -> np.ndarray:
        """The upper edge of the abdomen across the whole width (both domes blended)."""
        w = smoothstep(-0.03, 0.03, x)
        return (1.0 - w) * self.dome_y(-x, -1) + w * self.dome_y(x, 1)


@dataclass
class FrontalLayers:
    """What findings need from a rendered frontal anatomy (all (H, W) float32)."""

    density: np.ndarray
    lung: dict[int, np.ndarray]  # 0..1 lung field per side
    lung_depth: dict[int, np.ndarray]
    heart: np.ndarray  # 0..1 heart silhouette
    markings: np.ndarray  # vessel and texture density inside the lungs
    x: np.ndarray
    y: np.ndarray


def _rib_pattern(chest: FrontalChest, x: np.ndarray, y: np.ndarray, px: float) -> np.ndarray:
    """Posterior ribs (arcs from the spine that turn down at the chest wall) and the fainter
    anterior ribs (sloping down towards the midline), as one periodic field each."""
    a = chest.anatomy
    w = chest.half_width
    u = np.abs(x)
    out = np.zeros_like(x)
    sp, g = a.rib_spacing, a.rib_growth
    for curve, y0, weight, thick, u_start in (
        (-0.22 * u + 1.5 * u * u, -0.03, 1.0, 0.4, 0.035),  # posterior
        (-0.5 * (u - w) - 0.6 * (u - w) ** 2, 0.02, 0.35, 0.3, 0.1),  # anterior
    ):
        t = y - curve - y0
        # rib k lies at t = sp * k * (1 + g k): invert for a continuous rib index
        k = (np.sqrt(np.maximum(1.0 + (4.0 * g / sp) * t, 0.0)) - 1.0) * (1.0 / (2.0 * g))
        frac = k - np.floor(k)
        edge = px / (sp * 1.2)
        band = smoothstep(0.0, edge, frac) * smoothstep(thick, thick - edge, frac)
        cortex = 0.6 + 0.4 * smoothstep(thick - 0.12, thick, frac)
        keep = (k > -0.2) & (k < 10.5) & (u > u_start)
        out += (weight * band * cortex) * keep
    return out * smoothstep(w + 0.045, w + 0.025, u)


def _add(density: np.ndarray, win, value: np.ndarray) -> None:
    if win is not None:
        density[win] += value


def render_frontal_anatomy(chest: FrontalChest, frame: ViewFrame,
                           vessels: VesselTree | None = None) -> FrontalLayers:
    """The density of a normal frontal chest on ``frame`` and the masks findings use.

    Costly parts are computed only inside the window where they can be non-zero.
    """
    a = chest.anatomy
    x, y = frame.grid()
    px = frame.pixel
    w, lh = chest.half_width, chest.lung_height
    ap = chest.view == "AP"

    # body outline: neck, shoulders, chest wall; thickness falls off towards the sides
    shoulder = w + 0.085 + 0.02 * (a.soft_tissue - 1.0)
    half = 0.075 + (shoulder - 0.075) * smoothstep(-0.16, 0.0, y) + 0.015 * smoothstep(0.3, 0.8, y)
    rel2 = (x / half) ** 2
    body = np.sqrt(np.clip(1.0 - rel2, 0.0, 1.0))
    density = (0.95 * a.soft_tissue) * (0.3 + 0.7 * body) * (rel2 < 1.3)
    density += 0.16 * body * smoothstep(0.16, 0.0, y)  # shoulder girdle over the apices
    if a.arms_in_field:
        gap = np.abs(x) - half
        density += 0.5 * ((gap > 0.015) & (gap < 0.1)) * smoothstep(-0.05, 0.05, y)
    for side in SIDES:
        if a.breast > 0:
            by = 0.8 * lh
            win = frame.window(side * 0.05, by - 0.15, side * 0.34, by + 0.12)
            if win is not None:
                d = np.hypot((x[win] - side * 0.19) / 0.15, (y[win] - by) / 0.13)
                _add(density, win, 0.2 * a.breast * smoothstep(1.0, 0.5, d) * (y[win] < by + 0.1))

    # abdomen below the domes (liver on the right), gastric bubble under the left dome
    dia = chest.diaphragm_y(x)
    below = y - dia
    abdomen = smoothstep(-px, 2 * px, below) * (rel2 < 1.0)
    density += (0.1 + 0.1 * smoothstep(0.0, 0.25, below) + 0.03 * (x < 0)) * abdomen
    # the bubble stays put when atelectasis raises the dome (it is not part of that finding)
    bx, by = 0.13, float(replace(chest, dome_lift={}).dome_y(np.array(0.55 * w), 1)) + 0.045
    win = frame.window(bx - 0.06, by - 0.04, bx + 0.06, by + 0.04)
    if win is not None:
        bubble = np.hypot((x[win] - bx) / 0.045, (y[win] - by) / 0.028)
        _add(density, win, -0.15 * smoothstep(1.0, 0.7, bubble) * smoothstep(by - 0.012, by - 0.004, y[win]))

    # mediastinum (a band from the neck to the heart) and the heart on the diaphragm
    medi_half = np.where(x > 0, chest.mediastinum_u(y, 1), chest.mediastinum_u(y, -1))
    medi = smoothstep(px, -px, np.abs(x - 0.004) - medi_half) * smoothstep(-0.12, 0.08, y) * (below < 0.02)
    heart = np.zeros_like(x)
    hwin = frame.window(*chest.heart_box())
    if hwin is not None:
        hl = chest.heart_level(x[hwin], y[hwin])
        heart[hwin] = smoothstep(1.0 + 3 * px / 0.1, 1.0 - 3 * px / 0.1, hl) * smoothstep(2 * px, -2 * px, below[hwin])
    density += 0.24 * np.maximum(heart, 0.5 * medi)

    # lungs: aerated fields; the heart hides most of the lung behind it
    lung = {side: np.zeros_like(x) for side in SIDES}
    depth = {side: np.full_like(x, -1.0) for side in SIDES}
    for side in SIDES:
        win = frame.window(min(0.0, side * (w + 0.02)), -0.05, max(0.0, side * (w + 0.02)), lh + 0.03)
        if win is None:
            continue
        d = chest.lung_depth(x[win], y[win], side)
        depth[side][win] = d
        lung[side][win] = smoothstep(-1.5 * px, 1.5 * px, d)
    field_ = np.maximum(lung[-1], lung[1])
    depth_any = np.maximum(depth[-1], depth[1])
    aeration = field_ * (0.55 + 0.45 * smoothstep(0.0, 0.07, depth_any))
    density -= (0.68 * aeration) * (1.0 - 0.85 * heart)

    # airway, clavicles, sternal ends: drawn strokes
    cx, cy = chest.carina
    airway = [Stroke(np.array([[-0.002, -0.3], [cx, cy]]), 0.034, 1.0)]
    for side in SIDES:
        tip = chest.hilum(side)
        airway.append(Stroke(np.array([[cx, cy], [0.55 * tip[0] + 0.45 * cx, tip[1] - 0.01]]), 0.022, 1.0))
    bones = []
    for side in SIDES:
        clav = bezier([[0.035, 0.115], [0.12, 0.065], [0.2, 0.095], [w + 0.07, 0.03]], 12)
        clav[:, 0] *= side
        if ap:  # the clavicles project higher and flatter on an AP film
            clav[:, 1] = clav[:, 1] * 0.5 - 0.02
        bones.append(Stroke(clav, 0.034, 0.8))
        bones.append(Stroke(clav[:3], 0.042, 1.0))  # the thick sternal end
        bones.append(Stroke(clav[-3:], 0.04, 0.9))  # the acromial end

    # lung markings: vessel trees and a faint texture, denser near the hila
    if vessels is None:
        vessels = frontal_vessels(a, {s: chest.hilum(s) for s in SIDES})
    # airway, clavicles and vessels are drawn, then blurred together in one pass
    air, clavicles, tree = soften([
        raster_strokes(frame, airway), raster_strokes(frame, bones),
        raster_segments(frame, vessels.start, vessels.end, vessels.width, np.minimum(1.0, vessels.width / 0.006)),
    ], blur_px=0.003 * frame.scale)
    density -= 0.24 * air
    density += 0.3 * clavicles + 0.12 * clavicles * (clavicles < 0.6)  # brighter cortex at the edges
    texture = smooth_noise(a.texture_seed, x.shape, (max(x.shape[0] // 12, 4), max(x.shape[1] // 12, 4)))
    markings = field_ * (0.11 * tree + 0.012 * texture)
    for side in SIDES:
        hx, hy = chest.hilum(side)
        win = frame.window(hx - 0.1, hy - 0.14, hx + 0.1, hy + 0.14)
        if win is not None:
            markings[win] += 0.09 * np.exp(-(((x[win] - hx) / 0.035) ** 2 + ((y[win] - hy) / 0.05) ** 2))
    density += markings

    # ribs and spine inside the chest's window; scapular edges and humeral heads
    win = frame.window(-(w + 0.05), -0.1, w + 0.05, lh + 0.12)
    if win is not None:
        xs, ys = x[win], y[win]
        ribs = _rib_pattern(chest, xs, ys, px) * (0.3 + 0.7 * field_[win]) * smoothstep(-0.1, -0.04, ys)
        density[win] += 0.15 * ribs * (1.0 - 0.6 * smoothstep(0.0, 0.1, below[win]))
        for side in SIDES:
            edge_u = (w - (0.085 if ap else 0.015)) + 0.12 * ys
            plate = smoothstep(edge_u - 0.004, edge_u + 0.004, side * xs) * smoothstep(-0.06, -0.02, ys) * smoothstep(0.34, 0.28, ys)
            density[win] += 0.05 * plate
    win = frame.window(-0.06, -0.3, 0.06, lh + 0.3)
    if win is not None:
        xs, ys = x[win], y[win]
        level = (ys + 0.02) / (0.052 + 0.02 * np.clip(ys, 0.0, 1.0))
        frac = level - np.floor(level)
        body_v = smoothstep(0.046, 0.036, np.abs(xs)) * (0.7 + 0.3 * smoothstep(0.0, 0.12, frac) * smoothstep(0.88, 0.76, frac))
        ped = np.hypot((np.abs(xs) - 0.03) / 0.008, (frac - 0.35) / 0.2)
        density[win] += 0.05 * body_v + 0.035 * smoothstep(1.0, 0.6, ped)
    for side in SIDES:
        hx, hy, hr = side * (w + 0.09), -0.03, 0.05
        win = frame.window(hx - hr, hy - hr, hx + hr, hy + hr)
        if win is not None:
            dh = np.hypot(x[win] - hx, y[win] - hy)
            density[win] += 0.18 * np.sqrt(np.clip(1.0 - (dh / hr) ** 2, 0.0, 1.0)) + 0.08 * smoothstep(hr, hr * 0.85, dh)
    return FrontalLayers(density=density.astype(np.float32, copy=False), lung=lung, lung_depth=depth,
                         heart=heart.astype(np.float32, copy=False), markings=markings.astype(np.float32, copy=False),
                         x=x, y=y)
