"""The weight average of train.ema_decay: the update against a plain float64 reference, the
swap in and out, what best/ and last/ hold, and a resumed run equal to an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from limitr.model.config import ModelConfig
from limitr.train import checkpoint as ckpt
from limitr.train.averaging import WeightAverage
from limitr.train.loop import TrainCallbacks, TrainConfig, train
from train_data_factory import tiny_model_dict

TRAIN = {"epochs": 2, "batch_size": 8, "crop_size": 40, "lr": 1.0e-3, "image_lr": 2.0e-3, "patience": None,
         "plateau_patience": 0, "ema_decay": 0.9}


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    net[2].weight.requires_grad_(False)  # frozen: left out of the average
    return net


def test_average_matches_a_plain_reference() -> None:
    net = _net()
    average = WeightAverage(net, 0.8)
    assert "2.weight" not in average.names and "1.running_mean" in average.names
    assert "1.num_batches_tracked" not in average.names  # not floating point
    ref = {n: t.detach().clone() for n, t in net.state_dict().items() if n in average.names}
    for k in range(6):
        net.train()(torch.randn(5, 3, dtype=torch.float64))  # moves the BatchNorm statistics
        with torch.no_grad():
            for p in net.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p))
        d = min(0.8, (1 + k + 1) / (10 + k + 1))  # 2/11, 3/12, ... then 0.8
        for n, t in net.state_dict().items():
            if n in ref:
                ref[n] = d * ref[n] + (1 - d) * t
        average.update(net)
    assert average.updates == 6
    for n in ref:
        torch.testing.assert_close(average.average[n], ref[n], rtol=1e-12, atol=1e-12, msg=n)

    raw = {n: t.clone() for n, t in net.state_dict().items()}
    with average.applied(net):
        for n, t in net.state_dict().items():
            expected = ref[n] if n in ref else raw[n]
            torch.testing.assert_close(t, expected, rtol=1e-12, atol=1e-12, msg=n)
    for n, t in net.state_dict().items():
        assert torch.equal(t, raw[n]), n  # the raw weights back, exactly


def test_saved_average_must_fit() -> None:
    net = _net()
    saved = WeightAverage(net, 0.9).state_dict()
    del saved["average"]["0.bias"]
    with pytest.raises(ValueError, match="does not fit"):
        WeightAverage(net, 0.9).load_state_dict(saved)


class Killed(Exception):
    pass


def _run(tmp: Path, bert: Path, data, name: str, *, kill_at: int | None = None, **changes):
    shards, tokens = data

    def on_step(row: dict) -> None:
        if kill_at is not None and row["step"] == kill_at:
            raise Killed()

    return train(ModelConfig.from_dict(tiny_model_dict(bert)), TrainConfig.from_dict({**TRAIN, **changes}),
                 shards, tokens, tmp / name, seed=0, device="cpu", callbacks=TrainCallbacks(on_step=on_step))


def test_best_holds_the_average_and_a_resume_keeps_it(tiny_bert, tiny_data, tmp_path) -> None:
    ref = _run(tmp_path, tiny_bert, tiny_data, "ref")
    state = ckpt.load_state(tmp_path / "ref" / "last")
    assert state["average"]["updates"] == 6  # 2 epochs x 3 steps
    raw = load_file(str(tmp_path / "ref" / "last" / "model.safetensors"))
    average = state["average"]["average"]
    if ref.summary["best_epoch"] == 2:  # best/ is the last epoch's average
        best = load_file(str(tmp_path / "ref" / "best" / "model.safetensors"))
        for n, t in average.items():
            torch.testing.assert_close(best[n], t, msg=n)
    assert any(not torch.equal(raw[n], t) for n, t in average.items())  # last/ keeps the raw weights

    one = _run(tmp_path, tiny_bert, tiny_data, "one", epochs=1)  # best/ = epoch 1's average
    best = load_file(str(tmp_path / "one" / "best" / "model.safetensors"))
    for n, t in ckpt.load_state(tmp_path / "one" / "last")["average"]["average"].items():
        torch.testing.assert_close(best[n], t, msg=n)

    with pytest.raises(Killed):
        _run(tmp_path, tiny_bert, tiny_data, "run", kill_at=5)
    resumed = _run(tmp_path, tiny_bert, tiny_data, "run")
    assert resumed.resumed_from_epoch == 1
    assert [e["r_sum"] for e in resumed.epoch_history] == [e["r_sum"] for e in ref.epoch_history]
    got = ckpt.load_state(tmp_path / "run" / "last")["average"]
    assert got["updates"] == 6
    for n, t in average.items():
        torch.testing.assert_close(got["average"][n], t, rtol=1e-5, atol=1e-6, msg=n)


def test_the_average_is_validated(tiny_bert, tiny_data, tmp_path) -> None:
    """Validation scores the average: with decay 0 it is the raw weights, so the figures
    equal a run without it; with a decay they differ."""
    plain = _run(tmp_path, tiny_bert, tiny_data, "plain", epochs=1, ema_decay=None)
    zero = _run(tmp_path, tiny_bert, tiny_data, "zero", epochs=1, ema_decay=0.0)
    slow = _run(tmp_path, tiny_bert, tiny_data, "slow", epochs=1, ema_decay=0.99)
    assert zero.epoch_history[0]["r_sum"] == plain.epoch_history[0]["r_sum"]
    assert [r["loss"] for r in slow.step_history] == [r["loss"] for r in plain.step_history]  # training unchanged
    best_plain = load_file(str(tmp_path / "plain" / "best" / "model.safetensors"))
    best_slow = load_file(str(tmp_path / "slow" / "best" / "model.safetensors"))
    assert any(not torch.equal(best_plain[n], best_slow[n]) for n in best_plain)
