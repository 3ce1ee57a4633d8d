"""Local alignment of words and image regions, for all (report, study) pairs at once.

Text-to-image (caption) direction, per pair: every word attends over the regions,
a_kj = s * w_k . r_j (s = model.attention_scale, 1 in the method) normalised first over
the words k, then (times temp1) over the regions j; c_k = sum_j a_kj r_j; SAF pooling of
s_k = l2norm(c_k * w_k); score = sigmoid(h_cap . v).
Image-to-text (image) direction: the roles swapped, with SAF over the study's regions
(frontal and, where present, lateral) and its own head h_img. The SAF module is shared.

Missing lateral regions and word padding are masks (True = keep) used in every softmax
and mean. All pairs are computed with batched matrix products, in chunks of reports
when asked; a chunk loop is the only Python loop.

Under autocast the attention-context products and the SAF projections run in the autocast
dtype; the attention logits and softmaxes, norms and the score heads stay in float32
(:mod:`limitr.model.precision` says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from limitr.model.precision import compute_dtype, full_precision, upcast
from limitr.model.saf import NORM_EPS, SAF

#: Without gradients, each (report chunk x study group) block keeps its (pairs, K, D)
#: tensors under this many elements (128 MB in float32), whatever the caller's chunk:
#: evaluation scores hundreds of studies against hundreds of reports per call.
INFERENCE_BLOCK_ELEMENTS = 1 << 25


def _mask_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where ``mask`` keeps, -inf where it drops: added before a softmax, it masks it in
    the same pass that the softmax's input is formed (exactly as a fill with -inf would)."""
    return torch.zeros((), dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def _two_step(logits, first_dim, first_bias, second_dim, second_bias, temp1):
    first = torch.softmax(logits + first_bias, dim=first_dim)
    # second_bias + temp1 * first: the scale and the second mask in one pass.
    second = torch.softmax(torch.add(second_bias, first, alpha=temp1), dim=second_dim)
    return first, second


class _TwoStepAttention(torch.autograd.Function):
    """Both softmaxes with a hand-written backward: two softmax backwards and one in-place
    scale, where autograd of the plain ops also runs a pass for each mask and the scale
    (the logits are pairs x words x regions, the largest tensor of the step's attention)."""

    @staticmethod
    def forward(ctx, logits, first_dim, first_bias, second_dim, second_bias, temp1):  # type: ignore[override]
        first, second = _two_step(logits, first_dim, first_bias, second_dim, second_bias, temp1)
        ctx.save_for_backward(first, second)
        ctx.dims, ctx.temp1 = (first_dim, second_dim), temp1
        return second

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        first, second = ctx.saved_tensors
        first_dim, second_dim = ctx.dims
        # Masked entries have probability 0, so their gradients come out 0 with no mask.
        g = torch._softmax_backward_data(grad.to(second.dtype), second, second_dim, second.dtype)
        g.mul_(ctx.temp1)
        g = torch._softmax_backward_data(g, first, first_dim, first.dtype)
        return g, None, None, None, None, None


def two_step_attention(
    logits: torch.Tensor,
    first_dim: int,
    first_mask: torch.Tensor,
    second_dim: int,
    second_mask: torch.Tensor,
    temp1: float,
) -> torch.Tensor:
    """GLoRIA / LIMITR attention: softmax over ``first_dim``, times temp1, softmax over ``second_dim``.

    Masks are broadcastable to ``logits`` (True = keep); every slice along a softmax's dim
    must keep at least one entry. The result sums to one over ``second_dim`` (the attended items).
    """
    first_bias = _mask_bias(first_mask, logits.dtype)
    second_bias = _mask_bias(second_mask, logits.dtype)
    if torch.is_grad_enabled() and logits.requires_grad:
        return _TwoStepAttention.apply(logits, first_dim, first_bias, second_dim, second_bias, float(temp1))
    return _two_step(logits, first_dim, first_bias, second_dim, second_bias, float(temp1))[1]


def l2norm(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x / max(|x|, eps) along ``dim``, in float32 when ``x`` is fp16 or bf16 (the norm sums
    D squares, and the unit vectors feed cosines and score heads)."""
    x = upcast(x)
    with full_precision(x):
        return x / torch.linalg.vector_norm(x, dim=dim, keepdim=True).clamp_min(NORM_EPS)


def region_groups(region_mask: torch.Tensor) -> list[tuple[Optional[torch.Tensor], int]]:
    """Studies grouped by how many leading regions they keep: ``[(index, n_keep), ...]``.

    A study without a lateral view keeps only its frontal regions, the first half of M: in
    the image-to-text direction its lateral half would cost as much SAF work as a real view
    and add exactly nothing (masked out of the weights, the mean and the pooled sum). When
    every study's mask is such a prefix, each group runs with its own M; otherwise (or when
    every study keeps all M regions) one group of all studies, ``index`` None, all M.
    """
    n_regions = region_mask.shape[1]
    kept = region_mask.sum(dim=1)
    prefix = torch.arange(n_regions, device=region_mask.device).unsqueeze(0) < kept.unsqueeze(1)
    if bool((kept == n_regions).all()) or not bool(torch.equal(prefix, region_mask)):
        return [(None, n_regions)]
    groups = []
    for n_keep in torch.unique(kept).tolist():
        if n_keep > 0:
            groups.append(((kept == n_keep).nonzero().squeeze(1), int(n_keep)))
    return groups


def _merge_rows(parts: list[tuple[torch.Tensor, torch.Tensor]], n_rows: int) -> torch.Tensor:
    """Rows ``index`` of each part's (rows, T) scores put back into one (n_rows, T) matrix."""
    first = parts[0][1]
    out = first.new_zeros(n_rows, first.shape[1])
    for index, scores in parts:
        out = out.index_copy(0, index, scores)
    return out


@dataclass
class MatchedAlignment:
    """Both attention directions for matched pairs (report b with study b).

    word_attention: (B, N, M) word-to-region attention (sums to 1 over the regions).
    word_context: (B, N, D) visual context c_k of each word.
    region_context: (B, M, D) text context of each region.
    word_weights / region_weights: (B, N) / (B, M) SAF weights of the two directions
        (zero where masked), None when not asked for.
    """

    word_attention: torch.Tensor
    word_context: torch.Tensor
    region_context: torch.Tensor
    word_weights: Optional[torch.Tensor] = None
    region_weights: Optional[torch.Tensor] = None


class LocalAlignment(nn.Module):
    """The shared SAF module and the two sigmoid heads, with the all-pairs scoring."""

    def __init__(self, dim: int, temp1: float, saf_dropout: float, attention_scale: float = 1.0) -> None:
        super().__init__()
        self.temp1 = float(temp1)
        self.attention_scale = float(attention_scale)  # factor on w_k . r_j before the two softmaxes
        self.saf = SAF(dim, saf_dropout)
        self.head_caption = nn.Linear(dim, 1)  # h_cap
        self.head_image = nn.Linear(dim, 1)  # h_img

    def forward(
        self,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        regions: torch.Tensor,
        region_mask: torch.Tensor,
        *,
        caption: bool = True,
        image: bool = True,
        chunk: Optional[int] = None,
    ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Directional local scores of every (study, report) pair.

        words: (T, N, D), word_mask: (T, N) (True for [CLS] and real words);
        regions: (I, M, D), region_mask: (I, M) (True for present regions);
        chunk: reports per chunk (None = all at once); the results do not depend on it.
        Returns (caption, image) score matrices of shape (I, T) in (0, 1), None for a
        direction that is off.
        """
        n_texts = words.shape[0]
        if n_texts == 0 or regions.shape[0] == 0:
            empty = words.new_zeros(regions.shape[0], n_texts)
            return (empty if caption else None), (empty.clone() if image else None)
        step = n_texts if not chunk else max(1, int(chunk))
        # Reports are taken shortest first and each chunk is cut to its own longest
        # report, so chunks of short reports do not pay for the padding of long ones.
        positions = torch.arange(word_mask.shape[1], device=word_mask.device)
        lengths = torch.where(word_mask, positions + 1, 0).amax(dim=1)
        order = torch.argsort(lengths, stable=True) if step < n_texts else None
        n_images, n_regions, dim = regions.shape
        inference = not (
            torch.is_grad_enabled()
            and (words.requires_grad or regions.requires_grad or any(p.requires_grad for p in self.parameters()))
        )
        caption_parts, image_parts = [], []
        for t0 in range(0, n_texts, step):
            idx = order[t0 : t0 + step] if order is not None else slice(t0, t0 + step)
            n_keep = max(int(lengths[idx].max()), 1)
            chunk_words, chunk_mask = words[idx, :n_keep], word_mask[idx, :n_keep]
            group = n_images
            if inference:  # nothing is kept for a backward: bound the block instead
                per_study = chunk_words.shape[0] * (n_keep + n_regions) * dim
                group = max(1, INFERENCE_BLOCK_ELEMENTS // per_study)
            caps, imgs = [], []
            for i0 in range(0, n_images, group):
                cap, img = self._chunk_scores(
                    chunk_words, chunk_mask, regions[i0 : i0 + group], region_mask[i0 : i0 + group], caption, image
                )
                caps.append(cap)
                imgs.append(img)
            caption_parts.append(torch.cat(caps, dim=0) if caption else None)
            image_parts.append(torch.cat(imgs, dim=0) if image else None)
        outputs = []
        for want, parts in ((caption, caption_parts), (image, image_parts)):
            if not want:
                outputs.append(None)
                continue
            scores = torch.cat(parts, dim=1)
            if order is not None:  # back to the callers' report order
                scores = scores.index_select(1, torch.argsort(order))
            outputs.append(scores)
        return outputs[0], outputs[1]

    def _chunk_scores(
        self,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        regions: torch.Tensor,
        region_mask: torch.Tensor,
        caption: bool,
        image: bool,
    ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        n_t, n_w, dim = words.shape
        n_i, n_r, _ = regions.shape
        # One product gives w_k . r_j for every pair, laid out (I, T, N, M). The logits and
        # the two softmaxes run in float32 at least, under autocast too: the second softmax
        # is sharpened by temp1. The scale goes on the (smaller) word side: exact for powers
        # of two such as 1/64.
        with full_precision(words):
            query = (upcast(words) * self.attention_scale).reshape(n_t * n_w, dim)
            logits = torch.matmul(query, upcast(regions).transpose(1, 2)).view(n_i, n_t, n_w, n_r)
        wmask = word_mask.view(1, n_t, n_w, 1)
        rmask = region_mask.view(n_i, 1, 1, n_r)
        cap_scores = img_scores = None
        if caption:
            with full_precision(logits):
                attn = two_step_attention(logits, -2, wmask, -1, rmask, self.temp1)
            # Under autocast the context products and the SAF projections run in its dtype.
            context = torch.bmm(attn.view(n_i, n_t * n_w, n_r).to(compute_dtype(regions)), regions).view(n_i, n_t, n_w, dim)
            pooled, _ = self.saf(context, words, word_mask)  # pairs (I, T), float32 at least
            cap_scores = self._head(self.head_caption, pooled)
        if image:
            with full_precision(logits):
                attn = two_step_attention(logits, -1, rmask, -2, wmask, self.temp1)
            parts = []
            for index, n_keep in region_groups(region_mask):
                # Region j's text context, batched per report: (T, I*M, N) @ (T, N, D), over
                # the group's present regions only (index None = every study, all M).
                group_attn = attn.permute(1, 0, 3, 2)
                group_regions, group_mask = regions, region_mask
                if index is not None:
                    group_attn = group_attn[:, index, :n_keep]
                    group_regions, group_mask = regions[index, :n_keep], region_mask[index, :n_keep]
                n_g = group_regions.shape[0]
                attn_t = group_attn.reshape(n_t, n_g * n_keep, n_w).to(compute_dtype(words))
                context = torch.bmm(attn_t, words).view(n_t, n_g, n_keep, dim)
                pooled, _ = self.saf(context, group_regions, group_mask)  # pairs (T, I_g)
                parts.append((index, self._head(self.head_image, pooled).t()))
            img_scores = parts[0][1] if len(parts) == 1 and parts[0][0] is None else _merge_rows(parts, n_i)
        return cap_scores, img_scores

    @staticmethod
    def _head(head: nn.Linear, pooled: torch.Tensor) -> torch.Tensor:
        """sigmoid(h . l2norm(v)) in float32 at least: scores rank many candidates, and a bf16
        score in (0.5, 1) moves in steps of 2^-8."""
        v = l2norm(pooled)
        with full_precision(v):
            return torch.sigmoid(nn.functional.linear(v, upcast(head.weight), upcast(head.bias))).squeeze(-1)

    def matched(
        self,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        regions: torch.Tensor,
        region_mask: torch.Tensor,
        *,
        with_weights: bool = False,
    ) -> MatchedAlignment:
        """Both directions for report b with study b only (no B x B work).

        words: (B, N, D), word_mask: (B, N), regions: (B, M, D), region_mask: (B, M).
        """
        with full_precision(words):  # logits and softmaxes in float32 at least, as in the scores
            logits = torch.bmm(upcast(words) * self.attention_scale, upcast(regions).transpose(1, 2))  # (B, N, M)
            wmask = word_mask.unsqueeze(-1)
            rmask = region_mask.unsqueeze(-2)
            word_attn = two_step_attention(logits, -2, wmask, -1, rmask, self.temp1)
            region_attn = two_step_attention(logits, -1, rmask, -2, wmask, self.temp1)
        word_context = torch.bmm(word_attn.to(compute_dtype(regions)), regions)
        region_context = torch.bmm(region_attn.transpose(1, 2).to(compute_dtype(words)), words)
        out = MatchedAlignment(word_attention=word_attn, word_context=word_context, region_context=region_context)
        if with_weights:
            _, out.word_weights = self.saf(word_context.unsqueeze(0), words, word_mask)
            _, out.region_weights = self.saf(region_context.unsqueeze(0), regions, region_mask)
            out.word_weights = out.word_weights.squeeze(0)
            out.region_weights = out.region_weights.squeeze(0)
        return out
