"""The study dataset: join by study_id, crops, laterals, collate, sharded sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from limitr.errors import LimitrError
from limitr.data.prepare import collate_studies, decode_grey
from limitr.data.studies import StudyDataset
from limitr.train.distributed import ShardedBatchSampler
from train_data_factory import png, token_row, write_studies, write_tokens


def _noise(seed: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size)).astype(np.uint8)


def _find_window(image: np.ndarray, crop: np.ndarray) -> list[tuple[int, int]]:
    """Every (top, left) where ``crop`` sits in ``image`` (a plain search)."""
    c = crop.shape[0]
    hits = []
    for top in range(image.shape[0] - c + 1):
        for left in range(image.shape[1] - c + 1):
            if np.array_equal(image[top : top + c, left : left + c], crop):
                hits.append((top, left))
    return hits


@pytest.fixture()
def joined(tmp_path: Path):
    """Studies 1..6 (study 3 twice, study 5 with a broken lateral, study 6 with a tiny
    frontal) and tokens for 2..8 (study 4 with no word, study 2 twice)."""
    rng = np.random.default_rng(0)
    shards, tokens = tmp_path / "shards", tmp_path / "tokens"
    images = {sid: _noise(sid, 24) for sid in range(1, 7)}
    laterals = {sid: _noise(100 + sid, 24) for sid in range(1, 7)}
    write_studies(
        shards, "train", [1, 2, 3], [png(images[s]) for s in (1, 2, 3)], [png(laterals[1]), None, png(laterals[3])], part=0
    )
    write_studies(
        shards,
        "train",
        [3, 4, 5, 6],
        [png(images[3]), png(images[4]), png(images[5]), png(_noise(6, 8))],
        [None, None, b"not a png", None],
        part=1,
    )
    rows = {sid: token_row(rng, 3, 12) for sid in range(2, 9)}
    rows[4] = token_row(rng, 0, 12)
    ids = [2, 3, 4, 5, 6, 7, 8, 2]
    write_tokens(tokens, "train", ids, [rows[s] for s in ids])
    return shards, tokens, images, laterals, rows


def test_join_keeps_studies_in_both_and_counts_the_rest(joined) -> None:
    shards, tokens, images, laterals, rows = joined
    ds = StudyDataset(shards, tokens, "train", 16, train=False)
    assert ds.study_ids.tolist() == [2, 3, 5]
    skipped = ds.report["skipped"]
    assert skipped["no_tokens"] == 1  # study 1
    assert skipped["duplicate_study"] == 1  # study 3 again
    assert skipped["duplicate_tokens"] == 1  # study 2 again
    assert skipped["no_words"] == 1  # study 4
    assert skipped["frontal_smaller_than_crop"] == 1  # study 6
    assert skipped["tokens_without_study"] == 2  # 7 and 8
    assert ds.report["laterals_dropped"]["lateral_unreadable"] == 1  # study 5 kept without it
    assert ds.report["studies"] == 3 and ds.report["with_lateral"] == 1
    for i, sid in enumerate(ds.study_ids.tolist()):
        item = ds[i]
        assert item.study_id == sid
        assert item.input_ids.tolist() == rows[sid]["input_ids"]
        assert item.word_ids.tolist() == rows[sid]["word_ids"]
        assert item.attention_mask.tolist() == rows[sid]["attention_mask"]


def test_center_crop_and_lateral_mask(joined) -> None:
    shards, tokens, images, laterals, _ = joined
    ds = StudyDataset(shards, tokens, "train", 16, train=False)
    by_id = {int(sid): i for i, sid in enumerate(ds.study_ids)}
    item = ds[by_id[3]]  # first occurrence: with a lateral
    assert item.has_lateral
    assert np.array_equal(item.frontal.numpy(), images[3][4:20, 4:20])
    assert np.array_equal(item.lateral.numpy(), laterals[3][4:20, 4:20])
    no_lat = ds[by_id[2]]
    assert not no_lat.has_lateral and int(no_lat.lateral.abs().sum()) == 0
    assert tuple(no_lat.lateral.shape) == (16, 16)


def test_random_crops_are_windows_reproducible_per_epoch(joined) -> None:
    shards, tokens, images, laterals, _ = joined
    ds = StudyDataset(shards, tokens, "train", 16, train=True, seed=7)
    same = StudyDataset(shards, tokens, "train", 16, train=True, seed=7)
    other_seed = StudyDataset(shards, tokens, "train", 16, train=True, seed=8)
    i = int(np.flatnonzero(ds.study_ids == 3)[0])
    offsets = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        same.set_epoch(epoch)
        item = ds[i]
        hits = _find_window(images[3], item.frontal.numpy())
        assert len(hits) == 1
        assert _find_window(laterals[3], item.lateral.numpy())
        offsets.add(hits[0])
        assert torch.equal(item.frontal, same[i].frontal)  # same seed and epoch: same crop
        assert torch.equal(item.frontal, ds[i].frontal)  # independent of call order
    assert len(offsets) > 1  # epochs draw different crops
    other_seed.set_epoch(5)
    ds.set_epoch(5)
    crops = [(ds[j].frontal, other_seed[j].frontal) for j in range(len(ds))]
    assert any(not torch.equal(a, b) for a, b in crops)


def test_workers_do_not_change_batches(tiny_data) -> None:
    shards, tokens = tiny_data
    ds = StudyDataset(shards, tokens, "train", 32, train=True, seed=3)
    ds.set_epoch(2)
    sampler = ShardedBatchSampler(len(ds), 8, seed=3)
    sampler.set_epoch(2)
    plain = list(torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate_studies))
    with_workers = list(
        torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate_studies, num_workers=2)
    )
    assert len(plain) == 3
    for a, b in zip(plain, with_workers):
        assert torch.equal(a.study_id, b.study_id) and torch.equal(a.frontal, b.frontal)
        assert torch.equal(a.lateral, b.lateral) and torch.equal(a.input_ids, b.input_ids)


def test_a_batch_crosses_processes_as_one_buffer_with_the_same_values(tiny_data) -> None:
    import copy
    import io
    from dataclasses import fields

    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401 - registers the shared-memory tensor reducers

    shards, tokens = tiny_data
    ds = StudyDataset(shards, tokens, "train", 32, train=True, seed=3)
    batch = collate_studies([ds[i] for i in range(5)])
    rebuilt = copy.deepcopy(batch)  # through __reduce__, as a worker's pickler does
    for f in fields(batch):
        a, b = getattr(batch, f.name), getattr(rebuilt, f.name)
        assert a.dtype == b.dtype and torch.equal(a, b), f.name
    # Every tensor of the rebuilt batch is a view of one buffer: one storage, not eight.
    storages = {getattr(rebuilt, f.name).untyped_storage().data_ptr() for f in fields(rebuilt)}
    assert len(storages) == 1
    buffer = io.BytesIO()
    ForkingPickler(buffer).dump(batch)  # what a DataLoader worker sends
    assert len(buffer.getvalue()) > 0


def test_collate_trims_padding_and_prepares_inputs(tiny_data) -> None:
    shards, tokens = tiny_data
    ds = StudyDataset(shards, tokens, "validate", 32, train=False)
    items = [ds[i] for i in range(4)]
    batch = collate_studies(items)
    longest = max(int(it.attention_mask.sum()) for it in items)
    assert batch.input_ids.shape == (4, longest)
    assert batch.attention_mask[:, -1].any()  # nothing trimmed that a report uses
    for row, it in zip(batch.input_ids, items):
        assert row.tolist() == it.input_ids[:longest].tolist()
        assert int(it.attention_mask[longest:].sum()) == 0
    inputs = batch.to_model_inputs("cpu", upsample_to=48)
    assert inputs.frontal.shape == (4, 3, 48, 48) and inputs.lateral.shape == (4, 3, 48, 48)
    assert inputs.frontal.dtype == torch.float32
    assert float(inputs.frontal.min()) >= -1.0 and float(inputs.frontal.max()) <= 1.0
    assert inputs.has_lateral.tolist() == batch.has_lateral.tolist()
    plain = batch.to_model_inputs("cpu")
    expected = batch.frontal.float().div(255).sub(0.5).div(0.5)
    assert torch.allclose(plain.frontal[:, 0], expected) and torch.equal(plain.frontal[:, 0], plain.frontal[:, 2])
    off = batch.to_model_inputs("cpu", lateral=False)
    assert off.lateral is None and not off.has_lateral.any()


def test_crop_larger_than_images_says_what_to_fix(tiny_data) -> None:
    shards, tokens = tiny_data
    with pytest.raises(LimitrError, match="crop_size"):
        StudyDataset(shards, tokens, "train", 64, train=True)


def test_missing_shards_say_which_stage_to_run(tmp_path: Path) -> None:
    with pytest.raises(LimitrError, match="preprocess"):
        StudyDataset(tmp_path / "none", tmp_path / "none", "train", 32, train=True)


def test_decode_grey_round_trip() -> None:
    image = _noise(1, 20)
    assert np.array_equal(decode_grey(png(image)), image)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_sharded_batches_partition_the_global_batch(world: int) -> None:
    single = ShardedBatchSampler(50, 8, seed=5)
    ranks = [ShardedBatchSampler(50, 8, rank=r, world_size=world, seed=5) for r in range(world)]
    for epoch in (0, 1):
        for s in (single, *ranks):
            s.set_epoch(epoch)
        expected = list(single)
        assert len(expected) == 6 and all(len(b) == 8 for b in expected)  # last 2 dropped
        per_rank = [list(s) for s in ranks]
        for k, batch in enumerate(expected):
            assert sum((per_rank[r][k] for r in range(world)), []) == batch
    single.set_epoch(0)
    first = list(single)
    single.set_epoch(1)
    assert first != list(single)
    assert len(sorted(sum(first, []))) == len(set(sum(first, [])))  # no index twice


def test_sampler_rejects_uneven_split() -> None:
    with pytest.raises(LimitrError, match="multiple"):
        ShardedBatchSampler(50, 6, rank=0, world_size=4)


def test_a_study_without_tokens_met_twice_counts_once_each_way(tmp_path: Path) -> None:
    """Study 9 has no token row and comes twice: one no_tokens, then one duplicate_study,
    as for a study with tokens (studies 2, 2)."""
    rng = np.random.default_rng(1)
    shards, tokens = tmp_path / "shards", tmp_path / "tokens"
    write_studies(shards, "train", [9, 2], [png(_noise(9, 24)), png(_noise(2, 24))], [None, None], part=0)
    write_studies(shards, "train", [9, 2], [png(_noise(9, 24)), png(_noise(2, 24))], [None, None], part=1)
    write_tokens(tokens, "train", [2], [token_row(rng, 3, 12)])
    ds = StudyDataset(shards, tokens, "train", 16, train=False)
    assert ds.study_ids.tolist() == [2]
    assert ds.report["skipped"]["no_tokens"] == 1 and ds.report["skipped"]["duplicate_study"] == 2


def test_memory_per_study_is_the_index_and_narrow_tokens(tmp_path: Path) -> None:
    """What the dataset keeps per study does not depend on the images: 97 tokens in int16 /
    int8 / int8 (388 bytes) plus 64 bytes of index and image positions, under 1 KB."""
    rng = np.random.default_rng(2)
    shards, tokens = tmp_path / "shards", tmp_path / "tokens"
    n = 40
    write_studies(shards, "train", list(range(1, n + 1)), [png(_noise(s, 32)) for s in range(1, n + 1)],
                  [png(_noise(500 + s, 32)) for s in range(1, n + 1)], part=0)
    rows = [token_row(rng, 20, 97) for _ in range(n)]
    for row in rows:
        row["input_ids"] = [min(v * 1000, 30000) for v in row["input_ids"]]  # a BERT vocabulary: int16
    write_tokens(tokens, "train", list(range(1, n + 1)), rows)
    ds = StudyDataset(shards, tokens, "train", 16, train=False)
    assert len(ds) == n
    assert ds.resident_bytes() == n * (97 * (2 + 1 + 1) + 8 + 8 + 4 + 4 + 4 + 2 * 16)
