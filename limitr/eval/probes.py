"""Ground-truth probes of the synthetic data: does the model know where a finding is, and
does it see what only the lateral view shows?

The synthesize stage records every study's findings with side, zone and size
(``ground_truth.jsonl``); the method's two kinds of domain knowledge have a measurable
target there that the report-level tasks average away:

- ``side``: for each test study with a left- or right-sided finding of a type in
  :data:`~limitr.eval.prompts.SIDE_PROBE_TYPES` (stated as definite, and the study's only
  finding of that type), is the image's score for the query with the true side word above
  its score for the same query with the other side? Accuracy per finding type, and the mean
  over types (chance 0.5). Local alignment with the positional encoding is what should
  get this right.
- ``zone``: the same with upper against lower, for consolidation, nodule and mass.
- ``effusion``: AUROC of (mean positive minus mean negative prompt score) for studies with a
  small effusion against studies without one, and for moderate or large effusions against
  the same negatives. Small effusions show on the lateral only, so the lateral view should
  lift the first figure and hardly the second.

Real MIMIC-CXR has no such record, so the probes are skipped there (``evaluate.ground_truth``
null).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from limitr.errors import LimitrError
from limitr.eval import metrics as M
from limitr.eval.prompts import EFFUSION_PROMPTS, SIDE_PROBE_TYPES, ZONE_PROBE_TYPES, probe_prompt

#: One probe question: the row of the study, the finding type, the true and the wrong query.
Item = tuple[int, str, str, str]

_OTHER_SIDE = {"left": "right", "right": "left"}
_OTHER_ZONE = {"upper": "lower", "lower": "upper"}


def read_ground_truth(path: Path) -> dict[int, dict]:
    """study_id -> {"findings": [...], "lateral": whether the study has a lateral image},
    from the synthesize stage's ground_truth.jsonl."""
    path = Path(path)
    if not path.is_file():
        raise LimitrError(f"ground truth file {path} does not exist (evaluate.ground_truth; null skips the probes)")
    out: dict[int, dict] = {}
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                views = {str(image.get("view", "")).upper() for image in record.get("images") or []}
                out[int(record["study_id"])] = {"findings": list(record.get("findings") or []),
                                                "lateral": bool(views & {"LATERAL", "LL"})}
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise LimitrError(f"{path} line {number} is not a ground-truth record: {exc}") from exc
    return out


def _of_type(findings: Sequence[Mapping], kind: str) -> list[Mapping]:
    return [f for f in findings if f.get("type") == kind]


def probe_items(truth: Mapping[int, Mapping], study_ids: Sequence[int]) -> tuple[list[Item], list[Item]]:
    """(side items, zone items) for the studies ``study_ids`` (rows in that order)."""
    side: list[Item] = []
    zone: list[Item] = []
    for row, study in enumerate(study_ids):
        findings = (truth.get(int(study)) or {}).get("findings")
        if not findings:
            continue
        for kind in SIDE_PROBE_TYPES:
            of_kind = _of_type(findings, kind)
            if len(of_kind) != 1 or of_kind[0].get("certainty") != "definite":
                continue
            f = of_kind[0]
            s, z = f.get("side"), f.get("zone")
            if s not in _OTHER_SIDE or (kind == "atelectasis" and z == "retrocardiac"):
                continue
            side.append((row, kind, probe_prompt(kind, s, z), probe_prompt(kind, _OTHER_SIDE[s], z)))
            if kind in ZONE_PROBE_TYPES and z in _OTHER_ZONE:
                zone.append((row, kind, probe_prompt(kind, s, z), probe_prompt(kind, s, _OTHER_ZONE[z])))
    return side, zone


