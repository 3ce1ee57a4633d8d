"""`limitr transfer`: a model trained on one source evaluated on another source's test split.

Reads the ``transfer`` section (the sets), ``embed`` (batch sizes), ``evaluate`` (block size,
score block) and ``base`` (device). For each set (or the one ``--name`` picks) it tokenizes the
target's reports with the model's own tokenizer and token limit, embeds the target's test split
and class-retrieval table and evaluates retrieval, class retrieval and zero-shot
(:mod:`limitr.eval.transfer`). Writes ``<transfer.out>/<name>/`` (tokens, embeddings)
atomically and ``<transfer.metrics>/<name>.json``: the headline figures of ``summary.json``
plus ``chance_r_sum``, ``test_studies``, what was used and the three tasks' results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stages.cli import app
from stages.common import PARAMS_OPTION, atomic_dir, print_table, resolve_device, stage_errors, stage_settings
from stages.evaluate import headline_figures


@app.command("transfer")
def transfer_stage(
    params: Path = PARAMS_OPTION,
    name: Optional[str] = typer.Option(None, help="the set of transfer.sets to run (default: every set)"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N (base.device)"),
) -> None:
    """Score a model trained on one source on another source's test split."""
    with stage_errors():
        from limitr.errors import LimitrError
        from limitr.eval.evaluate import EvalSettings
        from limitr.eval.transfer import TransferSet, run_transfer, transfer_figures
        from limitr.files import write_json

        chosen = stage_settings(params, "transfer", {}, base_overrides=dict(device=device))
        cfg, ev, em = chosen.transfer, chosen.evaluate, chosen.embed
        dev = resolve_device(chosen.base.device)
        if name is not None and name not in cfg.sets:
            known = ", ".join(cfg.sets) or "none"
            raise LimitrError(f"no transfer set {name!r} in transfer.sets (sets: {known})")
        names = [name] if name is not None else list(cfg.sets)
        rows: list[tuple[str, object]] = []
        for key in names:
            item = cfg.sets[key]
            tset = TransferSet(Path(item.model), Path(item.tokens), Path(item.shards), Path(item.target))

            def settings(run_config: dict) -> EvalSettings:
                return EvalSettings(block_size=ev.block_size, rerank_top_k=None, score_block=ev.score_block,
                                    chunk=(run_config.get("model") or {}).get("score_chunk"), device=dev)

            with atomic_dir(Path(cfg.out) / key) as tmp:
                results = run_transfer(tset, tmp, dev, em.batch_size, em.rows_per_file, settings)
            figures = transfer_figures(results, lambda j: headline_figures(j, f"block{ev.block_size}", tset.model))
            write_json(Path(cfg.metrics) / f"{key}.json", figures)
            rows.append((key, f"r_sum {figures['r_sum']} (chance {figures['chance_r_sum']}), P@10 {figures['P@10']}, "
                              f"AUROC {figures['auroc']} on {figures['test_studies']} test studies"))
        print_table("transfer", rows or [("transfer.sets", "empty: nothing to do")])
