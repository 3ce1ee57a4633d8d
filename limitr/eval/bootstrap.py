"""Bootstrap intervals of the headline figures, and paired comparisons of two runs.

The test studies are resampled with replacement (``samples`` draws of n studies, seeded);
each figure is recomputed on every draw from the per-study values computed once (a study's
rank of its match in each direction, its zero-shot margin and label), so the candidates a
query was ranked against are the whole test split in every draw: the interval is the spread
of the figure over test sets of the same size, not of the ranking itself. A study's
image-to-text and text-to-image queries are drawn together. Intervals are percentile
intervals (2.5th and 97.5th percentiles for 95%).

Everything is vectorised over the draws: a draw is a row of a (samples, n) index matrix, or
of the matching (samples, n) count matrix, and no Python loop runs per query.
"""

from __future__ import annotations

import warnings
from typing import Mapping, Optional, Sequence

import numpy as np

from limitr.eval.metrics import RECALL_KS

#: The share of the draws inside an interval.
LEVEL = 0.95
#: The retrieval figures that get an interval (the headline recalls and their sum).
RECALL_FIGURES: tuple[str, ...] = tuple(f"{d}_R@{k}" for d in ("i2t", "t2i") for k in RECALL_KS) + ("r_sum",)


def draws(n: int, samples: int, seed: int) -> np.ndarray:
    """(samples, n) int64 study indices, each row a draw with replacement; the same for the
    same (n, samples, seed), so two runs on the same test split get the same draws."""
    if n < 1 or samples < 1:
        raise ValueError("a bootstrap needs at least one study and one draw")
    return np.random.default_rng(seed).integers(0, n, size=(samples, n), dtype=np.int64)


