"""Drawing findings on a rendered anatomy: each finding adds density in a window and says
which pixels its box must cover.

A finding's exact place and shape come from its seed through :class:`Placement`, drawn
the same way for every view, so the frontal and lateral images of a study agree.
Cardiomegaly and the volume loss of atelectasis change the anatomy itself (see
:mod:`limitr.synthetic.render`); here they only contribute their boxes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from limitr.synthetic.anatomy import grow_vessels
from limitr.synthetic.canvas import (
    UNITS_PER_CM, Stroke, ViewFrame, blur, draw_segments, draw_strokes, sample_noise, smoothstep,
)
from limitr.synthetic.findings import Finding
from limitr.synthetic.frontal import FrontalChest, FrontalLayers
from limitr.synthetic.lateral import LateralChest, LateralLayers

GRADE = {"mild": 0, "moderate": 1, "severe": 2}


@dataclass
class Patch:
    """Density ``delta`` added inside ``window`` (rows, cols); ``mask`` (same shape) marks
    what the finding's box covers. ``delta`` None: the anatomy itself carries it."""

    window: tuple[slice, slice]
    mask: np.ndarray
    delta: Optional[np.ndarray] = None


@dataclass(frozen=True)
class Placement:
    """The random details of one finding, shared by its views."""

    u_frac: float
    y_frac: float
    radius_jitter: float
    blobs: np.ndarray  # (n, 3): dx, dy (in radii), sigma (in radii)
    tilt: float
    noise_seed: int
    kerley: np.ndarray  # (6, 2): positions of Kerley B lines (fractions)


def placement(f: Finding) -> Placement:
    rng = np.random.default_rng(f.seed)
    n = int(rng.integers(4, 8))
    blobs = np.stack([rng.uniform(-0.55, 0.55, n), rng.uniform(-0.5, 0.5, n), rng.uniform(0.4, 0.7, n)], 1)
    return Placement(
        u_frac=float(rng.uniform(0.0, 1.0)), y_frac=float(rng.uniform(0.0, 1.0)),
        radius_jitter=float(rng.uniform(0.85, 1.15)), blobs=blobs, tilt=float(rng.uniform(-0.25, 0.25)),
        noise_seed=int(rng.integers(0, 2**31 - 1)), kerley=rng.uniform(0.0, 1.0, (6, 2)),
    )


def _heart_border_u(chest: FrontalChest, side: int) -> float:
    """Where the patient's normal heart border lies on a PA view: findings are placed
    against it, so they stay put when another finding (cardiomegaly) enlarges the heart
    or the film is AP."""
    a = chest.anatomy
    width = a.cardiothoracic_ratio * 2.0 * chest.half_width
    return (a.heart_left_share if side > 0 else 1.0 - a.heart_left_share) * width


def _win(frame: ViewFrame, box: tuple[float, float, float, float]):
    return frame.window(min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3]))


def _blob(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float, p: Placement) -> np.ndarray:
    """An irregular fluffy opacity of about radius ``r`` (0..1)."""
    field = np.zeros_like(x)
    for dx, dy, sig in p.blobs:
        field += np.exp(-(((x - cx - dx * r) ** 2 + (y - cy - dy * r) ** 2) / (sig * r) ** 2))
    field = field + 0.35 * sample_noise(p.noise_seed, x, y, period=max(5 * r, 0.1), size=16)
    fluffy = 0.88 + 0.12 * sample_noise(p.noise_seed + 1, x, y, period=max(4 * r, 0.1), size=16)
    # fade to nothing well inside the 2r window the caller draws in
    fade = smoothstep(1.9 * r, 1.4 * r, np.hypot(x - cx, y - cy))
    return smoothstep(0.2, 1.0, field) * fluffy * fade


def _round(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float, px: float) -> np.ndarray:
    d = np.hypot(x - cx, y - cy)
    return np.sqrt(np.clip(1.0 - (d / r) ** 2, 0.0, 1.0)) * 0.6 + 0.4 * smoothstep(r + px, r - px, d)


