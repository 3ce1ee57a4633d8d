"""Validation during training: embed a split once, score it, report the recalls.

The retrieval figures come from :mod:`limitr.eval.metrics` so that validation and the
evaluate stage count ranks (and ties) the same way; scores come from ``model.similarity``,
the one scoring function of the project.

Why validation re-ranks the global top-K instead of scoring every pair with the local
alignment: the local score of one (study, report) pair costs about as much as a training
step's share of a study (about 1,000 pairs/s on 2 CPU cores), so all-against-all grows as
n^2 and took a fifth of each epoch at 194 validation studies, hours at MIMIC-CXR's size.
The global score is a dot product: all n^2 of them cost nothing next to the encoders. Each
query's K best candidates by global score are then ordered by the total score (the score the
evaluate stage ranks by) and the rest follow in global order, as the evaluate stage's
``rerank_top_k`` does: 2 n K local pairs, linear in n. R@1, R@5 and R@10 are exact whenever
the match is among the global top K (K >= 10), which is where a model worth keeping puts it.
Together with a fixed seeded subset of at most ``max_studies`` validation studies (the size of
the paper's block-1000 protocol), an epoch's validation is bounded at any split size.
"""

from __future__ import annotations

import contextlib
from dataclasses import fields
from typing import Iterable, Optional, Sequence, TypeVar

import numpy as np

import torch
from torch import nn

from limitr.progress import ProgressFn, advance
from limitr.data.prepare import StudyBatch
from limitr.train.distributed import as_float32

T = TypeVar("T")

#: Keys of the flat validation record, in TSV column order.
RECALL_KEYS: tuple[str, ...] = (
    "i2t_R@1",
    "i2t_R@5",
    "i2t_R@10",
    "t2i_R@1",
    "t2i_R@5",
    "t2i_R@10",
)


def autocast_context(device: torch.device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def cat_embeddings(parts: Sequence[T]) -> T:
    """Concatenate embedding dataclasses along dim 0, zero-padding dim 1 to the widest part
    (reports of different batches are trimmed to different lengths; masks stay False there).
    Non-tensor fields (the region grid) are taken from the first part."""
    if not parts:
        raise ValueError("nothing to concatenate")
    first = parts[0]
    out = {}
    for f in fields(first):  # type: ignore[arg-type]
        values = [getattr(p, f.name) for p in parts]
        if not isinstance(values[0], torch.Tensor):
            out[f.name] = values[0]
            continue
        if values[0].ndim > 1:
            width = max(v.shape[1] for v in values)
            values = [
                v
                if v.shape[1] == width
                else torch.cat([v, v.new_zeros((v.shape[0], width - v.shape[1], *v.shape[2:]))], 1)
                for v in values
            ]
        out[f.name] = torch.cat(values)
    return type(first)(**out)


@torch.no_grad()
def embed_studies(
    model: nn.Module,
    batches: Iterable[StudyBatch],
    device: torch.device,
    *,
    upsample_to: Optional[int] = None,
    lateral: bool = True,
    autocast_dtype: Optional[torch.dtype] = None,
    progress: ProgressFn = None,
):
    """Image and text embeddings of every study of ``batches``, in order, as float32.

    Returns ``(ImageEmbeddings, TextEmbeddings)`` over all studies; ``progress`` advances by
    the studies of each batch. The model is put in eval mode and restored afterwards.
    """
    was_training = model.training
    model.eval()
    images, texts = [], []
    try:
        for batch in batches:
            inputs = batch.to_model_inputs(device, upsample_to, lateral)
            with autocast_context(device, autocast_dtype):
                img = model.encode_images(inputs.frontal, inputs.lateral, inputs.has_lateral)
                txt = model.encode_text(inputs.input_ids, inputs.attention_mask, inputs.word_ids)
            images.append(as_float32(img))
            texts.append(as_float32(txt))
            advance(progress, len(batch))
    finally:
        model.train(was_training)
    return cat_embeddings(images), cat_embeddings(texts)


def retrieval_recalls(scores: torch.Tensor) -> dict[str, float]:
    """Flat i2t/t2i R@1/5/10 (percent) and r_sum of a square (n_images, n_texts) score
    matrix whose matches lie on the diagonal."""
    from limitr.eval.metrics import image_text_retrieval

    return _flat(image_text_retrieval(scores.detach().float().cpu()))


def _flat(summary: dict) -> dict[str, float]:
    """The flat record (RECALL_KEYS and r_sum) of a ``retrieval_summary``."""
    out = {}
    for key in RECALL_KEYS:
        direction, k = key.split("_", 1)
        out[key] = float(summary[direction][k])
    out["r_sum"] = float(summary["r_sum"])
    return out


def validation_subset(n: int, max_studies: Optional[int], seed: int) -> Optional[np.ndarray]:
    """The sorted indices of at most ``max_studies`` of ``n`` validation studies, drawn once
    with ``seed`` (the same every epoch, so epochs stay comparable); None = all of them."""
    if max_studies is None or n <= max_studies:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=max_studies, replace=False))


