"""Tiny study and token shards written with the project's schemas, for the training tests."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from limitr.data.schema import CHEXPERT_LABELS, STUDY_SCHEMA, TOKEN_SCHEMA

VOCAB = 60
CLS, SEP, PAD = 1, 2, 0


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def study_image(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    """Noise plus a bright square whose place depends on ``label`` (something to learn)."""
    img = rng.integers(0, 60, size=(size, size)).astype(np.uint8)
    q = size // 2
    top, left = (label // 2) * q, (label % 2) * q
    img[top : top + q, left : left + q] += 120
    return img


def write_studies(
    root: Path,
    split: str,
    study_ids: Sequence[int],
    frontal: Sequence[bytes],
    lateral: Sequence[Optional[bytes]],
    part: int = 0,
) -> None:
    n = len(study_ids)
    geometry = {"orig_height": 100, "orig_width": 100, "scale": 0.4, "pad_left": 0, "pad_top": 0}
    data: dict[str, list] = {
        "subject_id": [10000000 + i for i in range(n)],
        "study_id": list(study_ids),
        "split": [split] * n,
        "frontal_dicom_id": [f"f{sid}" for sid in study_ids],
        "frontal_view": ["PA"] * n,
        "frontal_image": list(frontal),
        "lateral_dicom_id": [None if b is None else f"l{sid}" for sid, b in zip(study_ids, lateral)],
        "lateral_view": [None if b is None else "LATERAL" for b in lateral],
        "lateral_image": list(lateral),
        "text": ["report"] * n,
        "text_source": ["findings+impression"] * n,
        "findings": ["findings"] * n,
        "impression": ["impression"] * n,
    }
    for key, value in geometry.items():
        data[f"frontal_{key}"] = [value] * n
        data[f"lateral_{key}"] = [None if b is None else value for b in lateral]
    for name in CHEXPERT_LABELS:
        data[name] = [None] * n
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(data, schema=STUDY_SCHEMA), folder / f"part-{part:05d}.parquet")


def token_row(rng: np.random.Generator, n_words: int, length: int, first_word: Optional[int] = None) -> dict:
    """[CLS] pieces... [SEP] padding; each word one or two pieces."""
    ids, words = [CLS], [-1]
    for w in range(n_words):
        for _ in range(int(rng.integers(1, 3))):
            if len(ids) >= length - 1:
                break
            ids.append(int(first_word) if (w == 0 and first_word is not None) else int(rng.integers(5, VOCAB)))
            words.append(w)
    ids.append(SEP)
    words.append(-1)
    mask = [1] * len(ids)
    pad = length - len(ids)
    return {
        "input_ids": ids + [PAD] * pad,
        "attention_mask": mask + [0] * pad,
        "word_ids": words + [-1] * pad,
        "n_words": max(words) + 1,
        "truncated": False,
    }


def write_tokens(root: Path, split: str, study_ids: Sequence[int], rows: Sequence[dict]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    data = {"study_id": list(study_ids)}
    for key in ("input_ids", "attention_mask", "word_ids", "n_words", "truncated"):
        data[key] = [r[key] for r in rows]
    pq.write_table(pa.Table.from_pydict(data, schema=TOKEN_SCHEMA), root / f"{split}.parquet")


def make_split(
    shards: Path,
    tokens: Path,
    split: str,
    n: int,
    *,
    image_size: int,
    seed: int,
    start_id: int,
    length: int = 16,
    lateral_every: int = 2,
    parts: int = 1,
) -> list[int]:
    """``n`` studies whose image quadrant and first word share a label; every
    ``lateral_every``-th study has no lateral."""
    rng = np.random.default_rng(seed)
    ids = [start_id + i for i in range(n)]
    labels = [i % 4 for i in range(n)]
    frontal = [png(study_image(rng, image_size, lab)) for lab in labels]
    lateral = [
        None if i % lateral_every == 0 else png(study_image(rng, image_size, lab)) for i, lab in enumerate(labels)
    ]
    bounds = np.linspace(0, n, parts + 1).astype(int)
    for p in range(parts):
        a, b = bounds[p], bounds[p + 1]
        write_studies(shards, split, ids[a:b], frontal[a:b], lateral[a:b], part=p)
    rows = [token_row(rng, int(rng.integers(2, 6)), length, first_word=10 + lab) for lab in labels]
    write_tokens(tokens, split, ids, rows)
    return ids


def tiny_model_dict(bert: Path, **changes) -> dict:
    cfg = {
        "image_backbone": "resnet18",
        "text_encoder": str(bert),
        "text_freeze_layers": 1,
        "embed_dim": 16,
        "score_chunk": 4,
    }
    cfg.update(changes)
    return cfg
