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


@torch.no_grad()
def reranked_validation_ranks(model: nn.Module, img, txt, k: int, chunk: Optional[int] = None):
    """(i2t, t2i) 1-based ranks of the matching pairs when each query's global top-``k``
    candidates are ordered by ``model.similarity(...).total`` and the others follow in global
    order (:func:`limitr.eval.metrics.reranked_ranks` on the full matrices gives the same)."""
    from limitr.eval.metrics import target_ranks, top_k_mask
    from limitr.eval.scoring import take

    glob = global_cosine(img, txt).float().cpu()
    targets = torch.arange(glob.shape[0])
    ranks = []
    for g, queries, candidates, transpose in ((glob, img, txt, False), (glob.T, txt, img, True)):
        tier = top_k_mask(g, k)
        total = g.clone()
        for q in range(g.shape[0]):  # one query against its k candidates: k local pairs
            cand = tier[q].nonzero().squeeze(1)
            one, many = take(queries, slice(q, q + 1)), take(candidates, cand)
            block = model.similarity(many, one, chunk=chunk) if transpose else model.similarity(one, many, chunk=chunk)
            total[q, cand] = block.total.reshape(-1).float().cpu()
        ranks.append(target_ranks(total, targets, "pessimistic", tier))
    return ranks[0], ranks[1]


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
) -> dict[str, float]:
    """Recalls (percent), r_sum and the study count ``n`` of the studies of ``batches``,
    scored with ``model.similarity(..., chunk=chunk)``: all against all when ``rerank_top_k``
    is None (or not below n), else the global top-K of each query re-ranked by the total
    score (see the module docstring)."""
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
        if rerank_top_k is None or rerank_top_k >= n:
            out = retrieval_recalls(model.similarity(img, txt, chunk=chunk).total)
        else:
            out = _flat(retrieval_summary(*reranked_validation_ranks(model, img, txt, rerank_top_k, chunk)))
    finally:
        model.train(was_training)
    out["n"] = float(n)
    return out
