"""DataLoader workers change nothing but speed; a study that cannot be read stops training
with one line naming its shard file and the stage to re-run, and leaves no half checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from limitr.errors import LimitrError
from limitr.model.config import ModelConfig
from limitr.train.loop import TrainConfig, resolve_num_workers, train
from train_data_factory import make_split, tiny_model_dict

TRAIN = {"epochs": 2, "batch_size": 8, "crop_size": 40, "lr": 1.0e-3, "image_lr": 2.0e-3,
         "patience": None, "plateau_patience": 0}


def _run(tmp: Path, bert: Path, data, name: str, **changes):
    shards, tokens = data
    return train(
        ModelConfig.from_dict(tiny_model_dict(bert)), TrainConfig.from_dict({**TRAIN, **changes}),
        shards, tokens, tmp / name, seed=3, device="cpu", metrics_dir=tmp / f"{name}-metrics", resume=False,
    )


def test_same_losses_and_weights_with_0_and_2_workers(tiny_bert, tiny_data, tmp_path: Path) -> None:
    plain = _run(tmp_path, tiny_bert, tiny_data, "w0", num_workers=0)
    workers = _run(tmp_path, tiny_bert, tiny_data, "w2", num_workers=2)
    assert len(plain.step_history) == 6  # 2 epochs x 3 global batches: persistent workers reused
    assert [r["loss"] for r in workers.step_history] == [r["loss"] for r in plain.step_history]
    assert [e["r_sum"] for e in workers.epoch_history] == [e["r_sum"] for e in plain.epoch_history]
    a, b = load_file(str(tmp_path / "w0/last/model.safetensors")), load_file(str(tmp_path / "w2/last/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "w0" / ".image-store").exists()  # the run's image store is removed at the end


def test_auto_workers_follow_the_cores(monkeypatch) -> None:
    import os

    for cores, world, want in ((1, 1, 0), (2, 1, 0), (3, 1, 2), (8, 1, 4), (16, 2, 4), (8, 4, 0)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        assert resolve_num_workers("auto", world) == want, (cores, world)
    assert resolve_num_workers(3) == 3


def _corrupt_pixels(shards: Path, study_index: int) -> Path:
    """Flip bytes inside the IDAT of one study's frontal PNG (its header still reads)."""
    path = shards / "train" / "part-00000.parquet"
    table = pq.read_table(path)
    images = table.column("frontal_image").to_pylist()
    png = images[study_index]
    at = png.index(b"IDAT") + 8
    images[study_index] = png[:at] + bytes(b ^ 0x5A for b in png[at : at + 64]) + png[at + 64 :]
    column = table.schema.get_field_index("frontal_image")
    table = table.set_column(column, table.schema.field(column), pa.array(images, pa.binary()))
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_study_stops_with_one_line(tiny_bert, tmp_path: Path, workers: int) -> None:
    shards, tokens = tmp_path / "shards", tmp_path / "tokens"
    make_split(shards, tokens, "train", 16, image_size=48, seed=1, start_id=1)
    make_split(shards, tokens, "validate", 4, image_size=48, seed=2, start_id=100)
    bad = _corrupt_pixels(shards, 5)
    with pytest.raises(LimitrError) as err:
        _run(tmp_path, tiny_bert, (shards, tokens), "run", num_workers=workers)
    message = str(err.value)
    assert "\n" not in message and str(bad) in message and "preprocess" in message
    out = tmp_path / "run"
    assert not (out / "last").exists() and not (out / "best").exists()
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]  # nothing half-written


def test_allocator_setting_takes_and_changes_no_number() -> None:
    """mallopt accepts the settings on glibc, and a computation gives the same bits after."""
    import platform

    from limitr.train.allocator import tune_allocator

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 300, generator=gen), torch.randn(300, 300, generator=gen)
    before = (a @ b).sum(0)
    took = tune_allocator()
    if platform.libc_ver()[0] == "glibc":
        assert took
    assert torch.equal((a @ b).sum(0), before)
