"""The lateral chest (LATERAL or LL): geometry and the density of the normal anatomy.

Shown as a left lateral is: the patient faces the viewer's left, so ``x`` runs from
anterior (sternum, image left) to posterior (spine, image right). Both lungs overlap; the
heart lies anterior-inferior with the retrosternal clear space above it; the posterior
costophrenic sulci are the lowest points of the lungs. Heights (``y``) match the frontal
view of the same patient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from limitr.synthetic.anatomy import Anatomy, VesselTree, lateral_vessels
from limitr.synthetic.canvas import (
    Stroke, ViewFrame, bezier, raster_segments, raster_strokes, smooth_noise, smoothstep, soften,
)


@dataclass(frozen=True)
class LateralChest:
    """One lateral view's geometry. ``heart_scale`` as on the frontal view;
    ``dome_lift`` raises the right (-1) or left (+1) hemidiaphragm."""

    anatomy: Anatomy
    heart_scale: float = 1.0
    dome_lift_right: float = 0.0
    dome_lift_left: float = 0.0

    @property
    def depth(self) -> float:
        """Chest depth, anterior skin to posterior skin."""
        a = self.anatomy
        return a.depth_ratio * 2.0 * (a.lung_half_width + 0.05)

    @property
    def anterior(self) -> float:
        return -0.5 * self.depth

    @property
    def posterior(self) -> float:
        return 0.5 * self.depth

    @property
    def lung_height(self) -> float:
        return self.anatomy.lung_height

    @property
    def hilum(self) -> tuple[float, float]:
        return (self.anterior + 0.5 * self.depth + 0.01, 0.42 * self.lung_height)

    @property
    def carina(self) -> tuple[float, float]:
        return (self.anterior + 0.47 * self.depth, 0.33 * self.lung_height)

    def spine_x(self, y: np.ndarray) -> np.ndarray:
        """The centre of the vertebral bodies (thoracic kyphosis bows it backwards)."""
        return self.posterior - 0.135 + 0.022 * np.sin(np.pi * np.clip(y / 0.75, 0.0, 1.0))

    def dome_y(self, x: np.ndarray, side: int) -> np.ndarray:
        """A hemidiaphragm's upper edge: highest just anterior of the middle, falling
        gently to the front and steeply to the posterior sulcus."""
        a = self.anatomy
        lift = (a.right_dome_raise + self.dome_lift_right) if side < 0 else self.dome_lift_left
        top = self.lung_height - a.dome_height - lift - 0.01
        peak_x = self.anterior + 0.42 * self.depth
        sulcus_x, sulcus_y = self.posterior - 0.055, self.lung_height + 0.07 - 0.5 * lift
        k_post = (sulcus_y - top) / (sulcus_x - peak_x) ** 2
        k_ant = 0.9
        dx = x - peak_x
        return top + np.where(dx > 0, k_post, k_ant) * dx * dx

    def lung_depth(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Depth inside the combined lung field (positive inside, body units)."""
        t = np.clip(y / (0.45 * self.lung_height), 0.0, 1.0)
        front = self.anterior + 0.035 + 0.17 * (1.0 - t) ** 2
        back = self.posterior - 0.03 - 0.09 * (1.0 - t) ** 2
        apex = 2.6 * (x - (self.anterior + 0.55 * self.depth)) ** 2 - 0.008
        dome = np.maximum(self.dome_y(x, -1), self.dome_y(x, 1))
        return np.minimum(np.minimum(x - front, back - x), np.minimum(y - apex, dome - y))

    def heart_level(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """< 1 inside the heart (an ellipse tilted with its apex anterior-inferior)."""
        s = self.heart_scale
        semi_a, semi_b = 0.17 * s, 0.13 * (1.0 + 0.5 * (s - 1.0))
        hx = self.anterior + 0.03 + 0.8 * semi_a
        hy = 0.86 * self.lung_height
        ang = 2.7
        c, sn = math.cos(ang), math.sin(ang)
        dx, dy = x - hx, y - hy
        ex = (c * dx + sn * dy) / semi_a
        ey = (-sn * dx + c * dy) / semi_b
        return ex * ex + ey * ey

    def heart_box(self) -> tuple[float, float, float, float]:
        s = self.heart_scale
        hx = self.anterior + 0.03 + 0.8 * 0.17 * s
        hy = 0.8 * self.lung_height
        r = 0.2 * s
        return (hx - r, hy - r, hx + r, hy + r)


@dataclass
class LateralLayers:
    """What findings need from a rendered lateral anatomy (all (H, W) float32)."""

    density: np.ndarray
    lung: np.ndarray
    lung_depth: np.ndarray
    heart: np.ndarray
    markings: np.ndarray
    x: np.ndarray
    y: np.ndarray


def render_lateral_anatomy(chest: LateralChest, frame: ViewFrame,
                           vessels: VesselTree | None = None) -> LateralLayers:
    """The density of a normal lateral chest on ``frame`` and the masks findings use."""
    a = chest.anatomy
    x, y = frame.grid()
    px = frame.pixel
    ant, post, depth, lh = chest.anterior, chest.posterior, chest.depth, chest.lung_height

    # body: the beam crosses the full chest width, a little less at the front and back
    front_skin = ant - 0.02 + 0.05 * smoothstep(0.02, -0.2, y)
    back_skin = post + 0.02
    centre = 0.5 * (front_skin + back_skin)
    rel = np.abs(x - centre) / (0.5 * (back_skin - front_skin))
    inside = smoothstep(1.0 + 2 * px / depth, 1.0 - 2 * px / depth, rel)
    density = (0.9 * a.soft_tissue) * inside * (0.6 + 0.4 * np.sqrt(np.clip(1.0 - rel * rel, 0.0, 1.0)))
    density += 0.22 * inside * smoothstep(0.12, -0.02, y)  # shoulders and arms over the apices

    # abdomen under the domes, gastric bubble under the left dome anteriorly
    dome_r, dome_l = chest.dome_y(x, -1), chest.dome_y(x, 1)
    dome_low = np.maximum(dome_r, dome_l)
    below = 0.5 * (smoothstep(-px, 2 * px, y - dome_r) + smoothstep(-px, 2 * px, y - dome_l))
    density += (0.14 + 0.1 * smoothstep(0.0, 0.3, y - dome_low)) * below * inside
    bx = ant + 0.36 * depth
    by = float(chest.dome_y(np.array(bx), 1)) + 0.04
    win = frame.window(bx - 0.06, by - 0.04, bx + 0.06, by + 0.04)
    if win is not None:
        bubble = np.hypot((x[win] - bx) / 0.045, (y[win] - by) / 0.025)
        density[win] -= 0.1 * smoothstep(1.0, 0.6, bubble) * smoothstep(by - 0.012, by - 0.002, y[win])

    # heart
    heart = np.zeros_like(x)
    hwin = frame.window(*chest.heart_box())
    if hwin is not None:
        hl = chest.heart_level(x[hwin], y[hwin])
        heart[hwin] = smoothstep(1.15, 0.8, hl) * smoothstep(2 * px, -2 * px, y[hwin] - dome_low[hwin])
    density += 0.13 * heart

    # the lungs
    d = chest.lung_depth(x, y)
    lung = smoothstep(-1.5 * px, 1.5 * px, d)
    aeration = lung * (0.6 + 0.4 * smoothstep(0.0, 0.06, d))
    density -= (0.48 * aeration) * (1.0 - 0.4 * heart)

    # spine: vertebral bodies with disc spaces, fainter posterior elements
    win = frame.window(post - 0.22, -0.3, post + 0.03, lh + 0.3)
    if win is not None:
        xs, ys = x[win], y[win]
        sx = chest.spine_x(ys)
        level = (ys + 0.02) / (0.052 + 0.02 * np.clip(ys, 0.0, 1.0))
        frac = level - np.floor(level)
        bodies = smoothstep(sx - 0.047, sx - 0.04, xs) * smoothstep(sx + 0.036, sx + 0.03, xs)
        bodies = bodies * smoothstep(0.0, 0.1, frac) * smoothstep(0.86, 0.76, frac)
        cortex = smoothstep(0.012, 0.0, np.minimum(np.abs(xs - sx + 0.042), np.abs(xs - sx - 0.032)))
        arch = smoothstep(sx + 0.035, sx + 0.045, xs) * smoothstep(post, post - 0.02, xs)
        density[win] += (0.07 * bodies * (0.7 + 0.6 * cortex) + 0.03 * arch * (0.6 + 0.4 * np.cos(2 * np.pi * level))) * (1.0 - 0.5 * below[win])
        # faint posterior ribs crossing obliquely
        t = (ys + 0.45 * (xs - post)) / a.rib_spacing
        tf = t - np.floor(t)
        ribs = smoothstep(0.0, 0.08, tf) * smoothstep(0.45, 0.37, tf)
        density[win] += 0.04 * ribs * lung[win] * (ys > -0.05)

    # sternum, aorta (dense strokes) and trachea (air)
    sternum = bezier([[ant + 0.022, 0.0], [ant + 0.012, 0.3], [ant + 0.03, 0.72 * lh]], 12)
    arch_line = bezier([[ant + 0.16, 0.55 * lh], [ant + 0.15, 0.02], [post - 0.2, 0.05],
                        [post - 0.19, 0.5 * lh], [post - 0.17, lh]], 24)
    cx, cy = chest.carina
    if vessels is None:
        vessels = lateral_vessels(a, chest.hilum)
    dense, air, tree = soften([
        raster_strokes(frame, [Stroke(arch_line, 0.05, 0.5), Stroke(sternum, 0.02, 1.0)]),
        raster_strokes(frame, [Stroke(np.array([[cx - 0.07, -0.3], [cx, cy]]), 0.032, 1.0)]),
        raster_segments(frame, vessels.start, vessels.end, vessels.width, np.minimum(1.0, vessels.width / 0.006)),
    ], blur_px=0.003 * frame.scale)
    density += 0.12 * dense * (1.0 - heart)
    density -= 0.16 * air

    # markings
    texture = smooth_noise(a.texture_seed + 7, x.shape, (max(x.shape[0] // 12, 4), max(x.shape[1] // 12, 4)))
    markings = lung * (0.06 * tree + 0.012 * texture)
    hx, hy = chest.hilum
    win = frame.window(hx - 0.15, hy - 0.15, hx + 0.15, hy + 0.15)
    if win is not None:
        markings[win] += 0.1 * np.exp(-(((x[win] - hx) / 0.05) ** 2 + ((y[win] - hy) / 0.05) ** 2))
    density += markings
    return LateralLayers(density=density.astype(np.float32, copy=False), lung=lung, lung_depth=d,
                         heart=heart.astype(np.float32, copy=False), markings=markings.astype(np.float32, copy=False),
                         x=x, y=y)
