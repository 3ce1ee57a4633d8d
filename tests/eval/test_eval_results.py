"""The one JSON writer of the evaluation results: what it writes and what it leaves out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from limitr.eval.results import (
    ClassRetrievalResult,
    RetrievalFigures,
    RetrievalResult,
    Skipped,
    to_json,
    write_json,
)


def _figures(**extra) -> RetrievalFigures:
    return RetrievalFigures(n_candidates=4, i2t={"R@1": 25.0}, t2i={"R@1": float("nan")}, r_sum=np.float64(25.0), **extra)


def test_inline_private_optional_and_non_finite_values(tmp_path: Path) -> None:
    result = RetrievalResult(
        protocols={"full": _figures(chance={"R@1": 25.0}), "block2": _figures(n_blocks=2, n_studies_dropped=0)},
        by_score={"global": _figures()},
        curves={"k": [1, 2]},
    )
    out = to_json(result)
    assert list(out) == ["full", "block2", "by_score"]  # protocols inline, no rerank, no curves
    assert list(out["full"]) == ["n_candidates", "i2t", "t2i", "r_sum", "chance"]
    assert list(out["block2"]) == ["n_candidates", "n_blocks", "n_studies_dropped", "i2t", "t2i", "r_sum"]
    assert out["full"]["t2i"]["R@1"] is None and type(out["full"]["r_sum"]) is float
    write_json(tmp_path / "m" / "retrieval.json", result)
    assert json.loads((tmp_path / "m" / "retrieval.json").read_text()) == out
    assert not list((tmp_path / "m").glob(".*tmp"))


def test_skipped_parts_and_tasks() -> None:
    assert to_json(Skipped("no table")) == {"skipped": "no table"}
    result = ClassRetrievalResult(source="CheXpert 5x200", n_images=np.int64(3), n_per_class={"Edema": 3},
                                  t2i={"P@5": {"mean": 40.0}}, i2t=Skipped("no reports"))
    assert to_json(result) == {"source": "CheXpert 5x200", "n_images": 3, "n_per_class": {"Edema": 3},
                               "t2i": {"P@5": {"mean": 40.0}}, "i2t": {"skipped": "no reports"}}