def consolidation_center(f: Finding, chest: FrontalChest, side: int, p: Placement) -> tuple[float, float, float]:
    """(u, y, radius) of a consolidation on the frontal view."""
    lh = chest.lung_height
    r = (0.045 if f.size == "small" else 0.072) * p.radius_jitter
    if f.zone == "upper":
        y = (0.2 + 0.12 * p.y_frac) * lh
        u = (0.45 + 0.3 * p.u_frac) * float(chest.lateral_u(np.array(y)))
    elif f.zone == "middle":  # right middle lobe / lingula: against the heart border
        y = (0.6 + 0.1 * p.y_frac) * lh
        u = _heart_border_u(chest, side) + 0.6 * r
    else:
        u = (0.45 + 0.3 * p.u_frac) * chest.half_width
        y = float(chest.dome_y(np.array(u), side)) - 0.5 * r
    return u, y, r


def lesion_center(f: Finding, chest: FrontalChest, side: int, p: Placement) -> tuple[float, float, float]:
    """(u, y, radius) of a nodule or mass on the frontal view."""
    lh = chest.lung_height
    r = 0.5 * (f.size_mm or 10) / 10.0 * UNITS_PER_CM
    y = {"upper": 0.18 + 0.14 * p.y_frac, "middle": 0.42 + 0.16 * p.y_frac,
         "lower": 0.64 + 0.12 * p.y_frac}[f.zone or "middle"] * lh
    lat = float(chest.lateral_u(np.array(y)))
    u = (0.45 + 0.35 * p.u_frac) * lat
    if f.zone != "upper":
        u = max(u, _heart_border_u(chest, side) + r + 0.015)
    u = min(u, lat - r - 0.01)
    return u, y, r


# --- frontal ---------------------------------------------------------------------------

