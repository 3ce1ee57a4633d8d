"""Studies of one split (study shards joined with token shards by study_id), read on demand.

What lives in memory is an index and the token matrices, not the images: per kept study its
study_id, where it came from (shard file, row group, row), its token row and the file offset
and length of its two images in the image store, with the token matrices in the narrowest
integer types that hold them (about 0.5 KB per study with the default 97 tokens). The image
bytes of the kept studies are copied once, at construction, into the image store: an
uncompressed Arrow IPC file. A study's PNG bytes are then one positioned read (``os.pread``)
of the store: the pages come from the kernel's page cache, which every DataLoader worker and
every process on the machine share (forked workers inherit the file descriptor; nothing is
copied or pickled) and which the kernel drops under memory pressure. Reading rather than
memory-mapping keeps those pages out of each process's resident set, so the resident memory
of a training process is bounded by the batch, not by the split.

Why an Arrow IPC file and not Parquet row groups read on demand: training visits studies in a
shuffled order, so consecutive items come from different row groups. A Parquet row group can
only be read (and its pages decompressed) whole, so each item would cost a read of its whole
row group (256 studies with the preprocess defaults): a 256-fold read amplification that an
LRU cache of decoded row groups only hides while the split fits in the cache. In the IPC file
every value sits uncompressed at a fixed offset, written down in the file itself. The PNG
bytes are already compressed, so the store is about the size of the shards' image columns.

The store is written under a temporary name and renamed into place; its name carries a key of
the shard and token files (paths, sizes, modification times) and the crop size, so a store
that fits is reused (a resumed run, or the other ranks of a data-parallel run) and one that
does not is never read. A store the dataset created in a temporary folder of its own is
removed with the dataset.

Augmentation is a random crop (training) or a centre crop (evaluation) of ``crop_size``. The
crop of study ``i`` in epoch ``e`` is drawn from a generator seeded with ``(seed, e, i)``, so
it does not depend on batch order, DataLoader workers or ranks, and a resumed run draws the
same crops as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
import weakref
from collections import Counter
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from limitr.data.prepare import StudyItem, crop_square, decode_grey, image_size
from limitr.errors import LimitrError
from limitr.files import writing

#: Why a study or a token row was left out (keys of ``StudyDataset.report["skipped"]``).
SKIP_REASONS: tuple[str, ...] = (
    "no_tokens",  # a study without a token row
    "tokens_without_study",  # a token row without a study
    "duplicate_study",  # a study_id seen earlier in the study shards
    "duplicate_tokens",  # a study_id seen earlier in the token shard
    "no_words",  # a report with no word left after tokenising
    "frontal_unreadable",  # the frontal PNG cannot be opened
    "frontal_smaller_than_crop",
)
#: Laterals dropped from studies that are kept (the study then counts as frontal-only).
LATERAL_DROP_REASONS: tuple[str, ...] = ("lateral_unreadable", "lateral_smaller_than_crop")

#: The image store's columns: the kept studies' PNG bytes and where each came from.
STORE_SCHEMA = pa.schema(
    [
        pa.field("study_id", pa.int64(), nullable=False),
        pa.field("token_row", pa.int64(), nullable=False),
        pa.field("file", pa.int32(), nullable=False),  # index into the split's shard files
        pa.field("row_group", pa.int32(), nullable=False),
        pa.field("row", pa.int32(), nullable=False),  # row within the row group
        pa.field("frontal_image", pa.binary(), nullable=False),
        pa.field("lateral_image", pa.binary()),  # null: none, or dropped (see the report)
    ]
)
STORE_VERSION = 1

RERUN_PREPROCESS = "re-run the preprocess stage (`dvc repro preprocess`)"


def study_files(shards: Path, split: str) -> list[Path]:
    """The study shards of one split, in name order."""
    return sorted((Path(shards) / split).glob("part-*.parquet"))


def token_file(tokens: Path, split: str) -> Path:
    return Path(tokens) / f"{split}.parquet"


def _narrow(matrix: np.ndarray) -> np.ndarray:
    """The same integers in the narrowest of int8/int16/int32/int64 that holds them all."""
    if matrix.size == 0:
        return matrix.astype(np.int8)
    lo, hi = int(matrix.min()), int(matrix.max())
    for dtype in (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return matrix.astype(dtype)
    return matrix.astype(np.int64)


def _token_matrix(column: pa.ChunkedArray, name: str, split: str) -> np.ndarray:
    """A list<int> column of equal-length rows -> (n, T) integers (narrowest type)."""
    flat = column.combine_chunks()
    lengths = np.diff(np.asarray(flat.offsets))
    if len(lengths) and (lengths != lengths[0]).any():
        raise LimitrError(
            f"token shard {split}: rows of '{name}' have different lengths; re-run the tokenize stage"
        )
    width = int(lengths[0]) if len(lengths) else 0
    return _narrow(np.asarray(flat.flatten()).reshape(len(lengths), width))


def _file_key(paths: list[Path], crop_size: int) -> str:
    """What the store depends on: the input files (path, size, mtime) and the crop size."""
    h = hashlib.sha256(f"v{STORE_VERSION} crop {crop_size}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"|{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


class _Tokens:
    """A split's token shard: matrices and study_id -> first row.

    Memory per token row: the three matrices in their narrowest types (about 400 bytes with 97
    tokens), a flag and two int64 of the sorted id index: no Python object per row, so a split
    of MIMIC-CXR's size costs about 0.1 GB here, whatever the allocator keeps.
    """

    def __init__(self, path: Path, split: str, batch_rows: int = 8192) -> None:
        names = ("input_ids", "attention_mask", "word_ids")
        parts: dict[str, list[np.ndarray]] = {name: [] for name in ("study_id", *names)}
        try:  # batch by batch: the int64 lists of the file never sit in memory all at once
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=["study_id", *names]):
                parts["study_id"].append(np.asarray(batch.column(0), dtype=np.int64))
                for i, name in enumerate(names, start=1):
                    parts[name].append(_token_matrix(pa.chunked_array([batch.column(i)]), name, split))
        except (OSError, pa.ArrowException) as exc:
            raise LimitrError(f"token shard {path} cannot be read ({exc}); re-run the tokenize stage") from exc
        for name in names:
            if len({m.shape[1] for m in parts[name]}) > 1:
                raise LimitrError(
                    f"token shard {split}: rows of '{name}' have different lengths; re-run the tokenize stage"
                )
        ids = np.concatenate(parts["study_id"]) if parts["study_id"] else np.zeros(0, np.int64)
        self.input_ids, self.attention, self.word_ids = (
            np.concatenate(parts[name]) if parts[name] else np.zeros((0, 0), np.int8) for name in names
        )
        self.has_words = (self.word_ids >= 0).any(axis=1)
        # study_id -> first row: the sorted unique ids and their first rows (np.unique is stable)
        self._ids, self._first = np.unique(ids, return_index=True)
        self.duplicates = len(ids) - len(self._ids)

    def __len__(self) -> int:
        """The number of distinct study ids."""
        return len(self._ids)

    def rows_of(self, study_ids: np.ndarray) -> np.ndarray:
        """The first token row of each study id, -1 where the shard has none."""
        study_ids = np.asarray(study_ids, dtype=np.int64)
        if not len(self._ids):
            return np.full(len(study_ids), -1, np.int64)
        at = np.minimum(np.searchsorted(self._ids, study_ids), len(self._ids) - 1)
        return np.where(self._ids[at] == study_ids, self._first[at], -1)


def _build_store(files: list[Path], tok: _Tokens, split: str, crop: int, dest: Path) -> dict:
    """Join ``files`` with the tokens row group by row group (memory: one row group), write the
    kept studies' images to ``dest`` (temporary name, then rename) and return the report."""
    skipped: Counter[str] = Counter()
    # Which study ids were met already, without a Python object per study: a flag per token
    # row for the studies with tokens, a set only for those without (left out anyway, rare).
    seen_rows = np.zeros(len(tok.input_ids), dtype=bool)
    seen_without: set[int] = set()
    used_tokens = 0
    n_kept = n_lateral = 0
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with writing(dest):  # a full disk: one line naming the store, classified before cleanup
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, STORE_SCHEMA) as writer:
                for file_no, path in enumerate(files):
                    try:
                        parquet = pq.ParquetFile(path, pre_buffer=False)
                        groups = range(parquet.num_row_groups)
                    except (OSError, pa.ArrowException) as exc:
                        raise LimitrError(f"study shard {path} cannot be read ({exc}); {RERUN_PREPROCESS}") from exc
                    for group in groups:
                        try:
                            table = parquet.read_row_group(
                                group, columns=["study_id", "frontal_image", "lateral_image"], use_threads=False)
                        except (OSError, pa.ArrowException) as exc:
                            raise LimitrError(
                                f"study shard {path} (row group {group}) cannot be read ({exc}); {RERUN_PREPROCESS}"
                            ) from exc
                        kept: dict[str, list] = {name: [] for name in STORE_SCHEMA.names}
                        sids = table.column("study_id").to_numpy()
                        token_rows = tok.rows_of(sids).tolist()
                        fronts = table.column("frontal_image")
                        lats = table.column("lateral_image")
                        for row, (sid, token_row) in enumerate(zip(sids.tolist(), token_rows)):
                            if token_row < 0:
                                if sid in seen_without:
                                    skipped["duplicate_study"] += 1
                                else:
                                    seen_without.add(sid)
                                    skipped["no_tokens"] += 1
                                continue
                            if seen_rows[token_row]:
                                skipped["duplicate_study"] += 1
                                continue
                            seen_rows[token_row] = True
                            used_tokens += 1
                            front, lat = fronts[row].as_py(), lats[row].as_py()  # one study's bytes at a time
                            if not tok.has_words[token_row]:
                                skipped["no_words"] += 1
                                continue
                            size = image_size(front)
                            if size is None:
                                skipped["frontal_unreadable"] += 1
                                continue
                            if min(size) < crop:
                                skipped["frontal_smaller_than_crop"] += 1
                                continue
                            if lat is not None:
                                lat_size = image_size(lat)
                                if lat_size is None:
                                    skipped["lateral_unreadable"] += 1
                                    lat = None
                                elif min(lat_size) < crop:
                                    skipped["lateral_smaller_than_crop"] += 1
                                    lat = None
                            for name, value in zip(STORE_SCHEMA.names, (sid, token_row, file_no, group, row, front, lat)):
                                kept[name].append(value)
                            n_lateral += lat is not None
                        if kept["study_id"]:
                            writer.write_batch(pa.RecordBatch.from_pydict(kept, schema=STORE_SCHEMA))
                            n_kept += len(kept["study_id"])
                        del table, fronts, lats, kept
            skipped["tokens_without_study"] += len(tok) - used_tokens
            skipped["duplicate_tokens"] += tok.duplicates
            report = {
                "split": split,
                "studies": n_kept,
                "with_lateral": n_lateral,
                "skipped": {k: int(skipped[k]) for k in SKIP_REASONS},
                "laterals_dropped": {k: int(skipped[k]) for k in LATERAL_DROP_REASONS},
            }
            if n_kept:
                report_tmp = tmp.with_suffix(".json")
                report_tmp.write_text(json.dumps(report))
                os.replace(report_tmp, dest.with_suffix(".json"))
                os.replace(tmp, dest)  # the store exists only once complete, after its report
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".json").unlink(missing_ok=True)
    return report


