"""Faults injected into the pipeline as users meet them (issue 24): `dvc repro` killed with
SIGKILL during training and rerun, a full disk under every stage's output, two trainings on
one folder, a lock left by a killed process. Each check compares with a run without the
fault: resumed weights bit for bit, outputs after freeing space byte for byte.

The full disk is a real one: a small tmpfs mounted over the output folder in a mount
namespace of the test's own (``unshare``); where the machine does not allow that, those
tests are skipped and ``tests/test_files.py`` still checks every writer's failure in-process.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from test_pipeline_e2e import tiny_repo

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(LIMITR_NO_PROGRESS="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",  # one thread: runs compare bit for bit
               GIT_AUTHOR_NAME="test", GIT_COMMITTER_NAME="test",
               GIT_AUTHOR_EMAIL="test@example.invalid", GIT_COMMITTER_EMAIL="test@example.invalid")
    return env


def _run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


DVC = [sys.executable, "-m", "dvc"]
LIMITR = [sys.executable, "-m", "stages"]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


#: A digest per file of a folder: the bytes, except for safetensors files, whose header
#: order varies from one write to the next (the metadata is a hash map in safetensors'
#: writer): their tensors, dtypes and sorted metadata.
DIGEST_CODE = """
import hashlib, json, pathlib
def file_digest(p):
    if p.suffix != '.safetensors':
        return hashlib.sha256(p.read_bytes()).hexdigest()
    from safetensors import safe_open
    h = hashlib.sha256()
    with safe_open(str(p), 'pt') as f:
        h.update(json.dumps(f.metadata(), sort_keys=True).encode())
        for k in sorted(f.keys()):
            t = f.get_tensor(k)
            h.update(k.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode() + t.contiguous().view(-1).view(
                __import__('torch').uint8).numpy().tobytes())
    return h.hexdigest()
def tree_digest(root):
    root = pathlib.Path(root)
    return {str(p.relative_to(root)): file_digest(p) for p in sorted(root.rglob('*')) if p.is_file()}
