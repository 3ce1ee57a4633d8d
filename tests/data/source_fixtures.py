"""Small IU X-ray (Kaggle and Open-i layouts) and CSV-manifest roots written in the real file
formats (CSV, XML in a folder or a tgz, PNG / JPG by PIL), with hostile rows among good ones.
Nothing here comes from the real collection: the reports are made up."""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

FINDINGS = {
    "normal": "The heart is normal in size. The lungs are clear. No XXXX of pleural effusion.",
    "cardiomegaly": "The heart is enlarged. XXXX XXXX sternotomy. Lungs are clear.",
    "effusion": "Small left pleural effusion. Heart size normal.",
    "atelectasis": "Streaky opacity at the left base consistent with atelectasis.",
    "edema": "Diffuse interstitial edema. Enlarged heart.",
}
MESH = {
    "normal": "normal",
    "cardiomegaly": "Cardiomegaly/mild",
    "effusion": "Pleural Effusion/left/small",
    "atelectasis": "Pulmonary Atelectasis/lung/base/left",
    "edema": "Pulmonary Edema/diffuse;Cardiomegaly",
}
KINDS = list(FINDINGS)


def write_image(path: Path, seed: int, size: tuple[int, int] = (40, 48)) -> None:
    """A grey image in the format the suffix names (PNG or JPEG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def make_iu_kaggle(root: Path, n_good: int = 30, jpg_every: int = 4) -> dict:
    """A Kaggle-layout root: ``n_good`` uids 1..n with a frontal (and a lateral on most), and
    hostile rows after them. Returns what a reader should find."""
    images = root / "images" / "images_normalized"
    images.mkdir(parents=True, exist_ok=True)
    reports, projections = [], []
    for uid in range(1, n_good + 1):
        kind = KINDS[uid % len(KINDS)]
        reports.append([uid, MESH[kind], MESH[kind].split("/")[0], "Xray Chest PA and Lateral",
                        "XXXX-year-old with cough", "None.", FINDINGS[kind], "No acute disease."])
        frontal = f"{uid}_IM-{uid:04d}-1001.dcm.png"
        projections.append([uid, frontal, "Frontal"])
        # every jpg_every-th study: only a .jpg copy exists (a downsized collection)
        write_image(images / (frontal.replace(".png", ".jpg") if uid % jpg_every == 0 else frontal), uid)
        if uid % 3:
            lateral = f"{uid}_IM-{uid:04d}-2001.dcm.png"
            projections.append([uid, lateral, "Lateral"])
            write_image(images / lateral, 1000 + uid)
    n = n_good
    # hostile rows
    reports.append([n + 1, "normal", "normal", "", "", "", "", ""])            # empty report
    projections.append([n + 1, f"{n + 1}_IM-1-1001.dcm.png", "Frontal"])
    write_image(images / f"{n + 1}_IM-1-1001.dcm.png", n + 1)
    reports.append([n + 2, "normal", "normal", "", "", "", "Clear lungs.", ""])  # image missing
    projections.append([n + 2, f"{n + 2}_IM-1-1001.dcm.png", "Frontal"])
    reports.append([n + 3, "normal", "normal", "", "", "", "Clear lungs.", ""])  # unknown projection
    projections.append([n + 3, f"{n + 3}_IM-1-1001.dcm.png", "Oblique"])
    write_image(images / f"{n + 3}_IM-1-1001.dcm.png", n + 3)
    reports.append([n + 4, "normal", "normal", "", "", "", "Clear lungs.", ""])  # report without image
    projections.append([n + 5, f"{n + 5}_IM-1-1001.dcm.png", "Frontal"])        # image without report
    write_image(images / f"{n + 5}_IM-1-1001.dcm.png", n + 5)
    projections.append([n + 1, "../../../etc/passwd", "Frontal"])               # path escape
    projections.append(["abc", "x.png", "Frontal"])                              # bad uid
    reports.append([n + 6, "No Indexing", "No Indexing", "", "", "", "XXXX XXXX.", ""])  # only placeholders
    projections.append([n + 6, f"{n + 6}_IM-1-1001.dcm.png", "Frontal"])
    write_image(images / f"{n + 6}_IM-1-1001.dcm.png", n + 6)
    reports.append([n + 7, "normal", "normal", "", "", "", "Clear lungs.", ""])  # lateral only
    projections.append([n + 7, f"{n + 7}_IM-1-2001.dcm.png", "Lateral"])
    write_image(images / f"{n + 7}_IM-1-2001.dcm.png", n + 7)
    reports.append([n + 8, "normal", "normal", "", "", "", "Clear lungs.", ""])  # corrupt image file
    projections.append([n + 8, f"{n + 8}_IM-1-1001.dcm.png", "Frontal"])
    (images / f"{n + 8}_IM-1-1001.dcm.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    reports.append([1, "normal", "normal", "", "", "", "A repeated uid.", ""])   # duplicate uid
    _csv(root / "indiana_reports.csv",
         ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"], reports)
    _csv(root / "indiana_projections.csv", ["uid", "filename", "projection"], projections)
    return {
        "good": n_good,
        "skipped": {"report_empty": [n + 1, n + 6], "frontal_image_missing": [n + 2],
                    "no_frontal_view_unknown": [n + 3], "no_images": [n + 4], "lateral_only": [n + 7],
                    "frontal_image_corrupt": [n + 8]},
        "rows_dropped": {"uid_not_in_reports": 1, "bad_filename": 1, "bad_uid": 1},
    }


def _xml(uid: int, findings: str, impression: str, mesh: list[str], images: list[str]) -> bytes:
    parts = [f'<?xml version="1.0" encoding="utf-8"?>\n<eCitation>\n<meta type="rr"/>\n<uId id="CXR{uid}"/>',
             '<MedlineCitation Owner="Indiana University" Status="supplied"><Article PubModel="Electronic">',
             "<Abstract>", '<AbstractText Label="COMPARISON">None.</AbstractText>',
             '<AbstractText Label="INDICATION">XXXX-year-old with cough.</AbstractText>',
             f'<AbstractText Label="FINDINGS">{findings}</AbstractText>',
             f'<AbstractText Label="IMPRESSION">{impression}</AbstractText>',
             "</Abstract></Article></MedlineCitation>", "<MeSH>"]
    parts += [f"<major>{m}</major>" for m in mesh]
    parts.append("</MeSH>")
    for name in images:
        parts.append(f'<parentImage id="{name}"><figureId>F1</figureId><caption>Xray</caption></parentImage>')
    parts.append("</eCitation>\n")
    return "\n".join(parts).encode()


def make_iu_openi(root: Path, n_good: int = 20, as_tgz: bool = True, with_projections: bool = False) -> dict:
    """An Open-i root: reports as ``NLMCXR_reports.tgz`` (or the extracted folder) and the
    PNGs in ``NLMCXR_png/``; the frontal is the image first by name except where the
    projections table (written when ``with_projections``) says otherwise."""
    images = root / "NLMCXR_png"
    images.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    projections = []
    for uid in range(1, n_good + 1):
        kind = KINDS[uid % len(KINDS)]
        names = [f"CXR{uid}_IM-{uid:04d}-1001", f"CXR{uid}_IM-{uid:04d}-2001"]
        for k, name in enumerate(names):
            write_image(images / f"{name}.png", 10 * uid + k)
        # uid 2: the frontal is the second by name (the Kaggle table knows, the rule does not)
        frontal = 1 if uid == 2 else 0
        for k, name in enumerate(names):
            projections.append([uid, f"{name.removeprefix('CXR')}.dcm.png", "Frontal" if k == frontal else "Lateral"])
        files[f"ecgen-radiology/{uid}.xml"] = _xml(uid, FINDINGS[kind], "No acute disease.", [MESH[kind]], names)
    n = n_good
    files[f"ecgen-radiology/{n + 1}.xml"] = _xml(n + 1, "", "", ["normal"], [f"CXR{n + 1}_IM-1-1001"])  # empty
    write_image(images / f"CXR{n + 1}_IM-1-1001.png", n + 1)
    files[f"ecgen-radiology/{n + 2}.xml"] = b"<eCitation><unclosed>"                            # broken XML
    files[f"ecgen-radiology/{n + 3}.xml"] = _xml(n + 3, "Clear.", "", ["normal"], [f"CXR{n + 3}_IM-1-1001"])  # missing image
    files[f"ecgen-radiology/{n + 4}.xml"] = _xml(n + 4, "Clear.", "", ["normal"], ["../../evil"])   # bad id
    files["ecgen-radiology/notanumber.xml"] = _xml(0, "Clear.", "", ["normal"], [])                # uid from uId
    if as_tgz:
        with tarfile.open(root / "NLMCXR_reports.tgz", "w:gz") as tar:
            for name, data in sorted(files.items()):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
    if with_projections:
        _csv(root / "indiana_projections.csv", ["uid", "filename", "projection"], projections)
    return {"good": n_good, "skipped": {"report_empty": [n + 1], "report_unreadable": [n + 2],
                                        "frontal_image_missing": [n + 3], "bad_filename": [n + 4],
                                        "no_images": [0]}}


def make_manifest(root: Path, n_good: int = 24, with_split: bool = True, columns: dict | None = None) -> dict:
    """A manifest ``root/manifest.csv`` over ``root/imgs``; column names renamed by ``columns``
    (role -> name, as ``preprocess.manifest_columns``)."""
    names = {"study": "study_id", "patient": "patient_id", "path": "path", "view": "view",
             "text": "report", "split": "split", **(columns or {})}
    header = [names["study"], names["patient"], names["path"], names["view"], names["text"]]
    if with_split:
        header.append(names["split"])
    header += ["Cardiomegaly", "Pleural Effusion", "Atelectasis", "Edema", "Consolidation", "No Finding"]
    rows = []
    classes = ["Cardiomegaly", "Pleural Effusion", "Atelectasis", "Edema", "Consolidation"]
    for i in range(n_good):
        study, patient = 500 + i, 100 + i % 12  # two studies a patient, one split
        split = ["train", "train", "validate", "test"][i % 4]
        cls = classes[i % 5]
        labels = ["1" if c == cls else "0" for c in classes] + ["0"]
        text = f"Findings consistent with {cls.lower()}."
        for view, suffix in (("PA", "f"), ("LATERAL", "l")):
            rel = f"imgs/{study}_{suffix}.{'jpg' if i % 2 else 'png'}"
            write_image(root / rel, 7 * study + len(suffix) + (view == "PA"))
            row = [study, patient, rel, view, text] + ([split] if with_split else []) + labels
            rows.append(row)
    extra = [
        [900, 90, "../outside.png", "PA", "Escape.", "test"],        # path outside the root
        [901, 91, "/etc/passwd", "PA", "Absolute.", "test"],         # absolute path
        ["s-902", 92, "imgs/500_f.png", "PA", "Bad id.", "test"],     # study id not a number
        [903, 93, "imgs/missing.png", "PA", "Missing image.", "test"],
        [904, 94, "imgs/500_f.png", "OBLIQUE", "Odd view.", "test"],
        [905, 95, "imgs/500_f.png", "PA", "   ", "test"],             # empty report
        [906, 96, "imgs/500_f.png", "PA", "Unknown split.", "later"],
    ]
    for row in extra:
        if not with_split:
            row = row[:5]
        rows.append(row + [""] * 6)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    _csv(root / "manifest.csv", header, rows)
    skipped = {"bad_path": [900, 901], "frontal_image_missing": [903], "no_frontal_view_unknown": [904],
               "report_empty": [905]}
    if with_split:
        skipped["split_unknown"] = [906]
    return {"good": n_good + (0 if with_split else 1), "skipped": skipped,
            "rows_dropped": {"bad_path": 2, "bad_study_id": 1}}
