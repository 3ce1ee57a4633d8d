"""bf16 autocast: the large products run in bf16, scores and losses stay close to float32.

Tolerances. bf16 keeps 8 significant bits: one rounding is off by at most 2^-9 relative.
- SAF and local scores on fixed float32 features: the products that decide the pooled
  vector v are each rounded once or twice in bf16 (context, s, L1 s, the weight logits),
  so v carries a relative error of about 2^-8; a score is sigmoid(h . v / |v|) with
  |h| <= 1 at the Linear's initialisation and a sigmoid slope <= 1/4, hence
  |score_bf16 - score_fp32| <= 2^-8 / 4 = 2^-10.
- The whole model: the encoders (ResNet, BERT) chain tens of bf16 products before the
  scores, each adding its 2^-9; measured here the scores move by at most 4e-3 and the
  loss by under 0.1 %. The tests allow 2^-6 on scores (about 4x the measurement) and 1 %
  on losses; gradients must point the same way (cosine >= 0.98) and be finite.
Each test also checks that bf16 actually ran (the SAF's L1 product and its stored
activations in bf16, results not identical to float32), so it fails if autocast were off.
"""

from __future__ import annotations

import pytest
import torch

from model_inputs import reports, studies

from limitr.model import LIMITR
from limitr.model import saf as saf_module
from limitr.model.alignment import LocalAlignment
from limitr.model.saf import SAF
from limitr.train.distributed import DistContext, GlobalBatchLoss, as_float32

BF16 = torch.bfloat16
SAF_TOL = 2.0**-10
MODEL_SCORE_TOL = 2.0**-6
MODEL_LOSS_RTOL = 1e-2
D = 32


def bf16_autocast(enabled: bool = True):
    return torch.autocast("cpu", dtype=BF16, enabled=enabled)


@pytest.fixture
def saf_spy(monkeypatch):
    """Records the dtype of w1 (the L1 product's dtype) at each call of the SAF kernel."""
    seen: list[torch.dtype] = []
    real = saf_module.saf_pool_forward

    def spy(context, feature, mask, params, dropout, save):
        seen.append(params[0].dtype)
        return real(context, feature, mask, params, dropout, save)

    monkeypatch.setattr(saf_module, "saf_pool_forward", spy)
    return seen


def alignment_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    words = torch.randn(6, 10, D, generator=g)
    regions = torch.randn(5, 16, D, generator=g)
    word_mask = torch.ones(6, 10, dtype=torch.bool)
    word_mask[1, 5:] = False
    word_mask[4, 3:] = False
    region_mask = torch.ones(5, 16, dtype=torch.bool)
    region_mask[2, 8:] = False  # a study without its lateral
    return words, word_mask, regions, region_mask


def test_saf_bf16_forward_and_backward(saf_spy):
    torch.manual_seed(0)
    saf = SAF(D, dropout=0.0)
    g = torch.Generator().manual_seed(1)
    context = torch.randn(4, 5, 12, D, generator=g)
    feature = torch.randn(5, 12, D, generator=g)
    mask = torch.rand(5, 12, generator=g) > 0.3
    mask[:, 0] = True
    grad_out = torch.randn(4, 5, D, generator=g)

    def run(bf16: bool):
        c, f = context.clone().requires_grad_(), feature.clone().requires_grad_()
        saf.zero_grad()
        saved = []

        def pack(t):
            saved.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), bf16_autocast(bf16):
            # Under autocast the context comes out of a bf16 product (alignment.py).
            v, w = saf(c.to(BF16) if bf16 else c, f, mask)
        ((v * grad_out).sum() + w.sum()).backward()
        grads = {"context": c.grad, "feature": f.grad, **{n: p.grad.clone() for n, p in saf.named_parameters()}}
        return v.detach(), w.detach(), grads, saved

    v32, w32, g32, _ = run(False)
    v16, w16, g16, saved = run(True)
    assert saf_spy == [torch.float32, BF16]
    # The largest tensor kept for the backward, tanh(L1 s) of every pair and position, is bf16.
    assert max(saved, key=lambda t: t.numel()).dtype == BF16
    assert v16.dtype == w16.dtype == torch.float32  # pooled vector and weights accumulate in fp32
    assert not torch.equal(v16, v32)
    rel = (v16 - v32).norm(dim=-1) / v32.norm(dim=-1)
    assert rel.max() < 2.0**-6  # about 2^-8 expected (module docstring); 4x margin
    torch.testing.assert_close(w16, w32, rtol=0, atol=2.0**-8)
    for name in ("context", "feature", "local_proj.weight", "mean_proj.weight", "weight_proj.weight"):
        a, b = g32[name].flatten(), g16[name].float().flatten()
        assert torch.isfinite(b).all(), name
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.999, name
    assert all(torch.isfinite(g).all() for g in g16.values())
    assert all(g16[n].dtype == torch.float32 for n, _ in saf.named_parameters())


