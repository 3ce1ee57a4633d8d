"""``generate``: plan a data set, render its images on a worker pool, write every file.

Layout under ``out``::

    mimic-cxr-jpg/files/pXX/pSSSSSSSS/sTTTTTTTT/<dicom_id>.jpg
    mimic-cxr-jpg/mimic-cxr-2.0.0-{metadata,split,chexpert,negbio}.csv.gz
    mimic-cxr-reports.zip                       files/pXX/pSSSSSSSS/sTTTTTTTT.txt
    ms-cxr/MS_CXR_Local_Alignment_v1.1.0.csv    boxes of test-split findings
    chexpert_5x200.csv                          the 5x200 protocol on the test split
    ground_truth.jsonl                          every finding, with its boxes per image
    faults.json                                 when fault_rate > 0

Workers render whole studies; every random choice is fixed by the plan before any worker
starts, so the files do not depend on the number of workers.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from limitr.data.schema import CHEXPERT_LABELS, CLASS_RETRIEVAL_CLASSES, SPLITS
from limitr.synthetic import formats as F
from limitr.synthetic.faults import IMAGE_FAULTS, Fault, damage_jpeg, damage_report, plan_faults
from limitr.synthetic.findings import Finding
from limitr.synthetic.render import Box, render_image
from limitr.synthetic.reports import without_headers
from limitr.synthetic.structure import Study, plan_dataset
from limitr.errors import LimitrError
from limitr.progress import ProgressFn, advance
from limitr.settings import default_of

JPEG_QUALITY = 90
ImageBoxes = dict[str, dict[int, list[Box]]]  # dicom_id -> finding index -> boxes


def _render_study(task: tuple[Study, Optional[Fault], str]) -> ImageBoxes:
    """Render and write the images of one study (worker side); returns their boxes."""
    study, fault, jpg_root = task
    folder = Path(jpg_root) / study.folder
    folder.mkdir(parents=True, exist_ok=True)
    boxes: ImageBoxes = {}
    for i, image in enumerate(study.images):
        rendered = render_image(study, i)
        boxes[image.dicom_id] = rendered.boxes
        buf = io.BytesIO()
        Image.fromarray(rendered.pixels, mode="L").save(buf, format="JPEG", quality=JPEG_QUALITY)
        image_fault = fault if fault is not None and fault.image_index == i and fault.kind in IMAGE_FAULTS else None
        data = damage_jpeg(buf.getvalue(), image_fault)
        if data is not None:
            (folder / f"{image.dicom_id}.jpg").write_bytes(data)
    return boxes


def default_workers() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def generate(out: Path, n_studies: int, seed: int, fault_rate: float = default_of("synthesize", "fault_rate"),
             image_scale: float = default_of("synthesize", "image_scale"), progress: ProgressFn = None,
             workers: Optional[int] = None) -> dict:
    """Write a synthetic MIMIC-CXR-shaped data set of ``n_studies`` studies under ``out``.

    ``image_scale``: image size relative to real MIMIC-CXR (about 2544 x 3056 at 1.0).
    ``fault_rate``: share of studies given one injected fault (listed in faults.json).
    ``workers``: rendering processes (default: the usable cores); the files are the same
    for any number. ``progress`` is called with the number of studies rendered.
    Returns a summary (counts per split, view, finding, fault and evaluation file).
    """
    out = Path(out)
    if n_studies < 1:
        raise LimitrError(f"n_studies must be at least 1 (got {n_studies})")
    if not 0.0 <= fault_rate <= 1.0:
        raise LimitrError(f"fault_rate must be between 0 and 1 (got {fault_rate})")
    if not 0.01 <= image_scale <= 2.0:
        raise LimitrError(f"image_scale must be between 0.01 and 2 (got {image_scale}); 1.0 is full MIMIC size")
    if out.exists() and any(out.iterdir()):
        raise LimitrError(f"output folder {out} is not empty: give a new or empty folder")
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise LimitrError(f"workers must be at least 1 (got {workers})")

    studies = plan_dataset(n_studies, seed, image_scale)
    faults = plan_faults(studies, fault_rate, seed)
    dicoms = [im.dicom_id for s in studies for im in s.images]
    if len(set(dicoms)) != len(dicoms):
        raise LimitrError(f"seed {seed} drew a repeated dicom_id; choose another seed")
    jpg_root = out / "mimic-cxr-jpg"
    jpg_root.mkdir(parents=True, exist_ok=True)

    tasks = [(s, faults.get(s.index), str(jpg_root)) for s in studies]
    boxes: ImageBoxes = {}
    workers = min(workers, max(len(tasks) // 4, 1))
    if workers == 1:
        for task in tasks:
            boxes.update(_render_study(task))
            advance(progress, 1)
    else:
        context = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
        with context.Pool(workers) as pool:
            for result in pool.imap(_render_study, tasks, chunksize=4):
                boxes.update(result)
                advance(progress, 1)

    _write_tables(jpg_root, studies, faults)
    F.write_zip(out / F.REPORTS_ZIP, _report_members(studies, faults))
    ms_rows = ms_cxr_rows(studies, boxes, faults)
    F.write_csv(out / F.MS_CXR_FILE, F.MS_CXR_COLUMNS, ms_rows)
    five = chexpert_5x200_rows(studies, faults, seed)
    F.write_csv(out / F.CHEXPERT_5X200_FILE, F.CHEXPERT_5X200_COLUMNS, five)
    with (out / "ground_truth.jsonl").open("w", encoding="utf-8") as fh:
        for s in studies:
            fh.write(json.dumps(ground_truth(s, boxes)) + "\n")
    if fault_rate > 0:
        records = [faults[s.index].record(s) for s in studies if s.index in faults]
        (out / "faults.json").write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return summarise(studies, faults, ms_rows, five, seed=seed, image_scale=image_scale, workers=workers)


def _write_tables(root: Path, studies: list[Study], faults: dict[int, Fault]) -> None:
    """The four csv.gz files of the MIMIC-CXR-JPG root."""
    meta, split = [], []
    for s in studies:
        fault = faults.get(s.index)
        for i, im in enumerate(s.images):
            orientation = "Erect" if im.view != "AP" else ("Recumbent", "", "Erect")[im.seed % 3]
            row = {
                "dicom_id": im.dicom_id, "subject_id": s.subject_id, "study_id": s.study_id,
                "PerformedProcedureStepDescription": s.exam, "ViewPosition": im.view,
                "Rows": im.height, "Columns": im.width, "StudyDate": s.study_date, "StudyTime": s.study_time,
                "ProcedureCodeSequence_CodeMeaning": s.exam, "ViewCodeSequence_CodeMeaning": F.VIEW_MEANING[im.view],
                "PatientOrientationCodeSequence_CodeMeaning": orientation,
            }
            split_row = {"dicom_id": im.dicom_id, "study_id": s.study_id, "subject_id": s.subject_id, "split": s.split}
            if fault is not None and fault.image_index == i:
                if fault.kind == "unknown_view":
                    row["ViewPosition"] = fault.view
                elif fault.kind == "empty_view":
                    row["ViewPosition"] = None
                elif fault.kind == "missing_csv_cell":
                    target = row if fault.file == F.METADATA_FILE else split_row
                    target[fault.column or ""] = None
            meta.append([row[c] for c in F.METADATA_COLUMNS])
            split.append([split_row[c] for c in F.SPLIT_COLUMNS])
    F.write_csv_gz(root / F.METADATA_FILE, F.METADATA_COLUMNS, meta)
    F.write_csv_gz(root / F.SPLIT_FILE, F.SPLIT_COLUMNS, split)
    labels = [[s.subject_id, s.study_id, *(F.label_cell(s.report.labels[n]) for n in CHEXPERT_LABELS)]
              for s in studies]
    F.write_csv_gz(root / F.CHEXPERT_FILE, F.LABEL_COLUMNS, labels)
    F.write_csv_gz(root / F.NEGBIO_FILE, F.LABEL_COLUMNS, labels)


def _report_members(studies: list[Study], faults: dict[int, Fault]):
    for s in studies:
        data = damage_report(s.report.text, without_headers(s.report), faults.get(s.index))
        if data is not None:
            yield s.report_path, data


def ms_cxr_category(f: Finding) -> Optional[str]:
    """The MS-CXR category a finding's boxes belong to (None: not one of the eight)."""
    if f.type == "consolidation":
        return {"consolidation": "Consolidation", "pneumonia": "Pneumonia"}.get(f.described_as or "", "Lung Opacity")
    return {"cardiomegaly": "Cardiomegaly", "pleural_effusion": "Pleural Effusion", "pneumothorax": "Pneumothorax",
            "atelectasis": "Atelectasis", "edema": "Edema", "nodule": "Lung Opacity", "mass": "Lung Opacity"}.get(f.type)


