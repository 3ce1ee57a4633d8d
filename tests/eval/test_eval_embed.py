"""The embed library on tiny tables: what it saves equals encoding the same inputs directly."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from limitr.errors import LimitrError
from limitr.eval.embed import EmbedSettings, plan_tasks, resolve_checkpoint
from limitr.eval.prompts import all_prompts
from limitr.eval.store import read_embeddings
from limitr.model.image_encoder import normalize_images

from eval_fixtures import CROP, write_tables


def centre_crops(images: list[bytes], crop: int) -> torch.Tensor:
    """Plainly: decode, cut the middle ``crop`` square (floor offsets), stack."""
    out = []
    for data in images:
        a = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
        top, left = (a.shape[0] - crop) // 2, (a.shape[1] - crop) // 2
        out.append(torch.from_numpy(a[top : top + crop, left : left + crop].copy()))
    return torch.stack(out)


def run_all(model, shards: Path, tokens: Path, out: Path, settings: EmbedSettings) -> dict:
    reports = {}
    for task in plan_tasks(shards, tokens):
        reports[task.name] = task.skipped if task.run is None else task.run(model, out / task.name, settings, None)
    return reports


def test_embed_saves_what_the_encoders_give(tmp_path: Path, stub_model) -> None:
    shards, tokens = write_tables(tmp_path)
    settings = EmbedSettings(crop_size=CROP, batch_size=4, rows_per_file=4)
    reports = run_all(stub_model, shards, tokens, tmp_path / "emb", settings)
    assert list(reports) == ["test", "grounding", "class_retrieval", "prompts"]

    studies = pq.read_table(shards / "test" / "part-00000.parquet").to_pylist()
    keys, images = read_embeddings(tmp_path / "emb" / "test", "images")
    assert keys.tolist() == [s["study_id"] for s in studies]
    assert reports["test"]["images"] == reports["test"]["texts"] == len(studies)
    assert len(reports["test"]["files"]) == 6  # 10 rows, 4 per file, images and texts
    has_lat = torch.tensor([s["lateral_image"] is not None for s in studies])
    frontal = normalize_images(centre_crops([s["frontal_image"] for s in studies], CROP))
    lateral = normalize_images(centre_crops([s["lateral_image"] or s["frontal_image"] for s in studies], CROP))
    with torch.no_grad():
        want = stub_model.encode_images(frontal, lateral, has_lat)
    torch.testing.assert_close(images.global_emb, want.global_emb)
    keep = want.local_mask  # regions of absent laterals are masked; their values do not matter
    torch.testing.assert_close(images.local[keep], want.local[keep])
    assert torch.equal(images.local_mask, want.local_mask) and images.grid == want.grid

    tok = pq.read_table(tokens / "test.parquet").to_pydict()
    t_keys, texts = read_embeddings(tmp_path / "emb" / "test", "texts")
    assert t_keys.tolist() == tok["study_id"]
    with torch.no_grad():
        want_t = stub_model.encode_text(torch.tensor(tok["input_ids"]), torch.tensor(tok["attention_mask"]),
                                        torch.tensor(tok["word_ids"]))
    torch.testing.assert_close(texts.global_emb, want_t.global_emb)
    n = want_t.local.shape[1]
    torch.testing.assert_close(texts.local[:, :n], want_t.local)

    g_keys, g_images = read_embeddings(tmp_path / "emb" / "grounding", "images")
    assert g_keys.tolist() == list(range(5))
    assert not g_images.local_mask[:, 9:].any()  # no lateral regions for grounding images
    prompts = json.loads((tmp_path / "emb" / "prompts" / "prompts.json").read_text())
    assert prompts == all_prompts()
    p_keys, _ = read_embeddings(tmp_path / "emb" / "prompts", "texts")
    assert p_keys.tolist() == list(range(len(prompts)))


def test_bad_rows_are_counted_and_good_rows_kept(tmp_path: Path, stub_model) -> None:
    shards, tokens = write_tables(tmp_path)
    table = pq.read_table(shards / "grounding.parquet")
    images = table.column("image").to_pylist()
    images[1] = b"not a png"
    images[3] = Image.new("L", (10, 10)).tobytes()  # raw bytes, no header
    table = table.set_column(table.schema.get_field_index("image"), "image", __import__("pyarrow").array(images, type=table.schema.field("image").type))
    pq.write_table(table, shards / "grounding.parquet")
    settings = EmbedSettings(crop_size=CROP, batch_size=2)
    reports = run_all(stub_model, shards, tokens, tmp_path / "emb", settings)
    g = reports["grounding"]
    assert g["images"] == 3 and g["texts"] == 3
    assert g["skipped"] == {"image_unreadable": 2, "text_of_left_out_image": 2}
    keys, _ = read_embeddings(tmp_path / "emb" / "grounding", "images")
    assert keys.tolist() == [0, 2, 4]


def test_small_images_are_left_out_by_reason(tmp_path: Path, stub_model) -> None:
    shards, tokens = write_tables(tmp_path)
    settings = EmbedSettings(crop_size=40, batch_size=4)  # larger than the 32-pixel images
    task = [t for t in plan_tasks(shards, tokens) if t.name == "class_retrieval"][0]
    report = task.run(stub_model, tmp_path / "emb", settings, None)
    assert report["images"] == 0 and report["skipped"]["image_smaller_than_crop"] == 10


def test_absent_tables_are_planned_as_skipped(tmp_path: Path) -> None:
    shards, tokens = write_tables(tmp_path, grounding=False, class_retrieval=False)
    tasks = {t.name: t for t in plan_tasks(shards, tokens)}
    assert tasks["grounding"].run is None and "no grounding table" in tasks["grounding"].skipped
    assert tasks["class_retrieval"].run is None
    assert tasks["test"].run is not None and tasks["prompts"].run is not None


def test_missing_test_split_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(LimitrError, match="preprocess"):
        plan_tasks(tmp_path / "shards", tmp_path / "tokens")


def test_checkpoint_resolution(tmp_path: Path) -> None:
    run = tmp_path / "model"
    (run / "best").mkdir(parents=True)
    (run / "best" / "config.json").write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(LimitrError, match="crop size"):
        resolve_checkpoint(run)
    (run / "config.json").write_text(json.dumps({"model": {}, "train": {"crop_size": 24}}))
    weights, cfg = resolve_checkpoint(run)
    assert weights == run / "best" and cfg["train"]["crop_size"] == 24
    assert resolve_checkpoint(run / "best")[0] == run / "best"
    with pytest.raises(LimitrError, match="train stage"):
        resolve_checkpoint(tmp_path / "absent")
