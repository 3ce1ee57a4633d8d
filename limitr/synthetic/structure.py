"""The data set's structure: patients, their studies over time, images per study, splits.

:func:`plan_dataset` decides everything except pixels, in one process and in a fixed
order, so the plan (and with it every file) depends only on the arguments. Each study's
random choices come from its own generator seeded by ``(seed, study index)``; each
patient's anatomy from ``(seed, patient index)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from limitr.data.schema import CLASS_RETRIEVAL_CLASSES, SPLITS
from limitr.synthetic.anatomy import Anatomy, sample_anatomy
from limitr.synthetic.findings import Finding, sample_findings
from limitr.synthetic.ids import dicom_id, unique_ints
from limitr.synthetic.reports import Report, write_report

#: Real MIMIC-CXR images are about this size (rows, columns) at image_scale 1.0.
FULL_SIZE = (3056, 2544)

#: Views per study and how often (MIMIC-like: PA + lateral, portable AP alone, a few
#: with two frontals, some without a lateral, a few lateral only).
VIEW_SETS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("PA", "LATERAL"), 0.34), (("PA", "LL"), 0.14), (("AP",), 0.28), (("AP", "LATERAL"), 0.06),
    (("PA", "LATERAL", "PA"), 0.04), (("AP", "AP"), 0.02), (("PA",), 0.09), (("LATERAL",), 0.03),
)
#: normal | single (one 5x200 class) | single_other | multi
STUDY_KINDS: tuple[tuple[str, float], ...] = (("normal", 0.33), ("single", 0.3), ("single_other", 0.07), ("multi", 0.3))
STUDIES_PER_PATIENT = (np.arange(1, 7), np.array([0.5, 0.22, 0.12, 0.07, 0.05, 0.04]))


@dataclass(frozen=True)
class ImagePlan:
    """One image: identity, true view, original size and how it is taken.

    ``angle`` (radians) and ``shift`` (chest units) place the body; ``apex_frac`` is the
    height of the lung apices as a fraction of the image; ``zoom`` scales the body;
    ``exposure`` / ``contrast`` / ``noise`` / ``blur`` set image quality.
    """

    dicom_id: str
    view: str
    width: int
    height: int
    angle: float
    shift: float
    apex_frac: float
    zoom: float
    exposure: float
    contrast: float
    noise: float
    blur: float
    seed: int

    @property
    def frontal(self) -> bool:
        return self.view in ("PA", "AP")


@dataclass(frozen=True)
class Study:
    """One study: who, when, which images, what it shows, and its report."""

    index: int
    subject_id: int
    study_id: int
    patient_index: int
    split: str
    anatomy: Anatomy
    images: tuple[ImagePlan, ...]
    findings: tuple[Finding, ...]
    kind: str
    single_class: Optional[str]
    study_date: int
    study_time: str
    exam: str
    report: Report
    prior_studies: int

    @property
    def folder(self) -> str:
        """``files/pXX/pSSSSSSSS/sTTTTTTTT`` (relative to the MIMIC-CXR-JPG root)."""
        s = f"{self.subject_id:08d}"
        return f"files/p{s[:2]}/p{s}/s{self.study_id:08d}"

    def image_path(self, i: int) -> str:
        return f"{self.folder}/{self.images[i].dicom_id}.jpg"

    @property
    def report_path(self) -> str:
        s = f"{self.subject_id:08d}"
        return f"files/p{s[:2]}/p{s}/s{self.study_id:08d}.txt"


def _image(rng: np.random.Generator, view: str, scale: float) -> ImagePlan:
    ap = view == "AP"
    rows, cols = FULL_SIZE[0] * rng.uniform(0.9, 1.02), FULL_SIZE[1] * rng.uniform(0.88, 1.05)
    if ap and rng.random() < 0.3:  # portable films are often landscape
        rows, cols = cols, rows
    return ImagePlan(
        dicom_id=dicom_id(rng), view=view,
        width=max(int(round(cols * scale)), 32), height=max(int(round(rows * scale)), 32),
        angle=float(rng.normal(0.0, 0.035 if ap else 0.015)),
        shift=float(rng.normal(0.0, 0.02 if ap else 0.01)),
        apex_frac=float(rng.uniform(0.05, 0.13) if ap else rng.uniform(0.055, 0.095)),
        zoom=float(rng.uniform(0.96, 1.04) * (1.05 if ap else 1.0)),
        exposure=float(rng.uniform(0.85, 1.15)),
        contrast=float(rng.uniform(0.75, 0.9) if ap else rng.uniform(0.9, 1.05)),
        noise=float(rng.uniform(0.025, 0.04) if ap else rng.uniform(0.01, 0.02)),
        blur=float(rng.uniform(0.6, 1.0) if ap else rng.uniform(0.3, 0.6)),
        seed=int(rng.integers(0, 2**31 - 1)),
    )


def _exam(views: tuple[str, ...]) -> str:
    if "AP" in views and not any(v in ("LATERAL", "LL") for v in views):
        return "CHEST (PORTABLE AP)"
    return "CHEST (PA AND LAT)"


def _splits(rng: np.random.Generator, counts: list[int], n_studies: int) -> list[str]:
    """Split patients so test and validate each get at least 10% of the studies."""
    order = rng.permutation(len(counts))
    split = ["train"] * len(counts)
    target = max(int(np.ceil(0.1 * n_studies)), 1)
    filled = {"test": 0, "validate": 0}
    for p in order:
        for name in ("test", "validate"):
            if filled[name] < target:
                split[p] = name
                filled[name] += counts[p]
                break
    if n_studies >= 3 and "train" not in split:  # a tiny set still needs training studies
        split[order[-1]] = "train"
    return split


def plan_dataset(n_studies: int, seed: int, image_scale: float = 0.125) -> list[Study]:
    """Every study of a data set of ``n_studies``, sorted by (subject_id, study_id)."""
    rng = np.random.default_rng([seed, 0])
    counts: list[int] = []
    while sum(counts) < n_studies:
        counts.append(int(rng.choice(STUDIES_PER_PATIENT[0], p=STUDIES_PER_PATIENT[1])))
    counts[-1] -= sum(counts) - n_studies
    subject_ids = sorted(unique_ints(rng, len(counts), 10_000_000, 20_000_000))
    study_ids = unique_ints(rng, n_studies, 50_000_000, 60_000_000)
    split_of = _splits(rng, counts, n_studies)

    # pass 1: per study, views, image set-up and kind; the generator carries on in pass 3
    gens, rows = [], []
    for p, count in enumerate(counts):
        first = int(rng.integers(0, 85 * 365))
        day = first
        for j in range(count):
            k = len(rows)
            g = np.random.default_rng([seed, 2, k])
            views = VIEW_SETS[int(g.choice(len(VIEW_SETS), p=[w for _, w in VIEW_SETS]))][0]
            images = tuple(_image(g, v, image_scale) for v in views)
            kind = STUDY_KINDS[int(g.choice(len(STUDY_KINDS), p=[w for _, w in STUDY_KINDS]))][0]
            gens.append(g)
            rows.append(dict(patient=p, prior=j, day=day, views=views, images=images, kind=kind))
            day += int(g.integers(1, 400))

    # pass 2: a tiny split still gets a few single-finding studies (so that the 5x200
    # table is not empty), then the five 5x200 classes in turn over each split's ones
    for name in SPLITS:
        members = [r for r in rows if split_of[r["patient"]] == name]
        need = min(5, len(members) // 2) - sum(r["kind"] == "single" for r in members)
        for r in sorted(members, key=lambda r: r["kind"] == "normal"):  # stable: keeps study order
            if need <= 0:
                break
            if r["kind"] != "single" and any(v in ("PA", "AP") for v in r["views"]):
                r["kind"] = "single"
                need -= 1
    cycle = {s: 0 for s in SPLITS}
    class_rng = np.random.default_rng([seed, 3])
    order = {s: [CLASS_RETRIEVAL_CLASSES[i] for i in class_rng.permutation(5)] for s in SPLITS}
    for row in rows:
        row["single_class"] = None
        if row["kind"] == "single":
            split = split_of[row["patient"]]
            row["single_class"] = order[split][cycle[split] % 5]
            cycle[split] += 1

    # pass 3: findings and reports
    anatomies = [sample_anatomy(np.random.default_rng([seed, 1, p])) for p in range(len(counts))]
    studies = []
    for k, (g, row) in enumerate(zip(gens, rows)):
        p = row["patient"]
        views = row["views"]
        frontal = next((v for v in views if v in ("PA", "AP")), None)
        has_lateral = any(v in ("LATERAL", "LL") for v in views)
        findings = sample_findings(g, row["kind"], frontal_view=frontal, has_lateral=has_lateral,
                                   single_class=row["single_class"])
        exam = _exam(views)
        report = write_report(findings, g, exam=exam, views=views, sex=anatomies[p].sex,
                              has_prior=row["prior"] > 0)
        date = _date(row["day"])
        seconds = int(g.integers(0, 86400))
        time = f"{seconds // 3600:02d}{seconds % 3600 // 60:02d}{seconds % 60:02d}.{int(g.integers(0, 1000)):03d}"
        studies.append(Study(
            index=k, subject_id=subject_ids[p], study_id=study_ids[k], patient_index=p,
            split=split_of[p], anatomy=anatomies[p], images=row["images"], findings=tuple(findings),
            kind=row["kind"], single_class=row["single_class"], study_date=date,
            study_time=str(float(time)), exam=exam, report=report, prior_studies=row["prior"],
        ))
    return studies


def _date(day: int) -> int:
    """A shifted YYYYMMDD date, ``day`` days after 2110-01-01 (MIMIC shifts into 2100-2200)."""
    import datetime

    d = datetime.date(2110, 1, 1) + datetime.timedelta(days=day)
    return d.year * 10000 + d.month * 100 + d.day
