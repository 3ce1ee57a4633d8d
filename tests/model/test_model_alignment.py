"""Local alignment and SAF: parity with plain per-pair references, invariants, chunking."""

from __future__ import annotations

import pytest
import torch

import model_reference as ref
from limitr.model import saf as saf_module
from limitr.model.alignment import LocalAlignment
from limitr.model.saf import SAF, SAFPoolFunction

D = 8


def make_batch(n_img=4, n_txt=5, n_words=6, regions_per_view=4, seed=0, dtype=torch.float64):
    """Words with padding (ragged lengths) and studies of which some lack the lateral view."""
    g = torch.Generator().manual_seed(seed)
    words = torch.randn(n_txt, n_words, D, generator=g, dtype=dtype)
    lengths = torch.tensor([n_words, 2, 4, 1, 5, 3, 6][:n_txt])
    word_mask = torch.arange(n_words).unsqueeze(0) < lengths.unsqueeze(1)
    regions = torch.randn(n_img, 2 * regions_per_view, D, generator=g, dtype=dtype)
    region_mask = torch.ones(n_img, 2 * regions_per_view, dtype=torch.bool)
    region_mask[1::2, regions_per_view:] = False  # studies 1, 3, ... have no lateral
    return words, word_mask, regions, region_mask


@pytest.fixture
def align() -> LocalAlignment:
    torch.manual_seed(1)
    module = LocalAlignment(D, temp1=4.0, saf_dropout=0.4).double().eval()
    # Non-zero biases so that they are checked too.
    for p in module.parameters():
        if p.dim() == 1:
            torch.nn.init.normal_(p, std=0.3)
    return module


def test_scores_match_per_pair_reference(align):
    words, word_mask, regions, region_mask = make_batch()
    cap, img = align(words, word_mask, regions, region_mask)
    cap_ref, img_ref = ref.all_pair_scores(align, words, word_mask, regions, region_mask)
    assert cap.shape == img.shape == (4, 5)
    torch.testing.assert_close(cap, cap_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(img, img_ref, rtol=0, atol=1e-12)


def test_attention_scale_matches_the_reference_and_softens_the_attention(align):
    words, word_mask, regions, region_mask = make_batch()
    soft = LocalAlignment(D, temp1=4.0, saf_dropout=0.4, attention_scale=0.25).double().eval()
    soft.load_state_dict(align.state_dict())
    cap, img = soft(words, word_mask, regions, region_mask)
    cap_ref, img_ref = ref.all_pair_scores(soft, words, word_mask, regions, region_mask)
    torch.testing.assert_close(cap, cap_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(img, img_ref, rtol=0, atol=1e-12)
    assert not torch.allclose(cap, align(words, word_mask, regions, region_mask)[0])
    # A smaller scale gives flatter first-step softmaxes, so flatter attention maps.
    sharp = align.matched(words[:4], word_mask[:4], regions, region_mask).word_attention
    flat = soft.matched(words[:4], word_mask[:4], regions, region_mask).word_attention
    keep = word_mask[:4]
    assert flat.amax(-1)[keep].mean() < sharp.amax(-1)[keep].mean()


def test_score_gradients_match_reference(align):
    words, word_mask, regions, region_mask = make_batch(n_img=3, n_txt=3)
    weights = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def grads(fn):
        w = words.clone().requires_grad_()
        r = regions.clone().requires_grad_()
        align.zero_grad()
        cap, img = fn(w, r)
        ((cap * weights[0]).sum() + (img * weights[1]).sum()).backward()
        return [w.grad, r.grad] + [p.grad.clone() for p in align.parameters()]

    fast = grads(lambda w, r: align(w, word_mask, r, region_mask))
    slow = grads(lambda w, r: ref.all_pair_scores(align, w, word_mask, r, region_mask))
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    # Nothing flows into padded words or missing lateral regions.
    assert torch.all(fast[0][~word_mask] == 0)
    assert torch.all(fast[1][~region_mask] == 0)


def test_studies_without_a_lateral_skip_its_regions_with_the_same_scores_and_gradients(align, monkeypatch):
    from limitr.model import alignment as alignment_module

    words, word_mask, regions, region_mask = make_batch()
    assert [(None if i is None else i.tolist(), k) for i, k in alignment_module.region_groups(region_mask)] == [
        ([1, 3], 4), ([0, 2], 8)]
    seen = []
    pool = SAF.forward
    monkeypatch.setattr(SAF, "forward", lambda self, c, f, m: seen.append(c.shape[-2]) or pool(self, c, f, m))

    def run():
        w, r = words.clone().requires_grad_(), regions.clone().requires_grad_()
        align.zero_grad()
        cap, img = align(w, word_mask, r, region_mask)
        (cap * torch.arange(1.0, 6.0, dtype=torch.float64) + img.exp()).sum().backward()
        return cap, img, w.grad, r.grad, [p.grad.clone() for p in align.parameters()]

    grouped = run()
    assert seen == [6, 4, 8]  # caption direction over the words, then each group's regions
    monkeypatch.setattr(alignment_module, "region_groups", lambda mask: [(None, mask.shape[1])])
    seen.clear()
    whole = run()
    assert seen == [6, 8]
    for a, b in zip(grouped[:4] + tuple(grouped[4]), whole[:4] + tuple(whole[4])):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # A mask that is not a prefix (a region missing mid-view) keeps the one-group path.
    holes = region_mask.clone()
    holes[0, 2] = False
    assert alignment_module.region_groups(holes)[0][0] is None


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64])
def test_chunked_equals_unchunked(align, chunk):
    words, word_mask, regions, region_mask = make_batch()
    whole = align(words, word_mask, regions, region_mask, chunk=None)
    parts = align(words, word_mask, regions, region_mask, chunk=chunk)
    for a, b in zip(whole, parts):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


