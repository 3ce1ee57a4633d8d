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


# --- the combined score's local factor, chosen on validation -----------------------------------


def _scorer(**config):
    """Anything with LIMITR's ``combine`` and config, for crafted score matrices."""
    from types import SimpleNamespace

    from limitr.model import LIMITR
    from limitr.model.config import ModelConfig

    holder = SimpleNamespace(config=ModelConfig(**config))
    holder.combine = lambda local, glob, weight=None: LIMITR.combine(holder, local, glob, weight)
    return holder


def _crafted(local: torch.Tensor, glob: torch.Tensor, k=None):
    from limitr.eval.metrics import top_k_mask
    from limitr.train.validate import _Direction

    def one(lo, g):
        tier = None if k is None else top_k_mask(g, k)
        return _Direction(g, tier, lo, g)

    return one(local, glob), one(local.T, glob.T)


def test_chosen_local_weight_known_answers() -> None:
    from limitr.train.validate import LOCAL_WEIGHT_GRID, choose_local_weight

    n = 12
    eye, shifted = torch.eye(n), torch.roll(torch.eye(n), 1, dims=1)
    scorer = _scorer()
    # The global term ranks each match second (0.1 behind), the local term first (0.1 ahead):
    # the local term must weigh more than the global one, so the smallest such factor is 2.
    glob, local = 0.5 + 0.4 * eye + 0.5 * shifted, 0.5 + 0.1 * eye
    for k in (None, 3):
        weight, found = choose_local_weight(scorer, *_crafted(local, glob, k), LOCAL_WEIGHT_GRID)
        assert weight == 2.0 and found[2.0]["r_sum"] == 600.0 and found[0.0]["r_sum"] == 400.0, k
    # A local term that points away from the match: the global score alone.
    weight, _ = choose_local_weight(scorer, *_crafted(0.5 + 0.5 * shifted, 0.5 + 0.2 * eye), LOCAL_WEIGHT_GRID)
    assert weight == 0.0
    # Both terms perfect: every factor ties, and the paper's 1 is kept.
    weight, _ = choose_local_weight(scorer, *_crafted(eye, eye), LOCAL_WEIGHT_GRID)
    assert weight == 1.0


def test_validation_never_ranks_below_the_global_score(tiny_bert) -> None:
    """The invariant: the chosen factor's validation r_sum >= the global score's alone (the
    plain global ranking), on an untrained model, every pair and re-ranked."""
    from limitr.eval.metrics import diagonal_ranks, image_text_retrieval
    from limitr.train.validate import LOCAL_WEIGHT_GRID, _directions, choose_local_weight, global_cosine

    model, img, txt = _tiny_embeddings(tiny_bert)
    plain = image_text_retrieval(global_cosine(img, txt))["r_sum"]
    for k in (None, 5):
        weight, found = choose_local_weight(model, *_directions(model, img, txt, k, None), LOCAL_WEIGHT_GRID)
        assert found[0.0]["r_sum"] == plain
        assert found[weight]["r_sum"] >= plain and found[weight]["r_sum"] == max(f["r_sum"] for f in found.values())
    # The model's own factor (1 while "validate" is unresolved) reproduces its total score.
    with torch.no_grad():
        full = model.similarity(img, txt)
    i2t, t2i = _directions(model, img, txt, None, None)
    assert torch.equal(i2t.ranks(model, None), diagonal_ranks(full.total)[0])


def test_local_weight_round_trips_through_save_and_load(tiny_bert, tmp_path) -> None:
    import dataclasses

    from limitr.model import LIMITR

    model, img, txt = _tiny_embeddings(tiny_bert)
    assert model.config.score_local_weight == "validate" and model.config.local_score_factor == 1.0
    model.config = dataclasses.replace(model.config, score_local_weight=0.25)
    model.save_pretrained(tmp_path / "m")
    loaded = LIMITR.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.score_local_weight == 0.25
    with torch.no_grad():
        a, b = model.similarity(img, txt), loaded.similarity(img, txt)
    torch.testing.assert_close(a.total, b.total, rtol=0, atol=0)
    torch.testing.assert_close(a.total, (0.25 * a.local + a.global_) / 2, rtol=0, atol=0)
    # 0: the global term alone; the training loss does not depend on the factor.
    model.config = dataclasses.replace(model.config, score_local_weight=0.0)
    with torch.no_grad():
        assert torch.equal(model.similarity(img, txt).total, a.global_)
