"""`limitr seeds`: a setting's headline figures over N training seeds (mean ± sd).

Not a DVC stage: it queues ``dvc exp run --queue -S train.seed=K [-S ...]`` experiments named
``<name>-s<K>`` (K = --first .. --first + n - 1), runs the queue (``dvc exp run --run-all``,
one at a time) and prints mean ± sd of each headline figure of metrics/summary.json over the
finished ones, read from ``dvc exp show --json``, and of each part of the combined score
(global alone, local alone, and the combined score's gain over the global one), read from the
retrieval.json committed in each experiment.

    limitr seeds --n 3 --name nolateral -S model.lateral=false   # queue, run, summarise
    limitr seeds --n 3 --name nolateral -S model.lateral=false --queue-only
    limitr seeds --name nolateral --summarise                     # the table of finished runs

``--dry-run`` prints the dvc commands instead of running them; ``--exp-json FILE`` reads a saved
``dvc exp show --json`` document instead of asking dvc.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import List, Optional

import typer

from stages.cli import app
from stages.common import print_table, stage_errors

RUN_QUEUE = ["dvc", "exp", "run", "--run-all", "--jobs", "1"]
SHOW_JSON = ["dvc", "exp", "show", "--json"]  # the experiments of the current commit


def _run(argv: list[str], capture: bool = False) -> str:
    from limitr.errors import LimitrError

    try:
        done = subprocess.run(argv, check=False, text=True, capture_output=capture)
    except FileNotFoundError:
        raise LimitrError(f"{argv[0]} not found: run this in the project's environment (pip install dvc)") from None
    if done.returncode != 0:
        tail = (done.stderr or "").strip().splitlines()[-1:] if capture else []
        raise LimitrError(f"`{shlex.join(argv)}` failed (exit {done.returncode}){': ' + tail[0] if tail else ''}")
    return done.stdout or ""


def _git_file(rev: str, path: str) -> Optional[str]:
    """A file of an experiment's git commit, or None (no git, no such commit or file)."""
    try:
        done = subprocess.run(["git", "show", f"{rev}:{path}"], check=False, text=True, capture_output=True)
    except FileNotFoundError:
        return None
    return done.stdout if done.returncode == 0 else None


def add_score_parts(runs: list[dict], read=_git_file) -> int:
    """Add each run's score parts (:data:`limitr.eval.seeds.PART_KEYS`, from the retrieval.json
    committed in its experiment) to its metrics; returns how many runs had them."""
    from limitr.eval.seeds import RETRIEVAL_PATH, score_parts

    found = 0
    for run in runs:
        text = read(run["rev"], RETRIEVAL_PATH) if run.get("rev") else None
        try:
            parts = score_parts(json.loads(text)) if text else {}
        except json.JSONDecodeError:
            parts = {}
        run["metrics"].update(parts)
        found += bool(parts)
    return found


def seed_table(document, name: str, read=None) -> tuple[list[tuple[str, str]], dict]:
    """The printed rows and the collected runs of table ``name``; ``read(rev, path)`` gives
    an experiment's committed files, for the score parts (None: not read)."""
    from limitr.eval.seeds import PART_KEYS, collect, summarise
    from stages.evaluate import SUMMARY_KEYS

    found = collect(document, name)
    runs = found["runs"]
    if read is not None:
        add_score_parts(runs, read)
    rows = []
    for r in summarise(runs, (*SUMMARY_KEYS, *PART_KEYS)):
        digits = 3 if r["figure"] in ("auroc", "cnr", "pointing", "miou") else 2
        line = f"{r['mean']:.{digits}f} ± {r['sd']:.{digits}f}  (min {r['min']:.{digits}f}, max {r['max']:.{digits}f})"
        if r["figure"] == "r_sum" and r["mean"]:
            line += f"  sd {100 * r['sd'] / r['mean']:.1f}% of the mean"
        rows.append((r["figure"], line))
    return rows, found


@app.command("seeds")
def seeds_command(
    n: int = typer.Option(3, "--n", min=1, help="number of training seeds"),
    first: int = typer.Option(0, "--first", min=0, help="the first seed (seeds first .. first + n - 1)"),
    name: str = typer.Option("seeds", "--name", help="the table's name: experiments are <name>-s<seed>"),
    sets: Optional[List[str]] = typer.Option(None, "-S", "--set", help="a setting of the row, section.key=value (repeat)"),
    queue_only: bool = typer.Option(False, "--queue-only", help="queue the experiments and stop"),
    summarise_only: bool = typer.Option(False, "--summarise", help="only print the table of finished experiments"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the dvc commands instead of running them"),
    exp_json: Optional[Path] = typer.Option(None, "--exp-json", help="a saved `dvc exp show --json` document to summarise"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the table as JSON here"),
) -> None:
    """Queue N seeds of a setting with dvc, run them, print mean ± sd per headline figure
    and per part of the combined score (global alone, local alone, the combined score's gain)."""
    with stage_errors():
        from limitr.errors import LimitrError
        from limitr.eval.seeds import queue_commands

        if queue_only and summarise_only:
            raise LimitrError("--queue-only and --summarise exclude each other")
        if not summarise_only:
            commands = queue_commands(name, range(first, first + n), sets or [])
            params = Path("params.yaml")
            if params.is_file() and sets:
                import yaml

                from limitr.eval.seeds import check_settings

                check_settings(yaml.safe_load(params.read_text()) or {}, sets)
            if not queue_only:
                commands.append(RUN_QUEUE)
            for argv in commands:
                if dry_run:
                    typer.echo(shlex.join(argv))
                else:
                    _run(argv)
            if queue_only or dry_run:
                if dry_run and not queue_only:
                    typer.echo(shlex.join(SHOW_JSON))
                return
        if exp_json is not None:
            text = exp_json.read_text()
        else:
            text = _run(SHOW_JSON, capture=True)
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LimitrError(f"`dvc exp show --json` gave no JSON ({exc})") from None
        rows, found = seed_table(document, name, read=None if exp_json is not None else _git_file)
        if not found["runs"]:
            raise LimitrError(f"no finished experiment named {name}-s<seed>"
                              + (f" ({len(found['unfinished'])} unfinished)" if found["unfinished"] else ""))
        seeds = ", ".join(str(r["seed"]) for r in found["runs"])
        title = f"{name}: mean ± sd over {len(found['runs'])} seeds ({seeds})"
        if found["unfinished"]:
            title += f"; not finished: {', '.join(found['unfinished'])}"
        print_table(title, rows)
        if out is not None:
            from limitr.eval.seeds import summarise
            from limitr.files import write_json
            from stages.evaluate import SUMMARY_KEYS

            from limitr.eval.seeds import PART_KEYS

            write_json(out, {"name": name, "runs": found["runs"], "unfinished": found["unfinished"],
                             "figures": summarise(found["runs"], (*SUMMARY_KEYS, *PART_KEYS))})
