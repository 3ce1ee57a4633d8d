"""Draws docs/limitr.png, the README's picture of the method and the pipeline:
`python docs/diagram.py` (matplotlib only)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

BLUE, GREEN, ORANGE, GREY = "#dbe9f6", "#dff2e0", "#fde9d3", "#eeeeee"


def box(ax, x, y, w, h, text, colour, size=9, bold=False):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=colour, edgecolor="#555555", linewidth=1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size,
            fontweight="bold" if bold else "normal", wrap=True)


def arrow(ax, a, b, text=None):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, color="#444444", linewidth=1.2))
    if text:
        ax.text((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + 0.12, text, ha="center", va="bottom", fontsize=7.5,
                color="#333333")


def main(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(11, 6.2), dpi=110)
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 6.2)
    ax.axis("off")
    ax.text(0.1, 5.95, "The model: one study (frontal, optional lateral) and its report", fontsize=11, fontweight="bold")
    box(ax, 0.1, 4.55, 1.7, 0.8, "frontal X-ray", GREY)
    box(ax, 0.1, 3.55, 1.7, 0.8, "lateral X-ray\n(optional)", GREY)
    box(ax, 0.1, 2.2, 1.7, 0.9, "report\nFINDINGS +\nIMPRESSION", GREY)
    box(ax, 2.3, 4.55, 1.9, 0.8, "ResNet (frontal)", BLUE)
    box(ax, 2.3, 3.55, 1.9, 0.8, "ResNet (lateral)", BLUE)
    box(ax, 2.3, 2.2, 1.9, 0.9, "BERT-family\ntext encoder", BLUE)
    box(ax, 4.7, 4.05, 2.0, 1.3, "regions r_1..r_M\n(both views)\n+ global image vector", GREEN)
    box(ax, 4.7, 2.2, 2.0, 0.9, "words w_1..w_N\n+ global text vector", GREEN)
    box(ax, 7.3, 3.75, 2.0, 1.6, "local alignment\nword <-> region\nattention, SAF pooling\n-> local score", ORANGE)
    box(ax, 7.3, 2.2, 2.0, 0.9, "global alignment\ncosine -> global score", ORANGE)
    box(ax, 9.65, 2.9, 1.25, 1.3, "one\nsimilarity\n(mean of\nthe two)", ORANGE, bold=True)
    for y in (4.95, 3.95):
        arrow(ax, (1.8, y), (2.3, y))
        arrow(ax, (4.2, y), (4.7, y + (0 if y > 4.5 else 0.4)))
    arrow(ax, (1.8, 2.65), (2.3, 2.65))
    arrow(ax, (4.2, 2.65), (4.7, 2.65))
    arrow(ax, (6.7, 4.7), (7.3, 4.6))
    arrow(ax, (6.7, 2.9), (7.3, 3.9))
    arrow(ax, (6.7, 4.2), (7.3, 2.9))
    arrow(ax, (6.7, 2.55), (7.3, 2.55))
    arrow(ax, (9.3, 4.4), (9.65, 3.9))
    arrow(ax, (9.3, 2.65), (9.65, 3.1))
    ax.text(7.3, 5.5, "also gives the grounding map of a phrase", fontsize=8, style="italic", color="#7a4a00")

    ax.text(0.1, 1.55, "The pipeline (`make run` = `dvc repro`): each stage a command, each output a folder",
            fontsize=11, fontweight="bold")
    stages = [("synthesize\nor MIMIC-CXR", GREY), ("preprocess\nParquet shards", BLUE), ("tokenize", BLUE),
              ("train\ncheckpoint", ORANGE), ("embed\ntest split", GREEN),
              ("evaluate\nmetrics/*.json,\nplots", GREEN)]
    x = 0.1
    for i, (name, colour) in enumerate(stages):
        box(ax, x, 0.2, 1.55, 1.0, name, colour, size=8.5)
        if i:
            arrow(ax, (x - 0.3, 0.7), (x, 0.7))
        x += 1.85
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main(Path(__file__).with_name("limitr.png"))
