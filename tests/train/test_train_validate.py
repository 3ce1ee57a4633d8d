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


def _tiny_embeddings(bert, n: int = 24):
    """A tiny untrained LIMITR (eval mode) and the embeddings of ``n`` random studies."""
    from limitr.model import LIMITR
    from limitr.model.config import ModelConfig
    from train_data_factory import tiny_model_dict

    torch.manual_seed(0)
    model = LIMITR(ModelConfig.from_dict(tiny_model_dict(bert))).eval()
    gen = torch.Generator().manual_seed(1)
    frontal = torch.rand(n, 3, 40, 40, generator=gen) * 2 - 1
    ids = torch.randint(5, 60, (n, 9), generator=gen)
    ids[:, 0], ids[:, -1] = 1, 2
    mask = torch.ones(n, 9, dtype=torch.int64)
    words = torch.arange(9).repeat(n, 1) - 1
    words[:, -1] = -1
    with torch.no_grad():
        img = model.encode_images(frontal, None, torch.zeros(n, dtype=torch.bool))
        txt = model.encode_text(ids, mask, words)
    return model, img, txt


def test_reranked_validation_equals_reranking_the_full_matrices(tiny_bert) -> None:
    """Scoring only each query's global top-K gives the ranks of re-ranking the full matrices."""
    from limitr.eval.metrics import reranked_ranks
    from limitr.train.validate import global_cosine, reranked_validation_ranks

    model, img, txt = _tiny_embeddings(tiny_bert)
    with torch.no_grad():
        full = model.similarity(img, txt)
    torch.testing.assert_close(global_cosine(img, txt), full.global_, rtol=0, atol=1e-6)
    for k in (3, 10):
        want_i2t, want_t2i = reranked_ranks(full.total, full.global_, k)
        got_i2t, got_t2i = reranked_validation_ranks(model, img, txt, k)
        assert torch.equal(got_i2t, want_i2t) and torch.equal(got_t2i, want_t2i), k
    # Top-K re-ranking differs from ranking every pair by the total score (else the test
    # above would not tell the two apart).
    all_pairs = retrieval_recalls(full.total)
    reranked = {key: v for key, v in zip(("i2t", "t2i"), reranked_ranks(full.total, full.global_, 3))}
    assert any(float((reranked["i2t"] <= k).double().mean() * 100) != all_pairs[f"i2t_R@{k}"] for k in (5, 10)) or \
        any(float((reranked["t2i"] <= k).double().mean() * 100) != all_pairs[f"t2i_R@{k}"] for k in (5, 10))


def test_validation_subset_is_fixed_and_bounded() -> None:
    from limitr.train.validate import validation_subset

    assert validation_subset(50, None, 0) is None and validation_subset(50, 50, 0) is None
    a, b = validation_subset(50, 20, 3), validation_subset(50, 20, 3)
    assert len(a) == 20 and (a == b).all() and (a[1:] > a[:-1]).all() and a.max() < 50
    assert not (validation_subset(50, 20, 4) == a).all()