def global_cosine(img, txt) -> torch.Tensor:
    """The ``global_`` term of ``model.similarity`` for every pair: (n_images, n_texts)."""
    from limitr.model.alignment import l2norm

    return l2norm(img.global_emb) @ l2norm(txt.global_emb).t()


#: The factors on the local term of the combined score that validation tries when
#: ``model.score_local_weight`` is ``validate`` (0 = the global score alone, 1 = the paper).
LOCAL_WEIGHT_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


class _Direction:
    """One retrieval direction's validation scores: the global matrix (queries, candidates),
    the re-ranked tier (None = every pair scored) and each scored pair's local and global
    terms (NaN where not scored)."""

    def __init__(self, glob: torch.Tensor, tier: Optional[torch.Tensor], local: Optional[torch.Tensor],
                 pair_global: torch.Tensor) -> None:
        self.glob, self.tier, self.local, self.pair_global = glob, tier, local, pair_global

    def ranks(self, model: nn.Module, weight: Optional[float]) -> torch.Tensor:
        """Ranks of each query's match under the combined score with local factor ``weight``
        (None = the model's own; 0 = the global score alone, every pair)."""
        from limitr.eval.metrics import target_ranks

        targets = torch.arange(self.glob.shape[0])
        if weight == 0.0:
            return target_ranks(self.glob, targets, "pessimistic")
        combined = model.combine(self.local, self.pair_global, weight).float()
        if self.tier is None:
            return target_ranks(combined, targets, "pessimistic")
        return target_ranks(torch.where(self.tier, combined, self.glob), targets, "pessimistic", self.tier)


@torch.no_grad()
def _directions(model: nn.Module, img, txt, k: Optional[int], chunk: Optional[int]) -> tuple[_Direction, _Direction]:
    """The (i2t, t2i) validation scores: every pair when ``k`` is None, else each query's
    global top-``k`` candidates scored with ``model.similarity`` (2 n k local pairs)."""
    from limitr.eval.metrics import top_k_mask
    from limitr.eval.scoring import take

    glob = global_cosine(img, txt).float().cpu()
    if k is None:
        full = model.similarity(img, txt, chunk=chunk)
        local = None if full.local is None else full.local.float().cpu()
        g = full.global_.float().cpu()
        return (_Direction(g, None, local, g),
                _Direction(g.T, None, None if local is None else local.T, g.T))
    out = []
    for g, queries, candidates, transpose in ((glob, img, txt, False), (glob.T, txt, img, True)):
        tier = top_k_mask(g, k)
        local = torch.full_like(g, float("nan"))
        pair_global = g.clone()
        has_local = True
        for q in range(g.shape[0]):  # one query against its k candidates: k local pairs
            cand = tier[q].nonzero().squeeze(1)
            one, many = take(queries, slice(q, q + 1)), take(candidates, cand)
            block = model.similarity(many, one, chunk=chunk) if transpose else model.similarity(one, many, chunk=chunk)
            pair_global[q, cand] = block.global_.reshape(-1).float().cpu()
            if block.local is None:
                has_local = False
            else:
                local[q, cand] = block.local.reshape(-1).float().cpu()
        out.append(_Direction(g, tier, local if has_local else None, pair_global))
    return out[0], out[1]


