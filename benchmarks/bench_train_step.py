"""One training step of the default model, with and without each speed lever, in one process.

The model, batches and settings are those of ``params.yaml`` (the pipeline's own
data/shards and data/tokens, so run ``dvc repro tokenize`` first). Each configuration
builds its model from the same seed; after one warm-up step each, ``--rounds`` rounds time
``--steps`` optimizer steps of every configuration in turn on the same batches (interleaved,
so that a slow spell of the machine hits all alike); the figure is the median step. The levers:

- ``bf16``: bf16 autocast (``train.mixed_precision``; auto turns it on on CUDA and on CPUs
  with native bf16 dot products);
- ``lateral skip``: studies without a lateral view run the image-to-text SAF over their
  frontal regions only (:func:`limitr.model.alignment.region_groups`), exact;
- ``fast dropout``: the CPU dropout masks of :mod:`limitr.model.dropout` in the SAF and the
  text encoder, against torch's own;
- ``fused Adam``: torch's fused Adam against its multi-tensor (foreach) one;
- ``channels last``: the image encoders' activations in channels-last layout.

"baseline" has every lever off (the training step as it was before them), "all" every lever
on (the step as ``limitr train`` runs it here), and each "all but X" row turns one lever off,
so the ratio to "all" is what that lever is worth with the others on. Ratios are printed
against the baseline of the same run: compare them, not the seconds, between machines.

    python benchmarks/bench_train_step.py [--steps 3] [--rounds 3] [--json out.json]
    python benchmarks/bench_train_step.py --quick --params tiny.yaml   # a smoke run
    python benchmarks/bench_train_step.py --compiled   # also train.compile false against true
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LEVERS = ("bf16", "lateral skip", "fast dropout", "fused Adam", "channels last")


def _torch_keep_mask(shape, p, device, out=None):
    """The SAF's keep mask as it was drawn before: torch's generator, 16 bits per element."""
    import math

    numel = math.prod(shape)
    threshold = int(round(p * 65536)) - 32768
    bits = torch.randint(-(2**63), 2**63 - 1, ((numel + 3) // 4,), dtype=torch.int64, device=device)
    keep = bits.view(torch.int16)[:numel].view(shape) >= threshold
    if out is not None:
        keep = out.copy_(keep)
    return keep, 65536.0 / (32768 - threshold)


@contextlib.contextmanager
def levers_off(off: set[str]):
    """Patch the library so that the levers in ``off`` act as before them."""
    from limitr.model import alignment, image_encoder, saf

    saved = (alignment.region_groups, saf.keep_mask, image_encoder.CHANNELS_LAST)
    if "lateral skip" in off:
        alignment.region_groups = lambda mask: [(None, mask.shape[1])]
    if "fast dropout" in off:
        saf.keep_mask = _torch_keep_mask
    if "channels last" in off:
        image_encoder.CHANNELS_LAST = False
    try:
        yield
    finally:
        alignment.region_groups, saf.keep_mask, image_encoder.CHANNELS_LAST = saved


def build(off: set[str], model_cfg, train_cfg, seed: int):
    from limitr.model import LIMITR
    from limitr.train.loop import make_optimizer, parameter_groups, seed_everything

    seed_everything(seed)
    model = LIMITR(model_cfg).train()
    if "fast dropout" in off:  # torch's dropout modules and sdpa attention back in the text model
        for parent in model.text_encoder.bert.modules():
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Dropout):
                    setattr(parent, name, nn.Dropout(child.p))
        model.text_encoder.bert.set_attn_implementation("sdpa")
    if "fused Adam" in off:
        optimizer = torch.optim.Adam(
            parameter_groups(model, train_cfg.lr, train_cfg.image_lr, train_cfg.head_lr),
            betas=train_cfg.betas, weight_decay=train_cfg.weight_decay, foreach=True,
        )
    else:
        optimizer = make_optimizer(model, train_cfg)
    return model, optimizer


class Contender:
    """One configuration: its own model and optimizer, stepped on the shared batches."""

    def __init__(self, off: set[str], model_cfg, train_cfg, kernels=None) -> None:
        from limitr.model.compiled import attach
        from limitr.train.distributed import DistContext, wrap_for_training

        self.off, self.train_cfg = off, train_cfg
        self.model, self.optimizer = build(off, model_cfg, train_cfg, seed=0)
        attach(self.model, kernels)  # the compiled SAF tiles (None = eager)
        self.kernels = kernels
        self.step_module = wrap_for_training(self.model, DistContext(), torch.device("cpu"))
        self.trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)
        self.times: list[float] = []

    def steps(self, batches, n: int, record: bool = True) -> None:
        from limitr.train.loop import optimizer_step

        dtype = None if "bf16" in self.off else torch.bfloat16
        with levers_off(self.off):
            for i in range(n):
                t0 = time.perf_counter()
                optimizer_step(self.step_module, batches[(len(self.times) + i) % len(batches)], self.optimizer,
                               self.scaler, self.trainable, self.train_cfg.grad_clip, torch.device("cpu"), dtype)
                if record:
                    self.times.append(time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all configurations")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--quick", action="store_true",
                        help="one round of one step, the baseline and 'all' rows only (a smoke run)")
    parser.add_argument("--compiled", action="store_true",
                        help="also the step as limitr train runs it here (its precision) with the local "
                             "alignment eager and compiled (train.compile false / true; compiles first)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = 1, 1

    import yaml

    from limitr.data.studies import StudyDataset
    from limitr.data.prepare import collate_studies
    from limitr.model.config import ModelConfig
    from limitr.model.precision import cpu_bf16_dot_products
    from limitr.settings import validate_settings
    from limitr.train.allocator import tune_allocator
    from limitr.train.config import TrainConfig

    tune_allocator()
    settings = validate_settings(yaml.safe_load(args.params.read_text()))
    model_cfg = ModelConfig.from_dict(settings.model.to_config_dict())
    train_cfg = TrainConfig.from_dict(settings.train.to_config_dict())
    shards, tokens = Path(settings.train.shards), Path(settings.train.tokens)
    if not (shards / "train").is_dir() or not (tokens / "train.parquet").is_file():
        sys.exit(f"error: no train split in {shards} / {tokens}: run `dvc repro tokenize` first")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-train-step-") as tmp:
        data = StudyDataset(shards, tokens, "train", train_cfg.crop_size, train=True, seed=0, store_dir=Path(tmp))
        b = train_cfg.batch_size
        batches = [collate_studies([data[j] for j in range(i * b, (i + 1) * b)]).to_model_inputs("cpu")
                   for i in range(max(1, min(4, len(data) // b)))]
    print(f"{torch.get_num_threads()} threads; native bf16 dot products: {cpu_bf16_dot_products()}; "
          f"batch {b}, {args.rounds} x {args.steps} timed steps per row (median)", flush=True)
    rows = {"baseline": set(LEVERS), "all": set()}
    if not args.quick:
        rows.update({f"all but {lever}": {lever} for lever in LEVERS})
    contenders = {name: Contender(off, model_cfg, train_cfg) for name, off in rows.items()}
    compile_tmp = None
    if args.compiled:
        from limitr.model.compiled import SAFKernels, use_cache_dir
        from limitr.train.loop import resolve_autocast_dtype

        compile_tmp = tempfile.TemporaryDirectory(prefix="bench-compile-cache-")
        use_cache_dir(compile_tmp.name)  # not the system's default cache folder
        as_run = set() if resolve_autocast_dtype(train_cfg.mixed_precision, torch.device("cpu")) else {"bf16"}
        contenders["train.compile false"] = Contender(as_run, model_cfg, train_cfg)
        contenders["train.compile true"] = Contender(as_run, model_cfg, train_cfg, kernels=SAFKernels("cpu"))
    for c in contenders.values():  # warm-up: the allocator and oneDNN's kernels (and the compile)
        c.steps(batches, 1, record=False)
    for _ in range(args.rounds):  # interleaved, so that a slow spell of the machine hits all alike
        for c in contenders.values():
            c.steps(batches, args.steps)
    figures = {name: statistics.median(c.times) for name, c in contenders.items()}
    for name, value in figures.items():
        print(f"  {name:<24} {value:.3f} s/step", flush=True)
    base, best = figures["baseline"], figures["all"]
    print(f"all levers: {base / best:.2f}x the baseline step ({base:.3f} -> {best:.3f} s)")
    for lever in LEVERS if not args.quick else ():
        print(f"  {lever:<14} worth {figures[f'all but {lever}'] / best:.2f}x with the others on")
    out = {"seconds_per_step": figures, "speedup": base / best}
    if args.compiled:
        kernels = contenders["train.compile true"].kernels
        out["compiled_speedup"] = figures["train.compile false"] / figures["train.compile true"]
        out["compile_s"], out["compiled_fallback"] = kernels.compile_seconds, kernels.failure
        print(f"compiled local alignment: {out['compiled_speedup']:.2f}x the eager step "
              f"({kernels.graphs} graphs compiled in {kernels.compile_seconds:.0f} s"
              f"{'; FELL BACK: ' + kernels.failure if kernels.failure else ''})")
        compile_tmp.cleanup()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
