"""What a study shows: findings and support devices, and how studies get them.

A :class:`Finding` names its type and the words that tell two studies with the same
classes apart (side, zone, size or grade, device kind). Rendering details (exact place,
shape) come from its ``seed``, so a finding looks the same in every image of its study.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

FINDING_TYPES: tuple[str, ...] = (
    "cardiomegaly", "pleural_effusion", "pneumothorax", "consolidation", "atelectasis",
    "edema", "nodule", "mass", "support_device",
)
DEVICE_KINDS: tuple[str, ...] = (
    "endotracheal_tube", "enteric_tube", "central_line", "pacemaker", "chest_tube",
)

#: The 5x200 class each single-finding study of that kind shows.
SINGLE_CLASS_FINDING: dict[str, str] = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Pleural Effusion": "pleural_effusion",
}


@dataclass(frozen=True)
class Finding:
    """One finding of a study.

    ``side``: left | right | bilateral (the patient's side). ``zone``: upper | middle |
    lower | apical | basal | retrocardiac | perihilar. ``size``: small | moderate | large
    (effusion, pneumothorax, consolidation extent). ``grade``: mild | moderate | severe
    (cardiomegaly, edema). ``size_mm``: nodule or mass diameter. ``device``: one of
    :data:`DEVICE_KINDS`, with ``variant`` (the vein of a central line, pacemaker chambers,
    ``tip_Ncm``: an endotracheal tube tip N cm above the carina).
    ``described_as``: consolidation | pneumonia | opacity, how the report names a
    consolidation. ``certainty``: definite | uncertain (hedged in the report).
    ``depth``: -1 anterior .. +1 posterior, where it projects on a lateral view.
    """

    type: str
    side: Optional[str] = None
    zone: Optional[str] = None
    size: Optional[str] = None
    grade: Optional[str] = None
    size_mm: Optional[int] = None
    device: Optional[str] = None
    variant: Optional[str] = None
    described_as: Optional[str] = None
    certainty: str = "definite"
    depth: float = 0.0
    seed: int = 0

    def public(self) -> dict:
        """The ground-truth fields (rendering details left out)."""
        out = asdict(self)
        out.pop("seed")
        out.pop("depth")
        return out

    @property
    def sides(self) -> tuple[int, ...]:
        """Image sides as frontal rendering uses them: -1 patient right, +1 patient left."""
        return {"right": (-1,), "left": (1,), "bilateral": (-1, 1)}.get(self.side or "", ())


def _side(rng: np.random.Generator, bilateral: float = 0.0) -> str:
    r = rng.random()
    if r < bilateral:
        return "bilateral"
    return "left" if r < bilateral + (1.0 - bilateral) / 2 else "right"


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def make_finding(kind: str, rng: np.random.Generator, *, has_lateral: bool,
                 hedge: float = 0.0, described_as: Optional[str] = None) -> Finding:
    """A random finding of ``kind`` (a :data:`FINDING_TYPES` name, without devices).

    ``hedge`` is the chance the report words it as uncertain, where that wording exists;
    small effusions are drawn only for studies with a lateral view (they show only there).
    """
    seed = _seed(rng)
    uncertain = rng.random() < hedge
    if kind == "cardiomegaly":
        grade = str(rng.choice(["mild", "moderate", "severe"], p=[0.5, 0.35, 0.15]))
        return Finding("cardiomegaly", grade=grade, seed=seed)
    if kind == "pleural_effusion":
        side = _side(rng, bilateral=0.3)
        sizes, p = (["small", "moderate", "large"], [0.4, 0.4, 0.2]) if has_lateral else (["moderate", "large"], [0.7, 0.3])
        size = str(rng.choice(sizes, p=p))
        return Finding("pleural_effusion", side=side, zone="basal", size=size,
                       certainty="uncertain" if uncertain and size == "small" else "definite",
                       depth=0.8, seed=seed)
    if kind == "pneumothorax":
        size = str(rng.choice(["small", "moderate", "large"], p=[0.55, 0.3, 0.15]))
        return Finding("pneumothorax", side=_side(rng), zone="apical" if size == "small" else "upper",
                       size=size, seed=seed)
    if kind == "consolidation":
        side = _side(rng)
        zone = str(rng.choice(["upper", "middle", "lower"], p=[0.25, 0.25, 0.5]))
        described = described_as or str(rng.choice(["consolidation", "pneumonia", "opacity"], p=[0.45, 0.35, 0.2]))
        depth = {"upper": float(rng.uniform(-0.3, 0.6)), "middle": -0.55, "lower": 0.6}[zone]
        return Finding("consolidation", side=side, zone=zone,
                       size=str(rng.choice(["small", "large"], p=[0.6, 0.4])),
                       described_as=described,
                       certainty="uncertain" if uncertain and described == "pneumonia" else "definite",
                       depth=depth, seed=seed)
    if kind == "atelectasis":
        side = _side(rng, bilateral=0.3)
        zone = "retrocardiac" if side == "left" and rng.random() < 0.3 else "basal"
        return Finding("atelectasis", side=side, zone=zone,
                       grade=str(rng.choice(["mild", "moderate"], p=[0.6, 0.4])),
                       certainty="uncertain" if uncertain else "definite", depth=0.7, seed=seed)
    if kind == "edema":
        grade = str(rng.choice(["mild", "moderate", "severe"], p=[0.45, 0.4, 0.15]))
        return Finding("edema", side="bilateral", zone="perihilar", grade=grade,
                       certainty="uncertain" if uncertain and grade == "mild" else "definite", seed=seed)
    if kind in ("nodule", "mass"):
        size_mm = int(rng.integers(8, 29)) if kind == "nodule" else int(rng.integers(30, 71))
        return Finding(kind, side=_side(rng), zone=str(rng.choice(["upper", "middle", "lower"])),
                       size_mm=size_mm, depth=float(rng.uniform(-0.6, 0.7)),
                       certainty="uncertain" if uncertain and kind == "nodule" and size_mm < 15 else "definite",
                       seed=seed)
    raise ValueError(f"unknown finding kind {kind!r}")


def make_device(kind: str, rng: np.random.Generator, side_hint: Optional[str] = None) -> Finding:
    """A support device of ``kind``; a chest tube goes on ``side_hint`` when given."""
    seed = _seed(rng)
    if kind == "central_line":
        variant = str(rng.choice(["internal_jugular", "subclavian"], p=[0.65, 0.35]))
        side = "right" if rng.random() < 0.7 else "left"
        return Finding("support_device", side=side, device=kind, variant=variant, seed=seed)
    if kind == "pacemaker":
        side = "left" if rng.random() < 0.85 else "right"
        variant = str(rng.choice(["dual_chamber", "single_chamber"], p=[0.7, 0.3]))
        return Finding("support_device", side=side, device=kind, variant=variant, seed=seed)
    if kind == "chest_tube":
        return Finding("support_device", side=side_hint or _side(rng), device=kind, seed=seed)
    if kind == "endotracheal_tube":
        return Finding("support_device", device=kind, variant=f"tip_{int(rng.integers(3, 7))}cm", seed=seed)
    return Finding("support_device", device=kind, seed=seed)


_MULTI_WEIGHTS = {
    "cardiomegaly": 0.2, "pleural_effusion": 0.22, "consolidation": 0.17, "atelectasis": 0.17,
    "edema": 0.08, "pneumothorax": 0.06, "nodule": 0.06, "mass": 0.04,
}


def sample_findings(rng: np.random.Generator, kind: str, *, frontal_view: Optional[str],
                    has_lateral: bool, single_class: Optional[str] = None) -> list[Finding]:
    """The findings of one study.

    ``kind``: normal | single (one of the five 5x200 classes, ``single_class``, definite,
    no device) | single_other (pneumothorax, nodule, mass, pneumonia or an opacity) | multi.
    ``frontal_view``: PA, AP or None (lateral only); AP studies get devices more often.
    """
    ap = frontal_view == "AP"
    if kind == "single":
        finding_kind = SINGLE_CLASS_FINDING[single_class or "Cardiomegaly"]
        described = "consolidation" if finding_kind == "consolidation" else None
        return [make_finding(finding_kind, rng, has_lateral=has_lateral, described_as=described)]
    if kind == "normal":
        return _devices(rng, 0.2 if ap else 0.03, [])
    if kind == "single_other":
        choice = str(rng.choice(["pneumothorax", "nodule", "mass", "pneumonia", "opacity"],
                                p=[0.25, 0.25, 0.12, 0.23, 0.15]))
        if choice in ("pneumonia", "opacity"):
            return [make_finding("consolidation", rng, has_lateral=has_lateral, described_as=choice)]
        return [make_finding(choice, rng, has_lateral=has_lateral)]
    # multi: either the heart-failure pattern or two or three independent findings
    findings: list[Finding] = []
    if rng.random() < 0.2:
        findings.append(make_finding("cardiomegaly", rng, has_lateral=has_lateral))
        findings.append(make_finding("edema", rng, has_lateral=has_lateral, hedge=0.2))
        if rng.random() < 0.7:
            eff = make_finding("pleural_effusion", rng, has_lateral=has_lateral, hedge=0.2)
            findings.append(Finding(**{**eff.__dict__, "side": "bilateral"}))
    else:
        names = list(_MULTI_WEIGHTS)
        weights = np.array([_MULTI_WEIGHTS[n] for n in names])
        count = int(rng.choice([2, 3], p=[0.7, 0.3]))
        for name in rng.choice(names, size=count, replace=False, p=weights / weights.sum()):
            findings.append(make_finding(str(name), rng, has_lateral=has_lateral, hedge=0.18))
        # a pneumothorax and an effusion on the same side would be a hydropneumothorax
        ptx = [f for f in findings if f.type == "pneumothorax"]
        eff = [f for f in findings if f.type == "pleural_effusion"]
        if ptx and eff and eff[0].side in (ptx[0].side, "bilateral"):
            findings.remove(eff[0])
        if "nodule" in [f.type for f in findings] and "mass" in [f.type for f in findings]:
            findings = [f for f in findings if f.type != "nodule"]
    side_hint = next((f.side for f in findings if f.type in ("pneumothorax", "pleural_effusion")
                      and f.side in ("left", "right")), None)
    return _devices(rng, 0.6 if ap else 0.12, findings, side_hint)


def _devices(rng: np.random.Generator, chance: float, findings: list[Finding],
             side_hint: Optional[str] = None) -> list[Finding]:
    if rng.random() >= chance:
        return findings
    kinds = ["endotracheal_tube", "enteric_tube", "central_line", "pacemaker"]
    if side_hint:
        kinds.append("chest_tube")
    count = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
    picked = rng.choice(kinds, size=min(count, len(kinds)), replace=False)
    if "pacemaker" in picked and len(picked) > 1 and rng.random() < 0.7:
        picked = [k for k in picked if k != "pacemaker"]
    return findings + [make_device(str(k), rng, side_hint) for k in sorted(picked, key=DEVICE_KINDS.index)]
