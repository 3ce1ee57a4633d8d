"""Plot files of the evaluate stage: curve series as TSV, grounding overlays as PNG."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from limitr.files import write_atomic


def write_series_tsv(path: Path, series: Mapping[str, Sequence[float]], x: str = "k") -> None:
    """A TSV with column ``x`` then one column per other series, cut to the shortest series;
    written under a temporary name and renamed."""
    names = [x] + [name for name in series if name != x]
    length = min(len(series[name]) for name in names)
    lines = ["\t".join(names)]
    for i in range(length):
        cells = []
        for name in names:
            value = series[name][i]
            cells.append(str(int(value)) if name == x else f"{float(value):.4f}")
        lines.append("\t".join(cells))
    write_atomic(path, "\n".join(lines) + "\n")


def slug(name: str) -> str:
    """A file-name-safe form of a category name: 'Pleural Effusion' -> 'pleural_effusion'."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "unnamed"


def _unpadded_image(png: bytes, geometry) -> np.ndarray:
    """The processed (resized, padded) image with its padding removed: (h, w) uint8."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        pixels = np.asarray(img.convert("L"))
    height = max(1, int(round(geometry.orig_height * geometry.scale)))
    width = max(1, int(round(geometry.orig_width * geometry.scale)))
    return pixels[geometry.pad_top : geometry.pad_top + height, geometry.pad_left : geometry.pad_left + width]


def draw_grounding_example(path: Path, category: str, example) -> None:
    """Write :func:`grounding_figure` as a PNG."""
    import matplotlib.pyplot as plt

    fig = grounding_figure(category, example)
    _save(fig, path)
    plt.close(fig)


def grounding_figure(category: str, example):
    """The figure of one phrase: the image with each grounding map over it (original pixel axes),
    the phrase as the title and the category under it.

    Every map is min-max normalised over the pixels the crop saw, the scale on which the IoU
    thresholds are applied, and all panels share that one colour scale, shown by one
    colourbar; pixels the crop did not see are left uncoloured. The ground-truth boxes are
    drawn in every panel and labelled.

    example: a :class:`limitr.eval.results.GroundingExample`.
    """
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from limitr.eval.grounding import normalise

    geometry = example.geometry
    image = _unpadded_image(example.image, geometry)
    extent = (0, geometry.orig_width, geometry.orig_height, 0)
    maps = example.maps
    fig, axes = plt.subplots(1, len(maps), figsize=(4 * len(maps) + 0.8, 5.0), dpi=100, squeeze=False)
    shown = None
    for ax, (kind, values) in zip(axes[0], maps.items()):
        ax.imshow(image, cmap="gray", extent=extent, interpolation="bilinear")
        values = np.asarray(values, dtype=np.float64)
        scaled = normalise(values) if np.isfinite(values).any() else values
        shown = ax.imshow(np.ma.masked_invalid(scaled), cmap="jet",
                          vmin=0.0, vmax=1.0, alpha=0.45, extent=extent, interpolation="nearest")
        for j, (x, y, w, h) in enumerate(example.boxes):
            ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="lime", linewidth=2))
            label = "ground truth" if len(example.boxes) == 1 else f"ground truth {j + 1}"
            ax.text(x, y, label, color="black", fontsize=8, va="bottom", ha="left",
                    bbox={"facecolor": "lime", "edgecolor": "none", "pad": 1.5})
        ax.set_title(kind, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    text = str(example.text)
    fig.suptitle("\n".join(textwrap.wrap(f"\u201c{text}\u201d", 80)[:3]) + f"\n({category})", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    cax = fig.add_axes((0.93, 0.15, 0.015, 0.65))
    bar = fig.colorbar(shown, cax=cax)
    bar.set_label("map, min-max normalised (the IoU thresholds' scale)", fontsize=8)
    return fig


def draw_message(path: Path, message: str) -> None:
    """A small PNG that carries a message (e.g. why the grounding figures are absent), so a
    declared plot folder is never empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(5, 1.2), dpi=100)
    fig.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=9)
    _save(fig, path)
    plt.close(fig)


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_atomic(path, buf.getvalue())
