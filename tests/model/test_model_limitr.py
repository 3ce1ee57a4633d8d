"""The LIMITR module: lateral fusion, combined score, losses, files, and a tiny overfit."""

from __future__ import annotations

import json

import pytest
import torch

import model_reference as ref
from model_inputs import SIZE, reports, studies
from limitr.errors import LimitrError
from limitr.model import LIMITR, ImageEmbeddings
from limitr.model.position import sincos_2d

@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    return LIMITR(tiny_config()).eval()


def test_shapes_masks_and_positional_encoding(model):
    frontal, lateral, has = studies()
    with torch.no_grad():
        img = model.encode_images(frontal, lateral, has)
        txt = model.encode_text(*reports())
        g_f, map_f = model.frontal_encoder(frontal)
        g_l, _ = model.lateral_encoder(lateral)
    assert img.grid == (2, 2) and img.local.shape == (4, 8, 16)
    assert img.local_mask.tolist() == [[True] * 8, [True] * 4 + [False] * 4, [True] * 8, [True] * 4 + [False] * 4]
    pe = sincos_2d(2, 2, 16)
    torch.testing.assert_close(img.local[:, :4], map_f.flatten(2).transpose(1, 2) + pe)
    # Global: mean of both views where the lateral exists, the frontal alone elsewhere.
    torch.testing.assert_close(img.global_emb[0], (g_f[0] + g_l[0]) / 2)
    torch.testing.assert_close(img.global_emb[1], g_f[1])
    assert txt.local.shape[0] == 4 and txt.local_mask.sum(dim=1).tolist() == [9, 3, 7, 2]


def test_positional_encoding_scale_multiplies_the_encoding_only(model, tiny_config):
    frontal, lateral, has = studies()
    scaled = LIMITR(tiny_config(positional_encoding_scale=0.25)).eval()
    scaled.load_state_dict(model.state_dict())
    with torch.no_grad():
        _, map_f = model.frontal_encoder(frontal)
        img = scaled.encode_images(frontal, lateral, has)
    torch.testing.assert_close(img.local[:, :4], map_f.flatten(2).transpose(1, 2) + 0.25 * sincos_2d(2, 2, 16))
    with pytest.raises(LimitrError, match="positional_encoding_scale"):
        tiny_config(positional_encoding_scale=0.0)


def test_layer2_regions_give_a_finer_grid_with_its_own_encoding(tiny_config):
    frontal, lateral, has = studies()
    torch.manual_seed(0)
    m = LIMITR(tiny_config(local_layer="layer2")).eval()
    with torch.no_grad():
        img = m.encode_images(frontal, lateral, has)
        _, map_f = m.frontal_encoder(frontal)
        maps = m.grounding_maps(img, m.encode_text(*reports()))
    assert img.grid == (4, 4) and img.local.shape == (4, 32, 16)
    torch.testing.assert_close(img.local[:, :16], map_f.flatten(2).transpose(1, 2) + sincos_2d(4, 4, 16))
    assert maps.shape[-1] == 32 and torch.all(maps[1, :, 16:] == 0)


def test_missing_lateral_scores_as_the_frontal_only_model(model, tiny_config):
    frontal, lateral, has = studies()
    txt_in = reports()
    with torch.no_grad():
        txt = model.encode_text(*txt_in)
        both = model.similarity(model.encode_images(frontal, lateral, has), txt)
        # Garbage where there is no lateral changes nothing.
        lateral2 = lateral.clone()
        lateral2[~has] = 1e3
        both2 = model.similarity(model.encode_images(frontal, lateral2, has), txt)
        # The same weights without a lateral encoder at all.
        frontal_only = LIMITR(tiny_config(lateral=False)).eval()
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("lateral_encoder.")}
        frontal_only.load_state_dict(state)
        alone = frontal_only.similarity(frontal_only.encode_images(frontal, lateral, has), frontal_only.encode_text(*txt_in))
        none_given = model.similarity(model.encode_images(frontal), txt)
    for name in ("total", "global_", "local", "caption", "image"):
        torch.testing.assert_close(getattr(both2, name), getattr(both, name), rtol=0, atol=0)
        for other in (alone, none_given):
            torch.testing.assert_close(getattr(both, name)[~has], getattr(other, name)[~has], rtol=1e-6, atol=1e-6)
        assert not torch.allclose(getattr(both, name)[has], getattr(alone, name)[has])


def test_lateral_grid_must_match(model):
    frontal, lateral, has = studies()
    with pytest.raises(LimitrError, match="grid"):
        model.encode_images(frontal, torch.randn(4, 3, 2 * SIZE, 2 * SIZE), has)