@torch.no_grad()
def reranked_validation_ranks(model: nn.Module, img, txt, k: int, chunk: Optional[int] = None,
                              local_weight: Optional[float] = None):
    """(i2t, t2i) 1-based ranks of the matching pairs when each query's global top-``k``
    candidates are ordered by the combined score (``model.similarity(...).total``, or with the
    local factor ``local_weight``) and the others follow in global order
    (:func:`limitr.eval.metrics.reranked_ranks` on the full matrices gives the same)."""
    i2t, t2i = _directions(model, img, txt, k, chunk)
    return i2t.ranks(model, local_weight), t2i.ranks(model, local_weight)


def choose_local_weight(model: nn.Module, i2t: _Direction, t2i: _Direction,
                        grid: Sequence[float]) -> tuple[float, dict[float, dict[str, float]]]:
    """The factor of ``grid`` whose combined score gives the highest validation r_sum, and
    every factor's figures. Ties go to the paper's 1, then to the smaller factor; with 0 in
    the grid the chosen r_sum is never below the global score's alone."""
    from limitr.eval.metrics import retrieval_summary

    found = {float(w): _flat(retrieval_summary(i2t.ranks(model, float(w)), t2i.ranks(model, float(w))))
             for w in grid}
    best = max(found, key=lambda w: (found[w]["r_sum"], w == 1.0, -w))
    return best, found


@torch.no_grad()
def validate(
    model: nn.Module,
    batches: Iterable[StudyBatch],
    device: torch.device,
    *,
    upsample_to: Optional[int] = None,
    lateral: bool = True,
    autocast_dtype: Optional[torch.dtype] = None,
    chunk: Optional[int] = None,
    progress: ProgressFn = None,
    rerank_top_k: Optional[int] = None,
    local_weights: Optional[Sequence[float]] = None,
) -> dict[str, float]:
    """Recalls (percent), r_sum, the study count ``n`` and the local factor of the combined
    score ``score_local_weight`` of the studies of ``batches``, scored with
    ``model.similarity(..., chunk=chunk)``: all against all when ``rerank_top_k`` is None (or
    not below n), else the global top-K of each query re-ranked by the combined score (see the
    module docstring). ``local_weights``: factors to choose from on these figures
    (:func:`choose_local_weight`; None = the model's own); ``r_sum_global`` is the global
    score's alone."""
    img, txt = embed_studies(
        model,
        batches,
        device,
        upsample_to=upsample_to,
        lateral=lateral,
        autocast_dtype=autocast_dtype,
        progress=progress,
    )
    from limitr.eval.metrics import retrieval_summary

    n = int(img.global_emb.shape[0])
    was_training = model.training
    model.eval()
    try:  # scores in float32 (the embeddings already are), as in training
        k = None if rerank_top_k is None or rerank_top_k >= n else rerank_top_k
        i2t, t2i = _directions(model, img, txt, k, chunk)
        if local_weights and i2t.local is not None:
            weight, found = choose_local_weight(model, i2t, t2i, local_weights)
            out = dict(found[weight])
        else:
            weight = model.config.local_score_factor
            out = _flat(retrieval_summary(i2t.ranks(model, None), t2i.ranks(model, None)))
        out["r_sum_global"] = _flat(retrieval_summary(i2t.ranks(model, 0.0), t2i.ranks(model, 0.0)))["r_sum"]
    finally:
        model.train(was_training)
    out["n"] = float(n)
    out["score_local_weight"] = float(weight)
    return out
