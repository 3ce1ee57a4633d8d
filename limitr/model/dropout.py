"""Dropout with a fast random source on the CPU, for the SAF and the text encoder.

torch's CPU dropout draws its Bernoulli mask from a Mersenne Twister, about 7 ns per
element on the 2-core machine the defaults are tuned on: in one training step of the default
model the text encoder's dropouts took 127 ms and the SAF's keep masks 80 ms, of a 1.5 s step
(bf16). Here a mask takes one 64-bit seed from torch's global generator (so that
``torch.manual_seed``, the RNG state a checkpoint saves, and with it exact resume govern it
as before), and numpy's SFC64 generator expands it into 64 random bits per four elements,
about 2.5 times faster; each element keeps with probability
(32768 - threshold) / 65536, i.e. p is quantised to 1/65536 (0.1 -> 0.100006), and the
rescale factor is one over that exact keep probability, so the expectation is unchanged.
On accelerators torch's own dropout (counter-based, fast there) is used.

:func:`install` puts it into a BERT-family model from transformers: every ``nn.Dropout``
module (embeddings, attention output, feed-forward output) becomes :class:`Dropout`, and
the attention-probability dropout, which transformers applies inside its attention
function, goes through :func:`attention`, registered with transformers' own
``AttentionInterface`` (sdpa whenever no dropout is applied, so inference is unchanged).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

#: The name :func:`attention` is registered under in transformers' AttentionInterface.
ATTENTION_NAME = "limitr_sdpa"


def keep_mask(
    shape: torch.Size | tuple[int, ...], p: float, device: torch.device, out: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, float]:
    """A Bernoulli keep mask (bool, P(keep) = 1 - p up to 1/65536) and its rescale factor,
    written into ``out`` (bool, contiguous, of ``shape``) when given.

    To apply it in place, multiply by ``mask.view(torch.uint8)``: a product with the bool
    mask itself converts the mask to floats first (a copy, about 5 times slower here), and
    ``masked_fill_`` is not vectorised on the CPU (about 12 times slower).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if device.type != "cpu":
        keep = torch.rand(shape, device=device) >= p
        return (out.copy_(keep) if out is not None else keep), 1.0 / (1.0 - p)
    numel = math.prod(shape)
    threshold = int(round(p * 65536)) - 32768
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    bits = torch.from_numpy(np.random.SFC64(seed).random_raw((numel + 3) // 4).view(np.int16)[:numel]).view(shape)
    keep = torch.ge(bits, threshold, out=out) if out is not None else bits >= threshold
    return keep, 65536.0 / (32768 - threshold)


def apply_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``nn.functional.dropout`` with the fast CPU mask (torch's own elsewhere)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return nn.functional.dropout(x, p, training=True)
    keep, scale = keep_mask(x.shape, p, x.device)
    return x.mul(keep.view(torch.uint8)).mul_(scale)  # the uint8 view: see keep_mask


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, same ``train``/``eval`` behaviour) with the fast CPU mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return apply_dropout(x, self.p, self.training)


def attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention, except on the CPU with an attention dropout: then the
    eager computation (softmax of the scaled, masked logits, dropout, times the values) with
    the fast mask. Masks come in sdpa's format (bool, True = attend; or additive floats)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if dropout == 0.0 or query.device.type != "cpu" or kwargs.get("is_causal"):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    logits = torch.matmul(query, key.transpose(2, 3)) * scale
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attention_mask, float("-inf"))
        else:
            logits = logits + attention_mask
    weights = apply_dropout(logits.softmax(dim=-1), dropout)
    out = torch.matmul(weights.to(value.dtype), value)
    return out.transpose(1, 2).contiguous(), None


def install(model: nn.Module) -> bool:
    """Put the fast dropout into ``model`` (in place). Returns whether the attention dropout
    was rerouted too (only for models on transformers' sdpa attention, where the
    ``AttentionInterface`` exists; the others keep theirs)."""
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, Dropout(child.p, inplace=child.inplace))
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) not in ("sdpa", ATTENTION_NAME):
        return False
    try:
        from transformers import AttentionInterface, AttentionMaskInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    except ImportError:  # an older transformers: its attention keeps torch's dropout
        return False
    AttentionInterface.register(ATTENTION_NAME, attention)
    AttentionMaskInterface.register(ATTENTION_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    try:
        model.set_attn_implementation(ATTENTION_NAME)
    except (AttributeError, ValueError):
        return False
    return True
