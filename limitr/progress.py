"""Progress reporting without printing: the library calls a callback, the caller draws."""

from __future__ import annotations

from typing import Callable, Optional

#: ``progress(n_done_increment)``; the caller owns the bar and its total.
ProgressFn = Optional[Callable[[int], None]]


def advance(progress: ProgressFn, n: int = 1) -> None:
    """Advance ``progress`` by ``n`` when a callback was given."""
    if progress is not None:
        progress(n)
