"""Typed results of the evaluation tasks, and the one function that writes them as JSON.

Each task returns a dataclass; :func:`to_json` turns any of them into the JSON-ready dict
of its metrics file and :func:`write_json` writes it (atomically). Field metadata steer the
conversion:

- ``inline``: a nested dataclass or dict whose keys are merged into the parent (the
  retrieval protocols ``full`` / ``block1000`` sit at the top level of retrieval.json);
- ``private``: data the task hands to the plots (curves, example images), never written;
- fields whose value is ``None`` are left out when they carry ``optional``.

Floats that are NaN or infinite become ``null``; numpy scalars and arrays become numbers
and lists.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from limitr import files


def private(default: Any = None) -> Any:
    """A field the plots read and the metrics file leaves out."""
    return field(default=default, metadata={"private": True}, compare=False, repr=False)


def optional(default: Any = None) -> Any:
    """A field written only when it is not None."""
    return field(default=default, metadata={"optional": True})


def inline(**kwargs: Any) -> Any:
    """A field whose keys are merged into the parent object."""
    return field(metadata={"inline": True}, **kwargs)


@dataclass
class Skipped:
    """A task (or part of one) that did not run, and why: ``{"skipped": reason}``."""

    skipped: str


# --- retrieval -----------------------------------------------------------------------------


@dataclass(kw_only=True)
class RetrievalFigures:
    """One protocol's figures: R@K, medR, meanR, MRR per direction (``i2t``, ``t2i``) and
    their r_sum; the block protocol adds its block counts, the headline protocols the chance
    recalls of a random ranking."""

    n_candidates: int
    n_blocks: Optional[int] = optional()
    n_studies_dropped: Optional[int] = optional()
    i2t: dict[str, float]
    t2i: dict[str, float]
    r_sum: float
    chance: Optional[dict[str, float]] = optional()
    #: 95% bootstrap intervals of the recalls and r_sum (:mod:`limitr.eval.bootstrap`), where drawn.
    ci95: Optional[dict[str, Any]] = optional()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RetrievalFigures":
        """From :mod:`limitr.eval.metrics`' summaries (which training's validation also reads)."""
        return cls(**dict(values))


@dataclass(kw_only=True)
class RerankResult:
    """The global top-K re-ordered by the total score, per protocol (``full``, ``block<n>``)."""

    rule: str
    top_k: int
    protocols: dict[str, RetrievalFigures] = inline()


@dataclass(kw_only=True)
class RetrievalResult:
    """retrieval.json: the full and block protocols (top level), each score component alone
    (``by_score``) and the optional re-ranking. ``curves``: recall at K = 1.. for the plots."""

    protocols: dict[str, RetrievalFigures] = inline()
    by_score: dict[str, RetrievalFigures]
    rerank: Optional[RerankResult] = optional()
    curves: dict[str, list] = private(None)
    #: study ids and each study's rank of its match per direction and score (ranks.tsv).
    ranks: Optional[dict[str, Any]] = private(None)


# --- class retrieval -------------------------------------------------------------------------


@dataclass(kw_only=True)
class ClassRetrievalResult:
    """class_retrieval.json: Precision@K per class and mean, text-to-image (``t2i``) and
    image-to-text (``i2t``, or why it was skipped). ``curves``: precision at K for the plots."""

    source: str
    n_images: int
    n_per_class: dict[str, int]
    t2i: dict[str, dict[str, float]]
    i2t: Union[dict[str, dict[str, float]], Skipped]
    n_reports: Optional[int] = optional()
    curves: dict[str, list] = private(None)


# --- zero-shot classification ----------------------------------------------------------------


@dataclass(kw_only=True)
class ZeroShotResult:
    """zero_shot.json: AUROC per CheXpert observation and their mean, the label counts, and
    the observations left out (no positive or no negative image)."""

    auroc: dict[str, Optional[float]]
    n_images: int
    counts: dict[str, dict[str, int]]
    skipped_classes: dict[str, str]
    #: 95% bootstrap intervals of the AUROCs (:mod:`limitr.eval.bootstrap`), where drawn.
    auroc_ci95: Optional[dict[str, Any]] = optional()
    #: study ids and each observation's margin and label (zero_shot_margins.tsv).
    margins: Optional[dict[str, Any]] = private(None)


# --- probes ----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ProbesResult:
    """probes.json: the synthetic data's side, zone and effusion-size probes
    (:mod:`limitr.eval.probes`), with the ground-truth file they were read from."""

    source: str
    n_studies: int
    n_with_ground_truth: int
    side: dict[str, Any]
    zone: dict[str, Any]
    effusion: dict[str, Any]


# --- grounding -------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ThresholdChoice:
    """The threshold of the headline mIoU and where it came from: ``validation`` (the one that
    maximises the mean IoU over the grounding phrases of the validation split's studies) or
    ``fixed`` (no such phrase, so the fixed value is used)."""

    value: float
    chosen_on: str
    n_phrases: int


@dataclass(kw_only=True)
class GroundingFigures:
    """One map's figures over phrases: each ``{"mean", <category>...}`` (the mean is the
    unweighted mean over categories, as MS-CXR results are reported).

    ``miou``: IoU at the threshold of ``miou_threshold`` (chosen on validation phrases, never
    on the phrases it is averaged over: those are left out of it); ``miou_over_thresholds``:
    a phrase's IoU averaged over all ``thresholds``, a threshold-free figure over every phrase.
    """

    cnr: dict[str, Optional[float]]
    miou: dict[str, Optional[float]]
    miou_over_thresholds: dict[str, Optional[float]]
    pointing_game: dict[str, Optional[float]]
    pointing_game_chance: dict[str, Optional[float]]
    miou_threshold: ThresholdChoice
    thresholds: list[float]
    n_phrases: dict[str, int]
    n_undefined: int


@dataclass(kw_only=True)
class PriorFigures:
    """The figures of a map's prior (its mean over all phrases: phrase and image ignored), its
    ``miou`` at the threshold of its map."""

    map: str
    cnr: dict[str, Optional[float]]
    miou: dict[str, Optional[float]]
    miou_over_thresholds: dict[str, Optional[float]]
    pointing_game: dict[str, Optional[float]]


@dataclass(kw_only=True)
class Significance:
    """How sure a map's pointing game is, pooled over phrases, against chance and against its
    prior (see :func:`limitr.eval.grounding.significance`)."""

    phrases: int
    hits: int
    chance_hits: float
    p_vs_chance: float
    prior_hits: int
    map_only: int
    prior_only: int
    p_vs_prior: float
    cnr_minus_prior: Optional[float]
    cnr_above_prior_share: Optional[float]


@dataclass(kw_only=True)
class MapResult:
    """One kind of grounding map: its figures, its prior's, and the significance of its
    pointing game (:func:`limitr.eval.grounding.significance`)."""

    map: str
    figures: GroundingFigures = inline()
    prior: PriorFigures
    significance: Significance


@dataclass(kw_only=True)
class GroundingExample:
    """One phrase drawn in the figures: its image (PNG of the padded square), geometry,
    boxes and maps in original pixels."""

    phrase_id: int
    text: str
    boxes: list
    image: bytes
    geometry: Any
    maps: dict[str, np.ndarray]


@dataclass(kw_only=True)
class GroundingResult:
    """grounding.json: the attention map's figures at the top level, the cosine map's under
    ``cosine``. ``examples``: one phrase per category for the figures."""

    attention: MapResult = inline()
    cosine: MapResult
    examples: dict[str, GroundingExample] = private(None)


TaskResult = Union[RetrievalResult, ClassRetrievalResult, ZeroShotResult, ProbesResult, GroundingResult, Skipped]


# --- JSON --------------------------------------------------------------------------------------


def to_json(value: Any) -> Any:
    """A result (or any part of one) as JSON-ready data (see the module docstring)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.metadata.get("private") or (item is None and f.metadata.get("optional")):
                continue
            converted = to_json(item)
            if f.metadata.get("inline"):
                out.update(converted)
            else:
                out[f.name] = converted
        return out
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def write_json(path: Path, result: Any) -> None:
    """Write a result's metrics file: :func:`to_json`, then a temporary name and a rename."""
    files.write_json(path, to_json(result))
