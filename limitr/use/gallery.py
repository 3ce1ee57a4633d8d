"""A gallery: one table of saved embeddings (``limitr embed``'s output) and its studies.

The default gallery is the embedded test split (``data/embeddings/test``); any table the
embed stage wrote can be one (``grounding``, ``class_retrieval``). Images and reports of the
hits are read from the preprocess shards only for the studies shown.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from limitr.errors import LimitrError
from limitr.eval.scoring import take
from limitr.eval.store import align, has_embeddings, read_embeddings, read_manifest
from limitr.model.outputs import ImageEmbeddings, TextEmbeddings

#: Where each table's rows live in the preprocess output: (files, key, image, text, geometry prefix).
_TABLES = {
    "grounding": ("grounding.parquet", "phrase_id", "image", "label_text", ""),
    "class_retrieval": ("class_retrieval.parquet", "item_id", "image", "text", ""),
}
_GEOMETRY = ("orig_height", "orig_width", "scale", "pad_left", "pad_top")


@dataclass
class GalleryItem:
    """One gallery study as shown: its key, report text, processed image and geometry."""

    key: int
    text: str
    image: Optional[np.ndarray]  # (image_size, image_size) uint8, the padded square
    geometry: Optional[dict] = None
    boxes: list = field(default_factory=list)

    def unpadded(self) -> Optional[np.ndarray]:
        """The resized image without its padding (what the original looks like, smaller)."""
        if self.image is None or self.geometry is None:
            return self.image
        g = self.geometry
        h = max(1, int(np.floor(g["orig_height"] * g["scale"] + 1e-6)))
        w = max(1, int(np.floor(g["orig_width"] * g["scale"] + 1e-6)))
        return self.image[g["pad_top"] : g["pad_top"] + h, g["pad_left"] : g["pad_left"] + w]


@dataclass
class Gallery:
    """Embedded studies: image embeddings keyed by ``keys``, and their reports' text
    embeddings where the table has them (``texts`` rows aligned with ``keys``)."""

    name: str
    keys: torch.Tensor
    images: ImageEmbeddings
    texts: Optional[TextEmbeddings]
    crop_size: int
    fingerprint: Optional[str]
    shards: Optional[Path] = None
    _normed: Optional[torch.Tensor] = None
    _text_normed: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    @property
    def image_vectors(self) -> torch.Tensor:
        """(n, D) unit global image embeddings (computed once)."""
        if self._normed is None:
            self._normed = torch.nn.functional.normalize(self.images.global_emb.float(), dim=-1)
        return self._normed

    @property
    def text_vectors(self) -> torch.Tensor:
        if self.texts is None:
            raise LimitrError(f"gallery {self.name} has no report embeddings: image search needs them")
        if self._text_normed is None:
            self._text_normed = torch.nn.functional.normalize(self.texts.global_emb.float(), dim=-1)
        return self._text_normed

    def items(self, rows: Sequence[int]) -> list[GalleryItem]:
        """The studies at ``rows`` (gallery order) with text and image from the shards
        (text "" and no image when the shards are not at hand)."""
        keys = [int(self.keys[r]) for r in rows]
        found = _read_rows(self.shards, self.name, keys) if self.shards is not None else {}
        return [found.get(k) or GalleryItem(k, "", None) for k in keys]


def _table_files(shards: Path, name: str) -> tuple[list[Path], str, str, str, str]:
    if name in _TABLES:
        file, key, image, text, prefix = _TABLES[name]
        return [shards / file], key, image, text, prefix
    return sorted((shards / name).glob("part-*.parquet")), "study_id", "frontal_image", "text", "frontal_"


def _read_rows(shards: Path, name: str, keys: list[int]) -> dict[int, GalleryItem]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from PIL import Image

    files, key, image_col, text_col, prefix = _table_files(Path(shards), name)
    files = [f for f in files if f.exists()]
    out: dict[int, GalleryItem] = {}
    wanted = set(keys)
    for path in files:
        schema = pq.read_schema(path)
        columns = [key, image_col, text_col, *(prefix + g for g in _GEOMETRY)]
        if "boxes" in schema.names:
            columns.append("boxes")
        columns = [c for c in columns if c in schema.names]
        table = pq.read_table(path, columns=columns)
        table = table.filter(pc.is_in(table.column(key), value_set=_int_array(keys)))
        for row in table.to_pylist():
            k = int(row[key])
            if k not in wanted or k in out:
                continue
            pixels = None
            if row.get(image_col):
                with Image.open(io.BytesIO(row[image_col])) as img:
                    pixels = np.asarray(img.convert("L"))
            geometry = {g: row.get(prefix + g) for g in _GEOMETRY}
            out[k] = GalleryItem(k, row.get(text_col) or "", pixels,
                                 geometry if None not in geometry.values() else None, row.get("boxes") or [])
    return out


def _int_array(keys: list[int]):
    import pyarrow as pa

    return pa.array(keys, type=pa.int64())


def load_gallery(embeddings: Path, table: str = "test", shards: Optional[Path] = None,
                 fingerprint: Optional[str] = None, crop_size: Optional[int] = None) -> Gallery:
    """A table of ``limitr embed``'s output as a gallery.

    fingerprint / crop_size: the model's (``TrainedModel.fingerprint`` / ``crop_size``); a
    gallery embedded by a model with another fingerprint, or with another crop, is refused.
    shards: the preprocess output the table was embedded from (images and reports of hits).
    """
    embeddings = Path(embeddings)
    if not embeddings.is_dir():
        raise LimitrError(f"gallery folder {embeddings} does not exist: run `limitr embed` (dvc repro embed) first")
    report = read_manifest(embeddings)
    folder = embeddings / table
    if not has_embeddings(folder, "images"):
        raise LimitrError(f"no {table} image embeddings in {embeddings}: tables there are "
                          f"{', '.join(sorted((report.get('tables') or {}).keys())) or 'none'}")
    stored = report.get("model_fingerprint")
    if fingerprint is not None and stored is not None and stored != fingerprint:
        raise LimitrError(
            f"gallery {embeddings} was embedded with another model (fingerprint {stored}, this model "
            f"{fingerprint}): re-run `limitr embed` with this model"
        )
    gallery_crop = int((report.get("settings") or {}).get("crop_size") or 0)
    if crop_size is not None and gallery_crop and gallery_crop != int(crop_size):
        raise LimitrError(f"gallery {embeddings} was embedded at crop {gallery_crop}, the model uses {crop_size}: "
                          "re-run `limitr embed` with this model")
    img_keys, images = read_embeddings(folder, "images")
    texts = None
    if has_embeddings(folder, "texts"):
        txt_keys, all_texts = read_embeddings(folder, "texts")
        keys, img_rows, txt_rows = align(img_keys, txt_keys)
        images, texts = take(images, img_rows), take(all_texts, txt_rows)
    else:
        keys = img_keys
    return Gallery(table, keys, images, texts, gallery_crop or int(crop_size or 0), stored,
                   Path(shards) if shards is not None else None)


def check_compatible(gallery: Gallery, model) -> None:
    """Refuse a gallery whose embeddings cannot come from ``model`` (width or region grid)."""
    dim = int(gallery.images.global_emb.shape[1])
    config = getattr(model, "config", None)
    model_dim = getattr(config, "embed_dim", None)
    if model_dim is not None and int(model_dim) != dim:
        raise LimitrError(f"gallery {gallery.name} holds {dim}-wide embeddings, the model makes {model_dim}: "
                          "it was embedded with another model; re-run `limitr embed` with this one")
