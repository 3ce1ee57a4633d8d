"""`limitr tokenize`: the study shards' report texts to token shards with word ids.

Reads the ``tokenize`` section. Writes ``--out`` atomically: ``{train,validate,test}.parquet``
keyed by study_id, ``grounding.parquet`` (phrase_id) and ``class_retrieval.parquet``
(item_id) when the shards have those tables, ``tokenizer/`` (save_pretrained) and
``report.json`` (truncated reports per split).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stages.cli import app
from stages.common import (
    PARAMS_OPTION,
    atomic_dir,
    output_lock,
    optional_path,
    print_table,
    progress_bar,
    stage_errors,
    stage_settings,
)
from limitr.files import write_json


@app.command("tokenize")
def tokenize_stage(
    params: Path = PARAMS_OPTION,
    shards: Optional[Path] = typer.Option(None, help="study shards folder (tokenize.shards)"),
    out: Optional[Path] = typer.Option(None, help="output folder (tokenize.out)"),
    tokenizer: Optional[str] = typer.Option(None, help="Hugging Face name or local path; 'null' = the shipped MiniLM (tokenize.tokenizer)"),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="tokens per report incl. [CLS] and [SEP] (tokenize.max_length)"),
    train_wordpiece: Optional[bool] = typer.Option(
        None, "--train-wordpiece/--no-train-wordpiece",
        help="train a WordPiece vocabulary on the training reports instead (tokenize.train_wordpiece)"),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", help="WordPiece vocabulary size (tokenize.vocab_size)"),
) -> None:
    """Tokenize every report, phrase and class-retrieval text; record truncations."""
    with stage_errors() as stage:
        from limitr.text import tokenizer as tokenizers
        from limitr.text.tokenize import check_shards, count_texts, tokenize_shards, training_texts

        cfg = stage_settings(params, "tokenize", dict(
            shards=shards, out=out, tokenizer=tokenizer, max_length=max_length,
            train_wordpiece=train_wordpiece, vocab_size=vocab_size,
        )).tokenize
        shards_dir, out_dir, length = Path(cfg.shards), Path(cfg.out), cfg.max_length
        source = optional_path(cfg.tokenizer)
        check_shards(shards_dir)
        stage.enter_context(output_lock(out_dir))
        if cfg.train_wordpiece:
            size = cfg.vocab_size
            tok = tokenizers.train_wordpiece(training_texts(shards_dir), vocab_size=size)
            name = f"wordpiece trained on {shards_dir}/train ({size})"
        else:
            tok = tokenizers.load_tokenizer(source)
            name = str(source) if source is not None else f"{tokenizers.default_tokenizer_path().parent.name} (shipped MiniLM)"
        with atomic_dir(out_dir) as tmp:
            with progress_bar(count_texts(shards_dir), "tokenize", unit="text") as bar:
                report = tokenize_shards(shards_dir, tmp, tok, max_length=length, progress=bar.update,
                                         tokenizer_name=name)
            report["trained_wordpiece"] = cfg.train_wordpiece
            write_json(tmp / "report.json", report)

        rows: list[tuple[str, object]] = [("tokenizer", name), ("vocabulary", report["vocab_size"])]
        rows += [(split, f"{s['reports']} reports, {s['truncated']} truncated at {length}")
                 for split, s in report["splits"].items()]
        for table in ("grounding", "class_retrieval"):
            if table in report:
                rows.append((table, f"{report[table]['texts']} texts, {report[table]['truncated']} truncated"))
        print_table(f"tokenize -> {out_dir}", rows)
