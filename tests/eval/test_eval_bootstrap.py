"""Bootstrap intervals and paired differences (limitr/eval/bootstrap.py): each draw's figure
equals the plain metric computed on the drawn studies, the AUROC equals scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from limitr.eval import bootstrap as B
from limitr.eval import metrics as M


def _ranks(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 30, n).astype(float), rng.integers(1, 30, n).astype(float)


def test_draws_are_seeded_and_counts_match() -> None:
    a, b = B.draws(50, 20, 3), B.draws(50, 20, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, B.draws(50, 20, 4))
    c = B.counts(a, 50)
    assert c.shape == (20, 50) and (c.sum(1) == 50).all()
    assert np.array_equal(c[7], np.bincount(a[7], minlength=50))


def test_recall_draws_equal_the_metrics_of_the_drawn_studies() -> None:
    i2t, t2i = _ranks(40, 0)
    index = B.draws(40, 5, 1)
    found = B.recall_draws(i2t, t2i, index)
    for row in range(5):
        want = M.retrieval_summary(i2t[index[row]], t2i[index[row]])
        assert found["r_sum"][row] == pytest.approx(want["r_sum"])
        assert found["t2i_R@5"][row] == pytest.approx(want["t2i"]["R@5"])
        assert found["i2t_R@10"][row] == pytest.approx(want["i2t"]["R@10"])


def test_auroc_draws_equal_scikit_learn_with_ties_uncertain_and_unmentioned() -> None:
    rng = np.random.default_rng(0)
    n = 60
    margin = rng.integers(0, 8, n).astype(float)  # many ties
    labels = rng.choice([1.0, 0.0, np.nan, -1.0], n)
    keep = labels != -1
    truth = (labels[keep] == 1).astype(int)
    whole = B.auroc_draws(margin, labels, np.ones((1, n)))
    assert whole[0] == pytest.approx(roc_auc_score(truth, margin[keep]))
    assert whole[0] == pytest.approx(M.zero_shot_auroc(margin, np.zeros(n), labels)["auroc"])
    index = B.draws(n, 4, 2)
    weighted = B.auroc_draws(margin, labels, B.counts(index, n))
    for row in range(4):
        m, y = margin[index[row]], labels[index[row]]
        k = y != -1
        assert weighted[row] == pytest.approx(roc_auc_score((y[k] == 1).astype(int), m[k]))


def test_auroc_is_undefined_in_a_draw_without_positives() -> None:
    labels = np.array([1.0, 0.0, 0.0])
    weights = np.array([[0, 2, 1], [1, 1, 1]])
    found = B.auroc_draws(np.array([0.9, 0.1, 0.2]), labels, weights)
    assert np.isnan(found[0]) and found[1] == 1.0


def test_intervals_hold_the_point_and_shrink_with_more_studies() -> None:
    i2t, t2i = _ranks(400, 5)
    ci = B.recall_intervals(i2t, t2i, 500, 0)
    point = M.retrieval_summary(i2t, t2i)
    assert ci["r_sum"][0] <= point["r_sum"] <= ci["r_sum"][1]
    assert ci["i2t"]["R@10"][0] <= point["i2t"]["R@10"] <= ci["i2t"]["R@10"][1]
    small = B.recall_intervals(i2t[:40], t2i[:40], 500, 0)
    assert small["r_sum"][1] - small["r_sum"][0] > ci["r_sum"][1] - ci["r_sum"][0]
    assert B.interval(np.full(10, 3.0)) == [3.0, 3.0]
    assert B.interval(np.array([np.nan])) == [None, None]


def test_paired_difference_of_a_run_with_itself_is_zero_and_a_better_run_wins() -> None:
    i2t, t2i = _ranks(300, 1)
    index = B.draws(300, 200, 0)
    a = B.recall_draws(i2t, t2i, index)
    point = {k: float(v[0]) for k, v in B.recall_draws(i2t, t2i, np.arange(300)[None]).items()}
    same = B.paired_differences(a, a, point, point)
    assert all(r["low"] == r["high"] == 0.0 and r["better"] == "neither" for r in same)
    better_i2t = np.maximum(i2t - 10, 1)  # every study ranked 10 places higher
    b = B.recall_draws(better_i2t, t2i, index)
    point_b = {k: float(v[0]) for k, v in B.recall_draws(better_i2t, t2i, np.arange(300)[None]).items()}
    rows = {r["figure"]: r for r in B.paired_differences(b, a, point_b, point)}
    assert rows["i2t_R@10"]["better"] == "A" and rows["i2t_R@10"]["difference"] > 0
    assert rows["t2i_R@10"]["better"] == "neither"


def test_per_study_file_round_trips(tmp_path) -> None:
    values = {"i2t_total": np.array([1.0, 2.5, 3.0]), "Edema:label": np.array([np.nan, 1.0, -1.0]),
              "Edema:margin": np.array([0.1234567890123, -2e-9, 0.0])}
    B.write_per_study_tsv(tmp_path / "r.tsv", [5, 3, 9], values)
    keys, back = B.read_per_study_tsv(tmp_path / "r.tsv")
    assert keys.tolist() == [5, 3, 9]
    for name, v in values.items():
        assert np.array_equal(back[name], v, equal_nan=True)
