"""A trained model for a user's own images and texts.

:func:`load` reads a model folder (the train stage's output, or its ``best/`` weights folder)
and returns a :class:`TrainedModel` that encodes image files and free text, scores them with
the model's one similarity (global, local and combined) and draws grounding maps in the
original image's pixels::

    from limitr.use import load

    model = load("data/model")                      # tokenizer and image size found beside it
    images = model.encode_images(["cxr.jpg"], laterals=["cxr_lateral.jpg"])
    texts = model.encode_text(["right upper lobe consolidation", "no acute process"])
    scores = model.score(images, texts)             # scores.total / global_ / local: (1, 2)
    heat = model.ground("cxr.jpg", "small left pleural effusion")
    heat.values.shape == heat.image.shape           # (height, width) of cxr.jpg

Images go through exactly the pipeline's preparation (:mod:`limitr.use.prepare`): the
preprocess stage's resize and pad to ``image_size``, then the evaluation centre crop of
``crop_size`` (and ``upsample_to`` when the model was trained with it); texts through the
tokenizer the reports were tokenised with, at the same token limit.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from limitr.errors import LimitrError
from limitr.model.outputs import ImageEmbeddings, Scores, TextEmbeddings
from limitr.use import prepare

PathLike = Union[str, Path]
#: The token limit when no tokenize report says otherwise (the pipeline's default).
DEFAULT_MAX_LENGTH = 97
#: The grounding maps: word-to-region attention, or region-to-phrase cosine.
MAP_KINDS: tuple[str, ...] = ("attention", "cosine")


@dataclass
class StudyImages:
    """Encoded studies: their embeddings and each frontal image's geometry."""

    embeddings: ImageEmbeddings
    geometries: list[prepare.Geometry]
    paths: list[str]

    def __len__(self) -> int:
        return len(self.geometries)


@dataclass
class GroundingMap:
    """A phrase's map over one image, in the original image's pixels.

    values: (height, width) float32, NaN where the model's crop did not see the image;
    image: (height, width) uint8, the original image in grey; kind: attention | cosine.
    Attention values are shares of the phrase's attention times the number of regions
    (1 = uniform attention); cosine values lie in [-1, 1].
    """

    values: np.ndarray
    image: np.ndarray
    phrase: str
    kind: str


def _find_upwards(folder: Path, relative: str) -> Optional[Path]:
    for base in (folder, folder.parent, folder.parent.parent):
        candidate = base / relative
        if candidate.exists():
            return candidate
    return None


def _png_side(data: bytes) -> int:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return int(img.size[0])


def image_size_from_shards(shards: Path) -> Optional[int]:
    """The side of the padded squares in a preprocess output (its first test image)."""
    import pyarrow.parquet as pq

    for split in ("test", "validate", "train"):
        files = sorted((Path(shards) / split).glob("part-*.parquet"))
        if files:
            table = pq.read_table(files[0], columns=["frontal_image"]).slice(0, 1)
            if table.num_rows:
                return _png_side(table.column("frontal_image")[0].as_py())
    return None


