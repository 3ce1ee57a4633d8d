"""One GPU check with the paper's settings: throughput, memory, data waits, bf16, DDP.

Prepares a synthetic set with the pipeline's own stages (synthesize, preprocess at the
paper's 256 px, tokenize with the shipped MiniLM tokenizer), then trains with
params-paper.yaml (ResNet-50, layer3 regions, 224 crops upsampled to 299, D = 768, batch 48,
bf16 autocast, the shipped MiniLM as text encoder) for a fixed number of optimizer steps,
using the training code's own pieces (StudyDataset, ShardedBatchSampler, GlobalBatchLoss,
optimizer_step). It prints:

- studies/s over the measured steps (after ``--warmup`` steps), each step timed up to the
  loss on the host, as the training loop reads it; also at the median step (cuDNN tunes
  once per new input shape, which a short run does not amortise);
- peak device memory of those steps (CUDA: max allocated and reserved; CPU: peak RSS);
- the share of step time spent waiting for the next batch (time blocked in the DataLoader
  iterator over the whole step time);
- bf16 against fp32 on one batch (TF32 off for the reference): the largest and mean score
  differences and how often the top-ranked report (and study) agree;
- the same steps with the local alignment compiled (``train.compile: true``; its kernels
  under ``--work``): compile time, studies/s and peak memory against the eager steps
  (``--no-compiled`` skips it);
- one optimizer step of a one-process DistributedDataParallel group (NCCL on CUDA; gloo
  on the CPU, said so) through the all-gather of the global batch.

Image weights are random (``model.image_weights`` null: no download; speed does not depend
on the values); synthetic originals are drawn at ``--image-scale`` (0.125: about 320 x 380,
still above the 256 px that preprocess resizes to) so that preparing the set takes seconds.

    python benchmarks/gpu_check.py                      # CUDA, 1,500 studies, 5 + 40 steps
    python benchmarks/gpu_check.py --device cpu --studies 60 --steps 2 --warmup 1 \\
        --set train.batch_size=4 --set preprocess.image_size=64 ...   # a CPU smoke run

``--set section.key=value`` overrides params-paper.yaml (the value is read as YAML).
``--json FILE`` also writes the figures as JSON. Exit code 1 with one line on stderr when
the check cannot run (no CUDA device, a stage that fails).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's limitr and stages, whatever is installed

from limitr.errors import LimitrError  # noqa: E402
DEFAULT_WORK = Path(os.environ.get("TMPDIR", "/tmp")) / "limitr-gpu-check"


class CheckError(Exception):
    """A reason the check cannot go on (printed as one line)."""


# ----------------------------------------------------------------------------- settings
def parse_sets(items: list[str]) -> dict[tuple[str, str], Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not section or not name:
            raise CheckError(f"--set expects section.key=value, got {item!r}")
        out[(section, name)] = yaml.safe_load(value)
    return out


def check_params(base: Path, work: Path, studies: int, image_scale: float, sets: dict) -> dict:
    """params-paper.yaml with the check's folders, set size, MiniLM and random image weights."""
    params = yaml.safe_load(base.read_text())
    raw = work / "raw"
    fixed = {
        ("synthesize", "out"): str(raw),
        ("synthesize", "n_studies"): studies,
        ("synthesize", "image_scale"): image_scale,
        ("preprocess", "mimic_root"): str(raw / "mimic-cxr-jpg"),
        ("preprocess", "reports"): str(raw / "mimic-cxr-reports.zip"),
        ("preprocess", "ms_cxr"): None,
        ("preprocess", "class_retrieval"): None,
        ("preprocess", "out"): str(work / "shards"),
        ("tokenize", "shards"): str(work / "shards"),
        ("tokenize", "out"): str(work / "tokens"),
        ("tokenize", "tokenizer"): None,  # the shipped MiniLM's tokenizer
        ("model", "text_encoder"): None,  # the shipped MiniLM
        ("model", "image_weights"): None,
        ("train", "shards"): str(work / "shards"),
        ("train", "tokens"): str(work / "tokens"),
        ("train", "out"): str(work / "model"),
        ("train", "mixed_precision"): True,
    }
    for (section, key), value in {**fixed, **sets}.items():
        params.setdefault(section, {})[key] = value
    return params


