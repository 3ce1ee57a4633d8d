"""Typed outputs of the LIMITR model. Masks are booleans, True = keep."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import torch


class _TensorBundle:
    def to(self, device) -> "_TensorBundle":
        kwargs = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            kwargs[f.name] = value.to(device) if isinstance(value, torch.Tensor) else value
        return type(self)(**kwargs)

    def detach(self) -> "_TensorBundle":
        kwargs = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            kwargs[f.name] = value.detach() if isinstance(value, torch.Tensor) else value
        return type(self)(**kwargs)


@dataclass
class ImageEmbeddings(_TensorBundle):
    """Per study.

    global_emb: (B, D) global image embedding (mean of frontal and, where present, lateral).
    local: (B, M, D) region features, M = R (frontal only) or 2R (frontal then lateral),
        positional encoding already added when enabled.
    local_mask: (B, M) True for a real region; lateral regions False where no lateral.
    grid: (h, w) of one view's region grid, R = h * w.
    """

    global_emb: torch.Tensor
    local: torch.Tensor
    local_mask: torch.Tensor
    grid: tuple[int, int]


@dataclass
class TextEmbeddings(_TensorBundle):
    """Per report.

    global_emb: (B, D) masked mean of the word embeddings.
    local: (B, N, D) [CLS] then one feature per word (word pieces summed).
    local_mask: (B, N) True for [CLS] and real words; False for padding.
    """

    global_emb: torch.Tensor
    local: torch.Tensor
    local_mask: torch.Tensor


@dataclass
class Scores(_TensorBundle):
    """Score matrices of shape (n_images, n_texts): entry [i, j] scores image i with text j.

    caption / image: the directional local scores (None when that direction is off);
    local: mean of the enabled directions; global_: cosine of global embeddings;
    total: the combined score used for ranking.
    """

    total: torch.Tensor
    global_: torch.Tensor
    local: Optional[torch.Tensor]
    caption: Optional[torch.Tensor]
    image: Optional[torch.Tensor]


@dataclass
class Losses(_TensorBundle):
    """Scalar losses; total = w_le * local_external + w_li * local_internal + w_g * global_."""

    total: torch.Tensor
    local_external: torch.Tensor
    local_internal: torch.Tensor
    global_: torch.Tensor
