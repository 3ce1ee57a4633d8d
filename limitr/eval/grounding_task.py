"""Phrase grounding from saved embeddings: two maps per phrase, scored in original pixels.

For each phrase and its image:

- ``attention``: the model's word-to-region attention (``grounding_maps``), averaged over the
  phrase's words (not [CLS], not padding), over the frontal regions;
- ``cosine``: the cosine between each frontal region feature and the phrase vector (mean of
  its word features).

Both (h, w) maps are mapped back through crop, resize and padding to the original pixels
(:func:`limitr.eval.grounding.map_to_original`) and scored against the phrase's boxes.

Each kind also has a ``prior``: the mean of that kind's maps over all evaluated phrases, one
fixed map in crop coordinates that ignores both the phrase and the image, scored against
every phrase's boxes in the same way. It measures how much of a score comes from where the
model looks whatever it is asked; a map grounds a phrase only where it beats its prior.
``significance`` says how sure that is: exact p-values of the pointing game against a random
point and, phrase by phrase, against the prior.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import pyarrow.parquet as pq
import torch

from limitr.data.images import Geometry
from limitr.data.schema import MS_CXR_CATEGORIES
from limitr.data.shards import split_files
from limitr.errors import LimitrError
from limitr.eval import grounding as G
from limitr.eval.results import GroundingExample, GroundingResult, MapResult, PriorFigures
from limitr.eval.scoring import take
from limitr.eval.store import align, read_embeddings, read_manifest
from limitr.progress import ProgressFn, advance

MAP_KINDS: tuple[str, ...] = ("attention", "cosine")
MAP_NAMES: dict[str, str] = {"attention": "word_to_region_attention", "cosine": "patch_to_phrase_cosine"}
_GEOMETRY = ("orig_height", "orig_width", "scale", "pad_left", "pad_top")


def grounding_total(embeddings: Path) -> int:
    """Phrases the grounding task will map (for a progress total)."""
    return int(read_manifest(embeddings).get("tables", {}).get("grounding", {}).get("images", 0))


def validation_studies(shards: Path) -> set[int]:
    """Study ids of the validation split's shards (empty when it has none)."""
    return {int(k) for f in split_files(shards, "validate")
            for k in pq.read_table(f, columns=["study_id"]).column("study_id").to_pylist()}


def _png_side(data: bytes) -> int:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
    if width != height:
        raise LimitrError(f"grounding images must be padded squares, found {width} x {height}: re-run preprocess")
    return int(width)


def _map_result(kind: str, scores, prior_scores, categories, order, thresholds, validation) -> MapResult:
    """One map kind's figures, its prior's and their significance. The headline mIoU's
    threshold is chosen on the map's ``validation`` phrases and averaged over the others; the
    prior is scored at the same threshold."""
    choice = G.choose_threshold([s for s, v in zip(scores, validation) if v], thresholds)
    prior = G.aggregate(prior_scores, categories, order, thresholds, choice, validation)
    return MapResult(
        map=MAP_NAMES[kind],
        figures=G.aggregate(scores, categories, order, thresholds, choice, validation),
        prior=PriorFigures(map=f"mean_{kind}_map", cnr=prior.cnr, miou=prior.miou,
                           miou_over_thresholds=prior.miou_over_thresholds, pointing_game=prior.pointing_game),
        significance=G.significance(scores, prior_scores),
    )


