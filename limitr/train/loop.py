"""The training loop: Adam, a plateau (on validation r_sum) or cosine schedule, clipping, mixed precision,
early stopping, best/last checkpoints, exact resume, curves; one process or several.

Reproducibility: the model is initialised right after seeding with ``seed``; epoch ``e``
shuffles with ``(seed, e)``, crops study ``i`` with ``(seed, e, i)`` and reseeds torch (dropout)
with ``(seed, e, rank)``. Nothing random carries over from one epoch to the next except
through the weights and optimizer state a checkpoint saves, so a run resumed from the end of
epoch ``e`` follows the uninterrupted run exactly on the CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import torch

from limitr.errors import LimitrError
from limitr.files import write_json
from limitr.model.precision import cpu_bf16_dot_products
from limitr.progress import ProgressFn, advance
from limitr.train import checkpoint as ckpt
from limitr.train.averaging import WeightAverage
from limitr.train.config import RESUMABLE_CHANGES, TrainConfig
from limitr.train.curves import CurveWriter
from limitr.data.prepare import ModelInputs, collate_studies
from limitr.data.studies import EpochBatches, StudyDataset
from limitr.train.distributed import (
    DistContext,
    ShardedBatchSampler,
    barrier,
    broadcast_floats,
    wrap_for_training,
)
from limitr.train.validate import LOCAL_WEIGHT_GRID, RECALL_KEYS, autocast_context, validate, validation_subset


@dataclass
class TrainCallbacks:
    """Hooks for the caller's display and curve logging. on_start(total_steps, steps_done);
    on_step and on_epoch receive each step's and epoch's row; on_history(steps, epochs) gets
    the rows a resumed run already has (empty lists for a new run) before training starts,
    so a curve logger can start afresh without rows of a cut-short epoch; on_compile gets one
    line saying whether the local alignment runs compiled or eager, and why."""

    on_start: Optional[Callable[[int, int], None]] = None
    on_step: Optional[Callable[[dict], None]] = None
    on_epoch: Optional[Callable[[dict], None]] = None
    on_history: Optional[Callable[[list, list], None]] = None
    on_compile: Optional[Callable[[str], None]] = None


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
    """The autocast dtype for ``train.mixed_precision`` on ``device`` (None = full precision).

    true: bf16 where the GPU has it, else fp16 (with a grad scaler); bf16 on the CPU.
    auto: the same on CUDA, and bf16 on a CPU with native bf16 dot products
    (:func:`limitr.model.precision.cpu_bf16_dot_products`), where a step runs 1.4 times as
    fast; float32 on other CPUs.
    """
    if setting in (None, "auto"):
        enabled = device.type == "cuda" or (device.type == "cpu" and cpu_bf16_dot_products())
    else:
        enabled = setting in (True, "true")
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


def make_optimizer(model: torch.nn.Module, train_cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam over :func:`parameter_groups`, with torch's fused implementation where this torch
    has it for the device (one kernel for all parameters: 22 against 60 ms per step for the
    default model on 2 CPU cores; the same update rule)."""
    groups = parameter_groups(model, train_cfg.lr, train_cfg.image_lr, train_cfg.head_lr)
    kwargs = dict(betas=train_cfg.betas, weight_decay=train_cfg.weight_decay)
    try:
        return torch.optim.Adam(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without it
        return torch.optim.Adam(groups, **kwargs)


def cosine_factor(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """The cosine schedule's factor on each group's rate for optimizer step ``step`` (0-based):
    linear from 1 / (warmup + 1) up to 1 over ``warmup_steps``, then half a cosine from 1 down
    to 0, reached after the run's last step (``total_steps``)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    span = max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, span) / span))


def make_scheduler(optimizer: torch.optim.Optimizer, train_cfg: TrainConfig, total_steps: int) -> Any:
    """``train.schedule``: ReduceLROnPlateau on the validation r_sum (stepped per epoch) or the
    cosine factor of :func:`cosine_factor` (stepped per optimizer step)."""
    if train_cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_factor(step, total_steps, train_cfg.warmup_steps)
        )
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=train_cfg.plateau_factor, patience=train_cfg.plateau_patience
    )


def input_files(shards: Path, tokens: Path) -> list[Path]:
    """The files a run reads: the train and validate shards, their token files, the tokenizer."""
    from limitr.data.shards import split_files

    files = [*split_files(shards, "train"), *split_files(shards, "validate")]
    files += [p for p in (Path(tokens) / "train.parquet", Path(tokens) / "validate.parquet") if p.is_file()]
    tokenizer = Path(tokens) / "tokenizer"
    if tokenizer.is_dir():
        files += sorted(p for p in tokenizer.rglob("*") if p.is_file())
    return files


def input_digest(shards: Path, tokens: Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of the content (and names relative to their folder) of :func:`input_files`:
    the same data gives the same digest wherever it lies and whatever its modification
    times (DVC's checkout changes them). Reads the inputs once, as the image store does."""
    h = hashlib.sha256()
    for path in input_files(shards, tokens):
        root = Path(shards) if Path(shards) in path.parents else Path(tokens)
        h.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()[:32]


def _fingerprint(model_cfg: dict, train_cfg: dict, seed: int, world: int, train_ids: np.ndarray,
                 inputs: str = "") -> dict:
    """What must match for a checkpoint to be resumed: the settings that shape training,
    the seed, the process count, the training studies and the content of the input data."""
    digest = hashlib.sha256(np.ascontiguousarray(train_ids, dtype=np.int64).tobytes()).hexdigest()[:16]
    # The cosine schedule's length is the run's: its epochs must match to resume.
    resumable = [k for k in RESUMABLE_CHANGES if not (k == "epochs" and train_cfg.get("schedule") == "cosine")]
    fixed = {k: v for k, v in train_cfg.items() if k not in resumable}
    return {"model": model_cfg, "train": fixed, "seed": int(seed), "world_size": int(world), "train_studies": digest,
            "inputs": inputs}


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


STORE_DIR = ".image-store"


def resolve_num_workers(setting: Union[str, int], world_size: int = 1) -> int:
    """DataLoader workers per process for ``train.num_workers`` ("auto" or a count).

    "auto": none on 2 cores or fewer per process, else min(4, cores - 1): one core per process
    is left to the training threads and up to 4 decode. Measured on 2 cores at the defaults:
    reading, decoding and cropping a batch takes about 6 ms of a 2.2 s CPU step (0.4% in the
    torch profiler), and one worker did not make steps faster (2.26 s against 2.17-2.47 s
    without), since it takes its time from the matrix products' two threads. On a GPU a step
    takes milliseconds and decoding must overlap it: there the cores are many.
    """
    if setting != "auto":
        return int(setting)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    per_process = max(1, cores // max(1, world_size))
    return 0 if per_process <= 2 else min(4, per_process - 1)


@dataclass
class _Run:
    """What :func:`setup_run` builds and the epochs use."""

    model: torch.nn.Module
    step_module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    trainable: list
    train_set: StudyDataset
    val_set: StudyDataset
    sampler: ShardedBatchSampler
    loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    autocast_dtype: Optional[torch.dtype]
    device: torch.device
    fingerprint: dict
    compile: Any = None  # limitr.model.compiled.CompileChoice: what train.compile resolved to
    average: Optional[WeightAverage] = None  # train.ema_decay: the weights validated and kept as best/

    def evaluated(self):
        """The weights validation scores and best/ keeps: the average when there is one."""
        return self.average.applied(self.model) if self.average is not None else contextlib.nullcontext()


@dataclass
class _State:
    """What a checkpoint carries from one epoch to the next."""

    epoch: int = 0  # epochs finished
    step: int = 0
    seconds: float = 0.0
    best: dict = field(default_factory=lambda: {"r_sum": -math.inf, "epoch": -1, "bad_epochs": 0})
    stopped_early: bool = False
    steps: list = field(default_factory=list)
    epochs: list = field(default_factory=list)


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
    compile_cache: Optional[Path] = None,
) -> TrainResult:
    """Train LIMITR on ``shards``/``tokens`` (train split), validate on the validate split
    each epoch, write checkpoints into ``out`` and curves into ``metrics_dir`` (rank 0).

    model_cfg: a ``ModelConfig``. resume: True = continue ``out/last`` (error when it does
    not fit this run), False = start afresh, None = continue when ``out/last`` holds an
    unfinished run that fits. ``dist`` comes from ``init_distributed``; ``device`` is this
    process's device. ``progress`` advances once per optimizer step. ``compile_cache``: the
    folder of the compiled kernels when ``train_cfg.compile`` compiles (None = torch's default).
    """
    started = time.perf_counter()
    out = Path(out)
    cb = callbacks or TrainCallbacks()
    store_existed = (out / STORE_DIR).exists()
    try:
        run = setup_run(model_cfg, train_cfg, shards, tokens, out, seed, torch.device(device), dist, compile_cache)
        state, resumed_from = restore_state(run, out, resume)
    except BaseException:
        if dist.is_main and not store_existed:  # a run that cannot start leaves the folder as it was
            shutil.rmtree(out / STORE_DIR, ignore_errors=True)
        raise
    seconds_before = state.seconds
    curves = CurveWriter(metrics_dir if dist.is_main else None)
    if dist.is_main:
        start_run_folder(out, run, model_cfg, train_cfg, seed, dist, fresh=resumed_from is None)
        if cb.on_history:
            cb.on_history(state.steps, state.epochs)
    barrier(dist)

    total_steps = train_cfg.epochs * len(run.sampler)
    if cb.on_start:
        cb.on_start(total_steps, min(state.step, total_steps))
    if cb.on_compile and run.compile is not None:
        cb.on_compile(run.compile.line())
    for epoch in range(state.epoch, train_cfg.epochs):
        if state.stopped_early:
            break
        train_loss = train_epoch(run, train_cfg, model_cfg, epoch, seed, dist, state, progress, cb)
        figures = run_validation(run, train_cfg, model_cfg, dist)
        epoch_row = end_epoch(run, train_cfg, state, epoch, train_loss, figures)
        state.seconds = seconds_before + time.perf_counter() - started
        # The checkpoints carry the combined score's local factor this epoch's validation chose
        # (model.score_local_weight: validate), so that evaluation and search rank with it.
        use_local_weight(run.model, model_cfg, figures["score_local_weight"])
        if dist.is_main:
            save_epoch(run, out, state, improved=state.best["epoch"] == epoch + 1, finished=(
                state.stopped_early or epoch + 1 == train_cfg.epochs), epoch_row=epoch_row)
        if cb.on_epoch:
            cb.on_epoch(epoch_row)
        barrier(dist)

    seconds = seconds_before + time.perf_counter() - started
    summary = _summary(state.epochs, state.best, state.stopped_early, seconds, run.train_set, run.val_set,
                       dist, state.step)
    summary["precision"] = str(run.autocast_dtype or "float32").replace("torch.", "")  # what auto resolved to
    if run.compile is not None:
        summary["compile"] = run.compile.summary()
    if dist.is_main:
        curves.write_summary(summary)
        shutil.rmtree(out / STORE_DIR, ignore_errors=True)  # rebuilt from the shards when needed
    return TrainResult(summary, state.steps, state.epochs, resumed_from)


def setup_run(model_cfg: Any, train_cfg: TrainConfig, shards: Path, tokens: Path, out: Path, seed: int,
              device: torch.device, dist: DistContext, compile_cache: Optional[Path] = None) -> _Run:
    """Datasets, loaders, model, optimizer, schedule and grad scaler of a run."""
    from limitr.model import LIMITR, compiled

    if device.type == "cuda":
        # Fixed image sizes: cuDNN may pick its fastest kernels. The scores run in float32
        # (see GlobalBatchLoss); TF32 tensor cores keep their matrix products fast.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    if not dist.is_main:
        barrier(dist)  # rank 0 writes the image stores, the other ranks then map them
    store = Path(out) / STORE_DIR
    train_set = StudyDataset(shards, tokens, "train", train_cfg.crop_size, train=True, seed=seed, store_dir=store)
    val_set = StudyDataset(shards, tokens, "validate", train_cfg.crop_size, train=False, seed=seed, store_dir=store)
    if dist.is_main:
        barrier(dist)
    sampler = ShardedBatchSampler(
        len(train_set), train_cfg.batch_size, rank=dist.rank, world_size=dist.world_size,
        seed=seed, max_batches=train_cfg.max_steps_per_epoch,
    )
    if len(sampler) == 0:
        raise LimitrError(
            f"train.batch_size {train_cfg.batch_size} exceeds the {len(train_set)} training studies: "
            "lower the batch size or use more data"
        )
    loader, val_loader = make_loaders(train_set, val_set, sampler, train_cfg, device, seed, dist)

    seed_everything(seed)
    model = LIMITR(model_cfg).to(device)
    regions = compiled.region_count(train_cfg.crop_size, train_cfg.upsample_to, model_cfg.local_layer, model_cfg.lateral)
    choice = compiled.choose(
        train_cfg.compile, device, steps=train_cfg.epochs * len(sampler),
        elements_per_step=compiled.saf_elements_per_step(
            train_cfg.batch_size, train_set.token_length, regions, model_cfg.embed_dim, dist.world_size),
        cache_dir=compile_cache,
    )
    compiled.attach(model, choice.kernels)
    optimizer = make_optimizer(model, train_cfg)
    scheduler = make_scheduler(optimizer, train_cfg, train_cfg.epochs * len(sampler))
    autocast_dtype = resolve_autocast_dtype(train_cfg.mixed_precision, device)
    return _Run(
        model=model, step_module=wrap_for_training(model, dist, device), optimizer=optimizer,
        scheduler=scheduler, scaler=torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16),
        trainable=[p for g in optimizer.param_groups for p in g["params"]],
        train_set=train_set, val_set=val_set, sampler=sampler, loader=loader, val_loader=val_loader,
        autocast_dtype=autocast_dtype, device=device,
        compile=choice,
        average=WeightAverage(model, train_cfg.ema_decay) if train_cfg.ema_decay is not None else None,
        fingerprint=_fingerprint(model_cfg.to_dict(), train_cfg.to_dict(), seed, dist.world_size, train_set.study_ids,
                                 input_digest(shards, tokens)),
    )


def make_loaders(train_set: StudyDataset, val_set: StudyDataset, sampler: ShardedBatchSampler,
                 train_cfg: TrainConfig, device: torch.device, seed: int, dist: DistContext):
    """The training and validation DataLoaders.

    Workers (``train.num_workers``) stay alive across epochs and keep ``prefetch_factor``
    batches each in flight; batches are pinned on CUDA. Results do not depend on the worker
    count: crops are seeded per study and epoch (the epoch travels with each index, see
    :class:`EpochBatches`), and the loaders draw their worker seeds from
    a generator of their own, never from the global torch generator that dropout uses.
    Validation uses a fixed seeded subset of at most ``train.val_max_studies`` studies.
    """
    workers = resolve_num_workers(train_cfg.num_workers, dist.world_size)
    kwargs: dict[str, Any] = dict(collate_fn=collate_studies, num_workers=workers, pin_memory=device.type == "cuda")
    if workers:
        kwargs.update(persistent_workers=True, prefetch_factor=2)
    loader = torch.utils.data.DataLoader(
        train_set, batch_sampler=EpochBatches(sampler), generator=torch.Generator().manual_seed(seed), **kwargs
    )
    subset = validation_subset(len(val_set), train_cfg.val_max_studies, seed)
    val_data = val_set if subset is None else torch.utils.data.Subset(val_set, subset.tolist())
    val_loader = torch.utils.data.DataLoader(
        val_data, batch_size=train_cfg.batch_size, shuffle=False,
        generator=torch.Generator().manual_seed(seed), **kwargs,
    )
    return loader, val_loader


def restore_state(run: _Run, out: Path, resume: Optional[bool]) -> tuple[_State, Optional[int]]:
    """The state to continue from (weights, optimizer, RNG restored into ``run``), or a fresh
    one; and the epoch resumed after (None when starting afresh)."""
    saved = _resume_state(out, run.fingerprint, resume)
    if saved is None:
        return _State(), None
    ckpt.load_weights(run.model, out / ckpt.LAST_DIR)
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    if saved.get("scaler"):
        run.scaler.load_state_dict(saved["scaler"])
    if run.average is not None:
        run.average.load_state_dict(saved["average"])
    ckpt.set_rng_states(saved["rng"])
    state = _State(
        epoch=int(saved["epoch"]), step=int(saved["step"]), seconds=float(saved["seconds"]),
        best=dict(saved["best"]), stopped_early=bool(saved.get("stopped_early")),
        steps=list(saved["steps"]), epochs=list(saved["epochs"]),
    )
    return state, state.epoch


def start_run_folder(out: Path, run: _Run, model_cfg: Any, train_cfg: TrainConfig, seed: int,
                     dist: DistContext, fresh: bool) -> None:
    """Clear a previous run (when starting afresh; only the files this run writes), remove
    checkpoint folders a killed run left half-written, write config.json and report.json."""
    if fresh:
        ckpt.clear_run(out)
    ckpt.remove_temporaries(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {
        "model": model_cfg.to_dict(), "train": train_cfg.to_dict(),
        "seed": int(seed), "world_size": dist.world_size,
    })
    write_json(out / "report.json", {"train": run.train_set.report, "validate": run.val_set.report})


def _batches(loader: torch.utils.data.DataLoader) -> Iterator[Any]:
    """The loader's batches; an error a worker raised comes back as its own one line."""
    try:
        yield from loader
    except LimitrError as exc:
        text = str(exc)
        if "\n" in text and "LimitrError: " in text:  # re-raised from a worker with its traceback
            raise LimitrError(text.rsplit("LimitrError: ", 1)[1].strip().splitlines()[0]) from None
        raise


def train_epoch(run: _Run, train_cfg: TrainConfig, model_cfg: Any, epoch: int, seed: int, dist: DistContext,
                state: _State, progress: ProgressFn, cb: TrainCallbacks) -> float:
    """One pass over this rank's part of every global batch; returns the mean loss."""
    run.loader.batch_sampler.set_epoch(epoch)  # the sampler's shuffle, and the epoch of each index's crop
    run.train_set.set_epoch(epoch)
    torch.manual_seed(derive_seed(seed, epoch, dist.rank))
    # One draw from the global generator, where a DataLoader without a generator of its own
    # draws its base seed: the dropout masks that follow, hence the weights, stay those of
    # runs made before the loaders had their own generators.
    torch.empty((), dtype=torch.int64).random_()
    run.model.train()
    losses_sum, n_steps = 0.0, 0
    tick = time.perf_counter()
    for batch in _batches(run.loader):
        inputs = batch.to_model_inputs(run.device, train_cfg.upsample_to, model_cfg.lateral)
        losses, grad_norm = optimizer_step(
            run.step_module, inputs, run.optimizer, run.scaler, run.trainable, train_cfg.grad_clip,
            run.device, run.autocast_dtype,
        )
        if run.average is not None:
            run.average.update(run.model)
        rates = _rates(run.optimizer)  # the rates this step trained with
        if train_cfg.schedule == "cosine":
            run.scheduler.step()
        state.step += 1
        n_steps += 1
        loss = float(losses.total.detach())
        if not math.isfinite(loss) and run.autocast_dtype != torch.float16:
            raise LimitrError(
                f"training diverged at step {state.step} (epoch {epoch + 1}): the loss is {loss}; "
                "lower train.lr / train.image_lr or turn train.mixed_precision off"
            )
        losses_sum += loss
        now = time.perf_counter()
        row = {
            "step": state.step,
            "epoch": epoch + 1,
            "loss": loss,
            "loss_local_external": float(losses.local_external.detach()),
            "loss_local_internal": float(losses.local_internal.detach()),
            "loss_global": float(losses.global_.detach()),
            "grad_norm": grad_norm,
            **rates,
            "studies_per_s": train_cfg.batch_size / max(now - tick, 1e-9),
        }
        tick = now
        state.steps.append(row)
        advance(progress)
        if cb.on_step:
            cb.on_step(row)
    return losses_sum / max(n_steps, 1)


def run_validation(run: _Run, train_cfg: TrainConfig, model_cfg: Any, dist: DistContext) -> dict:
    """Validation figures on rank 0 (of the weight average when ``train.ema_decay`` keeps one),
    broadcast so that every rank steps the schedule and stops alike."""
    figures = {}
    if dist.is_main:
        with run.evaluated():
            figures = validate(
                run.model, _batches(run.val_loader), run.device, upsample_to=train_cfg.upsample_to,
                lateral=model_cfg.lateral, autocast_dtype=run.autocast_dtype, chunk=model_cfg.score_chunk,
                rerank_top_k=train_cfg.val_rerank_top_k,
                local_weights=LOCAL_WEIGHT_GRID if model_cfg.score_local_weight == "validate" else None,
            )
    keys = (*RECALL_KEYS, "r_sum", "r_sum_global", "score_local_weight")
    return dict(zip(keys, broadcast_floats([figures.get(k, 0.0) for k in keys], dist, run.device)))


def use_local_weight(model: torch.nn.Module, model_cfg: Any, weight: float) -> None:
    """Score with local factor ``weight`` from now on when ``model_cfg`` leaves it to
    validation; the training loss does not depend on it."""
    if model_cfg.score_local_weight == "validate":
        model.config = dataclasses.replace(model_cfg, score_local_weight=float(weight))


def end_epoch(run: _Run, train_cfg: TrainConfig, state: _State, epoch: int, train_loss: float,
              figures: dict) -> dict:
    """Step the plateau schedule, track the best epoch and early stopping; the epoch's row."""
    r_sum = figures["r_sum"]
    epoch_lrs = _rates(run.optimizer)  # the rates this epoch trained with, before the plateau step
    if train_cfg.schedule == "plateau":
        run.scheduler.step(r_sum)
    if r_sum > state.best["r_sum"]:
        state.best = {"r_sum": r_sum, "epoch": epoch + 1, "bad_epochs": 0}
    else:
        state.best["bad_epochs"] += 1
    state.stopped_early = train_cfg.patience is not None and state.best["bad_epochs"] >= train_cfg.patience
    state.epoch = epoch + 1
    row = {"epoch": epoch + 1, "step": state.step, "train_loss": train_loss, **figures, **epoch_lrs}
    state.epochs.append(row)
    return row


def save_epoch(run: _Run, out: Path, state: _State, *, improved: bool, finished: bool, epoch_row: dict) -> None:
    """best/ when the epoch improved, and last/ with everything a resume needs (each written
    under a temporary name and renamed into place)."""
    if improved:
        with run.evaluated():  # the weights validation scored
            ckpt.save_checkpoint(run.model, out / ckpt.BEST_DIR, metrics=epoch_row)
    ckpt.save_checkpoint(run.model, out / ckpt.LAST_DIR, state={
        "epoch": state.epoch,
        "step": state.step,
        "seconds": state.seconds,
        "finished": finished,
        "stopped_early": state.stopped_early,
        "best": state.best,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else {},
        "rng": ckpt.rng_states(),
        **({"average": run.average.state_dict()} if run.average is not None else {}),
        "fingerprint": run.fingerprint,
        "steps": state.steps,
        "epochs": state.epochs,
    })


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
    if best_row and "score_local_weight" in best_row:  # rows of a run resumed from an older version lack it
        keys = (*keys, "r_sum_global", "score_local_weight")
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
