"""Fixtures of the training tests: tiny shards and a tiny BERT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train_data_factory import VOCAB, make_split


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread per test module (the cores are shared; runs compared bit for bit
    must use the same count), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer BERT of width 32, saved as a local folder."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    folder = tmp_path_factory.mktemp("tiny_bert")
    BertModel(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(shards, tokens): 24 train studies in two parts, 8 validate studies, 48 px images."""
    root = tmp_path_factory.mktemp("tiny_data")
    shards, tokens = root / "shards", root / "tokens"
    make_split(shards, tokens, "train", 24, image_size=48, seed=1, start_id=50000000, parts=2)
    make_split(shards, tokens, "validate", 8, image_size=48, seed=2, start_id=51000000)
    return shards, tokens
