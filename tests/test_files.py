"""The one writer (limitr/files.py) and the stage plumbing around it (stages/common.py): a
failed write of any library is one line naming the path, nothing half-written stays under a
final name, one writer per output folder. In-process, with writers that fail on demand
(tests/test_faults.py does the same on a real full disk where a tmpfs can be mounted)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

import limitr.files as files
from limitr.errors import LimitrError
from limitr.files import WriteError, write_atomic, write_failure
from stages.common import atomic_dir, lock_paths, output_lock, stage_errors

#: How a full disk reaches Python from each library the stages write with (seen on a full tmpfs).
FULL_DISK = {
    "python": OSError(errno.ENOSPC, "No space left on device"),
    "pyarrow": OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device"),
    "safetensors": type("SafetensorError", (Exception,), {})(
        "Error while serializing: I/O error: No space left on device (os error 28)"),
    "torch.save": RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
    "numpy": OSError("1048576 requested and 131056 written"),
}


@pytest.fixture
def disk_full(monkeypatch):
    monkeypatch.setattr(files, "free_bytes", lambda path: 4096)


@pytest.mark.parametrize("library", sorted(FULL_DISK))
def test_a_full_disk_is_recognised_whatever_library_wrote(library: str, disk_full, tmp_path: Path) -> None:
    failure = write_failure(FULL_DISK[library], tmp_path / "out" / "model.safetensors")
    assert isinstance(failure, WriteError) and failure.disk_full
    assert str(failure).startswith(f"no space left on the disk while writing {tmp_path / 'out' / 'model.safetensors'}")
    assert "4.0 KB free there now" in str(failure) and "\n" not in str(failure)


def test_other_errors_are_not_taken_for_a_full_disk(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(files, "free_bytes", lambda path: 10 << 30)
    assert write_failure(FULL_DISK["torch.save"], tmp_path) is None  # room left: not the disk
    assert write_failure(ValueError("bad value"), tmp_path) is None
    assert write_failure(LimitrError("already one line"), tmp_path) is None
    assert write_failure(FileNotFoundError(errno.ENOENT, "missing", "x"), tmp_path) is None
    assert write_failure(OSError(errno.ENOSPC, "No space left on device"), tmp_path).disk_full
    read_only = write_failure(OSError(errno.EROFS, "Read-only file system"), tmp_path / "a.json")
    assert read_only is not None and not read_only.disk_full and "read-only" in str(read_only)


def test_write_atomic_leaves_nothing_half_written(monkeypatch, tmp_path: Path) -> None:
    target = tmp_path / "metrics" / "summary.json"
    write_atomic(target, "old\n")

    def full(self, data):
        with open(self, "w") as fh:
            fh.write(data[:3])  # part of it made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(WriteError, match="while writing .*summary.json"):
        write_atomic(target, "new content\n")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["summary.json"]


def test_atomic_dir_keeps_the_old_folder_on_a_full_disk(disk_full, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    out.mkdir()
    (out / "part-00000.parquet").write_bytes(b"old")
    with pytest.raises(WriteError, match=f"while writing {out}"):
        with atomic_dir(out) as tmp:
            (tmp / "part-00000.parquet").write_bytes(b"ne")
            raise FULL_DISK["pyarrow"]
    assert [p.name for p in tmp_path.iterdir()] == ["shards"]
    assert (out / "part-00000.parquet").read_bytes() == b"old"


def test_atomic_dir_passes_other_errors_unchanged(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        with atomic_dir(tmp_path / "out"):
            raise KeyError("a bug stays a bug")
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_save_on_a_full_disk_says_so(monkeypatch, disk_full, tmp_path: Path) -> None:
    """The message the issue found wrong: a full disk while saving said the safetensors
    file 'could not be read ... damaged'."""
    from limitr.train import checkpoint as ckpt

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 2)

        def save_pretrained(self, folder):
            from safetensors.torch import save_file

            Path(folder).mkdir(parents=True, exist_ok=True)
            save_file(self.state_dict(), str(Path(folder) / "model.safetensors"))

    model = Tiny()
    ckpt.save_checkpoint(model, tmp_path / "last", state={"epoch": 1})
    before = (tmp_path / "last" / "model.safetensors").read_bytes()

    def torch_save_on_full_disk(obj, path):
        Path(path).write_bytes(b"PK\x03\x04partial")
        raise FULL_DISK["torch.save"]

    monkeypatch.setattr(torch, "save", torch_save_on_full_disk)
    with pytest.raises(WriteError) as caught:
        ckpt.save_checkpoint(model, tmp_path / "last", state={"epoch": 2})
    assert str(caught.value).startswith(f"no space left on the disk while writing {tmp_path / 'last'}")
    assert "damaged" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # the previous checkpoint, whole
    assert (tmp_path / "last" / "model.safetensors").read_bytes() == before


def test_stage_errors_name_the_stage_and_what_a_rerun_keeps(disk_full, tmp_path: Path, capsys) -> None:
    import typer

    from stages.common import AFTER_WRITE_FAILURE

    with pytest.raises(typer.Exit) as exited:
        with stage_errors():
            write_failure_error = write_failure(FULL_DISK["python"], tmp_path / "x")
            raise write_failure_error
    assert exited.value.exit_code == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"error: limitr: no space left on the disk while writing {tmp_path / 'x'}")
    assert "\n" not in line and "train" in AFTER_WRITE_FAILURE
    # an ENOSPC from a writer outside limitr.files (DVCLive's files, say) is one line too
    with pytest.raises(typer.Exit):
        with stage_errors():
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "metrics" / "a.tsv"))
    assert "while writing " + str(tmp_path / "metrics" / "a.tsv") in capsys.readouterr().err


def test_one_writer_per_folder(tmp_path: Path) -> None:
    out = tmp_path / "data" / "model"
    lock, owner = lock_paths(out)
    assert lock.parent == owner.parent == out.parent  # beside the output, never inside it
    with output_lock(out, "train"):
        record = json.loads(owner.read_text())
        assert record["pid"] == os.getpid() and record["stage"] == "train"
        with pytest.raises(LimitrError) as refused:
            with output_lock(out, "train"):
                pass
        text = str(refused.value)
        assert f"{out} is being written by train (pid {os.getpid()} on " in text and "since " in text
        assert not out.exists()  # the lock never creates the output
    assert not owner.exists()
    with output_lock(out, "train"):  # free again
        pass


def test_lock_removes_what_a_killed_writer_left_beside_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    (tmp_path / ".tokens.tmp-12345678").mkdir()
    (tmp_path / ".tokens.old-12345678").mkdir()
    (tmp_path / ".other.tmp-12345678").mkdir()  # another folder's: left alone
    with output_lock(out, "tokenize"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-12345678", ".tokens.lock"]
