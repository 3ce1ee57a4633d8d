"""The one geometry type: placement in the padded square, and the centre crop the model saw."""

from __future__ import annotations

import numpy as np
import pytest

from limitr.data.images import Geometry, center_crop_offset, geometry_for


def test_with_crop_keeps_the_placement_and_adds_the_crop() -> None:
    base = geometry_for(50, 40, 64)
    cropped = base.with_crop(64, 56)
    assert cropped.columns() == base.columns()  # the schema's five columns are unchanged
    assert Geometry.from_row(cropped.columns()) == base
    assert (cropped.image_size, cropped.crop_size, cropped.crop_offset) == (64, 56, 4)
    with pytest.raises(ValueError):
        _ = base.crop_offset  # no crop given


@pytest.mark.parametrize("size,crop", [(10, 8), (11, 8), (12, 7), (8, 8)])
def test_centre_crop_is_centred(size: int, crop: int) -> None:
    off = center_crop_offset(size, crop)
    assert 0 <= off and off + crop <= size
    assert abs((size - crop - off) - off) <= 1  # the same margin on both sides, up to one pixel
    image = np.arange(size * size).reshape(size, size)
    window = image[off : off + crop, off : off + crop]
    assert window.shape == (crop, crop)
