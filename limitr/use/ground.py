"""Grounding of a row of the preprocessed MS-CXR table, with its ground-truth boxes.

The table holds the processed (resized, padded) image, so the map and the boxes are drawn in
that image's pixels with the padding removed (boxes scaled from original pixels).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from limitr.errors import LimitrError
from limitr.use import prepare
from limitr.use.gallery import GalleryItem
from limitr.use.model import TrainedModel
from limitr.use.render import Panel


def ms_cxr_panel(model: TrainedModel, shards: Path, phrase_id: int, kind: str = "attention") -> Panel:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from PIL import Image

    path = Path(shards) / "grounding.parquet"
    if not path.is_file():
        raise LimitrError(f"{path} is missing: preprocess was given no MS-CXR table")
    table = pq.read_table(path)
    table = table.filter(pc.equal(table.column("phrase_id"), int(phrase_id)))
    if table.num_rows == 0:
        raise LimitrError(f"no phrase_id {phrase_id} in {path}")
    row = table.slice(0, 1).to_pylist()[0]
    with Image.open(io.BytesIO(row["image"])) as img:
        square = np.asarray(img.convert("L"))
    if square.shape[0] != model.image_size:
        raise LimitrError(f"{path} holds {square.shape[0]}-pixel images, the model is set for {model.image_size}")
    grey = prepare.decode_grey(row["image"])
    top, left = prepare.crop_offsets(grey.shape[0], grey.shape[1], model.crop_size, None)
    crop = torch.from_numpy(np.ascontiguousarray(grey[top : top + model.crop_size, left : left + model.crop_size]))
    images = model.encode_crops([crop], [None])
    text = model.encode_text([row["text"]])
    grid_map = model.region_maps(images, text, kind)[0]
    geometry = {g: row[g] for g in ("orig_height", "orig_width", "scale", "pad_left", "pad_top")}
    item = GalleryItem(int(phrase_id), row["text"], square, geometry)
    from limitr.use.explorer import _map_on_processed

    values = _map_on_processed(grid_map, geometry, model.image_size, model.crop_size)
    s = float(geometry["scale"])
    boxes = [("MS-CXR", (x * s, y * s, w * s, h * s)) for x, y, w, h in row["boxes"]]
    return Panel(item.unpadded(), values, f"{row['label_text']} ({row['category_name']})", boxes=boxes)
