"""Retrieval, precision and AUROC metrics against plain brute-force references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from limitr.eval import metrics as M


def brute_rank(row: list[float], target: int, ties: str) -> float:
    """Rank of ``target`` in one row, written out: count who beats it and who ties with it."""
    def key(v: float) -> float:
        return -math.inf if math.isnan(v) else v

    t = key(row[target])
    greater = sum(1 for j, v in enumerate(row) if j != target and key(v) > t)
    equal = sum(1 for j, v in enumerate(row) if j != target and key(v) == t)
    return {"pessimistic": 1 + greater + equal, "optimistic": 1 + greater, "mean": 1 + greater + equal / 2}[ties]


def brute_retrieval(scores: np.ndarray, ks=(1, 5, 10), ties: str = "pessimistic") -> dict:
    n = scores.shape[0]
    out = {}
    for name, mat in (("i2t", scores), ("t2i", scores.T)):
        ranks = [brute_rank(list(mat[q]), q, ties) for q in range(n)]
        entry = {f"R@{k}": 100.0 * sum(r <= k for r in ranks) / n for k in ks}
        srt = sorted(ranks)
        entry["medR"] = srt[n // 2] if n % 2 else (srt[n // 2 - 1] + srt[n // 2]) / 2
        entry["meanR"] = sum(ranks) / n
        entry["MRR"] = sum(1 / r for r in ranks) / n
        out[name] = entry
    out["r_sum"] = sum(out[d][f"R@{k}"] for d in ("i2t", "t2i") for k in ks)
    return out


def assert_close_dicts(got: dict, want: dict) -> None:
    for direction in ("i2t", "t2i"):
        for key, value in want[direction].items():
            assert got[direction][key] == pytest.approx(value, abs=1e-9), (direction, key)
    assert got["r_sum"] == pytest.approx(want["r_sum"], abs=1e-9)


@pytest.mark.parametrize("ties", ["pessimistic", "mean", "optimistic"])
@pytest.mark.parametrize("kind", ["random", "tied", "constant"])
def test_retrieval_matches_brute_force(kind: str, ties: str) -> None:
    rng = np.random.default_rng(0)
    n = 23
    if kind == "random":
        scores = rng.normal(size=(n, n)).astype(np.float32)
    elif kind == "tied":
        scores = rng.integers(0, 3, size=(n, n)).astype(np.float32)
    else:
        scores = np.ones((n, n), dtype=np.float32)
    got = M.image_text_retrieval(torch.from_numpy(scores), ties=ties)
    assert got["n_candidates"] == n
    assert_close_dicts(got, brute_retrieval(scores, ties=ties))


def test_constant_scores_get_the_worst_rank_by_default() -> None:
    got = M.image_text_retrieval(torch.zeros(7, 7))
    assert got["i2t"]["medR"] == 7 and got["i2t"]["R@5"] == 0.0
    assert got["r_sum"] == 200.0  # only R@10, which covers all 7, counts


def test_nan_scores_rank_last() -> None:
    scores = torch.tensor([[float("nan"), 1.0, 2.0], [0.0, 1.0, 0.5], [0.0, float("nan"), 3.0]])
    i2t, t2i = M.diagonal_ranks(scores)
    assert i2t.tolist() == [3.0, 1.0, 1.0]
    assert t2i.tolist() == [3.0, 2.0, 1.0]  # column 1 ties 1.0 with 1.0


def test_rank_metrics_known_answer() -> None:
    out = M.rank_metrics(torch.tensor([1.0, 2.0, 3.0, 10.0]))
    assert out == pytest.approx({"R@1": 25.0, "R@5": 75.0, "R@10": 100.0, "medR": 2.5, "meanR": 4.0,
                                 "MRR": (1 + 1 / 2 + 1 / 3 + 1 / 10) / 4})


def test_target_ranks_rectangular_and_chunked() -> None:
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=(37, 11)).astype(np.float64)
    targets = rng.integers(0, 11, size=37)
    got = M.target_ranks(torch.from_numpy(scores), torch.from_numpy(targets), chunk_rows=5)
    want = [brute_rank(list(scores[q]), int(targets[q]), "pessimistic") for q in range(37)]
    assert got.tolist() == want


@pytest.mark.parametrize("n,block", [(25, 10), (30, 10), (9, 10), (10, 10)])
def test_blockwise_is_the_mean_of_brute_force_blocks(n: int, block: int) -> None:
    rng = np.random.default_rng(n)
    scores = rng.integers(0, 5, size=(n, n)).astype(np.float32)
    got = M.blockwise_retrieval(torch.from_numpy(scores), block_size=block)
    spans = [(0, n)] if n <= block else [(s, s + block) for s in range(0, n - block + 1, block)]
    blocks = [brute_retrieval(scores[a:b, a:b]) for a, b in spans]
    want = {d: {k: np.mean([b[d][k] for b in blocks]) for k in blocks[0][d]} for d in ("i2t", "t2i")}
    want["r_sum"] = np.mean([b["r_sum"] for b in blocks])
    assert_close_dicts(got, want)
    assert got["n_blocks"] == len(spans)
    assert got["n_studies_dropped"] == n - sum(b - a for a, b in spans)


def test_one_block_covering_everything_equals_full() -> None:
    scores = torch.randn(40, 40)
    full = M.image_text_retrieval(scores)
    block = M.blockwise_retrieval(scores, block_size=40)
    assert_close_dicts(block, full)
    assert block["n_candidates"] == full["n_candidates"] == 40


def brute_rerank_rank(total_row, global_row, target: int, k: int) -> int:
    order = sorted(range(len(global_row)), key=lambda j: (-global_row[j], j))
    top = set(order[:k])

    def key(j):  # larger is better: top-K tier first, then total inside, global outside
        return (1, total_row[j]) if j in top else (0, global_row[j])

    return 1 + sum(1 for j in range(len(global_row)) if j != target and key(j) >= key(target))


@pytest.mark.parametrize("k", [1, 3, 12])
def test_rerank_matches_brute_force(k: int) -> None:
    rng = np.random.default_rng(k)
    n = 12
    total = rng.integers(0, 4, size=(n, n)).astype(np.float32)
    glob = rng.integers(0, 6, size=(n, n)).astype(np.float32)
    i2t, t2i = M.reranked_ranks(torch.from_numpy(total), torch.from_numpy(glob), k)
    assert i2t.tolist() == [brute_rerank_rank(total[q], glob[q], q, k) for q in range(n)]
    assert t2i.tolist() == [brute_rerank_rank(total[:, q], glob[:, q], q, k) for q in range(n)]


def test_rerank_with_all_candidates_is_total_ranking() -> None:
    total, glob = torch.randn(15, 15), torch.randn(15, 15)
    out = M.reranked_retrieval(total, glob, k=15, block_size=5)
    assert_close_dicts(out["full"], M.image_text_retrieval(total))
    assert out["top_k"] == 15 and out["block5"]["n_blocks"] == 3


def brute_precision(scores_row, rel_row, k: int) -> float:
    order = sorted(range(len(scores_row)), key=lambda j: (-scores_row[j], bool(rel_row[j]), j))
    return 100.0 * sum(bool(rel_row[j]) for j in order[:k]) / k


def test_precision_at_k_crafted_ranking() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 1.0, 1.0, 0.0, 0.0]])
    relevant = torch.tensor([[1, 0, 1, 1, 0], [1, 0, 1, 0, 0]], dtype=torch.bool)
    got = M.precision_at_k(scores, relevant, ks=(1, 2, 3, 5, 6))
    assert set(got) == {1, 2, 3, 5}  # K beyond the candidates is left out
    assert got[1].tolist() == [100.0, 0.0]  # a tie puts the irrelevant candidate first
    assert got[2].tolist() == [50.0, 50.0]
    assert got[3] == pytest.approx([200 / 3, 200 / 3])
    assert got[5].tolist() == [60.0, 40.0]


def test_precision_at_k_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(9, 30)).astype(np.float32)
    relevant = rng.random((9, 30)) < 0.3
    got = M.precision_at_k(scores, relevant, ks=(5, 10))
    for k in (5, 10):
        assert got[k] == pytest.approx([brute_precision(scores[q], relevant[q], k) for q in range(9)])


def test_class_precision_per_class_and_mean() -> None:
    # two classes, 4 candidates; query 0 is class A, queries 1 and 2 are class B
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    item_class = np.array(["A", "A", "B", "B"])
    query_class = ["A", "B", "B"]
    relevant = torch.from_numpy(np.array(query_class)[:, None] == item_class[None, :])
    out = M.class_precision(scores, relevant, query_class, ["A", "B", "C"], ks=(2,))
    assert out["P@2"]["A"] == 100.0
    assert out["P@2"]["B"] == 50.0  # (0 + 100) / 2
    assert out["P@2"]["mean"] == 75.0
    assert "C" not in out["P@2"]


def test_zero_shot_auroc_brute_force_and_exclusions() -> None:
    rng = np.random.default_rng(4)
    pos = rng.normal(size=40)
    neg = rng.normal(size=40)
    labels = rng.choice([1.0, 0.0, -1.0, np.nan], size=40)
    out = M.zero_shot_auroc(pos, neg, labels)
    margin = pos - neg
    p = [margin[i] for i in range(40) if labels[i] == 1]
    n = [margin[i] for i in range(40) if labels[i] == 0 or np.isnan(labels[i])]
    pairs = list(itertools.product(p, n))
    want = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert out["auroc"] == pytest.approx(want)
    assert out["n_positive"] == len(p) and out["n_negative"] == len(n)
    assert out["n_uncertain"] == int((labels == -1).sum())


def test_zero_shot_auroc_one_group_empty_is_none() -> None:
    assert M.zero_shot_auroc([1.0, 2.0], [0.0, 0.0], [1.0, 1.0])["auroc"] is None


def test_recall_curve_and_chance() -> None:
    ranks = torch.tensor([1.0, 3.0, 3.0, 5.0])
    assert M.recall_curve(ranks, 5).tolist() == [25.0, 25.0, 75.0, 75.0, 100.0]
    assert M.chance_recalls(20) == {"R@1": 5.0, "R@5": 25.0, "R@10": 50.0}
