"""`limitr evaluate`: retrieval, class retrieval, zero-shot and grounding from saved embeddings.

Reads the ``evaluate`` and ``base`` sections. Writes into ``--metrics`` (default metrics/):
retrieval.json, class_retrieval.json, zero_shot.json, grounding.json and probes.json (the
synthetic data's side, zone and effusion-size probes), each task's typed result
(:mod:`limitr.eval.results`); a task without its table or ground truth writes
``{"skipped": reason}``. Into ``--plots`` (default metrics/plots/):
recall_at_k.tsv and precision_at_k.tsv (x ``k``) and grounding/<category>.png overlays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from stages.cli import app
from stages.common import (
    PARAMS_OPTION,
    atomic_dir,
    base,
    optional_path,
    override,
    print_table,
    progress_bar,
    resolve_device,
    section,
    stage_errors,
)

METRIC_FILES = {
    "retrieval": "retrieval.json",
    "class_retrieval": "class_retrieval.json",
    "zero_shot": "zero_shot.json",
    "grounding": "grounding.json",
    "probes": "probes.json",
}


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _p(value: float) -> str:
    """A p-value for the summary: two significant digits, scientific below 0.001."""
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}"


def _summary_rows(results: dict, block_key: str) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    ret = results.get("retrieval", {})
    if "full" in ret:
        for proto, name in (("full", "full"), (block_key, block_key)):
            r = ret[proto]
            for d in ("i2t", "t2i"):
                rows.append((f"retrieval {name} {d} R@1/5/10",
                             " / ".join(_fmt(r[d][f"R@{k}"], 1) for k in (1, 5, 10)) + f"  (n={r['n_candidates']})"))
            rows.append((f"retrieval {name} r_sum", f"{_fmt(r['r_sum'], 1)}  (chance {_fmt(sum(r['chance'].values()) * 2, 1)})"))
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
        rows.append(("zero-shot mean AUROC", _fmt(zs["auroc"]["mean"], 3)))
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
    with stage_errors():
        from limitr.errors import LimitrError
        from limitr.eval.embed import load_model
        from limitr.eval.evaluate import EvalSettings, plan_tasks
        from limitr.eval.plots import draw_grounding_example, draw_message, slug, write_series_tsv
        from limitr.eval.results import Skipped, to_json, write_json

        cfg = section(params, "evaluate")
        emb_dir = optional_path(override(embeddings, cfg, "embeddings", "data/embeddings"))
        model_dir = optional_path(override(model, cfg, "model", "data/model"))
        shards_dir = optional_path(override(shards, cfg, "shards", "data/shards"))
        metrics_dir = optional_path(override(metrics, cfg, "metrics", "metrics"))
        plots_dir = optional_path(override(plots, cfg, "plots", "metrics/plots"))
        truth_file = optional_path(override(ground_truth, cfg, "ground_truth"))
        dev = resolve_device(override(device, base(params), "device", "auto"))
        block = int(override(block_size, cfg, "block_size", 1000))
        top_k = override(rerank_top_k, cfg, "rerank_top_k")
        score_block = int(cfg.get("score_block") or 64)
        if block < 1 or score_block < 1:
            raise LimitrError("evaluate.block_size and evaluate.score_block must be positive")

        net, run_config = load_model(model_dir, dev)
        settings = EvalSettings(
            block_size=block,
            rerank_top_k=int(top_k) if top_k else None,
            score_block=score_block,
            chunk=(run_config.get("model") or {}).get("score_chunk"),
            device=dev,
        )
        results: dict = {}
        for task in plan_tasks(emb_dir, shards_dir, settings, truth_file):
            if task.skipped is not None or task.run is None:
                results[task.name] = Skipped(task.skipped)
                continue
            with progress_bar(task.total or None, f"evaluate {task.name}", unit="pair") as bar:
                results[task.name] = task.run(net, bar.update)

        for name, file_name in METRIC_FILES.items():
            write_json(metrics_dir / file_name, results[name])
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