# ----------------------------------------------------------------------------- data
STAGES = (("synthesize", "raw"), ("preprocess", "shards"), ("tokenize", "tokens"))


def prepare(work: Path, params: dict, log) -> dict[str, float]:
    """Run the three data stages (skipping those whose settings and output are unchanged);
    returns seconds per stage run."""
    work.mkdir(parents=True, exist_ok=True)
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    stamp_file = work / "prepared.json"
    stamps = json.loads(stamp_file.read_text()) if stamp_file.is_file() else {}
    seconds: dict[str, float] = {}
    dirty = False
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for stage, out in STAGES:
        want = json.dumps([params.get("base"), params.get(stage)], sort_keys=True)
        if not dirty and stamps.get(stage) == want and (work / out).is_dir():
            log(f"{stage}: unchanged, reused {work / out}")
            continue
        dirty = True  # every later stage reads this one's output
        t0 = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-m", "stages", stage, "--params", str(params_file)],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or run.stdout.strip().splitlines() or ["no output"])[-1]
            raise CheckError(f"the {stage} stage failed: {last}")
        seconds[stage] = time.perf_counter() - t0
        stamps[stage] = want
        stamp_file.write_text(json.dumps(stamps))
        log(f"{stage}: {seconds[stage]:.1f} s")
    return seconds


# ----------------------------------------------------------------------------- measuring
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def endless_batches(loader, sampler, dataset) -> Iterator[Any]:
    """The loader's batches epoch after epoch, as the training loop walks them."""
    for epoch in count():
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        yield from loader


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one_process_group_context(backend: str, local_rank: int):
    """A DistContext that takes the distributed path (all-gather, DDP) with one process."""
    from limitr.train.distributed import DistContext

    @dataclass(frozen=True)
    class OneProcessGroup(DistContext):
        @property
        def enabled(self) -> bool:
            return True

    return OneProcessGroup(rank=0, world_size=1, local_rank=local_rank, backend=backend)


