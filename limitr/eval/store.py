"""Saved embeddings: safetensors files of global and local features with their masks.

A table's embeddings live in one folder as ``images-NNNNN.safetensors`` and
``texts-NNNNN.safetensors``, at most ``rows_per_file`` items each. Every file holds

    key         (n,) int64        the table's key (study_id, phrase_id, item_id or prompt index)
    global_emb  (n, D) float32
    local       (n, L, D) float32 L = M regions or N words (padded to the longest of the file)
    local_mask  (n, L) bool       True for a real region or word

and in its metadata ``kind`` (images | texts), ``key_name`` and, for images, ``grid`` ("h,w").
Reading pads every file's ``local`` to the longest and concatenates, in file order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch

from limitr.errors import LimitrError
from limitr.model.outputs import ImageEmbeddings, TextEmbeddings

Embeddings = Union[ImageEmbeddings, TextEmbeddings]
KINDS: tuple[str, ...] = ("images", "texts")


def _pad_local(local: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    extra = length - local.shape[1]
    if extra <= 0:
        return local, mask
    local = torch.nn.functional.pad(local, (0, 0, 0, extra))
    mask = torch.nn.functional.pad(mask, (0, extra), value=False)
    return local, mask


class EmbeddingWriter:
    """Buffers batches of embeddings and writes them as numbered safetensors files.

    folder: the table's folder (created); kind: "images" or "texts"; key_name: what the keys
    are (metadata only). ``add`` takes (B,) keys and a batch's embeddings (any device);
    ``close`` writes the rest and returns the file names written.
    """

    def __init__(self, folder: Path, kind: str, key_name: str, rows_per_file: int = 4096) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        if rows_per_file < 1:
            raise ValueError("rows_per_file must be positive")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.kind, self.key_name, self.rows_per_file = kind, key_name, rows_per_file
        self.files: list[str] = []
        self.rows = 0
        self.grid: Optional[tuple[int, int]] = None
        self._buffer: list[tuple[torch.Tensor, Embeddings]] = []
        self._buffered = 0

    def add(self, keys: torch.Tensor, emb: Embeddings) -> None:
        emb = emb.detach().to("cpu")
        if isinstance(emb, ImageEmbeddings):
            self.grid = tuple(int(v) for v in emb.grid)  # type: ignore[assignment]
        keys = torch.as_tensor(keys, dtype=torch.int64).cpu()
        if keys.shape[0] != emb.global_emb.shape[0]:
            raise ValueError("one key per embedded item")
        self._buffer.append((keys, emb))
        self._buffered += int(keys.shape[0])
        while self._buffered >= self.rows_per_file:
            self._flush(self.rows_per_file)

    def _flush(self, n_rows: int) -> None:
        from safetensors.torch import save_file

        keys = torch.cat([k for k, _ in self._buffer])
        length = max(e.local.shape[1] for _, e in self._buffer)
        parts = [_pad_local(e.local.float(), e.local_mask.bool(), length) for _, e in self._buffer]
        local = torch.cat([p[0] for p in parts])
        mask = torch.cat([p[1] for p in parts])
        glob = torch.cat([e.global_emb.float() for _, e in self._buffer])
        head = slice(0, n_rows)
        tensors = {
            "key": keys[head].contiguous(),
            "global_emb": glob[head].contiguous(),
            "local": local[head].contiguous(),
            "local_mask": mask[head].contiguous(),
        }
        metadata = {"kind": self.kind, "key_name": self.key_name}
        if self.grid is not None:
            metadata["grid"] = f"{self.grid[0]},{self.grid[1]}"
        name = f"{self.kind}-{len(self.files):05d}.safetensors"
        save_file(tensors, str(self.folder / name), metadata=metadata)
        self.files.append(name)
        self.rows += n_rows
        rest = slice(n_rows, None)
        self._buffer = []
        if keys.shape[0] > n_rows:
            self._buffer.append((keys[rest], _bundle(self.kind, glob[rest], local[rest], mask[rest], self.grid)))
        self._buffered = int(keys.shape[0]) - n_rows

    def close(self) -> list[str]:
        if self._buffered:
            self._flush(self._buffered)
        return list(self.files)


def _bundle(
    kind: str, glob: torch.Tensor, local: torch.Tensor, mask: torch.Tensor, grid: Optional[tuple[int, int]]
) -> Embeddings:
    if kind == "images":
        if grid is None:
            raise LimitrError("image embeddings without a region grid in their metadata")
        return ImageEmbeddings(global_emb=glob, local=local, local_mask=mask, grid=grid)
    return TextEmbeddings(global_emb=glob, local=local, local_mask=mask)


def embedding_files(folder: Path, kind: str) -> list[Path]:
    return sorted(Path(folder).glob(f"{kind}-*.safetensors"))


def has_embeddings(folder: Path, kind: str) -> bool:
    return bool(embedding_files(folder, kind))


def read_embeddings(folder: Path, kind: str) -> tuple[torch.Tensor, Embeddings]:
    """All of a table's ``kind`` embeddings: (keys (n,) int64, bundle of n items)."""
    from safetensors import safe_open

    files = embedding_files(folder, kind)
    if not files:
        raise LimitrError(f"no {kind} embeddings in {folder}: run the embed stage first")
    keys, globs, locals_, masks = [], [], [], []
    grid: Optional[tuple[int, int]] = None
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                keys.append(fh.get_tensor("key"))
                globs.append(fh.get_tensor("global_emb"))
                locals_.append(fh.get_tensor("local"))
                masks.append(fh.get_tensor("local_mask"))
        except Exception as exc:  # safetensors raises several types for a damaged file
            raise LimitrError(f"embeddings file {path} cannot be read ({exc}); re-run the embed stage") from exc
        if meta.get("kind", kind) != kind:
            raise LimitrError(f"{path} holds {meta.get('kind')} embeddings, not {kind}")
        if "grid" in meta:
            h, w = (int(v) for v in meta["grid"].split(","))
            grid = (h, w)
    length = max(t.shape[1] for t in locals_)
    padded = [_pad_local(loc, m, length) for loc, m in zip(locals_, masks)]
    local = torch.cat([p[0] for p in padded])
    mask = torch.cat([p[1] for p in padded])
    return torch.cat(keys), _bundle(kind, torch.cat(globs), local, mask, grid)


def align(
    image_keys: torch.Tensor, text_keys: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pair images and texts by key: (keys sorted ascending, image rows, text rows) of the keys
    both sides have. Duplicated keys keep their first row."""
    img_first = _first_rows(image_keys)
    txt_first = _first_rows(text_keys)
    common = sorted(set(img_first) & set(txt_first))
    keys = torch.tensor(common, dtype=torch.int64)
    return (
        keys,
        torch.tensor([img_first[k] for k in common], dtype=torch.int64),
        torch.tensor([txt_first[k] for k in common], dtype=torch.int64),
    )


def _first_rows(keys: torch.Tensor) -> dict[int, int]:
    first: dict[int, int] = {}
    for row, key in enumerate(keys.tolist()):
        first.setdefault(int(key), row)
    return first


def read_manifest(embeddings: Path) -> dict:
    """The embed stage's report.json next to the saved tables (tables, counts and the image
    settings used)."""
    path = Path(embeddings) / "report.json"
    if not path.is_file():
        raise LimitrError(f"{path} is missing: the embeddings folder was not written by the embed stage")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LimitrError(f"{path} is not valid JSON ({exc}): write the embeddings again") from exc
