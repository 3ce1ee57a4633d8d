"""train.schedule: the cosine factor's known values, the rates a cosine run trains with, a
killed cosine run resumed equal to an uninterrupted one, and the settings' checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from limitr.errors import LimitrError
from limitr.model.config import ModelConfig
from limitr.train import checkpoint as ckpt
from limitr.train.loop import TrainCallbacks, TrainConfig, cosine_factor, train
from train_data_factory import tiny_model_dict

TRAIN = {"epochs": 3, "batch_size": 8, "crop_size": 40, "lr": 1.0e-3, "image_lr": 2.0e-3, "head_lr": 4.0e-3,
         "patience": None, "ema_decay": None, "schedule": "cosine", "warmup_steps": 2}


class Killed(Exception):
    """Stands in for the process dying mid-epoch."""


def _run(tmp: Path, bert: Path, data, name: str, *, kill_at: int | None = None, resume=None, **changes):
    shards, tokens = data

    def on_step(row: dict) -> None:
        if kill_at is not None and row["step"] == kill_at:
            raise Killed()

    return train(ModelConfig.from_dict(tiny_model_dict(bert)), TrainConfig.from_dict({**TRAIN, **changes}),
                 shards, tokens, tmp / name, seed=0, device="cpu", resume=resume,
                 callbacks=TrainCallbacks(on_step=on_step))


def test_cosine_factor_known_values() -> None:
    assert cosine_factor(0, 10) == 1.0
    assert cosine_factor(5, 10) == pytest.approx(0.5, abs=1e-15)
    assert cosine_factor(9, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)), abs=1e-15)
    assert cosine_factor(10, 10) == pytest.approx(0.0, abs=1e-15)
    assert cosine_factor(12, 10) == pytest.approx(0.0, abs=1e-15)  # past the end: stays at 0
    # Warm-up: 1/3, 2/3 over two steps, then the cosine over the 8 steps left.
    assert [cosine_factor(s, 10, 2) for s in (0, 1, 2)] == pytest.approx([1 / 3, 2 / 3, 1.0], abs=1e-15)
    assert cosine_factor(6, 10, 2) == pytest.approx(0.5, abs=1e-15)
    factors = [cosine_factor(s, 100, 5) for s in range(100)]
    # After the warm-up the factor starts at 1 and falls at every step.
    assert factors[5] == 1.0 and all(a > b for a, b in zip(factors[5:], factors[6:]))


def test_cosine_run_trains_with_the_scheduled_rates(tiny_bert, tiny_data, tmp_path) -> None:
    result = _run(tmp_path, tiny_bert, tiny_data, "cos")
    rows = result.step_history
    assert len(rows) == 9  # 3 epochs x 3 batches of 8
    for i, row in enumerate(rows):
        factor = cosine_factor(i, 9, 2)
        for key, base in (("lr", 1.0e-3), ("image_lr", 2.0e-3), ("head_lr", 4.0e-3)):
            assert row[key] == pytest.approx(base * factor, rel=1e-12), (i, key)
    assert rows[-1]["lr"] < 0.05 * 1.0e-3 and all(math.isfinite(r["loss"]) for r in rows)

    # The plateau schedule changes the rates only between epochs: one epoch keeps them.
    plateau = _run(tmp_path, tiny_bert, tiny_data, "plateau", epochs=1, schedule="plateau", warmup_steps=0)
    assert {r["lr"] for r in plateau.step_history} == {1.0e-3}


def test_killed_cosine_run_resumes_to_the_uninterrupted_result(tiny_bert, tiny_data, tmp_path) -> None:
    ref = _run(tmp_path, tiny_bert, tiny_data, "ref")
    with pytest.raises(Killed):
        _run(tmp_path, tiny_bert, tiny_data, "run", kill_at=5)
    assert ckpt.load_state(tmp_path / "run" / "last")["epoch"] == 1
    resumed = _run(tmp_path, tiny_bert, tiny_data, "run")
    assert resumed.resumed_from_epoch == 1
    torch.testing.assert_close(torch.tensor([r["loss"] for r in resumed.step_history]),
                               torch.tensor([r["loss"] for r in ref.step_history]), rtol=1e-5, atol=1e-6)
    assert [r["lr"] for r in resumed.step_history] == pytest.approx([r["lr"] for r in ref.step_history], rel=1e-12)

    # Under the cosine schedule the epochs set its length: a run of other epochs is not resumed.
    with pytest.raises(Killed):
        _run(tmp_path, tiny_bert, tiny_data, "longer", kill_at=4)
    with pytest.raises(LimitrError, match="another config"):
        _run(tmp_path, tiny_bert, tiny_data, "longer", resume=True, epochs=4)


def test_bad_schedule_settings_say_which_key() -> None:
    with pytest.raises(LimitrError, match="train.schedule"):
        TrainConfig.from_dict({"schedule": "linear"})
    with pytest.raises(LimitrError, match="train.warmup_steps"):
        TrainConfig.from_dict({"warmup_steps": 1.5})
    with pytest.raises(LimitrError, match="train.warmup_steps"):
        TrainConfig.from_dict({"warmup_steps": -1})
    with pytest.raises(LimitrError, match="cosine schedule only"):
        TrainConfig.from_dict({"schedule": "plateau", "warmup_steps": 10})  # would do nothing
    assert TrainConfig.from_dict({"schedule": "Cosine"}).schedule == "cosine"