def _first_frontal(s: Study) -> Optional[int]:
    return next((i for i, im in enumerate(s.images) if im.frontal), None)


def ms_cxr_rows(studies: list[Study], boxes: ImageBoxes, faults: dict[int, Fault]) -> list[list]:
    """One row per box of each definite finding of the eight categories on the first
    frontal image of each test study without a fault."""
    rows = []
    for s in studies:
        i = _first_frontal(s)
        if s.split != "test" or s.index in faults or i is None:
            continue
        im = s.images[i]
        for k, f in enumerate(s.findings):
            category = ms_cxr_category(f)
            phrase = s.report.phrases.get(k)
            if category is None or phrase is None:
                continue
            for x, y, w, h in boxes[im.dicom_id].get(k, []):
                rows.append([im.dicom_id, category, phrase, s.image_path(i), x, y, w, h, im.width, im.height, "test"])
    return rows


def chexpert_5x200_rows(studies: list[Study], faults: dict[int, Fault], seed: int) -> list[list]:
    """The 5x200 table: per class, up to 200 first-frontal images of test studies whose
    label for that class is 1.0 and for the other 12 observations 0.0 or not mentioned
    (written as 0.0; No Finding is not constrained), sampled with a fixed seed."""
    rng = np.random.default_rng([seed, 5])
    rows = []
    for name in CLASS_RETRIEVAL_CLASSES:
        others = [n for n in CHEXPERT_LABELS if n not in (name, "No Finding")]
        pool = []
        for s in studies:
            i = _first_frontal(s)
            labels = s.report.labels
            if s.split != "test" or s.index in faults or i is None or labels[name] != 1.0:
                continue
            if all(labels[n] in (None, 0.0) for n in others):
                pool.append([s.image_path(i), *(F.label_cell(labels[n] or 0.0) for n in CHEXPERT_LABELS)])
        for j in rng.permutation(len(pool))[:200]:
            rows.append(pool[int(j)])
    return rows