@pytest.mark.parametrize(
    "weights, caption, image",
    [
        ({"local_external": 1.0, "global": 1.0}, True, True),
        ({"local_external": 2.0, "global": 0.5}, True, False),
        ({"local_external": 1.0, "global": 0.0}, False, True),
        ({"local_external": 0.0, "global": 1.0}, True, True),
    ],
)
def test_combined_score(tiny_config, weights, caption, image):
    torch.manual_seed(0)
    cfg = tiny_config(loss_weights=weights, caption_attention=caption, image_attention=image)
    m = LIMITR(cfg).eval()
    with torch.no_grad():
        img = m.encode_images(*studies())
        txt = m.encode_text(*reports())
        s = m.similarity(img, txt)
    torch.testing.assert_close(s.global_, ref.cosine_matrix(img.global_emb, txt.global_emb), rtol=1e-5, atol=1e-6)
    w_le, w_g = weights["local_external"], weights["global"]
    if w_le == 0:
        assert s.local is None and s.caption is None and s.image is None
        torch.testing.assert_close(s.total, w_g * s.global_)
        return
    assert (s.caption is not None) == caption and (s.image is not None) == image
    parts = [x for x in (s.caption, s.image) if x is not None]
    torch.testing.assert_close(s.local, sum(parts) / len(parts))
    want = (w_le * s.local + w_g * s.global_) / 2 if w_g > 0 else w_le * s.local
    torch.testing.assert_close(s.total, want)


def test_similarity_chunks_agree(model):
    with torch.no_grad():
        img = model.encode_images(*studies())
        txt = model.encode_text(*reports())
        whole = model.similarity(img, txt, chunk=None)
        for chunk in (1, 3):
            part = model.similarity(img, txt, chunk=chunk)
            torch.testing.assert_close(part.total, whole.total, rtol=0, atol=1e-6)


def test_loss_is_the_weighted_sum_of_its_terms(tiny_config):
    torch.manual_seed(0)
    cfg = tiny_config(loss_weights={"local_external": 0.7, "local_internal": 2.0, "global": 1.3})
    m = LIMITR(cfg).eval()
    img = m.encode_images(*studies())
    txt = m.encode_text(*reports())
    losses = m.loss(img, txt)
    s = m.similarity(img, txt)
    le = (ref.contrastive(10 * s.caption) + ref.contrastive(10 * s.image)) / 2
    torch.testing.assert_close(losses.local_external, le, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(losses.global_, ref.contrastive(10 * s.global_), rtol=1e-6, atol=1e-6)
    li = ref.local_internal(m.alignment, txt.local, txt.local_mask, img.local, img.local_mask, "saf")
    torch.testing.assert_close(losses.local_internal, li, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses.total, 0.7 * le + 2.0 * li + 1.3 * losses.global_, rtol=1e-5, atol=1e-6)
    losses.total.backward()
    for prefix in ("frontal_encoder.", "lateral_encoder.", "text_encoder.", "alignment."):
        grads = [p.grad for n, p in m.named_parameters() if n.startswith(prefix) and p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), prefix


def test_grounding_maps(model):
    with torch.no_grad():
        img = model.encode_images(*studies())
        txt = model.encode_text(*reports())
        maps = model.grounding_maps(img, txt)
    assert maps.shape == (4, txt.local.shape[1], 8)
    rows = maps.sum(dim=-1)[txt.local_mask]
    torch.testing.assert_close(rows, torch.ones_like(rows))
    assert torch.all(maps[1, :, 4:] == 0)  # no attention on a missing lateral
    for b in range(4):
        want = ref.pair_alignment(model.alignment, txt.local[b][txt.local_mask[b]], img.local[b][img.local_mask[b]])
        n = int(txt.local_mask[b].sum())
        torch.testing.assert_close(maps[b, :n][:, img.local_mask[b]], want["word_attention"], rtol=1e-5, atol=1e-6)


def test_save_and_load(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["config.json", "model.safetensors", "text_config.json"]
    assert json.loads((tmp_path / "m" / "config.json").read_text()) == model.config.to_dict()
    loaded = LIMITR.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        a = model.similarity(model.encode_images(*studies()), model.encode_text(*reports()))
        b = loaded.similarity(loaded.encode_images(*studies()), loaded.encode_text(*reports()))
    torch.testing.assert_close(a.total, b.total, rtol=0, atol=0)
    with pytest.raises(LimitrError, match="missing"):
        LIMITR.from_pretrained(tmp_path / "nothing")


def test_tiny_model_overfits_a_tiny_batch(tiny_config):
    torch.manual_seed(0)
    cfg = tiny_config(loss_weights={"local_external": 1.0, "local_internal": 1.0, "global": 1.0}, saf_dropout=0.1)
    m = LIMITR(cfg)
    frontal, lateral, has = studies()
    txt_in = reports()
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    m.train()
    history = []
    for _ in range(25):
        losses = m.loss(m.encode_images(frontal, lateral, has), m.encode_text(*txt_in))
        opt.zero_grad()
        losses.total.backward()
        opt.step()
        history.append(losses.total.item())
    assert history[-1] < 0.3 * history[0]
    with torch.no_grad():  # let the batch-norm running statistics settle on this batch
        for _ in range(10):
            m.encode_images(frontal, lateral, has)
    m.eval()
    with torch.no_grad():
        s = m.similarity(m.encode_images(frontal, lateral, has), m.encode_text(*txt_in)).total
    target = torch.arange(4)
    assert torch.equal(s.argmax(dim=1), target)  # image -> text recall@1
    assert torch.equal(s.argmax(dim=0), target)  # text -> image recall@1


def test_matched_batch_sizes_must_agree(model):
    img = model.encode_images(*studies())
    txt = model.encode_text(*reports(b=4))
    short = ImageEmbeddings(img.global_emb[:3], img.local[:3], img.local_mask[:3], img.grid)
    with pytest.raises(LimitrError, match="as many studies"):
        model.loss(short, txt)
