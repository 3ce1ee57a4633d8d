"""Checkpoints of a training run and what resuming needs.

Layout of a run folder ``out``::

    out/config.json        model and train configs, seed, process count
    out/report.json        studies used per split and records left out, by reason
    out/best/              the best epoch by validation r_sum: config.json, model.safetensors,
                           metrics.json (its validation figures); with ``train.ema_decay`` the
                           weight average, which is what validation scored
    out/last/              the latest finished epoch: config.json, model.safetensors (the raw
                           weights the optimizer steps), state.pt
    out/.image-store/      while training: the train and validate images read on demand
                           (limitr.data.studies), removed when the run ends

``state.pt`` holds the optimizer, scheduler, grad-scaler and RNG states, the epoch and step
counters, the early-stopping record, the weight average (``train.ema_decay``) and the curves
so far: plain tensors, numbers, strings, lists and dicts, written with ``torch.save`` and read
with ``weights_only=True`` (no pickled objects). Each checkpoint folder is written under a
temporary name and renamed into place, so a kill leaves the previous one whole.
"""

from __future__ import annotations

import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from limitr.files import write_json, writing
from torch import nn

from limitr.errors import LimitrError

STATE_FILE = "state.pt"
BEST_DIR = "best"
LAST_DIR = "last"
RUN_FILES = ("config.json", "report.json", BEST_DIR, LAST_DIR)


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Move the finished folder ``tmp`` to ``dest``, replacing what was there."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def save_checkpoint(
    model: nn.Module,
    dest: Path,
    *,
    state: Optional[dict] = None,
    metrics: Optional[dict] = None,
) -> None:
    """``model.save_pretrained`` into ``dest``, plus ``state.pt`` and ``metrics.json`` when
    given; the folder appears complete or not at all. A failed write (a full disk) raises a
    :class:`limitr.files.WriteError` naming ``dest`` and leaves the previous ``dest`` whole."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with writing(dest):  # classified before the partial folder goes (the room left tells)
            dest.parent.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(tmp)
            if state is not None:
                torch.save(state, tmp / STATE_FILE)
            if metrics is not None:
                write_json(tmp / "metrics.json", metrics)
            _replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_weights(model: nn.Module, folder: Path) -> None:
    """Load ``folder/model.safetensors`` (as written by ``save_pretrained``) into ``model``."""
    from safetensors.torch import load_model

    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise LimitrError(f"checkpoint {folder} has no model.safetensors: remove it or start with --no-resume")
    try:
        load_model(model, str(path), strict=True, device="cpu")
    except Exception as exc:  # noqa: BLE001 - SafetensorError, or a header that does not parse
        if isinstance(exc, LimitrError):
            raise
        raise LimitrError(
            f"{path} cannot be read ({str(exc).splitlines()[0][:120]}): it is damaged or truncated; "
            "start afresh with --no-resume, or delete that folder"
        ) from None


def load_state(folder: Path) -> Optional[dict]:
    """``folder/state.pt`` read with ``weights_only=True``; None when there is none."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file; torch raises several types
        raise LimitrError(f"{path} cannot be read ({exc}); start again with --no-resume") from exc
    if not isinstance(state, dict) or "epoch" not in state:
        raise LimitrError(f"{path} is not a training state; start again with --no-resume")
    return state


def remove_temporaries(out: Path) -> None:
    """Remove the half-written checkpoint folders a killed run left in ``out``
    (``.best.tmp-*``, ``.last.old-*``, ...): they are never read, and a ``persist`` output
    of DVC would otherwise carry them."""
    for name in (BEST_DIR, LAST_DIR):
        for pattern in (f".{name}.tmp-*", f".{name}.old-*"):
            for leftover in Path(out).glob(pattern):
                shutil.rmtree(leftover, ignore_errors=True)


def clear_run(out: Path) -> None:
    """Remove the files a previous run left in ``out`` (only those this module writes)."""
    out = Path(out)
    remove_temporaries(out)
    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def rng_states() -> dict:
    """The Python, NumPy and torch (CPU and CUDA) generator states as plain values."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    """Restore what :func:`rng_states` returned."""
    py = states["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = states["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
