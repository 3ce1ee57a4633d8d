"""The schema of settings: the params files validate, params.yaml states every default,
the config classes share its defaults, and every mistake is one line naming the setting."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from limitr.errors import LimitrError
from limitr.settings import SECTIONS, Settings, section_model, validate_settings

REPO = Path(__file__).resolve().parents[1]


def _load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


@pytest.mark.parametrize("name", ["params.yaml", "params-paper.yaml", "params-iu.yaml"])
def test_params_files_validate(name: str) -> None:
    settings = validate_settings(_load(name), name)
    assert isinstance(settings, Settings)
    assert set(_load(name)) == set(SECTIONS)


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def test_params_yaml_states_every_default_with_its_value() -> None:
    stated = _flatten(_load("params.yaml"))
    defaults = _flatten(Settings().model_dump(by_alias=True))
    assert set(stated) == set(defaults), (
        f"params.yaml lacks {sorted(set(defaults) - set(stated))}, has extra {sorted(set(stated) - set(defaults))}")
    differ = {k: (stated[k], defaults[k]) for k in defaults if stated[k] != defaults[k]}
    assert not differ, f"params.yaml and the schema's defaults disagree (params, schema): {differ}"


def test_config_classes_take_the_schema_defaults() -> None:
    from limitr.data.images import MAX_PIXELS
    from limitr.data.preprocess import PreprocessConfig
    from limitr.model.config import ModelConfig
    from limitr.train.config import TrainConfig

    model = ModelConfig().to_dict()
    assert model == Settings().model.to_config_dict()
    train = TrainConfig().to_dict()
    assert train == Settings().train.to_config_dict()
    pre = Settings().preprocess
    fields = {f.name: f.default for f in dataclasses.fields(PreprocessConfig)}
    assert (fields["image_size"], fields["shard_size"], fields["max_pixels"]) == (
        pre.image_size, pre.shard_size, pre.max_pixels) and MAX_PIXELS == pre.max_pixels


@pytest.mark.parametrize("data, message", [
    ({"synthesize": {"n_studys": 2000}}, "params.yaml: unknown key synthesize.n_studys; did you mean n_studies?"),
    ({"synthesise": {"n_studies": 5}}, "params.yaml: unknown section synthesise; did you mean synthesize?"),
    ({"model": {"loss_weights": {"globl": 1}}}, "unknown key model.loss_weights.globl; did you mean global?"),
    ({"train": {"zzz": 1}}, "unknown key train.zzz; valid keys: shards, tokens"),
    ({"synthesize": {"n_studies": "lots"}}, "params.yaml: synthesize.n_studies: input should be a valid integer"),
    ({"tokenize": {"max_length": "long"}}, "tokenize.max_length: input should be a valid integer"),
    ({"preprocess": {"image_size": 2.5}}, "preprocess.image_size"),
    ({"preprocess": {"max_pixels": 0}}, "preprocess.max_pixels: input should be greater than or equal to 1"),
    ({"embed": {"batch_size": "x"}}, "embed.batch_size"),
    ({"evaluate": {"block_size": -1}}, "evaluate.block_size"),
    ({"base": {"device": "gpu0"}}, "base.device: must be one of auto, cpu, cuda, cuda:N"),
    ({"train": {"mixed_precision": "sometimes"}}, "train.mixed_precision: must be auto, true or false"),
    ({"train": {"num_workers": "many"}}, "train.num_workers: must be auto or a whole number >= 0"),
    ({"train": {"betas": [0.5]}}, "train.betas: must be a list of two numbers"),
    ({"model": {"image_backbone": "vgg16"}}, "model.image_backbone"),
    ({"model": {"embed_dim": 10, "positional_encoding": True}}, "divisible by 4"),
    ({"model": 5}, "model must be a mapping"),
    ({"tokenize": {"train_wordpiece": True}}, "tokenize.train_wordpiece: true gives token ids that do not match"),
])
def test_mistakes_are_one_line_naming_the_setting(data: dict, message: str) -> None:
    with pytest.raises(LimitrError) as info:
        validate_settings(data, "params.yaml")
    text = str(info.value)
    assert message in text and "\n" not in text, text


def test_values_are_typed_and_nulls_mean_defaults() -> None:
    s = validate_settings({"synthesize": None, "train": {"num_workers": "auto", "mixed_precision": "false",
                                                          "betas": [0.9, 0.99]},
                           "evaluate": {"ground_truth": "null"}})
    assert s.synthesize.n_studies == 2000
    assert s.train.num_workers == "auto" and s.train.mixed_precision is False and s.train.betas == (0.9, 0.99)
    assert s.evaluate.ground_truth is None
    assert validate_settings({"train": {"num_workers": 3}}).train.num_workers == 3


def test_every_section_has_a_model() -> None:
    for name in SECTIONS:
        assert section_model(name)().model_dump() is not None