class TrainedModel:
    """A loaded model with the settings that prepare its inputs (see :func:`load`)."""

    def __init__(self, model, run_config: dict, weights: Path, tokenizer_dir: Path, image_size: int,
                 max_length: int = DEFAULT_MAX_LENGTH, device: str = "cpu", batch_size: int = 64) -> None:
        train = run_config.get("train") or {}
        self.model = model
        self.run_config = run_config
        self.weights = Path(weights)
        self.crop_size = int(train["crop_size"])
        self.upsample_to = train.get("upsample_to")
        self.image_size = int(image_size)
        self.max_length = int(max_length)
        self.device = device
        self.batch_size = int(batch_size)
        self.tokenizer_dir = Path(tokenizer_dir)
        if self.crop_size > self.image_size:
            raise LimitrError(
                f"the model was trained on {self.crop_size}-pixel crops of images larger than "
                f"image_size {self.image_size}: give the image_size of its preprocess run"
            )
        from limitr.text.tokenizer import load_tokenizer

        self.tokenizer = load_tokenizer(self.tokenizer_dir)
        self._fingerprint: Optional[str] = None

    # ------------------------------------------------------------------ properties
    @property
    def lateral(self) -> bool:
        return bool(getattr(getattr(self.model, "config", None), "lateral", True))

    @property
    def fingerprint(self) -> str:
        """The hash the embed stage records for these weights (limitr.eval.embed)."""
        if self._fingerprint is None:
            from limitr.eval.embed import model_fingerprint

            self._fingerprint = model_fingerprint(self.weights)
        return self._fingerprint

    # ------------------------------------------------------------------ images
    def prepare_image(self, path: PathLike) -> tuple[torch.Tensor, prepare.Geometry]:
        """An image file -> its (C, C) uint8 crop as the model sees it, and its geometry."""
        path = Path(path)
        try:
            png, geometry = prepare.process_image_file(path, self.image_size)
        except prepare.BadImage as exc:
            raise bad_image_error(path, exc) from None
        grey = prepare.decode_grey(png)
        top, left = prepare.crop_offsets(grey.shape[0], grey.shape[1], self.crop_size, None)
        crop = np.ascontiguousarray(grey[top : top + self.crop_size, left : left + self.crop_size])
        geo = geometry.with_crop(self.image_size, self.crop_size)
        return torch.from_numpy(crop), geo

    def _inputs(self, crops: list[torch.Tensor]) -> torch.Tensor:
        return prepare.prepare_images(torch.stack(crops), self.device, self.upsample_to)

    @torch.no_grad()
    def encode_crops(self, frontal: list[torch.Tensor], lateral: Sequence[Optional[torch.Tensor]]) -> ImageEmbeddings:
        """Prepared (C, C) uint8 crops (a lateral may be None) -> embeddings, in batches."""
        parts: list[ImageEmbeddings] = []
        for start in range(0, len(frontal), self.batch_size):
            front = frontal[start : start + self.batch_size]
            lat = list(lateral[start : start + self.batch_size])
            has = torch.tensor([x is not None for x in lat], dtype=torch.bool, device=self.device)
            lat_in = None
            if self.lateral and bool(has.any()):
                lat_in = self._inputs([x if x is not None else torch.zeros_like(f) for x, f in zip(lat, front)])
            else:
                has = torch.zeros_like(has)
            parts.append(self.model.encode_images(self._inputs(front), lat_in, has).detach().to("cpu"))
        return _cat_images(parts)

    def encode_images(self, frontals: Sequence[PathLike], laterals: Optional[Sequence[Optional[PathLike]]] = None) -> StudyImages:
        """Image files (JPEG or PNG, any size) -> :class:`StudyImages`. ``laterals``: one
        lateral file or None per study (ignored when the model has no lateral encoder)."""
        frontals = [frontals] if isinstance(frontals, (str, Path)) else list(frontals)
        if not frontals:
            raise LimitrError("no image given")
        if laterals is None:
            laterals = [None] * len(frontals)
        laterals = [laterals] if isinstance(laterals, (str, Path)) else list(laterals)
        if len(laterals) != len(frontals):
            raise LimitrError(f"{len(laterals)} lateral images for {len(frontals)} frontal images")
        crops, geos, lat_crops = [], [], []
        for front, lat in zip(frontals, laterals):
            crop, geo = self.prepare_image(front)
            crops.append(crop)
            geos.append(geo)
            lat_crops.append(self.prepare_image(lat)[0] if lat is not None and self.lateral else None)
        return StudyImages(self.encode_crops(crops, lat_crops), geos, [str(p) for p in frontals])

    # ------------------------------------------------------------------ texts
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Texts -> input_ids, attention_mask, word_ids (n, T) as the tokenize stage makes them."""
        from limitr.text.tokenize import encode_texts

        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise LimitrError("no text given")
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise LimitrError("empty query: give a finding or a report to search for")
        enc = encode_texts(self.tokenizer, [t.strip() for t in texts], self.max_length)
        word_ids = torch.from_numpy(enc.word_ids.astype("int64"))
        if not bool((word_ids >= 0).any(1).all()):
            raise LimitrError("a query has no word the tokenizer knows")
        return {
            "input_ids": torch.from_numpy(enc.input_ids.astype("int64")),
            "attention_mask": torch.from_numpy(enc.attention_mask.astype("int64")),
            "word_ids": word_ids,
        }

    @torch.no_grad()
    def encode_text(self, texts: Union[str, Sequence[str]]) -> TextEmbeddings:
        """Free-text findings, phrases or reports -> TextEmbeddings (on the CPU)."""
        tok = self.tokenize(texts)
        parts = []
        dev = torch.device(self.device)
        n = tok["input_ids"].shape[0]
        for start in range(0, n, self.batch_size):
            sl = slice(start, start + self.batch_size)
            ids, att, wid = prepare.trim_padding(tok["input_ids"][sl], tok["attention_mask"][sl], tok["word_ids"][sl], min_length=1)
            parts.append(self.model.encode_text(ids.to(dev), att.to(dev), wid.to(dev)).detach().to("cpu"))
        return _cat_texts(parts)

    # ------------------------------------------------------------------ scores and maps
    def score(self, images: Union[StudyImages, ImageEmbeddings], texts: TextEmbeddings, block_size: int = 64) -> Scores:
        """(n_images, n_texts) scores: ``total`` (the ranking score), ``global_``, ``local``."""
        from limitr.eval.scoring import score_matrix

        emb = images.embeddings if isinstance(images, StudyImages) else images
        return score_matrix(self.model, emb, texts, block_size=block_size, device=self.device)

    @torch.no_grad()
    def region_maps(self, images: ImageEmbeddings, texts: TextEmbeddings, kind: str = "attention") -> torch.Tensor:
        """(P, h, w) maps of P matched (image, phrase) pairs over the frontal region grid;
        attention as a multiple of uniform attention over the study's regions (frontal and
        lateral), cosine as it is."""
        from limitr.eval.grounding_task import phrase_maps

        if kind not in MAP_KINDS:
            raise LimitrError(f"map kind must be one of {', '.join(MAP_KINDS)}, got {kind!r}")
        attention, cosine = phrase_maps(self.model, images, texts, self.batch_size, self.device)
        if kind == "cosine":
            return cosine
        # uniform attention spreads over every real region of the study (frontal, and lateral
        # where there is one): scale so that uniform is 1 whatever the study has
        regions = images.local_mask.sum(1).to(attention.dtype).clamp_min(1.0)
        return attention * regions[:, None, None]

    def ground(self, image: PathLike, phrase: str, lateral: Optional[PathLike] = None,
               kind: str = "attention") -> GroundingMap:
        """Where ``phrase`` is in ``image``: a :class:`GroundingMap` in the image's own pixels."""
        from limitr.eval.grounding import map_to_original

        study = self.encode_images([image], [lateral])
        text = self.encode_text([phrase])
        grid_map = self.region_maps(study.embeddings, text, kind)[0]
        values = map_to_original(grid_map, study.geometries[0])
        return GroundingMap(values=values, image=original_grey(image), phrase=phrase.strip(), kind=kind)