def frontal_patches(f: Finding, chest: FrontalChest, layers: FrontalLayers,
                    frame: ViewFrame) -> list[Patch]:
    """The patches (one per box) of finding ``f`` on a frontal view."""
    p = placement(f)
    x_all, y_all = layers.x, layers.y
    lh, w, px = chest.lung_height, chest.half_width, frame.pixel
    # places are taken from the unchanged anatomy, so they do not move when another
    # finding (atelectasis raising a dome) is left out
    unchanged = replace(chest, dome_lift={})
    out: list[Patch] = []
    if f.type == "cardiomegaly":
        win = _win(frame, chest.heart_box())
        if win is not None:
            out.append(Patch(win, layers.heart[win] > 0.05))
        return out
    for side in f.sides:
        if f.type == "pleural_effusion":
            if f.size == "small":
                continue  # about 50-75 mL: seen on the lateral view only
            base = float(unchanged.dome_y(np.array(w), side))
            height = (0.2 if f.size == "moderate" else 0.42) * lh * (0.85 + 0.3 * p.y_frac)
            win = _win(frame, (0.0, base - height - 0.1, side * (w + 0.04), base + 0.04))
            if win is None:
                continue
            x, y = x_all[win], y_all[win]
            u = side * x
            level = base - height - (0.05 + 0.1 * p.u_frac) * np.clip(u / w, 0.0, 1.1) ** 2  # meniscus
            thorax = smoothstep(-0.006, 0.004, chest.lateral_u(y) - u + 0.004)
            thorax = thorax * smoothstep(-0.01, 0.0, u - chest.mediastinum_u(y, side))
            thorax = thorax * smoothstep(0.012, 0.0, y - chest.dome_y(u, side))
            fluid = thorax * smoothstep(level - 0.03, level + 0.04, y)
            delta = fluid * (0.4 + 0.15 * smoothstep(level, level + 0.15, y)) - layers.markings[win] * fluid
            out.append(Patch(win, fluid > 0.3, delta))
        elif f.type == "pneumothorax":
            if f.size == "small":
                anchor, k = (side * 0.16, 0.9 * lh), (1.0, 0.93)
            elif f.size == "moderate":
                anchor, k = (side * 0.1, 0.75 * lh), (0.87, 0.86)
            else:
                anchor, k = (side * 0.09, 0.5 * lh), (0.62, 0.6)
            win = _win(frame, (0.0, -0.03, side * (w + 0.02), lh + 0.02))
            if win is None:
                continue
            x, y = x_all[win], y_all[win]
            xc = anchor[0] + (x - anchor[0]) / k[0]
            yc = anchor[1] + (y - anchor[1]) / k[1]
            collapsed = unchanged.lung_depth(xc, yc, side) * min(k)
            lung = layers.lung[side][win]
            # the air collects at the apex and along the chest wall: a small one stays apical
            reach = {"small": 0.3, "moderate": 0.7}.get(f.size or "", 2.0) * lh
            upper = smoothstep(reach, reach - 0.05, y)
            gap = lung * smoothstep(0.5 * px, -0.5 * px, collapsed) * upper
            line = lung * np.exp(-((collapsed / (0.9 * px + 0.0012)) ** 2)) * (1.0 - gap) * upper
            delta = -layers.markings[win] * gap - 0.1 * gap + 0.2 * line
            out.append(Patch(win, (gap > 0.5) | (line > 0.5), delta))
        elif f.type == "consolidation":
            u, y0, r = consolidation_center(f, unchanged, side, p)
            win = _win(frame, (side * (u - 2 * r), y0 - 2 * r, side * (u + 2 * r), y0 + 2 * r))
            if win is None:
                continue
            x, y = x_all[win], y_all[win]
            opacity = _blob(x, y, side * u, y0, r, p) * smoothstep(-0.012, 0.004, layers.lung_depth[side][win])
            hx, hy = chest.hilum(side)
            away = math.atan2(y0 - hy, side * u - hx)
            tree = grow_vessels(p.noise_seed, [(side * u - 0.5 * r * math.cos(away), y0 - 0.5 * r * math.sin(away))],
                                [[away - 0.3, away + 0.3]], trunk_length=0.5 * r, trunk_width=0.005, depth=3)
            sub = replace(frame, height=win[0].stop - win[0].start, width=win[1].stop - win[1].start,
                          mid_col=frame.mid_col - win[1].start, apex_row=frame.apex_row - win[0].start)
            bronchi = draw_segments(sub, tree.start, tree.end, tree.width, np.full(len(tree.width), 0.6),
                                    blur_px=0.003 * frame.scale)
            # air bronchograms show only where the opacity is dense
            delta = opacity * (0.32 - 0.1 * bronchi * opacity) - 0.5 * layers.markings[win] * opacity
            out.append(Patch(win, opacity > 0.35, delta))
        elif f.type == "atelectasis":
            out.extend(_atelectasis_frontal(f, chest, layers, frame, side, p))
        elif f.type == "edema":
            out.extend(_edema_frontal(f, chest, layers, frame, side, p))
        elif f.type in ("nodule", "mass"):
            u, y0, r = lesion_center(f, unchanged, side, p)
            win = _win(frame, (side * (u - 1.6 * r), y0 - 1.6 * r, side * (u + 1.6 * r), y0 + 1.6 * r))
            if win is None:
                continue
            x, y = x_all[win], y_all[win]
            if f.type == "nodule":
                dens = _round(x, y, side * u, y0, r, px)
            else:
                dens = np.zeros_like(x)
                for dx, dy, sig in p.blobs[:3]:
                    dens = np.maximum(dens, _round(x, y, side * (u + 0.3 * dx * r), y0 + 0.3 * dy * r, r * (0.6 + 0.5 * sig), px))
            out.append(Patch(win, dens > 0.2, 0.42 * dens))
    return out