"""
_names: dict = {}
exec(DIGEST_CODE, _names)
_tree_digest = _names["tree_digest"]


def _state_epoch(out: Path) -> int:
    from limitr.train.checkpoint import load_state

    try:
        state = load_state(out / "last")
    except Exception:  # noqa: BLE001 - being renamed into place this very moment
        return 0
    return int(state["epoch"]) if state else 0


@pytest.fixture(scope="module")
def killed_and_resumed(module_tmp):
    """A tiny pipeline whose `dvc repro` is killed (SIGKILL, whole process group) once
    training has finished an epoch, then rerun to the end; and a training of the same
    settings without interruption into another folder."""
    work = tiny_repo(module_tmp / "repo", epochs=EPOCHS)
    _run(["git", "init", "-q"], work)
    _run(["git", "add", "-A"], work)
    _run(["git", "commit", "-qm", "copy"], work)
    _run(DVC + ["repro", "tokenize"], work)

    out = work / "data" / "model"
    proc = subprocess.Popen(DVC + ["repro"], cwd=work, env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while _state_epoch(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # dvc and the training it started, as a lost session is
    finally:
        proc.wait()
    finished = _state_epoch(out)
    rerun = _run(DVC + ["repro"], work)
    reference = _run(LIMITR + ["train", "--out", "ref/model", "--metrics", "ref/metrics"], work)
    return {"work": work, "finished": finished, "rerun": rerun, "reference": reference}


@pytest.mark.slow
def test_killed_dvc_repro_resumes_after_the_last_finished_epoch(killed_and_resumed) -> None:
    work, finished = killed_and_resumed["work"], killed_and_resumed["finished"]
    assert 1 <= finished < EPOCHS, f"the kill came after {finished} epochs: the test did not interrupt training"
    table = killed_and_resumed["rerun"].stdout
    resumed = [line for line in table.splitlines() if "resumed after epoch" in line]
    assert resumed and resumed[0].split()[-1] == str(finished), table[-3000:]  # no finished epoch lost
    # Bit for bit the uninterrupted run: last and best weights, and the curves.
    ref = work / "ref" / "model"
    assert "resumed" not in killed_and_resumed["reference"].stdout
    _same_weights(work / "data/model/last", ref / "last")
    _same_weights(work / "data/model/best", ref / "best")
    from stages.live import read_curve

    for kind, name in (("per_step", "loss"), ("per_epoch", "r_sum")):
        got = read_curve(work / "metrics/training", kind, name)
        want = read_curve(work / "ref/metrics/training", kind, name)
        assert got == want, (kind, got, want)
    assert len(read_curve(work / "metrics/training", "per_epoch", "r_sum")) == EPOCHS
    summary, ref_summary = (json.loads((work / p).read_text()) for p in ("metrics/train.json", "ref/metrics/train.json"))
    for key in ("best", "final", "epochs_run", "steps", "best_epoch"):
        assert summary[key] == ref_summary[key], key
    # Nothing half-written stays in the persisted folder; DVC sees the pipeline up to date.
    assert sorted(p.name for p in (work / "data/model").iterdir()) == ["best", "config.json", "last", "report.json"]
    status = _run(DVC + ["status"], work).stdout
    assert "changed" not in status, status


@pytest.mark.slow
def test_other_settings_start_afresh_in_the_persisted_folder(killed_and_resumed, tmp_path: Path) -> None:
    """The persisted folder is not resumed by a run with other settings or other data."""
    work = killed_and_resumed["work"]
    run = work / "other"
    shutil.copytree(work / "data/model", run)
    state = torch.load(run / "last" / "state.pt", weights_only=True)
    state["finished"] = False  # as if killed after its last epoch
    torch.save(state, run / "last" / "state.pt")
    (run / ".last.tmp-deadbeef").mkdir()  # what a kill during a checkpoint save leaves
    result = _run(LIMITR + ["train", "--out", "other", "--metrics", str(tmp_path / "m"), "--epochs", str(EPOCHS + 1),
                            "--params", "params.yaml"], work)
    assert "resumed after epoch" in result.stdout  # epochs may grow: same run, continued
    assert not (run / ".last.tmp-deadbeef").exists()

    shutil.rmtree(run)
    shutil.copytree(work / "data/model", run)
    state = torch.load(run / "last" / "state.pt", weights_only=True)
    state["finished"] = False
    torch.save(state, run / "last" / "state.pt")
    tokens = work / "tokens-other"
    shutil.copytree(work / "data/tokens", tokens)
    (tokens / "tokenizer" / "note.txt").write_text("another tokenizer folder\n")  # other input data
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    (work / "one.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = _run(LIMITR + ["train", "--out", "other", "--tokens", "tokens-other", "--metrics", str(tmp_path / "m2"),
                            "--params", "one.yaml"], work)
    assert "resumed after epoch" not in result.stdout
    assert _state_epoch(run) == 1


# ---------------------------------------------------------------- a full disk in every stage

def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        probe = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", folder],
                               capture_output=True)
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _can_mount_tmpfs(), reason="cannot mount a tmpfs in a user namespace here")


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def _on_full_disk(work: Path, mount: Path, size: int, stage_args: list[str], check_args: list[str],
                  bigger: int) -> tuple[subprocess.CompletedProcess, str]:
    """Run a stage with ``mount`` a tmpfs of ``size`` bytes (inside a mount namespace), list
    what it left there, then grow the tmpfs (the user freeing space), rerun the stage and
    run ``check_args`` (a python -c script printing a digest) inside the same namespace."""
    mount.mkdir(parents=True, exist_ok=True)
    q = shlex.quote
    script = " ; ".join([
        f"mount -t tmpfs -o size={size} tmpfs {q(str(mount))}",
        f"{' '.join(map(q, LIMITR + stage_args))} >/dev/null",
        "echo \"rc=$?\" >&2",
        f"echo LEFT: $(cd {q(str(mount))} && find . -mindepth 1 | sort | tr '\\n' ' ')",
        f"mount -o remount,size={bigger} {q(str(mount))}",
        f"{' '.join(map(q, LIMITR + stage_args))} >/dev/null 2>&1 && echo RERUN: ok",
        ' '.join(map(q, check_args)),
    ])
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=work, env=_env(), capture_output=True,
                            text=True, timeout=600)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1] == "rc=1", result.stderr[-3000:]
    errors = lines[:-1]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return result, errors[0]


DIGEST = DIGEST_CODE + "\nimport sys\nprint('DIGEST:', json.dumps(tree_digest(sys.argv[1])))\n"


def _digest_line(stdout: str) -> dict:
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("DIGEST:"))[7:])


@needs_tmpfs
@pytest.mark.slow
@pytest.mark.parametrize("stage", ["preprocess", "tokenize", "embed", "evaluate"])
def test_full_disk_is_one_line_and_a_rerun_gives_the_same_outputs(stage: str, killed_and_resumed) -> None:
    work = killed_and_resumed["work"]
    mount = work / "full"
    ref = {"preprocess": work / "data/shards", "tokenize": work / "data/tokens",
           "embed": work / "data/embeddings", "evaluate": work / "metrics"}[stage]
    out = mount / "out"
    args = {"preprocess": ["preprocess", "--out", str(out)],
            "tokenize": ["tokenize", "--out", str(out)],
            "embed": ["embed", "--out", str(out)],
            "evaluate": ["evaluate", "--metrics", str(out), "--plots", str(out / "plots")]}[stage]
    written = {"evaluate": ["retrieval.json", "class_retrieval.json", "zero_shot.json", "grounding.json",
                            "probes.json", "summary.json", "ranks.tsv", "zero_shot_margins.tsv", "plots"]}.get(stage)
    total = _size(ref) if written is None else sum(_size(ref / n) if (ref / n).is_dir() else (ref / n).stat().st_size
                                                   for n in written)
    result, line = _on_full_disk(work, mount, max(total // 2, 8192), args,
                                 [sys.executable, "-c", DIGEST, str(out)], total * 4 + (1 << 20))
    assert line.startswith(f"error: {stage}: no space left on the disk while writing {out}"), line
    assert "free space on that file system" in line
    left = next(x for x in result.stdout.splitlines() if x.startswith("LEFT:")).split()[1:]
    assert not any(".tmp" in name for name in left), left  # no partial file under any name
    if stage != "evaluate":  # a folder written whole: nothing at all (evaluate's files are each whole)
        assert left in ([], ["./.out.lock"]), left
    assert "RERUN: ok" in result.stdout, result.stderr[-2000:]
    got = _digest_line(result.stdout)
    if stage == "evaluate":
        want = {k: v for k, v in _tree_digest(ref).items()
                if k.split("/")[0] in written and not k.endswith("synthetic_sheet.png")}
        assert got == want
    else:
        assert got == _tree_digest(ref)


@pytest.fixture(scope="module")
def one_epoch(killed_and_resumed):
    work = killed_and_resumed["work"]
    _run(LIMITR + ["train", "--out", "one-epoch", "--metrics", "one-epoch-metrics", "--epochs", "1"], work)
    return work / "one-epoch"


@needs_tmpfs
@pytest.mark.slow
def test_full_disk_while_train_saves_a_checkpoint(killed_and_resumed, one_epoch) -> None:
    """Room for the image store but not for the first checkpoint: the line says the disk is
    full (not that a file is damaged); after freeing space the rerun gives the weights of the
    run that had room."""
    work = killed_and_resumed["work"]
    mount = work / "full-train"
    out = mount / "out"
    ckpt_size = _size(work / "data/model/last")
    first_size = _size(work / "data/model/best")  # best/ is written first, then last/
    store = _size(work / "data/shards/train") + _size(work / "data/shards/validate")  # the store is about this
    script = ("import sys, torch; from safetensors.torch import load_file; "
              "a = load_file(sys.argv[1] + '/last/model.safetensors'); b = load_file(sys.argv[2] + '/last/model.safetensors'); "
              "print('SAME:', a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a))")
    result, line = _on_full_disk(
        work, mount, store + first_size // 2,
        ["train", "--out", str(out), "--metrics", str(mount / "metrics"), "--epochs", "1"],
        [sys.executable, "-c", script, str(out), str(work / "one-epoch")], store * 4 + ckpt_size * 8)
    assert line.startswith(f"error: train: no space left on the disk while writing {out}/"), line
    assert "damaged" not in line and "could not be read" not in line
    assert "the rerun resumes after the last one" in line
    left = next(x for x in result.stdout.splitlines() if x.startswith("LEFT:")).split()[1:]
    assert not any(name.startswith(("./out/best", "./out/last", "./out/.best", "./out/.last")) for name in left), left
    assert "SAME: True" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]


# ---------------------------------------------------------------- one writer per folder

def _one_line_error(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


@pytest.mark.slow
def test_two_trainings_on_one_folder(killed_and_resumed, tmp_path: Path) -> None:
    work = killed_and_resumed["work"]
    first = subprocess.Popen(LIMITR + ["train", "--out", "twice", "--metrics", str(tmp_path / "a"), "--epochs", "50",
                                       "--no-resume"], cwd=work, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        owner = work / ".twice.lock.owner"
        deadline = time.monotonic() + 120
        while not owner.is_file() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()
        second = _run(LIMITR + ["train", "--out", "twice", "--metrics", str(tmp_path / "b")], work, check=False)
        line = _one_line_error(second)
        assert line.startswith("error: twice is being written by train (pid ") and f"pid {first.pid} on " in line, line
        assert "since 20" in line and "wait for it to finish or stop it" in line
        assert not (tmp_path / "b").exists()
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_a_lock_left_by_a_killed_process_is_taken_over(killed_and_resumed) -> None:
    work = killed_and_resumed["work"]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import os, signal, sys; from stages.common import output_lock\n"
         "with output_lock('data/tokens-again', 'tokenize'):\n"
         "    print('held', flush=True); os.kill(os.getpid(), signal.SIGKILL)"],
        cwd=work, env=_env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert holder.wait() == -signal.SIGKILL
    lock, owner = work / "data/.tokens-again.lock", work / "data/.tokens-again.lock.owner"
    assert lock.exists() and owner.exists()  # what the killed process left
    (work / "data/.tokens-again.tmp-0badc0de").mkdir()  # and a half-written output
    _run(LIMITR + ["tokenize", "--out", "data/tokens-again"], work)
    assert _tree_digest(work / "data/tokens-again") == _tree_digest(work / "data/tokens")
    assert not owner.exists() and not (work / "data/.tokens-again.tmp-0badc0de").exists()
