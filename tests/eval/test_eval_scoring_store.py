"""Blockwise scoring equals one full call; saved embeddings read back exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from limitr.eval.scoring import score_matrix, take
from limitr.eval.store import EmbeddingWriter, align, read_embeddings
from limitr.model.outputs import ImageEmbeddings, TextEmbeddings


def random_embeddings(n_img: int, n_txt: int, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    m, n = 6, 5
    img_mask = torch.ones(n_img, m, dtype=torch.bool)
    img_mask[::2, 3:] = False  # studies without a lateral
    txt_mask = torch.rand(n_txt, n, generator=g) > 0.3
    txt_mask[:, 0] = True
    images = ImageEmbeddings(torch.randn(n_img, dim, generator=g), torch.randn(n_img, m, dim, generator=g), img_mask, (1, 3))
    texts = TextEmbeddings(torch.randn(n_txt, dim, generator=g), torch.randn(n_txt, n, dim, generator=g), txt_mask)
    return images, texts


@pytest.mark.parametrize("block", [1, 4, 7, 50])
def test_blockwise_scores_equal_one_call(stub_model, block: int) -> None:
    images, texts = random_embeddings(11, 9)
    full = stub_model.similarity(images, texts)
    seen = []
    got = score_matrix(stub_model, images, texts, block_size=block, progress=seen.append)
    for name in ("total", "global_", "local", "caption"):
        torch.testing.assert_close(getattr(got, name), getattr(full, name), rtol=0, atol=1e-6)
    assert got.image is None
    assert sum(seen) == 11 * 9


def test_score_matrix_keeps_only_what_is_asked(stub_model) -> None:
    images, texts = random_embeddings(4, 3)
    got = score_matrix(stub_model, images, texts, block_size=2, keep=())
    assert got.total.shape == (4, 3) and got.global_.shape == (4, 3)
    assert got.local is None and got.caption is None


def test_blockwise_with_the_real_model() -> None:
    pytest.importorskip("limitr.model", reason="needs the LIMITR model")
    from limitr.model import LIMITR, ModelConfig

    torch.manual_seed(0)
    model = LIMITR(ModelConfig(embed_dim=16, text_freeze_layers=-1)).eval()
    images, texts = random_embeddings(7, 6, dim=16)
    images = ImageEmbeddings(images.global_emb, images.local, images.local_mask, (1, 3))
    with torch.no_grad():
        full = model.similarity(images, texts)
    got = score_matrix(model, images, texts, block_size=3, chunk=2)
    torch.testing.assert_close(got.total, full.total.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.global_, full.global_.float(), rtol=1e-5, atol=1e-5)


def test_writer_reader_round_trip_with_files_and_padding(tmp_path: Path) -> None:
    images, texts = random_embeddings(7, 7)
    writer = EmbeddingWriter(tmp_path / "t", "texts", "study_id", rows_per_file=3)
    keys = torch.arange(100, 107)
    # batches of different word counts, as the text encoder trims them
    writer.add(keys[:2], TextEmbeddings(texts.global_emb[:2], texts.local[:2, :3], texts.local_mask[:2, :3]))
    writer.add(keys[2:], take(texts, slice(2, 7)))
    files = writer.close()
    assert files == ["texts-00000.safetensors", "texts-00001.safetensors", "texts-00002.safetensors"]
    got_keys, got = read_embeddings(tmp_path / "t", "texts")
    assert got_keys.tolist() == keys.tolist()
    torch.testing.assert_close(got.global_emb, texts.global_emb)
    assert got.local.shape == texts.local.shape
    torch.testing.assert_close(got.local[2:], texts.local[2:])
    torch.testing.assert_close(got.local[:2, :3], texts.local[:2, :3])
    assert not got.local_mask[:2, 3:].any() and (got.local[:2, 3:] == 0).all()

    iw = EmbeddingWriter(tmp_path / "i", "images", "study_id", rows_per_file=10)
    iw.add(keys, images)
    iw.close()
    _, back = read_embeddings(tmp_path / "i", "images")
    assert back.grid == (1, 3)
    torch.testing.assert_close(back.local, images.local)
    assert torch.equal(back.local_mask, images.local_mask)


def test_align_pairs_by_key() -> None:
    keys, img_rows, txt_rows = align(torch.tensor([5, 3, 9, 3]), torch.tensor([9, 1, 5]))
    assert keys.tolist() == [5, 9]
    assert img_rows.tolist() == [0, 2] and txt_rows.tolist() == [2, 0]


def test_missing_embeddings_are_a_clear_error(tmp_path: Path) -> None:
    from limitr.errors import LimitrError

    with pytest.raises(LimitrError, match="embed stage"):
        read_embeddings(tmp_path, "images")
