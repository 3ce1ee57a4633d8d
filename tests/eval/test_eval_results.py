"""The one JSON writer of the evaluation results (what it writes and what it leaves out), and
the grounding figure drawn from a result."""

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


def test_grounding_figure_one_scale_colourbar_labelled_boxes_phrase_title() -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from PIL import Image

    from limitr.data.images import geometry_for
    from limitr.eval.plots import grounding_figure
    from limitr.eval.results import GroundingExample

    geometry = geometry_for(40, 30, 32).with_crop(32, 24)
    png = io.BytesIO()
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(png, format="PNG")
    ramp = np.linspace(0.0, 1.0, 40 * 30).reshape(40, 30)
    maps = {"attention": ramp * 0.01, "cosine": ramp * 2.0 - 1.0, "attention prior (mean map)": np.full((40, 30), np.nan)}
    example = GroundingExample(phrase_id=7, text="small left pleural effusion", boxes=[[2, 3, 10, 12], [15, 20, 5, 5]],
                               image=png.getvalue(), geometry=geometry, maps=maps)
    fig = grounding_figure("Pleural Effusion", example)
    panels, bars = fig.axes[:3], fig.axes[3:]
    assert len(bars) == 1  # one colourbar for every panel
    overlays = [ax.get_images()[1] for ax in panels]
    assert {tuple(im.get_clim()) for im in overlays} == {(0.0, 1.0)}  # one colour scale
    assert np.nanmax(overlays[0].get_array()) == 1.0 and np.nanmin(overlays[1].get_array()) == 0.0
    for ax in panels:
        assert sum(isinstance(p, Rectangle) for p in ax.patches) == 2
        assert sorted(t.get_text() for t in ax.texts) == ["ground truth 1", "ground truth 2"]
    assert "small left pleural effusion" in fig._suptitle.get_text()
    plt.close(fig)