def _value_spans(column: pa.Array, base: int) -> np.ndarray:
    """(n, 2) int64 (file offset, length) of each value of a memory-mapped binary column;
    length -1 for a null."""
    _, offsets_buf, data_buf = column.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[column.offset : column.offset + len(column) + 1]
    offsets = offsets.astype(np.int64)
    spans = np.empty((len(column), 2), dtype=np.int64)
    start = data_buf.address - base if data_buf is not None and data_buf.size else 0  # empty: not in the file
    spans[:, 0] = start + offsets[:-1]
    spans[:, 1] = np.diff(offsets)
    spans[column.is_null().to_numpy(zero_copy_only=False), 1] = -1
    return spans


def _remove_dir(path: str, pid: int) -> None:
    if os.getpid() == pid:  # never from a forked DataLoader worker
        shutil.rmtree(path, ignore_errors=True)


class StudyDataset(torch.utils.data.Dataset):
    """The studies of one split that have both images and tokens, in study-shard order.

    shards: folder with ``{split}/part-*.parquet`` (STUDY_SCHEMA); tokens: folder with
    ``{split}.parquet`` (TOKEN_SCHEMA). ``train`` picks random crops, else centre crops.
    store_dir: where the image store is written or reused (None = a temporary folder of this
    dataset's own, removed with it). ``report`` counts the studies kept and every record left
    out, by reason.
    """

    def __init__(
        self,
        shards: Path,
        tokens: Path,
        split: str,
        crop_size: int,
        *,
        train: bool,
        seed: int = 0,
        store_dir: Optional[Path] = None,
    ) -> None:
        self.split = split
        self.crop_size = int(crop_size)
        self.train = train
        self.seed = int(seed)
        self.epoch = 0

        self.files = study_files(shards, split)
        if not self.files:
            raise LimitrError(
                f"no study shards in {Path(shards) / split}: run the preprocess stage first "
                "(`dvc repro preprocess`) or point train.shards at its output"
            )
        tok_path = token_file(tokens, split)
        if not tok_path.exists():
            raise LimitrError(f"token shard {tok_path} is missing: run the tokenize stage first")
        tok = _Tokens(tok_path, split)

        if store_dir is None:
            store_dir = Path(tempfile.mkdtemp(prefix="limitr-images-"))
            weakref.finalize(self, _remove_dir, str(store_dir), os.getpid())
        store_dir = Path(store_dir)
        store_dir.mkdir(parents=True, exist_ok=True)
        key = _file_key([*self.files, tok_path], self.crop_size)
        self.store_path = store_dir / f"{split}-{key}.arrow"
        reused = self.store_path.is_file() and self.store_path.with_suffix(".json").is_file()
        if reused:
            self.report = json.loads(self.store_path.with_suffix(".json").read_text())
        else:
            self.report = _build_store(self.files, tok, split, self.crop_size, self.store_path)
        if not self.report["studies"]:
            skipped = {k: v for k, v in self.report["skipped"].items() if v}
            if self.report["skipped"]["frontal_smaller_than_crop"]:
                raise LimitrError(
                    f"every {split} image is smaller than crop_size {self.crop_size}: lower "
                    "train.crop_size or raise preprocess.image_size"
                )
            raise LimitrError(
                f"no {split} study has both images and tokens (left out: {skipped}); "
                "check that train.shards and train.tokens come from the same preprocess run"
            )
        try:
            self._open_store()
        except LimitrError:
            if not reused:
                raise
            self.report = _build_store(self.files, tok, split, self.crop_size, self.store_path)  # damaged: anew
            self._open_store()
        # The token matrices stay as read (no second copy in study order): a study's row is
        # looked up through the store's token_row column.
        self._token_rows = self._index["token_row"]
        self._input_ids, self._attention, self._word_ids = tok.input_ids, tok.attention, tok.word_ids

    def _open_store(self) -> None:
        """Read the store's index columns and the file position of every image; keep a file
        descriptor for reading the images (``os.pread``: no seek, so forked workers share it)."""
        try:
            mapped = pa.memory_map(str(self.store_path), "r")
            base = mapped.read_buffer(1).address  # the mapping's first byte: file offset 0
            reader = pa.ipc.open_file(mapped)
            batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
            self._index = {
                name: np.concatenate([b.column(name).to_numpy() for b in batches])
                for name in ("study_id", "token_row", "file", "row_group", "row")
            }
            self._spans = {
                name: np.concatenate([_value_spans(b.column(name), base) for b in batches])
                for name in ("frontal_image", "lateral_image")
            }
            size = mapped.size()
            mapped.close()
            for spans in self._spans.values():
                if ((spans[:, 1] >= 0) & ((spans[:, 0] < 0) | (spans[:, 0] + spans[:, 1] > size))).any():
                    raise OSError("an image lies outside the file")
        except (OSError, pa.ArrowException) as exc:
            raise LimitrError(f"image store {self.store_path} cannot be read ({exc}); delete it and re-run") from exc
        self.study_ids = self._index["study_id"]
        self._fd = os.open(self.store_path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)

    def __len__(self) -> int:
        return len(self.study_ids)

    def resident_bytes(self) -> int:
        """The bytes this dataset holds in memory for its studies: the index, the image
        positions and the token matrices (the images stay in the store file)."""
        arrays = [*self._index.values(), *self._spans.values(), self._input_ids, self._attention, self._word_ids]
        return int(sum(a.nbytes for a in arrays))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random crops ``__getitem__`` draws (set before iterating)."""
        self.epoch = int(epoch)

    def location(self, index: int) -> str:
        """Where study ``index`` came from: shard file, row group and row."""
        i = self._index
        return f"{self.files[int(i['file'][index])]} (row group {int(i['row_group'][index])}, row {int(i['row'][index])})"

    def image_bytes(self, index: int) -> tuple[bytes, Optional[bytes]]:
        """The PNG bytes of study ``index``: (frontal, lateral or None)."""
        out = []
        for name in ("frontal_image", "lateral_image"):
            start, length = (int(v) for v in self._spans[name][index])
            if length < 0:
                out.append(None)
                continue
            data = os.pread(self._fd, length, start)
            if len(data) != length:
                raise LimitrError(
                    f"image store {self.store_path} is shorter than its index (truncated?); delete it and re-run"
                )
            out.append(data)
        return out[0], out[1]

    def _crop(self, data: bytes, rng: Optional[np.random.Generator]) -> torch.Tensor:
        return torch.from_numpy(crop_square(decode_grey(data), self.crop_size, rng))

    @property
    def token_length(self) -> int:
        """Tokens per report row (the tokenize stage's max_length)."""
        return int(self._input_ids.shape[1])

    def __getitem__(self, index: Union[int, tuple[int, int]]) -> StudyItem:
        """Study ``index`` cropped for the epoch of :meth:`set_epoch`, or for ``epoch`` when
        given ``(epoch, index)`` (what :class:`EpochBatches` yields)."""
        epoch = self.epoch
        if isinstance(index, tuple):
            epoch, index = index
        index = int(index)
        rng = np.random.default_rng((self.seed, int(epoch), index)) if self.train else None
        row = int(self._token_rows[index])
        frontal_bytes, lateral_bytes = self.image_bytes(index)
        try:
            frontal = self._crop(frontal_bytes, rng)
            lateral = None if lateral_bytes is None else self._crop(lateral_bytes, rng)
        except (OSError, ValueError) as exc:  # the header read but the pixels do not decode
            raise LimitrError(
                f"study {int(self.study_ids[index])} of split {self.split} has a corrupt image in "
                f"{self.location(index)} ({exc}); {RERUN_PREPROCESS}"
            ) from exc
        return StudyItem(
            index=index,
            study_id=int(self.study_ids[index]),
            frontal=frontal,
            lateral=lateral if lateral is not None else torch.zeros_like(frontal),
            has_lateral=lateral is not None,
            input_ids=torch.from_numpy(self._input_ids[row].astype(np.int64)),
            attention_mask=torch.from_numpy(self._attention[row].astype(np.int64)),
            word_ids=torch.from_numpy(self._word_ids[row].astype(np.int64)),
        )


class EpochBatches(torch.utils.data.Sampler):
    """A batch sampler whose indices carry the epoch: ``[(epoch, i), ...]``.

    Persistent DataLoader workers hold the copy of the dataset made when they started, so a
    :meth:`StudyDataset.set_epoch` in the training process never reaches them; with the epoch
    in each index they crop for the right epoch whatever the number of workers.
    ``batches`` is a batch sampler with ``set_epoch`` (e.g. ``ShardedBatchSampler``).
    """

    def __init__(self, batches) -> None:
        self.batches = batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.batches:
            yield [(self.epoch, int(i)) for i in batch]
