"""Grounding geometry and metrics against hand-computed examples and plain loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from limitr.data.images import Geometry, center_crop_offset
from limitr.eval import grounding as G
from limitr.eval.results import ThresholdChoice, to_json


def brute_nearest_map(grid: np.ndarray, geo: Geometry) -> np.ndarray:
    """Each original pixel, walked forward through resize, padding and crop, reads its cell."""
    h, w = grid.shape
    off = center_crop_offset(geo.image_size, geo.crop_size)
    out = np.full((geo.orig_height, geo.orig_width), np.nan)
    for y in range(geo.orig_height):
        for x in range(geo.orig_width):
            u = (x + 0.5) * geo.scale + geo.pad_left - off
            v = (y + 0.5) * geo.scale + geo.pad_top - off
            if 0 <= u < geo.crop_size and 0 <= v < geo.crop_size:
                out[y, x] = grid[math.floor(v * h / geo.crop_size), math.floor(u * w / geo.crop_size)]
    return out


GEOMETRIES = {
    # tall image: padded left and right, the left pad given
    "pad_left_and_right": (Geometry(40, 20, 0.25, 2, 0, 10, 10), (10, 10)),
    # tall image padded on the right only
    "pad_right_only": (Geometry(40, 20, 0.25, 0, 0, 10, 10), (10, 10)),
    # wide image: padded above and below
    "pad_top_and_bottom": (Geometry(20, 40, 0.25, 0, 3, 10, 10), (10, 10)),
    # wide image padded below only, coarse grid
    "pad_bottom_only": (Geometry(20, 40, 0.25, 0, 0, 10, 10), (5, 5)),
    # a centre crop cuts the image: pixels outside it are NaN
    "cropped": (Geometry(48, 24, 0.25, 3, 0, 12, 8), (4, 4)),
    "cropped_wide": (Geometry(24, 48, 0.25, 0, 3, 12, 8), (2, 4)),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_map_back_nearest_matches_walking_forward(name: str) -> None:
    geo, (h, w) = GEOMETRIES[name]
    grid = np.arange(h * w, dtype=np.float32).reshape(h, w)
    got = G.map_to_original(torch.from_numpy(grid), geo, mode="nearest")
    want = brute_nearest_map(grid, geo)
    assert got.shape == (geo.orig_height, geo.orig_width)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[~np.isnan(got)], want[~np.isnan(want)])


def test_map_back_padding_side_decides_the_columns() -> None:
    # One bright resized column; it lands on different original columns for pad 2 and pad 0.
    grid = np.zeros((10, 10), dtype=np.float32)
    grid[:, 4] = 1.0  # resized column 4
    for pad_left, original_cols in ((2, range(8, 12)), (0, range(16, 20))):
        geo = Geometry(40, 20, 0.25, pad_left, 0, 10, 10)
        got = G.map_to_original(torch.from_numpy(grid), geo, mode="nearest")
        bright = np.flatnonzero(got[0] == 1.0)
        assert bright.tolist() == list(original_cols)


def test_map_back_bilinear_reproduces_a_linear_ramp() -> None:
    geo = Geometry(orig_height=37, orig_width=53, scale=0.4, pad_left=0, pad_top=7, image_size=22, crop_size=18)
    h, w = 6, 9
    ramp = torch.arange(w, dtype=torch.float32).repeat(h, 1)  # value = column index of the cell
    got = G.map_to_original(ramp, geo)
    off = center_crop_offset(geo.image_size, geo.crop_size)
    for x in range(geo.orig_width):
        u = (x + 0.5) * geo.scale + geo.pad_left - off
        col = got[:, x]
        if 0 <= u < geo.crop_size:
            rows = ~np.isnan(col)
            want = np.clip(u * w / geo.crop_size - 0.5, 0, w - 1)
            np.testing.assert_allclose(col[rows], want, atol=1e-5)
        else:
            assert np.isnan(col).all()


def test_box_mask_is_the_slice_for_integer_boxes() -> None:
    mask = G.box_mask([[2, 1, 3, 2], [6, 5, 1, 1]], 8, 9)
    want = np.zeros((8, 9), dtype=bool)
    want[1:3, 2:5] = True
    want[5:6, 6:7] = True
    np.testing.assert_array_equal(mask, want)


def test_indicator_map_scores_iou_one_and_pointing_one() -> None:
    sim = np.zeros((10, 12))
    sim[2:5, 3:8] = 1.0
    out = G.score_phrase(sim, [[3, 2, 5, 3]])
    np.testing.assert_allclose(out.iou, 1.0)
    assert out.pointing == 1.0
    assert out.box_share == pytest.approx(15 / 120)  # a random point's chance of landing in the box
    assert math.isnan(out.cnr)  # no variance on either side: undefined, not infinite


def test_cnr_hand_computed() -> None:
    sim = np.array([[1.0, 3.0, 0.0, 0.0], [np.nan, 0.0, 2.0, 0.0]])
    inside = np.array([[True, True, False, False], [True, False, False, False]])
    # inside valid: 1, 3 -> mean 2, var 1; outside: 0, 0, 0, 2, 0 -> mean 0.4, var 0.64
    assert G.cnr(sim, inside) == pytest.approx((2 - 0.4) / math.sqrt(1 + 0.64))
    assert G.cnr(-sim, inside) == pytest.approx(-(2 - 0.4) / math.sqrt(1 + 0.64))


def test_iou_hand_computed() -> None:
    sim = np.array([[0.0, 0.25, 0.5, 1.0]])  # already min-max normalised
    inside = np.array([[False, False, True, True]])
    got = G.iou_at_thresholds(sim, inside, thresholds=(0.2, 0.5, 0.9))
    # >= 0.2: 3 predicted, 2 true, inter 2 -> 2/3; >= 0.5: exact -> 1; >= 0.9: 1 pixel -> 1/2
    np.testing.assert_allclose(got, [2 / 3, 1.0, 0.5])


def test_iou_ignores_invalid_pixels_and_normalises() -> None:
    sim = np.array([[10.0, 20.0, np.nan, 30.0]])
    inside = np.array([[False, False, True, True]])
    # normalised: 0, 0.5, nan, 1; box's valid pixel is the last one
    np.testing.assert_allclose(G.iou_at_thresholds(sim, inside, (0.4, 0.9)), [0.5, 1.0])


def test_box_share_ignores_invalid_pixels() -> None:
    sim = np.array([[np.nan, 1.0, 0.0, 0.0]])
    out = G.score_phrase(sim, [[0, 0, 2, 1]])  # box over the first two pixels, one of them invalid
    assert out.box_share == pytest.approx(1 / 3)
    scores = [G.PhraseScores(0.0, np.array([0.0]), 0.0, 0.2), G.PhraseScores(0.0, np.array([0.0]), 1.0, 0.4)]
    agg = G.aggregate(scores, ["A", "B"], ["A", "B"], thresholds=(0.5,))
    assert agg.pointing_game_chance == {"mean": pytest.approx(0.3), "A": 0.2, "B": 0.4}


def test_pointing_game_ties_are_pessimistic_and_nan_ignored() -> None:
    inside = np.array([[True, False, False]])
    assert G.pointing_game(np.array([[2.0, 1.0, np.nan]]), inside) == 1.0
    assert G.pointing_game(np.array([[2.0, 2.0, 0.0]]), inside) == 0.0
    assert G.pointing_game(np.array([[1.0, 2.0, 0.0]]), inside) == 0.0
    assert math.isnan(G.pointing_game(np.full((1, 3), np.nan), inside))


def test_aggregate_per_category_and_mean() -> None:
    t = (0.5,)
    scores = [
        G.PhraseScores(1.0, np.array([0.5]), 1.0),
        G.PhraseScores(3.0, np.array([1.0]), 0.0),
        G.PhraseScores(-1.0, np.array([0.0]), 0.0),
        G.PhraseScores(float("nan"), np.array([0.2]), 1.0),
    ]
    out = to_json(G.aggregate(scores, ["A", "A", "B", "B"], ["B", "A", "C"], thresholds=t))
    assert out["cnr"] == {"mean": pytest.approx(0.5), "B": -1.0, "A": 2.0}
    assert out["miou"]["A"] == pytest.approx(0.75) and out["miou"]["B"] == pytest.approx(0.1)
    assert out["miou_over_thresholds"] == out["miou"]  # one threshold: the same figure
    assert out["pointing_game"] == {"mean": 0.5, "B": 0.5, "A": 0.5}
    assert out["pointing_game_chance"]["mean"] is None  # shares not given: NaN, left out
    assert out["n_phrases"] == {"total": 4, "B": 2, "A": 2}
    assert out["n_undefined"] == 1
    assert out["miou_threshold"] == {"value": 0.5, "chosen_on": "fixed", "n_phrases": 0}


def test_miou_is_at_the_given_threshold_and_mean_over_thresholds_apart() -> None:
    scores = [G.PhraseScores(0.0, np.array([0.1, 0.6, 0.3]), 1.0), G.PhraseScores(0.0, np.array([0.2, 0.4, 0.9]), 1.0)]
    choice = ThresholdChoice(value=0.9, chosen_on="validation", n_phrases=3)
    out = G.aggregate(scores, ["A", "B"], ["A", "B"], thresholds=(0.1, 0.5, 0.9), threshold=choice)
    assert out.miou == {"mean": pytest.approx(0.6), "A": 0.3, "B": 0.9}
    assert out.miou_over_thresholds == {"mean": pytest.approx(2.5 / 6), "A": pytest.approx(1.0 / 3), "B": pytest.approx(0.5)}
    assert out.miou_threshold is choice
    with pytest.raises(ValueError):
        G.aggregate(scores, ["A", "B"], ["A", "B"], thresholds=(0.1, 0.5), threshold=choice)


def test_choose_threshold_maximises_the_validation_phrases_mean_iou() -> None:
    validation = [G.PhraseScores(0.0, np.array([0.1, 0.6, 0.3]), 1.0),
                  G.PhraseScores(0.0, np.array([0.2, 0.4, 0.9]), 1.0)]
    choice = G.choose_threshold(validation, (0.1, 0.5, 0.9))  # column means 0.15, 0.5, 0.6
    assert (choice.value, choice.chosen_on, choice.n_phrases) == (0.9, "validation", 2)
    tied = [G.PhraseScores(0.0, np.array([0.4, 0.4, 0.1]), 1.0)]
    assert G.choose_threshold(tied, (0.1, 0.5, 0.9)).value == 0.1  # the lowest of equal means
    undefined = [G.PhraseScores(0.0, np.full(3, np.nan), 1.0)]
    for phrases in ([], undefined):
        fixed = G.choose_threshold(phrases, (0.1, 0.5, 0.9))
        assert (fixed.value, fixed.chosen_on, fixed.n_phrases) == (G.FIXED_THRESHOLD, "fixed", 0)


def test_held_out_phrases_leave_only_the_miou() -> None:
    """The phrases a threshold is chosen on are left out of its mIoU, and of nothing else."""
    scores = [G.PhraseScores(1.0, np.array([0.9, 0.1]), 1.0), G.PhraseScores(2.0, np.array([0.1, 0.3]), 0.0),
              G.PhraseScores(3.0, np.array([0.5, 0.7]), 1.0)]
    choice = G.choose_threshold(scores[:1], (0.2, 0.8))
    assert choice.value == 0.2
    out = G.aggregate(scores, ["A", "A", "B"], ["A", "B"], (0.2, 0.8), choice, held_out=[True, False, False])
    everything = G.aggregate(scores, ["A", "A", "B"], ["A", "B"], (0.2, 0.8), choice)
    assert out.miou == {"mean": pytest.approx(0.3), "A": pytest.approx(0.1), "B": pytest.approx(0.5)}
    assert everything.miou["A"] == pytest.approx(0.5)
    for name in ("cnr", "miou_over_thresholds", "pointing_game", "n_phrases"):
        assert getattr(out, name) == getattr(everything, name)


def test_word_attention_and_cosine_maps_match_loops() -> None:
    torch.manual_seed(0)
    B, N, R, D = 3, 5, 4, 6
    attention = torch.rand(B, N, 2 * R)
    words = torch.randn(B, N, D)
    regions = torch.randn(B, R, D)
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 1, 1, 1, 1], [0, 1, 0, 0, 0]], dtype=torch.bool)
    att = G.word_attention_map(attention, mask, R)
    cos = G.cosine_map(regions, words, mask)
    for b in range(B):
        idx = [n for n in range(N) if mask[b, n]]
        want_att = sum(attention[b, n, :R] for n in idx) / len(idx)
        torch.testing.assert_close(att[b], want_att)
        phrase = sum(words[b, n] for n in idx) / len(idx)
        for r in range(R):
            want = float(regions[b, r] @ phrase / (regions[b, r].norm() * phrase.norm()))
            assert float(cos[b, r]) == pytest.approx(want, abs=1e-5)


def test_category_examples_pick_the_smallest_key() -> None:
    assert G.category_examples(["A", "B", "A", "B"], [7, 3, 2, 9]) == {"A": 2, "B": 1}


@pytest.mark.parametrize("size,crop", [(10, 8), (11, 8), (12, 7), (8, 8)])
def test_crop_offset_is_the_datasets_centre_crop(size: int, crop: int) -> None:
    from limitr.data.prepare import crop_offsets

    image = np.arange(size * size).reshape(size, size)
    top, left = crop_offsets(size, size, crop, None)
    off = center_crop_offset(size, crop)
    np.testing.assert_array_equal(image[off : off + crop, off : off + crop], image[top : top + crop, left : left + crop])


def test_at_least_tail_matches_the_binomial_and_brute_force() -> None:
    n, p = 10, 0.2
    below = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(3))
    assert G.at_least_tail([p] * n, 3) == pytest.approx(1 - below, rel=1e-12)
    probs = [0.05, 0.1, 0.3, 0.5, 0.7, 0.15, 0.9, 0.02]
    for k in range(len(probs) + 2):
        brute = 0.0
        for outcome in range(2 ** len(probs)):
            bits = [(outcome >> i) & 1 for i in range(len(probs))]
            if sum(bits) >= k:
                brute += math.prod(q if b else 1 - q for q, b in zip(probs, bits))
        assert G.at_least_tail(probs, k) == pytest.approx(brute, rel=1e-12, abs=1e-15), k
    assert G.at_least_tail(probs, 0) == pytest.approx(1.0)


def test_mcnemar_exact_known_answers() -> None:
    assert G.mcnemar_exact(5, 0) == pytest.approx(2 / 32)
    assert G.mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert G.mcnemar_exact(6, 1) == pytest.approx(2 * (1 + 7) / 128)
    assert G.mcnemar_exact(3, 3) == 1.0
    assert G.mcnemar_exact(0, 0) == 1.0


def test_significance_counts_phrase_pairs() -> None:
    def ps(pointing: float, share: float, cnr: float) -> G.PhraseScores:
        return G.PhraseScores(cnr=cnr, iou=np.zeros(1), pointing=pointing, box_share=share)

    model = [ps(1, 0.1, 0.5), ps(1, 0.2, 0.4), ps(0, 0.3, -0.1), ps(1, 0.1, float("nan")), ps(float("nan"), 0.5, 0.2)]
    prior = [ps(0, 0.1, 0.1), ps(1, 0.2, 0.6), ps(1, 0.3, 0.0), ps(0, 0.1, 0.3), ps(1, 0.5, 0.1)]
    sig = to_json(G.significance(model, prior))
    assert sig["phrases"] == 4 and sig["hits"] == 3 and sig["prior_hits"] == 2
    assert sig["map_only"] == 2 and sig["prior_only"] == 1
    assert sig["p_vs_prior"] == pytest.approx(G.mcnemar_exact(2, 1)) == 1.0
    assert sig["chance_hits"] == pytest.approx(0.7)
    assert sig["p_vs_chance"] == pytest.approx(G.at_least_tail([0.1, 0.2, 0.3, 0.1], 3))
    # CNR over the phrases where both are defined: 0.4, -0.2, -0.1, 0.1.
    assert sig["cnr_minus_prior"] == pytest.approx(0.05)
    assert sig["cnr_above_prior_share"] == pytest.approx(0.5)
