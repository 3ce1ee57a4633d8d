"""A patient's chest: the body measurements every view of that patient shares.

All lengths are chest units (see :mod:`limitr.synthetic.canvas`). One patient gets
one :class:`Anatomy`; each image of each study renders it through its own view frame, so
a patient's frontal and lateral images, and the studies over time, agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Anatomy:
    """Body measurements of one patient (chest units, radians).

    ``lung_half_width``: midline to the lateral lung edge at its widest.
    ``lung_height``: apex (y = 0) to the costophrenic angles.
    ``dome_height``: how far the hemidiaphragm domes rise above the costophrenic angles.
    ``right_dome_raise``: the right hemidiaphragm sits this much higher than the left.
    ``cardiothoracic_ratio``: heart width over the inner chest width on a PA view.
    ``heart_left_share``: the part of the heart's width on the patient's left of midline.
    ``depth_ratio``: chest depth (anterior-posterior) over chest width.
    ``soft_tissue``: body habitus, scales soft-tissue density; ``breast`` 0..1.
    """

    sex: str
    age: int
    body_scale: float
    lung_half_width: float
    lung_height: float
    dome_height: float
    right_dome_raise: float
    cardiothoracic_ratio: float
    heart_left_share: float
    heart_tilt: float
    mediastinum_half_width: float
    aortic_knob: float
    rib_spacing: float
    rib_growth: float
    soft_tissue: float
    breast: float
    depth_ratio: float
    arms_in_field: bool
    texture_seed: int
    vessel_seed: int


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """A random adult chest; measurements vary within plausible ranges."""
    sex = "F" if rng.random() < 0.48 else "M"
    size = 0.97 if sex == "F" else 1.0
    return Anatomy(
        sex=sex,
        age=int(rng.integers(21, 92)),
        body_scale=float(rng.uniform(0.93, 1.07)),
        lung_half_width=float(rng.uniform(0.29, 0.325) * size),
        lung_height=float(rng.uniform(0.53, 0.60) * size),
        dome_height=float(rng.uniform(0.045, 0.07)),
        right_dome_raise=float(rng.uniform(0.008, 0.028)),
        cardiothoracic_ratio=float(rng.uniform(0.40, 0.47)),
        heart_left_share=float(rng.uniform(0.58, 0.66)),
        heart_tilt=float(rng.uniform(0.25, 0.45)),
        mediastinum_half_width=float(rng.uniform(0.05, 0.064)),
        aortic_knob=float(rng.uniform(0.012, 0.026)),
        rib_spacing=float(rng.uniform(0.047, 0.054)),
        rib_growth=float(rng.uniform(0.02, 0.045)),
        soft_tissue=float(rng.uniform(0.85, 1.25)),
        breast=float(rng.uniform(0.4, 1.0)) if sex == "F" else 0.0,
        depth_ratio=float(rng.uniform(0.74, 0.88)),
        arms_in_field=bool(rng.random() < 0.35),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
        vessel_seed=int(rng.integers(0, 2**31 - 1)),
    )


@dataclass(frozen=True)
class VesselTree:
    """Line segments of the pulmonary vessels: ``start``/``end`` (N, 2) body points,
    ``width`` (N,) body units. Drawn per image through its frame."""

    start: np.ndarray
    end: np.ndarray
    width: np.ndarray


def grow_vessels(seed: int, roots: list[tuple[float, float]], directions: list[list[float]],
                 trunk_length: float, trunk_width: float, depth: int = 5) -> VesselTree:
    """A branching tree from each root: one trunk per direction (radians, 0 = +x, y down);
    every segment splits in two, shorter and thinner, with some random spread.

    Built level by level on arrays: all segments of one generation at once.
    """
    rng = np.random.default_rng(seed)
    starts, ends, widths = [], [], []
    for root, dirs in zip(roots, directions):
        n = len(dirs)
        pos = np.tile(np.asarray(root, dtype=np.float64), (n, 1))
        ang = np.asarray(dirs, dtype=np.float64) + rng.normal(0.0, 0.12, n)
        length = trunk_length * rng.uniform(0.8, 1.2, n)
        width = np.full(n, trunk_width) * rng.uniform(0.85, 1.15, n)
        for _ in range(depth):
            # a slight curve: each segment drawn as two halves with a bend between
            bend = rng.normal(0.0, 0.15, ang.shape)
            mid = pos + 0.5 * length[:, None] * np.stack([np.cos(ang), np.sin(ang)], 1)
            end = mid + 0.5 * length[:, None] * np.stack([np.cos(ang + bend), np.sin(ang + bend)], 1)
            starts += [pos, mid]
            ends += [mid, end]
            widths += [width, width * 0.92]
            spread = rng.uniform(0.28, 0.55, ang.shape)
            skew = rng.normal(0.0, 0.1, ang.shape)
            ang = np.concatenate([ang + bend + spread + skew, ang + bend - spread + skew])
            pos = np.concatenate([end, end])
            length = np.concatenate([length, length]) * rng.uniform(0.62, 0.8, ang.shape)
            width = np.concatenate([width, width]) * rng.uniform(0.6, 0.72, ang.shape)
    return VesselTree(np.concatenate(starts), np.concatenate(ends), np.concatenate(widths))


def frontal_vessels(anatomy: Anatomy, hila: dict[int, tuple[float, float]]) -> VesselTree:
    """Vessel trees fanning from both hila on a frontal view (side -1 = patient right)."""
    roots, dirs = [], []
    for side in (-1, 1):
        hx, hy = hila[side]
        roots.append((hx, hy))
        # trunks to the upper, middle and lower lung, pointing laterally
        base = [-1.35, -0.85, -0.3, 0.25, 0.75, 1.2]
        dirs.append([a if side > 0 else math.pi - a for a in base])
    return grow_vessels(anatomy.vessel_seed, roots, dirs, trunk_length=0.075, trunk_width=0.011)


def lateral_vessels(anatomy: Anatomy, hilum: tuple[float, float]) -> VesselTree:
    """Vessels fanning from the hilum in every direction on a lateral view."""
    dirs = [[-2.3, -1.6, -0.9, -0.2, 0.5, 1.2, 1.9, 2.6]]
    return grow_vessels(anatomy.vessel_seed + 1, [hilum], dirs, trunk_length=0.07, trunk_width=0.012)
