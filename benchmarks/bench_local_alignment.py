"""Forward + backward time of the all-pairs local alignment against per-report loops.

Contenders, all with the same weights (one LocalAlignment module) and the same masks:
- batched: this project's LocalAlignment (all pairs, tiled SAF with its own backward);
- public loop: the loop formulation of the public LIMITR code, written plainly here:
  for each report its words are repeated over the B studies, its attention_fn
  (transposes, contiguous copies) and SA module (repeat of the gate, broadcast
  products) run for that one column of the score matrix;
- lean loop: the same per-report loop without those copies, to show what the loop
  itself costs.
Scores are compared in eval mode (SAF dropout off); train mode (dropout on) is timed too.
The batched module is also timed under bf16 autocast (a ratio to its float32 time; on a
CPU without bf16 instructions torch converts in software and bf16 can be slower).

Flops counted (matrix products only, backward = 2 x forward):
    forward = 2 B^2 (N + M) D^2       SAF projection L1 of every similarity vector
            + 2 B^2 (N + M) D         weight logits u . (h * g) and the pooled sums
            + 6 B^2 N M D             word-region logits and both context products
The achieved rate is compared with a 2048^3 fp32 matrix product timed in the same
rounds. Each time is the best of --repeats rounds (other processes share the cores).

    python benchmarks/bench_local_alignment.py            # the three configurations
    python benchmarks/bench_local_alignment.py --quick    # small sizes, a smoke run
    python benchmarks/bench_local_alignment.py --json out.json --repeats 5
    python benchmarks/bench_local_alignment.py --compiled --only 1   # eager against torch.compile
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import torch
import torch.nn.functional as F

from limitr.model.alignment import LocalAlignment, l2norm, two_step_attention

# (name, B, N words, R regions per view, views, D)
CONFIGS = [
    ("paper width: D=768, R=361 (19x19), frontal only", 16, 32, 361, 1, 768),
    ("CPU default: D=256, R=256 (layer2 of 128-px crops), frontal+lateral", 16, 64, 256, 2, 256),
    ("layer3 regions: D=256, R=64 (128-px crops), frontal+lateral", 32, 32, 64, 2, 256),
]
QUICK = [("quick", 8, 12, 16, 2, 64)]


def _l2norm_public(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    return torch.div(x, torch.pow(x, 2).sum(dim=dim, keepdim=True).sqrt() + eps)


def _attention_public(query, context, temp1, context_img, region_mask):
    """The public attention_fn: (B, D, Q) queries over (B, D, S) or (B, S, D) sources.

    Written as the public code writes it (transposes, contiguous copies, views), with the
    missing-lateral mask added so that it computes what this project computes.
    """
    if context_img:  # words (B, D, n) attend over regions (B, D, M)
        batch, query_len, source_len = query.size(0), query.size(2), context.size(2)
        context_t = torch.transpose(context, 1, 2).contiguous()
    else:  # regions (B, D, M) attend over words (B, n, D)
        batch, source_len, query_len = query.size(0), context.size(1), query.size(2)
        context_t = context
    attn = torch.bmm(context_t, query)  # (B, S, Q)
    if not context_img:  # first softmax over the regions (here the query side)
        attn = attn.masked_fill(~region_mask.unsqueeze(1), float("-inf"))
    attn = torch.softmax(attn.view(batch * source_len, query_len), dim=-1)
    attn = torch.transpose(attn.view(batch, source_len, query_len), 1, 2).contiguous()
    attn = attn.view(batch * query_len, source_len) * temp1
    if context_img:  # second softmax over the regions (here the source side)
        attn = attn.view(batch, query_len, source_len).masked_fill(~region_mask.unsqueeze(1), float("-inf"))
        attn = attn.view(batch * query_len, source_len)
    attn = torch.softmax(attn, dim=-1).view(batch, query_len, source_len)
    attn_t = torch.transpose(attn, 1, 2).contiguous()
    if context_img:
        return torch.bmm(context, attn_t)  # (B, D, n)
    return torch.bmm(torch.transpose(context, 1, 2).contiguous(), attn_t)  # (B, D, M)


def _saf_public(saf, local: torch.Tensor, raw_global: torch.Tensor) -> torch.Tensor:
    """The public SA module's forward, with this module's weights (dropout in train mode)."""
    l_emb = F.dropout(torch.tanh(saf.local_proj(local)), saf.dropout, saf.training)
    g_emb = F.dropout(torch.tanh(saf.mean_proj(raw_global)), saf.dropout, saf.training)
    g_emb = g_emb.unsqueeze(1).repeat(1, l_emb.size(1), 1)
    weights = torch.softmax(saf.weight_proj(l_emb.mul(g_emb)).squeeze(2), dim=1)
    return _l2norm_public((weights.unsqueeze(2) * local).sum(dim=1))


def public_loop_scores(module: LocalAlignment, words, word_mask, regions, region_mask, r: int):
    """The public code's local_similarities: one pass over all studies per report.

    words (B, N, D) with word_mask; regions (B, M, D), M = R or 2R (frontal, lateral);
    studies without a lateral are split off and pooled over their frontal regions, as
    the public code does with its lateral index (its mean uses both views here).
    """
    saf = module.saf
    n_images = regions.shape[0]
    img_features = regions.transpose(1, 2).contiguous()  # (B, D, M), the public layout
    has_lateral = region_mask[:, r:].any(dim=1) if regions.shape[1] > r else None
    caption_cols, image_cols = [], []
    for i in range(words.shape[0]):
        n_i = int(word_mask[i].sum())
        word = words[i, :n_i].t().unsqueeze(0).contiguous().repeat(n_images, 1, 1)  # (B, D, n)
        wei_context = _attention_public(word, img_features, module.temp1, True, region_mask)
        word = word.transpose(1, 2).contiguous()
        wei_context = wei_context.transpose(1, 2).contiguous()
        sim_loc = _l2norm_public(torch.mul(wei_context, word))
        caption_cols.append(torch.sigmoid(module.head_caption(_saf_public(saf, sim_loc, torch.mean(sim_loc, 1)))))

        wei_context_img = _attention_public(img_features, word, module.temp1, False, region_mask)
        sim_loc_img = _l2norm_public(torch.mul(wei_context_img.transpose(1, 2).contiguous(), regions))
        if has_lateral is None:
            sim_vec = _saf_public(saf, sim_loc_img, torch.mean(sim_loc_img, 1))
        else:
            only_f = sim_loc_img[~has_lateral, :r]
            both = sim_loc_img[has_lateral]
            sim_vec = torch.zeros(n_images, words.shape[2], dtype=words.dtype)
            sim_vec[~has_lateral] = _saf_public(saf, only_f, torch.mean(only_f, 1))
            sim_vec[has_lateral] = _saf_public(saf, both, torch.mean(both, 1))
        image_cols.append(torch.sigmoid(module.head_image(sim_vec)))
    return torch.cat(caption_cols, dim=1), torch.cat(image_cols, dim=1)


def lean_loop_scores(module: LocalAlignment, words, word_mask, regions, region_mask, r: int):
    """The same per-report loop without the public code's copies: the loop alone."""
    saf = module.saf
    n_images = regions.shape[0]
    caption_cols, image_cols = [], []
    for i in range(words.shape[0]):
        n_i = int(word_mask[i].sum())
        w = words[i, :n_i].unsqueeze(0).expand(n_images, n_i, -1)  # (B, n_i, D)
        logits = torch.bmm(w, regions.transpose(1, 2))  # (B, n_i, M)
        rmask = region_mask.unsqueeze(1)  # (B, 1, M)
        wmask = torch.ones(n_images, n_i, 1, dtype=torch.bool)
        attn = two_step_attention(logits, -2, wmask, -1, rmask, module.temp1)
        s = l2norm(torch.bmm(attn, regions) * w)
        e = saf.weight_proj(torch.tanh(saf.local_proj(s)) * torch.tanh(saf.mean_proj(s.mean(dim=1))).unsqueeze(1))
        v = l2norm(torch.bmm(torch.softmax(e.squeeze(-1), dim=1).unsqueeze(1), s).squeeze(1))
        caption_cols.append(torch.sigmoid(module.head_caption(v)))
        attn = two_step_attention(logits, -1, rmask, -2, wmask, module.temp1)
        s = l2norm(torch.bmm(attn.transpose(1, 2), w) * regions)
        m = region_mask.unsqueeze(-1).to(s.dtype)
        mean = (s * m).sum(dim=1) / m.sum(dim=1)
        e = saf.weight_proj(torch.tanh(saf.local_proj(s)) * torch.tanh(saf.mean_proj(mean)).unsqueeze(1))
        a = torch.softmax(e.squeeze(-1).masked_fill(~region_mask, float("-inf")), dim=1)
        v = l2norm(torch.bmm(a.unsqueeze(1), s).squeeze(1))
        image_cols.append(torch.sigmoid(module.head_image(v)))
    return torch.cat(caption_cols, dim=1), torch.cat(image_cols, dim=1)


