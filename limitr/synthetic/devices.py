"""Support devices as drawn lines and shapes: tubes, lines, pacemakers, chest tubes.

Each device is a set of strokes in body coordinates (see :mod:`canvas`); the renderer
rasterises them and adds them as dense material. Tubes carry a radio-opaque stripe, so
they show as a faint wide band with a bright thin line.
"""

from __future__ import annotations

import numpy as np

from limitr.synthetic.canvas import UNITS_PER_CM, Stroke, bezier
from limitr.synthetic.findings import Finding
from limitr.synthetic.frontal import FrontalChest
from limitr.synthetic.lateral import LateralChest
from limitr.synthetic.phrases import tube_tip_cm


def _tube(points: np.ndarray, wall: float, stripe: float = 0.0035) -> list[Stroke]:
    return [Stroke(points, wall, 0.25), Stroke(points, stripe, 1.0)]


def _box(cx: float, cy: float, w: float, h: float, angle: float = 0.0) -> np.ndarray:
    """A rounded-corner box outline (N, 2) around (cx, cy)."""
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    # a superellipse: flat sides, round corners
    x = np.sign(np.cos(t)) * np.abs(np.cos(t)) ** 0.35 * w / 2
    y = np.sign(np.sin(t)) * np.abs(np.sin(t)) ** 0.35 * h / 2
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], 1)


def frontal_device(f: Finding, chest: FrontalChest) -> tuple[list[Stroke], list[tuple[np.ndarray, float]]]:
    """Strokes and filled polygons of a device on a frontal view."""
    rng = np.random.default_rng(f.seed)
    lh, w = chest.lung_height, chest.half_width
    cx, cy = chest.carina
    side = -1 if f.side == "right" else 1
    j = rng.normal(0.0, 0.006, 8)
    if f.device == "endotracheal_tube":
        tip = cy - tube_tip_cm(f) * UNITS_PER_CM
        pts = bezier([[0.004 + j[0], -0.4], [-0.004, -0.1], [cx + j[1] * 0.3, tip]], 16)
        return _tube(pts, 0.018), []
    if f.device == "enteric_tube":
        stomach_y = float(chest.dome_y(np.array(0.5 * w), 1))
        pts = np.concatenate([
            bezier([[0.012 + j[0], -0.4], [0.02, 0.3 * lh], [0.03 + j[1], 0.85 * lh]], 16),
            bezier([[0.03 + j[1], 0.85 * lh], [0.06, stomach_y + 0.04], [0.16 + j[2], stomach_y + 0.09],
                    [0.2 + j[3], stomach_y + 0.05]], 12)[1:],
        ])
        return [Stroke(pts, 0.005, 0.6)], []
    if f.device == "central_line":
        tip = (-0.03 + j[0] * 0.3, (0.36 + 0.08 * rng.random()) * lh)
        if f.variant == "internal_jugular":
            ctrl = [[side * 0.09 + j[1], -0.4], [side * 0.07, -0.05], [side * 0.03, 0.12], tip]
        else:
            ctrl = [[side * (w + 0.06), 0.02 + j[1]], [side * 0.16, 0.04], [side * 0.03, 0.1], tip]
        return [Stroke(bezier(ctrl, 20), 0.0055, 0.85)], []
    if f.device == "pacemaker":
        gx, gy = side * (0.2 + j[0]), 0.05 + j[1]
        generator = _box(gx, gy, 0.072, 0.05, 0.3 * side + j[2] * 5)
        ra = (-0.055, 0.55 * lh)
        rv = (0.07 + j[3], 0.8 * lh)
        # a ventricular lead to the right ventricular apex; dual chamber adds an atrial one
        leads = [bezier([[gx - side * 0.02, gy + 0.01], [side * 0.04, 0.02], [-0.03, 0.3], [-0.01, 0.7 * lh], rv], 20)]
        if f.variant == "dual_chamber":
            leads.append(bezier([[gx - side * 0.02, gy], [side * 0.05, 0.0], [-0.02, 0.2], [ra[0], ra[1] - 0.02], ra], 20))
        strokes = [Stroke(lead, 0.005, 0.9) for lead in leads]
        return strokes, [(generator, 1.6)]
    if f.device == "chest_tube":
        entry = (side * (w + 0.01), (0.62 + 0.1 * rng.random()) * lh)
        pts = bezier([[side * (w + 0.12), entry[1] + 0.04], [entry[0], entry[1]],
                      [side * (w - 0.06), 0.3 * lh], [side * (0.14 + j[0]), 0.06 + j[1]]], 24)
        return _tube(pts, 0.022, 0.005), []
    return [], []


def lateral_device(f: Finding, chest: LateralChest) -> tuple[list[Stroke], list[tuple[np.ndarray, float]]]:
    """Strokes and filled polygons of a device on a lateral view."""
    rng = np.random.default_rng(f.seed)
    ant, post, depth, lh = chest.anterior, chest.posterior, chest.depth, chest.lung_height
    cx, cy = chest.carina
    j = rng.normal(0.0, 0.006, 8)
    if f.device == "endotracheal_tube":
        tip = cy - tube_tip_cm(f) * UNITS_PER_CM
        pts = bezier([[cx - 0.11, -0.4], [cx - 0.06, -0.1], [cx - 0.004 * (tip / cy), tip]], 16)
        return _tube(pts, 0.018), []
    if f.device == "enteric_tube":
        sx = ant + 0.36 * depth
        dome = float(chest.dome_y(np.array(sx), 1))
        pts = bezier([[cx - 0.06, -0.4], [cx + 0.05, 0.2], [cx + 0.05, 0.75 * lh], [sx + 0.02, dome + 0.02],
                      [sx - 0.03 + j[0], dome + 0.07]], 28)
        return [Stroke(pts, 0.005, 0.6)], []
    if f.device == "central_line":
        pts = bezier([[cx - 0.04, -0.4], [cx - 0.05, 0.0], [ant + 0.36 * depth + j[0], (0.4 + j[1]) * lh]], 16)
        return [Stroke(pts, 0.0055, 0.85)], []
    if f.device == "pacemaker":
        gx, gy = ant + 0.01, 0.06 + j[0]
        generator = _box(gx, gy, 0.025, 0.06, 0.1)
        leads = [bezier([[gx + 0.01, gy], [cx - 0.02, 0.05], [cx - 0.05, 0.45 * lh], [ant + 0.1, 0.78 * lh]], 20)]
        return [Stroke(lead, 0.005, 0.9) for lead in leads], [(generator, 1.6)]
    if f.device == "chest_tube":
        pts = bezier([[post + 0.06, 0.7 * lh], [post - 0.03, 0.62 * lh], [post - 0.12, 0.3 * lh],
                      [ant + 0.45 * depth + j[0], 0.06]], 24)
        return _tube(pts, 0.022, 0.005), []
    return [], []
