"""Validation during training: embed a split once, score every pair, report the recalls.

The retrieval figures come from :mod:`limitr.eval.metrics` so that validation and the
evaluate stage count ranks (and ties) the same way; scores come from ``model.similarity``,
the one scoring function of the project.
"""

from __future__ import annotations

import contextlib
from dataclasses import fields
from typing import Iterable, Optional, Sequence, TypeVar

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

    summary = image_text_retrieval(scores.detach().float().cpu())
    out = {}
    for key in RECALL_KEYS:
        direction, k = key.split("_", 1)
        out[key] = float(summary[direction][k])
    out["r_sum"] = float(summary["r_sum"])
    return out


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
) -> dict[str, float]:
    """Recalls (percent), r_sum and the study count ``n`` of the studies of ``batches``,
    scored all against all with ``model.similarity(..., chunk=chunk)``."""
    img, txt = embed_studies(
        model,
        batches,
        device,
        upsample_to=upsample_to,
        lateral=lateral,
        autocast_dtype=autocast_dtype,
        progress=progress,
    )
    was_training = model.training
    model.eval()
    try:  # scores in float32 (the embeddings already are), as in training
        scores = model.similarity(img, txt, chunk=chunk)
    finally:
        model.train(was_training)
    out = retrieval_recalls(scores.total)
    out["n"] = float(img.global_emb.shape[0])
    return out
