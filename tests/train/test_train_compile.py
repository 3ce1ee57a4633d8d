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


@pytest.mark.parametrize("mixed_precision", [False, True])
def test_compiled_training_matches_eager(tmp_path: Path, tiny_bert, tiny_data, mixed_precision: bool) -> None:
    eager, eager_lines = _run(tmp_path, tiny_bert, tiny_data, "eager", compile=False, mixed_precision=mixed_precision)
    fused, fused_lines = _run(tmp_path, tiny_bert, tiny_data, "fused", compile=True, mixed_precision=mixed_precision)
    assert eager.summary["compile"]["compiled"] is False and eager_lines == ["eager (train.compile is false)"]
    precision = "bfloat16" if mixed_precision else "float32"
    assert eager.summary["precision"] == fused.summary["precision"] == precision
    info = fused.summary["compile"]
    assert info["compiled"] is True and info["fallback"] is None and info["graphs"] > 0, info
    assert fused_lines == ["compiled (train.compile is true)"]
    assert any((tmp_path / "cache" / "inductor").iterdir())  # the kernels in the named folder
    losses = [(a["loss"], b["loss"]) for a, b in zip(eager.step_history, fused.step_history)]
    assert len(losses) == 3
    # The first loss comes before any update: the same batch and dropout draws, so only the
    # kernels' rounding parts them (bf16 autocast rounds to 3 significant digits).
    assert math.isclose(*losses[0], rel_tol=1e-3 if mixed_precision else 1e-5), losses
    if mixed_precision:
        return  # in bf16 a rounding apart moves Adam's first steps by whole learning rates
    # Adam's first steps are near sign(gradient): a gradient element near 0 that rounds to the
    # other sign moves its weight by 2 lr, so float32 rounding grows to a few 1e-4 of the loss by step 3
    # (the gradients themselves are checked against eager in tests/model/test_model_compiled.py).
    for a, b in losses[1:]:
        assert math.isclose(a, b, rel_tol=2e-3), losses
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
