"""The one study preparation the pipeline uses, as this package sees it.

Every image this package encodes goes through these functions and nothing else: the
preprocess stage's decode, resize and pad to the ``image_size`` square
(:func:`limitr.data.images.process_image_file`), then the training dataset's decode and
evaluation centre crop. This module is the only place the package names where those live.
"""

from __future__ import annotations

from limitr.data.images import BadImage, Geometry, decode, process_image_bytes, process_image_file  # noqa: F401
from limitr.train.dataset import crop_offsets, decode_grey  # noqa: F401

__all__ = ["BadImage", "Geometry", "crop_offsets", "decode", "decode_grey", "process_image_bytes", "process_image_file"]
