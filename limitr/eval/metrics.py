"""Retrieval, class-retrieval and zero-shot metrics computed from score matrices.

Conventions used throughout:

- A score matrix has shape ``(n_queries, n_candidates)``; higher means more similar. For
  image-text retrieval the matrix is ``(n_images, n_texts)`` with study ``i``'s image and
  report at row ``i`` and column ``i`` (matches on the diagonal).
- Ties are pessimistic by default: a candidate that scores exactly the same as the correct
  one counts as ranked above it, so a model that gives every pair the same score gets the
  worst rank, never a lucky one. ``ties="mean"`` (expected rank under a random tie break)
  and ``ties="optimistic"`` are available. Precision@K orders tied candidates the same
  pessimistic way (irrelevant ones first).
- NaN scores rank below every number.
- Recalls and precisions are percentages (0-100), as papers report them; ranks are 1-based;
  MRR is in (0, 1]; AUROC is in [0, 1].
"""

from __future__ import annotations

from typing import Callable, Literal, Optional, Sequence, Union

import numpy as np
import torch

TieRule = Literal["pessimistic", "mean", "optimistic"]
ArrayLike = Union[torch.Tensor, np.ndarray]

RECALL_KS: tuple[int, ...] = (1, 5, 10)
PRECISION_KS: tuple[int, ...] = (5, 10, 50, 100)


def _as_tensor(x: ArrayLike) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _nan_to_lowest(scores: torch.Tensor) -> torch.Tensor:
    if scores.is_floating_point() and torch.isnan(scores).any():
        return torch.where(torch.isnan(scores), torch.full_like(scores, -float("inf")), scores)
    return scores


def target_ranks(
    scores: ArrayLike,
    targets: ArrayLike,
    ties: TieRule = "pessimistic",
    tier: Optional[ArrayLike] = None,
    chunk_rows: int = 1024,
) -> torch.Tensor:
    """The 1-based rank of each query's correct candidate.

    scores: (Q, C); targets: (Q,) column index of the correct candidate of each query.
    tier: optional (Q, C) integer or boolean key that ranks before the score: every
        candidate of a higher tier comes before every candidate of a lower one, and scores
        order candidates within a tier (used by re-ranking: the global top-K form tier 1).
    Returns (Q,) float64 ranks (whole numbers except for ``ties="mean"``).
    Rows are processed ``chunk_rows`` at a time so that no (Q, C) temporary is built.
    """
    if ties not in ("pessimistic", "mean", "optimistic"):
        raise ValueError(f"unknown tie rule {ties!r}")
    scores = _as_tensor(scores)
    targets = _as_tensor(targets).long().to(scores.device)
    if scores.ndim != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(f"scores must be (Q, C) and targets (Q,); got {tuple(scores.shape)} and {tuple(targets.shape)}")
    tier_t = None if tier is None else _as_tensor(tier).to(scores.device)
    ranks = torch.empty(scores.shape[0], dtype=torch.float64)
    for start in range(0, scores.shape[0], chunk_rows):
        stop = min(start + chunk_rows, scores.shape[0])
        block = _nan_to_lowest(scores[start:stop])
        idx = targets[start:stop, None]
        target_score = block.gather(1, idx)
        if tier_t is None:
            greater = (block > target_score).sum(1)
            equal = (block == target_score).sum(1) - 1
        else:
            tiers = tier_t[start:stop].to(torch.int64)
            target_tier = tiers.gather(1, idx)
            same_tier = tiers == target_tier
            greater = ((tiers > target_tier) | (same_tier & (block > target_score))).sum(1)
            equal = (same_tier & (block == target_score)).sum(1) - 1
        greater, equal = greater.double().cpu(), equal.double().cpu()
        if ties == "pessimistic":
            ranks[start:stop] = 1 + greater + equal
        elif ties == "optimistic":
            ranks[start:stop] = 1 + greater
        else:
            ranks[start:stop] = 1 + greater + equal / 2
    return ranks


