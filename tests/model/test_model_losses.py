"""Losses: parity with plain per-row / per-pair references, and known answers."""

from __future__ import annotations

import math

import pytest
import torch

import model_reference as ref
from limitr.model.alignment import LocalAlignment
from limitr.model.losses import (
    contrastive_loss,
    global_loss,
    local_external_loss,
    local_internal_loss,
)

D = 8


def test_contrastive_known_answers():
    # Uniform logits: each cross-entropy is log(B).
    assert contrastive_loss(torch.zeros(4, 4)).item() == pytest.approx(2 * math.log(4))
    # A dominant diagonal: nearly zero.
    assert contrastive_loss(100 * torch.eye(3)).item() == pytest.approx(0.0, abs=1e-12)


def test_contrastive_uses_rows_and_columns():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(contrastive_loss(logits), ref.contrastive(logits), rtol=0, atol=1e-12)
    # Not symmetric in general: a row-only implementation would give a different value.
    skew = logits.clone()
    skew[0, 1] += 3.0
    assert contrastive_loss(skew) != pytest.approx(2 * ref.cross_entropy_rows(skew).item())


def test_global_loss_matches_reference():
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(5, D, generator=g, dtype=torch.float64), torch.randn(5, D, generator=g, dtype=torch.float64)
    cos = ref.cosine_matrix(img, txt)
    torch.testing.assert_close(global_loss(cos, 10.0), ref.contrastive(10.0 * cos), rtol=0, atol=1e-12)


def test_local_external_averages_the_directions():
    g = torch.Generator().manual_seed(2)
    cap, img = torch.rand(4, 4, generator=g, dtype=torch.float64), torch.rand(4, 4, generator=g, dtype=torch.float64)
    want = (ref.contrastive(10 * cap) + ref.contrastive(10 * img)) / 2
    torch.testing.assert_close(local_external_loss(cap, img, 10.0), want, rtol=0, atol=1e-12)
    torch.testing.assert_close(local_external_loss(cap, None, 10.0), ref.contrastive(10 * cap), rtol=0, atol=1e-12)
    torch.testing.assert_close(local_external_loss(None, img, 10.0), ref.contrastive(10 * img), rtol=0, atol=1e-12)


@pytest.mark.parametrize("weighting", ["saf", "uniform"])
def test_local_internal_matches_reference(weighting):
    torch.manual_seed(0)
    align = LocalAlignment(D, temp1=4.0, saf_dropout=0.0).double().eval()
    g = torch.Generator().manual_seed(3)
    words = torch.randn(3, 5, D, generator=g, dtype=torch.float64)
    word_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    regions = torch.randn(3, 6, D, generator=g, dtype=torch.float64)
    region_mask = torch.ones(3, 6, dtype=torch.bool)
    region_mask[1, 3:] = False
    words_g, regions_g = words.clone().requires_grad_(), regions.clone().requires_grad_()
    matched = align.matched(words_g, word_mask, regions_g, region_mask, with_weights=weighting == "saf")
    got = local_internal_loss(matched, words_g, word_mask, regions_g, region_mask, weighting)
    words_r, regions_r = words.clone().requires_grad_(), regions.clone().requires_grad_()
    want = ref.local_internal(align, words_r, word_mask, regions_r, region_mask, weighting)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # Gradients agree too (SAF weights are constants of the loss in both).
    got.backward()
    want.backward()
    torch.testing.assert_close(words_g.grad, words_r.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(regions_g.grad, regions_r.grad, rtol=1e-9, atol=1e-12)
    assert torch.all(words_g.grad[~word_mask] == 0) and torch.all(regions_g.grad[~region_mask] == 0)


def test_local_internal_is_small_when_contexts_are_the_items():
    """Known answer: when each item's context is the item itself and items are orthogonal,
    the diagonal wins by 1 / temperature = 10 logits against every other item."""
    words = torch.eye(4, dtype=torch.float64).unsqueeze(0) * 3
    regions = torch.eye(4, dtype=torch.float64).unsqueeze(0)
    mask = torch.ones(1, 4, dtype=torch.bool)

    class Matched:
        word_context = words
        region_context = regions
        word_weights = region_weights = None

    loss = local_internal_loss(Matched, words, mask, regions, mask, "uniform")
    per_item = -math.log(math.exp(10) / (math.exp(10) + 3))
    assert loss.item() == pytest.approx(0.1 * per_item, rel=1e-9)
