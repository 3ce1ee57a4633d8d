"""Report texts to token shards, with the word id of every token.

``DIR/{train,validate,test}.parquet`` hold ``input_ids``, ``attention_mask`` and ``word_ids``
keyed by ``study_id`` in shard order (schema :func:`limitr.data.schema.token_schema`),
padded to ``max_length``; ``word_ids`` numbers the words of the text from 0 (the fast
tokenizer's pre-tokenised words: punctuation marks are words of their own) and is -1 for
[CLS], [SEP] and padding, so the model sums word pieces into words with one scatter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa

from limitr.data.schema import SPLITS, token_schema
from limitr.data.shards import ParquetSink, check_readable, iter_batches, read_table, split_files
from limitr.errors import LimitrError
from limitr.progress import ProgressFn, advance

#: The evaluation tables of the preprocess stage and the key each is tokenized by.
EVAL_TABLES = (("grounding", "phrase_id"), ("class_retrieval", "item_id"))


@dataclass(frozen=True)
class EncodedTexts:
    """Texts tokenized and padded: N texts, L = max_length."""

    input_ids: np.ndarray  # (N, L) int32
    attention_mask: np.ndarray  # (N, L) int8, 1 on real tokens
    word_ids: np.ndarray  # (N, L) int32, word index or -1 ([CLS], [SEP], padding)
    n_words: np.ndarray  # (N,) int32, words kept after truncation
    truncated: np.ndarray  # (N,) bool, the text did not fit in L tokens


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> EncodedTexts:
    """Tokenize ``texts`` with a fast tokenizer, truncated and padded to ``max_length``."""
    if max_length < 3:
        raise LimitrError(f"max length must leave room for [CLS] and [SEP], got {max_length}")
    if not texts:
        empty = np.zeros((0, max_length), np.int32)
        return EncodedTexts(empty, empty.astype(np.int8), empty, np.zeros(0, np.int32), np.zeros(0, bool))
    enc = tokenizer(list(texts), max_length=max_length, truncation=True, padding="max_length",
                    return_attention_mask=True)
    encodings = enc.encodings
    # None (special tokens, padding) becomes NaN in a float array, then -1
    word_ids = np.array([e.word_ids for e in encodings], dtype=np.float64)
    word_ids = np.nan_to_num(word_ids, nan=-1.0).astype(np.int32)
    return EncodedTexts(
        input_ids=np.asarray(enc["input_ids"], dtype=np.int32),
        attention_mask=np.asarray(enc["attention_mask"], dtype=np.int8),
        word_ids=word_ids,
        n_words=(word_ids.max(axis=1) + 1).astype(np.int32),
        truncated=np.array([len(e.overflowing) > 0 for e in encodings], dtype=bool),
    )


def merge_word_pieces(tokens: Sequence[str], word_ids: Sequence[int], prefix: str = "##") -> list[str]:
    """The words a token sequence spells: pieces with the same word id joined, the
    continuation ``prefix`` dropped; tokens with word id -1 left out. For display and
    checks; the model merges embeddings with the word ids directly."""
    words: dict[int, str] = {}
    for token, word in zip(tokens, word_ids):
        if word < 0:
            continue
        piece = token[len(prefix):] if word in words and token.startswith(prefix) else token
        words[word] = words.get(word, "") + piece
    return [words[k] for k in sorted(words)]


def _table(key: str, keys: np.ndarray, encoded: EncodedTexts) -> pa.Table:
    n, length = encoded.input_ids.shape
    offsets = pa.array(np.arange(0, n * length + 1, length, dtype=np.int32))

    def lists(values: np.ndarray, kind: pa.DataType) -> pa.Array:
        return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=kind))

    return pa.Table.from_arrays(
        [pa.array(keys, pa.int64()), lists(encoded.input_ids, pa.int32()),
         lists(encoded.attention_mask, pa.int8()), lists(encoded.word_ids, pa.int32()),
         pa.array(encoded.n_words, pa.int32()), pa.array(encoded.truncated, pa.bool_())],
        schema=token_schema(key),
    )


def _tokenize_batches(batches: Iterator[pa.RecordBatch], key: str, sink: ParquetSink, tokenizer: Any,
                      max_length: int, progress: ProgressFn) -> dict[str, int]:
    counts = {"texts": 0, "truncated": 0, "no_text": 0}
    for batch in batches:
        keys = np.asarray(batch.column(key).to_numpy(zero_copy_only=False), dtype=np.int64)
        texts = batch.column("text").to_pylist()
        has_text = np.array([isinstance(t, str) and bool(t.strip()) for t in texts], dtype=bool)
        chosen = [t for t, ok in zip(texts, has_text) if ok]
        encoded = encode_texts(tokenizer, chosen, max_length)
        sink.write_table(_table(key, keys[has_text], encoded))
        counts["texts"] += len(chosen)
        counts["truncated"] += int(encoded.truncated.sum())
        counts["no_text"] += int((~has_text).sum())
        advance(progress, len(texts))
    return counts


def check_shards(shards: Path) -> None:
    """Raise LimitrError unless ``shards`` holds study shards."""
    shards = Path(shards)
    if not shards.is_dir() or not any(split_files(shards, s) for s in SPLITS):
        raise LimitrError(f"{shards} holds no study shards: run the preprocess stage first")
    count_texts(shards)  # every file's footer: a damaged file is named before any work


def count_texts(shards: Path) -> int:
    """Rows to tokenize under ``shards`` (the progress total)."""
    files = [p for s in SPLITS for p in split_files(shards, s)]
    files += [Path(shards) / f"{name}.parquet" for name, _ in EVAL_TABLES if (Path(shards) / f"{name}.parquet").is_file()]
    return check_readable(files)


def check_token_vocabulary(tokens: Path) -> None:
    """Refuse token shards whose ids come from a WordPiece vocabulary trained by tokenize:
    they do not index the pretrained text encoder's embeddings."""
    import json

    report_path = Path(tokens) / "report.json"
    if not report_path.is_file():
        return
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        return
    if report.get("trained_wordpiece") or str(report.get("tokenizer", "")).startswith("wordpiece trained"):
        raise LimitrError(
            f"the token shards in {tokens} use a WordPiece vocabulary trained by tokenize, whose ids do not "
            "match the pretrained text encoder's embeddings; set tokenize.train_wordpiece: false and rerun tokenize"
        )


