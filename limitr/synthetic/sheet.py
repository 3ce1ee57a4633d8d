"""An example sheet: a few studies with their frontal and lateral images side by side,
the ground-truth boxes drawn, and the report beside them. Reads a generated data set
from disk, exactly as a user would see it."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from limitr.synthetic import formats as F
from limitr.errors import LimitrError

#: Box colours per finding type.
COLOURS = {
    "cardiomegaly": "#ff595e", "pleural_effusion": "#1982c4", "pneumothorax": "#ffca3a",
    "consolidation": "#8ac926", "atelectasis": "#ff924c", "edema": "#c77dff", "nodule": "#00f5d4",
    "mass": "#00bbf9", "support_device": "#bbbbbb",
}


def _label(f: dict) -> str:
    words = [f.get("side"), f.get("zone"), f.get("size") or f.get("grade")]
    if f.get("size_mm"):
        words.append(f"{f['size_mm']} mm")
    name = f["device"] if f["type"] == "support_device" else f["type"]
    return " ".join([str(name).replace("_", " ")] + [str(w) for w in words if w])


def _pick(records: list[dict], n: int, seed: int) -> list[dict]:
    """Studies with both views and findings, chosen to show many finding types; one
    normal study when there is room."""
    rng = np.random.default_rng(seed)
    both = [r for r in records if {"PA", "AP"} & {i["view"] for i in r["images"]}
            and {"LATERAL", "LL"} & {i["view"] for i in r["images"]}]
    abnormal = [r for r in both if not r["normal"]]
    normal = [r for r in both if r["normal"]]
    order = [abnormal[i] for i in rng.permutation(len(abnormal))]
    chosen: list[dict] = []
    seen: set[str] = set()
    want = n - 1 if n >= 4 and normal else n
    while order and len(chosen) < want:
        best = max(order, key=lambda r: len({f["type"] for f in r["findings"]} - seen))
        order.remove(best)
        chosen.append(best)
        seen |= {f["type"] for f in best["findings"]}
    if len(chosen) < n and normal:
        chosen.append(normal[int(rng.integers(len(normal)))])
    return chosen


def _report_text(zf: Optional[zipfile.ZipFile], record: dict) -> str:
    s = f"{record['subject_id']:08d}"
    name = f"files/p{s[:2]}/p{s}/s{record['study_id']:08d}.txt"
    if zf is None or name not in zf.namelist():
        return "(no report)"
    text = zf.read(name).decode("utf-8", errors="replace")
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith((" FINDINGS:", " IMPRESSION:"))), 0)
    return "\n".join(lines[start:]).rstrip()


def render_sheet(root: Path, out_png: Path, n: int = 4, seed: int = 0) -> Path:
    """Draw ``n`` studies of the generated data set at ``root`` to ``out_png``.

    Each row: the frontal and the lateral image with every ground-truth box labelled,
    then the FINDINGS and IMPRESSION of the report. Returns ``out_png``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    root, out_png = Path(root), Path(out_png)
    truth = root / "ground_truth.jsonl"
    if not truth.is_file():
        raise LimitrError(f"{root} holds no ground_truth.jsonl: give the folder `limitr synthesize` wrote")
    records = [json.loads(line) for line in truth.read_text(encoding="utf-8").splitlines() if line.strip()]
    faulted: set[int] = set()
    if (root / "faults.json").is_file():
        faulted = {f["study_id"] for f in json.loads((root / "faults.json").read_text(encoding="utf-8"))}
    chosen = _pick([r for r in records if r["study_id"] not in faulted], n, seed)
    if not chosen:
        raise LimitrError(f"{root} has no study with both a frontal and a lateral image to show")

    zf = zipfile.ZipFile(root / F.REPORTS_ZIP) if (root / F.REPORTS_ZIP).is_file() else None
    fig = Figure(figsize=(17, 5.2 * len(chosen)), dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(chosen), 3, width_ratios=[1.0, 1.0, 1.35], wspace=0.04, hspace=0.12)
    for row, record in enumerate(chosen):
        s = f"{record['subject_id']:08d}"
        views = [next(i for i in record["images"] if i["view"] in ("PA", "AP")),
                 next(i for i in record["images"] if i["view"] in ("LATERAL", "LL"))]
        for col, image in enumerate(views):
            ax = fig.add_subplot(grid[row, col])
            path = root / "mimic-cxr-jpg" / f"files/p{s[:2]}/p{s}/s{record['study_id']:08d}/{image['dicom_id']}.jpg"
            pixels = np.asarray(Image.open(path).convert("L"))
            ax.imshow(pixels, cmap="gray", vmin=0, vmax=255)
            ax.set_axis_off()
            ax.set_title(f"{image['view']}  {image['width']}x{image['height']}", fontsize=9)
            for f in record["findings"]:
                colour = COLOURS.get(f["type"], "white")
                for x, y, w, h in f["boxes"].get(image["dicom_id"], []):
                    ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=colour, linewidth=1.4))
                    ax.text(x + 2, y - 3, _label(f), color=colour, fontsize=7, va="bottom",
                            bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "edgecolor": "none"})
        ax = fig.add_subplot(grid[row, 2])
        ax.set_axis_off()
        header = f"study {record['study_id']}  subject {record['subject_id']}  ({record['split']})"
        ax.text(0.0, 1.0, header + "\n\n" + _report_text(zf, record), family="monospace", fontsize=7.6,
                va="top", ha="left", transform=ax.transAxes)
    if zf is not None:
        zf.close()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, bbox_inches="tight", facecolor="white")
    return out_png
