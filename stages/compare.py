"""`limitr compare`: is run A better than run B beyond the noise of the test set?

Not a DVC stage: a command over two evaluated runs' metrics folders (each with the
ranks.tsv and zero_shot_margins.tsv the evaluate stage writes). The same bootstrap draws of
the test studies (``evaluate.bootstrap`` draws, ``evaluate.bootstrap_seed``) are applied to
both runs' per-study ranks and margins; per headline figure it prints A, B, A - B with its
95% interval, and which run is better where the interval leaves out 0.

    limitr compare metrics/ other-run/metrics/
    limitr compare metrics/ metrics/ --score-b global     # the combined score against its global part

Two runs evaluated on different test studies are refused in one line. For two ``dvc exp``
revisions, see docs/experiments.md (the metrics are in git, so ``git show REV:metrics/ranks.tsv``
gives a revision's file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stages.cli import app
from stages.common import PARAMS_OPTION, print_table, stage_errors, stage_settings


def _fmt(value: Optional[float], digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@app.command("compare")
def compare_command(
    run_a: Path = typer.Argument(..., help="run A's metrics folder (ranks.tsv, zero_shot_margins.tsv)"),
    run_b: Path = typer.Argument(..., help="run B's metrics folder, evaluated on the same test split"),
    params: Path = PARAMS_OPTION,
    samples: Optional[int] = typer.Option(None, "--samples", help="bootstrap draws (evaluate.bootstrap)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed of the draws (evaluate.bootstrap_seed)"),
    score_a: str = typer.Option("total", "--score-a", help="A's ranking score: total | global | local"),
    score_b: str = typer.Option("total", "--score-b", help="B's ranking score: total | global | local"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the comparison as JSON here"),
) -> None:
    """Paired bootstrap comparison of two runs' headline figures on the same test split."""
    with stage_errors():
        from limitr.errors import LimitrError
        from limitr.eval.bootstrap import SCORES, compare_runs
        from limitr.files import write_json

        cfg = stage_settings(params, "evaluate", dict(bootstrap=samples, bootstrap_seed=seed)).evaluate
        for score in (score_a, score_b):
            if score not in SCORES:
                raise LimitrError(f"--score-a / --score-b must be one of {', '.join(SCORES)}, got {score!r}")
        if cfg.bootstrap < 1:
            raise LimitrError("a comparison needs bootstrap draws: give --samples N (N >= 1)")
        found = compare_runs(run_a, run_b, cfg.bootstrap, cfg.bootstrap_seed, score_a, score_b)
        rows = []
        for r in found["rows"]:
            digits = 3 if r["figure"] == "auroc" else 2
            verdict = {"A": "A better", "B": "B better", "neither": "no difference beyond the interval"}[r["better"]]
            rows.append((r["figure"], f"A {_fmt(r['a'], digits)}  B {_fmt(r['b'], digits)}  A-B "
                                      f"{r['difference']:+.{digits}f} [{_fmt(r['low'], digits)}, {_fmt(r['high'], digits)}]"
                                      f"  {verdict}"))
        title = (f"A = {run_a} ({score_a}), B = {run_b} ({score_b}): {found['n_studies']} test studies, "
                 f"{found['samples']} paired draws (seed {found['seed']}), 95% intervals")
        print_table(title, rows)
        if out is not None:
            write_json(out, {"a": str(run_a), "b": str(run_b), **found})
