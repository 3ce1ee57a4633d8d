"""Model inputs shared by the model tests: a few studies and reports of different lengths."""

from __future__ import annotations

import torch

SIZE = 32  # 32-px images: a 2 x 2 region grid per view


def studies(b: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frontal = torch.randn(b, 3, SIZE, SIZE, generator=g)
    lateral = torch.randn(b, 3, SIZE, SIZE, generator=g)
    has_lateral = torch.tensor([True, False, True, False, True, True][:b])
    return frontal, lateral, has_lateral


def reports(b: int = 4, seed: int = 0):
    """Distinct token sequences of different lengths; word ids with multi-piece words."""
    g = torch.Generator().manual_seed(seed)
    t = 10
    ids = torch.randint(5, 60, (b, t), generator=g)
    ids[:, 0] = 2
    lengths = torch.tensor([10, 6, 8, 4, 9, 7][:b])
    attention = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).long()
    word_ids = torch.full((b, t), -1)
    for i, n in enumerate(lengths.tolist()):
        pieces = torch.arange(n - 2) // 2 if i % 2 else torch.arange(n - 2)  # two pieces per word
        word_ids[i, 1 : n - 1] = pieces
        ids[i, n - 1] = 3
    ids = ids * attention
    return ids, attention, word_ids
