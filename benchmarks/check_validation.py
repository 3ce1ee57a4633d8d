"""Bounded validation against all-vs-all: the same best epoch on the default data?

Trains with the settings of params.yaml one epoch at a time (each call resumes the previous
one's ``last/`` checkpoint, and resuming is exact, so this is the uninterrupted run) and after
each epoch scores the validation split from the same weights twice: every pair with the local
alignment (``train.val_rerank_top_k: null``, the validation before) and the bounded way the
loop now validates (global top-K re-ranked on at most ``train.val_max_studies`` studies).
Prints both curves, the best epoch of each, the seconds each validation took (a ratio within
one run), and the training process's user and system CPU time per epoch.

    python benchmarks/check_validation.py [--params params.yaml] [--out /tmp/check-validation]

Needs the preprocess and tokenize outputs (``dvc repro tokenize``); takes about as long as
the train stage.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def validation_figures(out: Path, shards: Path, tokens: Path, train_cfg, seed: int) -> dict:
    """r_sum and seconds of both validations of ``out/last``."""
    from limitr.data.prepare import collate_studies
    from limitr.data.studies import StudyDataset
    from limitr.model import LIMITR
    from limitr.train.validate import validate, validation_subset

    model = LIMITR.from_pretrained(out / "last").eval()
    val_set = StudyDataset(shards, tokens, "validate", train_cfg.crop_size, train=False, seed=seed)
    result = {}
    for name, top_k, max_studies in (("all_vs_all", None, None),
                                     ("bounded", train_cfg.val_rerank_top_k, train_cfg.val_max_studies)):
        subset = validation_subset(len(val_set), max_studies, seed)
        data = val_set if subset is None else torch.utils.data.Subset(val_set, subset.tolist())
        loader = torch.utils.data.DataLoader(data, batch_size=train_cfg.batch_size, collate_fn=collate_studies)
        start = time.perf_counter()
        figures = validate(model, loader, torch.device("cpu"), upsample_to=train_cfg.upsample_to,
                           lateral=model.config.lateral, chunk=model.config.score_chunk, rerank_top_k=top_k)
        result[name] = figures["r_sum"]
        result[f"{name}_s"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, default=Path("/tmp/check-validation"))
    args = parser.parse_args()

    from limitr.model.config import ModelConfig
    from limitr.train.allocator import tune_allocator
    from limitr.train.loop import TrainConfig, train

    tune_allocator()
    params = yaml.safe_load(args.params.read_text())
    train_sec = dict(params["train"])
    shards, tokens = ROOT / train_sec.pop("shards"), ROOT / train_sec.pop("tokens")
    train_sec.pop("out", None)
    seed = train_sec.pop("seed", None)
    seed = int(params.get("base", {}).get("seed", 0) or 0) if seed is None else int(seed)
    model_cfg = ModelConfig.from_dict(params["model"])
    epochs = int(train_sec["epochs"])
    rows = []
    for epoch in range(1, epochs + 1):
        cfg = TrainConfig.from_dict({**train_sec, "epochs": epoch})
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        result = train(model_cfg, cfg, shards, tokens, args.out / "model", seed=seed,
                       metrics_dir=args.out / "metrics", resume=epoch > 1)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        row = {"epoch": epoch, "loop_r_sum": result.epoch_history[-1]["r_sum"], "train_s": wall,
               "user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime,
               "minflt_per_s": (after.ru_minflt - before.ru_minflt) / wall}
        row.update(validation_figures(args.out / "model", shards, tokens, cfg, seed))
        rows.append(row)
        print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    best_full = max(rows, key=lambda r: (r["all_vs_all"], -r["epoch"]))["epoch"]
    best_bounded = max(rows, key=lambda r: (r["bounded"], -r["epoch"]))["epoch"]
    print(f"best epoch: all-vs-all {best_full}, bounded {best_bounded} "
          f"({'same' if best_full == best_bounded else 'DIFFERENT'})")
    full_s = sum(r["all_vs_all_s"] for r in rows)
    bounded_s = sum(r["bounded_s"] for r in rows)
    print(f"validation seconds over {epochs} epochs: all-vs-all {full_s:.0f}, bounded {bounded_s:.0f} "
          f"({full_s / max(bounded_s, 1e-9):.1f}x)")
    user, system = sum(r["user_s"] for r in rows), sum(r["sys_s"] for r in rows)
    print(f"training calls: {sum(r['train_s'] for r in rows):.0f} s wall, user {user:.0f} s, system {system:.0f} s "
          f"({100 * system / max(user + system, 1e-9):.0f}% of the CPU time in the kernel)")


if __name__ == "__main__":
    main()
