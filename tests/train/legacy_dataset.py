"""The study dataset as it was before the on-demand data path (every PNG of a split held in
Python lists of bytes): the reference the new dataset must match item for item."""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from limitr.errors import LimitrError

#: Why a study or a token row was left out (keys of ``StudyDataset.report["skipped"]``).
SKIP_REASONS: tuple[str, ...] = (
    "no_tokens",  # a study without a token row
    "tokens_without_study",  # a token row without a study
    "duplicate_study",  # a study_id seen earlier in the study shards
    "duplicate_tokens",  # a study_id seen earlier in the token shard
    "no_words",  # a report with no word left after tokenising
    "frontal_unreadable",  # the frontal PNG cannot be opened
    "frontal_smaller_than_crop",
)
#: Laterals dropped from studies that are kept (the study then counts as frontal-only).
LATERAL_DROP_REASONS: tuple[str, ...] = ("lateral_unreadable", "lateral_smaller_than_crop")


def study_files(shards: Path, split: str) -> list[Path]:
    """The study shards of one split, in name order."""
    return sorted((Path(shards) / split).glob("part-*.parquet"))


def token_file(tokens: Path, split: str) -> Path:
    return Path(tokens) / f"{split}.parquet"


def _image_size(data: Optional[bytes]) -> Optional[tuple[int, int]]:
    """(height, width) from the PNG header, or None when the bytes are not an image."""
    if data is None:
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Exception:  # PIL raises several types for bad bytes; all mean "unreadable"
        return None
    return height, width


def decode_grey(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W) uint8 grey image."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode != "L":
            img = img.convert("L")
        return np.asarray(img, dtype=np.uint8).copy()


def crop_offsets(
    height: int, width: int, crop: int, rng: Optional[np.random.Generator]
) -> tuple[int, int]:
    """Top-left corner of a ``crop`` square: uniform when ``rng`` is given, else centred."""
    if rng is None:
        return (height - crop) // 2, (width - crop) // 2
    return int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))


def _token_matrix(column: pa.ChunkedArray, name: str, split: str) -> np.ndarray:
    """A list<int> column of equal-length rows -> (n, T) int64."""
    flat = column.combine_chunks()
    lengths = np.diff(np.asarray(flat.offsets))
    if len(lengths) and (lengths != lengths[0]).any():
        raise LimitrError(
            f"token shard {split}: rows of '{name}' have different lengths; re-run the tokenize stage"
        )
    width = int(lengths[0]) if len(lengths) else 0
    return np.asarray(flat.flatten(), dtype=np.int64).reshape(len(lengths), width)


@dataclass
class StudyItem:
    """One study as the dataset yields it (crops already taken)."""

    index: int
    study_id: int
    frontal: torch.Tensor  # (C, C) uint8
    lateral: torch.Tensor  # (C, C) uint8; zeros when has_lateral is False
    has_lateral: bool
    input_ids: torch.Tensor  # (T,) int64
    attention_mask: torch.Tensor  # (T,) int64
    word_ids: torch.Tensor  # (T,) int64, -1 for [CLS], [SEP] and padding


@dataclass
class ModelInputs:
    """What ``encode_images`` and ``encode_text`` take, on the device.

    frontal: (B, 3, S, S) float; lateral: (B, 3, S, S) float or None when no study of the
    batch has one (or laterals are off); has_lateral: (B,) bool; input_ids, attention_mask,
    word_ids: (B, T) int64.
    """

    frontal: torch.Tensor
    lateral: Optional[torch.Tensor]
    has_lateral: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    word_ids: torch.Tensor


