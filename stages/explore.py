"""`limitr explore`: a local web page over a trained model and a gallery.

Not a DVC stage. Needs the optional extra: ``pip install '.[explore]'``. Serves on
127.0.0.1 (this machine only) unless ``--host`` says otherwise; no data leaves the machine.
Uploaded images and drawn heatmaps go to a private temporary folder (mode 0700) that is
removed when the page stops, not to Gradio's shared ``/tmp/gradio``; set ``GRADIO_TEMP_DIR``
to keep them elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Optional
from unittest import mock

import typer

from stages.cli import app
from stages.common import PARAMS_OPTION, stage_errors
from stages.search import (
    CANDIDATES_OPTION,
    DEVICE_OPTION,
    EMBEDDINGS_OPTION,
    IMAGE_SIZE_OPTION,
    INDEX_THRESHOLD_OPTION,
    MODEL_OPTION,
    SHARDS_OPTION,
    TABLE_OPTION,
    TOKENIZER_OPTION,
    open_explorer,
)


@contextlib.contextmanager
def private_uploads() -> Iterator[Path]:
    """Point Gradio's upload folder at a fresh private folder for the page's life, then remove
    it (uploads are patients' images). A ``GRADIO_TEMP_DIR`` the user set is left alone."""
    if os.environ.get("GRADIO_TEMP_DIR"):
        yield Path(os.environ["GRADIO_TEMP_DIR"])
        return
    with tempfile.TemporaryDirectory(prefix="limitr-explore-", ignore_cleanup_errors=True) as folder, \
            mock.patch.dict(os.environ, {"GRADIO_TEMP_DIR": folder}):
        yield Path(folder)


@app.command("explore")
def explore_command(
    host: str = typer.Option("127.0.0.1", help="address to serve on (127.0.0.1 = this machine only)"),
    port: Optional[int] = typer.Option(None, help="port (default: Gradio's, 7860 or the next free one)"),
    k: int = typer.Option(8, "--k", help="hits shown by default"),
    exact: bool = typer.Option(False, "--exact", help="score the whole gallery with the combined score"),
    map_kind: str = typer.Option("attention", "--map", help="heatmaps: attention | cosine"),
    params: Path = PARAMS_OPTION,
    model: Optional[Path] = MODEL_OPTION,
    embeddings: Optional[Path] = EMBEDDINGS_OPTION,
    table: str = TABLE_OPTION,
    shards: Optional[Path] = SHARDS_OPTION,
    tokenizer: Optional[Path] = TOKENIZER_OPTION,
    image_size: Optional[int] = IMAGE_SIZE_OPTION,
    candidates: int = CANDIDATES_OPTION,
    index_threshold: int = INDEX_THRESHOLD_OPTION,
    device: Optional[str] = DEVICE_OPTION,
) -> None:
    """Serve a page to search the gallery and ground phrases on uploaded images.

    Uploads stay in a private temporary folder, removed when the page stops
    (set GRADIO_TEMP_DIR to keep them elsewhere)."""
    with stage_errors(), private_uploads():
        from limitr.errors import LimitrError
        from limitr.use.page import _gradio, launch

        if map_kind not in ("attention", "cosine"):
            raise LimitrError(f"--map must be attention or cosine, got {map_kind!r}")
        _gradio()  # the extra is missing: say so before loading anything
        explorer = open_explorer(params, model, embeddings, table, shards, tokenizer, image_size, device,
                                 candidates, exact, index_threshold)
        page = launch(explorer, host=host, port=port, k=k, block=False, kind=map_kind)
        typer.echo(f"serving {len(explorer.gallery)} studies of gallery {table} on {page.local_url} (Ctrl-C to stop)")
        try:
            page.block_thread()
        finally:
            page.close()
