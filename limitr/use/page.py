"""The explore page (Gradio): a model and a gallery in the browser, on this machine only.

Two tabs: "Find images" (a finding -> the gallery's best studies, each with the finding's
heatmap, and a table of hits) and "Read an image" (an uploaded study -> the gallery's best
reports, and the heatmap of any phrase typed). Errors become a message on the page.
Gradio is an optional extra (``pip install .[explore]``); analytics are switched off.
"""

from __future__ import annotations

import html
import io
import os
from typing import Optional

from limitr.errors import LimitrError
from limitr.use.explorer import Explorer
from limitr.use.render import Panel, excerpt, figure_png

DEFAULT_HOST = "127.0.0.1"


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError as exc:
        raise LimitrError("the explore page needs Gradio: pip install '.[explore]'") from exc
    return gr


def _pil(png: bytes):
    from PIL import Image

    img = Image.open(io.BytesIO(png))
    img.load()
    return img


def _message(text: str) -> str:
    return f'<p class="limitr-error" style="color:#b00">{html.escape(text)}</p>'


def hits_table(rows: list[dict]) -> str:
    """An HTML table of hits: rank, key, scores, report excerpt."""
    head = "<tr><th>rank</th><th>study</th><th>combined</th><th>global</th><th>local</th><th>report</th></tr>"
    body = "".join(
        f"<tr><td>{r['rank']}</td><td>{r['key']}</td><td>{r['total']:.3f}</td><td>{r['global']:.3f}</td>"
        f"<td>{'' if r['local'] is None else format(r['local'], '.3f')}</td><td>{html.escape(r['report'])}</td></tr>"
        for r in rows
    )
    return f'<table class="limitr-hits">{head}{body}</table>'


def find_images(explorer: Explorer, query: str, k: int, kind: str = "attention"):
    """(gallery items, table HTML, message HTML) for the page's first tab."""
    try:
        if not query or not query.strip():
            raise LimitrError("empty query: type a finding, e.g. 'right upper lobe consolidation'")
        [result] = explorer.find_images([query], k=int(k))
        panels = explorer.hit_panels(result, kind)
        items = explorer.gallery.items([h.row for h in result.hits])
        gallery = [(_pil(figure_png(p, kind, size=3.0)), p.title) for p in panels]
        rows = [{"rank": h.rank, "key": h.key, "total": h.total, "global": h.global_, "local": h.local,
                 "report": excerpt(item.text, query, 200)} for h, item in zip(result.hits, items)]
        note = (f"top {len(result.hits)} of {len(explorer.gallery)} studies for {result.query!r} "
                f"({'combined score, whole gallery' if result.exact else f'global top {result.candidates} re-ranked by the combined score'})")
        return gallery, hits_table(rows), f"<p>{html.escape(note)}</p>"
    except LimitrError as exc:
        return [], "", _message(str(exc))


def upload_path(value) -> Optional[str]:
    """The server-side path of an upload: the page hands the image fields over unprocessed
    (``preprocess=False``), as Gradio's file payload (a dict with ``path``), so that Gradio
    never opens a hostile file itself (a decompression bomb, a PDF named .png, zero bytes):
    :mod:`limitr.use.prepare` reads it, checking the pixel count from the header first."""
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        return value.get("path") or None
    return getattr(value, "path", None)


def upload_name(value) -> str:
    """The name the user's file had (Gradio's ``orig_name``), else the path's last part."""
    name = value.get("orig_name") if isinstance(value, dict) else getattr(value, "orig_name", None)
    return str(name or os.path.basename(upload_path(value) or ""))


def read_image(explorer: Explorer, frontal, lateral, phrase: str, k: int, kind: str = "attention"):
    """(table HTML, heatmap image or None, message HTML) for the page's second tab. The
    images come as paths or as Gradio's upload payloads (:func:`upload_path`)."""
    names = {upload_path(v): upload_name(v) for v in (frontal, lateral) if upload_path(v)}
    frontal, lateral = upload_path(frontal), upload_path(lateral)
    try:
        if not frontal:
            raise LimitrError("upload a frontal image first")
        result = explorer.find_reports(frontal, lateral or None, k=int(k))
        table = hits_table(explorer.report_rows(result, 200))
        heat = None
        if phrase and phrase.strip():
            panel: Panel = explorer.ground(frontal, phrase, lateral or None, kind)
            heat = _pil(figure_png(panel, kind, size=4.5))
        return table, heat, "<p>reports ranked for the uploaded study</p>"
    except LimitrError as exc:
        text = str(exc)
        for path, name in names.items():  # the file as the user named it, not the server's copy
            text = text.replace(path, name)
        return "", None, _message(text)


def build_page(explorer: Explorer, k: int = 8, kind: str = "attention"):
    """The Gradio Blocks of the page (not launched)."""
    gr = _gradio()
    with gr.Blocks(title="LIMITR explore", analytics_enabled=False) as page:
        gr.Markdown(f"## LIMITR: a trained model over gallery *{explorer.gallery.name}* "
                    f"({len(explorer.gallery)} studies)")
        with gr.Tab("Find images"):
            with gr.Row():
                query = gr.Textbox(label="Finding", placeholder="right upper lobe consolidation", elem_id="query", scale=4)
                count = gr.Slider(1, 50, value=k, step=1, label="Hits", elem_id="k", scale=1)
            button = gr.Button("Search", variant="primary", elem_id="search-button")
            message = gr.HTML(elem_id="search-message")
            hits = gr.Gallery(label="Hits with the finding's heatmap", columns=4, height="auto", elem_id="hits")
            table = gr.HTML(elem_id="hit-table")
            for trigger, name in ((button.click, "find_images"), (query.submit, "find_images_on_enter")):
                trigger(lambda q, n: find_images(explorer, q, n, kind), [query, count], [hits, table, message],
                        api_name=name)
        with gr.Tab("Read an image"):
            with gr.Row():
                frontal = gr.Image(type="filepath", label="Frontal image", elem_id="frontal")
                lateral = gr.Image(type="filepath", label="Lateral image (optional)", elem_id="lateral")
            with gr.Row():
                phrase = gr.Textbox(label="Phrase to locate (optional)", placeholder="small left pleural effusion",
                                    elem_id="phrase", scale=4)
                count2 = gr.Slider(1, 50, value=k, step=1, label="Reports", scale=1)
            button2 = gr.Button("Rank reports", variant="primary", elem_id="read-button")
            message2 = gr.HTML(elem_id="read-message")
            with gr.Row():
                heat = gr.Image(label="Heatmap", type="pil", elem_id="heatmap")
                reports = gr.HTML(elem_id="report-table")
            # preprocess=False: the uploads reach read_image as paths Gradio never decoded
            button2.click(lambda f, l, p, n: read_image(explorer, f, l, p, n, kind), [frontal, lateral, phrase, count2],
                          [reports, heat, message2], preprocess=False, api_name="read_image")
    return page


def launch(explorer: Explorer, host: str = DEFAULT_HOST, port: Optional[int] = None, k: int = 8,
           block: bool = True, kind: str = "attention"):
    """Serve the page on ``host:port`` (127.0.0.1 by default: nothing leaves the machine)."""
    page = build_page(explorer, k, kind)
    page.queue()
    page.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=not block,
                quiet=True, show_error=False)
    return page