def training_texts(shards: Path) -> Iterator[str]:
    """The model texts of the train split, in shard order (to train a vocabulary on)."""
    for batch in iter_batches(shards, "train", ["text"]):
        yield from (t for t in batch.column("text").to_pylist() if t)


def tokenize_shards(shards: Path, out: Path, tokenizer: Any, max_length: int = 97,
                    batch_size: int = 512, progress: ProgressFn = None,
                    tokenizer_name: Optional[str] = None) -> dict[str, Any]:
    """Write the token files for every split and evaluation table of ``shards`` into
    ``out`` (an empty folder) and ``out/tokenizer/``; returns the report."""
    shards, out = Path(shards), Path(out)
    check_shards(shards)
    report: dict[str, Any] = {
        "tokenizer": tokenizer_name or getattr(tokenizer, "name_or_path", ""),
        "vocab_size": len(tokenizer),
        "max_length": max_length,
        "splits": {},
    }
    for split in SPLITS:
        with ParquetSink(out / f"{split}.parquet", token_schema("study_id")) as sink:
            counts = _tokenize_batches(iter_batches(shards, split, ["study_id", "text"], batch_size),
                                       "study_id", sink, tokenizer, max_length, progress)
        report["splits"][split] = {"reports": counts["texts"], "truncated": counts["truncated"]}
    for name, key in EVAL_TABLES:
        path = shards / f"{name}.parquet"
        if not path.is_file():
            continue
        table = read_table(path, [key, "text"])
        with ParquetSink(out / f"{name}.parquet", token_schema(key)) as sink:
            report[name] = _tokenize_batches(iter(table.to_batches(batch_size)), key, sink,
                                             tokenizer, max_length, progress)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    return report