def test_small_tiles_equal_one_tile(align, monkeypatch):
    words, word_mask, regions, region_mask = make_batch()
    whole = align(words, word_mask, regions, region_mask)
    for budget in (D, 3 * D, 40 * D):  # tiles inside one study's rows, and across studies
        monkeypatch.setattr(saf_module, "CPU_TILE_ELEMENTS", budget)
        tiled = align(words, word_mask, regions, region_mask)
        for a, b in zip(whole, tiled):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


def test_permuting_the_batch_permutes_the_scores(align):
    words, word_mask, regions, region_mask = make_batch()
    cap, img = align(words, word_mask, regions, region_mask)
    pt = torch.tensor([3, 0, 4, 2, 1])
    pi = torch.tensor([2, 3, 1, 0])
    cap_p, img_p = align(words[pt], word_mask[pt], regions[pi], region_mask[pi])
    torch.testing.assert_close(cap_p, cap[pi][:, pt], rtol=0, atol=1e-13)
    torch.testing.assert_close(img_p, img[pi][:, pt], rtol=0, atol=1e-13)


def test_extra_padding_changes_nothing(align):
    words, word_mask, regions, region_mask = make_batch()
    cap, img = align(words, word_mask, regions, region_mask)
    g = torch.Generator().manual_seed(9)
    # Three more padded word slots and five more absent regions, filled with garbage.
    words_p = torch.cat([words, 50 * torch.randn(5, 3, D, generator=g, dtype=words.dtype)], dim=1)
    word_mask_p = torch.cat([word_mask, torch.zeros(5, 3, dtype=torch.bool)], dim=1)
    regions_p = torch.cat([regions, 50 * torch.randn(4, 5, D, generator=g, dtype=words.dtype)], dim=1)
    region_mask_p = torch.cat([region_mask, torch.zeros(4, 5, dtype=torch.bool)], dim=1)
    # Garbage in the slots that were already masked, too.
    words_p[~torch.cat([word_mask, torch.ones(5, 3, dtype=torch.bool)], dim=1)] = 7.0
    cap_p, img_p = align(words_p, word_mask_p, regions_p, region_mask_p)
    torch.testing.assert_close(cap_p, cap, rtol=0, atol=1e-13)
    torch.testing.assert_close(img_p, img, rtol=0, atol=1e-13)


def test_missing_lateral_scores_as_frontal_only(align):
    words, word_mask, regions, region_mask = make_batch()
    cap, img = align(words, word_mask, regions, region_mask)
    frontal = regions[:, :4]
    cap_f, img_f = align(words, word_mask, frontal, torch.ones(4, 4, dtype=torch.bool))
    for i in (1, 3):  # the studies without a lateral
        torch.testing.assert_close(cap[i], cap_f[i], rtol=0, atol=1e-13)
        torch.testing.assert_close(img[i], img_f[i], rtol=0, atol=1e-13)
    assert not torch.allclose(img[0], img_f[0])  # a real lateral does count


