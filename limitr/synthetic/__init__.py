"""A synthetic MIMIC-CXR-shaped data set: chest radiographs, reports and labels with known
ground truth, written in the public formats (MIMIC-CXR-JPG 2.0.0, the reports zip, MS-CXR,
CheXpert 5x200) so that the real reading code serves both.

Public API::

    generate(out, n_studies, seed, fault_rate=0.0, image_scale=0.125, progress=None, workers=None) -> dict
    render_sheet(root, out_png, n=4, seed=0) -> Path
    plan_dataset(n_studies, seed, image_scale=0.125) -> list[Study]
    render_image(study, image_index, without=()) -> RenderedImage
    render_with_and_without(study, image_index, finding_index) -> (RenderedImage, RenderedImage)

Modules: ``anatomy`` / ``frontal`` / ``lateral`` (the chest per patient and view),
``findings`` / ``lesions`` / ``devices`` (what a study shows and how it is drawn),
``phrases`` / ``reports`` (report text and CheXpert labels), ``ids`` / ``structure``
(identifiers, patients, studies, splits), ``faults``, ``formats`` / ``writer`` (files),
``sheet`` (an example sheet).
"""

from limitr.synthetic.render import RenderedImage, render_image, render_with_and_without
from limitr.synthetic.sheet import render_sheet
from limitr.synthetic.structure import Study, plan_dataset
from limitr.synthetic.writer import generate

__all__ = [
    "generate", "render_sheet", "plan_dataset", "render_image", "render_with_and_without",
    "RenderedImage", "Study",
]
