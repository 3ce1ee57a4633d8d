"""`limitr ground`: where a phrase is in an image, drawn over it.

Not a DVC stage. ``limitr ground --image cxr.jpg --phrase "small left pleural effusion"
--out map.png [--box x0,y0,x1,y1]`` writes the image with the phrase's heatmap (in the
image's own pixels, one fixed colour scale, a colourbar), the phrase as title, and the box
when given (original pixels, corners). ``--ms-cxr PHRASE_ID`` takes the image, phrase and
ground-truth boxes of a row of the preprocessed grounding table instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stages.cli import app
from stages.common import PARAMS_OPTION, optional_path, override, section, stage_errors
from stages.search import DEVICE_OPTION, IMAGE_SIZE_OPTION, MODEL_OPTION, SHARDS_OPTION, TOKENIZER_OPTION, load_trained


def parse_box(text: str) -> tuple[float, float, float, float]:
    """'x0,y0,x1,y1' (original pixels) -> (x, y, w, h)."""
    from limitr.errors import LimitrError

    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise LimitrError(f"--box must be x0,y0,x1,y1 in pixels, got {text!r}") from exc
    if x1 <= x0 or y1 <= y0:
        raise LimitrError(f"--box corners must be ordered (x0 < x1, y0 < y1), got {text!r}")
    return x0, y0, x1 - x0, y1 - y0


@app.command("ground")
def ground_command(
    image: Optional[Path] = typer.Option(None, "--image", help="a frontal image (JPEG or PNG)"),
    phrase: Optional[str] = typer.Option(None, "--phrase", help="the finding to locate"),
    out: Path = typer.Option(Path("map.png"), "--out", help="PNG to write"),
    box: Optional[str] = typer.Option(None, "--box", help="a box to draw: x0,y0,x1,y1 in the image's pixels"),
    lateral: Optional[Path] = typer.Option(None, "--lateral", help="the study's lateral image"),
    ms_cxr: Optional[int] = typer.Option(None, "--ms-cxr", help="phrase_id of the grounding table: its image, phrase and boxes"),
    map_kind: str = typer.Option("attention", "--map", help="attention | cosine"),
    params: Path = PARAMS_OPTION,
    model: Optional[Path] = MODEL_OPTION,
    shards: Optional[Path] = SHARDS_OPTION,
    tokenizer: Optional[Path] = TOKENIZER_OPTION,
    image_size: Optional[int] = IMAGE_SIZE_OPTION,
    device: Optional[str] = DEVICE_OPTION,
) -> None:
    """Draw a phrase's grounding map over an image."""
    with stage_errors():
        from limitr.errors import LimitrError
        from limitr.use.render import Panel, figure_png

        if map_kind not in ("attention", "cosine"):
            raise LimitrError(f"--map must be attention or cosine, got {map_kind!r}")
        if ms_cxr is None:
            if image is None:
                raise LimitrError("give --image FILE (or --ms-cxr PHRASE_ID)")
            if phrase is None or not phrase.strip():
                raise LimitrError("empty phrase: give --phrase \"the finding to locate\"")
            if not image.is_file():
                raise LimitrError(f"{image} does not exist")
        boxes = [("box", parse_box(box))] if box else []
        trained = load_trained(params, model, tokenizer, image_size, device)
        if ms_cxr is not None:
            from limitr.use.ground import ms_cxr_panel

            shards_dir = optional_path(override(shards, section(params, "embed"), "shards", "data/shards"))
            panel = ms_cxr_panel(trained, shards_dir, ms_cxr, map_kind)
            panel.boxes = list(panel.boxes) + boxes
        else:
            gmap = trained.ground(image, phrase, lateral, map_kind)
            panel = Panel(gmap.image, gmap.values, gmap.phrase, boxes=boxes)
        if not str(out).lower().endswith(".png"):
            raise LimitrError(f"--out must name a .png file, got {out}")
        figure_png(panel, map_kind, Path(out))
        typer.echo(f"map of {panel.title!r} written to {out}")