def test_matched_pairs_match_reference(align):
    words, word_mask, regions, region_mask = make_batch(n_img=4, n_txt=4)
    out = align.matched(words, word_mask, regions, region_mask, with_weights=True)
    for b in range(4):
        want = ref.pair_alignment(align, words[b][word_mask[b]], regions[b][region_mask[b]])
        n, m = int(word_mask[b].sum()), int(region_mask[b].sum())
        rm = region_mask[b]
        torch.testing.assert_close(out.word_attention[b, :n][:, rm], want["word_attention"], rtol=0, atol=1e-12)
        assert torch.all(out.word_attention[b][:, ~rm] == 0)
        torch.testing.assert_close(out.word_context[b, :n], want["word_context"], rtol=0, atol=1e-12)
        torch.testing.assert_close(out.region_context[b][rm], want["region_context"], rtol=0, atol=1e-12)
        torch.testing.assert_close(out.word_weights[b, :n], want["word_weights"], rtol=0, atol=1e-12)
        torch.testing.assert_close(out.region_weights[b][rm], want["region_weights"], rtol=0, atol=1e-12)
        assert torch.all(out.word_weights[b, n:] == 0) and torch.all(out.region_weights[b][~rm] == 0)
        assert m == int(rm.sum())


def test_matched_equals_the_diagonal_of_all_pairs(align):
    words, word_mask, regions, region_mask = make_batch(n_img=4, n_txt=4)
    out = align.matched(words, word_mask, regions, region_mask)
    attn_rows = out.word_attention.sum(dim=-1)
    torch.testing.assert_close(attn_rows[word_mask], torch.ones(int(word_mask.sum()), dtype=words.dtype))


# ----------------------------------------------------------------------------- SAF kernel
def saf_inputs(a=3, p=4, k=5, seed=0, dim=D):
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(a, p, k, dim, generator=g, dtype=torch.float64)
    feature = torch.randn(p, k, dim, generator=g, dtype=torch.float64)
    mask = torch.rand(p, k, generator=g) > 0.35
    mask[:, 0] = True
    return context, feature, mask


def test_saf_matches_per_pair_reference():
    torch.manual_seed(0)
    saf = SAF(D, dropout=0.4).double().eval()
    context, feature, mask = saf_inputs()
    pooled, weights = saf(context, feature, mask)
    for a in range(context.shape[0]):
        for p in range(context.shape[1]):
            keep = mask[p]
            sims = torch.stack([ref.normalize(x) for x in context[a, p][keep] * feature[p][keep]])
            want_v, want_w = ref.saf_pool(saf, sims)
            torch.testing.assert_close(pooled[a, p], want_v, rtol=0, atol=1e-12)
            torch.testing.assert_close(weights[a, p][keep], want_w, rtol=0, atol=1e-12)
            assert torch.all(weights[a, p][~keep] == 0)