def pair_accuracy(scores: torch.Tensor, columns: Mapping[str, int], items: Sequence[Item]) -> dict:
    """Share of items whose true query outscores the wrong one (ties count as wrong).

    scores: (n_studies, n_prompts); columns: prompt text -> column. Returns
    {"accuracy": {"mean" (over types), <type>...}, "n": {"total", <type>...}, "chance": 0.5}.
    """
    hits: dict[str, list[bool]] = {}
    for row, kind, good, bad in items:
        hits.setdefault(kind, []).append(bool(scores[row, columns[good]] > scores[row, columns[bad]]))
    per_type = {kind: float(np.mean(v)) for kind, v in hits.items()}
    mean = float(np.mean(list(per_type.values()))) if per_type else None
    return {"accuracy": {"mean": mean, **per_type},
            "n": {"total": len(items), **{k: len(v) for k, v in hits.items()}}, "chance": 0.5}


def effusion_labels(truth: Mapping[int, Mapping], study_ids: Sequence[int]) -> dict[str, np.ndarray]:
    """Per study: 1 positive, 0 negative, -1 left out, for the "small" and "moderate_or_large"
    effusion probes. Negatives have no effusion at all; a study with an uncertain effusion is
    left out of both."""
    small = np.full(len(study_ids), -1.0)
    larger = np.full(len(study_ids), -1.0)
    for row, study in enumerate(study_ids):
        record = truth.get(int(study))
        if record is None:
            continue
        eff = _of_type(record["findings"], "pleural_effusion")
        if not eff:
            small[row] = larger[row] = 0.0
        elif all(f.get("certainty") == "definite" for f in eff):
            if any(f.get("size") in ("moderate", "large") for f in eff):
                larger[row] = 1.0
            else:
                small[row] = 1.0
    return {"small": small, "moderate_or_large": larger}


def effusion_auroc(scores: torch.Tensor, columns: Mapping[str, int], labels: Mapping[str, np.ndarray]) -> dict:
    """AUROC of the effusion prompts per size group (None where a group is empty)."""
    positive, negative = EFFUSION_PROMPTS
    pos = scores[:, [columns[p] for p in positive]].mean(1)
    neg = scores[:, [columns[p] for p in negative]].mean(1)
    out: dict = {"auroc": {}, "n": {}, "chance": 0.5}
    for name, y in labels.items():
        result = M.zero_shot_auroc(pos, neg, y)
        out["auroc"][name] = result["auroc"]
        out["n"][name] = {"positive": result["n_positive"], "negative": result["n_negative"]}
    return out


def probe_metrics(scores: torch.Tensor, prompts: Sequence[str], study_ids: Sequence[int],
                  truth: Mapping[int, Mapping]) -> dict:
    """All three probes from the (n_studies, n_prompts) score matrix of the test images
    against the embedded prompts (``prompts``, in column order).
    The effusion probe is also reported on the studies with a lateral image (the only ones
    a small effusion is drawn in), whether or not the model reads the lateral.
    """
    columns = {p: i for i, p in enumerate(prompts)}
    side, zone = probe_items(truth, study_ids)
    wanted = {p for item in side + zone for p in item[2:]} | set(EFFUSION_PROMPTS[0]) | set(EFFUSION_PROMPTS[1])
    missing = sorted(wanted - set(columns))
    if missing:
        raise LimitrError(f"prompt embeddings lack {missing[:3]}: re-run the embed stage")
    known = sum(1 for s in study_ids if int(s) in truth)
    labels = effusion_labels(truth, study_ids)
    out = {
        "n_studies": len(study_ids),
        "n_with_ground_truth": known,
        "side": pair_accuracy(scores, columns, side),
        "zone": pair_accuracy(scores, columns, zone),
        "effusion": effusion_auroc(scores, columns, labels),
    }
    lateral = np.array([bool((truth.get(int(s)) or {}).get("lateral")) for s in study_ids], dtype=bool)
    only = {k: np.where(lateral, v, -1.0) for k, v in labels.items()}
    out["effusion"]["with_lateral"] = effusion_auroc(scores, columns, only)
    return out
