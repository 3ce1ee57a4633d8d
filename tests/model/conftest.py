"""Fixtures of the model tests: a tiny BERT folder and tiny configs."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_text_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer BERT of width 24 (not D: the projection is exercised), saved as a folder."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=60,
        hidden_size=24,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
    )
    folder = tmp_path_factory.mktemp("tiny_text_encoder")
    BertModel(cfg).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_config(tiny_text_encoder: Path):
    """A factory of small ModelConfigs: ``tiny_config(lateral=False, ...)``."""
    from limitr.model import ModelConfig

    def make(**overrides) -> ModelConfig:
        d = {
            "image_backbone": "resnet18",
            "text_encoder": str(tiny_text_encoder),
            "text_freeze_layers": 0,
            "embed_dim": 16,
            "saf_dropout": 0.0,
            "score_chunk": None,
            # the method's settings, which these tests check (the CPU defaults differ)
            "local_layer": "layer3",
            "positional_encoding": True,
            "positional_encoding_scale": 1.0,
            "attention_scale": 1.0,
        }
        d.update(overrides)
        return ModelConfig.from_dict(d)

    return make


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is fastest, and immune to other processes on the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