def test_saf_backward_matches_autograd_of_plain_ops(monkeypatch):
    torch.manual_seed(0)
    saf = SAF(D, dropout=0.4).double().eval()
    context, feature, mask = saf_inputs()
    monkeypatch.setattr(saf_module, "CPU_TILE_ELEMENTS", 2 * 5 * D)  # several tiles
    g = torch.Generator().manual_seed(1)
    gv = torch.randn(3, 4, D, generator=g, dtype=torch.float64)
    gw = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)

    def grads(fn):
        c, f = context.clone().requires_grad_(), feature.clone().requires_grad_()
        saf.zero_grad()
        v, w = fn(saf, c, f, mask)
        ((v * gv).sum() + (w * gw).sum()).backward()
        return [c.grad, f.grad] + [p.grad.clone() for p in saf.parameters()]

    for a, b in zip(grads(lambda *x: x[0](*x[1:])), grads(ref.pool_reference)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_saf_gradcheck_with_dropout():
    torch.manual_seed(0)
    saf = SAF(4, dropout=0.4).double()
    context, feature, mask = saf_inputs(a=2, p=2, k=3, dim=4)
    params = [p.detach().clone().requires_grad_() for p in saf.parameters()]

    def fn(c, f, *ps):
        torch.manual_seed(5)  # the same dropout masks at every evaluation
        return SAFPoolFunction.apply(c, f, mask, *ps, 0.4)

    assert torch.autograd.gradcheck(fn, (context.requires_grad_(), feature.requires_grad_(), *params))


def test_saf_dropout_keeps_the_expectation():
    keep, scale = saf_module.keep_mask((400, 1000), 0.4, torch.device("cpu"))
    assert keep.dtype == torch.bool
    rate = keep.double().mean().item()
    assert abs(rate - 0.6) < 0.005
    assert abs(scale * (1 - 0.4) - 1) < 1e-4


def test_keep_mask_written_into_out_is_the_same_draw():
    torch.manual_seed(3)
    keep, scale = saf_module.keep_mask((7, 33), 0.4, torch.device("cpu"))
    torch.manual_seed(3)
    out = torch.zeros(7, 33, dtype=torch.bool)
    into, scale2 = saf_module.keep_mask((7, 33), 0.4, torch.device("cpu"), out=out)
    assert into.data_ptr() == out.data_ptr()
    assert torch.equal(into, keep) and scale == scale2
    x = torch.randn(7, 33, dtype=torch.float64)
    assert torch.equal(x.clone().mul_(keep.view(torch.uint8)), x * keep)  # the in-place product


def test_saf_float32_matches_float64():
    torch.manual_seed(0)
    saf = SAF(D, dropout=0.0).double().eval()
    context, feature, mask = saf_inputs()
    v64, w64 = saf(context, feature, mask)
    v32, w32 = saf.float()(context.float(), feature.float(), mask)
    torch.testing.assert_close(v32.double(), v64, rtol=0, atol=1e-5)
    torch.testing.assert_close(w32.double(), w64, rtol=0, atol=1e-5)


def test_inference_blocks_equal_training_path(align, monkeypatch):
    """Without gradients the studies are scored in bounded groups; results do not change."""
    from limitr.model import alignment as alignment_module

    words, word_mask, regions, region_mask = make_batch()
    with_grad = align(words.clone().requires_grad_(), word_mask, regions, region_mask, chunk=2)
    monkeypatch.setattr(alignment_module, "INFERENCE_BLOCK_ELEMENTS", 3 * (6 + 8) * D)  # groups of 1-2 studies
    with torch.no_grad():
        grouped = align(words, word_mask, regions, region_mask, chunk=2)
    for a, b in zip(with_grad, grouped):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=1e-13)


def test_saf_mixed_precision_gradients_keep_parameter_dtypes():
    torch.manual_seed(0)
    saf = SAF(D, dropout=0.0)
    context, feature, mask = saf_inputs()
    c16 = context.to(torch.bfloat16).requires_grad_()
    v, w = saf(c16, feature.to(torch.bfloat16), mask)
    assert v.dtype == torch.float32 and w.dtype == torch.float32  # pooled and weights accumulate in fp32
    v.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in saf.parameters())
    assert c16.grad.dtype == torch.bfloat16
    saf.zero_grad()
    c32 = context.float().requires_grad_()
    saf(c32, feature.float(), mask)[0].sum().backward()
    torch.testing.assert_close(c16.grad.float(), c32.grad, rtol=0.1, atol=0.05)


def test_two_step_attention_matches_plain_ops_with_gradients():
    from limitr.model.alignment import two_step_attention

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 7, dtype=torch.float64, generator=g)
    first_mask = torch.rand(1, 3, 5, 1, generator=g) > 0.3
    first_mask[..., 0, :] = True
    second_mask = torch.rand(2, 1, 1, 7, generator=g) > 0.3
    second_mask[..., 0] = True
    grad = torch.randn(2, 3, 5, 7, dtype=torch.float64, generator=g)

    def plain(x):
        first = x.masked_fill(~first_mask, float("-inf")).softmax(dim=-2)
        return (first * 4.0).masked_fill(~second_mask, float("-inf")).softmax(dim=-1)

    outs = []
    for fn in (plain, lambda x: two_step_attention(x, -2, first_mask, -1, second_mask, 4.0)):
        x = logits.clone().requires_grad_()
        y = fn(x)
        y.backward(grad)
        outs.append((y.detach(), x.grad))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=1e-15)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-12, atol=1e-14)
    with torch.no_grad():
        torch.testing.assert_close(two_step_attention(logits, -2, first_mask, -1, second_mask, 4.0), outs[0][0], rtol=0, atol=0)
