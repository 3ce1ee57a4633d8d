"""Rendering one image of a study: anatomy, findings, devices, then exposure and noise.

:func:`render_image` is a pure function of the study plan: the same study and image give
the same pixels in any process. ``without`` leaves findings out (everything else, noise
included, stays identical), which is how the tests check that each box covers what was
drawn for its finding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Collection

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from limitr.synthetic.canvas import ViewFrame, blur_image, draw_strokes, mask_bbox
from limitr.synthetic.devices import frontal_device, lateral_device
from limitr.synthetic.frontal import FrontalChest, render_frontal_anatomy
from limitr.synthetic.lateral import LateralChest, render_lateral_anatomy
from limitr.synthetic.lesions import frontal_patches, lateral_patches
from limitr.synthetic.structure import ImagePlan, Study

#: Images whose long side exceeds this are rendered at this size and resized up.
RENDER_LONG_SIDE = 768
#: How much cardiomegaly enlarges the heart (cardiothoracic ratio ~0.53 / 0.59 / 0.68).
HEART_SCALE = {"mild": 1.22, "moderate": 1.36, "severe": 1.55}
#: How far basal atelectasis raises its hemidiaphragm (chest units).
DOME_LIFT = {"mild": 0.012, "moderate": 0.024}

#: A density change this large shows (about 3 grey levels); boxes cover all of it.
VISIBLE_DELTA = 0.02

Box = list[int]  # [x, y, w, h] in original pixels


@dataclass
class RenderedImage:
    """``pixels``: (height, width) uint8 at the image's original size. ``boxes``: finding
    index -> boxes [x, y, w, h] (original pixels) where that finding shows on this image."""

    pixels: np.ndarray
    boxes: dict[int, list[Box]]


def render_frame(study: Study, image: ImagePlan) -> ViewFrame:
    """The render grid of one image and where the body lies on it."""
    f = min(1.0, RENDER_LONG_SIDE / max(image.width, image.height))
    rh, rw = max(int(round(image.height * f)), 8), max(int(round(image.width * f)), 8)
    scale = rh * 1.16 * study.anatomy.body_scale * image.zoom
    return ViewFrame(height=rh, width=rw, scale=scale, mid_col=0.5 * rw + image.shift * scale,
                     apex_row=image.apex_frac * rh, angle=image.angle)


def _to_original(bbox: tuple[int, int, int, int], frame: ViewFrame, image: ImagePlan) -> Box | None:
    fx, fy = image.width / frame.width, image.height / frame.height
    x0, y0 = max(int(math.floor(bbox[0] * fx)), 0), max(int(math.floor(bbox[1] * fy)), 0)
    x1, y1 = min(int(math.ceil(bbox[2] * fx)), image.width), min(int(math.ceil(bbox[3] * fy)), image.height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return [x0, y0, x1 - x0, y1 - y0]


def render_image(study: Study, image_index: int, without: Collection[int] = ()) -> RenderedImage:
    """Render image ``image_index`` of ``study``, leaving out the findings in ``without``."""
    image = study.images[image_index]
    frame = render_frame(study, image)
    present = [(i, f) for i, f in enumerate(study.findings) if i not in set(without)]
    heart_scale = 1.0
    lift: dict[int, float] = {}
    for _, f in present:
        if f.type == "cardiomegaly":
            heart_scale = HEART_SCALE[f.grade or "mild"]
        if f.type == "atelectasis" and f.zone == "basal":
            for side in f.sides:
                lift[side] = max(lift.get(side, 0.0), DOME_LIFT.get(f.grade or "mild", 0.012))

    a = study.anatomy
    frontal_chest = FrontalChest(a, image.view if image.frontal else "PA", heart_scale, lift)
    if image.frontal:
        layers = render_frontal_anatomy(frontal_chest, frame)
    else:
        lateral_chest = LateralChest(a, heart_scale)  # volume loss is too subtle to draw there
        layers = render_lateral_anatomy(lateral_chest, frame)
    density = layers.density
    boxes: dict[int, list[Box]] = {}
    for i, f in present:
        if f.type == "support_device":
            strokes, polygons = frontal_device(f, frontal_chest) if image.frontal else lateral_device(f, lateral_chest)
            drawn = draw_strokes(frame, strokes, polygons, blur_px=0.5 * max(frame.scale / 400.0, 1.0))
            density += 0.9 * drawn
            patches = [((slice(0, frame.height), slice(0, frame.width)), drawn > 0.02)]
        else:
            if image.frontal:
                found = frontal_patches(f, frontal_chest, layers, frame)
            else:
                found = lateral_patches(f, lateral_chest, replace(frontal_chest, dome_lift={}), layers, frame)
            patches = []
            for patch in found:
                mask = patch.mask
                if patch.delta is not None:
                    density[patch.window] += patch.delta
                    mask = mask | (np.abs(patch.delta) > VISIBLE_DELTA)
                patches.append((patch.window, mask))
        for window, mask in patches:
            bbox = mask_bbox(mask, window)
            box = _to_original(bbox, frame, image) if bbox else None
            if box is not None:
                boxes.setdefault(i, []).append(box)
    density += marker(image, frame)
    return RenderedImage(pixels=expose(density, image, frame), boxes=boxes)


def marker(image: ImagePlan, frame: ViewFrame) -> np.ndarray:
    """The lead side marker most films carry: an "L" near the top corner on the patient's
    left (image right on a frontal view, where a left lateral is marked too); dense."""
    canvas = Image.new("L", (frame.width, frame.height), 0)
    if image.seed % 10 >= 7:  # some films carry none
        return np.zeros((frame.height, frame.width), dtype=np.float32)
    size = max(int(round(0.045 * frame.height)), 8)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # an older Pillow: a fixed bitmap font
        font = ImageFont.load_default()
    x = int(frame.width * (0.86 if image.frontal else 0.08))
    y = int(frame.height * 0.03)
    ImageDraw.Draw(canvas).text((x, y), "L", fill=255, font=font)
    return np.asarray(canvas, dtype=np.float32) * (1.2 / 255.0)


def expose(density: np.ndarray, image: ImagePlan, frame: ViewFrame) -> np.ndarray:
    """Density -> a grey radiograph at the original size: exposure curve, contrast,
    detector blur, quantum noise, then uint8 (bright = dense)."""
    rng = np.random.default_rng(image.seed)
    signal = 1.0 - np.exp(-0.85 * image.exposure * np.maximum(density, 0.0))
    grey = (signal - 0.05) / 0.72
    grey = 0.5 + (grey - 0.5) * image.contrast
    grey = blur_image(grey, image.blur * frame.height / 380.0)
    grey = grey + rng.standard_normal(grey.shape, dtype=np.float32) * image.noise
    if (frame.height, frame.width) != (image.height, image.width):
        grey = np.asarray(Image.fromarray(grey.astype(np.float32), mode="F").resize(
            (image.width, image.height), Image.BICUBIC), dtype=np.float32)
        grey = grey + rng.standard_normal(grey.shape, dtype=np.float32) * (0.5 * image.noise)
    return (np.clip(grey, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render_with_and_without(study: Study, image_index: int, finding_index: int) -> tuple[RenderedImage, RenderedImage]:
    """Image ``image_index`` of ``study`` rendered as planned and without finding
    ``finding_index`` (same patient, view, exposure and noise)."""
    return render_image(study, image_index), render_image(study, image_index, without=(finding_index,))
