"""Fixed 2-D sine-cosine positional encoding of image regions (method.md, domain knowledge 2)."""

from __future__ import annotations

from typing import Optional

import torch

from limitr.errors import LimitrError


def sincos_2d(
    height: int,
    width: int,
    dim: int,
    temperature: float = 10000.0,
    device: Optional[torch.device | str] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Positional encoding of an ``height x width`` grid, row-major like ``flatten(2)``.

    Returns (height * width, dim). Channels are four blocks of dim / 4: sin x, cos x,
    sin y, cos y, where x is the column and y the row index (in grid cells, from 0) and
    block channel i uses the frequency ``temperature ** (-i / (dim / 4 - 1))``, so the
    first channel of each block has frequency 1 and the last 1 / temperature.
    """
    if dim % 4 != 0:
        raise LimitrError(f"the 2-D sine-cosine encoding needs a width divisible by 4, got {dim}")
    if height < 1 or width < 1:
        raise LimitrError(f"the region grid must be at least 1 x 1, got {height} x {width}")
    quarter = dim // 4
    # Computed in float64 so that the table is the same whatever dtype is asked for.
    steps = torch.arange(quarter, dtype=torch.float64, device=device) / max(quarter - 1, 1)
    omega = temperature ** (-steps)
    y, x = torch.meshgrid(
        torch.arange(height, dtype=torch.float64, device=device),
        torch.arange(width, dtype=torch.float64, device=device),
        indexing="ij",
    )
    x = x.reshape(-1, 1) * omega
    y = y.reshape(-1, 1) * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).to(dtype)
