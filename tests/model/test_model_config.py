"""ModelConfig: params.yaml's model section in, JSON out, errors that name the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from limitr.errors import LimitrError
from limitr.model.config import LossWeights, ModelConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["params.yaml", "params-paper.yaml"])
def test_params_model_section_round_trips(name):
    if not (ROOT / name).is_file():
        pytest.skip(f"{name} is not in this checkout")
    section = yaml.safe_load((ROOT / name).read_text())["model"]
    cfg = ModelConfig.from_dict(section)
    assert cfg.embed_dim == section["embed_dim"]
    assert cfg.loss_weights.global_ == section["loss_weights"]["global"]
    assert cfg.loss_weights["global"] == section["loss_weights"]["global"]
    d = cfg.to_dict()
    assert set(d) == set(section)  # every params key, nothing else
    assert ModelConfig.from_dict(json.loads(json.dumps(d))) == cfg


def test_defaults_and_nulls():
    cfg = ModelConfig.from_dict({"score_chunk": None, "text_encoder": None, "temp1": None})
    assert cfg.score_chunk is None and cfg.text_encoder is None and cfg.temp1 == 4.0
    assert ModelConfig.from_dict({}) == ModelConfig()
    assert ModelConfig.from_dict({"loss_weights": {"local_internal": 1}}).loss_weights == LossWeights(1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"embed_dims": 8}, ["embed_dims"]),
        ({"loss_weights": {"globl": 1.0}}, ["globl", "loss_weights"]),
        ({"image_backbone": "vgg16"}, ["image_backbone", "resnet18"]),
        ({"local_layer": "layer4"}, ["local_layer", "layer2"]),
        ({"embed_dim": 10, "positional_encoding": True}, ["embed_dim", "divisible by 4"]),
        ({"internal_weighting": "max"}, ["internal_weighting"]),
        ({"saf_dropout": 1.0}, ["saf_dropout"]),
        ({"text_freeze_layers": -2}, ["text_freeze_layers"]),
        ({"score_chunk": 0}, ["score_chunk"]),
        ({"lateral": "maybe"}, ["lateral"]),
        ({"caption_attention": False, "image_attention": False}, ["local_external"]),
    ],
)
def test_bad_values_name_the_key(bad, words):
    with pytest.raises(LimitrError) as info:
        ModelConfig.from_dict(bad)
    for word in words:
        assert word in str(info.value)


def test_embed_dim_not_divisible_by_4_is_fine_without_positional_encoding():
    assert ModelConfig.from_dict({"embed_dim": 10, "positional_encoding": False}).embed_dim == 10


def test_local_enabled():
    assert ModelConfig().local_enabled
    assert not ModelConfig.from_dict({"loss_weights": {"local_external": 0}}).local_enabled
    no_dirs = {"caption_attention": False, "image_attention": False, "loss_weights": {"local_external": 0}}
    assert not ModelConfig.from_dict(no_dirs).local_enabled