def _atelectasis_frontal(f: Finding, chest: FrontalChest, layers: FrontalLayers, frame: ViewFrame,
                         side: int, p: Placement) -> list[Patch]:
    lh, w, px = chest.lung_height, chest.half_width, frame.pixel
    if f.zone == "retrocardiac":
        win = _win(frame, (side * 0.02, 0.6 * lh, side * 0.22, lh + 0.02))
        if win is None:
            return []
        x, y = layers.x[win], layers.y[win]
        u = side * x
        dome = chest.dome_y(u, side)
        wedge = smoothstep(0.005, -0.005, (dome - y) - (0.2 - u) * 0.9)
        wedge = wedge * smoothstep(0.2, 0.16, u) * smoothstep(0.0, 0.004, dome - y) * smoothstep(0.01, 0.03, u)
        return [Patch(win, wedge > 0.4, 0.2 * wedge)]
    length = (0.09 if f.grade == "mild" else 0.14) * (0.9 + 0.2 * p.radius_jitter)
    uc = (0.42 + 0.25 * p.u_frac) * w
    yc = float(chest.dome_y(np.array(uc), side)) - 0.03 - 0.015 * p.y_frac
    win = _win(frame, (-side * 0.045, yc - 0.06, side * (w + 0.11), chest.lung_height + 0.04))
    if win is None:
        return []
    x, y = layers.x[win], layers.y[win]
    c, s = math.cos(p.tilt), math.sin(p.tilt)
    dx, dy = side * x - uc, y - yc
    along, across = c * dx + s * dy, -s * dx + c * dy
    thick = 0.009 if f.grade == "mild" else 0.013
    level = (along / (0.5 * length)) ** 2 + (across / thick) ** 2
    plate = smoothstep(1.6, 0.3, level) * smoothstep(-0.004, 0.004, layers.lung_depth[side][win])
    # volume loss: the raised hemidiaphragm (the anatomy draws it) falls inside the box
    normal = replace(chest, dome_lift={})
    u = side * x
    within = (u > -0.045) & (u < w + 0.11)  # the domes blend across the midline; the edge runs to the chest wall
    # (the lung darkens with depth above the dome, so the base of the lung changes too)
    raised = (y > chest.dome_y(u, side) - 0.06) & (y < normal.dome_y(u, side) + 3 * px) & within
    return [Patch(win, (plate > 0.3) | raised, 0.2 * plate - 0.5 * layers.markings[win] * plate)]


def _edema_frontal(f: Finding, chest: FrontalChest, layers: FrontalLayers, frame: ViewFrame,
                   side: int, p: Placement) -> list[Patch]:
    lh, w = chest.lung_height, chest.half_width
    g = GRADE.get(f.grade or "mild", 0)
    win = _win(frame, (0.0, -0.02, side * (w + 0.02), lh + 0.02))
    if win is None:
        return []
    x, y = layers.x[win], layers.y[win]
    hx, hy = chest.hilum(side)
    su, sy = 0.1 + 0.03 * g, 0.14 + 0.04 * g
    haze = np.exp(-(((side * x - abs(hx)) / su) ** 2 + ((y - hy - 0.03) / sy) ** 2))
    lung = layers.lung[side][win]
    marks = layers.markings[win]
    delta = (0.1 + 0.07 * g) * haze * lung + (blur(marks, 0.006 * frame.scale) - marks) * lung * 0.8
    mask = (haze > 0.3) & (lung > 0.5)
    if g >= 1:  # Kerley B lines: short horizontal lines at the lateral bases
        strokes = []
        for a, b in p.kerley[: 3 + 2 * g]:
            yk = (0.62 + 0.25 * a) * lh
            uk = float(chest.lateral_u(np.array(yk)))
            strokes.append(Stroke(np.array([[side * (uk - 0.004), yk], [side * (uk - 0.022 - 0.01 * b), yk]]), 0.0025, 1.0))
        sub = replace(frame, height=win[0].stop - win[0].start, width=win[1].stop - win[1].start,
                      mid_col=frame.mid_col - win[1].start, apex_row=frame.apex_row - win[0].start)
        lines = draw_strokes(sub, strokes) * lung
        delta = delta + 0.12 * lines
        mask = mask | (lines > 0.3)
    return [Patch(win, mask, delta)]


