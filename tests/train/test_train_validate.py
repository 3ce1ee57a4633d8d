"""Validation figures on crafted score matrices, and the concatenation of embeddings."""

from __future__ import annotations

import torch

from limitr.model.outputs import TextEmbeddings
from limitr.train.validate import RECALL_KEYS, cat_embeddings, retrieval_recalls


def test_recalls_known_answers() -> None:
    n = 20
    perfect = retrieval_recalls(torch.eye(n))
    assert all(perfect[k] == 100.0 for k in RECALL_KEYS) and perfect["r_sum"] == 600.0

    # Every image ranks its own report second (behind the next study's); texts likewise.
    scores = torch.eye(n) + 2.0 * torch.roll(torch.eye(n), 1, dims=1)
    second = retrieval_recalls(scores)
    assert second["i2t_R@1"] == 0.0 and second["i2t_R@5"] == 100.0
    assert second["t2i_R@1"] == 0.0 and second["t2i_R@10"] == 100.0
    assert second["r_sum"] == 400.0


def test_recalls_of_a_plain_count() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(30, 30, generator=gen)
    figures = retrieval_recalls(scores)
    for k in (1, 5, 10):
        i2t = sum(int((scores[i] > scores[i, i]).sum()) < k for i in range(30)) / 30 * 100
        t2i = sum(int((scores[:, j] > scores[j, j]).sum()) < k for j in range(30)) / 30 * 100
        assert abs(figures[f"i2t_R@{k}"] - i2t) < 1e-9 and abs(figures[f"t2i_R@{k}"] - t2i) < 1e-9


def test_cat_embeddings_pads_reports_with_masked_zeros() -> None:
    a = TextEmbeddings(torch.ones(2, 4), torch.ones(2, 3, 4), torch.ones(2, 3, dtype=torch.bool))
    b = TextEmbeddings(torch.full((1, 4), 2.0), torch.full((1, 5, 4), 2.0), torch.ones(1, 5, dtype=torch.bool))
    c = cat_embeddings([a, b])
    assert c.local.shape == (3, 5, 4) and c.local_mask.shape == (3, 5)
    assert c.local_mask[:2, 3:].sum() == 0 and c.local[:2, 3:].abs().sum() == 0
    assert torch.equal(c.local[2], b.local[0]) and torch.equal(c.global_emb[:2], a.global_emb)
