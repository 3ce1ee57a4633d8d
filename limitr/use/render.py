"""Pictures of results: a grounding map figure, a contact sheet of hits, a self-contained page.

Every heatmap is drawn on one fixed colour scale per map kind (:data:`COLOUR_RANGE`), so
maps of different images and queries compare by colour; pixels the model's crop did not
see are left uncoloured.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from limitr.files import write_atomic

#: The colour scale of each map kind: attention as a multiple of uniform attention (1 = the
#: phrase attends to every region alike) on a log scale from half to twice uniform; cosine
#: linear. Values beyond a range take its end colour.
COLOUR_RANGE: dict[str, tuple[float, float]] = {"attention": (0.5, 2.0), "cosine": (-0.3, 0.3)}
COLOUR_LABEL: dict[str, str] = {"attention": "attention (x uniform, log scale)", "cosine": "region-phrase cosine"}
COLOUR_TICKS: dict[str, list[float]] = {"attention": [0.5, 0.7, 1.0, 1.4, 2.0], "cosine": [-0.3, -0.15, 0.0, 0.15, 0.3]}
CMAP = "jet"
ALPHA = 0.45


@dataclass
class Panel:
    """One image with its map: image (h, w) uint8, values (h, w) float (NaN = not seen)."""

    image: np.ndarray
    values: Optional[np.ndarray]
    title: str
    caption: str = ""
    boxes: Sequence[tuple[str, Sequence[float]]] = ()  # (label, [x, y, w, h]) in the image's pixels


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colour_norm(kind: str):
    """The fixed colour normalisation of a map kind."""
    from matplotlib.colors import LogNorm, Normalize

    lo, hi = COLOUR_RANGE[kind]
    return LogNorm(lo, hi, clip=True) if kind == "attention" else Normalize(lo, hi, clip=True)


def _colourbar(fig, mappable, kind: str, **where):
    bar = fig.colorbar(mappable, **where)
    bar.set_ticks(COLOUR_TICKS[kind])
    bar.set_ticklabels([f"{t:g}" for t in COLOUR_TICKS[kind]])
    bar.minorticks_off()
    bar.set_label(COLOUR_LABEL[kind], fontsize=8)
    return bar


def _draw(ax, panel: Panel, kind: str):
    from matplotlib.patches import Rectangle

    h, w = panel.image.shape
    extent = (0, w, h, 0)
    ax.imshow(panel.image, cmap="gray", extent=extent, interpolation="bilinear", vmin=0, vmax=255)
    mappable = None
    if panel.values is not None:
        mappable = ax.imshow(np.ma.masked_invalid(panel.values), cmap=CMAP, alpha=ALPHA, extent=extent,
                             interpolation="nearest", norm=colour_norm(kind))
    for label, (x, y, bw, bh) in panel.boxes:
        ax.add_patch(Rectangle((x, y), bw, bh, fill=False, edgecolor="lime", linewidth=2))
        ax.text(x, y - 2, label, color="lime", fontsize=9, fontweight="bold", va="bottom")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    return mappable


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_atomic(path, buf.getvalue())


def figure_png(panel: Panel, kind: str, path: Optional[Path] = None, size: float = 5.0, dpi: int = 100) -> bytes:
    """One panel with a colourbar and the title above: PNG bytes (also written to ``path``)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(size * 1.18, size), dpi=dpi)
    mappable = _draw(ax, panel, kind)
    if mappable is not None:
        _colourbar(fig, mappable, kind, ax=ax, fraction=0.046, pad=0.03)
    ax.set_title(panel.title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        write_atomic(path, data)
    return data


def contact_sheet(panels: Sequence[Panel], kind: str, title: str, path: Path, columns: int = 5) -> None:
    """Hits in a grid, each titled and captioned, one shared colourbar."""
    plt = _plt()
    n = max(1, len(panels))
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols + 0.8, 3.6 * rows + 0.6), dpi=100, squeeze=False)
    mappable = None
    for ax, panel in zip(axes.flat, panels):
        mappable = _draw(ax, panel, kind) or mappable
        ax.set_title(panel.title, fontsize=9)
        if panel.caption:
            ax.set_xlabel(_wrap(panel.caption, 42, 3), fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if mappable is not None:
        _colourbar(fig, mappable, kind, ax=axes.ravel().tolist(), fraction=0.02, pad=0.02)
    fig.suptitle(title, fontsize=11)
    _save(fig, path)
    plt.close(fig)


def _wrap(text: str, width: int, lines: int) -> str:
    import textwrap

    parts = textwrap.wrap(text, width)
    if len(parts) > lines:
        parts = parts[:lines]
        parts[-1] = parts[-1][: width - 3] + "..."
    return "\n".join(parts)


def excerpt(text: str, query: str = "", width: int = 220) -> str:
    """The part of a report around the query's first word found in it, at most ``width`` chars."""
    text = " ".join(str(text).split())
    if len(text) <= width:
        return text
    lower = text.lower()
    start = 0
    for word in [w for w in query.lower().split() if len(w) > 3]:
        at = lower.find(word)
        if at >= 0:
            start = max(0, at - width // 3)
            break
    piece = text[start : start + width]
    return ("..." if start else "") + piece + ("..." if start + width < len(text) else "")


def html_page(title: str, rows: Sequence[dict], path: Optional[Path] = None) -> str:
    """A self-contained HTML page (images inlined as base64 PNG): one card per hit.

    rows: dicts with ``png`` (bytes), ``heading``, ``scores`` (text) and ``text`` (the excerpt).
    """
    cards = []
    for row in rows:
        image = ""
        if row.get("png"):
            data = base64.b64encode(row["png"]).decode("ascii")
            image = f'<img alt="{html.escape(row["heading"])}" src="data:image/png;base64,{data}">'
        cards.append(
            f'<div class="hit">{image}<h3>{html.escape(row["heading"])}</h3><p class="scores">{html.escape(row["scores"])}</p>'
            f'<p class="report">{html.escape(row["text"])}</p></div>'
        )
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:1.5em}.hits{display:flex;flex-wrap:wrap;gap:1em}"
        ".hit{width:320px;border:1px solid #ccc;padding:.5em}.hit img{width:100%}"
        ".scores{color:#555;font-size:.85em}.report{font-size:.9em}"
        f"</style></head><body><h1>{html.escape(title)}</h1><div class=\"hits\">{''.join(cards)}</div></body></html>\n"
    )
    if path is not None:
        write_atomic(path, page)
    return page
