"""The LIMITR model: typed config, encoders, local and global alignment, losses.

    model = LIMITR(ModelConfig.from_dict(params["model"]))
    img = model.encode_images(frontal, lateral, has_lateral)
    txt = model.encode_text(input_ids, attention_mask, word_ids)
    losses = model.loss(img, txt)          # matched batch
    scores = model.similarity(img, txt)    # (n_images, n_texts), the one scoring function

Names are imported on first use, so that ``limitr.model.config`` stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "LIMITR": "limitr.model.limitr",
    "ModelConfig": "limitr.model.config",
    "LossWeights": "limitr.model.config",
    "ImageEmbeddings": "limitr.model.outputs",
    "TextEmbeddings": "limitr.model.outputs",
    "Scores": "limitr.model.outputs",
    "Losses": "limitr.model.outputs",
    "normalize_images": "limitr.model.image_encoder",
    "default_text_encoder_path": "limitr.model.text_encoder",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from limitr.model.config import LossWeights, ModelConfig
    from limitr.model.image_encoder import normalize_images
    from limitr.model.limitr import LIMITR
    from limitr.model.outputs import ImageEmbeddings, Losses, Scores, TextEmbeddings
    from limitr.model.text_encoder import default_text_encoder_path


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'limitr.model' has no attribute {name!r}")