def counts(index: np.ndarray, n: int) -> np.ndarray:
    """(samples, n) how many times each study is in each draw of ``index``."""
    samples = index.shape[0]
    flat = (index + (np.arange(samples, dtype=np.int64) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=samples * n).reshape(samples, n)


def interval(values: np.ndarray, level: float = LEVEL) -> list[Optional[float]]:
    """[low, high] percentile interval of the finite values (None where there are none)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [None, None]
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return [float(low), float(high)]


def recall_draws(i2t: np.ndarray, t2i: np.ndarray, index: np.ndarray,
                 ks: Sequence[int] = RECALL_KS) -> dict[str, np.ndarray]:
    """Each of :data:`RECALL_FIGURES` (percent) on every draw: {name: (samples,)}.

    i2t, t2i: (n,) 1-based ranks of study i's match in each direction."""
    i2t, t2i = np.asarray(i2t, dtype=np.float64), np.asarray(t2i, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    r_sum = np.zeros(index.shape[0])
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        picked = ranks[index]  # (samples, n), ranks gathered once for every K
        for k in ks:
            out[f"{name}_R@{k}"] = 100.0 * (picked <= k).mean(axis=1)
            r_sum = r_sum + out[f"{name}_R@{k}"]
    out["r_sum"] = r_sum
    return out


def auroc_draws(margin: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of ``margin`` against ``labels`` on every draw: (samples,), NaN where a draw
    has no positive or no negative study.

    margin: (n,) scores; labels: (n,) 1 positive, 0 or NaN negative, -1 uncertain (left out),
    as :func:`limitr.eval.metrics.zero_shot_auroc`; weights: (samples, n) study counts of each
    draw (:func:`counts`). The Mann-Whitney count with ties as one half, computed over the
    sorted distinct margins once, so a draw costs a few (samples, n) sums."""
    y = np.asarray(labels, dtype=np.float64)
    keep = y != -1
    m = np.nan_to_num(np.asarray(margin, dtype=np.float64)[keep], nan=-1e30, neginf=-1e30, posinf=1e30)
    positive = y[keep] == 1
    w = np.asarray(weights, dtype=np.float64)[:, keep]
    values, group = np.unique(m, return_inverse=True)  # ascending distinct margins
    order = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[order], np.arange(values.size))
    w_sorted, pos_sorted = w[:, order], positive[order]
    pos_g = np.add.reduceat(w_sorted * pos_sorted, starts, axis=1)  # (samples, groups)
    neg_g = np.add.reduceat(w_sorted * ~pos_sorted, starts, axis=1)
    below = np.cumsum(neg_g, axis=1) - neg_g  # negative weight strictly below each group
    u = (pos_g * (below + 0.5 * neg_g)).sum(axis=1)
    n_pos, n_neg = pos_g.sum(axis=1), neg_g.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def mean_auroc_draws(margins: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                     weights: np.ndarray) -> dict[str, np.ndarray]:
    """Per observation and their ``mean`` (over the observations defined in a draw), on every
    draw: {name: (samples,)}."""
    out = {name: auroc_draws(margins[name], labels[name], weights) for name in margins}
    if out:
        stacked = np.stack(list(out.values()), axis=1)
        with warnings.catch_warnings():  # a draw where no observation is defined gives NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            out = {"mean": np.nanmean(stacked, axis=1), **out}
    return out


def recall_intervals(i2t: np.ndarray, t2i: np.ndarray, samples: int, seed: int,
                     level: float = LEVEL) -> dict:
    """``{"i2t": {"R@K": [lo, hi]}, "t2i": {...}, "r_sum": [lo, hi], "samples", "seed", "level"}``."""
    found = recall_draws(i2t, t2i, draws(len(i2t), samples, seed))
    out: dict = {d: {f"R@{k}": interval(found[f"{d}_R@{k}"], level) for k in RECALL_KS} for d in ("i2t", "t2i")}
    out["r_sum"] = interval(found["r_sum"], level)
    out.update(samples=int(samples), seed=int(seed), level=level)
    return out


def auroc_intervals(margins: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], samples: int,
                    seed: int, level: float = LEVEL) -> dict:
    """``{"mean": [lo, hi], <observation>: [lo, hi], "samples", "seed", "level"}``."""
    n = len(next(iter(margins.values()))) if margins else 0
    if n == 0:
        return {}
    found = mean_auroc_draws(margins, labels, counts(draws(n, samples, seed), n))
    out: dict = {name: interval(values, level) for name, values in found.items()}
    out.update(samples=int(samples), seed=int(seed), level=level)
    return out


def paired_differences(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray],
                       point_a: Mapping[str, float], point_b: Mapping[str, float],
                       level: float = LEVEL) -> list[dict]:
    """For each figure both runs have: A, B, A - B and its interval over the same draws, and
    the verdict (``A`` or ``B`` when the interval excludes 0, else ``neither``)."""
    rows = []
    for name in a:
        if name not in b or name not in point_a or name not in point_b:
            continue
        low, high = interval(a[name] - b[name], level)
        diff = float(point_a[name] - point_b[name])
        better = "neither"
        if low is not None and low > 0:
            better = "A"
        elif high is not None and high < 0:
            better = "B"
        rows.append({"figure": name, "a": float(point_a[name]), "b": float(point_b[name]),
                     "difference": diff, "low": low, "high": high, "better": better})
    return rows


# --- the per-study files two runs are compared on ----------------------------------------------

#: Per-study retrieval ranks (columns ``study_id``, then ``<direction>_<score>``) and zero-shot
#: margins and labels (``study_id``, then ``<observation>:margin`` and ``<observation>:label``),
#: written next to the metrics by the evaluate stage.
RANKS_FILE = "ranks.tsv"
MARGINS_FILE = "zero_shot_margins.tsv"


def write_per_study_tsv(path, keys: Sequence[int], columns: Mapping[str, np.ndarray]) -> None:
    """A TSV of ``study_id`` and one column per entry (floats at full precision, ``nan``
    where undefined), written atomically."""
    from limitr.files import write_atomic

    names = list(columns)
    arrays = [np.asarray(columns[n], dtype=np.float64) for n in names]
    lines = ["\t".join(["study_id", *names])]
    for i, key in enumerate(keys):
        cells = [str(int(key))]
        for a in arrays:
            v = float(a[i])
            cells.append(str(int(v)) if v.is_integer() else repr(v))
        lines.append("\t".join(cells))
    write_atomic(path, "\n".join(lines) + "\n")


def read_per_study_tsv(path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(study ids (n,) int64, {column: (n,) float64}) of a file of :func:`write_per_study_tsv`."""
    from pathlib import Path

    from limitr.errors import LimitrError

    path = Path(path)
    if not path.is_file():
        raise LimitrError(f"{path} is missing: run the evaluate stage of this version first")
    lines = [line for line in path.read_text().splitlines() if line]
    if not lines or lines[0].split("\t")[0] != "study_id":
        raise LimitrError(f"{path} is not a per-study file of the evaluate stage (no study_id column)")
    names = lines[0].split("\t")[1:]
    try:
        rows = [line.split("\t") for line in lines[1:]]
        keys = np.array([int(r[0]) for r in rows], dtype=np.int64)
        values = np.array([[float(c) for c in r[1:]] for r in rows], dtype=np.float64).reshape(len(rows), len(names))
    except (ValueError, IndexError):
        raise LimitrError(f"{path} has a malformed row: write it again with the evaluate stage") from None
    return keys, {name: values[:, j] for j, name in enumerate(names)}


# --- paired comparison of two runs ---------------------------------------------------------------

#: The score columns of ranks.tsv: the combined score and each term alone.
SCORES: tuple[str, ...] = ("total", "global", "local")


def _aligned(keys_a: np.ndarray, keys_b: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of A and B in the order of their common sorted study ids; a LimitrError in one line
    when the two runs were not evaluated on the same studies."""
    from limitr.errors import LimitrError

    set_a, set_b = set(keys_a.tolist()), set(keys_b.tolist())
    if set_a != set_b or len(set_a) != len(keys_a) or len(set_b) != len(keys_b):
        raise LimitrError(f"the two runs' test splits differ ({what}: {len(set_a)} and {len(set_b)} studies, "
                          f"{len(set_a & set_b)} in common): compare runs evaluated on the same split")
    return np.argsort(keys_a, kind="stable"), np.argsort(keys_b, kind="stable")


def _ranks_of(columns: Mapping[str, np.ndarray], score: str, folder) -> tuple[np.ndarray, np.ndarray]:
    from limitr.errors import LimitrError

    if f"i2t_{score}" not in columns:
        raise LimitrError(f"{folder} has no ranks by the {score} score (it has: "
                          f"{', '.join(sorted({c.split('_', 1)[1] for c in columns}))})")
    return columns[f"i2t_{score}"], columns[f"t2i_{score}"]


def compare_runs(folder_a, folder_b, samples: int, seed: int, score_a: str = "total", score_b: str = "total",
                 level: float = LEVEL) -> dict:
    """Paired differences A - B of the headline figures of two evaluated runs (their metrics
    folders' ranks.tsv and zero_shot_margins.tsv), over the same ``samples`` draws of the
    test studies: ``{"rows": [...], "n_studies", "n_zero_shot", "samples", "seed", "level"}``.
    ``score_a`` / ``score_b`` pick each run's ranking (total, global or local: a run against
    its own global score is ``compare_runs(f, f, ..., "total", "global")``). The zero-shot
    AUROCs are compared where both runs wrote margins, over their common observations."""
    from pathlib import Path

    from limitr.errors import LimitrError

    folder_a, folder_b = Path(folder_a), Path(folder_b)
    keys_a, cols_a = read_per_study_tsv(folder_a / RANKS_FILE)
    keys_b, cols_b = read_per_study_tsv(folder_b / RANKS_FILE)
    if len(keys_a) == 0 or len(keys_b) == 0:
        raise LimitrError("a run without retrieval ranks (its retrieval task did not run): nothing to compare")
    rows_a, rows_b = _aligned(keys_a, keys_b, "retrieval")
    ra = [r[rows_a] for r in _ranks_of(cols_a, score_a, folder_a)]
    rb = [r[rows_b] for r in _ranks_of(cols_b, score_b, folder_b)]
    n = len(rows_a)
    index = draws(n, samples, seed)
    whole = np.arange(n)[None, :]
    point_a = {k: float(v[0]) for k, v in recall_draws(*ra, whole).items()}
    point_b = {k: float(v[0]) for k, v in recall_draws(*rb, whole).items()}
    rows = paired_differences(recall_draws(*ra, index), recall_draws(*rb, index), point_a, point_b, level)
    out = {"n_studies": n, "n_zero_shot": 0}
    margins_a, margins_b = folder_a / MARGINS_FILE, folder_b / MARGINS_FILE
    if margins_a.is_file() and margins_b.is_file():
        za, ma = read_per_study_tsv(margins_a)
        zb, mb = read_per_study_tsv(margins_b)
        names = sorted({c[: -len(":margin")] for c in ma if c.endswith(":margin")}
                       & {c[: -len(":margin")] for c in mb if c.endswith(":margin")})
        if names and len(za) and len(zb):
            za_rows, zb_rows = _aligned(za, zb, "zero-shot")
            labels = {name: ma[f"{name}:label"][za_rows] for name in names}
            if any(not np.array_equal(labels[name], mb[f"{name}:label"][zb_rows], equal_nan=True) for name in names):
                raise LimitrError("the two runs' zero-shot labels differ: they were not evaluated on the same split")
            m_a = {name: ma[f"{name}:margin"][za_rows] for name in names}
            m_b = {name: mb[f"{name}:margin"][zb_rows] for name in names}
            nz = len(za_rows)
            weights = counts(draws(nz, samples, seed), nz)
            ones = np.ones((1, nz))
            pa = {k: float(v[0]) for k, v in mean_auroc_draws(m_a, labels, ones).items()}
            pb = {k: float(v[0]) for k, v in mean_auroc_draws(m_b, labels, ones).items()}
            auroc = paired_differences({"auroc": mean_auroc_draws(m_a, labels, weights)["mean"]},
                                       {"auroc": mean_auroc_draws(m_b, labels, weights)["mean"]},
                                       {"auroc": pa["mean"]}, {"auroc": pb["mean"]}, level)
            rows.extend(auroc)
            out["n_zero_shot"] = nz
    out.update(rows=rows, samples=int(samples), seed=int(seed), level=level, score_a=score_a, score_b=score_b)
    return out