@dataclass
class StudyBatch:
    """A collated batch. Images (B, C, C) uint8; tokens (B, T) int64, T trimmed to the longest
    report of the batch (padding changes no score, and shorter sequences are cheaper)."""

    index: torch.Tensor  # (B,) int64 position in the dataset
    study_id: torch.Tensor  # (B,) int64
    frontal: torch.Tensor
    lateral: torch.Tensor
    has_lateral: torch.Tensor  # (B,) bool
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    word_ids: torch.Tensor

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def pin_memory(self) -> "StudyBatch":
        return StudyBatch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def to_model_inputs(
        self, device: torch.device | str, upsample_to: Optional[int] = None, lateral: bool = True
    ) -> ModelInputs:
        """Move to ``device``, normalise (``normalize_images``) and resize to ``upsample_to``."""
        from limitr.model.image_encoder import normalize_images

        device = torch.device(device)
        non_blocking = device.type == "cuda"

        def images(grey: torch.Tensor) -> torch.Tensor:
            x = normalize_images(grey.to(device, non_blocking=non_blocking))
            if upsample_to is not None and tuple(x.shape[-2:]) != (upsample_to, upsample_to):
                x = torch.nn.functional.interpolate(
                    x, size=(upsample_to, upsample_to), mode="bilinear", align_corners=False
                )
            return x

        has_lateral = self.has_lateral.to(device, non_blocking=non_blocking)
        use_lateral = lateral and bool(self.has_lateral.any())
        return ModelInputs(
            frontal=images(self.frontal),
            lateral=images(self.lateral) if use_lateral else None,
            has_lateral=has_lateral if lateral else torch.zeros_like(has_lateral),
            input_ids=self.input_ids.to(device, non_blocking=non_blocking),
            attention_mask=self.attention_mask.to(device, non_blocking=non_blocking),
            word_ids=self.word_ids.to(device, non_blocking=non_blocking),
        )


def collate_studies(items: Sequence[StudyItem]) -> StudyBatch:
    """Stack items into a :class:`StudyBatch`, trimming token padding shared by the batch."""
    attention = torch.stack([it.attention_mask for it in items])
    used = attention.bool().any(0).nonzero()
    length = int(used.max()) + 1 if len(used) else 0  # up to the last column any report uses
    return StudyBatch(
        index=torch.tensor([it.index for it in items], dtype=torch.int64),
        study_id=torch.tensor([it.study_id for it in items], dtype=torch.int64),
        frontal=torch.stack([it.frontal for it in items]),
        lateral=torch.stack([it.lateral for it in items]),
        has_lateral=torch.tensor([it.has_lateral for it in items], dtype=torch.bool),
        input_ids=torch.stack([it.input_ids for it in items])[:, :length],
        attention_mask=attention[:, :length],
        word_ids=torch.stack([it.word_ids for it in items])[:, :length],
    )


