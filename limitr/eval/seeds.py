"""Seed tables: the ``dvc exp run --queue`` commands of N training seeds of one setting, and
the mean and standard deviation of each headline figure over the finished experiments, read
from ``dvc exp show --json``.

The experiments of a table are named ``<name>-s<seed>``; the summary picks them by that name
from the JSON document (a list of revisions, each with its ``experiments``: ranges of
``revs`` whose ``data.metrics`` holds the files' ``data``), so nothing else in the experiment
list mixes in.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterator, Mapping, Optional, Sequence

from limitr.errors import LimitrError

#: The metrics file with the headline figures (the evaluate stage's summary.json).
SUMMARY_PATH = "metrics/summary.json"
#: The evaluate stage's retrieval figures, where each part of the combined score has its own.
RETRIEVAL_PATH = "metrics/retrieval.json"
#: The figures :func:`score_parts` adds to a run: each part of the combined score alone, and
#: the combined score's gain over its global part (the question of the local alignment).
PART_KEYS: tuple[str, ...] = (
    "global_i2t_R@10", "global_t2i_R@10", "global_r_sum",
    "local_i2t_R@10", "local_t2i_R@10", "local_r_sum",
    "gain_i2t_R@10", "gain_t2i_R@10", "gain_r_sum",
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def experiment_name(name: str, seed: int) -> str:
    return f"{name}-s{seed}"


def queue_commands(name: str, seeds: Sequence[int], sets: Sequence[str] = ()) -> list[list[str]]:
    """One ``dvc exp run --queue`` argv per seed: ``-S train.seed=K`` and the given ``-S``
    settings (``section.key=value``), named ``<name>-s<K>``."""
    if not _NAME.match(name):
        raise LimitrError(f"seed table name {name!r} must be letters, digits, '.', '_' or '-' (a git ref name)")
    for item in sets:
        if "=" not in item or item.startswith("train.seed="):
            raise LimitrError(f"-S {item!r}: give settings as section.key=value, and not train.seed (the table sets it)")
    commands = []
    for seed in seeds:
        argv = ["dvc", "exp", "run", "--queue", "--name", experiment_name(name, seed), "-S", f"train.seed={seed}"]
        for item in sets:
            argv += ["-S", item]
        commands.append(argv)
    return commands


def check_settings(params: Mapping[str, Any], sets: Sequence[str], source: str = "params.yaml") -> None:
    """Refuse, in one line, ``-S section.key=value`` settings that ``params`` (a params file's
    contents) would not validate with: a misspelt key fails here, before any experiment is
    queued, instead of in every queued run. Values are read as YAML, as ``dvc exp run -S`` does."""
    import copy

    import yaml

    from limitr.settings import validate_settings

    data = copy.deepcopy(dict(params or {}))
    for item in sets:
        key, _, text = item.partition("=")
        *path, leaf = key.strip().split(".")
        node = data
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise LimitrError(f"-S {item!r}: {part} is not a section")
        node[leaf] = yaml.safe_load(text) if text.strip() else None
    validate_settings(data, f"{source} with -S {' -S '.join(sets)}")


def _states(document: Any) -> Iterator[Mapping[str, Any]]:
    """Every experiment state of a ``dvc exp show --json`` document, baselines included."""
    for state in document if isinstance(document, list) else []:
        if not isinstance(state, Mapping):
            continue
        yield state
        for exp_range in state.get("experiments") or []:
            revs = exp_range.get("revs") or [] if isinstance(exp_range, Mapping) else []
            for rev in revs:
                if isinstance(rev, Mapping):
                    yield {**rev, "_executor": exp_range.get("executor") or {}}


def _file_data(section: Any, path: str) -> Optional[Mapping[str, Any]]:
    entry = (section or {}).get(path) if isinstance(section, Mapping) else None
    data = entry.get("data") if isinstance(entry, Mapping) else None
    return data if isinstance(data, Mapping) else None


def collect(document: Any, name: str) -> dict:
    """The finished experiments of table ``name``: ``{"runs": [{"name", "rev", "seed",
    "metrics"}], "unfinished": [names: queued, running, failed or without metrics]}``."""
    pattern = re.compile(rf"^{re.escape(name)}-s(\d+)$")
    runs, unfinished, seen = [], [], set()
    for state in _states(document):
        exp_name = state.get("name") or ""
        match = pattern.match(exp_name)
        if not match or exp_name in seen:
            continue
        seen.add(exp_name)
        data = state.get("data") or {}
        metrics = _file_data(data.get("metrics"), SUMMARY_PATH)
        status = (state.get("_executor") or {}).get("state")
        if state.get("error") or metrics is None or status in ("queued", "running", "failed"):
            unfinished.append(exp_name)
            continue
        params = _file_data(data.get("params"), "params.yaml") or {}
        seed = (params.get("train") or {}).get("seed")
        runs.append({"name": exp_name, "rev": state.get("rev"), "seed": int(match.group(1)) if seed is None else seed,
                     "metrics": dict(metrics)})
    runs.sort(key=lambda r: r["seed"])
    return {"runs": runs, "unfinished": sorted(unfinished)}


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, sd


def score_parts(retrieval: Any) -> dict[str, float]:
    """:data:`PART_KEYS` from a run's retrieval.json (percent, 2 decimals); empty when the
    file has no per-score figures (a model without a local score)."""
    if not isinstance(retrieval, Mapping):
        return {}
    full, by_score = retrieval.get("full") or {}, retrieval.get("by_score") or {}
    out: dict[str, float] = {}
    try:
        for score in ("global", "local"):
            part = by_score[score]
            out[f"{score}_i2t_R@10"] = float(part["i2t"]["R@10"])
            out[f"{score}_t2i_R@10"] = float(part["t2i"]["R@10"])
            out[f"{score}_r_sum"] = float(part["r_sum"])
        out["gain_i2t_R@10"] = float(full["i2t"]["R@10"]) - out["global_i2t_R@10"]
        out["gain_t2i_R@10"] = float(full["t2i"]["R@10"]) - out["global_t2i_R@10"]
        out["gain_r_sum"] = float(full["r_sum"]) - out["global_r_sum"]
    except (KeyError, TypeError, ValueError):
        return {}
    return {k: round(v, 2) for k, v in out.items()}


def summarise(runs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[dict]:
    """Per headline figure present in every run: ``{"figure", "mean", "sd", "min", "max", "n"}``.
    Interval bounds (``*_lo`` / ``*_hi``) are per run and left out."""
    if not runs:
        return []
    rows = []
    for key in keys:
        if key.endswith(("_lo", "_hi")):
            continue
        values = [r["metrics"].get(key) for r in runs]
        if any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in values):
            continue
        mean, sd = mean_sd([float(v) for v in values])
        rows.append({"figure": key, "mean": mean, "sd": sd, "min": float(min(values)), "max": float(max(values)),
                     "n": len(values)})
    return rows
