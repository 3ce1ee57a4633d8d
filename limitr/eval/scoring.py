"""The full score matrix, block by block, from saved embeddings.

The encoders never run here: blocks of saved image and text embeddings go through the
model's one ``similarity`` function (the same one training and validation use), and the
blocks are assembled into (n_images, n_texts) matrices on the CPU.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Protocol, Sequence, TypeVar, Union

import torch

from limitr.model.outputs import ImageEmbeddings, Scores, TextEmbeddings
from limitr.progress import ProgressFn, advance

SCORE_FIELDS: tuple[str, ...] = ("total", "global_", "local", "caption", "image")

Bundle = TypeVar("Bundle", ImageEmbeddings, TextEmbeddings)


class SimilarityModel(Protocol):
    def similarity(self, img: ImageEmbeddings, txt: TextEmbeddings, chunk: Union[int, None] = None) -> Scores: ...


def take(bundle: Bundle, index: Union[slice, torch.Tensor]) -> Bundle:
    """Rows ``index`` of every per-item tensor of an embeddings bundle (other fields kept)."""
    values = {}
    for f in fields(bundle):
        value = getattr(bundle, f.name)
        values[f.name] = value[index] if isinstance(value, torch.Tensor) else value
    return type(bundle)(**values)


def count(bundle: Union[ImageEmbeddings, TextEmbeddings]) -> int:
    """Number of items in a bundle."""
    return int(bundle.global_emb.shape[0])


@torch.no_grad()
def score_matrix(
    model: SimilarityModel,
    images: ImageEmbeddings,
    texts: TextEmbeddings,
    block_size: int = 256,
    chunk: Union[int, None] = None,
    device: Union[str, torch.device] = "cpu",
    keep: Sequence[str] = SCORE_FIELDS,
    progress: ProgressFn = None,
) -> Scores:
    """All (image, text) scores, computed in ``block_size`` x ``block_size`` blocks.

    images: n_images items; texts: n_texts items (any device; blocks are moved to ``device``).
    chunk: passed to ``model.similarity`` (reports per chunk of the local scores).
    keep: the optional Scores fields to assemble (local, caption, image); the others come
        back as None, which saves memory. total and global_ are always assembled.
    progress: advanced by the number of (image, text) pairs of each finished block.
    Returns Scores whose matrices are (n_images, n_texts) float32 on the CPU.
    """
    if block_size <= 0:
        raise ValueError("block_size must be positive")
    n_img, n_txt = count(images), count(texts)
    names = [name for name in SCORE_FIELDS if name in keep or name in ("total", "global_")]
    out: dict[str, Union[torch.Tensor, None]] = {name: None for name in SCORE_FIELDS}
    for i0 in range(0, n_img, block_size):
        img = take(images, slice(i0, i0 + block_size)).to(device)
        for j0 in range(0, n_txt, block_size):
            txt = take(texts, slice(j0, j0 + block_size)).to(device)
            block = model.similarity(img, txt, chunk=chunk)
            rows = slice(i0, i0 + count(img))
            cols = slice(j0, j0 + count(txt))
            for name in names:
                value = getattr(block, name)
                if value is None:
                    continue
                if out[name] is None:
                    out[name] = torch.empty(n_img, n_txt, dtype=torch.float32)
                out[name][rows, cols] = value.detach().to("cpu", torch.float32)
            advance(progress, count(img) * count(txt))
    for name in ("total", "global_"):  # the two fields Scores always carries
        if out[name] is None:
            if n_img and n_txt:
                raise ValueError(f"the model's similarity returned no {name} score")
            out[name] = torch.zeros(n_img, n_txt, dtype=torch.float32)
    return Scores(**out)  # type: ignore[arg-type]
