"""The one image and token preparation of the project: decode, crop, collate, model inputs.

Training, validation, embedding, search and grounding all prepare a study here, so the
crop a model is evaluated on is the crop it was trained on, by construction:

- :func:`decode_grey`: PNG bytes -> (H, W) uint8 grey image;
- :func:`crop_offsets` / :func:`crop_square`: a ``crop`` square, uniform when a generator is
  given (training) and centred otherwise (evaluation, floor offsets);
- :func:`decode_centre_crop`: both for one image of a table, or the reason it was left out;
- :class:`StudyItem` -> :func:`collate_studies` -> :class:`StudyBatch`: images stay uint8
  until they reach the device, reports are trimmed to the batch's longest;
- :func:`normalize_images` / :func:`prepare_images`: uint8 crops -> normalised (B, 3, S, S)
  floats on the device (the encoders' input convention; ``limitr.model`` re-exports it).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from limitr.data.images import center_crop_offset
from limitr.errors import LimitrError


def image_size(data: Optional[bytes]) -> Optional[tuple[int, int]]:
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
        return center_crop_offset(height, crop), center_crop_offset(width, crop)
    return int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))


def crop_square(image: np.ndarray, crop: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """The ``crop`` square of an (H, W) image at :func:`crop_offsets`, contiguous."""
    top, left = crop_offsets(image.shape[0], image.shape[1], crop, rng)
    return np.ascontiguousarray(image[top : top + crop, left : left + crop])


def decode_centre_crop(data: Optional[bytes], crop: int) -> tuple[Optional[np.ndarray], Optional[str]]:
    """(C, C) uint8 centre crop of PNG bytes, or (None, reason) with reason one of
    ``image_missing``, ``image_unreadable``, ``image_smaller_than_crop``."""
    if data is None:
        return None, "image_missing"
    try:
        image = decode_grey(data)
    except Exception:  # PIL raises several types for bad bytes; all mean "unreadable"
        return None, "image_unreadable"
    if min(image.shape) < crop:
        return None, "image_smaller_than_crop"
    return crop_square(image, crop), None


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """Grey uint8 images (B, 1, H, W) or (B, H, W) -> float (B, 3, H, W).

    Intensities map to [-1, 1] (mean 0.5, std 0.5 on the [0, 1] scale) and the grey
    channel is replicated to the three channels the ResNet stem expects.
    """
    if images.dtype != torch.uint8:
        raise LimitrError(f"normalize_images expects uint8 pixels, got {images.dtype}")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] != 1:
        raise LimitrError(f"normalize_images expects (B, 1, H, W) or (B, H, W), got {tuple(images.shape)}")
    x = images.float().div_(255.0).sub_(0.5).div_(0.5)
    return x.repeat(1, 3, 1, 1)


def prepare_images(grey: torch.Tensor, device: torch.device | str, upsample_to: Optional[int] = None) -> torch.Tensor:
    """(B, C, C) uint8 crops -> normalised (B, 3, S, S) float on ``device`` (S = ``upsample_to``
    when given, bilinear, else C)."""
    device = torch.device(device)
    x = normalize_images(grey.to(device, non_blocking=device.type == "cuda"))
    if upsample_to is not None and tuple(x.shape[-2:]) != (upsample_to, upsample_to):
        x = torch.nn.functional.interpolate(x, size=(upsample_to, upsample_to), mode="bilinear", align_corners=False)
    return x


def trim_padding(input_ids: torch.Tensor, attention: torch.Tensor, word_ids: torch.Tensor, min_length: int = 0):
    """Drop the padding columns every row of a batch shares (they change no score), keeping
    at least ``min_length`` columns."""
    used = attention.bool().any(0).nonzero()
    length = max(int(used.max()) + 1 if len(used) else 0, min_length)
    return input_ids[:, :length], attention[:, :length], word_ids[:, :length]


@dataclass
class StudyItem:
    """One study as a dataset yields it (crops already taken)."""

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

    def __reduce__(self):
        """Sent from a DataLoader worker as one byte buffer and its layout: torch moves each
        tensor of a pickled batch through a shared-memory segment of its own, and setting up
        eight of them per batch cost the training process about as much as decoding the batch
        itself (2 workers then fed it no faster than none). One segment per batch; the
        training process gets views into it, the same values."""
        tensors = [getattr(self, f.name) for f in fields(self)]
        layout, size = [], 0
        for t in tensors:
            layout.append((t.dtype, tuple(t.shape), size))
            size += -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN
        buffer = torch.empty(size, dtype=torch.uint8)
        for t, (dtype, shape, offset) in zip(tensors, layout):
            _view(buffer, dtype, shape, offset).copy_(t)
        return _unpack_batch, (buffer, tuple(layout))

    def pin_memory(self) -> "StudyBatch":
        return StudyBatch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def to_model_inputs(
        self, device: torch.device | str, upsample_to: Optional[int] = None, lateral: bool = True
    ) -> ModelInputs:
        """Move to ``device``, normalise and resize to ``upsample_to`` (:func:`prepare_images`)."""
        device = torch.device(device)
        non_blocking = device.type == "cuda"
        has_lateral = self.has_lateral.to(device, non_blocking=non_blocking)
        use_lateral = lateral and bool(self.has_lateral.any())
        return ModelInputs(
            frontal=prepare_images(self.frontal, device, upsample_to),
            lateral=prepare_images(self.lateral, device, upsample_to) if use_lateral else None,
            has_lateral=has_lateral if lateral else torch.zeros_like(has_lateral),
            input_ids=self.input_ids.to(device, non_blocking=non_blocking),
            attention_mask=self.attention_mask.to(device, non_blocking=non_blocking),
            word_ids=self.word_ids.to(device, non_blocking=non_blocking),
        )


#: Byte alignment of each tensor in a batch's transfer buffer (any dtype's, and a cache line).
_ALIGN = 64


def _view(buffer: torch.Tensor, dtype: torch.dtype, shape: tuple, offset: int) -> torch.Tensor:
    """The tensor of ``dtype`` and ``shape`` stored from byte ``offset`` of a uint8 ``buffer``."""
    n = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
    return buffer[offset : offset + n].view(dtype).view(shape)


def _unpack_batch(buffer: torch.Tensor, layout: tuple) -> StudyBatch:
    """The inverse of :meth:`StudyBatch.__reduce__`."""
    return StudyBatch(*(_view(buffer, dtype, shape, offset) for dtype, shape, offset in layout))


def collate_studies(items: Sequence[StudyItem]) -> StudyBatch:
    """Stack items into a :class:`StudyBatch`, trimming token padding shared by the batch."""
    input_ids, attention, word_ids = trim_padding(
        torch.stack([it.input_ids for it in items]),
        torch.stack([it.attention_mask for it in items]),
        torch.stack([it.word_ids for it in items]),
    )
    return StudyBatch(
        index=torch.tensor([it.index for it in items], dtype=torch.int64),
        study_id=torch.tensor([it.study_id for it in items], dtype=torch.int64),
        frontal=torch.stack([it.frontal for it in items]),
        lateral=torch.stack([it.lateral for it in items]),
        has_lateral=torch.tensor([it.has_lateral for it in items], dtype=torch.bool),
        input_ids=input_ids,
        attention_mask=attention,
        word_ids=word_ids,
    )
