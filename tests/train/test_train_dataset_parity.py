"""The on-demand study dataset yields, bit for bit, what the dataset that held every PNG in
memory yielded: same studies, same order, same seeded crops, same tokens, same report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import legacy_dataset
from limitr.data.prepare import collate_studies
from limitr.data.studies import StudyDataset
from limitr.errors import LimitrError
from train_data_factory import make_split, png, token_row, write_studies, write_tokens


def _items_equal(a, b) -> None:
    assert a.index == b.index and a.study_id == b.study_id and a.has_lateral == b.has_lateral
    for name in ("frontal", "lateral", "input_ids", "attention_mask", "word_ids"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert torch.equal(x, y), name


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> tuple[Path, Path]:
    """Two shard files with several row groups, a duplicate study, a broken lateral, a study
    without words, a too-small frontal and tokens without a study."""
    root = tmp_path_factory.mktemp("messy")
    shards, tokens = root / "shards", root / "tokens"
    ids = make_split(shards, tokens, "train", 30, image_size=40, seed=4, start_id=70000000, parts=2)
    rng = np.random.default_rng(9)
    extra = [90000001, 90000002, ids[3]]
    frontal = [png(rng.integers(0, 255, (40, 40))), png(rng.integers(0, 255, (8, 8))), png(rng.integers(0, 255, (40, 40)))]
    lateral = [b"not a png", None, None]
    write_studies(shards, "train", extra, frontal, lateral, part=2)
    tok = pq.read_table(tokens / "train.parquet").to_pylist()
    rows = tok + [
        {"study_id": 90000001, **token_row(rng, 3, 16)},
        {"study_id": 90000002, **token_row(rng, 3, 16)},
        {"study_id": 95000000, **token_row(rng, 3, 16)},
        {"study_id": ids[5], **token_row(rng, 3, 16)},  # a second token row: the first one counts
    ]
    rows[7] = {"study_id": ids[7], **token_row(rng, 0, 16)}  # no words
    write_tokens(tokens, "train", [r["study_id"] for r in rows], rows)
    # Small row groups so that a study's place is (file, row group, row) with row groups > 1.
    for part in sorted((shards / "train").glob("part-*.parquet")):
        table = pq.read_table(part)
        pq.write_table(table, part, row_group_size=4)
    return shards, tokens


@pytest.mark.parametrize("train", [True, False])
def test_items_match_the_in_memory_dataset(messy, tmp_path: Path, train: bool) -> None:
    shards, tokens = messy
    old = legacy_dataset.StudyDataset(shards, tokens, "train", 24, train=train, seed=5)
    new = StudyDataset(shards, tokens, "train", 24, train=train, seed=5, store_dir=tmp_path)
    assert new.study_ids.dtype == old.study_ids.dtype and np.array_equal(new.study_ids, old.study_ids)
    assert new.report == old.report
    assert sum(new.report["skipped"].values()) >= 5 and sum(new.report["laterals_dropped"].values()) == 1
    for epoch in (0, 3):
        old.set_epoch(epoch)
        new.set_epoch(epoch)
        for i in range(len(old)):
            _items_equal(new[i], old[i])
    batch_new = collate_studies([new[i] for i in range(6)])
    batch_old = legacy_dataset.collate_studies([old[i] for i in range(6)])
    for name in ("index", "study_id", "frontal", "lateral", "has_lateral", "input_ids", "attention_mask", "word_ids"):
        assert torch.equal(getattr(batch_new, name), getattr(batch_old, name)), name


def test_store_is_reused_and_keyed_by_its_inputs(messy, tmp_path: Path) -> None:
    shards, tokens = messy
    first = StudyDataset(shards, tokens, "train", 24, train=False, store_dir=tmp_path)
    stamp = first.store_path.stat().st_mtime_ns
    again = StudyDataset(shards, tokens, "train", 24, train=False, store_dir=tmp_path)
    assert again.store_path == first.store_path and again.store_path.stat().st_mtime_ns == stamp
    _items_equal(again[2], first[2])
    other_crop = StudyDataset(shards, tokens, "train", 20, train=False, store_dir=tmp_path)
    assert other_crop.store_path != first.store_path
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left behind


def test_index_names_the_shard_row_of_each_study(messy, tmp_path: Path) -> None:
    shards, tokens = messy
    ds = StudyDataset(shards, tokens, "train", 24, train=False, store_dir=tmp_path)
    for i in (0, 5, len(ds) - 1):
        loc = ds.location(i)
        path, group, row = loc.split(" (")[0], int(loc.split("row group ")[1].split(",")[0]), int(loc.split("row ")[-1][:-1])
        table = pq.ParquetFile(path).read_row_group(group, columns=["study_id", "frontal_image"])
        assert table.column("study_id")[row].as_py() == int(ds.study_ids[i])
        assert table.column("frontal_image")[row].as_py() == ds.image_bytes(i)[0]


def test_own_temporary_store_goes_with_the_dataset(messy) -> None:
    shards, tokens = messy
    ds = StudyDataset(shards, tokens, "train", 24, train=False)
    folder = ds.store_path.parent
    assert folder.is_dir()
    del ds
    import gc

    gc.collect()
    assert not folder.exists()


def test_corrupt_pixels_name_the_shard_and_the_stage(tmp_path: Path) -> None:
    """A PNG whose header reads but whose pixels do not: one line with the file and stage."""
    shards, tokens = tmp_path / "shards", tmp_path / "tokens"
    good = png(np.random.default_rng(1).integers(0, 255, (32, 32)).astype(np.uint8))
    at = good.index(b"IDAT") + 8
    broken = good[:at] + bytes(b ^ 0x5A for b in good[at : at + 64]) + good[at + 64 :]  # pixels only
    write_studies(shards, "train", [1, 2], [good, broken], [None, None])
    rng = np.random.default_rng(0)
    write_tokens(tokens, "train", [1, 2], [token_row(rng, 3, 10), token_row(rng, 3, 10)])
    ds = StudyDataset(shards, tokens, "train", 16, train=False, store_dir=tmp_path / "store")
    ds[0]
    with pytest.raises(LimitrError) as err:
        ds[1]
    message = str(err.value)
    assert "part-00000.parquet" in message and "preprocess" in message and "\n" not in message


def test_unreadable_shard_names_the_file_and_the_stage(tmp_path: Path) -> None:
    shards, tokens = tmp_path / "shards", tmp_path / "tokens"
    make_split(shards, tokens, "train", 6, image_size=24, seed=0, start_id=1)
    bad = shards / "train" / "part-00000.parquet"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(LimitrError) as err:
        StudyDataset(shards, tokens, "train", 16, train=True, store_dir=tmp_path / "store")
    assert str(bad) in str(err.value) and "preprocess" in str(err.value)
    assert not list((tmp_path / "store").glob("*.arrow"))


def test_token_matrices_are_narrow_in_memory(messy, tmp_path: Path) -> None:
    shards, tokens = messy
    ds = StudyDataset(shards, tokens, "train", 24, train=False, store_dir=tmp_path)
    assert ds._input_ids.dtype == np.int8 and ds._attention.dtype == np.int8
    assert ds[0].input_ids.dtype == torch.int64


def test_truncated_store_says_so_in_one_line(messy, tmp_path: Path) -> None:
    shards, tokens = messy
    ds = StudyDataset(shards, tokens, "train", 24, train=False, store_dir=tmp_path)
    ds[len(ds) - 1]
    with open(ds.store_path, "r+b") as f:
        f.truncate(ds.store_path.stat().st_size // 2)
    with pytest.raises(LimitrError) as err:
        for i in range(len(ds)):
            ds[i]
    assert str(ds.store_path) in str(err.value) and "\n" not in str(err.value)
    again = StudyDataset(shards, tokens, "train", 24, train=False, store_dir=tmp_path)  # written anew
    fresh = StudyDataset(shards, tokens, "train", 24, train=False, store_dir=tmp_path / "fresh")
    _items_equal(again[len(ds) - 1], fresh[len(ds) - 1])


def test_token_shard_read_in_batches_gives_the_same_matrices(messy) -> None:
    from limitr.data.studies import _Tokens

    _, tokens = messy
    whole, pieces = _Tokens(tokens / "train.parquet", "train"), _Tokens(tokens / "train.parquet", "train", batch_rows=3)
    for name in ("input_ids", "attention", "word_ids", "has_words"):
        assert np.array_equal(getattr(whole, name), getattr(pieces, name)), name
    assert whole.duplicates == pieces.duplicates == 1
    ids = pq.read_table(tokens / "train.parquet", columns=["study_id"]).column("study_id").to_pylist()
    first: dict[int, int] = {}
    for row, sid in enumerate(ids):  # the plain reference: each id's first row
        first.setdefault(sid, row)
    queries = np.array([*first, -5, max(ids) + 1, min(ids) - 1], dtype=np.int64)
    expected = [first.get(int(q), -1) for q in queries]
    assert whole.rows_of(queries).tolist() == pieces.rows_of(queries).tolist() == expected
    assert len(whole) == len(first)