class StudyDataset(torch.utils.data.Dataset):
    """The studies of one split that have both images and tokens, in study-shard order.

    shards: folder with ``{split}/part-*.parquet`` (STUDY_SCHEMA); tokens: folder with
    ``{split}.parquet`` (TOKEN_SCHEMA). ``train`` picks random crops, else centre crops.
    ``report`` counts the studies kept and every record left out, by reason.
    """

    def __init__(
        self,
        shards: Path,
        tokens: Path,
        split: str,
        crop_size: int,
        *,
        train: bool,
        seed: int = 0,
    ) -> None:
        self.split = split
        self.crop_size = int(crop_size)
        self.train = train
        self.seed = int(seed)
        self.epoch = 0
        skipped: Counter[str] = Counter()

        files = study_files(shards, split)
        if not files:
            raise LimitrError(
                f"no study shards in {Path(shards) / split}: run the preprocess stage first "
                "(`dvc repro preprocess`) or point train.shards at its output"
            )
        tok_path = token_file(tokens, split)
        if not tok_path.exists():
            raise LimitrError(f"token shard {tok_path} is missing: run the tokenize stage first")

        tok = pq.read_table(tok_path, columns=["study_id", "input_ids", "attention_mask", "word_ids"])
        tok_ids = np.asarray(tok.column("study_id"), dtype=np.int64)
        input_ids = _token_matrix(tok.column("input_ids"), "input_ids", split)
        attention = _token_matrix(tok.column("attention_mask"), "attention_mask", split)
        word_ids = _token_matrix(tok.column("word_ids"), "word_ids", split)
        token_row: dict[int, int] = {}
        for row, sid in enumerate(tok_ids.tolist()):
            if sid in token_row:
                skipped["duplicate_tokens"] += 1
            else:
                token_row[sid] = row
        has_words = (word_ids >= 0).any(axis=1)

        columns = ["study_id", "frontal_image", "lateral_image"]
        kept_ids: list[int] = []
        kept_rows: list[int] = []
        self._frontal: list[bytes] = []
        self._lateral: list[Optional[bytes]] = []
        used_tokens: set[int] = set()
        seen: set[int] = set()
        for path in files:
            table = pq.read_table(path, columns=columns)
            for sid, front, lat in zip(
                table.column("study_id").to_pylist(),
                table.column("frontal_image").to_pylist(),
                table.column("lateral_image").to_pylist(),
            ):
                if sid in seen:
                    skipped["duplicate_study"] += 1
                    continue
                seen.add(sid)
                row = token_row.get(sid)
                if row is None:
                    skipped["no_tokens"] += 1
                    continue
                used_tokens.add(sid)
                if not has_words[row]:
                    skipped["no_words"] += 1
                    continue
                size = _image_size(front)
                if size is None:
                    skipped["frontal_unreadable"] += 1
                    continue
                if min(size) < self.crop_size:
                    skipped["frontal_smaller_than_crop"] += 1
                    continue
                if lat is not None:
                    lat_size = _image_size(lat)
                    if lat_size is None:
                        skipped["lateral_unreadable"] += 1
                        lat = None
                    elif min(lat_size) < self.crop_size:
                        skipped["lateral_smaller_than_crop"] += 1
                        lat = None
                kept_ids.append(sid)
                kept_rows.append(row)
                self._frontal.append(front)
                self._lateral.append(lat)
        skipped["tokens_without_study"] += len(token_row) - len(used_tokens)

        if not kept_ids:
            if skipped["frontal_smaller_than_crop"]:
                raise LimitrError(
                    f"every {split} image is smaller than crop_size {self.crop_size}: lower "
                    "train.crop_size or raise preprocess.image_size"
                )
            raise LimitrError(
                f"no {split} study has both images and tokens (left out: {dict(skipped)}); "
                "check that train.shards and train.tokens come from the same preprocess run"
            )
        rows = np.asarray(kept_rows, dtype=np.int64)
        self.study_ids = np.asarray(kept_ids, dtype=np.int64)
        self._input_ids = torch.from_numpy(input_ids[rows])
        self._attention = torch.from_numpy(attention[rows])
        self._word_ids = torch.from_numpy(word_ids[rows])
        n_lateral = sum(lat is not None for lat in self._lateral)
        self.report = {
            "split": split,
            "studies": len(kept_ids),
            "with_lateral": n_lateral,
            "skipped": {k: int(skipped[k]) for k in SKIP_REASONS},
            "laterals_dropped": {k: int(skipped[k]) for k in LATERAL_DROP_REASONS},
        }

    def __len__(self) -> int:
        return len(self.study_ids)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random crops ``__getitem__`` draws (set before iterating)."""
        self.epoch = int(epoch)

    def _crop(self, data: bytes, rng: Optional[np.random.Generator]) -> torch.Tensor:
        image = decode_grey(data)
        top, left = crop_offsets(image.shape[0], image.shape[1], self.crop_size, rng)
        c = self.crop_size
        return torch.from_numpy(np.ascontiguousarray(image[top : top + c, left : left + c]))

    def __getitem__(self, index: int) -> StudyItem:
        rng = np.random.default_rng((self.seed, self.epoch, index)) if self.train else None
        try:
            frontal = self._crop(self._frontal[index], rng)
            lateral_bytes = self._lateral[index]
            lateral = None if lateral_bytes is None else self._crop(lateral_bytes, rng)
        except (OSError, ValueError) as exc:  # the header read but the pixels do not decode
            raise LimitrError(
                f"study {int(self.study_ids[index])} of split {self.split} has a corrupt image "
                f"({exc}); re-run the preprocess stage"
            ) from exc
        return StudyItem(
            index=index,
            study_id=int(self.study_ids[index]),
            frontal=frontal,
            lateral=lateral if lateral is not None else torch.zeros_like(frontal),
            has_lateral=lateral is not None,
            input_ids=self._input_ids[index],
            attention_mask=self._attention[index],
            word_ids=self._word_ids[index],
        )
