"""`limitr search`: find gallery studies for a finding, or reports for an image.

Not a DVC stage: a command over the pipeline's outputs (data/model, data/embeddings,
data/shards, data/tokens/tokenizer). Paths default to the ``embed``, ``tokenize`` and
``preprocess`` sections of params.yaml; options override them.

    limitr search "right upper lobe consolidation" [--k 10] [--exact]
    limitr search --image cxr.jpg [--lateral lateral.jpg]

Prints the hits as a table and writes, per query, ``OUT/<query>.png`` (a contact sheet: each
hit's image with the phrase's heatmap) and ``OUT/<query>.html`` (a self-contained page).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from stages.cli import app
from stages.common import PARAMS_OPTION, base, load_params, optional_path, override, resolve_device, section, stage_errors

MODEL_OPTION = typer.Option(None, help="train stage output (embed.model; default data/model)")
EMBEDDINGS_OPTION = typer.Option(None, help="`limitr embed` output holding the gallery (embed.out; default data/embeddings)")
TABLE_OPTION = typer.Option("test", help="the embedded table to use as the gallery: test | grounding | class_retrieval")
SHARDS_OPTION = typer.Option(None, help="preprocess output with the gallery's images and reports (embed.shards)")
TOKENIZER_OPTION = typer.Option(None, help="tokenizer folder (default: tokenize.out/tokenizer)")
IMAGE_SIZE_OPTION = typer.Option(None, "--image-size", help="padded square side of the preprocess run (preprocess.image_size)")
DEVICE_OPTION = typer.Option(None, help="auto | cpu | cuda | cuda:N (base.device)")
CANDIDATES_OPTION = typer.Option(100, "--candidates", help="global top candidates re-ranked with the combined score")
INDEX_THRESHOLD_OPTION = typer.Option(100_000, "--index-threshold",
                                      help="gallery size above which the global stage uses a faiss index")


def load_trained(params: Path, model: Optional[Path], tokenizer: Optional[Path], image_size: Optional[int],
                 device: Optional[str]):
    """The trained model with its preparation settings, paths from options or params."""
    from limitr.use import load

    embed_cfg = section(params, "embed")
    tok_cfg = section(params, "tokenize")
    model_dir = optional_path(override(model, embed_cfg, "model", "data/model"))
    if tokenizer is None:
        tokens = optional_path(tok_cfg.get("out") or embed_cfg.get("tokens") or "data/tokens")
        if tokens is not None and (tokens / "tokenizer").is_dir():
            tokenizer = tokens / "tokenizer"
    size = image_size
    if size is None:  # the params file's value when it states one, else the model's run tells (limitr.use.load)
        size = (load_params(params).get("preprocess") or {}).get("image_size")
    max_length = tok_cfg.get("max_length")
    dev = resolve_device(override(device, base(params), "device", "auto"))
    return load(model_dir, tokenizer=tokenizer, image_size=int(size) if size else None,
                max_length=int(max_length) if max_length else None, device=dev)


def open_explorer(params: Path, model: Optional[Path], embeddings: Optional[Path], table: str,
                  shards: Optional[Path], tokenizer: Optional[Path], image_size: Optional[int], device: Optional[str],
                  candidates: int = 100, exact: bool = False, index_threshold: int = 100_000):
    """Model and gallery, checked against each other, as an :class:`limitr.use.Explorer`."""
    from limitr.use import Explorer, load_gallery

    trained = load_trained(params, model, tokenizer, image_size, device)
    embed_cfg = section(params, "embed")
    folder = optional_path(override(embeddings, embed_cfg, "out", "data/embeddings"))
    shards_dir = optional_path(override(shards, embed_cfg, "shards", "data/shards"))
    gallery = load_gallery(folder, table, shards_dir, fingerprint=trained.fingerprint, crop_size=trained.crop_size)
    return Explorer(trained, gallery, candidates=candidates, exact=exact, index_threshold=index_threshold)


def slug(text: str, limit: int = 60) -> str:
    return (re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "query")[:limit]


def _short(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


@app.command("search")
def search_command(
    queries: Optional[list[str]] = typer.Argument(None, help="finding(s) to search the gallery's images for"),
    image: Optional[Path] = typer.Option(None, "--image", help="a frontal image (JPEG/PNG): rank the gallery's reports"),
    lateral: Optional[Path] = typer.Option(None, "--lateral", help="the study's lateral image (with --image)"),
    k: int = typer.Option(10, "--k", help="hits per query"),
    exact: bool = typer.Option(False, "--exact", help="score the whole gallery with the combined score"),
    map_kind: str = typer.Option("attention", "--map", help="heatmap of the hits: attention | cosine"),
    out: Path = typer.Option(Path("data/search"), help="folder for the contact sheets (PNG) and pages (HTML)"),
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
    """Rank the gallery's studies for a finding, or its reports for an image."""
    with stage_errors():
        from limitr.errors import LimitrError
        from limitr.use.render import excerpt

        if image is None and not queries:
            raise LimitrError("give a finding to search for, or --image FILE")
        if image is not None and queries:
            raise LimitrError("give either query texts or --image, not both")
        if lateral is not None and image is None:
            raise LimitrError("--lateral needs --image")
        if map_kind not in ("attention", "cosine"):
            raise LimitrError(f"--map must be attention or cosine, got {map_kind!r}")
        if image is not None:  # fail on a bad file before loading anything
            for path in (image, lateral):
                if path is not None and not path.is_file():
                    raise LimitrError(f"{path} does not exist")
        else:
            for q in queries or []:
                if not q.strip():
                    raise LimitrError("empty query: give a finding to search for")
        explorer = open_explorer(params, model, embeddings, table, shards, tokenizer, image_size, device,
                                 candidates, exact, index_threshold)
        if explorer.gallery.fingerprint is None:
            typer.echo("note: the gallery records no model fingerprint (embedded before they were recorded); "
                       "re-run `limitr embed` so that a gallery of another model is refused", err=True)
        out = Path(out)
        if image is not None:
            result = explorer.find_reports(image, lateral, k=k)
            typer.echo(f"reports for {image} ({len(explorer.gallery)} in gallery {table}):")
            typer.echo(f"  {'rank':>4}  {'key':>10}  {'combined':>8}  {'global':>7}  {'local':>7}  report")
            for row in explorer.report_rows(result):
                local = "" if row["local"] is None else f"{row['local']:.3f}"
                typer.echo(f"  {row['rank']:>4}  {row['key']:>10}  {row['total']:>8.3f}  {row['global']:>7.3f}  "
                           f"{local:>7}  {_short(row['report'], 70)}")
            png, page = explorer.write_image_results(result, image, out / f"image_{slug(image.stem)}")
            typer.echo(f"written: {png}, {page}")
            return
        results = explorer.find_images(list(queries or []), k=k)
        for result in results:
            items = explorer.gallery.items([h.row for h in result.hits])
            typer.echo(f"{result.query!r}: top {len(result.hits)} of {len(explorer.gallery)} in gallery {table}")
            typer.echo(f"  {'rank':>4}  {'key':>10}  {'combined':>8}  {'global':>7}  {'local':>7}  report")
            for hit, item in zip(result.hits, items):
                local = "" if hit.local is None else f"{hit.local:.3f}"
                typer.echo(f"  {hit.rank:>4}  {hit.key:>10}  {hit.total:>8.3f}  {hit.global_:>7.3f}  {local:>7}  "
                           f"{excerpt(item.text, result.query, 70)}")
            png, page = explorer.write_text_results(result, out / slug(result.query), map_kind)
            typer.echo(f"written: {png}, {page}")
