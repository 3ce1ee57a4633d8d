"""The evaluation tasks, from saved embeddings: retrieval, class retrieval, zero-shot, grounding.

Every score comes from the model's one ``similarity`` function (blockwise, see
:mod:`limitr.eval.scoring`) or, for grounding, its ``grounding_maps``; the encoders never run.
Each task returns a typed result (:mod:`limitr.eval.results`, written by its one
``write_json``); a task whose inputs are absent is planned as skipped with the reason, and the
others still run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from limitr.data.schema import CHEXPERT_LABELS, CLASS_RETRIEVAL_CLASSES
from limitr.errors import LimitrError
from limitr.eval import bootstrap as B
from limitr.eval import metrics as M
from limitr.eval.grounding_task import grounding, grounding_total
from limitr.eval.prompts import CLASS_PROMPTS, ZERO_SHOT_PROMPTS
from limitr.eval.results import (
    ClassRetrievalResult,
    ProbesResult,
    RerankResult,
    RetrievalFigures,
    RetrievalResult,
    Skipped,
    TaskResult,
    ZeroShotResult,
)
from limitr.eval.scoring import score_matrix, take
from limitr.eval.store import align, has_embeddings, read_embeddings, read_manifest
from limitr.progress import ProgressFn
from limitr.settings import default_of


@dataclass
class EvalSettings:
    """block_size: candidates per block of the block protocol (the public code's 1000);
    rerank_top_k: global top-K re-ranked by the total score (None = off);
    score_block: images and texts per ``similarity`` call; chunk: the model's report chunk;
    curve_max_k: the recall-at-K curve runs K = 1..curve_max_k; device: where scoring runs;
    bootstrap: draws of the test studies for the 95% intervals (0 = none), bootstrap_seed their seed."""

    block_size: int = default_of("evaluate", "block_size")
    rerank_top_k: Optional[int] = default_of("evaluate", "rerank_top_k")
    score_block: int = default_of("evaluate", "score_block")
    chunk: Optional[int] = None
    curve_max_k: int = 100
    device: str = "cpu"
    precision_ks: Sequence[int] = field(default_factory=lambda: M.PRECISION_KS)
    bootstrap: int = default_of("evaluate", "bootstrap")
    bootstrap_seed: int = default_of("evaluate", "bootstrap_seed")


@dataclass
class EvalTask:
    """One task: its name, a progress total (pairs scored or phrases mapped), and how to run
    it or why it is skipped. ``run(model, progress)`` returns the task's typed result."""

    name: str
    total: int
    run: Optional[Callable[[object, ProgressFn], TaskResult]] = None
    skipped: Optional[str] = None


def _prompt_embeddings(embeddings: Path):
    folder = Path(embeddings) / "prompts"
    keys, texts = read_embeddings(folder, "texts")
    prompts = json.loads((folder / "prompts.json").read_text())
    order = torch.argsort(keys)
    return [prompts[int(k)] for k in keys[order]], take(texts, order)


def _prompt_columns(prompts: list[str], wanted: Sequence[str]) -> list[int]:
    index = {p: i for i, p in enumerate(prompts)}
    missing = [p for p in wanted if p not in index]
    if missing:
        raise LimitrError(f"prompt embeddings lack {missing[:3]}: re-run the embed stage")
    return [index[p] for p in wanted]


def _labels(table: pq.Table, keys: Sequence[int], key: str, names: Sequence[str]) -> np.ndarray:
    """(len(keys), len(names)) float labels (NaN where not mentioned) of the rows of ``keys``."""
    row = {int(k): i for i, k in enumerate(table.column(key).to_pylist())}
    cols = np.stack([np.asarray(table.column(n).to_numpy(zero_copy_only=False), dtype=np.float64) for n in names], 1)
    return cols[[row[int(k)] for k in keys]]


# --- image-text retrieval -------------------------------------------------------------


def retrieval(model, embeddings: Path, settings: EvalSettings, progress: ProgressFn = None) -> RetrievalResult:
    """Full and block protocols, score components and the optional re-ranking, with the
    recall-at-K curves for the plots, the bootstrap intervals of the full protocol and of each
    score, and every study's ranks (for comparing runs)."""
    img_keys, images = read_embeddings(Path(embeddings) / "test", "images")
    txt_keys, texts = read_embeddings(Path(embeddings) / "test", "texts")
    keys, img_rows, txt_rows = align(img_keys, txt_keys)
    if len(keys) < 2:
        raise LimitrError(f"retrieval needs at least 2 test studies with image and report, found {len(keys)}")
    images, texts = take(images, img_rows), take(texts, txt_rows)
    scores = score_matrix(model, images, texts, settings.score_block, settings.chunk, settings.device,
                          keep=("total", "global_", "local"), progress=progress)
    n = len(keys)
    i2t, t2i = M.diagonal_ranks(scores.total)
    full = M.retrieval_summary(i2t, t2i)
    full["chance"] = M.chance_recalls(n)
    block = M.blockwise_retrieval(scores.total, settings.block_size)
    block["chance"] = M.chance_recalls(block["n_candidates"])
    components = {"global": scores.global_}
    if scores.local is not None:
        components["local"] = scores.local
    ranks = {"total": (i2t, t2i), **{name: M.diagonal_ranks(mat) for name, mat in components.items()}}
    by_score = {name: M.retrieval_summary(*ranks[name]) for name in components}
    if settings.bootstrap:
        for name, figures in (("total", full), *by_score.items()):
            figures["ci95"] = B.recall_intervals(ranks[name][0].numpy(), ranks[name][1].numpy(),
                                                 settings.bootstrap, settings.bootstrap_seed)
    rerank = None
    if settings.rerank_top_k:
        # Derived from the full matrices already at hand: the same ranks as scoring the local
        # term for the global top-K only, without a second pass.
        found = M.reranked_retrieval(scores.total, scores.global_, settings.rerank_top_k, settings.block_size)
        rerank = RerankResult(
            rule="global top-K re-ordered by the total score, the rest in global-score order",
            top_k=int(found.pop("top_k")),
            protocols={name: RetrievalFigures.from_dict(v) for name, v in found.items()},
        )
    max_k = min(settings.curve_max_k, n)
    block_i2t, block_t2i = _block_ranks(scores.total, settings.block_size)
    return RetrievalResult(
        protocols={"full": RetrievalFigures.from_dict(full),
                   f"block{settings.block_size}": RetrievalFigures.from_dict(block)},
        by_score={name: RetrievalFigures.from_dict(v) for name, v in by_score.items()},
        rerank=rerank,
        curves={
            "k": list(range(1, max_k + 1)),
            "i2t": M.recall_curve(i2t, max_k).tolist(),
            "t2i": M.recall_curve(t2i, max_k).tolist(),
            f"i2t_block{settings.block_size}": M.recall_curve(block_i2t, max_k).tolist(),
            f"t2i_block{settings.block_size}": M.recall_curve(block_t2i, max_k).tolist(),
        },
        ranks={"study_id": keys.numpy(),
               **{f"{d}_{name}": pair[j].numpy() for name, pair in ranks.items() for j, d in enumerate(("i2t", "t2i"))}},
    )


def _block_ranks(total: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks of every kept study within its block (block protocol), concatenated."""
    parts = [M.diagonal_ranks(total[a:b, a:b]) for a, b in M.block_spans(total.shape[0], block_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


# --- class retrieval --------------------------------------------------------------------


def _class_table_source(shards: Path, paths: list) -> str:
    """What the class-retrieval table was built from: the source named in the shards'
    report.json (IU X-ray, a manifest: built from their test split), else by its paths."""
    report = Path(shards) / "report.json"
    if report.is_file():
        try:
            name = (json.loads(report.read_text()).get("source") or {}).get("name")
        except (OSError, ValueError):
            name = None
        if name in ("iu", "manifest"):
            return f"{'IU X-ray' if name == 'iu' else 'manifest'} 5x200 (test split)"
    return "MIMIC-CXR 5x200" if paths and str(paths[0]).startswith("files/") else "CheXpert 5x200"


def class_retrieval(model, embeddings: Path, shards: Path, settings: EvalSettings,
                    progress: ProgressFn = None) -> ClassRetrievalResult:
    """Precision@K of the 5x200 table, text-to-image (class prompts) and image-to-text
    (the table's reports, where it has them)."""
    folder = Path(embeddings) / "class_retrieval"
    img_keys, images = read_embeddings(folder, "images")
    classes = list(CLASS_RETRIEVAL_CLASSES)
    table = pq.read_table(Path(shards) / "class_retrieval.parquet", columns=["item_id", "path", "class_name", *classes])
    labels = _labels(table, img_keys.tolist(), "item_id", classes)  # (n_images, 5)
    class_of = dict(zip(table.column("item_id").to_pylist(), table.column("class_name").to_pylist()))
    item_class = [class_of[int(k)] for k in img_keys]
    # A hit is an item labelled positive for the class; the row's own class counts too.
    positive = (labels == 1) | (np.asarray(item_class)[:, None] == np.asarray(classes)[None, :])
    paths = table.column("path").to_pylist()

    prompts, prompt_texts = _prompt_embeddings(embeddings)
    s = score_matrix(model, images, prompt_texts, settings.score_block, settings.chunk, settings.device,
                     keep=(), progress=progress).total  # (n_images, n_prompts)
    per_class = torch.stack([s[:, _prompt_columns(prompts, CLASS_PROMPTS[c])].mean(1) for c in classes], 1)
    max_k = min(settings.curve_max_k, len(img_keys))
    curve = M.precision_at_k(per_class.T, positive.T, range(1, max_k + 1))
    out = ClassRetrievalResult(
        source=_class_table_source(Path(shards), paths),
        n_images=int(len(img_keys)),
        n_per_class={c: int(sum(1 for k in item_class if k == c)) for c in classes},
        t2i=M.class_precision(per_class.T, positive.T, classes, classes, settings.precision_ks),
        i2t=Skipped("the class-retrieval table has no reports"),
        curves={"k": list(curve), "t2i": [float(v.mean()) for v in curve.values()]},
    )
    if not has_embeddings(folder, "texts"):
        return out
    txt_keys, texts = read_embeddings(folder, "texts")
    s = score_matrix(model, images, texts, settings.score_block, settings.chunk, settings.device,
                     keep=(), progress=progress).total  # (n_images, n_texts)
    txt_labels = _labels(table, txt_keys.tolist(), "item_id", classes)
    txt_class = [class_of[int(k)] for k in txt_keys]
    txt_positive = (txt_labels == 1) | (np.asarray(txt_class)[:, None] == np.asarray(classes)[None, :])
    col = {c: i for i, c in enumerate(classes)}
    relevant = txt_positive[:, [col[c] for c in item_class]].T  # (n_images, n_texts)
    out.i2t = M.class_precision(s, relevant, item_class, classes, settings.precision_ks)
    curve = M.precision_at_k(s, relevant, range(1, min(settings.curve_max_k, len(txt_keys)) + 1))
    out.curves["i2t"] = [float(v.mean()) for v in curve.values()]
    out.n_reports = int(len(txt_keys))
    return out


# --- zero-shot classification -------------------------------------------------------------


def test_prompt_scores(model, embeddings: Path, settings: EvalSettings, progress: ProgressFn = None,
                       cache: Optional[dict] = None) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """(test study keys, prompt texts, (n_studies, n_prompts) total scores), scored once:
    zero-shot classification and the probes share it through ``cache``."""
    if cache is not None and "test_prompts" in cache:
        keys, prompts, s = cache["test_prompts"]
        if progress is not None:
            progress(int(s.numel()))
        return keys, prompts, s
    img_keys, images = read_embeddings(Path(embeddings) / "test", "images")
    prompts, prompt_texts = _prompt_embeddings(embeddings)
    s = score_matrix(model, images, prompt_texts, settings.score_block, settings.chunk, settings.device,
                     keep=(), progress=progress).total
    if cache is not None:
        cache["test_prompts"] = (img_keys, prompts, s)
    return img_keys, prompts, s


def zero_shot(model, embeddings: Path, shards: Path, settings: EvalSettings, progress: ProgressFn = None,
              cache: Optional[dict] = None) -> ZeroShotResult:
    """AUROC per CheXpert observation on the test split from positive and negative prompts."""
    img_keys, prompts, s = test_prompt_scores(model, embeddings, settings, progress, cache)
    names = [c for c in CHEXPERT_LABELS if c in ZERO_SHOT_PROMPTS]
    files = sorted((Path(shards) / "test").glob("part-*.parquet"))
    table = pa.concat_tables([pq.read_table(f, columns=["study_id", *names]) for f in files])
    labels = _labels(table, img_keys.tolist(), "study_id", names)
    auroc: dict = {}
    counts: dict = {}
    skipped: dict = {}
    margins: dict = {}
    for j, name in enumerate(names):
        pos_prompts, neg_prompts = ZERO_SHOT_PROMPTS[name]
        pos = s[:, _prompt_columns(prompts, pos_prompts)].mean(1)
        neg = s[:, _prompt_columns(prompts, neg_prompts)].mean(1)
        result = M.zero_shot_auroc(pos, neg, labels[:, j])
        counts[name] = {k: result[k] for k in ("n_positive", "n_negative", "n_uncertain")}
        if result["auroc"] is None:
            skipped[name] = "no positive or no negative image in the test split"
        else:
            auroc[name] = result["auroc"]
            margins[name] = (pos.double() - neg.double()).numpy()  # as zero_shot_auroc takes it
    mean = float(np.mean(list(auroc.values()))) if auroc else None
    column = {name: j for j, name in enumerate(names)}
    found = {name: labels[:, column[name]] for name in margins}
    intervals = None
    if settings.bootstrap and margins:
        intervals = B.auroc_intervals(margins, found, settings.bootstrap, settings.bootstrap_seed)
    per_study = {"study_id": img_keys.numpy()}
    for name in margins:
        per_study[f"{name}:margin"] = margins[name]
        per_study[f"{name}:label"] = found[name]
    return ZeroShotResult(auroc={"mean": mean, **auroc}, n_images=int(len(img_keys)), counts=counts,
                          skipped_classes=skipped, auroc_ci95=intervals, margins=per_study)


# --- ground-truth probes of the synthetic data -----------------------------------------------


def probes(model, embeddings: Path, ground_truth: Path, settings: EvalSettings, progress: ProgressFn = None,
           cache: Optional[dict] = None) -> ProbesResult | Skipped:
    """Side, zone and effusion-size probes (:mod:`limitr.eval.probes`) on the test split."""
    from limitr.eval.probes import probe_metrics, read_ground_truth

    truth = read_ground_truth(ground_truth)
    img_keys, prompts, s = test_prompt_scores(model, embeddings, settings, progress, cache)  # zero-shot's, reused
    known = sum(1 for k in img_keys.tolist() if int(k) in truth)
    if known * 2 < len(img_keys):
        return Skipped(f"{ground_truth} describes {known} of the {len(img_keys)} test studies: it is not "
                       "this data set's ground truth (set evaluate.ground_truth to null for real data)")
    return ProbesResult(source=str(ground_truth), **probe_metrics(s, prompts, img_keys.tolist(), truth))


# --- planning -------------------------------------------------------------------------------


def local_elements(embeddings: Path, pairs: int) -> int:
    """Elements of the SAF's (pairs, K, D) tensors over ``pairs`` scored pairs, K the test
    split's word positions plus regions (read from the first embedding files' headers):
    what ``evaluate.compile: auto`` weighs against the compile time."""
    from safetensors import safe_open

    folder = Path(embeddings) / "test"
    widths = {}
    for kind in ("texts", "images"):
        files = sorted(folder.glob(f"{kind}-*.safetensors"))
        if not files:
            return 0
        with safe_open(str(files[0]), "pt") as handle:
            widths[kind] = handle.get_slice("local").get_shape()
    _, words, dim = widths["texts"]
    return int(pairs) * (int(words) + int(widths["images"][1])) * int(dim)




def plan_tasks(embeddings: Path, shards: Path, settings: EvalSettings,
               ground_truth: Optional[Path] = None) -> list[EvalTask]:
    """The five tasks, in order, each runnable or skipped with its reason (the probes need
    the synthetic data's ``ground_truth``)."""
    embeddings, shards = Path(embeddings), Path(shards)
    manifest = read_manifest(embeddings)
    cache: dict = {}  # the test images against the prompts, shared by zero-shot and the probes
    tables = manifest.get("tables", {})
    skipped = manifest.get("skipped", {})
    n_test = int(tables.get("test", {}).get("images", 0))
    n_prompts = int(tables.get("prompts", {}).get("texts", 0))
    tasks = [EvalTask("retrieval", n_test * n_test, lambda m, p: retrieval(m, embeddings, settings, p))]

    def absent(name: str) -> Optional[str]:
        if name in skipped:
            return str(skipped[name])
        if name not in tables or not (embeddings / name).is_dir():
            return f"no {name} embeddings in {embeddings}"
        return None

    reason = absent("class_retrieval") or absent("prompts")
    if reason is None and not (shards / "class_retrieval.parquet").exists():
        reason = f"no class_retrieval table in {shards}"
    cr = tables.get("class_retrieval", {})
    tasks.append(EvalTask("class_retrieval", int(cr.get("images", 0)) * (n_prompts + int(cr.get("texts", 0))),
                          None if reason else (lambda m, p: class_retrieval(m, embeddings, shards, settings, p)),
                          reason))
    reason = absent("prompts")
    tasks.append(EvalTask("zero_shot", n_test * n_prompts,
                          None if reason else (lambda m, p: zero_shot(m, embeddings, shards, settings, p, cache)), reason))
    reason = absent("grounding")
    if reason is None and not (shards / "grounding.parquet").exists():
        reason = f"no grounding table in {shards}"
    tasks.append(EvalTask("grounding", 0 if reason else grounding_total(embeddings),
                          None if reason else (lambda m, p: grounding(m, embeddings, shards, manifest, settings, p)),
                          reason))
    reason = absent("prompts")
    if reason is None and ground_truth is None:
        reason = "no ground truth given (evaluate.ground_truth; only the synthetic data has one)"
    elif reason is None and not Path(ground_truth).is_file():
        raise LimitrError(f"ground truth file {ground_truth} does not exist: fix evaluate.ground_truth "
                          "(null skips the probes; only the synthetic data has one)")
    tasks.append(EvalTask("probes", n_test * n_prompts,
                          None if reason else (lambda m, p: probes(m, embeddings, Path(ground_truth), settings, p, cache)),
                          reason))
    return tasks
