"""The synthetic ground-truth probes: which studies and queries they use, and known answers
on crafted score matrices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from limitr.errors import LimitrError
from limitr.eval.probes import effusion_labels, probe_items, probe_metrics, read_ground_truth
from limitr.eval.prompts import EFFUSION_PROMPTS, all_prompts, probe_prompt, probe_prompts


def finding(kind: str, side=None, zone=None, size=None, certainty="definite") -> dict:
    return {"type": kind, "side": side, "zone": zone, "size": size, "certainty": certainty}


def record(findings, lateral=True) -> dict:
    views = [{"view": "PA"}] + ([{"view": "LATERAL"}] if lateral else [])
    return {"findings": findings, "lateral": lateral, "images": views}


TRUTH = {
    1: record([finding("pleural_effusion", "left", "basal", "small")]),
    2: record([finding("consolidation", "right", "upper", "large"), finding("cardiomegaly")]),
    3: record([]),  # normal
    4: record([finding("pleural_effusion", "bilateral", "basal", "moderate")]),  # no side question
    5: record([finding("nodule", "left", "lower"), finding("atelectasis", "left", "retrocardiac")]),
    6: record([finding("pneumothorax", "right", "apical", "small", certainty="uncertain")]),
    7: record([finding("pleural_effusion", "right", "basal", "large")], lateral=False),
    8: record([], lateral=False),
}


def test_probe_prompts_are_embedded_with_the_others() -> None:
    prompts = all_prompts()
    assert set(probe_prompts()) <= set(prompts)
    assert probe_prompt("pleural_effusion", "left") != probe_prompt("pleural_effusion", "right")
    assert probe_prompt("nodule", "left", "upper") != probe_prompt("nodule", "left", "lower")
    # side and zone words are the only difference between the queries a probe compares
    a, b = probe_prompt("consolidation", "left", "upper").split(), probe_prompt("consolidation", "right", "upper").split()
    assert [x for x, y in zip(a, b) if x != y] == ["left"]
    with pytest.raises(ValueError):
        probe_prompt("cardiomegaly", "left")


def test_items_pick_one_sided_definite_findings() -> None:
    ids = list(TRUTH)
    side, zone = probe_items(TRUTH, ids)
    by_row = {(ids[row], kind): (good, bad) for row, kind, good, bad in side}
    assert set(by_row) == {(1, "pleural_effusion"), (2, "consolidation"), (5, "nodule"), (7, "pleural_effusion")}
    assert by_row[(1, "pleural_effusion")] == ("left pleural effusion", "right pleural effusion")
    assert {(ids[r], k) for r, k, _, _ in zone} == {(2, "consolidation"), (5, "nodule")}
    good, bad = next((g, b) for r, k, g, b in zone if ids[r] == 5)
    assert good == probe_prompt("nodule", "left", "lower") and bad == probe_prompt("nodule", "left", "upper")


def test_effusion_labels_by_size() -> None:
    labels = effusion_labels(TRUTH, list(TRUTH) + [99])  # 99: not in the ground truth
    assert labels["small"].tolist() == [1, 0, 0, -1, 0, 0, -1, 0, -1]
    assert labels["moderate_or_large"].tolist() == [-1, 0, 0, 1, 0, 0, 1, 0, -1]


def scores_favouring(prompts: list[str], ids: list[int], truth: bool) -> torch.Tensor:
    """A score matrix in which every study prefers its true queries (or the wrong ones)."""
    col = {p: i for i, p in enumerate(prompts)}
    s = torch.zeros(len(ids), len(prompts))
    side, zone = probe_items(TRUTH, ids)
    for row, _, good, bad in side + zone:
        s[row, col[good if truth else bad]] += 1.0
    labels = effusion_labels(TRUTH, ids)
    for row in range(len(ids)):
        positive = labels["small"][row] == 1 or labels["moderate_or_large"][row] == 1
        for p in EFFUSION_PROMPTS[0 if positive == truth else 1]:
            s[row, col[p]] += 2.0
    return s


@pytest.mark.parametrize("truth", [True, False])
def test_known_answers(truth: bool) -> None:
    prompts, ids = all_prompts(), list(TRUTH)
    out = probe_metrics(scores_favouring(prompts, ids, truth), prompts, ids, TRUTH)
    want = 1.0 if truth else 0.0
    assert out["side"]["accuracy"]["mean"] == want and out["zone"]["accuracy"]["mean"] == want
    assert out["side"]["n"] == {"total": 4, "pleural_effusion": 2, "consolidation": 1, "nodule": 1}
    assert out["effusion"]["auroc"] == {"small": want, "moderate_or_large": want}
    assert out["effusion"]["n"]["small"] == {"positive": 1, "negative": 5}
    assert out["effusion"]["with_lateral"]["n"]["moderate_or_large"] == {"positive": 1, "negative": 4}
    assert out["n_with_ground_truth"] == len(ids)


def test_ties_count_as_wrong_and_missing_prompts_are_named() -> None:
    prompts, ids = all_prompts(), list(TRUTH)
    out = probe_metrics(torch.zeros(len(ids), len(prompts)), prompts, ids, TRUTH)
    assert out["side"]["accuracy"]["mean"] == 0.0
    assert out["effusion"]["auroc"]["small"] == 0.5
    with pytest.raises(LimitrError, match="re-run the embed stage"):
        probe_metrics(torch.zeros(len(ids), 3), prompts[:3], ids, TRUTH)


def test_read_ground_truth(tmp_path: Path) -> None:
    path = tmp_path / "ground_truth.jsonl"
    path.write_text("\n".join(json.dumps({"study_id": k, **v}) for k, v in TRUTH.items()) + "\n\n")
    truth = read_ground_truth(path)
    assert set(truth) == set(TRUTH)
    assert truth[7]["lateral"] is False and truth[1]["lateral"] is True
    assert truth[2]["findings"][0]["side"] == "right"
    path.write_text('{"study_id": 1}\nnot json\n')
    with pytest.raises(LimitrError, match="line 2"):
        read_ground_truth(path)
    with pytest.raises(LimitrError, match="does not exist"):
        read_ground_truth(tmp_path / "absent.jsonl")


def test_probes_on_the_synthetic_generator_output(tmp_path: Path) -> None:
    """The generator's real ground truth yields side and zone questions whose true query
    names the finding's side."""
    from limitr.synthetic import generate

    generate(tmp_path / "syn", n_studies=60, seed=3, image_scale=0.05, workers=1)
    truth = read_ground_truth(tmp_path / "syn" / "ground_truth.jsonl")
    ids = sorted(truth)
    side, _ = probe_items(truth, ids)
    assert side
    for row, kind, good, bad in side:
        f = next(f for f in truth[ids[row]]["findings"] if f["type"] == kind)
        assert f["side"] in good.split() and f["side"] not in bad.split()
    labels = effusion_labels(truth, ids)
    assert np.isin(labels["small"], [-1, 0, 1]).all()
