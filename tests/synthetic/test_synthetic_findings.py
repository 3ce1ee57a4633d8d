"""What the synthetic images show: each box covers pixels its finding changed, the written
JPEG is the rendered image, the anatomy follows radiological convention, and the files are
byte-identical for a seed whatever the number of workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from limitr.synthetic import generate, plan_dataset, render_image, render_with_and_without
from limitr.synthetic.anatomy import sample_anatomy
from limitr.synthetic.canvas import ViewFrame
from limitr.synthetic.frontal import FrontalChest, render_frontal_anatomy
from limitr.synthetic.lateral import LateralChest, render_lateral_anatomy
from synthetic_helpers import all_files, image_file

SCALE = 0.06


@pytest.fixture(scope="module")
def studies():
    return plan_dataset(60, seed=4, image_scale=SCALE)


def _inside(box: list[int], shape: tuple[int, int]) -> np.ndarray:
    x, y, w, h = box
    mask = np.zeros(shape, dtype=bool)
    mask[y:y + h, x:x + w] = True
    return mask


def test_boxes_cover_what_the_finding_drew(studies) -> None:
    """The pixels inside each box differ from the same box of that patient rendered
    without the finding, clearly more than the pixels outside the finding's boxes."""
    checked: dict[str, int] = {}
    for study in studies:
        for i, image in enumerate(study.images):
            full = render_image(study, i)
            for k, boxes in full.boxes.items():
                _, without = render_with_and_without(study, i, k)
                assert without.pixels.shape == full.pixels.shape
                diff = np.abs(full.pixels.astype(np.float32) - without.pixels.astype(np.float32))
                changed = diff > 6
                covered = np.zeros(diff.shape, dtype=bool)
                for box in boxes:
                    inside = _inside(box, diff.shape)
                    covered |= inside
                    # every box shows its finding (a thin tube fills little of its box)
                    assert changed[inside].sum() >= max(4, 0.02 * inside.sum()), (study.findings[k], image.view, box)
                    if study.findings[k].type != "support_device":
                        assert diff[inside].mean() > 1.5, (study.findings[k], image.view, box, diff[inside].mean())
                # and what the finding changed lies in its boxes
                assert changed[~covered].sum() <= 0.05 * changed.sum(), (study.findings[k], image.view)
                outside = diff[~covered].mean() if (~covered).any() else 0.0
                assert outside < 0.25 * diff[covered].mean(), (study.findings[k], image.view, outside)
                kind = study.findings[k].type
                checked[kind] = checked.get(kind, 0) + 1
    assert set(checked) >= {"cardiomegaly", "pleural_effusion", "consolidation", "atelectasis", "edema",
                            "support_device"}, checked


def test_a_removed_finding_changes_nothing_else(studies) -> None:
    """Leaving a finding out gives the same image where no finding is (same noise)."""
    study = next(s for s in studies if any(f.type == "nodule" for f in s.findings) and s.images[0].frontal) \
        if any(f.type == "nodule" for s in studies for f in s.findings) else next(s for s in studies if s.findings)
    full = render_image(study, 0)
    k = next(iter(full.boxes))
    without = render_image(study, 0, without=(k,))
    covered = np.zeros(full.pixels.shape, dtype=bool)
    for box in full.boxes[k]:
        covered |= _inside(box, covered.shape)
    assert np.array_equal(full.pixels[~covered], without.pixels[~covered]) or \
        np.abs(full.pixels[~covered].astype(int) - without.pixels[~covered].astype(int)).max() <= 2


def test_written_jpeg_is_the_rendered_image(tmp_path: Path) -> None:
    out = tmp_path / "set"
    generate(out, n_studies=6, seed=2, image_scale=SCALE, workers=1)
    plan = plan_dataset(6, seed=2, image_scale=SCALE)
    for study in plan:
        for i, image in enumerate(study.images):
            with Image.open(image_file(out, study.subject_id, study.study_id, image.dicom_id)) as im:
                written = np.asarray(im, dtype=np.float32)
            rendered = render_image(study, i).pixels.astype(np.float32)
            assert np.abs(written - rendered).mean() < 3.0


def test_files_identical_for_any_worker_count(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    generate(one, n_studies=16, seed=8, fault_rate=0.3, image_scale=0.05, workers=1)
    generate(two, n_studies=16, seed=8, fault_rate=0.3, image_scale=0.05, workers=2)
    first, second = all_files(one), all_files(two)
    assert sorted(first) == sorted(second)
    for name in first:
        assert first[name] == second[name], name
    other = tmp_path / "other"
    generate(other, n_studies=16, seed=9, image_scale=0.05, workers=1)
    assert all_files(other)["ground_truth.jsonl"] != first["ground_truth.jsonl"]


def _frame(height: int = 200, width: int = 170) -> ViewFrame:
    return ViewFrame(height=height, width=width, scale=height * 1.16, mid_col=width / 2, apex_row=0.08 * height, angle=0.0)


def test_frontal_anatomy_follows_radiological_convention() -> None:
    anatomy = sample_anatomy(np.random.default_rng(0))
    frame = _frame()
    pa = FrontalChest(anatomy, "PA")
    layers = render_frontal_anatomy(pa, frame)
    cols = np.arange(frame.width)[None, :]
    heart_centre = (layers.heart * cols).sum() / layers.heart.sum()
    assert heart_centre > frame.mid_col + 2, "the heart bulges to the image right (patient's left)"
    u = np.linspace(0.05, 0.3, 20)
    assert (pa.dome_y(u, -1) < pa.dome_y(u, 1)).all(), "the right hemidiaphragm sits higher"
    # the right lung (patient's right) is on the image's left
    right_lung_cols = (layers.lung[-1] * cols).sum() / layers.lung[-1].sum()
    assert right_lung_cols < frame.mid_col
    # AP magnifies the heart by 15-20 %
    ap = render_frontal_anatomy(FrontalChest(anatomy, "AP"), frame)
    width_pa = (layers.heart > 0.5).any(axis=0).sum()
    width_ap = (ap.heart > 0.5).any(axis=0).sum()
    assert 1.1 < width_ap / width_pa < 1.3


def test_lateral_anatomy_faces_left() -> None:
    anatomy = sample_anatomy(np.random.default_rng(1))
    frame = _frame()
    chest = LateralChest(anatomy)
    layers = render_lateral_anatomy(chest, frame)
    cols = np.arange(frame.width)[None, :]
    heart_centre = (layers.heart * cols).sum() / layers.heart.sum()
    spine_col = frame.to_pixels(np.array([[float(chest.spine_x(np.array(0.3))), 0.3]]))[0, 0]
    assert heart_centre < frame.mid_col < spine_col, "anterior (heart) on the left, spine on the right"
    # the posterior costophrenic sulcus is the lowest point of the lungs
    rows = np.arange(frame.height)[:, None]
    lowest = (rows * (layers.lung > 0.5)).argmax()
    low_row, low_col = np.unravel_index(lowest, layers.lung.shape)
    assert low_col > frame.mid_col


def test_small_effusions_show_on_the_lateral_only(studies) -> None:
    found = 0
    for study in studies:
        for k, f in enumerate(study.findings):
            if f.type != "pleural_effusion" or f.size != "small":
                continue
            for i, image in enumerate(study.images):
                boxes = render_image(study, i).boxes.get(k, [])
                assert bool(boxes) == (not image.frontal), (image.view, boxes)
            found += 1
    assert found
