"""Evaluation across sources: a model trained on one source (its run folder, its tokens and
shards) scored on another source's test split and class-retrieval table.

The target's reports are tokenized again with the model's own tokenizer and token limit (the
``tokenizer/`` and ``report.json`` of the model's tokens folder), then embedded and evaluated
with the same library code as the embed and evaluate stages (retrieval, class retrieval and
zero-shot classification; grounding and the probes need MIMIC-CXR's MS-CXR or the synthetic
ground truth and are skipped). Images must be at the model's own image size (the side of the
PNGs in its training shards): a target preprocessed at another size is refused with the
command that fixes it, since a different scale would measure the resize, not the transfer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from limitr.data.images import png_to_array
from limitr.data.schema import SPLITS
from limitr.data.shards import iter_batches, split_files
from limitr.errors import LimitrError
from limitr.eval.embed import EmbedSettings, load_model, model_fingerprint, plan_tasks as plan_embed, resolve_checkpoint
from limitr.eval.evaluate import EvalSettings, plan_tasks as plan_eval
from limitr.eval.results import Skipped, to_json
from limitr.files import write_json
from limitr.progress import ProgressFn
from limitr.text.tokenize import tokenize_shards
from limitr.text.tokenizer import load_tokenizer

#: The evaluate tasks a transfer reports (grounding and probes need MIMIC-CXR or the synthetic set).
TASKS = ("retrieval", "class_retrieval", "zero_shot")


@dataclass(frozen=True)
class TransferSet:
    """A model's own folders and the target source's shards."""

    model: Path  # train stage output of the source the model was trained on
    tokens: Path  # that run's tokens folder: its tokenizer/ and token limit
    shards: Path  # that run's shards: the model's image size
    target: Path  # the other source's preprocess output


def image_size(shards: Path) -> int:
    """The side of the images in a shards folder (the first frontal image found)."""
    for split in ("test", *SPLITS):
        if not split_files(Path(shards), split):
            continue
        for batch in iter_batches(Path(shards), split, ["frontal_image"], 1):
            if batch.num_rows:
                return int(png_to_array(batch.column(0)[0].as_py()).shape[0])
    raise LimitrError(f"{shards} holds no study shards: run the preprocess stage for it first")


def _token_limit(tokens: Path) -> int:
    report = Path(tokens) / "report.json"
    if not (Path(tokens) / "tokenizer").is_dir() or not report.is_file():
        raise LimitrError(f"{tokens} is not a tokens folder (tokenizer/ and report.json): run the tokenize "
                          "stage of the model's own source first")
    try:
        return int(json.loads(report.read_text())["max_length"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LimitrError(f"cannot read the token limit from {report}: {exc}") from exc


def check_set(s: TransferSet) -> tuple[int, int]:
    """(model's image size, token limit); a LimitrError in one line when a folder is missing or
    the target's images are at another size."""
    resolve_checkpoint(s.model)
    limit = _token_limit(s.tokens)
    own, other = image_size(s.shards), image_size(s.target)
    if own != other:
        raise LimitrError(
            f"the model was trained on {own}-pixel images but {s.target} holds {other}-pixel ones: preprocess the "
            f"target at the model's size (limitr preprocess --image-size {own} --out ...) and name that folder")
    return own, limit


def run_transfer(s: TransferSet, work: Path, device: str, batch_size: int, rows_per_file: int,
                 eval_settings: Callable[[dict], EvalSettings],
                 progress: Optional[Callable[[str, int], ProgressFn]] = None) -> dict[str, Any]:
    """Tokenize, embed and evaluate ``s.target`` with the model of ``s``; ``work`` (an empty
    folder) receives ``tokens/`` and ``embeddings/``. Returns ``{task: result}`` (typed
    results, or Skipped) and ``report`` (what was used)."""
    size, limit = check_set(s)
    work = Path(work)
    tok = load_tokenizer(Path(s.tokens) / "tokenizer")
    tokens = work / "tokens"
    report = tokenize_shards(s.target, tokens, tok, max_length=limit,
                             tokenizer_name=f"{Path(s.tokens) / 'tokenizer'} (the model's own)")
    write_json(tokens / "report.json", report)

    net, run_config = load_model(s.model, device)
    train_cfg = run_config["train"]
    settings = EmbedSettings(crop_size=int(train_cfg["crop_size"]), upsample_to=train_cfg.get("upsample_to"),
                             batch_size=batch_size, rows_per_file=rows_per_file, max_length=limit, device=device)
    embeddings = work / "embeddings"
    manifest: dict[str, Any] = {"model": str(s.model), "model_fingerprint": model_fingerprint(resolve_checkpoint(s.model)[0]),
                                "settings": {"crop_size": settings.crop_size, "upsample_to": settings.upsample_to},
                                "tables": {}, "skipped": {}}
    import torch

    with torch.no_grad():
        for task in plan_embed(s.target, tokens):
            if task.skipped is not None or task.run is None:
                manifest["skipped"][task.name] = task.skipped
                continue
            bar = progress(f"transfer embed {task.name}", task.total) if progress else None
            manifest["tables"][task.name] = task.run(net, embeddings / task.name, settings, bar)
    write_json(embeddings / "report.json", manifest)

    results: dict[str, Any] = {}
    for task in plan_eval(embeddings, s.target, eval_settings(run_config), None):
        if task.name not in TASKS:
            continue
        if task.skipped is not None or task.run is None:
            results[task.name] = Skipped(task.skipped)
            continue
        bar = progress(f"transfer {task.name}", task.total) if progress else None
        results[task.name] = task.run(net, bar)
    results["report"] = {
        "model": str(s.model), "tokenizer": report["tokenizer"], "max_length": limit, "image_size": size,
        "crop_size": settings.crop_size, "target": str(s.target),
        "test_studies": int(manifest["tables"].get("test", {}).get("images", 0)),
    }
    return results


def transfer_figures(results: dict[str, Any], headline: Callable[[dict], dict]) -> dict[str, Any]:
    """The metrics file of one transfer set: the headline figures, the chance r_sum, what was
    used, and the three tasks' results."""
    as_json = {k: (to_json(v) if k != "report" else v) for k, v in results.items()}
    figures = headline(as_json)
    chance = ((as_json.get("retrieval") or {}).get("full") or {}).get("chance") or {}
    figures["chance_r_sum"] = round(2 * sum(chance.values()), 2) if chance else None
    figures["test_studies"] = as_json["report"]["test_studies"]
    return {**figures, "used": as_json["report"], **{k: as_json[k] for k in TASKS if k in as_json}}