@torch.no_grad()
def phrase_maps(model, images, texts, batch_size: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(attention, cosine) maps, each (P, h, w) on the CPU, for P matched (image, phrase) pairs.

    images / texts: ImageEmbeddings / TextEmbeddings of the same P items, in pair order.
    """
    h, w = images.grid
    regions = h * w
    att_parts, cos_parts = [], []
    for start in range(0, images.global_emb.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        img, txt = take(images, sl).to(device), take(texts, sl).to(device)
        words = txt.local_mask.clone()
        words[:, 0] = False  # [CLS] is not a word of the phrase
        attention = model.grounding_maps(img, txt)  # (B, N, M)
        att_parts.append(G.word_attention_map(attention.float(), words, regions).view(-1, h, w).cpu())
        cos = G.cosine_map(img.local[:, :regions].float(), txt.local.float(), words)
        cos_parts.append(cos.view(-1, h, w).cpu())
    return torch.cat(att_parts), torch.cat(cos_parts)


def grounding(
    model,
    embeddings: Path,
    shards: Path,
    manifest: dict,
    settings,
    progress: ProgressFn = None,
    thresholds: Sequence[float] = G.IOU_THRESHOLDS,
) -> GroundingResult:
    """The grounding figures of the attention and cosine maps, each with its prior's and the
    ``significance`` of its pointing game against chance and against that prior
    (:func:`limitr.eval.grounding.significance`); ``examples``: one phrase per category for
    the figures. The headline mIoU's threshold is chosen on the phrases whose study is in the
    validation split (a fixed one when there is none) and those phrases are left out of it."""
    folder = Path(embeddings) / "grounding"
    img_keys, images = read_embeddings(folder, "images")
    txt_keys, texts = read_embeddings(folder, "texts")
    keys, img_rows, txt_rows = align(img_keys, txt_keys)
    if len(keys) == 0:
        raise LimitrError("no grounding phrase has both an image and a text embedding")
    images, texts = take(images, img_rows), take(texts, txt_rows)
    crop = int(manifest.get("settings", {}).get("crop_size", 0))
    if crop <= 0:
        raise LimitrError("the embeddings report does not give the crop size: re-run the embed stage")

    columns = ["phrase_id", "study_id", "category_name", "label_text", "boxes", "image", *_GEOMETRY]
    table = pq.read_table(Path(shards) / "grounding.parquet", columns=columns)
    row_of = {int(k): i for i, k in enumerate(table.column("phrase_id").to_pylist())}
    missing = [int(k) for k in keys if int(k) not in row_of]
    if missing:
        raise LimitrError(f"grounding embeddings for phrases {missing[:5]} are not in the grounding table: re-run embed")
    rows = [row_of[int(k)] for k in keys]
    cols = {name: table.column(name).to_pylist() for name in columns if name != "image"}
    image_col = table.column("image")
    in_validation = validation_studies(shards)
    validation = [cols["study_id"][r] is not None and int(cols["study_id"][r]) in in_validation for r in rows]

    attention, cosine = phrase_maps(model, images, texts, settings.score_block, settings.device)
    priors = {"attention": attention.mean(0), "cosine": cosine.mean(0)}
    categories = [cols["category_name"][r] for r in rows]
    examples = G.category_examples(categories, keys.tolist())
    example_rows = set(examples.values())
    scores: dict[str, list[G.PhraseScores]] = {kind: [] for kind in MAP_KINDS}
    prior_scores: dict[str, list[G.PhraseScores]] = {kind: [] for kind in MAP_KINDS}
    figures: dict[str, GroundingExample] = {}
    for i, r in enumerate(rows):
        image_bytes = image_col[r].as_py()
        geometry = Geometry.from_row({name: cols[name][r] for name in _GEOMETRY}).with_crop(_png_side(image_bytes), crop)
        boxes = cols["boxes"][r]
        maps = {"attention": attention[i], "cosine": cosine[i]}
        original = {kind: G.map_to_original(m, geometry) for kind, m in maps.items()}
        prior_original = {kind: G.map_to_original(m, geometry) for kind, m in priors.items()}
        for kind in MAP_KINDS:
            scores[kind].append(G.score_phrase(original[kind], boxes, thresholds))
            prior_scores[kind].append(G.score_phrase(prior_original[kind], boxes, thresholds))
        if i in example_rows:
            figures[categories[i]] = GroundingExample(
                phrase_id=int(keys[i]), text=cols["label_text"][r], boxes=boxes, image=image_bytes,
                geometry=geometry, maps={**original, "attention prior (mean map)": prior_original["attention"]})
        advance(progress, 1)
    order = list(MS_CXR_CATEGORIES) + sorted(set(categories) - set(MS_CXR_CATEGORIES))
    results = {kind: _map_result(kind, scores[kind], prior_scores[kind], categories, order, thresholds, validation)
               for kind in MAP_KINDS}
    return GroundingResult(attention=results["attention"], cosine=results["cosine"],
                           examples={c: figures[c] for c in order if c in figures})