def ground_truth(s: Study, boxes: ImageBoxes) -> dict:
    """The ground_truth.jsonl record of one study."""
    findings = []
    for k, f in enumerate(s.findings):
        record = f.public()
        record["phrase"] = s.report.phrases.get(k)
        record["boxes"] = {im.dicom_id: boxes[im.dicom_id][k] for im in s.images if k in boxes[im.dicom_id]}
        findings.append(record)
    return {
        "study_id": s.study_id, "subject_id": s.subject_id, "split": s.split,
        "images": [{"dicom_id": im.dicom_id, "view": im.view, "width": im.width, "height": im.height}
                   for im in s.images],
        "normal": not any(f.type != "support_device" for f in s.findings),
        "findings": findings,
        "labels": {n: s.report.labels[n] for n in CHEXPERT_LABELS},
    }


def summarise(studies: list[Study], faults: dict[int, Fault], ms_rows: list[list], five: list[list],
              **settings) -> dict:
    """Counts that describe a generated data set."""
    splits = {name: {"patients": len({s.patient_index for s in studies if s.split == name}),
                     "studies": sum(s.split == name for s in studies),
                     "images": sum(len(s.images) for s in studies if s.split == name)} for name in SPLITS}
    findings = Counter(f.type for s in studies for f in s.findings if f.type != "support_device")
    devices = Counter(f.device for s in studies for f in s.findings if f.type == "support_device")
    return {
        **settings,
        "studies": len(studies),
        "patients": len({s.patient_index for s in studies}),
        "images": sum(len(s.images) for s in studies),
        "splits": splits,
        "views": dict(sorted(Counter(im.view for s in studies for im in s.images).items())),
        "normal_studies": sum(not any(f.type != "support_device" for f in s.findings) for s in studies),
        "findings": dict(sorted(findings.items())),
        "devices": dict(sorted(devices.items())),
        "faults": dict(sorted(Counter(f.kind for f in faults.values()).items())),
        "ms_cxr": {"rows": len(ms_rows), "phrases": len({(r[0], r[2]) for r in ms_rows}),
                   "categories": dict(sorted(Counter(r[1] for r in ms_rows).items()))},
        "chexpert_5x200": {name: sum(1 for r in five if r[1 + CHEXPERT_LABELS.index(name)] == "1.0")
                           for name in CLASS_RETRIEVAL_CLASSES},
    }