def rank_metrics(ranks: ArrayLike, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """R@K (percent), median rank, mean rank and MRR from 1-based ranks (Q,).

    The median of an even count is the mean of the two middle ranks.
    """
    r = _as_tensor(ranks).double().cpu().numpy()
    if r.size == 0:
        raise ValueError("no ranks to summarise")
    out: dict[str, float] = {f"R@{k}": float(100.0 * np.mean(r <= k)) for k in ks}
    out["medR"] = float(np.median(r))
    out["meanR"] = float(np.mean(r))
    out["MRR"] = float(np.mean(1.0 / r))
    return out


def recall_curve(ranks: ArrayLike, max_k: int) -> np.ndarray:
    """R@K in percent for K = 1..max_k: (max_k,)."""
    r = _as_tensor(ranks).double().cpu().numpy()
    ks = np.arange(1, max_k + 1)
    return 100.0 * (r[None, :] <= ks[:, None]).mean(axis=1)


def diagonal_ranks(
    scores: ArrayLike,
    ties: TieRule = "pessimistic",
    tier: Optional[ArrayLike] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks of the matching pairs of a square (n_images, n_texts) matrix.

    Returns (i2t, t2i): i2t[i] is the rank of text i among all texts for image i; t2i[j] the
    rank of image j among all images for text j. ``tier`` (n, n) as in :func:`target_ranks`,
    in the same (image, text) layout as ``scores``.
    """
    scores = _as_tensor(scores)
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"image-text retrieval needs a square score matrix, got {tuple(scores.shape)}")
    targets = torch.arange(scores.shape[0])
    tier_t = None if tier is None else _as_tensor(tier)
    i2t = target_ranks(scores, targets, ties, tier_t)
    t2i = target_ranks(scores.T, targets, ties, None if tier_t is None else tier_t.T)
    return i2t, t2i


def retrieval_summary(
    i2t_ranks: ArrayLike, t2i_ranks: ArrayLike, ks: Sequence[int] = RECALL_KS
) -> dict:
    """``{"n_candidates", "i2t": {...}, "t2i": {...}, "r_sum"}``; r_sum adds the recalls of both
    directions (percent, the six recalls for the default K = 1, 5, 10)."""
    i2t = rank_metrics(i2t_ranks, ks)
    t2i = rank_metrics(t2i_ranks, ks)
    r_sum = sum(i2t[f"R@{k}"] + t2i[f"R@{k}"] for k in ks)
    return {"n_candidates": int(len(i2t_ranks)), "i2t": i2t, "t2i": t2i, "r_sum": float(r_sum)}


def image_text_retrieval(
    scores: ArrayLike,
    ks: Sequence[int] = RECALL_KS,
    ties: TieRule = "pessimistic",
    tier: Optional[ArrayLike] = None,
) -> dict:
    """Retrieval figures over a whole square score matrix (every study a candidate)."""
    i2t, t2i = diagonal_ranks(scores, ties, tier)
    return retrieval_summary(i2t, t2i, ks)


def block_spans(n: int, block_size: int) -> list[tuple[int, int]]:
    """Consecutive blocks of exactly ``block_size`` studies; a shorter remainder is dropped
    (its studies would face an easier, smaller candidate set), except when no full block
    exists, in which case all ``n`` studies form the one block."""
    if block_size <= 0:
        raise ValueError("block_size must be positive")
    if n <= block_size:
        return [(0, n)] if n > 0 else []
    return [(s, s + block_size) for s in range(0, n - block_size + 1, block_size)]


RanksFn = Callable[[slice], "tuple[torch.Tensor, torch.Tensor]"]


def _blocks_summary(n: int, ranks_fn: RanksFn, block_size: int, ks: Sequence[int]) -> dict:
    """Mean over diagonal blocks of the per-block retrieval figures."""
    spans = block_spans(n, block_size)
    if not spans:
        raise ValueError("no studies to evaluate")
    per_block = [retrieval_summary(*ranks_fn(slice(a, b)), ks) for a, b in spans]
    out: dict = {
        "n_candidates": int(spans[0][1] - spans[0][0]),
        "n_blocks": len(spans),
        "n_studies_dropped": int(n - sum(b - a for a, b in spans)),
    }
    for direction in ("i2t", "t2i"):
        keys = per_block[0][direction].keys()
        out[direction] = {k: float(np.mean([b[direction][k] for b in per_block])) for k in keys}
    out["r_sum"] = float(sum(out["i2t"][f"R@{k}"] + out["t2i"][f"R@{k}"] for k in ks))
    return out


def blockwise_retrieval(
    scores: ArrayLike,
    block_size: int = 1000,
    ks: Sequence[int] = RECALL_KS,
    ties: TieRule = "pessimistic",
) -> dict:
    """Retrieval within diagonal blocks of ``block_size`` studies, averaged over blocks.

    The public code's protocol: each study competes only with the studies of its block
    (consecutive in table order). Every figure (recalls, medR, meanR, MRR) is the mean over
    blocks of the block's figure; r_sum is the sum of the mean recalls. See
    :func:`block_spans` for the remainder.
    """
    scores = _as_tensor(scores)
    return _blocks_summary(
        scores.shape[0], lambda sl: diagonal_ranks(scores[sl, sl], ties), block_size, ks
    )


def top_k_mask(scores: ArrayLike, k: int) -> torch.Tensor:
    """(Q, C) bool: the ``k`` highest-scoring candidates of each row (ties: lower index first)."""
    scores = _nan_to_lowest(_as_tensor(scores))
    k = min(k, scores.shape[1])
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    mask.scatter_(1, order, True)
    return mask


def reranked_ranks(
    total: ArrayLike, global_scores: ArrayLike, k: int, ties: TieRule = "pessimistic"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(i2t, t2i) ranks under re-ranking of square (n, n) matrices, (image, text) layout.

    Each query's global top-``k`` candidates come first, ordered among themselves by the
    total score; the other candidates follow in global-score order.
    """
    total, global_scores = _as_tensor(total), _as_tensor(global_scores)
    targets = torch.arange(total.shape[0])
    results = []
    for t, g in ((total, global_scores), (total.T, global_scores.T)):
        tier = top_k_mask(g, k)
        results.append(target_ranks(torch.where(tier, t, g), targets, ties, tier))
    return results[0], results[1]


def reranked_retrieval(
    total: ArrayLike,
    global_scores: ArrayLike,
    k: int,
    block_size: int = 1000,
    ks: Sequence[int] = RECALL_KS,
    ties: TieRule = "pessimistic",
) -> dict:
    """Re-ranking figures: ``{"top_k", "full": ..., "block<size>": ...}`` (see
    :func:`reranked_ranks`); for the block protocol the top-K is chosen within the block."""
    total, global_scores = _as_tensor(total), _as_tensor(global_scores)
    n = total.shape[0]
    return {
        "top_k": int(k),
        "full": retrieval_summary(*reranked_ranks(total, global_scores, k, ties), ks),
        f"block{block_size}": _blocks_summary(
            n, lambda sl: reranked_ranks(total[sl, sl], global_scores[sl, sl], k, ties), block_size, ks
        ),
    }


def chance_recalls(n_candidates: int, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """R@K of a random ranking of ``n_candidates`` with one correct answer (percent)."""
    return {f"R@{k}": float(100.0 * min(k, n_candidates) / n_candidates) for k in ks}


def precision_at_k(scores: ArrayLike, relevant: ArrayLike, ks: Sequence[int] = PRECISION_KS) -> dict[int, np.ndarray]:
    """Precision@K (percent) of each query.

    scores: (Q, C); relevant: (Q, C) bool, True where candidate c is a hit for query q.
    Candidates are ordered by score, descending; tied candidates put irrelevant ones first
    (pessimistic), then lower index. K larger than C is left out of the result.
    Returns {K: (Q,) float64}.
    """
    s = _nan_to_lowest(_as_tensor(scores)).double().cpu().numpy()
    rel = _as_tensor(relevant).bool().cpu().numpy()
    if s.shape != rel.shape or s.ndim != 2:
        raise ValueError(f"scores and relevant must both be (Q, C); got {s.shape} and {rel.shape}")
    # lexsort: the last key is the primary one; each key sorts ascending.
    order = np.lexsort((np.broadcast_to(np.arange(s.shape[1]), s.shape), rel, -s), axis=-1)
    hits = np.take_along_axis(rel, order, axis=1)
    return {k: 100.0 * hits[:, :k].mean(axis=1) for k in ks if k <= s.shape[1]}


def class_precision(
    scores: ArrayLike,
    relevant: ArrayLike,
    query_classes: Sequence[str],
    classes: Sequence[str],
    ks: Sequence[int] = PRECISION_KS,
) -> dict[str, dict[str, float]]:
    """Precision@K per class and the mean over classes: ``{"P@K": {"mean", <class>...}}``.

    query_classes[q] is the class of query q; a class's figure is the mean over its queries
    (one query per class for text-to-image, every image of the class for image-to-text);
    "mean" is the unweighted mean over the classes that have queries.
    """
    per_query = precision_at_k(scores, relevant, ks)
    labels = np.asarray(list(query_classes))
    out: dict[str, dict[str, float]] = {}
    for k, values in per_query.items():
        entry: dict[str, float] = {}
        for name in classes:
            sel = labels == name
            if sel.any():
                entry[name] = float(values[sel].mean())
        entry = {"mean": float(np.mean(list(entry.values()))) if entry else float("nan"), **entry}
        out[f"P@{k}"] = entry
    return out


def zero_shot_auroc(positive_scores: ArrayLike, negative_scores: ArrayLike, labels: ArrayLike) -> dict:
    """AUROC of ``positive - negative`` prompt scores against CheXpert labels.

    labels: (n,) with 1 positive, 0 or NaN (not mentioned) negative, -1 uncertain (left out).
    The difference is monotone in the two-prompt softmax, so it ranks images as the softmax
    would. Returns {"auroc", "n_positive", "n_negative", "n_uncertain"}; auroc is None when
    one of the two groups is empty.
    """
    from sklearn.metrics import roc_auc_score

    pos = _as_tensor(positive_scores).double().cpu().numpy()
    neg = _as_tensor(negative_scores).double().cpu().numpy()
    y = _as_tensor(labels).double().cpu().numpy()
    uncertain = y == -1
    keep = ~uncertain
    truth = (y[keep] == 1).astype(int)
    margin = np.nan_to_num(pos[keep] - neg[keep], nan=-1e30, neginf=-1e30, posinf=1e30)
    n_pos, n_neg = int(truth.sum()), int((truth == 0).sum())
    auroc = float(roc_auc_score(truth, margin)) if n_pos and n_neg else None
    return {"auroc": auroc, "n_positive": n_pos, "n_negative": n_neg, "n_uncertain": int(uncertain.sum())}