def check_device(name: str):
    """The torch device for ``name``; a CheckError when CUDA is asked for and not there."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise CheckError(f"--device must be cuda, cuda:N or cpu, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise CheckError(f"no CUDA device is visible to torch {torch.__version__} ({built}): without a "
                             "driver, or one older than that CUDA needs, set TORCH_SPEC to a matching wheel "
                             "(e.g. add --index-url https://download.pytorch.org/whl/cu126), or pass --device cpu")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise CheckError(f"{name} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
        device = torch.device("cuda", index)
    elif device.type != "cpu":
        raise CheckError(f"--device must be cuda, cuda:N or cpu, got {name!r}")
    return device


def measure(params: dict, device_name: str, steps: int, warmup: int, log,
            compiled: bool = True, work: Optional[Path] = None) -> dict:
    import torch
    import torch.distributed as dist

    from limitr.model import LIMITR, ModelConfig
    from limitr.train.config import TrainConfig
    from limitr.train.dataset import StudyDataset, collate_studies
    from limitr.train.distributed import ShardedBatchSampler, wrap_for_training, DistContext
    from limitr.train.loop import make_optimizer, optimizer_step, resolve_autocast_dtype, seed_everything
    from limitr.train.validate import autocast_context, embed_studies

    device = check_device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # As the training loop: fixed sizes let cuDNN pick its kernels; TF32 for float32 products.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    model_cfg = ModelConfig.from_dict(params["model"])
    train_cfg = TrainConfig.from_dict(params["train"])
    seed = int(params.get("base", {}).get("seed") or 0)
    dtype = resolve_autocast_dtype(train_cfg.mixed_precision, device)
    shards, tokens = Path(params["train"]["shards"]), Path(params["train"]["tokens"])

    dataset = StudyDataset(shards, tokens, "train", train_cfg.crop_size, train=True, seed=seed)
    sampler = ShardedBatchSampler(len(dataset), train_cfg.batch_size, seed=seed)
    if len(sampler) == 0:
        raise CheckError(f"{len(dataset)} training studies do not fill one batch of {train_cfg.batch_size}: "
                         "raise --studies")
    workers = train_cfg.num_workers
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_studies, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
    seed_everything(seed)
    model = LIMITR(model_cfg).to(device)
    step_module = wrap_for_training(model, DistContext(), device)
    optimizer = make_optimizer(model, train_cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    batches = endless_batches(loader, sampler, dataset)

    def one_step(module) -> tuple[float, float, float]:
        """(seconds waiting for the batch, seconds for the whole step, loss)."""
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        inputs = batch.to_model_inputs(device, train_cfg.upsample_to, model_cfg.lateral)
        losses, _ = optimizer_step(module, inputs, optimizer, scaler, trainable, train_cfg.grad_clip, device, dtype)
        loss = float(losses.total.detach())  # waits for the device, as the training loop does
        return t1 - t0, time.perf_counter() - t0, loss

    model.train()
    log(f"training: {warmup} warm-up + {steps} measured steps of {train_cfg.batch_size} studies, "
        f"autocast {dtype}, {workers} loader workers")
    if device.type == "cpu" and dtype == torch.bfloat16:
        from limitr.model.precision import cpu_bf16_dot_products

        log("bf16 on this CPU: " + ("native instructions" if cpu_bf16_dot_products() else
                                    "no bf16 instructions, converted in software (slower than float32)"))
    for _ in range(warmup):
        one_step(step_module)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wait = total = 0.0
    losses, step_seconds = [], []
    for _ in range(steps):
        w, t, loss = one_step(step_module)
        wait, total = wait + w, total + t
        losses.append(loss)
        step_seconds.append(t)
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "autocast_dtype": str(dtype).replace("torch.", "") if dtype else "float32",
        "batch_size": train_cfg.batch_size,
        "steps": steps,
        "n_train": len(dataset),
        "studies_per_s": steps * train_cfg.batch_size / total,
        # cuDNN tunes its kernels once per new input shape (the lateral encoder sees as many
        # shapes as there are lateral counts per batch): the median step shows the rate
        # once that is done, as over a long epoch.
        "studies_per_s_median_step": train_cfg.batch_size / statistics.median(step_seconds),
        "seconds_per_step": total / steps,
        "data_wait_share": wait / total,
        "losses_finite": all(math.isfinite(x) for x in losses),
        "last_loss": losses[-1],
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    else:
        out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    if compiled:
        out["compiled"] = _compiled_steps(model, step_module, one_step, device, train_cfg.batch_size, steps, warmup,
                                          work, log)
    out["bf16_vs_fp32"] = _agreement(model, next(batches), device, train_cfg, model_cfg, dtype,
                                     autocast_context, embed_studies)
    out["ddp"] = _ddp_step(model, step_module, optimizer, scaler, trainable, batches, device, train_cfg,
                           model_cfg, dtype, dist, wrap_for_training, optimizer_step, log)
    return out


def _compiled_steps(model, step_module, one_step, device, batch: int, steps: int, warmup: int,
                    work: Optional[Path], log) -> dict:
    """The same training steps with the local alignment compiled (train.compile: true):
    compile time, studies/s and peak memory, beside the eager figures measured before."""
    import torch

    from limitr.model.compiled import SAFKernels, attach, compiler_problem, use_cache_dir

    problem = compiler_problem(device)
    if problem is not None:
        log(f"compiled local alignment skipped: {problem}")
        return {"skipped": problem}
    if work is not None:
        use_cache_dir(work / "compile-cache")
    kernels = SAFKernels(device.type)
    attach(model, kernels)
    try:
        log(f"compiled local alignment: {max(2, warmup)} warm-up steps (the compile) + {steps} measured")
        for _ in range(max(2, warmup)):
            one_step(step_module)
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = [one_step(step_module)[1] for _ in range(steps)]
    finally:
        attach(model, None)
    out: dict[str, Any] = {
        "compile_s": kernels.compile_seconds, "graphs": kernels.graphs, "fallback": kernels.failure,
        "studies_per_s": steps * batch / sum(seconds),
        "studies_per_s_median_step": batch / statistics.median(seconds),
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def _agreement(model, batch, device, train_cfg, model_cfg, dtype, autocast_context, embed_studies) -> dict:
    """Scores of one batch in the autocast dtype (the training path) against float32."""
    import torch

    model.eval()
    kwargs = dict(upsample_to=train_cfg.upsample_to, lateral=model_cfg.lateral)
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        with torch.no_grad():
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            img, txt = embed_studies(model, [batch], device, autocast_dtype=None, **kwargs)
            ref = model.similarity(img, txt)
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
            img, txt = embed_studies(model, [batch], device, autocast_dtype=dtype, **kwargs)
            with autocast_context(device, dtype):
                low = model.similarity(img, txt)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        model.train()
    out = {"dtype": str(dtype).replace("torch.", "") if dtype else "float32"}
    for name in ("total", "local", "global_"):
        a, b = getattr(ref, name), getattr(low, name)
        if a is None:
            continue
        diff = (a.float() - b.float()).abs()
        out[f"max_abs_{name.rstrip('_')}"] = float(diff.max())
        out[f"mean_abs_{name.rstrip('_')}"] = float(diff.mean())
    a, b = ref.total.float(), low.total.float()
    out["top1_i2t_agree"] = float((a.argmax(1) == b.argmax(1)).float().mean())
    out["top1_t2i_agree"] = float((a.argmax(0) == b.argmax(0)).float().mean())
    return out


def _ddp_step(model, plain_module, optimizer, scaler, trainable, batches, device, train_cfg, model_cfg, dtype,
              dist, wrap_for_training, optimizer_step, log) -> dict:
    """One optimizer step through a one-process DDP group (NCCL on CUDA, gloo on the CPU)."""
    import torch

    from limitr.train.validate import autocast_context

    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend != "nccl":
        log("DDP: NCCL needs CUDA; the one-process DDP step runs on gloo instead")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(_free_port())
    dist.init_process_group(backend=backend, init_method="env://", rank=0, world_size=1)
    try:
        ctx = _one_process_group_context(backend, device.index or 0)
        ddp_module = wrap_for_training(model, ctx, device)
        batch = next(batches)
        inputs = batch.to_model_inputs(device, train_cfg.upsample_to, model_cfg.lateral)
        # The same batch through the plain module first (forward only, with the graph, so
        # that the SAF draws its dropout masks tile by tile as in training): with the same
        # seed the one-process group should give the same loss.
        model.train()
        torch.manual_seed(1234)
        with autocast_context(device, dtype):
            plain = float(plain_module(
                inputs.frontal, inputs.lateral, inputs.has_lateral,
                inputs.input_ids, inputs.attention_mask, inputs.word_ids,
            ).total.detach())
        _sync(device)
        torch.manual_seed(1234)
        t0 = time.perf_counter()
        losses, grad_norm = optimizer_step(ddp_module, inputs, optimizer, scaler, trainable, train_cfg.grad_clip,
                                           device, dtype)
        loss = float(losses.total.detach())
        _sync(device)
        seconds = time.perf_counter() - t0
    finally:
        dist.destroy_process_group()
    return {
        "backend": backend,
        "loss": loss,
        "plain_loss": plain,
        "grad_norm": grad_norm,
        "seconds": seconds,
        "ok": math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm)),
    }


# ----------------------------------------------------------------------------- output
def report(figures: dict, prepare_seconds: dict, install_seconds: Optional[float]) -> list[str]:
    f = figures
    rows = [("device", f"{f['device']}, torch {f['torch']}")]
    if install_seconds is not None:
        rows.append(("install", f"{install_seconds:.0f} s"))
    if prepare_seconds:
        rows.append(("prepare", ", ".join(f"{k} {v:.0f} s" for k, v in prepare_seconds.items())))
    rows += [
        ("training", f"{f['steps']} steps of {f['batch_size']} studies in {f['autocast_dtype']} "
                     f"({f['n_train']} training studies), losses finite: {f['losses_finite']}"),
        ("studies/s", f"{f['studies_per_s']:.1f} over the steps, {f['studies_per_s_median_step']:.1f} at the "
                      f"median step ({f['seconds_per_step'] * 1000:.0f} ms per step; target on one H200: >= 400)"),
    ]
    if "peak_memory_gib" in f:
        rows.append(("peak GPU memory", f"{f['peak_memory_gib']:.2f} GiB allocated, "
                                        f"{f['peak_reserved_gib']:.2f} GiB reserved"))
    else:
        rows.append(("peak memory", f"{f['peak_rss_gib']:.2f} GiB RSS (CPU run)"))
    rows.append(("data wait", f"{100 * f['data_wait_share']:.1f} % of step time"))
    c = f.get("compiled")
    if c and "skipped" in c:
        rows.append(("compiled local alignment", f"skipped: {c['skipped']}"))
    elif c:
        memory = (f", peak {c['peak_memory_gib']:.2f} GiB against {f['peak_memory_gib']:.2f} eager"
                  if "peak_memory_gib" in c else "")
        rows.append(("compiled local alignment",
                     f"{c['studies_per_s_median_step']:.1f} studies/s at the median step against "
                     f"{f['studies_per_s_median_step']:.1f} eager "
                     f"({c['studies_per_s_median_step'] / f['studies_per_s_median_step']:.2f}x){memory}; "
                     f"{c['graphs']} graphs compiled in {c['compile_s']:.0f} s"
                     + (f"; FELL BACK to eager: {c['fallback']}" if c["fallback"] else "")))
    a = f["bf16_vs_fp32"]
    rows.append((f"{a['dtype']} vs fp32", f"max |d score| {a['max_abs_total']:.2e} (local "
                 f"{a.get('max_abs_local', float('nan')):.2e}, global {a['max_abs_global']:.2e}), mean "
                 f"{a['mean_abs_total']:.2e}; top-1 agrees i2t {100 * a['top1_i2t_agree']:.0f} %, "
                 f"t2i {100 * a['top1_t2i_agree']:.0f} %"))
    d = f["ddp"]
    rows.append((f"DDP step ({d['backend']}, 1 process)", f"{'ok' if d['ok'] else 'FAILED'}: loss {d['loss']:.4f} "
                 f"(plain forward {d['plain_loss']:.4f}), {d['seconds'] * 1000:.0f} ms"))
    width = max(len(k) for k, _ in rows)
    return ["gpu check"] + [f"  {k.ljust(width)}  {v}" for k, v in rows]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    parser.add_argument("--params", type=Path, default=ROOT / "params-paper.yaml")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="folder for the set and params")
    parser.add_argument("--studies", type=int, default=1500, help="synthetic studies (about 80 %% train)")
    parser.add_argument("--image-scale", type=float, default=0.125, help="synthetic original size (1.0 = MIMIC's)")
    parser.add_argument("--steps", type=int, default=40, help="measured optimizer steps")
    parser.add_argument("--warmup", type=int, default=5, help="steps before measuring")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--install-seconds", type=float, help="(from gpu_check.sh) shown in the summary")
    parser.add_argument("--no-compiled", dest="compiled", action="store_false",
                        help="skip the steps with the local alignment compiled (train.compile: true)")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(f"[gpu check] {line}", flush=True)

    try:
        if args.steps < 1 or args.warmup < 0:
            raise CheckError("--steps must be >= 1 and --warmup >= 0")
        check_device(args.device)  # before preparing anything
        params = check_params(args.params, args.work.resolve(), args.studies, args.image_scale, parse_sets(args.sets))
        prepare_seconds = prepare(args.work.resolve(), params, log)
        figures = measure(params, args.device, args.steps, args.warmup, log, args.compiled, args.work.resolve())
    except (CheckError, LimitrError) as exc:
        print(f"gpu check: {exc}", file=sys.stderr)
        return 1
    figures["prepare_seconds"] = prepare_seconds
    print("\n".join(report(figures, prepare_seconds, args.install_seconds)), flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if figures["losses_finite"] and figures["ddp"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