def bad_image_error(path: PathLike, exc: "prepare.BadImage") -> LimitrError:
    """The one line for an image file that cannot be used (what the page shows, too)."""
    what = {"missing": "does not exist", "empty": "is empty (zero bytes)", "truncated": "is a truncated image"}
    if exc.reason == "too_large":  # refused from its header: no pixel was decoded
        detail = str(exc).split(": ", 1)[-1].split(", more than")[0]
        return LimitrError(f"{path} is too large to read ({detail}; at most {prepare.MAX_PIXELS:,} pixels): "
                           "give a downscaled copy")
    return LimitrError(f"{path} {what.get(exc.reason, 'is not a readable image (JPEG or PNG)')}")


def original_grey(path: PathLike) -> np.ndarray:
    """The original image in 8-bit grey, full size (16-bit, colour and CMYK files converted)."""
    try:
        img, _, _ = prepare.decode(Path(path).read_bytes(), None, draft=False)
    except prepare.BadImage as exc:
        raise bad_image_error(path, exc) from None
    except OSError as exc:
        raise LimitrError(f"{path} cannot be read ({exc.strerror or exc})") from None
    return np.asarray(img, dtype=np.uint8)


def _cat_images(parts: list[ImageEmbeddings]) -> ImageEmbeddings:
    from limitr.eval.store import _pad_local

    length = max(p.local.shape[1] for p in parts)
    padded = [_pad_local(p.local, p.local_mask, length) for p in parts]
    return ImageEmbeddings(torch.cat([p.global_emb for p in parts]), torch.cat([x[0] for x in padded]),
                           torch.cat([x[1] for x in padded]), parts[0].grid)


