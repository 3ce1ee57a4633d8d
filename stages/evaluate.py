"""`limitr evaluate`: retrieval, class retrieval, zero-shot and grounding from saved embeddings.

Reads the ``evaluate`` and ``base`` sections. Writes into ``--metrics`` (default metrics/):
retrieval.json, class_retrieval.json, zero_shot.json, grounding.json and probes.json (the
synthetic data's side, zone and effusion-size probes), each task's typed result
(:mod:`limitr.eval.results`); a task without its table or ground truth writes
``{"skipped": reason}``. Into ``--plots`` (default metrics/plots/):
recall_at_k.tsv and precision_at_k.tsv (x ``k``) and grounding/<category>.png overlays.
``summary.json`` holds the headline figures (:data:`SUMMARY_KEYS`): the metrics file DVC
shows by default; the detailed files stay beside it as plain outputs. With
``evaluate.bootstrap`` draws, the recalls, r_sum and AUROCs carry 95% bootstrap intervals
(``ci95`` / ``auroc_ci95``; summary.json: ``r_sum_lo`` / ``r_sum_hi``), and every
test study's ranks and zero-shot margins go to ranks.tsv and zero_shot_margins.tsv, which
``limitr compare`` reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from stages.cli import app
from stages.common import (
    PARAMS_OPTION,
    atomic_dir,
    output_lock,
    optional_path,
    print_table,
    progress_bar,
    resolve_device,
    stage_errors,
    stage_settings,
)

METRIC_FILES = {
    "retrieval": "retrieval.json",
    "class_retrieval": "class_retrieval.json",
    "zero_shot": "zero_shot.json",
    "grounding": "grounding.json",
    "probes": "probes.json",
}


#: The headline figures, the one file ``dvc metrics show`` / ``diff`` and ``dvc exp show`` read.
SUMMARY_FILE = "summary.json"
#: Short names, so that the table fits a terminal: P@K is the class-based retrieval's
#: text-to-image precision (class_retrieval.json), auroc the zero-shot mean AUROC
#: (zero_shot.json), cnr / pointing / miou the grounding means (grounding.json), block_r_sum
#: the r_sum of the block protocol (evaluate.block_size), best_epoch the epoch of the model.
SUMMARY_KEYS: tuple[str, ...] = (
    "i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "r_sum", "block_r_sum",
    "P@5", "P@10", "auroc", "cnr", "pointing", "miou", "best_epoch",
    "r_sum_lo", "r_sum_hi",
)
#: r_sum_lo / r_sum_hi: the 95% bootstrap interval of r_sum (retrieval.json and zero_shot.json
#: hold the others'); one pair only, so that `dvc metrics show` stays one table 200 columns wide.
#: Percent figures are rounded to 2 decimals, the others to 3: a diff shows real changes.
_PERCENT_KEYS = {"i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "r_sum", "block_r_sum",
                 "P@5", "P@10", "r_sum_lo", "r_sum_hi"}


def _get(tree: Any, *path: Any) -> Any:
    for part in path:
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _best_epoch(model_dir: Path) -> Any:
    """The epoch of the weights in ``model_dir/best`` (from its metrics.json), or None."""
    import json

    for path in (Path(model_dir) / "best" / "metrics.json", Path(model_dir) / "metrics.json"):
        if path.is_file():
            try:
                return json.loads(path.read_text()).get("epoch")
            except (OSError, ValueError):
                return None
    return None


def headline_figures(results: dict, block_key: str, model_dir: Path) -> dict:
    """The dozen figures a reader compares between runs (percent for recalls and precisions;
    None where a task was skipped). Every key of :data:`SUMMARY_KEYS`, in that order."""
    full = _get(results, "retrieval", "full") or {}
    figures: dict = {}
    for d in ("i2t", "t2i"):
        for k in (1, 5, 10):
            figures[f"{d}_R@{k}"] = _get(full, d, f"R@{k}")
    figures["r_sum"] = full.get("r_sum")
    figures["block_r_sum"] = _get(results, "retrieval", block_key, "r_sum")
    figures["P@5"] = _get(results, "class_retrieval", "t2i", "P@5", "mean")
    figures["P@10"] = _get(results, "class_retrieval", "t2i", "P@10", "mean")
    figures["auroc"] = _get(results, "zero_shot", "auroc", "mean")
    figures["cnr"] = _get(results, "grounding", "cnr", "mean")
    figures["pointing"] = _get(results, "grounding", "pointing_game", "mean")
    figures["miou"] = _get(results, "grounding", "miou", "mean")
    figures["best_epoch"] = _best_epoch(model_dir)
    # The 95% bootstrap interval of r_sum (None without draws).
    figures["r_sum_lo"], figures["r_sum_hi"] = _get(full, "ci95", "r_sum") or [None, None]
    return {k: (round(v, 2 if k in _PERCENT_KEYS else 3) if isinstance(v, float) else v)
            for k, v in figures.items()}


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ci(low_high: Any, digits: int = 1) -> str:
    low, high = low_high
    return f"[{_fmt(low, digits)}, {_fmt(high, digits)}]"


def _p(value: float) -> str:
    """A p-value for the summary: two significant digits, scientific below 0.001."""
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}"


def _summary_rows(results: dict, block_key: str) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    ret = results.get("retrieval", {})
    if "full" in ret:
        for proto, name in (("full", "full"), (block_key, block_key)):
            r = ret[proto]
            ci = r.get("ci95") or {}
            for d in ("i2t", "t2i"):
                rows.append((f"retrieval {name} {d} R@1/5/10",
                             " / ".join(_fmt(r[d][f"R@{k}"], 1) for k in (1, 5, 10)) + f"  (n={r['n_candidates']})"
                             + (f"  R@10 95% {_ci(ci[d]['R@10'])}" if d in ci else "")))
            rows.append((f"retrieval {name} r_sum", f"{_fmt(r['r_sum'], 1)}  (chance {_fmt(sum(r['chance'].values()) * 2, 1)})"
                         + (f"  95% {_ci(ci['r_sum'])}" if "r_sum" in ci else "")))
        if "rerank" in ret:
            rows.append((f"rerank top-{ret['rerank']['top_k']} full r_sum", _fmt(ret["rerank"]["full"]["r_sum"], 1)))
    cr = results.get("class_retrieval", {})
    for d in ("t2i", "i2t"):
        entry = cr.get(d, {})
        for k in ("P@5", "P@10", "P@50", "P@100"):
            if k in entry:
                rows.append((f"class retrieval {d} {k} mean", _fmt(entry[k]["mean"], 1)))
    zs = results.get("zero_shot", {})
    if "auroc" in zs:
        ci = (zs.get("auroc_ci95") or {}).get("mean")
        rows.append(("zero-shot mean AUROC", _fmt(zs["auroc"]["mean"], 3) + (f"  95% {_ci(ci, 3)}" if ci else "")))
    gr = results.get("grounding", {})
    for prefix, entry in (("attention", gr), ("cosine", gr.get("cosine", {}))):
        if "cnr" in entry:
            rows.append((f"grounding {prefix} CNR / mIoU / pointing",
                         " / ".join(_fmt(entry[m]["mean"], 3) for m in ("cnr", "miou", "pointing_game"))
                         + f"  (pointing chance {_fmt(entry.get('pointing_game_chance', {}).get('mean'), 3)})"))
            choice = entry.get("miou_threshold", {})
            rows.append(("  mIoU threshold", f"{choice.get('value')} ({choice.get('chosen_on')}"
                         + (f", {choice.get('n_phrases')} validation phrases)" if choice.get("n_phrases") else ")")
                         + f"; mean over thresholds {_fmt(entry.get('miou_over_thresholds', {}).get('mean'), 3)}"))
        if "cnr" in entry.get("prior", {}):
            rows.append(("  its prior map CNR / mIoU / pointing",
                         " / ".join(_fmt(entry["prior"][m]["mean"], 3) for m in ("cnr", "miou", "pointing_game"))
                         + "  (the mean map: phrase and image ignored)"))
        sig = entry.get("significance")
        if sig and sig.get("phrases"):
            rows.append(("  pointing hits: map / chance / prior",
                         f"{sig['hits']} / {_fmt(sig['chance_hits'], 1)} / {sig['prior_hits']} of {sig['phrases']}"
                         f"  (p {_p(sig['p_vs_chance'])} vs chance, {_p(sig['p_vs_prior'])} vs prior:"
                         f" {sig['map_only']} phrases only the map hits, {sig['prior_only']} only the prior)"))
    pr = results.get("probes", {})
    if "side" in pr:
        rows.append(("probe side / zone accuracy", " / ".join(_fmt(pr[k]["accuracy"]["mean"], 3) for k in ("side", "zone"))
                     + "  (chance 0.5)"))
        auroc = pr["effusion"]["auroc"]
        rows.append(("probe effusion AUROC small / larger",
                     " / ".join(_fmt(auroc[k], 3) for k in ("small", "moderate_or_large"))))
    for name, result in results.items():
        if "skipped" in result:
            rows.append((name, f"skipped: {result['skipped']}"))
    return rows


def write_per_study(metrics_dir: Path, results: dict) -> None:
    """ranks.tsv and zero_shot_margins.tsv: every test study's values the figures come from
    (a header-only file where the task did not run), for ``limitr compare``."""
    from limitr.eval.bootstrap import MARGINS_FILE, RANKS_FILE, write_per_study_tsv

    for file_name, name, attr in ((RANKS_FILE, "retrieval", "ranks"), (MARGINS_FILE, "zero_shot", "margins")):
        table = dict(getattr(results[name], attr, None) or {"study_id": []})
        write_per_study_tsv(metrics_dir / file_name, table.pop("study_id"), table)


@app.command("evaluate")
def evaluate_stage(
    params: Path = PARAMS_OPTION,
    embeddings: Optional[Path] = typer.Option(None, help="embed stage output (evaluate.embeddings)"),
    model: Optional[Path] = typer.Option(None, help="train stage output, for its scoring function (evaluate.model)"),
    shards: Optional[Path] = typer.Option(None, help="preprocess output: labels, boxes, images (evaluate.shards)"),
    ground_truth: Optional[Path] = typer.Option(None, "--ground-truth", help="the synthetic data's ground_truth.jsonl, for the side, zone and effusion probes (evaluate.ground_truth; null skips them)"),
    metrics: Optional[Path] = typer.Option(None, help="folder for the metrics JSON files (evaluate.metrics)"),
    plots: Optional[Path] = typer.Option(None, help="folder for the plot files (evaluate.plots)"),
    block_size: Optional[int] = typer.Option(None, "--block-size", help="candidates per block of the block protocol (evaluate.block_size)"),
    rerank_top_k: Optional[int] = typer.Option(None, "--rerank-top-k", help="re-rank the global top-K by the full score; 0 = off (evaluate.rerank_top_k)"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N (base.device)"),
) -> None:
    """Score the saved embeddings with the model's similarity and write metrics and plots."""
    with stage_errors() as stage:
        from limitr.eval.embed import load_model
        from limitr.eval.evaluate import EvalSettings, local_elements, plan_tasks
        from limitr.model import compiled
        from limitr.eval.plots import draw_grounding_example, draw_message, slug, write_series_tsv
        from limitr.eval.results import Skipped, to_json, write_json

        chosen = stage_settings(params, "evaluate", dict(
            embeddings=embeddings, model=model, shards=shards, metrics=metrics, plots=plots,
            ground_truth=ground_truth, block_size=block_size,
            rerank_top_k=None if rerank_top_k == 0 else rerank_top_k,
        ), base_overrides=dict(device=device))
        cfg = chosen.evaluate
        dev = resolve_device(chosen.base.device)  # before any work
        emb_dir, model_dir, shards_dir = Path(cfg.embeddings), Path(cfg.model), Path(cfg.shards)
        metrics_dir, plots_dir = Path(cfg.metrics), Path(cfg.plots)
        truth_file = optional_path(cfg.ground_truth)
        block, score_block = cfg.block_size, cfg.score_block
        top_k = None if rerank_top_k == 0 else cfg.rerank_top_k

        stage.enter_context(output_lock(metrics_dir))
        net, run_config = load_model(model_dir, dev)
        settings = EvalSettings(
            block_size=block,
            rerank_top_k=int(top_k) if top_k else None,
            score_block=score_block,
            chunk=(run_config.get("model") or {}).get("score_chunk"),
            device=dev,
            bootstrap=cfg.bootstrap,
            bootstrap_seed=cfg.bootstrap_seed,
        )
        tasks = plan_tasks(emb_dir, shards_dir, settings, truth_file)
        choice = compiled.choose(
            cfg.compile, dev, steps=1, key="evaluate.compile", cache_dir=Path(cfg.compile_cache),
            elements_per_step=local_elements(emb_dir, sum(t.total or 0 for t in tasks if t.run is not None)),
        )
        compiled.attach(net, choice.kernels)
        print(f"local alignment: {choice.line()}", flush=True)
        results: dict = {}
        for task in tasks:
            if task.skipped is not None or task.run is None:
                results[task.name] = Skipped(task.skipped)
                continue
            with progress_bar(task.total or None, f"evaluate {task.name}", unit="pair") as bar:
                results[task.name] = task.run(net, bar.update)

        for name, file_name in METRIC_FILES.items():
            write_json(metrics_dir / file_name, results[name])
        write_per_study(metrics_dir, results)
        as_json = {k: to_json(v) for k, v in results.items()}
        write_json(metrics_dir / SUMMARY_FILE, headline_figures(as_json, f"block{block}", model_dir))
        curves = getattr(results["retrieval"], "curves", None) or {"k": []}
        write_series_tsv(plots_dir / "recall_at_k.tsv", curves)
        precision = getattr(results["class_retrieval"], "curves", None) or {"k": [], "t2i": [], "i2t": []}
        write_series_tsv(plots_dir / "precision_at_k.tsv", precision)
        with atomic_dir(plots_dir / "grounding") as tmp:
            examples = getattr(results["grounding"], "examples", None)
            if examples:
                for category, example in examples.items():
                    draw_grounding_example(tmp / f"{slug(category)}.png", category, example)
            else:
                reason = getattr(results["grounding"], "skipped", "no grounding example")
                draw_message(tmp / "skipped.png", f"grounding skipped: {reason}")

        print_table("evaluation", _summary_rows({k: to_json(v) for k, v in results.items()}, f"block{block}"))
