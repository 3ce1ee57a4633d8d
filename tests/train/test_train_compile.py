"""train.compile: a compiled run trains like the eager one (float32 rounding apart), keeps its
kernels in the named folder, says what it chose; auto stays eager on a CPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from limitr.errors import LimitrError
from limitr.model.config import ModelConfig
from limitr.train.loop import TrainCallbacks, TrainConfig, train
from train_data_factory import tiny_model_dict

TRAIN = {"epochs": 1, "batch_size": 8, "crop_size": 40, "lr": 1.0e-3, "image_lr": 2.0e-3, "patience": None,
         "plateau_patience": 0}


def _run(tmp: Path, bert: Path, data, name: str, **changes):
    shards, tokens = data
    lines: list[str] = []
    result = train(
        ModelConfig.from_dict(tiny_model_dict(bert)), TrainConfig.from_dict({**TRAIN, **changes}), shards, tokens,
        tmp / name, seed=0, device="cpu", metrics_dir=tmp / f"{name}-metrics",
        callbacks=TrainCallbacks(on_compile=lines.append), compile_cache=tmp / "cache",
    )
    return result, lines


def test_compiled_training_matches_eager(tmp_path: Path, tiny_bert, tiny_data) -> None:
    eager, eager_lines = _run(tmp_path, tiny_bert, tiny_data, "eager", compile=False)
    fused, fused_lines = _run(tmp_path, tiny_bert, tiny_data, "fused", compile=True)
    assert eager.summary["compile"]["compiled"] is False and eager_lines == ["eager (train.compile is false)"]
    info = fused.summary["compile"]
    assert info["compiled"] is True and info["fallback"] is None and info["graphs"] > 0, info
    assert fused_lines == ["compiled (train.compile is true)"]
    assert any((tmp_path / "cache" / "inductor").iterdir())  # the kernels in the named folder
    losses = [(a["loss"], b["loss"]) for a, b in zip(eager.step_history, fused.step_history)]
    assert len(losses) == 3
    for a, b in losses:  # the same steps and dropout draws; float32 rounding only
        assert math.isclose(a, b, rel_tol=1e-4), losses
    for key in ("i2t_R@1", "t2i_R@1", "r_sum"):
        assert math.isclose(eager.summary["final"][key], fused.summary["final"][key], abs_tol=1e-6), key


def test_auto_is_eager_on_a_cpu(tmp_path: Path, tiny_bert, tiny_data) -> None:
    result, lines = _run(tmp_path, tiny_bert, tiny_data, "auto", compile="auto", max_steps_per_epoch=1)
    assert result.summary["compile"]["compiled"] is False
    assert len(lines) == 1 and lines[0].startswith("eager (auto is eager on CPUs")
    assert not (tmp_path / "cache").exists()  # nothing written when nothing compiles


@pytest.mark.parametrize("value", ["yes", 2, "maybe"])
def test_a_wrong_compile_setting_says_what_to_fix(value) -> None:
    with pytest.raises(LimitrError, match="train.compile"):
        TrainConfig.from_dict({"compile": value})
