"""Seeded runs repeat exactly; a killed run resumed equals an uninterrupted one (CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from limitr.errors import LimitrError
from limitr.model.config import ModelConfig
from limitr.train import checkpoint as ckpt
from stages.live import LiveCurves, live_callbacks, read_curve
from limitr.train.loop import TrainCallbacks, TrainConfig, train
from train_data_factory import tiny_model_dict

TRAIN = {
    "epochs": 3,
    "batch_size": 8,
    "crop_size": 40,
    "lr": 1.0e-3,
    "image_lr": 2.0e-3,
    "patience": None,
    "plateau_patience": 0,
}


class Killed(Exception):
    """Stands in for the process dying mid-epoch."""


def _run(tmp: Path, bert: Path, data, name: str, *, seed: int = 0, kill_at: int | None = None, resume=None, **train_changes):
    shards, tokens = data
    model_cfg = ModelConfig.from_dict(tiny_model_dict(bert))
    train_cfg = TrainConfig.from_dict({**TRAIN, **train_changes})

    def on_step(row: dict) -> None:
        if kill_at is not None and row["step"] == kill_at:
            raise Killed()

    curves = LiveCurves(tmp / f"{name}-metrics" / "training")
    try:
        return train(
            model_cfg,
            train_cfg,
            shards,
            tokens,
            tmp / name,
            seed=seed,
            device="cpu",
            metrics_dir=tmp / f"{name}-metrics",
            resume=resume,
            callbacks=live_callbacks(curves, TrainCallbacks(on_step=on_step)),
        )
    finally:
        curves.close()


def _losses(result) -> list[float]:
    return [row["loss"] for row in result.step_history]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(module_tmp, tiny_bert, tiny_data):
    return module_tmp, _run(module_tmp, tiny_bert, tiny_data, "ref")


def test_same_seed_same_losses_other_seed_differs(reference, tiny_bert, tiny_data, tmp_path) -> None:
    _, first = reference
    again = _run(tmp_path, tiny_bert, tiny_data, "again")
    assert len(_losses(first)) == 9  # 3 epochs x 3 global batches of 8
    assert _losses(again) == _losses(first)
    assert [e["r_sum"] for e in again.epoch_history] == [e["r_sum"] for e in first.epoch_history]
    other = _run(tmp_path, tiny_bert, tiny_data, "other", seed=1, epochs=1)
    assert _losses(other) != _losses(first)[:3]


def test_killed_run_resumes_to_the_uninterrupted_result(reference, tiny_bert, tiny_data, tmp_path) -> None:
    ref_dir, ref = reference
    with pytest.raises(Killed):
        _run(tmp_path, tiny_bert, tiny_data, "run", kill_at=5)  # epoch 2, second step
    state = ckpt.load_state(tmp_path / "run" / "last")
    assert state is not None and state["epoch"] == 1 and not state["finished"]
    assert len(read_curve(tmp_path / "run-metrics" / "training", "per_step", "loss")) == 5

    resumed = _run(tmp_path, tiny_bert, tiny_data, "run")  # resume=None: picks up out/last
    assert resumed.resumed_from_epoch == 1
    torch.testing.assert_close(torch.tensor(_losses(resumed)), torch.tensor(_losses(ref)), rtol=1e-5, atol=1e-6)
    ref_w, run_w = _weights(ref_dir / "ref" / "last"), _weights(tmp_path / "run" / "last")
    assert ref_w.keys() == run_w.keys()
    for key in ref_w:
        torch.testing.assert_close(run_w[key], ref_w[key], rtol=1e-5, atol=1e-6, msg=key)

    # The curves hold every step once, as the uninterrupted run's do.
    steps = read_curve(tmp_path / "run-metrics" / "training", "per_step", "loss")
    ref_steps = read_curve(ref_dir / "ref-metrics" / "training", "per_step", "loss")
    assert [x for x, _ in steps] == [x for x, _ in ref_steps] == list(range(1, 10))
    torch.testing.assert_close(torch.tensor([v for _, v in steps]), torch.tensor([v for _, v in ref_steps]),
                               rtol=1e-5, atol=1e-6)
    assert [x for x, _ in read_curve(tmp_path / "run-metrics" / "training", "per_epoch", "r_sum")] == [1, 2, 3]
    summary = json.loads((tmp_path / "run-metrics" / "train.json").read_text())
    ref_summary = json.loads((ref_dir / "ref-metrics" / "train.json").read_text())
    for key in ("best_epoch", "epochs_run", "steps", "best", "final"):
        assert summary[key] == ref_summary[key], key
    assert ckpt.load_state(tmp_path / "run" / "last")["finished"]


def test_outputs_and_summary(reference) -> None:
    ref_dir, ref = reference
    out = ref_dir / "ref"
    for name in ("config.json", "report.json", "best/model.safetensors", "best/config.json",
                 "best/metrics.json", "last/model.safetensors", "last/state.pt"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["batch_size"] == 8 and config["model"]["embed_dim"] == 16
    report = json.loads((out / "report.json").read_text())
    assert report["train"]["studies"] == 24 and report["validate"]["studies"] == 8
    summary = json.loads((ref_dir / "ref-metrics" / "train.json").read_text())
    assert summary["epochs_run"] == 3 and summary["n_validate"] == 8
    best = max(ref.epoch_history, key=lambda e: e["r_sum"])
    assert summary["best"]["r_sum"] == best["r_sum"]
    assert summary["best_epoch"] == best["epoch"]
    assert json.loads((out / "best" / "metrics.json").read_text())["epoch"] == best["epoch"]
    for key in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"):
        assert 0.0 <= summary["final"][key] <= 100.0
    # State loads without pickled objects.
    state = torch.load(out / "last" / "state.pt", weights_only=True)
    assert state["finished"] and state["step"] == 9


def test_resume_refuses_another_config(reference, tiny_bert, tiny_data, tmp_path) -> None:
    ref_dir, _ = reference
    with pytest.raises(Killed):
        _run(tmp_path, tiny_bert, tiny_data, "run", kill_at=4)
    with pytest.raises(LimitrError, match="another config"):
        _run(tmp_path, tiny_bert, tiny_data, "run", resume=True, lr=5.0e-4)
    with pytest.raises(LimitrError, match="nothing to resume"):
        _run(tmp_path, tiny_bert, tiny_data, "empty", resume=True)


def test_mixed_precision_on_cpu_trains(tiny_bert, tiny_data, tmp_path) -> None:
    """bf16 autocast for the encoders, float32 scores: the losses stay finite."""
    result = _run(tmp_path, tiny_bert, tiny_data, "amp", epochs=1, mixed_precision=True)
    losses = _losses(result)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
