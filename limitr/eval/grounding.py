"""Phrase grounding: region-grid maps back to original pixels, and CNR, IoU and pointing game.

Geometry (:class:`limitr.data.images.Geometry`, see limitr/data/schema.py): an original image of ``orig_height x orig_width``
pixels is resized by ``scale`` and zero-padded to an ``image_size`` square with ``pad_left``
and ``pad_top`` pixels before it; the model then sees the centre ``crop_size`` square of that
(possibly resized again, uniformly, to the encoder's input size, which changes nothing here)
and produces an ``h x w`` grid of regions over the crop.

An original pixel (x, y), whose centre is at (x + 0.5, y + 0.5), sits at

    u = (x + 0.5) * scale + pad_left - crop_left      (crop pixels, from the crop's left edge)

and at ``u * w / crop_size`` in grid cells. The map is sampled there (bilinear by default, one
interpolation from the grid straight to original pixels); pixels the crop did not see are NaN.
Every metric ignores NaN pixels, so the image's padding and the cropped-off border never count.

Boxes are ``[x, y, w, h]`` in original pixels; a pixel belongs to a box when its centre lies in
``[x, x + w) x [y, y + h)``, so an integer box covers exactly ``mask[y:y+h, x:x+w]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from limitr.data.images import Geometry
from limitr.eval.results import GroundingFigures, Significance, ThresholdChoice


#: Thresholds on the min-max normalised map at which IoU is measured.
IOU_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

#: The headline mIoU's threshold when no validation phrase exists to choose it on: the middle
#: of the normalised map's range, fixed before any result is seen.
FIXED_THRESHOLD: float = 0.5


def original_to_grid(coords: torch.Tensor, scale: float, pad: int, crop_offset: int, crop_size: int) -> torch.Tensor:
    """Original pixel-centre coordinates along one axis -> normalised crop coordinates in
    [-1, 1] (grid_sample's ``align_corners=False`` convention; outside the crop beyond it)."""
    crop_coord = coords * scale + pad - crop_offset
    return 2.0 * crop_coord / crop_size - 1.0


def map_to_original(
    grid_map: torch.Tensor,
    geometry: Geometry,
    mode: Literal["bilinear", "nearest"] = "bilinear",
) -> np.ndarray:
    """A region-grid map (h, w) over the crop -> (orig_height, orig_width) float32 in original
    pixels, NaN where the crop did not see the image. Bilinear sampling clamps to the outer
    cells' values between the outermost cell centres and the crop edge. ``geometry`` must
    carry its crop (:meth:`limitr.data.images.Geometry.with_crop`)."""
    g = geometry
    grid_map = grid_map.detach().to(torch.float32).cpu()
    if grid_map.ndim != 2:
        raise ValueError(f"grid_map must be (h, w), got {tuple(grid_map.shape)}")
    xs = torch.arange(g.orig_width, dtype=torch.float64) + 0.5
    ys = torch.arange(g.orig_height, dtype=torch.float64) + 0.5
    nx = original_to_grid(xs, g.scale, g.pad_left, g.crop_offset, g.crop_size)
    ny = original_to_grid(ys, g.scale, g.pad_top, g.crop_offset, g.crop_size)
    sample = torch.stack(torch.broadcast_tensors(nx[None, :], ny[:, None]), dim=-1)  # (H, W, 2) as (x, y)
    out = F.grid_sample(
        grid_map[None, None],
        sample[None].to(torch.float32),
        mode=mode,
        padding_mode="border",
        align_corners=False,
    )[0, 0]
    inside_x = (nx >= -1.0) & (nx < 1.0)
    inside_y = (ny >= -1.0) & (ny < 1.0)
    valid = inside_y[:, None] & inside_x[None, :]
    return torch.where(valid, out, torch.tensor(float("nan"))).numpy()


def box_mask(boxes: Iterable[Sequence[float]], height: int, width: int) -> np.ndarray:
    """(height, width) bool: pixels whose centre lies in any ``[x, y, w, h]`` box."""
    mask = np.zeros((height, width), dtype=bool)
    xc = np.arange(width) + 0.5
    yc = np.arange(height) + 0.5
    for x, y, w, h in boxes:
        cols = (xc >= x) & (xc < x + w)
        rows = (yc >= y) & (yc < y + h)
        mask |= rows[:, None] & cols[None, :]
    return mask


def normalise(values: np.ndarray) -> np.ndarray:
    """Min-max scaling of the valid (non-NaN) values to [0, 1]; a constant map becomes 0."""
    lo, hi = np.nanmin(values), np.nanmax(values)
    if not np.isfinite(hi - lo) or hi == lo:
        return np.where(np.isnan(values), np.nan, 0.0)
    return (values - lo) / (hi - lo)


def cnr(sim_map: np.ndarray, inside: np.ndarray) -> float:
    """Contrast-to-noise ratio (mean_in - mean_out) / sqrt(var_in + var_out) over valid
    pixels (population variances). Signed: a map brighter outside the box is negative.
    NaN when either side has no valid pixel or both variances are zero."""
    valid = ~np.isnan(sim_map)
    a, b = sim_map[valid & inside], sim_map[valid & ~inside]
    if a.size == 0 or b.size == 0:
        return float("nan")
    denom = np.sqrt(a.var() + b.var())
    if denom == 0:
        return float("nan")
    return float((a.mean() - b.mean()) / denom)


def iou_at_thresholds(
    sim_map: np.ndarray, inside: np.ndarray, thresholds: Sequence[float] = IOU_THRESHOLDS
) -> np.ndarray:
    """IoU between {normalised map >= t} and the boxes, for each threshold t: (T,).
    Only valid pixels count; NaN where the boxes have no valid pixel."""
    valid = ~np.isnan(sim_map)
    target = inside & valid
    if not target.any():
        return np.full(len(thresholds), np.nan)
    norm = np.nan_to_num(normalise(sim_map), nan=-1.0)
    t = np.asarray(thresholds, dtype=np.float64)[:, None]
    pred = norm.reshape(1, -1) >= t  # (T, P)
    tgt = target.reshape(1, -1)
    inter = (pred & tgt).sum(1)
    union = (pred | tgt).sum(1)
    return inter / union


def pointing_game(sim_map: np.ndarray, inside: np.ndarray) -> float:
    """1.0 when the map's maximum lies in a box, else 0.0. Pessimistic on ties: every pixel
    that attains the maximum must be inside. NaN when no pixel is valid."""
    valid = ~np.isnan(sim_map)
    if not valid.any():
        return float("nan")
    peak = np.nanmax(sim_map)
    at_peak = valid & (sim_map == peak)
    return float(np.all(inside[at_peak]))


@dataclass
class PhraseScores:
    """The grounding figures of one phrase's map."""

    cnr: float
    iou: np.ndarray  # (T,) IoU at each threshold
    pointing: float
    box_share: float = float("nan")  # share of the valid pixels inside a box: the pointing game's chance


def score_phrase(
    sim_map: np.ndarray, boxes: Iterable[Sequence[float]], thresholds: Sequence[float] = IOU_THRESHOLDS
) -> PhraseScores:
    """CNR, IoU per threshold and the pointing game of one map (original pixels) and its boxes."""
    inside = box_mask(boxes, *sim_map.shape)
    valid = ~np.isnan(sim_map)
    share = float(inside[valid].mean()) if valid.any() else float("nan")
    return PhraseScores(cnr(sim_map, inside), iou_at_thresholds(sim_map, inside, thresholds),
                        pointing_game(sim_map, inside), share)


def _nanmean(values: Sequence[float]) -> Optional[float]:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else None


def choose_threshold(
    scores: Sequence[PhraseScores],
    thresholds: Sequence[float] = IOU_THRESHOLDS,
    fixed: float = FIXED_THRESHOLD,
) -> ThresholdChoice:
    """The IoU threshold of the headline mIoU, chosen on ``scores``: the validation split's
    phrases (never the phrases it will be averaged over). The threshold whose mean IoU over
    them is highest (the lowest on ties); ``fixed`` when none has a defined IoU."""
    ious = np.stack([s.iou for s in scores]) if scores else np.zeros((0, len(thresholds)))
    defined = np.isfinite(ious).any(axis=0) if len(ious) else np.zeros(len(thresholds), dtype=bool)
    if not defined.any():
        return ThresholdChoice(value=float(fixed), chosen_on="fixed", n_phrases=0)
    with np.errstate(invalid="ignore"):
        column_means = np.array([_nanmean(ious[:, i]) if defined[i] else -np.inf for i in range(len(thresholds))],
                                dtype=np.float64)
    n = int(np.isfinite(ious).any(axis=1).sum())
    return ThresholdChoice(value=float(thresholds[int(np.argmax(column_means))]), chosen_on="validation", n_phrases=n)


def aggregate(
    scores: Sequence[PhraseScores],
    categories: Sequence[str],
    category_order: Sequence[str],
    thresholds: Sequence[float] = IOU_THRESHOLDS,
    threshold: Optional[ThresholdChoice] = None,
    held_out: Optional[Sequence[bool]] = None,
) -> GroundingFigures:
    """Per-category and mean figures over phrases (see :class:`GroundingFigures`).

    Each figure is ``{"mean", <category>...}``, ``mean`` the unweighted mean of the
    categories present. ``miou``: IoU at ``threshold`` (default: the fixed one), averaged over
    the phrases not ``held_out`` (those the threshold was chosen on); ``miou_over_thresholds``:
    a phrase's IoU averaged over the thresholds, over every phrase.
    ``pointing_game_chance``: the pointing game of a map whose peak falls on a uniformly random
    valid pixel (the boxes' share of the image). ``n_undefined``: phrases whose CNR or IoU was
    undefined, left out of the means.
    """
    threshold = threshold or ThresholdChoice(value=FIXED_THRESHOLD, chosen_on="fixed", n_phrases=0)
    at = [i for i, t in enumerate(thresholds) if math.isclose(float(t), threshold.value)]
    if not at:
        raise ValueError(f"threshold {threshold.value} is not one of {list(thresholds)}")
    cats = np.asarray(list(categories))
    kept = np.ones(len(scores), dtype=bool) if held_out is None else ~np.asarray(held_out, dtype=bool)
    present = [c for c in category_order if (cats == c).any()]
    names = ("cnr", "miou", "miou_over_thresholds", "pointing_game", "pointing_game_chance")
    out: dict = {name: {} for name in names}
    counts: dict[str, int] = {}
    for c in present:
        sel = np.flatnonzero(cats == c)
        counts[c] = int(sel.size)
        out["cnr"][c] = _nanmean([scores[i].cnr for i in sel])
        out["miou"][c] = _nanmean([scores[i].iou[at[0]] for i in sel if kept[i]])
        out["miou_over_thresholds"][c] = _nanmean(
            [np.nanmean(scores[i].iou) if np.isfinite(scores[i].iou).any() else np.nan for i in sel])
        out["pointing_game"][c] = _nanmean([scores[i].pointing for i in sel])
        out["pointing_game_chance"][c] = _nanmean([scores[i].box_share for i in sel])
    for name in names:
        out[name] = {"mean": _nanmean([v for v in out[name].values() if v is not None]), **out[name]}
    return GroundingFigures(
        **out,
        miou_threshold=threshold,
        thresholds=[float(t) for t in thresholds],
        n_phrases={"total": int(len(scores)), **counts},
        n_undefined=int(sum(1 for s in scores if not np.isfinite(s.cnr) or not np.isfinite(s.iou).all())),
    )


def at_least_tail(probs: Sequence[float], hits: int) -> float:
    """P(X >= hits) for X the number of successes of independent trials with these
    probabilities (a Poisson-binomial law), exactly, by convolution."""
    dist = np.ones(1)
    for p in probs:
        dist = np.concatenate([dist * (1.0 - p), [0.0]]) + np.concatenate([[0.0], dist * p])
    return float(min(1.0, dist[max(int(hits), 0):].sum()))


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes: ``only_a`` pairs where only
    the first succeeds, ``only_b`` where only the second does (a sign test on the discordant
    pairs); 1 when there are none."""
    n, low = int(only_a) + int(only_b), min(int(only_a), int(only_b))
    if n == 0:
        return 1.0
    return float(min(1.0, 2 * sum(math.comb(n, i) for i in range(low + 1)) / 2**n))


def significance(scores: Sequence[PhraseScores], prior_scores: Sequence[PhraseScores]) -> Significance:
    """How sure the pointing game is, pooled over phrases (every phrase counts once, unlike
    the category means), against chance and against the prior, on the same phrases.

    ``hits`` of ``phrases`` (those with a defined pointing game); ``chance_hits``: the hits
    expected from a peak on a uniformly random valid pixel (the sum of the boxes' shares) and
    ``p_vs_chance`` the one-sided exact p-value of at least ``hits`` under it; ``map_only`` /
    ``prior_only``: phrases where only the map / only its prior points into a box, and
    ``p_vs_prior`` their two-sided exact McNemar p-value; ``cnr_minus_prior``: the map's CNR
    minus the prior's, averaged over phrases where both are defined, and
    ``cnr_above_prior_share`` the share of those where the map's is higher.
    """
    pairs = [(s, q) for s, q in zip(scores, prior_scores) if np.isfinite(s.pointing) and np.isfinite(q.pointing)]
    hits = [s.pointing == 1.0 for s, _ in pairs]
    prior_hits = [q.pointing == 1.0 for _, q in pairs]
    shares = [s.box_share for s, _ in pairs if np.isfinite(s.box_share)]
    only_map = sum(a and not b for a, b in zip(hits, prior_hits))
    only_prior = sum(b and not a for a, b in zip(hits, prior_hits))
    cnr_diff = np.array([s.cnr - q.cnr for s, q in zip(scores, prior_scores) if np.isfinite(s.cnr) and np.isfinite(q.cnr)])
    return Significance(
        phrases=len(pairs),
        hits=int(sum(hits)),
        chance_hits=float(sum(shares)),
        p_vs_chance=at_least_tail(shares, sum(hits)),
        prior_hits=int(sum(prior_hits)),
        map_only=int(only_map),
        prior_only=int(only_prior),
        p_vs_prior=mcnemar_exact(only_map, only_prior),
        cnr_minus_prior=float(cnr_diff.mean()) if cnr_diff.size else None,
        cnr_above_prior_share=float((cnr_diff > 0).mean()) if cnr_diff.size else None,
    )


def word_attention_map(attention: torch.Tensor, word_mask: torch.Tensor, n_regions: int) -> torch.Tensor:
    """Word-to-region attention aggregated over a phrase's words.

    attention: (B, N, M) from the model's grounding maps; word_mask: (B, N) True for the words
    to average (the phrase's words, not [CLS] or padding); n_regions: R, the frontal regions
    that come first among the M. Returns (B, R): the mean over words.
    """
    weights = word_mask.to(attention.dtype)
    summed = torch.einsum("bnm,bn->bm", attention[:, :, :n_regions], weights)
    return summed / weights.sum(1, keepdim=True).clamp_min(1.0)


def cosine_map(regions: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
    """Patch-to-phrase cosine similarity.

    regions: (B, R, D) frontal region features; words: (B, N, D) local text features;
    word_mask: (B, N) the phrase's words. The phrase vector is the mean of its word features,
    in the same local space the regions are aligned to. Returns (B, R) in [-1, 1].
    """
    weights = word_mask.to(words.dtype)
    phrase = torch.einsum("bnd,bn->bd", words, weights) / weights.sum(1, keepdim=True).clamp_min(1.0)
    return F.cosine_similarity(regions, phrase[:, None, :], dim=-1, eps=1e-8)


def category_examples(categories: Sequence[str], keys: Sequence[int]) -> Mapping[str, int]:
    """The fixed example of each category for figures: the row with the smallest key."""
    chosen: dict[str, tuple[int, int]] = {}
    for row, (cat, key) in enumerate(zip(categories, keys)):
        if cat not in chosen or key < chosen[cat][0]:
            chosen[cat] = (int(key), row)
    return {cat: row for cat, (_, row) in chosen.items()}