def bf16_scores(module: LocalAlignment, words, word_mask, regions, region_mask):
    """The batched scores under bf16 autocast (the SAF projections and context products in
    bf16, softmaxes, norms and heads in float32)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return module(words, word_mask, regions, region_mask)


def flops_forward(b: int, n: int, m: int, d: int) -> float:
    pairs = b * b
    return 2.0 * pairs * (n + m) * d * d + 2.0 * pairs * (n + m) * d + 6.0 * pairs * n * m * d


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def matmul_once(size: int = 2048) -> Callable[[], None]:
    a, b = torch.randn(size, size), torch.randn(size, size)
    return lambda: torch.mm(a, b)


def with_kernels(module: LocalAlignment, kernels, fn: Callable) -> Callable:
    """``fn`` with the compiled SAF tiles attached for its forward (the backward keeps them)."""
    from limitr.model.compiled import attach

    def run(*args):
        attach(module, kernels)
        try:
            return fn(*args)
        finally:
            attach(module, None)

    return run


def run_config(name: str, b: int, n: int, r: int, views: int, d: int, repeats: int,
               compiled: bool = False) -> dict:
    """Times are the best of ``repeats`` rounds; each round runs every contender once
    (and the reference matrix product), so that load from other processes hits all alike.
    ``compiled``: also the batched module with the SAF tiles compiled (torch.compile), forward
    + backward and forward alone (evaluation's scoring), beside the eager ones."""
    g = torch.Generator().manual_seed(0)
    m = r * views
    module = LocalAlignment(d, temp1=4.0, saf_dropout=0.4)
    words = torch.randn(b, n, d, generator=g)
    regions = torch.randn(b, m, d, generator=g)
    lengths = torch.randint(n // 2, n + 1, (b,), generator=g)
    lengths[0] = n
    word_mask = torch.arange(n).unsqueeze(0) < lengths.unsqueeze(1)
    region_mask = torch.ones(b, m, dtype=torch.bool)
    if views == 2:  # every third study has no lateral
        region_mask[::3, r:] = False
    grad_c = torch.rand(b, b, generator=g)
    grad_i = torch.rand(b, b, generator=g)

    contenders = {
        "batched": lambda wd, rg: module(wd, word_mask, rg, region_mask),
        "public_loop": lambda wd, rg: public_loop_scores(module, wd, word_mask, rg, region_mask, r),
        "lean_loop": lambda wd, rg: lean_loop_scores(module, wd, word_mask, rg, region_mask, r),
        "batched_bf16": lambda wd, rg: bf16_scores(module, wd, word_mask, rg, region_mask),
    }
    kernels = None
    if compiled:
        from limitr.model.compiled import SAFKernels

        kernels = SAFKernels("cpu")
        contenders["batched_compiled"] = with_kernels(module, kernels, contenders["batched"])

    def step(fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], None]:
        def run() -> None:
            module.zero_grad(set_to_none=True)
            wd, rg = words.clone().requires_grad_(), regions.clone().requires_grad_()
            cap, img = fn(wd, rg)
            ((cap * grad_c).sum() + (img * grad_i).sum()).backward()

        return run

    def forward_only(fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                fn(words, regions)

        return run

    module.eval()
    diffs = {}
    with torch.no_grad():
        cap_b, img_b = contenders["batched"](words, regions)
        for key in ("public_loop", "lean_loop"):
            cap_l, img_l = contenders[key](words, regions)
            diffs[key] = max((cap_b - cap_l).abs().max().item(), (img_b - img_l).abs().max().item())
        cap_h, img_h = contenders["batched_bf16"](words, regions)
        bf16_diff = max((cap_b - cap_h).abs().max().item(), (img_b - img_h).abs().max().item())
        if kernels is not None:
            cap_k, img_k = contenders["batched_compiled"](words, regions)
            diffs["batched_compiled"] = max((cap_b - cap_k).abs().max().item(), (img_b - img_k).abs().max().item())
    mm = matmul_once()
    train_mode = ("batched", "public_loop") + (("batched_compiled",) if kernels is not None else ())
    infer = ("batched",) + (("batched_compiled",) if kernels is not None else ())  # forward alone
    times: dict[str, list[float]] = {key: [] for key in (
        *contenders, *(f"{k}_dropout" for k in train_mode), *(f"{k}_forward" for k in infer), "matmul")}
    for key in contenders:  # warm-up (and the compiles: every graph, both modes)
        step(contenders[key])()
    if kernels is not None:
        module.train()
        step(contenders["batched_compiled"])()
        module.eval()
        forward_only(contenders["batched_compiled"])()
    for _ in range(repeats):
        module.eval()
        for key, fn in contenders.items():
            times[key].append(timed(step(fn)))
        for key in infer:
            times[f"{key}_forward"].append(timed(forward_only(contenders[key])))
        module.train()
        for key in train_mode:
            times[f"{key}_dropout"].append(timed(step(contenders[key])))
        times["matmul"].append(timed(mm))
    best = {key: min(v) for key, v in times.items()}
    peak = 2.0 * 2048**3 / best["matmul"] / 1e9
    flops = 3.0 * flops_forward(b, n, m, d)
    rate = {key: flops / best[key] / 1e9 for key in contenders}
    extra = {}
    if kernels is not None:
        extra = {
            "compile_s": round(kernels.compile_seconds, 1),
            "compiled_graphs": kernels.graphs,
            "compiled_fallback": kernels.failure,
            "compiled_speedup": round(best["batched"] / best["batched_compiled"], 2),
            "compiled_speedup_with_dropout": round(best["batched_dropout"] / best["batched_compiled_dropout"], 2),
            "compiled_speedup_forward": round(best["batched_forward"] / best["batched_compiled_forward"], 2),
        }
    return {
        "config": name,
        "B": b, "N": n, "M": m, "D": d,
        "matmul_gflops": round(peak, 1),
        "gflop_fwd_bwd": round(flops / 1e9, 1),
        **{f"{key}_s": round(value, 3) for key, value in best.items() if key != "matmul"},
        "speedup_vs_public_loop": round(best["public_loop"] / best["batched"], 2),
        "speedup_vs_public_loop_with_dropout": round(best["public_loop_dropout"] / best["batched_dropout"], 2),
        "speedup_vs_lean_loop": round(best["lean_loop"] / best["batched"], 2),
        **{f"{key}_share_of_matmul_rate": round(rate[key] / peak, 3) for key in contenders},
        "bf16_speedup": round(best["batched"] / best["batched_bf16"], 2),
        "bf16_max_abs_score_diff": bf16_diff,
        "max_abs_score_diff": max(diffs.values()),
        "scores_agree_1e-5": max(diffs.values()) <= 1e-5,
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=str, default=None, help="also write the results here")
    parser.add_argument("--only", type=int, default=None, help="run only configuration number N (0-based)")
    parser.add_argument("--compiled", action="store_true",
                        help="also the SAF compiled with torch.compile (needs a C++ compiler; compiles first)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; best of {args.repeats} rounds")
    results = []
    if args.compiled:  # the kernels in a folder of this run, not the system's default cache
        import tempfile

        from limitr.model.compiled import use_cache_dir

        compile_tmp = tempfile.TemporaryDirectory(prefix="bench-compile-cache-")
        use_cache_dir(compile_tmp.name)
    configs = QUICK if args.quick else CONFIGS
    if args.only is not None:
        configs = [configs[args.only]]
    for cfg in configs:
        res = run_config(*cfg, repeats=args.repeats, compiled=args.compiled)
        results.append(res)
        print(
            f"{res['config']}  B={res['B']} N={res['N']} M={res['M']} D={res['D']}  "
            f"({res['gflop_fwd_bwd']:.0f} GFLOP fwd+bwd; fp32 matmul {res['matmul_gflops']:.0f} GFLOP/s)\n"
            f"  public loop {res['public_loop_s']:.3f} s ({100 * res['public_loop_share_of_matmul_rate']:.0f}%)   "
            f"lean loop {res['lean_loop_s']:.3f} s ({100 * res['lean_loop_share_of_matmul_rate']:.0f}%)   "
            f"batched {res['batched_s']:.3f} s ({100 * res['batched_share_of_matmul_rate']:.0f}% of the matmul rate)\n"
            f"  speedup {res['speedup_vs_public_loop']:.1f}x over the public loop, "
            f"{res['speedup_vs_lean_loop']:.1f}x over the lean loop; scores agree to {res['max_abs_score_diff']:.1e}\n"
            f"  train mode (SAF dropout): public loop {res['public_loop_dropout_s']:.3f} s, batched "
            f"{res['batched_dropout_s']:.3f} s, speedup {res['speedup_vs_public_loop_with_dropout']:.1f}x\n"
            f"  bf16 autocast: batched {res['batched_bf16_s']:.3f} s ({res['bf16_speedup']:.2f}x as fast as "
            f"float32); scores within {res['bf16_max_abs_score_diff']:.1e} of float32"
        )
        if args.compiled:
            print(
                f"  compiled SAF ({res['compiled_graphs']} graphs, {res['compile_s']:.0f} s to compile"
                f"{'; FELL BACK: ' + res['compiled_fallback'] if res['compiled_fallback'] else ''}): "
                f"{res['batched_compiled_s']:.3f} s, {res['compiled_speedup']:.2f}x eager; with dropout "
                f"{res['compiled_speedup_with_dropout']:.2f}x; forward alone (evaluation) "
                f"{res['batched_forward_s']:.3f} -> {res['batched_compiled_forward_s']:.3f} s, "
                f"{res['compiled_speedup_forward']:.2f}x"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
