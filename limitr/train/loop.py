"""The training loop: Adam, plateau schedule on validation r_sum, clipping, mixed precision,
early stopping, best/last checkpoints, exact resume, curves; one process or several.

Reproducibility: the model is initialised right after seeding with ``seed``; epoch ``e``
shuffles with ``(seed, e)``, crops study ``i`` with ``(seed, e, i)`` and reseeds torch (dropout)
with ``(seed, e, rank)``. Nothing random carries over from one epoch to the next except
through the weights and optimizer state a checkpoint saves, so a run resumed from the end of
epoch ``e`` follows the uninterrupted run exactly on the CPU.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from limitr.errors import LimitrError
from limitr.progress import ProgressFn, advance
from limitr.train import checkpoint as ckpt
from limitr.train.config import RESUMABLE_CHANGES, TrainConfig
from limitr.train.curves import CurveWriter
from limitr.data.prepare import ModelInputs, collate_studies
from limitr.data.studies import StudyDataset
from limitr.train.distributed import (
    DistContext,
    ShardedBatchSampler,
    barrier,
    broadcast_floats,
    wrap_for_training,
)
from limitr.train.validate import RECALL_KEYS, autocast_context, validate

@dataclass
class TrainCallbacks:
    """Hooks for the caller's display. on_start(total_steps, steps_done); on_step and
    on_epoch receive the rows written to the step and epoch curves."""

    on_start: Optional[Callable[[int, int], None]] = None
    on_step: Optional[Callable[[dict], None]] = None
    on_epoch: Optional[Callable[[dict], None]] = None


@dataclass
class TrainResult:
    """What a finished run achieved; ``summary`` is what ``train.json`` holds."""

    summary: dict
    step_history: list[dict] = field(default_factory=list)
    epoch_history: list[dict] = field(default_factory=list)
    resumed_from_epoch: Optional[int] = None


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_autocast_dtype(setting: Union[str, bool, None], device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``train.mixed_precision`` on ``device`` (None = full precision):
    bf16 where the GPU has it, else fp16 (with a grad scaler); bf16 on the CPU when asked."""
    enabled = device.type == "cuda" if setting in (None, "auto") else setting in (True, "true")
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16
    return None


def parameter_groups(model: torch.nn.Module, lr: float, image_lr: Optional[float],
                     head_lr: Optional[float] = None) -> list[dict]:
    """Trainable parameters by learning rate; frozen parameters are left out.

    ``image``: the image encoders at ``image_lr`` (None = ``lr``). With ``head_lr`` None, the
    rest (text encoder, projections, SAF, heads) is one group ``text_and_alignment`` at ``lr``,
    as in the paper. With ``head_lr`` set, the pretrained text model stays at ``lr``
    (group ``text``) and the modules that start from random weights on the text and
    alignment side (the text projection, SAF and the two score heads) get ``head_lr``
    (group ``alignment``).
    """
    from limitr.model.image_encoder import ImageEncoder

    image_ids = {id(p) for m in model.modules() if isinstance(m, ImageEncoder) for p in m.parameters()}
    image = [p for p in model.parameters() if p.requires_grad and id(p) in image_ids]
    other = [p for p in model.parameters() if p.requires_grad and id(p) not in image_ids]
    groups = [{"params": image, "lr": lr if image_lr is None else image_lr, "name": "image"}]
    if head_lr is None:
        groups.append({"params": other, "lr": lr, "name": "text_and_alignment"})
    else:
        text_model = getattr(getattr(model, "text_encoder", None), "bert", None)
        text_ids = {id(p) for p in text_model.parameters()} if text_model is not None else set()
        groups.append({"params": [p for p in other if id(p) in text_ids], "lr": lr, "name": "text"})
        groups.append({"params": [p for p in other if id(p) not in text_ids], "lr": head_lr, "name": "alignment"})
    return [g for g in groups if g["params"]]