# --- lateral ---------------------------------------------------------------------------

def lateral_patches(f: Finding, chest: LateralChest, frontal: FrontalChest, layers: LateralLayers,
                    frame: ViewFrame) -> list[Patch]:
    """The patch of finding ``f`` on a lateral view (both sides project onto one place)."""
    p = placement(f)
    ant, post, depth, lh = chest.anterior, chest.posterior, chest.depth, chest.lung_height
    px = frame.pixel
    if f.type == "cardiomegaly":
        win = _win(frame, chest.heart_box())
        return [Patch(win, layers.heart[win] > 0.05)] if win is not None else []
    if f.type == "pleural_effusion":
        sulcus = lh + 0.07
        height = {"small": 0.04, "moderate": 0.12, "large": 0.26}[f.size or "small"] * (0.85 + 0.3 * p.y_frac)
        x0 = post - 0.3 if f.size == "small" else ant
        win = _win(frame, (x0, sulcus - height - 0.12, post, sulcus + 0.03))
        if win is None:
            return []
        x, y = layers.x[win], layers.y[win]
        level = sulcus - height - 0.06 * smoothstep(post - 0.2, post - 0.03, x) - 0.04 * smoothstep(ant + 0.15, ant + 0.03, x)
        inside = smoothstep(-0.012, 0.0, layers.lung_depth[win])
        fluid = inside * smoothstep(level - 0.015, level + 0.015, y) * (1.2 if f.side == "bilateral" else 1.0)
        return [Patch(win, fluid > 0.3, 0.42 * fluid - layers.markings[win] * np.minimum(fluid, 1.0))]
    if f.type in ("consolidation", "nodule", "mass"):
        side = f.sides[0] if f.sides else 1
        if f.type == "consolidation":
            _, y0, r = consolidation_center(f, frontal, side, p)
        else:
            _, y0, r = lesion_center(f, frontal, side, p)
        cx = ant + (0.5 + 0.36 * f.depth) * depth
        win = _win(frame, (cx - 2 * r, y0 - 2 * r, cx + 2 * r, y0 + 2 * r))
        if win is None:
            return []
        x, y = layers.x[win], layers.y[win]
        if f.type == "consolidation":
            dens = _blob(x, y, cx, y0, r, p) * smoothstep(-0.01, 0.004, layers.lung_depth[win])
            return [Patch(win, dens > 0.35, 0.2 * dens)]
        dens = _round(x, y, cx, y0, r, px)
        return [Patch(win, dens > 0.2, 0.36 * dens)]
    if f.type == "atelectasis":
        cx = post - 0.14
        cy = float(chest.dome_y(np.array(cx), 1)) - 0.05
        win = _win(frame, (cx - 0.1, cy - 0.08, cx + 0.1, cy + 0.08))
        if win is None:
            return []
        x, y = layers.x[win], layers.y[win]
        c, s = math.cos(0.35 + p.tilt), math.sin(0.35 + p.tilt)
        along, across = c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)
        plate = smoothstep(1.3, 0.5, (along / 0.06) ** 2 + (across / 0.01) ** 2) * smoothstep(-0.004, 0.004, layers.lung_depth[win])
        return [Patch(win, plate > 0.3, 0.28 * plate)]
    if f.type == "edema":
        hx, hy = chest.hilum
        g = GRADE.get(f.grade or "mild", 0)
        win = _win(frame, (hx - 0.25, hy - 0.25, hx + 0.25, hy + 0.25))
        if win is None:
            return []
        x, y = layers.x[win], layers.y[win]
        haze = np.exp(-(((x - hx) / (0.12 + 0.03 * g)) ** 2 + ((y - hy) / (0.13 + 0.03 * g)) ** 2)) * layers.lung[win]
        return [Patch(win, haze > 0.3, (0.1 + 0.06 * g) * haze)]
    return []  # a pneumothorax is not drawn on the lateral view
