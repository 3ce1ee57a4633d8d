"""Tokenization: word ids merge pieces into the words of the text, padding and truncation,
token files per split and table, the stage, and a trained WordPiece vocabulary."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from limitr.data.schema import (CHEXPERT_LABELS, GROUNDING_SCHEMA, STUDY_SCHEMA, TOKEN_SCHEMA,
                                token_schema)
from limitr.data.shards import ParquetSink, ShardWriter
from limitr.text.tokenize import encode_texts, merge_word_pieces, tokenize_shards
from limitr.text.tokenizer import load_tokenizer, train_wordpiece

TEXTS = [
    "the lungs are clear. no pleural effusion or pneumothorax.",
    "left-sided pleural effusion, unchanged; cardiomegaly (mild) with retrocardiac opacity.",
    "et tube tip 3.5 cm above the carina. ng tube courses below the diaphragm.",
    "",
    "interval increase in bibasilar atelectasis vs. aspiration.",
]


def words_of(text: str) -> list[str]:
    """The words a BERT pre-tokenizer sees: runs of letters/digits, each punctuation mark alone."""
    return re.findall(r"\w+|[^\w\s]", text)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


def test_word_ids_merge_pieces_into_the_words_of_the_text(tokenizer) -> None:
    encoded = encode_texts(tokenizer, TEXTS, max_length=64)
    assert encoded.input_ids.shape == (5, 64) and encoded.word_ids.dtype == np.int32
    for i, text in enumerate(TEXTS):
        tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids[i].tolist())
        assert merge_word_pieces(tokens, encoded.word_ids[i].tolist()) == words_of(text)
        assert encoded.n_words[i] == len(words_of(text))
    pieces = tokenizer.convert_ids_to_tokens(encoded.input_ids[1].tolist())
    assert any(t.startswith("##") for t in pieces)  # the check above did merge something


def test_specials_and_padding_have_word_id_minus_one(tokenizer) -> None:
    encoded = encode_texts(tokenizer, TEXTS, max_length=40)
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    special = np.isin(encoded.input_ids, [cls_id, sep_id, pad_id])
    assert np.array_equal(encoded.word_ids == -1, special)
    assert np.array_equal(encoded.attention_mask == 0, encoded.input_ids == pad_id)
    assert (encoded.input_ids[:, 0] == cls_id).all()
    lengths = encoded.attention_mask.sum(axis=1)
    assert (encoded.input_ids[np.arange(5), lengths - 1] == sep_id).all()
    # word ids never decrease along a report
    real = np.where(encoded.word_ids >= 0, encoded.word_ids, 0)
    assert (np.diff(np.maximum.accumulate(real, axis=1), axis=1) >= 0).all()
    assert (np.diff(real[:, 1:6], axis=1) >= 0).all()


def test_truncation_is_flagged_and_keeps_a_prefix(tokenizer) -> None:
    long = " ".join(["moderate right pleural effusion."] * 30)
    encoded = encode_texts(tokenizer, [long, "the lungs are clear."], max_length=16)
    assert encoded.truncated.tolist() == [True, False]
    assert encoded.attention_mask[0].sum() == 16
    tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids[0].tolist())
    merged = merge_word_pieces(tokens, encoded.word_ids[0].tolist())
    reference = words_of(long)
    assert merged[:-1] == reference[: len(merged) - 1]
    assert reference[len(merged) - 1].startswith(merged[-1])


def _write_shards(folder: Path) -> list[int]:
    """Minimal study shards (placeholder image bytes) with TEXTS spread over the splits."""
    splits = ["train", "train", "validate", "test", "train"]
    ids = []
    writers = {s: ShardWriter(folder / s, STUDY_SCHEMA, rows_per_file=2) for s in ("train", "validate", "test")}
    for i, (text, split) in enumerate(zip(TEXTS, splits)):
        study_id = 50000000 + i
        ids.append(study_id)
        writers[split].write({
            "subject_id": 10000000 + i, "study_id": study_id, "split": split,
            "frontal_dicom_id": f"d{i}", "frontal_view": "PA", "frontal_image": b"png",
            "text": text or "x", "text_source": "findings",
            **{name: None for name in CHEXPERT_LABELS},
        })
    for w in writers.values():
        w.close()
    with ParquetSink(folder / "grounding.parquet", GROUNDING_SCHEMA) as sink:
        sink.write({"phrase_id": 0, "dicom_id": "d0", "category_name": "Pneumothorax",
                    "label_text": "Left apical pneumothorax", "text": "left apical pneumothorax",
                    "boxes": [[1.0, 2.0, 3.0, 4.0]], "image": b"png", "orig_height": 10,
                    "orig_width": 10, "scale": 1.0, "pad_left": 0, "pad_top": 0})
    return ids


def test_token_files_per_split_and_table(tokenizer, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    _write_shards(shards)
    out = tmp_path / "tokens"
    report = tokenize_shards(shards, out, tokenizer, max_length=12)
    lengths = [len(tokenizer(t)["input_ids"]) for t in (TEXTS[0], TEXTS[1], TEXTS[4], TEXTS[2], "x")]
    assert lengths[-1] <= 12 < min(lengths[:-1])
    assert report["splits"] == {"train": {"reports": 3, "truncated": 3},
                                "validate": {"reports": 1, "truncated": 1},
                                "test": {"reports": 1, "truncated": 0}}
    assert report["grounding"] == {"texts": 1, "truncated": 0, "no_text": 0}
    train = pq.read_table(out / "train.parquet")
    assert train.schema.equals(TOKEN_SCHEMA)
    assert train.column("study_id").to_pylist() == [50000000, 50000001, 50000004]
    assert all(len(ids) == 12 for ids in train.column("input_ids").to_pylist())
    encoded = encode_texts(tokenizer, [TEXTS[0], TEXTS[1], TEXTS[4]], 12)
    assert np.array_equal(np.array(train.column("word_ids").to_pylist()), encoded.word_ids)
    assert train.column("truncated").to_pylist() == encoded.truncated.tolist()
    grounding = pq.read_table(out / "grounding.parquet")
    assert grounding.schema.equals(token_schema("phrase_id"))
    assert not (out / "class_retrieval.parquet").exists()
    reloaded = load_tokenizer(out / "tokenizer")
    assert reloaded(TEXTS[1])["input_ids"] == tokenizer(TEXTS[1])["input_ids"]


def test_stage_with_a_trained_wordpiece(tmp_path: Path) -> None:
    from stages.app import app

    shards = tmp_path / "shards"
    _write_shards(shards)
    params = tmp_path / "params.yaml"
    params.write_text(f"tokenize:\n  shards: {shards}\n  out: {tmp_path / 'tokens'}\n  tokenizer: null\n"
                      "  max_length: 24\n  train_wordpiece: false\n  vocab_size: 120\n")
    result = CliRunner().invoke(app, ["tokenize", "--params", str(params), "--train-wordpiece"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "tokens" / "report.json").read_text())
    assert report["max_length"] == 24 and report["vocab_size"] <= 120
    trained = load_tokenizer(tmp_path / "tokens" / "tokenizer")
    assert len(trained) == report["vocab_size"]
    encoded = encode_texts(trained, TEXTS[:2], 64)
    for i in range(2):
        tokens = trained.convert_ids_to_tokens(encoded.input_ids[i].tolist())
        merged = merge_word_pieces(tokens, encoded.word_ids[i].tolist())
        assert len(merged) == len(words_of(TEXTS[i]))  # [UNK] may stand for a rare word


def test_wordpiece_training_is_deterministic() -> None:
    texts = TEXTS * 5
    a, b = train_wordpiece(texts, vocab_size=150), train_wordpiece(texts, vocab_size=150)
    assert a.get_vocab() == b.get_vocab()
    assert a(TEXTS[1])["input_ids"] == b(TEXTS[1])["input_ids"]


def test_stage_without_shards_is_one_clear_line(tmp_path: Path) -> None:
    from stages.app import app

    (tmp_path / "p.yaml").write_text("{}\n")
    result = CliRunner().invoke(app, ["tokenize", "--params", str(tmp_path / "p.yaml"),
                                      "--shards", str(tmp_path / "none"), "--out", str(tmp_path / "t")])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and "preprocess" in result.output