def _fingerprint(model_cfg: dict, train_cfg: dict, seed: int, world: int, train_ids: np.ndarray) -> dict:
    """What must match for a checkpoint to be resumed."""
    digest = hashlib.sha256(np.ascontiguousarray(train_ids, dtype=np.int64).tobytes()).hexdigest()[:16]
    fixed = {k: v for k, v in train_cfg.items() if k not in RESUMABLE_CHANGES}
    return {"model": model_cfg, "train": fixed, "seed": int(seed), "world_size": int(world), "train_studies": digest}


def _group_lr(optimizer: torch.optim.Optimizer, *names: str) -> Optional[float]:
    """The learning rate of the first group named one of ``names`` (None if none is)."""
    for name in names:
        for g in optimizer.param_groups:
            if g.get("name") == name:
                return float(g["lr"])
    return None


def _rates(optimizer: torch.optim.Optimizer) -> dict:
    """The curves' learning-rate columns: text side, image encoders, new alignment modules."""
    return {
        "lr": _group_lr(optimizer, "text_and_alignment", "text"),
        "image_lr": _group_lr(optimizer, "image"),
        "head_lr": _group_lr(optimizer, "alignment", "text_and_alignment"),
    }


def train(
    model_cfg: Any,
    train_cfg: TrainConfig,
    shards: Path,
    tokens: Path,
    out: Path,
    *,
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
    metrics_dir: Optional[Path] = None,
    resume: Optional[bool] = None,
    dist: DistContext = DistContext(),
    progress: ProgressFn = None,
    callbacks: Optional[TrainCallbacks] = None,
) -> TrainResult:
    """Train LIMITR on ``shards``/``tokens`` (train split), validate on the validate split
    each epoch, write checkpoints into ``out`` and curves into ``metrics_dir`` (rank 0).

    model_cfg: a ``ModelConfig``. resume: True = continue ``out/last`` (error when it does
    not fit this run), False = start afresh, None = continue when ``out/last`` holds an
    unfinished run that fits. ``dist`` comes from ``init_distributed``; ``device`` is this
    process's device. ``progress`` advances once per optimizer step.
    """
    from limitr.model import LIMITR

    started = time.perf_counter()
    device = torch.device(device)
    out = Path(out)
    cb = callbacks or TrainCallbacks()
    main = dist.is_main
    autocast_dtype = resolve_autocast_dtype(train_cfg.mixed_precision, device)
    if device.type == "cuda":
        # Fixed image sizes: cuDNN may pick its fastest kernels. The scores run in float32
        # (see GlobalBatchLoss); TF32 tensor cores keep their matrix products fast.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True

    train_set = StudyDataset(shards, tokens, "train", train_cfg.crop_size, train=True, seed=seed)
    val_set = StudyDataset(shards, tokens, "validate", train_cfg.crop_size, train=False, seed=seed)
    sampler = ShardedBatchSampler(
        len(train_set), train_cfg.batch_size, rank=dist.rank, world_size=dist.world_size,
        seed=seed, max_batches=train_cfg.max_steps_per_epoch,
    )
    if len(sampler) == 0:
        raise LimitrError(
            f"train.batch_size {train_cfg.batch_size} exceeds the {len(train_set)} training studies: "
            "lower the batch size or use more data"
        )
    loader_kwargs = dict(
        collate_fn=collate_studies, num_workers=train_cfg.num_workers, pin_memory=device.type == "cuda"
    )
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, **loader_kwargs)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=train_cfg.batch_size, shuffle=False, **loader_kwargs)

    seed_everything(seed)
    model = LIMITR(model_cfg).to(device)
    step_module = wrap_for_training(model, dist, device)
    optimizer = torch.optim.Adam(
        parameter_groups(model, train_cfg.lr, train_cfg.image_lr, train_cfg.head_lr),
        betas=train_cfg.betas,
        weight_decay=train_cfg.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=train_cfg.plateau_factor, patience=train_cfg.plateau_patience
    )
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]

    fingerprint = _fingerprint(model_cfg.to_dict(), train_cfg.to_dict(), seed, dist.world_size, train_set.study_ids)
    state = _resume_state(out, fingerprint, resume)
    step_history: list[dict] = []
    epoch_history: list[dict] = []
    start_epoch, step, seconds_before = 0, 0, 0.0
    best = {"r_sum": -math.inf, "epoch": -1, "bad_epochs": 0}
    resumed_from = None
    if state is not None:
        ckpt.load_weights(model, out / ckpt.LAST_DIR)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_states(state["rng"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        seconds_before = float(state["seconds"])
        best = dict(state["best"])
        step_history, epoch_history = list(state["steps"]), list(state["epochs"])
        resumed_from = start_epoch
    curves = CurveWriter(metrics_dir if main else None)
    if main:
        if state is None:
            ckpt.clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        ckpt.write_json(out / "config.json", {
            "model": model_cfg.to_dict(), "train": train_cfg.to_dict(),
            "seed": int(seed), "world_size": dist.world_size,
        })
        ckpt.write_json(out / "report.json", {"train": train_set.report, "validate": val_set.report})
        curves.reset(step_history, epoch_history)
    barrier(dist)

    steps_per_epoch = len(sampler)
    if cb.on_start:
        cb.on_start(train_cfg.epochs * steps_per_epoch, min(step, train_cfg.epochs * steps_per_epoch))
    stopped_early = bool(state and state.get("stopped_early"))
    epoch = start_epoch
    for epoch in range(start_epoch, train_cfg.epochs):
        if stopped_early:
            break
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        torch.manual_seed(derive_seed(seed, epoch, dist.rank))
        model.train()
        losses_sum, n_steps = 0.0, 0
        tick = time.perf_counter()
        for batch in loader:
            inputs = batch.to_model_inputs(device, train_cfg.upsample_to, model_cfg.lateral)
            losses, grad_norm = optimizer_step(
                step_module, inputs, optimizer, scaler, trainable, train_cfg.grad_clip, device, autocast_dtype
            )
            step += 1
            n_steps += 1
            loss = float(losses.total.detach())
            if not math.isfinite(loss) and autocast_dtype != torch.float16:
                raise LimitrError(
                    f"training diverged at step {step} (epoch {epoch + 1}): the loss is {loss}; "
                    "lower train.lr / train.image_lr or turn train.mixed_precision off"
                )
            losses_sum += loss
            now = time.perf_counter()
            row = {
                "step": step,
                "epoch": epoch + 1,
                "loss": loss,
                "loss_local_external": float(losses.local_external.detach()),
                "loss_local_internal": float(losses.local_internal.detach()),
                "loss_global": float(losses.global_.detach()),
                "grad_norm": grad_norm,
                **_rates(optimizer),
                "studies_per_s": train_cfg.batch_size / max(now - tick, 1e-9),
            }
            tick = now
            step_history.append(row)
            curves.add_step(row)
            advance(progress)
            if cb.on_step:
                cb.on_step(row)

        # Validation on rank 0; every rank needs the same figures for the schedule and stopping.
        figures = {}
        if main:
            figures = validate(
                model, val_loader, device, upsample_to=train_cfg.upsample_to,
                lateral=model_cfg.lateral, autocast_dtype=autocast_dtype, chunk=model_cfg.score_chunk,
            )
        keys = (*RECALL_KEYS, "r_sum")
        figures = dict(zip(keys, broadcast_floats([figures.get(k, 0.0) for k in keys], dist, device)))
        r_sum = figures["r_sum"]
        epoch_lrs = _rates(optimizer)  # the rates this epoch trained with, before the plateau step
        scheduler.step(r_sum)
        improved = r_sum > best["r_sum"]
        if improved:
            best = {"r_sum": r_sum, "epoch": epoch + 1, "bad_epochs": 0}
        else:
            best["bad_epochs"] += 1
        stopped_early = train_cfg.patience is not None and best["bad_epochs"] >= train_cfg.patience
        finished = stopped_early or epoch + 1 == train_cfg.epochs
        epoch_row = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": losses_sum / max(n_steps, 1),
            **figures,
            **epoch_lrs,
        }
        epoch_history.append(epoch_row)
        seconds = seconds_before + time.perf_counter() - started
        if main:
            curves.add_epoch(epoch_row)
            if improved:
                ckpt.save_checkpoint(model, out / ckpt.BEST_DIR, metrics=epoch_row)
            ckpt.save_checkpoint(model, out / ckpt.LAST_DIR, state={
                "epoch": epoch + 1,
                "step": step,
                "seconds": seconds,
                "finished": finished,
                "stopped_early": stopped_early,
                "best": best,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "rng": ckpt.rng_states(),
                "fingerprint": fingerprint,
                "steps": step_history,
                "epochs": epoch_history,
            })
        if cb.on_epoch:
            cb.on_epoch(epoch_row)
        barrier(dist)

    seconds = seconds_before + time.perf_counter() - started
    summary = _summary(epoch_history, best, stopped_early, seconds, train_set, val_set, dist, step)
    if main:
        curves.write_summary(summary)
    return TrainResult(summary, step_history, epoch_history, resumed_from)


def optimizer_step(
    step_module: torch.nn.Module,
    inputs: ModelInputs,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    trainable: list[torch.nn.Parameter],
    grad_clip: Optional[float],
    device: torch.device,
    autocast_dtype: Optional[torch.dtype],
) -> tuple[Any, Optional[float]]:
    """One update: forward under autocast, backward (scaled for fp16), clip, step.

    Returns the model's ``Losses`` and the global gradient norm before clipping (None when
    clipping is off).
    """
    with autocast_context(device, autocast_dtype):
        losses = step_module(
            inputs.frontal, inputs.lateral, inputs.has_lateral,
            inputs.input_ids, inputs.attention_mask, inputs.word_ids,
        )
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses.total).backward()
    grad_norm = None
    if grad_clip:
        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, grad_clip))
    scaler.step(optimizer)
    scaler.update()
    return losses, grad_norm


