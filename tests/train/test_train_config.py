"""The train config, the optimizer's parameter groups and the autocast rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from limitr.errors import LimitrError
from limitr.model.config import ModelConfig
from limitr.train.config import TrainConfig
from limitr.train.loop import derive_seed, parameter_groups, resolve_autocast_dtype
from train_data_factory import tiny_model_dict

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["params.yaml", "params-paper.yaml", "params-iu.yaml"])
def test_params_files_parse(name: str) -> None:
    params = yaml.safe_load((REPO / name).read_text())
    cfg = TrainConfig.from_dict(params["train"])
    assert cfg.epochs >= 1 and cfg.batch_size >= 2
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    ModelConfig.from_dict(params["model"])


def test_paper_preset_holds_the_paper_settings() -> None:
    params = yaml.safe_load((REPO / "params-paper.yaml").read_text())
    train, model = params["train"], params["model"]
    assert (train["batch_size"], train["epochs"], train["crop_size"], train["upsample_to"]) == (48, 50, 224, 299)
    assert (train["lr"], list(train["betas"]), train["weight_decay"], train["grad_clip"]) == (5e-5, [0.5, 0.999], 1e-6, 0.25)
    assert train["mixed_precision"] is True and train["patience"] == 5
    assert train["ema_decay"] is None  # the paper validates and keeps the raw weights
    assert model["image_backbone"] == "resnet50" and model["embed_dim"] == 768
    assert model["text_encoder"] == params["tokenize"]["tokenizer"] == "emilyalsentzer/Bio_ClinicalBERT"
    assert params["preprocess"]["image_size"] == 256
    _complete(params, "params-paper.yaml")


def _complete(params: dict, name: str) -> None:
    default = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in default.items():  # a complete params file, key for key
        assert set(params.get(section) or {}) == set(values), (
            f"{name} section {section} differs in keys from params.yaml: bring them in line"
        )


def test_iu_preset_is_complete_and_reads_iu() -> None:
    params = yaml.safe_load((REPO / "params-iu.yaml").read_text())
    _complete(params, "params-iu.yaml")
    pre = params["preprocess"]
    assert pre["source"] == "iu" and pre["ms_cxr"] is None and pre["class_retrieval"] is None
    assert params["evaluate"]["ground_truth"] is None and params["model"]["image_weights"] is None


def test_bad_train_values_say_which_key() -> None:
    with pytest.raises(LimitrError, match="unknown key"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(LimitrError, match="train.batch_size"):
        TrainConfig.from_dict({"batch_size": 2.5})
    with pytest.raises(LimitrError, match="batch_size"):
        TrainConfig.from_dict({"batch_size": 1})
    with pytest.raises(LimitrError, match="mixed_precision"):
        TrainConfig.from_dict({"mixed_precision": "sometimes"})
    cfg = TrainConfig.from_dict({"shards": "x", "tokens": "y", "out": "z", "betas": [0.9, 0.99], "image_lr": None})
    assert cfg.betas == (0.9, 0.99) and cfg.image_lr is None


def test_autocast_rule(monkeypatch, tmp_path) -> None:
    from limitr.model import precision
    from limitr.train import loop

    cpu = torch.device("cpu")
    monkeypatch.setattr(loop, "cpu_bf16_dot_products", lambda: False)
    assert resolve_autocast_dtype("auto", cpu) is None
    monkeypatch.setattr(loop, "cpu_bf16_dot_products", lambda: True)
    assert resolve_autocast_dtype("auto", cpu) == torch.bfloat16
    # The flags the kernel reports decide it: x86 AVX512-BF16 or AMX, Arm BF16; not AVX-512 alone.
    for flags, native in (("fpu avx512f avx512bw avx512vl", False), ("fpu avx512f avx512_bf16", True),
                          ("fpu amx_bf16 amx_tile", True)):
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert precision.cpu_bf16_dot_products(str(tmp_path / "cpuinfo")) is native
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert precision.cpu_bf16_dot_products(str(tmp_path / "cpuinfo")) is True
    assert precision.cpu_bf16_dot_products(str(tmp_path / "absent")) is False
    assert resolve_autocast_dtype(False, cpu) is None
    assert resolve_autocast_dtype(True, cpu) == torch.bfloat16
    assert resolve_autocast_dtype("true", cpu) == torch.bfloat16


def test_parameter_groups_split_image_encoders(tiny_bert) -> None:
    from limitr.model import LIMITR

    model = LIMITR(ModelConfig.from_dict(tiny_model_dict(tiny_bert, text_freeze_layers=2)))
    groups = parameter_groups(model, 1e-4, 3e-4)
    by_name = {g["name"]: g for g in groups}
    assert by_name["image"]["lr"] == 3e-4 and by_name["text_and_alignment"]["lr"] == 1e-4
    image_ids = {id(p) for p in model.frontal_encoder.parameters()} | {id(p) for p in model.lateral_encoder.parameters()}
    assert {id(p) for p in by_name["image"]["params"]} == image_ids
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) and set(grouped) == trainable
    frozen = {id(p) for p in model.text_encoder.bert.embeddings.parameters()}
    assert not frozen & set(grouped)
    assert parameter_groups(model, 1e-4, None)[0]["lr"] == 1e-4


def test_head_lr_gives_the_new_modules_their_own_group(tiny_bert) -> None:
    from limitr.model import LIMITR

    model = LIMITR(ModelConfig.from_dict(tiny_model_dict(tiny_bert, text_freeze_layers=2)))
    groups = {g["name"]: g for g in parameter_groups(model, 1e-4, 3e-4, head_lr=2e-3)}
    assert set(groups) == {"image", "text", "alignment"}
    assert (groups["image"]["lr"], groups["text"]["lr"], groups["alignment"]["lr"]) == (3e-4, 1e-4, 2e-3)
    bert = {id(p) for p in model.text_encoder.bert.parameters()}
    new = {id(p) for p in model.alignment.parameters()} | {id(p) for p in model.text_encoder.proj.parameters()}
    assert {id(p) for p in groups["text"]["params"]} <= bert and groups["text"]["params"]
    assert {id(p) for p in groups["alignment"]["params"]} == new
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert len(grouped) == len(set(grouped)) and set(grouped) == trainable
    with pytest.raises(LimitrError, match="head_lr"):
        TrainConfig.from_dict({"head_lr": 0})


def test_derived_seeds_differ_and_repeat() -> None:
    seeds = {derive_seed(0, e, r) for e in range(5) for r in range(3)}
    assert len(seeds) == 15 and derive_seed(0, 1, 0) == derive_seed(0, 1, 0)
    assert all(0 <= s < 2**63 for s in seeds)
