"""A model and a gallery together: what ``limitr search`` and ``limitr explore`` run.

::

    from limitr.use import Explorer, load, load_gallery

    model = load("data/model")
    gallery = load_gallery("data/embeddings", "test", shards="data/shards",
                           fingerprint=model.fingerprint, crop_size=model.crop_size)
    explorer = Explorer(model, gallery)
    [result] = explorer.find_images(["right upper lobe consolidation"], k=10)
    panels = explorer.hit_panels(result)        # each hit's image with the phrase's heatmap
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from limitr.errors import LimitrError
from limitr.eval.scoring import take
from limitr.use.gallery import Gallery, check_compatible
from limitr.use.model import PathLike, TrainedModel, original_grey
from limitr.use.render import Panel, contact_sheet, excerpt, figure_png, html_page
from limitr.use.search import CANDIDATES, INDEX_THRESHOLD, GlobalIndex, SearchResult, search_images, search_reports


class Explorer:
    """Ranked search both ways over one gallery, and the maps that show the hits.

    candidates: global top candidates re-ranked with the combined score; exact: score the
    whole gallery with the combined score; index_threshold: gallery size above which the
    global stage uses a faiss index.
    """

    def __init__(self, model: TrainedModel, gallery: Gallery, candidates: int = CANDIDATES, exact: bool = False,
                 index_threshold: int = INDEX_THRESHOLD) -> None:
        check_compatible(gallery, model.model)
        self.model, self.gallery = model, gallery
        self.candidates, self.exact, self.index_threshold = int(candidates), bool(exact), int(index_threshold)
        self._image_index: Optional[GlobalIndex] = None
        self._text_index: Optional[GlobalIndex] = None
        self._queries: dict[str, torch.Tensor] = {}

    @property
    def image_index(self) -> GlobalIndex:
        if self._image_index is None:
            self._image_index = GlobalIndex(self.gallery.image_vectors, self.index_threshold)
        return self._image_index

    @property
    def text_index(self) -> GlobalIndex:
        if self._text_index is None:
            self._text_index = GlobalIndex(self.gallery.text_vectors, self.index_threshold)
        return self._text_index

    # ------------------------------------------------------------------ search
    def find_images(self, queries: Sequence[str], k: int = 10) -> list[SearchResult]:
        """The ``k`` gallery studies that best match each query text."""
        queries = [queries] if isinstance(queries, str) else list(queries)
        texts = self.model.encode_text(queries)
        results = search_images(self.model.model, self.gallery.images, self.gallery.keys, texts,
                                [q.strip() for q in queries], k=k, candidates=self.candidates, exact=self.exact,
                                index=None if self.exact else self.image_index, device=self.model.device)
        for j, result in enumerate(results):
            result.query_text = take(texts, slice(j, j + 1))
        return results

    def find_reports(self, frontal: PathLike, lateral: Optional[PathLike] = None, k: int = 10) -> SearchResult:
        """The ``k`` gallery reports that best match a study given as image files."""
        if self.gallery.texts is None:
            raise LimitrError(f"gallery {self.gallery.name} has no report embeddings to search")
        study = self.model.encode_images([frontal], [lateral])
        return search_reports(self.model.model, study.embeddings, self.gallery.texts, self.gallery.keys,
                              str(frontal), k=k, candidates=self.candidates, exact=self.exact,
                              index=None if self.exact else self.text_index, device=self.model.device)

    # ------------------------------------------------------------------ pictures
    def hit_panels(self, result: SearchResult, kind: str = "attention") -> list[Panel]:
        """Each hit's image (the gallery's processed image, padding removed) with the query's
        heatmap over it, titled with rank, key and score, captioned with its report."""
        rows = [h.row for h in result.hits]
        if not rows:
            return []
        items = self.gallery.items(rows)
        text = result.query_text
        if text is None:
            text = self.model.encode_text([result.query])
        repeated = take(text, torch.zeros(len(rows), dtype=torch.long))
        maps = self.model.region_maps(take(self.gallery.images, torch.tensor(rows)), repeated, kind)
        panels = []
        for hit, item, grid_map in zip(result.hits, items, maps):
            image = item.unpadded()
            values = None
            if image is not None and item.geometry is not None:
                values = _map_on_processed(grid_map, item.geometry, int(item.image.shape[0]), self.gallery.crop_size)
            if image is None:
                image = np.full((64, 64), 128, np.uint8)
            boxes = []
            if item.boxes and item.geometry is not None:  # the MS-CXR table: its boxes, in the shown pixels
                s = float(item.geometry["scale"])
                boxes = [("MS-CXR", (x * s, y * s, w * s, h * s)) for x, y, w, h in item.boxes]
            panels.append(Panel(image, values, f"#{hit.rank} {self.gallery.name} {hit.key}  {hit.total:.3f}",
                                excerpt(item.text, result.query, 140), boxes))
        return panels

    def ground(self, frontal: PathLike, phrase: str, lateral: Optional[PathLike] = None,
               kind: str = "attention", boxes: Sequence[tuple[str, Sequence[float]]] = ()) -> Panel:
        gmap = self.model.ground(frontal, phrase, lateral, kind)
        return Panel(gmap.image, gmap.values, phrase.strip(), boxes=boxes)

    def report_rows(self, result: SearchResult, width: int = 160) -> list[dict]:
        """The hits of an image search as table rows: rank, key, scores, report excerpt."""
        items = self.gallery.items([h.row for h in result.hits])
        return [{"rank": h.rank, "key": h.key, "total": round(h.total, 4), "global": round(h.global_, 4),
                 "local": None if h.local is None else round(h.local, 4), "report": excerpt(item.text, "", width)}
                for h, item in zip(result.hits, items)]

    # ------------------------------------------------------------------ files
    def write_text_results(self, result: SearchResult, out: Path, kind: str = "attention") -> tuple[Path, Path]:
        """``out``.png (contact sheet) and ``out``.html (self-contained page) of a text search."""
        out = Path(out)
        panels = self.hit_panels(result, kind)
        title = f"{result.query!r}: top {len(result.hits)} of {len(self.gallery)} ({self._rule(result)})"
        contact_sheet(panels, kind, title, out.with_suffix(".png"))
        items = self.gallery.items([h.row for h in result.hits])
        rows = [{"png": figure_png(p, kind, size=3.2), "heading": p.title, "scores": _score_line(h),
                 "text": excerpt(item.text, result.query, 400)} for p, h, item in zip(panels, result.hits, items)]
        html_page(title, rows, out.with_suffix(".html"))
        return out.with_suffix(".png"), out.with_suffix(".html")

    def write_image_results(self, result: SearchResult, frontal: PathLike, out: Path) -> tuple[Path, Path]:
        """``out``.png (the query image) and ``out``.html (the image and the ranked reports)."""
        out = Path(out)
        png = figure_png(Panel(original_grey(frontal), None, Path(str(frontal)).name), "attention",
                         out.with_suffix(".png"), size=4.0)
        items = self.gallery.items([h.row for h in result.hits])
        rows = [{"png": png if i == 0 else b"", "heading": f"#{h.rank} {self.gallery.name} {h.key}",
                 "scores": _score_line(h), "text": excerpt(item.text, "", 600)}
                for i, (h, item) in enumerate(zip(result.hits, items))]
        html_page(f"reports for {Path(str(frontal)).name} ({self._rule(result)})", rows, out.with_suffix(".html"))
        return out.with_suffix(".png"), out.with_suffix(".html")

    def _rule(self, result: SearchResult) -> str:
        if result.exact:
            return "combined score over the whole gallery"
        return f"global top {result.candidates} re-ranked by the combined score"


def _score_line(hit) -> str:
    local = "n/a" if hit.local is None else f"{hit.local:.3f}"
    return f"combined {hit.total:.3f}  global {hit.global_:.3f}  local {local}"


def _map_on_processed(grid_map: torch.Tensor, geometry: dict, image_size: int, crop_size: int) -> np.ndarray:
    """A region map over the crop -> the processed image's pixels, padding removed."""
    from limitr.data.images import Geometry
    from limitr.eval.grounding import map_to_original

    h = max(1, int(np.floor(geometry["orig_height"] * geometry["scale"] + 1e-6)))
    w = max(1, int(np.floor(geometry["orig_width"] * geometry["scale"] + 1e-6)))
    frame = Geometry(h, w, 1.0, int(geometry["pad_left"]), int(geometry["pad_top"]), image_size, crop_size)
    return map_to_original(grid_map, frame)
