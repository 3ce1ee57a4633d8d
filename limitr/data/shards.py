"""Parquet shards: a streaming writer (temporary name, then rename) and readers.

Layout written by the preprocess stage::

    DIR/train/part-00000.parquet, part-00001.parquet, ...
    DIR/validate/..., DIR/test/...
    DIR/grounding.parquet, DIR/class_retrieval.parquet (when their inputs are given)
    DIR/report.json

A file is complete or absent: it is written under ``.NAME.tmp`` and renamed when closed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from limitr.errors import LimitrError

#: Files are written without statistics timestamps or other run-dependent metadata, so
#: the same rows give the same bytes.
_WRITE_OPTIONS: dict[str, Any] = {"compression": "zstd", "write_statistics": False}


def part_name(number: int) -> str:
    """``part-NNNNN.parquet``."""
    return f"part-{number:05d}.parquet"


class ParquetSink:
    """One Parquet file written row group by row group; visible under its name only after
    :meth:`close` (``.NAME.tmp`` until then). Use as a context manager."""

    def __init__(self, path: Path, schema: pa.Schema, row_group_rows: int = 256) -> None:
        self.path = Path(path)
        self.schema = schema
        self.row_group_rows = max(1, int(row_group_rows))
        self.rows_written = 0
        self._pending: list[Mapping[str, Any]] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._writer: Optional[pq.ParquetWriter] = pq.ParquetWriter(self._tmp, schema, **_WRITE_OPTIONS)

    @property
    def rows(self) -> int:
        """Rows given so far (written or buffered)."""
        return self.rows_written + len(self._pending)

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one row (a mapping with the schema's columns)."""
        self._pending.append(row)
        if len(self._pending) >= self.row_group_rows:
            self._flush()

    def write_table(self, table: pa.Table) -> None:
        """Append a whole table with this sink's schema."""
        self._flush()
        assert self._writer is not None
        self._writer.write_table(table.cast(self.schema))
        self.rows_written += table.num_rows

    def _flush(self) -> None:
        if not self._pending:
            return
        assert self._writer is not None
        table = pa.Table.from_pylist(self._pending, schema=self.schema)
        self._writer.write_table(table)
        self.rows_written += table.num_rows
        self._pending = []

    def close(self) -> Path:
        """Finish the file and give it its name."""
        if self._writer is None:
            return self.path
        self._flush()
        self._writer.close()
        self._writer = None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the unfinished file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ParquetSink":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ShardWriter:
    """Rows of one split streamed into ``folder/part-NNNNN.parquet`` files of
    ``rows_per_file`` rows. ``number_of(k)`` names the k-th file (``k * num_shards +
    shard_index`` lets several jobs write disjoint parts into one folder)."""

    def __init__(self, folder: Path, schema: pa.Schema, rows_per_file: int,
                 number_of: Callable[[int], int] = lambda k: k, row_group_rows: int = 256) -> None:
        if rows_per_file < 1:
            raise LimitrError(f"shard size must be at least 1, got {rows_per_file}")
        self.folder = Path(folder)
        self.schema = schema
        self.rows_per_file = int(rows_per_file)
        self.number_of = number_of
        self.row_group_rows = min(row_group_rows, self.rows_per_file)
        self.files: list[Path] = []
        self._sink: Optional[ParquetSink] = None
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, row: Mapping[str, Any]) -> None:
        if self._sink is None:
            path = self.folder / part_name(self.number_of(len(self.files)))
            self._sink = ParquetSink(path, self.schema, self.row_group_rows)
        self._sink.write(row)
        if self._sink.rows >= self.rows_per_file:
            self.files.append(self._sink.close())
            self._sink = None

    def close(self) -> list[Path]:
        """Finish the last file; the files written, in order."""
        if self._sink is not None:
            self.files.append(self._sink.close())
            self._sink = None
        return self.files

    def abort(self) -> None:
        if self._sink is not None:
            self._sink.abort()
            self._sink = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def parquet_error(path: Path, exc: BaseException) -> LimitrError:
    """The one-line error for a Parquet file that cannot be read (truncated, not Parquet)."""
    folder = Path(path).parent.name if Path(path).parent.name in ("train", "validate", "test") else ""
    where = Path(path).parent.parent if folder else Path(path).parent
    return LimitrError(
        f"{path} cannot be read as Parquet ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): "
        f"it is damaged or truncated; rerun the stage that wrote {where} (e.g. dvc repro -f with that stage)"
    )


def open_parquet(path: Path) -> pq.ParquetFile:
    """``pq.ParquetFile(path)``, or a LimitrError naming the file when it cannot be read."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise parquet_error(path, exc) from None


def read_parquet(path: Path, columns: Optional[Sequence[str]] = None) -> pa.Table:
    """``pq.read_table`` with the same one-line error."""
    try:
        return pq.read_table(path, columns=list(columns) if columns else None)
    except (pa.ArrowException, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise parquet_error(path, exc) from None


def check_readable(paths: Sequence[Path]) -> int:
    """Read every file's footer (cheap) and return their rows; a damaged file is named now,
    before any work is done."""
    total = 0
    for path in paths:
        total += open_parquet(path).metadata.num_rows
    return total


def split_files(shards: Path, split: str) -> list[Path]:
    """The part files of ``split`` in order (empty when the split has none)."""
    folder = Path(shards) / split
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def iter_batches(shards: Path, split: str, columns: Optional[Sequence[str]] = None,
                 batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
    """Record batches of a split, file by file in order: memory stays at one batch."""
    for path in split_files(shards, split):
        parquet = open_parquet(path)
        try:
            yield from parquet.iter_batches(batch_size=batch_size, columns=list(columns) if columns else None)
        except (pa.ArrowException, OSError) as exc:
            raise parquet_error(path, exc) from None


def read_split(shards: Path, split: str, columns: Optional[Sequence[str]] = None,
               schema: Optional[pa.Schema] = None) -> pa.Table:
    """A whole split as one table (an empty table with ``schema`` when it has no files)."""
    files = split_files(shards, split)
    if not files:
        if schema is None:
            from limitr.data.schema import STUDY_SCHEMA

            schema = STUDY_SCHEMA
        empty = schema.empty_table()
        return empty.select(list(columns)) if columns else empty
    tables = [read_parquet(p, columns) for p in files]
    return pa.concat_tables(tables)


def read_table(path: Path, columns: Optional[Sequence[str]] = None) -> pa.Table:
    """One Parquet file (e.g. ``grounding.parquet``) as a table."""
    path = Path(path)
    if not path.is_file():
        raise LimitrError(f"{path} does not exist")
    return read_parquet(path, columns)
