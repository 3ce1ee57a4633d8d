"""Image and text encoders: shapes, weights, word-piece merging, freezing, padding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from limitr.errors import LimitrError
from limitr.model.image_encoder import ImageEncoder, normalize_images
from limitr.model.text_encoder import (
    TextEncoder,
    default_text_encoder_path,
    masked_word_mean,
    merge_word_pieces,
)

D = 16


# ----------------------------------------------------------------------------- images
def test_normalize_images_known_values():
    grey = torch.tensor([[[0, 255], [51, 128]]], dtype=torch.uint8)  # (1, 2, 2)
    x = normalize_images(grey)
    assert x.shape == (1, 3, 2, 2) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, 0], torch.tensor([[-1.0, 1.0], [51 / 255 * 2 - 1, 128 / 255 * 2 - 1]]))
    assert torch.equal(x[:, 0], x[:, 2])
    assert torch.equal(normalize_images(grey.unsqueeze(1)), x)
    with pytest.raises(LimitrError):
        normalize_images(grey.float())


@pytest.mark.parametrize("size, grid", [(64, 4), (96, 6), (80, 5)])
def test_image_encoder_grid_follows_the_input(size, grid):
    torch.manual_seed(0)
    enc = ImageEncoder("resnet18", D).eval()
    with torch.no_grad():
        g, fmap = enc(torch.randn(2, 3, size, size))
    assert g.shape == (2, D) and fmap.shape == (2, D, grid, grid)
    assert enc.local_proj.bias is None


def test_layer2_regions_are_the_projected_layer2_map_on_a_grid_twice_as_fine():
    torch.manual_seed(0)
    enc3 = ImageEncoder("resnet18", D).eval()
    torch.manual_seed(0)
    enc2 = ImageEncoder("resnet18", D, local_layer="layer2").eval()
    shared = {k: v for k, v in enc3.state_dict().items() if not k.startswith("local_proj.")}
    enc2.load_state_dict(shared, strict=False)
    assert enc2.local_proj.in_channels == 128 and enc3.local_proj.in_channels == 256
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        g2, fmap2 = enc2(x)
        g3, _ = enc3(x)
        layer2 = enc2.layer2(enc2.layer1(enc2.stem(x)))
    assert fmap2.shape == (2, D, 12, 12)
    torch.testing.assert_close(fmap2, torch.einsum("dc,bchw->bdhw", enc2.local_proj.weight[:, :, 0, 0], layer2))
    # The global branch does not depend on where the regions come from.
    torch.testing.assert_close(g2, g3)
    with pytest.raises(LimitrError, match="local layer"):
        ImageEncoder("resnet18", D, local_layer="layer4")


def _reference_resnet_state(seed: int = 3) -> dict:
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).state_dict()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_image_weights_from_a_local_file(tmp_path, suffix):
    state = _reference_resnet_state()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    enc = ImageEncoder("resnet18", D, weights=str(path))
    assert torch.equal(enc.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert torch.equal(enc.stem[1].running_var, state["bn1.running_var"])


def test_image_weights_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("LIMITR_ALLOW_DOWNLOADS", raising=False)
    with pytest.raises(LimitrError, match="does not exist"):
        ImageEncoder("resnet18", D, weights=str(tmp_path / "missing.pt"))
    with pytest.raises(LimitrError, match="known"):
        ImageEncoder("resnet18", D, weights="IMAGENET9K_V9")
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv1.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(LimitrError, match="does not fit"):
        ImageEncoder("resnet18", D, weights=str(wrong))
    # A file holding arbitrary Python objects is refused, not unpickled.
    objects = tmp_path / "objects.pt"
    torch.save({"state": Path("x")}, objects)
    with pytest.raises(LimitrError, match="not a plain state-dict"):
        ImageEncoder("resnet18", D, weights=str(objects))


def test_named_torchvision_weights_come_from_the_hub_cache_only(tmp_path, monkeypatch):
    monkeypatch.delenv("LIMITR_ALLOW_DOWNLOADS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(LimitrError, match="not available offline"):
        ImageEncoder("resnet18", D, weights="IMAGENET1K_V1")
    import torchvision

    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    (tmp_path / "checkpoints").mkdir()
    state = _reference_resnet_state(seed=4)
    torch.save(state, tmp_path / "checkpoints" / url.rsplit("/", 1)[-1])
    enc = ImageEncoder("resnet18", D, weights="IMAGENET1K_V1")
    assert torch.equal(enc.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


# ----------------------------------------------------------------------------- words
def merge_reference(tokens, attention_mask, word_ids):
    """One report and one token at a time."""
    b, _, h = tokens.shape
    n = 2 + max(int(w) for row, m in zip(word_ids, attention_mask) for w, a in zip(row, m) if a and w >= 0)
    local = torch.zeros(b, n, h, dtype=tokens.dtype)
    mask = torch.zeros(b, n, dtype=torch.bool)
    for i in range(b):
        local[i, 0] = tokens[i, 0]
        mask[i, 0] = True
        for t in range(tokens.shape[1]):
            if attention_mask[i, t] and word_ids[i, t] >= 0:
                local[i, 1 + word_ids[i, t]] += tokens[i, t]
                mask[i, 1 + word_ids[i, t]] = True
    return local, mask


def test_merge_word_pieces_matches_reference():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 8, 5, generator=g, dtype=torch.float64)
    word_ids = torch.tensor(
        [
            [-1, 0, 0, 1, 2, 2, 2, -1],
            [-1, 0, 1, -1, -1, -1, -1, -1],
            [-1, 0, 1, 1, 2, 3, 4, -1],
        ]
    )
    attention_mask = (torch.arange(8).unsqueeze(0) < torch.tensor([[8], [4], [8]])).long()
    local, mask = merge_word_pieces(tokens, attention_mask, word_ids)
    want_local, want_mask = merge_reference(tokens, attention_mask, word_ids)
    assert local.shape == (3, 6, 5)
    torch.testing.assert_close(local, want_local, rtol=0, atol=1e-12)
    assert torch.equal(mask, want_mask)


def test_merge_needs_cls_first():
    with pytest.raises(LimitrError, match="CLS"):
        merge_word_pieces(torch.zeros(1, 3, 2), torch.ones(1, 3), torch.tensor([[0, 1, -1]]))


def test_masked_word_mean_excludes_cls_and_padding():
    local = torch.tensor([[[9.0, 9.0], [1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [7.0, 7.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    out = masked_word_mean(local, mask)
    torch.testing.assert_close(out, torch.tensor([[2.0, 3.0], [5.0, 6.0]]))  # no words: [CLS]


# ----------------------------------------------------------------------------- text encoder
def token_batch(pad_to: int = 9):
    ids = torch.tensor([[2, 11, 12, 13, 14, 15, 3], [2, 21, 22, 3, 0, 0, 0]])
    word_ids = torch.tensor([[-1, 0, 0, 1, 2, 2, -1], [-1, 0, 1, -1, -1, -1, -1]])
    attention = torch.tensor([[1] * 7, [1, 1, 1, 1, 0, 0, 0]])
    extra = pad_to - ids.shape[1]
    if extra > 0:
        ids = torch.cat([ids, torch.zeros(2, extra, dtype=ids.dtype)], dim=1)
        word_ids = torch.cat([word_ids, torch.full((2, extra), -1)], dim=1)
        attention = torch.cat([attention, torch.zeros(2, extra, dtype=attention.dtype)], dim=1)
    return ids, attention, word_ids


def test_text_encoder_sums_last_four_layers_and_projects(tiny_text_encoder):
    torch.manual_seed(0)
    enc = TextEncoder(str(tiny_text_encoder), D, freeze_layers=0).eval()
    ids, att, wid = token_batch(pad_to=7)
    with torch.no_grad():
        out = enc(ids, att, wid)
        hidden = enc.bert(input_ids=ids, attention_mask=att, output_hidden_states=True).hidden_states
        tokens = hidden[-1] + hidden[-2] + hidden[-3] + hidden[-4]
        words, mask = merge_reference(tokens, att, wid)
        want = enc.proj(words)
    assert out.local.shape == (2, 4, D)
    torch.testing.assert_close(out.local, want, rtol=1e-5, atol=1e-5)
    assert out.local_mask.tolist() == [[True] * 4, [True, True, True, False]]
    torch.testing.assert_close(out.global_emb[1], want[1, 1:3].mean(dim=0), rtol=1e-5, atol=1e-5)


def test_text_extra_padding_changes_nothing(tiny_text_encoder):
    enc = TextEncoder(str(tiny_text_encoder), D).eval()
    with torch.no_grad():
        short = enc(*token_batch(pad_to=7))
        long = enc(*token_batch(pad_to=15))
    for name in ("local", "global_emb"):
        torch.testing.assert_close(getattr(long, name), getattr(short, name), rtol=1e-5, atol=1e-5)
    assert torch.equal(long.local_mask, short.local_mask)


def test_text_freezing(tiny_text_encoder):
    all_frozen = TextEncoder(str(tiny_text_encoder), D, freeze_layers=-1)
    assert not any(p.requires_grad for p in all_frozen.bert.parameters())
    assert all(p.requires_grad for p in all_frozen.proj.parameters())
    all_frozen.train()
    assert not all_frozen.bert.training  # no dropout in a fixed function
    lower = TextEncoder(str(tiny_text_encoder), D, freeze_layers=2)
    assert not any(p.requires_grad for p in lower.bert.embeddings.parameters())
    assert not any(p.requires_grad for layer in lower.bert.encoder.layer[:2] for p in layer.parameters())
    assert all(p.requires_grad for p in lower.bert.encoder.layer[2].parameters())
    none = TextEncoder(str(tiny_text_encoder), D, freeze_layers=0)
    assert all(p.requires_grad for p in none.bert.parameters())
    with pytest.raises(LimitrError, match="only 3 layers"):
        TextEncoder(str(tiny_text_encoder), D, freeze_layers=4)


def test_missing_text_encoder_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("LIMITR_ALLOW_DOWNLOADS", raising=False)
    with pytest.raises(LimitrError, match="cannot load the text encoder"):
        TextEncoder(str(tmp_path / "nowhere"), D)


def test_default_minilm_with_its_tokenizer():
    """The shipped MiniLM, loaded once: words come out one per whitespace word."""
    from transformers import AutoTokenizer

    path = default_text_encoder_path()
    assert (path / "config.json").is_file()
    tok = AutoTokenizer.from_pretrained(str(path))
    batch = tok(["no pleural effusion or pneumothorax", "cardiomegaly"], padding=True, return_tensors="pt")
    word_ids = torch.tensor([[-1 if w is None else w for w in batch.word_ids(i)] for i in range(2)])
    enc = TextEncoder(None, 32, freeze_layers=-1).eval()
    with torch.no_grad():
        out = enc(batch["input_ids"], batch["attention_mask"], word_ids)
    assert out.local.shape == (2, 1 + 5, 32)
    assert out.local_mask.sum(dim=1).tolist() == [6, 2]
    assert torch.isfinite(out.global_emb).all()