def _resume_state(out: Path, fingerprint: dict, resume: Optional[bool]) -> Optional[dict]:
    """The state to continue from, per the ``resume`` rule of :func:`train`."""
    if resume is False:
        return None
    state = ckpt.load_state(out / ckpt.LAST_DIR)
    if state is None:
        if resume:
            raise LimitrError(f"nothing to resume in {out}: no {ckpt.LAST_DIR}/{ckpt.STATE_FILE}; drop --resume")
        return None
    fits = state.get("fingerprint") == fingerprint
    if resume is None:
        return state if fits and not state.get("finished") else None
    if not fits:
        raise LimitrError(
            f"{out / ckpt.LAST_DIR} was trained with another config, seed, process count or "
            "training set; pass --no-resume to start afresh or --out to use another folder"
        )
    return state


def _summary(epochs, best, stopped_early, seconds, train_set, val_set, dist, step) -> dict:
    """``train.json``: the final and best validation figures (percent) and the run's extent."""
    from limitr.eval.metrics import chance_recalls

    keys = (*RECALL_KEYS, "r_sum")
    final = {k: epochs[-1][k] for k in keys} if epochs else {}
    best_row = next((e for e in epochs if e["epoch"] == best["epoch"]), None)
    chance = chance_recalls(len(val_set))
    return {
        "final": {"epoch": epochs[-1]["epoch"] if epochs else 0, **final},
        "best": {"epoch": best["epoch"], **({k: best_row[k] for k in keys} if best_row else {})},
        "best_epoch": best["epoch"],
        "epochs_run": len(epochs),
        "steps": step,
        "stopped_early": bool(stopped_early),
        "seconds": round(seconds, 1),
        "chance_r_sum": round(2 * sum(chance.values()), 4),
        "n_train": len(train_set),
        "n_validate": len(val_set),
        "world_size": dist.world_size,
    }
