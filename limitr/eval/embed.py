"""Run the encoders once over the evaluation tables and save what they give.

Tables (each optional except the test split):

- ``test``: the test split's studies (frontal and lateral images, report), keyed by study_id;
- ``grounding``: MS-CXR-format phrases (one frontal image and one phrase), keyed by phrase_id;
- ``class_retrieval``: the 5x200 images (and reports where known), keyed by item_id;
- ``prompts``: the class and zero-shot text queries of :mod:`limitr.eval.prompts`, keyed by
  their index in ``prompts.json``.

Images and reports are prepared by :mod:`limitr.data.prepare` and :mod:`limitr.data.studies`,
the training path's own (the evaluation centre crop); every table is written with
:class:`limitr.eval.store.EmbeddingWriter` under ``OUT/<table>/``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pyarrow.parquet as pq
import torch

from limitr.data.prepare import collate_studies, decode_centre_crop, prepare_images, trim_padding
from limitr.data.studies import StudyDataset
from limitr.errors import LimitrError
from limitr.eval.prompts import all_prompts, tokenize_prompts
from limitr.eval.store import EmbeddingWriter
from limitr.progress import ProgressFn, advance
from limitr.settings import default_of

#: The table names, and the key each is saved under.
TABLE_KEYS: dict[str, str] = {
    "test": "study_id",
    "grounding": "phrase_id",
    "class_retrieval": "item_id",
    "prompts": "prompt_index",
}


@dataclass
class EmbedSettings:
    """How images and texts are prepared and batched.

    crop_size: side of the evaluation centre crop (the training run's ``crop_size``);
    upsample_to: resize crops to this side before the encoder (None = no resize);
    batch_size: items per encoder call; rows_per_file: items per safetensors file;
    max_length: token limit for the prompts; device: where the encoders run;
    store_dir: where the test split's image store goes (None = a temporary folder).
    """

    crop_size: int
    upsample_to: Optional[int] = None
    batch_size: int = default_of("embed", "batch_size")
    rows_per_file: int = default_of("embed", "rows_per_file")
    max_length: int = 97
    device: str = "cpu"
    store_dir: Optional[Path] = None


def resolve_checkpoint(model_dir: Path) -> tuple[Path, dict]:
    """The weights folder and the run config ({"model": ..., "train": ...}) of a checkpoint.

    ``model_dir`` is the train stage's output (weights in ``best/``, run config beside it) or
    a weights folder itself (run config in it or its parent).
    """
    model_dir = Path(model_dir)
    weights = model_dir / "best" if (model_dir / "best").is_dir() else model_dir
    if not weights.is_dir():
        raise LimitrError(f"model folder {model_dir} does not exist: run the train stage first (`dvc repro train`)")
    for candidate in (model_dir / "config.json", weights / "config.json", weights.parent / "config.json"):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except json.JSONDecodeError as exc:
                raise LimitrError(f"{candidate} is not valid JSON: {exc}") from exc
            if isinstance(data, dict) and isinstance(data.get("train"), dict):
                return weights, data
    raise LimitrError(
        f"no run config with a 'train' section next to the weights in {model_dir}; "
        "it records the crop size the model was trained with (re-run the train stage)"
    )


def model_fingerprint(weights: Path) -> str:
    """A short hash of a weights folder's config and weights: embeddings record it, so that
    a gallery embedded with another model can be told apart (16 hex digits)."""
    import hashlib

    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        path = Path(weights) / name
        if path.is_file():
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def load_model(model_dir: Path, device: str):
    """(LIMITR model in eval mode on ``device``, run config) from a checkpoint folder."""
    from limitr.model import LIMITR

    weights, run_config = resolve_checkpoint(model_dir)
    try:
        model = LIMITR.from_pretrained(weights)
    except (OSError, ValueError, KeyError) as exc:
        raise LimitrError(f"cannot load the model from {weights}: {exc}") from exc
    return model.to(device).eval(), run_config


def _read_tokens(path: Path, key: str) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(keys (n,), input_ids, attention_mask, word_ids (n, T) int64) of a token table."""
    table = pq.read_table(path, columns=[key, "input_ids", "attention_mask", "word_ids"])
    keys = np.asarray(table.column(key).to_pylist(), dtype=np.int64)

    def matrix(name: str) -> torch.Tensor:
        rows = table.column(name).to_pylist()
        width = max((len(r) for r in rows), default=0)
        out = np.full((len(rows), width), -1 if name == "word_ids" else 0, dtype=np.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return torch.from_numpy(out)

    return keys, matrix("input_ids"), matrix("attention_mask"), matrix("word_ids")


@torch.no_grad()
def embed_token_rows(
    model,
    keys: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    word_ids: torch.Tensor,
    writer: EmbeddingWriter,
    settings: EmbedSettings,
    progress: ProgressFn = None,
) -> None:
    """Encode (n, T) token rows in batches and hand them to ``writer`` keyed by ``keys`` (n,)."""
    dev = torch.device(settings.device)
    for start in range(0, len(keys), settings.batch_size):
        sl = slice(start, start + settings.batch_size)
        ids, att, wid = trim_padding(input_ids[sl], attention_mask[sl], word_ids[sl], min_length=1)
        txt = model.encode_text(ids.to(dev), att.to(dev), wid.to(dev))
        writer.add(keys[sl], txt)
        advance(progress, int(ids.shape[0]))


@torch.no_grad()
def embed_test_split(model, shards: Path, tokens: Path, folder: Path, settings: EmbedSettings,
                     progress: ProgressFn = None, split: str = "test") -> dict:
    """Images and reports of a split's studies, keyed by study_id. Returns the table report."""
    dataset = StudyDataset(shards, tokens, split, settings.crop_size, train=False, store_dir=settings.store_dir)
    lateral = bool(getattr(getattr(model, "config", None), "lateral", True))
    loader = torch.utils.data.DataLoader(dataset, batch_size=settings.batch_size, collate_fn=collate_studies)
    images = EmbeddingWriter(folder, "images", "study_id", settings.rows_per_file)
    texts = EmbeddingWriter(folder, "texts", "study_id", settings.rows_per_file)
    for batch in loader:
        inputs = batch.to_model_inputs(settings.device, settings.upsample_to, lateral=lateral)
        img = model.encode_images(inputs.frontal, inputs.lateral, inputs.has_lateral)
        images.add(batch.study_id, img)
        txt = model.encode_text(inputs.input_ids, inputs.attention_mask, inputs.word_ids)
        texts.add(batch.study_id, txt)
        advance(progress, 2 * len(batch))
    return {
        "key": "study_id",
        "images": len(dataset),
        "texts": len(dataset),
        "with_lateral": dataset.report.get("with_lateral"),
        "grid": list(images.grid) if images.grid else None,
        "files": images.close() + texts.close(),
        "skipped": dataset.report.get("skipped", {}),
        "laterals_dropped": dataset.report.get("laterals_dropped", {}),
    }


def count_rows(path: Path) -> int:
    return int(pq.ParquetFile(path).metadata.num_rows)


@torch.no_grad()
def embed_image_table(model, table: Path, token_table: Optional[Path], key: str, folder: Path,
                      settings: EmbedSettings, progress: ProgressFn = None) -> dict:
    """Frontal images of a table (``key`` and ``image`` columns), and its texts from
    ``token_table`` when that exists, keyed by ``key``. Returns the table report: counts,
    files, and every left-out row counted by reason."""
    skipped: Counter[str] = Counter()
    images = EmbeddingWriter(folder, "images", key, settings.rows_per_file)
    keys_seen: set[int] = set()
    embedded: list[int] = []
    for batch in pq.ParquetFile(table).iter_batches(batch_size=settings.batch_size, columns=[key, "image"]):
        ids, crops = [], []
        for k, data in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
            if k in keys_seen:
                skipped["duplicate_key"] += 1
                continue
            keys_seen.add(k)
            crop, reason = decode_centre_crop(data, settings.crop_size)
            if reason is not None:
                skipped[reason] += 1
                continue
            ids.append(k)
            crops.append(torch.from_numpy(crop))
        if ids:
            frontal = prepare_images(torch.stack(crops), settings.device, settings.upsample_to)
            no_lateral = torch.zeros(len(ids), dtype=torch.bool, device=settings.device)
            img = model.encode_images(frontal, None, no_lateral)
            images.add(torch.tensor(ids, dtype=torch.int64), img)
            embedded.extend(ids)
        advance(progress, batch.num_rows)
    report: dict = {"key": key, "images": len(embedded), "grid": list(images.grid) if images.grid else None}
    files = images.close()
    n_texts = 0
    if token_table is not None and token_table.exists():
        tok_keys, input_ids, attention, word_ids = _read_tokens(token_table, key)
        has_words = (word_ids >= 0).any(1).numpy()
        in_table = np.isin(tok_keys, np.fromiter(keys_seen, dtype=np.int64, count=len(keys_seen)))
        with_image = np.isin(tok_keys, np.asarray(embedded, dtype=np.int64))
        _, first = np.unique(tok_keys, return_index=True)
        unique = np.zeros(len(tok_keys), dtype=bool)
        unique[first] = True
        keep = with_image & has_words & unique
        skipped["duplicate_tokens"] += int((~unique).sum())
        skipped["tokens_without_table_row"] += int((~in_table).sum())
        skipped["text_of_left_out_image"] += int((in_table & ~with_image).sum())
        skipped["no_words"] += int((with_image & ~has_words).sum())
        texts = EmbeddingWriter(folder, "texts", key, settings.rows_per_file)
        rows = torch.from_numpy(np.flatnonzero(keep))
        embed_token_rows(model, torch.from_numpy(tok_keys)[rows], input_ids[rows], attention[rows], word_ids[rows],
                     texts, settings, progress)
        files += texts.close()
        n_texts = int(keep.sum())
    else:
        report["texts_skipped"] = "no token table"
    report.update({"texts": n_texts, "files": files, "skipped": {k: int(v) for k, v in skipped.items() if v}})
    return report


@torch.no_grad()
def embed_prompts(model, tokenizer_dir: Path, folder: Path, settings: EmbedSettings,
                  progress: ProgressFn = None) -> dict:
    """The class and zero-shot prompts, keyed by their index in ``prompts.json``."""
    if not Path(tokenizer_dir).is_dir():
        raise LimitrError(f"tokenizer folder {tokenizer_dir} is missing: run the tokenize stage first")
    prompts = all_prompts()
    max_length = settings.max_length
    token_report = Path(tokenizer_dir).parent / "report.json"
    if token_report.is_file():  # the reports' token limit, where the tokenize stage wrote it
        max_length = int(json.loads(token_report.read_text()).get("max_length") or max_length)
    tok = tokenize_prompts(str(tokenizer_dir), prompts, max_length)
    writer = EmbeddingWriter(folder, "texts", "prompt_index", settings.rows_per_file)
    keys = torch.arange(len(prompts), dtype=torch.int64)
    embed_token_rows(model, keys, tok["input_ids"], tok["attention_mask"], tok["word_ids"], writer, settings, progress)
    (Path(folder) / "prompts.json").write_text(json.dumps(prompts, indent=2) + "\n")
    return {"key": "prompt_index", "texts": len(prompts), "files": writer.close() + ["prompts.json"]}


@dataclass
class EmbedTask:
    """One table to embed: its name, the items it will encode (for a progress total), and
    either how to run it or why it is skipped."""

    name: str
    total: int
    run: Optional[Callable[[object, Path, EmbedSettings, ProgressFn], dict]] = None
    skipped: Optional[str] = None


def plan_tasks(shards: Path, tokens: Path) -> list[EmbedTask]:
    """The tables to embed from the preprocess and tokenize outputs, in order."""
    shards, tokens = Path(shards), Path(tokens)
    split_files = sorted((shards / "test").glob("part-*.parquet"))
    if not split_files:
        raise LimitrError(f"no test split shards in {shards / 'test'}: run the preprocess stage first")
    n_test = sum(count_rows(p) for p in split_files)
    tasks = [EmbedTask("test", 2 * n_test, lambda m, f, s, p: embed_test_split(m, shards, tokens, f, s, p))]
    for name in ("grounding", "class_retrieval"):
        table = shards / f"{name}.parquet"
        if not table.exists():
            tasks.append(EmbedTask(name, 0, skipped=f"no {name} table in {shards} (preprocess was given none)"))
            continue
        key = TABLE_KEYS[name]
        token_table = tokens / f"{name}.parquet"
        n = count_rows(table)
        total = n + (count_rows(token_table) if token_table.exists() else 0)

        def run(m, f, s, p, table=table, token_table=token_table, key=key):
            return embed_image_table(m, table, token_table, key, f, s, p)

        tasks.append(EmbedTask(name, total, run))
    tasks.append(EmbedTask("prompts", len(all_prompts()),
                           lambda m, f, s, p: embed_prompts(m, tokens / "tokenizer", f, s, p)))
    return tasks