def _cat_texts(parts: list[TextEmbeddings]) -> TextEmbeddings:
    from limitr.eval.store import _pad_local

    length = max(p.local.shape[1] for p in parts)
    padded = [_pad_local(p.local, p.local_mask, length) for p in parts]
    return TextEmbeddings(torch.cat([p.global_emb for p in parts]), torch.cat([x[0] for x in padded]),
                          torch.cat([x[1] for x in padded]))


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(exc).__name__


def load(model_dir: PathLike, *, tokenizer: Optional[PathLike] = None, image_size: Optional[int] = None,
         max_length: Optional[int] = None, device: str = "cpu", batch_size: int = 64) -> TrainedModel:
    """Load a trained model folder for use.

    model_dir: the train stage's output (``best/`` weights and ``config.json``) or a weights
    folder. tokenizer: the tokenizer folder the reports were tokenised with (default: a
    ``tokenizer/`` or ``tokens/tokenizer/`` folder beside the model, as ``dvc repro`` leaves
    them). image_size: the preprocess stage's square side (default: the run config's, else
    the side of the images in a ``shards/`` folder beside the model). max_length: the token
    limit (default: the tokenize report beside the tokenizer, else 97).
    """
    from limitr.eval.embed import load_model

    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise LimitrError(f"model folder {model_dir} does not exist: train one with `dvc repro train`")
    try:
        model, run_config = load_model(model_dir, device)
    except LimitrError as exc:
        raise LimitrError(_first_line(exc)) from exc
    except (RuntimeError, TypeError) as exc:  # weights of another shape, a config of another version
        raise LimitrError(f"cannot load the model in {model_dir}: its weights do not match its config "
                          f"(a model from another version?): {_first_line(exc)}") from exc
    weights = model_dir / "best" if (model_dir / "best").is_dir() else model_dir
    here = model_dir.resolve()
    if tokenizer is None:
        found = _find_upwards(here, "tokenizer") or _find_upwards(here, "tokens/tokenizer")
        if found is None:
            raise LimitrError(f"no tokenizer folder beside {model_dir}: give the tokenize stage's tokenizer/ folder")
        tokenizer = found
    if not Path(tokenizer).is_dir():
        raise LimitrError(f"tokenizer folder {tokenizer} does not exist")
    if max_length is None:
        report = Path(tokenizer).parent / "report.json"
        max_length = DEFAULT_MAX_LENGTH
        if report.is_file():
            max_length = int(json.loads(report.read_text()).get("max_length") or DEFAULT_MAX_LENGTH)
    if image_size is None:
        stored = (run_config.get("preprocess") or {}).get("image_size") or run_config.get("image_size")
        if stored:
            image_size = int(stored)
        else:
            shards = _find_upwards(here, "shards")
            image_size = image_size_from_shards(shards) if shards is not None else None
        if image_size is None:
            raise LimitrError(
                f"the image size of {model_dir}'s preprocess run is unknown: give image_size "
                "(params.yaml preprocess.image_size)"
            )
    return TrainedModel(model, run_config, weights, Path(tokenizer), int(image_size), int(max_length),
                        device, batch_size)
