"""MIMIC-style identifiers.

subject_id: 8 digits starting with 1; study_id: 8 digits starting with 5; dicom_id: five
groups of eight lower-case hex digits joined by "-" (44 characters).
"""

from __future__ import annotations

import numpy as np


def dicom_id(rng: np.random.Generator) -> str:
    """A random dicom_id (160 random bits: collisions are not a practical concern, and
    the writer checks anyway)."""
    words = rng.integers(0, 2**32, size=5, dtype=np.uint64)
    return "-".join(f"{int(w):08x}" for w in words)


def unique_ints(rng: np.random.Generator, n: int, low: int, high: int) -> list[int]:
    """``n`` distinct integers in [low, high), in random order."""
    if n > high - low:
        raise ValueError(f"cannot draw {n} distinct ids from [{low}, {high})")
    seen: set[int] = set()
    out: list[int] = []
    while len(out) < n:
        for value in rng.integers(low, high, size=n - len(out)).tolist():
            if value not in seen:
                seen.add(value)
                out.append(value)
    return out

