"""The three LIMITR losses on matched batches (method.md, "Losses").

Score matrices are (n_images, n_texts) with the matching pairs on the diagonal. Each
contrastive term is the cross-entropy over the rows (image -> its report among all
reports) plus the cross-entropy over the columns (report -> its study), summed, as the
public code does.

The losses compute in float32 at least, with autocast off: low-precision score matrices
and contexts are upcast first, since the cross-entropies' log-sum-exps and batch means
need more than bf16's 8 bits.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from limitr.model.alignment import MatchedAlignment, l2norm
from limitr.model.precision import full_precision, upcast

#: Temperature of the local internal loss (method.md).
INTERNAL_TEMPERATURE = 0.1
#: The local internal loss is scaled by this factor (method.md).
INTERNAL_SCALE = 0.1


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """CE over rows + CE over columns of a square (B, B) logit matrix, positives on the diagonal."""
    if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"contrastive_loss needs a square matrix, got {tuple(logits.shape)}")
    logits = upcast(logits)
    targets = torch.arange(logits.shape[0], device=logits.device)
    with full_precision(logits):
        return F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)


def local_external_loss(
    caption: Optional[torch.Tensor], image: Optional[torch.Tensor], temp3: float
) -> torch.Tensor:
    """Mean over the enabled directions of contrastive_loss(temp3 * score). caption, image: (B, B)."""
    terms = [contrastive_loss(temp3 * s) for s in (caption, image) if s is not None]
    if not terms:
        raise ValueError("local_external_loss needs at least one direction's scores")
    return torch.stack(terms).mean()


def global_loss(cosine: torch.Tensor, temp3: float) -> torch.Tensor:
    """contrastive_loss(temp3 * cosine) for the (B, B) cosine matrix of global embeddings."""
    return contrastive_loss(temp3 * cosine)


def _self_contrast(
    items: torch.Tensor, contexts: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Per pair: each item's context must be nearest its own item among the pair's items.

    items, contexts: (B, K, D); mask: (B, K); weights: (B, K), zero where masked, each
    row summing to one. logits[b, k, k'] = cos(item_k, context_k') / temperature; the
    row (item k against all contexts) and the column (context k against all items)
    cross-entropies with target k are averaged, weighted by weights[b, k] and summed
    over k; the result is the mean over the batch.
    """
    items, contexts, weights = l2norm(items), l2norm(contexts), upcast(weights)  # float32 at least
    with full_precision(items):
        logits = torch.bmm(items, contexts.transpose(1, 2)) / INTERNAL_TEMPERATURE
        keep_cols = mask.unsqueeze(1)  # (B, 1, K): which k' may be chosen
        rows = torch.log_softmax(logits.masked_fill(~keep_cols, float("-inf")), dim=-1)
        cols = torch.log_softmax(logits.masked_fill(~keep_cols.transpose(1, 2), float("-inf")), dim=-2)
        # The diagonal holds the targets; masked k have weight zero and are zeroed first
        # (their log-probabilities are -inf and 0 * -inf would be NaN).
        nll = -(rows.diagonal(dim1=1, dim2=2) + cols.diagonal(dim1=1, dim2=2)) / 2
        nll = nll.masked_fill(~mask, 0.0)
        return (weights * nll).sum(dim=1).mean()


def uniform_weights(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, K) weights 1 / (number kept) where ``mask`` holds, else 0."""
    m = mask.to(dtype)
    return m / m.sum(dim=1, keepdim=True).clamp_min(1.0)


def local_internal_loss(
    matched: MatchedAlignment,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    regions: torch.Tensor,
    region_mask: torch.Tensor,
    weighting: str = "saf",
) -> torch.Tensor:
    """Within each matched pair, words vs their visual contexts and regions vs their text contexts.

    words: (B, N, D), regions: (B, M, D) with masks (B, N) / (B, M); ``matched`` holds the
    contexts (and SAF weights when ``weighting == "saf"``). Cosine similarities at
    temperature 0.1 (the features are normalised so that the temperature has its usual
    meaning); the word and region terms are averaged and the sum scaled by 1/10.

    The SAF weights are detached: they choose which items count, and a gradient through
    them would let the loss fall by ignoring hard items instead of aligning them.
    """
    if weighting == "saf":
        if matched.word_weights is None or matched.region_weights is None:
            raise ValueError("SAF weighting needs MatchedAlignment computed with with_weights=True")
        w_words = matched.word_weights.detach()
        w_regions = matched.region_weights.detach()
    elif weighting == "uniform":
        w_words = uniform_weights(word_mask, words.dtype)
        w_regions = uniform_weights(region_mask, regions.dtype)
    else:
        raise ValueError(f"unknown internal weighting {weighting!r}")
    word_term = _self_contrast(words, matched.word_context, word_mask, w_words)
    region_term = _self_contrast(regions, matched.region_context, region_mask, w_regions)
    return INTERNAL_SCALE * (word_term + region_term) / 2
