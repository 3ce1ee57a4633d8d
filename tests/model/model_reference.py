"""Slow, plain references of the LIMITR scores and losses, one pair and one item at a time.

Padding and missing lateral regions are handled by leaving them out (slicing), not by
masks, so that the masked batched code is checked against an independent formulation.
Run them in float64.
"""

from __future__ import annotations

import math

import torch


def normalize(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x).clamp_min(1e-8)


def saf_pool(saf, sims: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAF over the K similarity vectors of one pair (K, D) -> (v unnormalised, weights (K,))."""
    mean = sims.mean(dim=0)
    gate = torch.tanh(saf.mean_proj(mean))
    logits = []
    for k in range(sims.shape[0]):
        h = torch.tanh(saf.local_proj(sims[k]))
        logits.append(saf.weight_proj(h * gate)[0])
    weights = torch.softmax(torch.stack(logits), dim=0)
    pooled = sum(weights[k] * sims[k] for k in range(sims.shape[0]))
    return pooled, weights


def pair_alignment(align, words: torch.Tensor, regions: torch.Tensor) -> dict:
    """Both directions for one pair. words (n, D) and regions (m, D) hold real items only."""
    n, m = words.shape[0], regions.shape[0]
    logits = torch.stack([torch.stack([words[k] @ regions[j] for j in range(m)]) for k in range(n)])
    logits = align.attention_scale * logits
    # Text to image: softmax over the words, then temp1 and softmax over the regions.
    over_words = torch.softmax(logits, dim=0)
    word_attn = torch.softmax(align.temp1 * over_words, dim=1)
    word_ctx = torch.stack([sum(word_attn[k, j] * regions[j] for j in range(m)) for k in range(n)])
    s_cap = torch.stack([normalize(word_ctx[k] * words[k]) for k in range(n)])
    v_cap, w_cap = saf_pool(align.saf, s_cap)
    caption = torch.sigmoid(align.head_caption(normalize(v_cap)))[0]
    # Image to text: softmax over the regions, then temp1 and softmax over the words.
    over_regions = torch.softmax(logits, dim=1)
    region_attn = torch.softmax(align.temp1 * over_regions, dim=0)  # (n, m), sums to 1 over words
    region_ctx = torch.stack([sum(region_attn[k, j] * words[k] for k in range(n)) for j in range(m)])
    s_img = torch.stack([normalize(region_ctx[j] * regions[j]) for j in range(m)])
    v_img, w_img = saf_pool(align.saf, s_img)
    image = torch.sigmoid(align.head_image(normalize(v_img)))[0]
    return {
        "caption": caption,
        "image": image,
        "word_attention": word_attn,
        "word_context": word_ctx,
        "region_context": region_ctx,
        "word_weights": w_cap,
        "region_weights": w_img,
    }


def all_pair_scores(align, words, word_mask, regions, region_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(caption, image) score matrices (n_images, n_texts), one pair at a time."""
    n_img, n_txt = regions.shape[0], words.shape[0]
    cap_rows, img_rows = [], []
    for i in range(n_img):
        cap_row, img_row = [], []
        for t in range(n_txt):
            out = pair_alignment(align, words[t][word_mask[t]], regions[i][region_mask[i]])
            cap_row.append(out["caption"])
            img_row.append(out["image"])
        cap_rows.append(torch.stack(cap_row))
        img_rows.append(torch.stack(img_row))
    return torch.stack(cap_rows), torch.stack(img_rows)


def cross_entropy_rows(logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows i of -log softmax(logits[i])[i]."""
    total = 0.0
    for i in range(logits.shape[0]):
        total = total - (logits[i, i] - torch.logsumexp(logits[i], dim=0))
    return total / logits.shape[0]


def contrastive(logits: torch.Tensor) -> torch.Tensor:
    return cross_entropy_rows(logits) + cross_entropy_rows(logits.t())


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.stack([normalize(a[i]) @ normalize(b[j]) for j in range(b.shape[0])]) for i in range(a.shape[0])])


def self_contrast(items: torch.Tensor, contexts: torch.Tensor, weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """One pair, real items only: weighted mean of (row CE + column CE) / 2 with target k."""
    k_count = items.shape[0]
    sims = torch.stack(
        [torch.stack([normalize(items[a]) @ normalize(contexts[b]) for b in range(k_count)]) for a in range(k_count)]
    ) / temperature
    total = 0.0
    for k in range(k_count):
        row = -(sims[k, k] - torch.logsumexp(sims[k, :], dim=0))
        col = -(sims[k, k] - torch.logsumexp(sims[:, k], dim=0))
        total = total + weights[k] * (row + col) / 2
    return total


def local_internal(align, words, word_mask, regions, region_mask, weighting: str) -> torch.Tensor:
    """The local internal loss of a matched batch, one pair and one item at a time."""
    word_terms, region_terms = [], []
    for b in range(words.shape[0]):
        w, r = words[b][word_mask[b]], regions[b][region_mask[b]]
        out = pair_alignment(align, w, r)
        if weighting == "saf":
            ww, rw = out["word_weights"].detach(), out["region_weights"].detach()
        else:
            ww = torch.full((w.shape[0],), 1.0 / w.shape[0], dtype=w.dtype)
            rw = torch.full((r.shape[0],), 1.0 / r.shape[0], dtype=r.dtype)
        word_terms.append(self_contrast(w, out["word_context"], ww, 0.1))
        region_terms.append(self_contrast(r, out["region_context"], rw, 0.1))
    word_term = sum(word_terms) / len(word_terms)
    region_term = sum(region_terms) / len(region_terms)
    return 0.1 * (word_term + region_term) / 2


def sincos_reference(height: int, width: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """The 2-D encoding entry by entry: blocks sin x, cos x, sin y, cos y."""
    quarter = dim // 4
    out = torch.zeros(height * width, dim, dtype=torch.float64)
    for y in range(height):
        for x in range(width):
            for i in range(quarter):
                omega = temperature ** (-i / max(quarter - 1, 1))
                row = y * width + x
                out[row, i] = math.sin(x * omega)
                out[row, quarter + i] = math.cos(x * omega)
                out[row, 2 * quarter + i] = math.sin(y * omega)
                out[row, 3 * quarter + i] = math.cos(y * omega)
    return out


def pool_reference(
    saf, context: torch.Tensor, feature: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same pooling written with plain autograd tensor ops (no tiling, no custom backward).

    Shapes as :meth:`limitr.model.saf.SAF.forward`; the dropout is applied with
    ``torch.nn.functional.dropout`` when the module is training. Batched like the kernel,
    so its gradients are checked against autograd of these plain ops.
    """
    s = context * feature
    s = s / torch.linalg.vector_norm(s, dim=-1, keepdim=True).clamp_min(1e-8)
    maskf = mask.to(s.dtype)
    mean = (s * maskf.unsqueeze(-1)).sum(dim=-2) / maskf.sum(dim=-1, keepdim=True).clamp_min(1.0)
    p = saf.dropout if saf.training else 0.0
    h = torch.nn.functional.dropout(torch.tanh(saf.local_proj(s)), p, saf.training)
    g = torch.nn.functional.dropout(torch.tanh(saf.mean_proj(mean)), p, saf.training)
    e = saf.weight_proj(h * g.unsqueeze(-2)).squeeze(-1).masked_fill(~mask, float("-inf"))
    weights = torch.softmax(e, dim=-1)
    return torch.matmul(weights.unsqueeze(-2), s).squeeze(-2), weights
