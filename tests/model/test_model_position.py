"""2-D sine-cosine positional encoding: known answers and layout."""

from __future__ import annotations

import pytest
import torch

import model_reference as ref
from limitr.errors import LimitrError
from limitr.model.position import sincos_2d


@pytest.mark.parametrize("h, w, dim", [(1, 1, 4), (2, 3, 8), (19, 19, 16), (8, 5, 12)])
def test_matches_entrywise_reference(h, w, dim):
    torch.testing.assert_close(sincos_2d(h, w, dim, dtype=torch.float64), ref.sincos_reference(h, w, dim), rtol=0, atol=1e-12)


def test_channel_order_and_grid_layout():
    pe = sincos_2d(3, 4, 8)  # quarter = 2: frequencies 1 and 1e-4
    row = 1 * 4 + 2  # y = 1, x = 2
    expected = torch.tensor(
        [
            torch.sin(torch.tensor(2.0)), torch.sin(torch.tensor(2e-4)),
            torch.cos(torch.tensor(2.0)), torch.cos(torch.tensor(2e-4)),
            torch.sin(torch.tensor(1.0)), torch.sin(torch.tensor(1e-4)),
            torch.cos(torch.tensor(1.0)), torch.cos(torch.tensor(1e-4)),
        ]
    )
    torch.testing.assert_close(pe[row], expected)
    # The origin: sin 0 = 0, cos 0 = 1.
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))


def test_distinct_positions_get_distinct_codes():
    pe = sincos_2d(7, 9, 32)
    dists = torch.cdist(pe, pe)
    assert dists[~torch.eye(63, dtype=torch.bool)].min() > 0.1


def test_width_must_be_divisible_by_4():
    with pytest.raises(LimitrError, match="divisible by 4"):
        sincos_2d(2, 2, 6)
