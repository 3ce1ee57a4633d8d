"""The one study preparation the pipeline uses, as this package sees it.

Every image this package encodes goes through these functions and nothing else: the
preprocess stage's decode, resize and pad to the ``image_size`` square
(:func:`limitr.data.images.process_image_file`), then the study preparation's decode and
evaluation centre crop (:mod:`limitr.data.prepare`). This module is the only place the package names where those live.
"""

from __future__ import annotations

from limitr.data.images import MAX_PIXELS, BadImage, Geometry, decode, process_image_bytes, process_image_file  # noqa: F401
from limitr.data.prepare import crop_offsets, decode_grey, prepare_images, trim_padding  # noqa: F401

__all__ = ["MAX_PIXELS", "BadImage", "Geometry", "crop_offsets", "decode", "decode_grey", "prepare_images", "process_image_bytes",
           "process_image_file", "trim_padding"]
