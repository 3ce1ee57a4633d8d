"""The fast CPU dropout: rate and expectation, seeding, and the text encoder's use of it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from limitr.model import dropout as fast


def test_keep_mask_rate_and_rescale_keep_the_expectation() -> None:
    torch.manual_seed(0)
    for p in (0.1, 0.4):
        keep, scale = fast.keep_mask((1000, 1000), p, torch.device("cpu"))
        assert keep.dtype == torch.bool and keep.shape == (1000, 1000)
        rate = keep.float().mean().item()
        assert abs(rate - (1 - p)) < 0.002  # 10^6 draws: the standard error is below 0.0005
        exact = 1 - (round(p * 65536)) / 65536
        assert scale == pytest.approx(1 / exact, rel=0, abs=1e-12)
        y = fast.apply_dropout(torch.ones(1000, 1000), p)  # a new mask: kept entries become the scale
        kept = (y != 0).double().mean().item()
        assert abs(kept - (1 - p)) < 0.002 and torch.equal(y[y != 0], torch.full_like(y[y != 0], scale))
        assert abs(y.double().mean().item() - 1.0) < 0.003  # the expectation is kept


def test_masks_follow_torch_seed_and_differ_between_draws() -> None:
    torch.manual_seed(3)
    a, _ = fast.keep_mask((4, 257), 0.5, torch.device("cpu"))
    b, _ = fast.keep_mask((4, 257), 0.5, torch.device("cpu"))
    torch.manual_seed(3)
    a2, _ = fast.keep_mask((4, 257), 0.5, torch.device("cpu"))
    assert torch.equal(a, a2) and not torch.equal(a, b)
    with pytest.raises(ValueError, match="dropout probability"):
        fast.keep_mask((3,), 1.0, torch.device("cpu"))


def test_dropout_module_is_identity_in_eval_and_zero_rate() -> None:
    x = torch.randn(5, 7, requires_grad=True)
    module = fast.Dropout(0.3).eval()
    assert module(x) is x
    assert fast.apply_dropout(x, 0.0) is x
    module.train()
    y = module(x)
    y.sum().backward()
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] * (65536 / (65536 - round(0.3 * 65536))))
    torch.testing.assert_close(x.grad, kept.float() * (65536 / (65536 - round(0.3 * 65536))))


def _reference_attention(q, k, v, mask, scaling, keep=None, scale=1.0):
    logits = q @ k.transpose(2, 3) * scaling
    logits = logits.masked_fill(~mask, float("-inf"))
    weights = logits.softmax(-1)
    if keep is not None:
        weights = torch.where(keep, weights, 0) * scale
    return (weights @ v).transpose(1, 2)


def test_attention_matches_the_plain_computation_with_and_without_dropout() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[1, :, :, 3:] = False  # the second sequence has two padding tokens
    module = nn.Module()
    module.is_causal = False
    out, _ = fast.attention(module, q, k, v, mask, dropout=0.0, scaling=0.5)
    torch.testing.assert_close(out, _reference_attention(q, k, v, mask, 0.5), rtol=0, atol=1e-12)
    torch.manual_seed(7)
    out, _ = fast.attention(module, q, k, v, mask, dropout=0.25, scaling=0.5)
    torch.manual_seed(7)
    keep, scale = fast.keep_mask((2, 3, 5, 5), 0.25, torch.device("cpu"))
    torch.testing.assert_close(out, _reference_attention(q, k, v, mask, 0.5, keep, scale), rtol=0, atol=1e-12)


def test_text_encoder_uses_it_and_infers_as_before(tiny_text_encoder) -> None:
    from transformers import AutoModel

    from limitr.model.text_encoder import TextEncoder

    encoder = TextEncoder(str(tiny_text_encoder), 8, 0).eval()
    dropouts = [m for m in encoder.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(type(m) is fast.Dropout for m in dropouts)
    assert encoder.bert.config._attn_implementation == fast.ATTENTION_NAME
    plain = AutoModel.from_pretrained(str(tiny_text_encoder)).eval()
    ids = torch.tensor([[2, 7, 8, 9, 3, 0], [2, 5, 3, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        ours = encoder.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        theirs = plain(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(ours, theirs)
    # In training the dropout is live: two passes differ, and gradients reach the weights.
    encoder.train()
    a = encoder.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    b = encoder.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    assert not torch.equal(a, b)
    a.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.bert.parameters() if p.grad is not None)