@pytest.mark.parametrize("grad", [False, True])
def test_local_scores_bf16_within_tolerance(saf_spy, grad):
    torch.manual_seed(0)
    align = LocalAlignment(D, temp1=4.0, saf_dropout=0.0)
    words, word_mask, regions, region_mask = alignment_inputs()
    with torch.set_grad_enabled(grad):
        cap32, img32 = align(words, word_mask, regions, region_mask)
        with bf16_autocast():
            cap16, img16 = align(words, word_mask, regions, region_mask)
    assert BF16 in saf_spy and torch.float32 in saf_spy
    for a, b in ((cap32, cap16), (img32, img16)):
        assert b.dtype == torch.float32
        assert not torch.equal(a, b)
        torch.testing.assert_close(b, a, rtol=0, atol=SAF_TOL)


def test_float64_is_left_alone_by_autocast():
    """Autocast never lowers float64 (as torch's own ops): the parity tests' path is exact."""
    torch.manual_seed(0)
    align = LocalAlignment(D, temp1=4.0, saf_dropout=0.0).double()
    inputs = [t.double() if t.is_floating_point() else t for t in alignment_inputs()]
    want = align(*inputs)
    with bf16_autocast():
        got = align(*inputs)
    for a, b in zip(want, got):
        assert b.dtype == torch.float64
        torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("internal", [0.0, 1.0])
def test_model_scores_losses_and_gradients_under_bf16(tiny_config, saf_spy, internal):
    torch.manual_seed(0)
    cfg = tiny_config(embed_dim=D, loss_weights={"local_external": 1.0, "local_internal": internal, "global": 1.0})
    model = LIMITR(cfg).eval()  # batch norms on running statistics: both passes see the same model
    study_inputs, report_inputs = studies(6, 0), reports(6, 0)

    # The training path: GlobalBatchLoss encodes under autocast and scores float32 copies of
    # the (small) embeddings, still under autocast.
    step = GlobalBatchLoss(model, DistContext())

    def run(bf16: bool):
        model.zero_grad()
        with bf16_autocast(bf16):
            img = model.encode_images(*study_inputs)
            txt = model.encode_text(*report_inputs)
            scores = model.similarity(as_float32(img), as_float32(txt))
            losses = step(*study_inputs, *report_inputs)
        losses.total.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return img, scores, losses, grads

    _, s32, l32, g32 = run(False)
    saf_spy.clear()
    img16, s16, l16, g16 = run(True)
    assert img16.local.dtype == BF16  # the encoders ran in bf16
    assert saf_spy and set(saf_spy) == {BF16}  # and so did every SAF projection, on float32 inputs
    for name in ("total", "global_", "local", "caption", "image"):
        a, b = getattr(s32, name), getattr(s16, name)
        assert b.dtype == torch.float32, name
        torch.testing.assert_close(b, a, rtol=0, atol=MODEL_SCORE_TOL, msg=name)
    assert not torch.equal(s16.total, s32.total)
    for name in ("total", "local_external", "local_internal", "global_"):
        a, b = getattr(l32, name), getattr(l16, name)
        assert b.dtype == torch.float32, name
        torch.testing.assert_close(b, a, rtol=MODEL_LOSS_RTOL, atol=1e-6, msg=name)
    assert g16.keys() == g32.keys()
    assert all(torch.isfinite(g).all() for g in g16.values())
    flat32 = torch.cat([g.flatten() for g in g32.values()])
    flat16 = torch.cat([g16[n].float().flatten() for n in g32])
    assert torch.nn.functional.cosine_similarity(flat32, flat16, dim=0) > 0.98


def test_losses_upcast_and_ignore_autocast():
    """Loss reductions run in float32 even on bf16 inputs under autocast: bf16 logits give
    exactly the float32 loss of the same (rounded) values."""
    from limitr.model.alignment import MatchedAlignment
    from limitr.model.losses import contrastive_loss, local_internal_loss

    g = torch.Generator().manual_seed(0)
    logits = (10 * torch.rand(6, 6, generator=g)).to(BF16)
    with bf16_autocast():
        got = contrastive_loss(logits)
    assert got.dtype == torch.float32
    assert torch.equal(got, contrastive_loss(logits.float()))

    words, regions = torch.randn(3, 5, D, generator=g), torch.randn(3, 7, D, generator=g)
    word_mask = torch.ones(3, 5, dtype=torch.bool)
    word_mask[1, 3:] = False
    region_mask = torch.ones(3, 7, dtype=torch.bool)
    low = MatchedAlignment(
        word_attention=torch.empty(0),
        word_context=torch.randn(3, 5, D, generator=g).to(BF16),
        region_context=torch.randn(3, 7, D, generator=g).to(BF16),
    )
    full = MatchedAlignment(torch.empty(0), low.word_context.float(), low.region_context.float())
    with bf16_autocast():
        got = local_internal_loss(low, words, word_mask, regions, region_mask, "uniform")
    want = local_internal_loss(full, words, word_mask, regions, region_mask, "uniform")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
