"""SAF pooling (similarity attention filtration) of local similarity vectors, for many pairs.

For one (report, study) pair with context vectors c_k and features f_k (k over words or
regions, K of them, masked), method.md defines

    s_k = l2norm(c_k * f_k)                      elementwise product, a D-vector
    m   = masked mean of s_k
    a_k = softmax_k( u . (drop(tanh(L1 s_k)) * drop(tanh(L2 m))) )
    v   = sum_k a_k s_k                          (l2-normalised by the caller)

For all B x B pairs of a batch the projection L1 s_k dominates the cost:
2 * pairs * K * D^2 flops forward, twice that backward. It runs as large matrix
multiplies over tiles of pairs, and the elementwise steps around it are done in place on
tile-sized buffers that stay in cache, with a hand-written backward: an autograd graph of
plain tensor ops would stream about ten full pairs x K x D tensors through memory, which on
a CPU costs more than the matrix multiplies themselves.
"""

from __future__ import annotations

import math
import torch
from torch import nn

#: Elements of a (pairs, K, D) tile processed at once on a CPU: a few MB per tile buffer,
#: so that the handful of buffers a tile needs stays near the last-level cache while the
#: matrix products stay large (2^19 to 2^21 measured alike; the larger issues fewer ops,
#: which matters when other processes share the cores).
CPU_TILE_ELEMENTS = 1 << 21
#: On accelerators, bigger tiles: fewer kernel launches matter more than cache.
DEVICE_TILE_ELEMENTS = 1 << 27

#: Norms are clamped here before dividing (a zero product vector stays zero).
NORM_EPS = 1e-8


class SAF(nn.Module):
    """The shared SAF module: L1, L2 (Linear(D, D)), u (Linear(D, 1)) and the dropout rate.

    Initialisation as in the similarity-filtration literature: Xavier-uniform weights, zero biases.
    """

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.local_proj = nn.Linear(dim, dim)  # L1
        self.mean_proj = nn.Linear(dim, dim)  # L2
        self.weight_proj = nn.Linear(dim, 1)  # u
        self.dropout = float(dropout)
        for layer in (self.local_proj, self.mean_proj, self.weight_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self, context: torch.Tensor, feature: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool the similarity vectors of A x P pairs.

        context: (A, P, K, D) context vectors c_k of each pair.
        feature: (P, K, D) features f_k, shared by the A pairs of each column p.
        mask: (P, K) bool, True for real words / regions (at least one per row).
        Returns pooled (A, P, D), the unnormalised sum_k a_k s_k, and weights (A, P, K)
        (zero where masked).
        """
        params = (
            self.local_proj.weight,
            self.local_proj.bias,
            self.mean_proj.weight,
            self.mean_proj.bias,
            self.weight_proj.weight,
            self.weight_proj.bias,
        )
        dropout = self.dropout if self.training else 0.0
        needs_grad = torch.is_grad_enabled() and any(
            t.requires_grad for t in (context, feature, *params)
        )
        if needs_grad:
            return SAFPoolFunction.apply(context, feature, mask, *params, dropout)
        # Inference: nothing is kept for a backward, so the activations stay tile-sized.
        with torch.autocast(device_type=context.device.type, enabled=False):
            dtype = context.dtype
            cast = tuple(t.detach().to(dtype) for t in params)
            pooled, weights, _ = saf_pool_forward(context, feature.to(dtype), mask, cast, dropout, save=False)
        return pooled, weights


def dropout_keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A Bernoulli keep mask (bool, P(keep) ~= 1 - p) and the matching rescale factor.

    On the CPU one 64-bit random draw gives four 16-bit uniforms (the random number
    generator is the bottleneck there), so p is quantised to 1/65536; the returned
    scale is 1 / (exact keep probability), which keeps the expectation unbiased.
    """
    numel = math.prod(shape)
    if device.type != "cpu":
        return torch.rand(shape, device=device) >= p, 1.0 / (1.0 - p)
    threshold = int(round(p * 65536)) - 32768
    n_words = (numel + 3) // 4
    bits = torch.randint(-(2**63), 2**63 - 1, (n_words,), dtype=torch.int64, device=device)
    keep = bits.view(torch.int16)[:numel].view(shape) >= threshold
    return keep, 65536.0 / (32768 - threshold)


def _tiles(a: int, p: int, row_elements: int, budget: int) -> list[tuple[int, int, int, int]]:
    """Rectangular tiles (a0, a1, p0, p1) whose slices of an (A, P, ...) tensor are contiguous."""
    per_a = p * row_elements
    if per_a <= budget:
        step = max(1, budget // per_a)
        return [(a0, min(a0 + step, a), 0, p) for a0 in range(0, a, step)]
    step = max(1, budget // row_elements)
    return [(a0, a0 + 1, p0, min(p0 + step, p)) for a0 in range(a) for p0 in range(0, p, step)]


def saf_pool_forward(
    context: torch.Tensor,
    feature: torch.Tensor,
    mask: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    dropout: float,
    save: bool,
) -> tuple[torch.Tensor, torch.Tensor, Optional[dict]]:
    """The tiled forward. params = (w1, b1, w2, b2, u, ub) already in the compute dtype.

    Returns pooled (A, P, D), weights (A, P, K) and, when ``save``, what the backward
    needs; without ``save`` the (A, P, K, D) activations live only tile by tile.
    """
    w1, b1, w2, b2, u, ub = params
    n_a, n_p, k, d = context.shape
    dtype, device = context.dtype, context.device
    maskf = mask.to(dtype)
    mean_w = maskf / maskf.sum(dim=-1, keepdim=True).clamp_min(1.0)  # (P, K)
    pooled = torch.empty(n_a, n_p, d, dtype=dtype, device=device)
    weights = torch.empty(n_a, n_p, k, dtype=dtype, device=device)
    saved: Optional[dict] = None
    if save:
        saved = {
            "mean_w": mean_w,
            "norms": torch.empty(n_a, n_p, k, 1, dtype=dtype, device=device),
            "act": torch.empty(n_a, n_p, k, d, dtype=dtype, device=device),  # tanh(L1 s)
            "keep": torch.empty(n_a, n_p, k, d, dtype=torch.bool, device=device) if dropout > 0 else None,
            "means": torch.empty(n_a, n_p, d, dtype=dtype, device=device),
            "gate": torch.empty(n_a, n_p, d, dtype=dtype, device=device),  # tanh(L2 m), pre-dropout
            "gate_keep": torch.empty(n_a, n_p, d, dtype=torch.bool, device=device) if dropout > 0 else None,
            "scale": 1.0,
        }
    budget = CPU_TILE_ELEMENTS if device.type == "cpu" else DEVICE_TILE_ELEMENTS
    for a0, a1, p0, p1 in _tiles(n_a, n_p, k * d, budget):
        na, npp = a1 - a0, p1 - p0
        s = context[a0:a1, p0:p1] * feature[p0:p1]
        nrm = torch.linalg.vector_norm(s, dim=-1, keepdim=True).clamp_min_(NORM_EPS)
        s.div_(nrm)
        m = torch.matmul(mean_w[p0:p1].unsqueeze(-2), s).squeeze(-2)  # (na, np, D)
        g = torch.addmm(b2, m.reshape(na * npp, d), w2.t()).tanh_()
        if saved is not None:
            h = saved["act"][a0:a1, p0:p1]
            torch.addmm(b1, s.view(-1, d), w1.t(), out=h.view(-1, d))
            saved["norms"][a0:a1, p0:p1] = nrm
            saved["means"][a0:a1, p0:p1] = m
            saved["gate"][a0:a1, p0:p1] = g.view(na, npp, d)
        else:
            h = torch.addmm(b1, s.view(-1, d), w1.t()).view(na, npp, k, d)
        h.tanh_()
        if dropout > 0:
            km, scale = dropout_keep_mask(h.shape, dropout, device)
            gk, _ = dropout_keep_mask(g.shape, dropout, device)
            if saved is not None:
                saved["keep"][a0:a1, p0:p1] = km
                saved["gate_keep"][a0:a1, p0:p1] = gk.view(na, npp, d)
                saved["scale"] = scale
            h_used = h * km
            g = g * gk * (scale * scale)  # both dropout rescales folded into the gate
        else:
            h_used = h
        ug = (g * u).view(na, npp, d, 1)
        e = torch.matmul(h_used, ug).squeeze(-1) + ub
        e.masked_fill_(~mask[p0:p1], float("-inf"))
        wts = torch.softmax(e, dim=-1)
        weights[a0:a1, p0:p1] = wts
        pooled[a0:a1, p0:p1] = torch.matmul(wts.unsqueeze(-2), s).squeeze(-2)
    return pooled, weights, saved


class SAFPoolFunction(torch.autograd.Function):
    """Tiled SAF pooling with a hand-written backward (see the module docstring).

    Saves the context, the tanh(L1 s) activations, the norms, weights and the dropout
    masks; s itself is recomputed per tile in backward from context and feature (cheap,
    in cache) instead of being stored.
    """

    @staticmethod
    def forward(ctx, context, feature, mask, w1, b1, w2, b2, u, ub, dropout):  # type: ignore[override]
        ctx.param_dtypes = tuple(t.dtype for t in (w1, b1, w2, b2, u, ub))
        dtype = context.dtype
        with torch.autocast(device_type=context.device.type, enabled=False):
            feature = feature.to(dtype)
            params = tuple(t.to(dtype) for t in (w1, b1, w2, b2, u, ub))
            pooled, weights, saved = saf_pool_forward(context, feature, mask, params, dropout, save=True)
        assert saved is not None
        w1c, _, w2c, _, uc, _ = params
        ctx.save_for_backward(
            context, feature, mask, saved["mean_w"], saved["norms"], saved["act"], saved["keep"],
            saved["means"], saved["gate"], saved["gate_keep"], weights, w1c, w2c, uc,
        )
        ctx.scale = saved["scale"]
        ctx.dropout = dropout
        ctx.set_materialize_grads(False)
        return pooled, weights

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_pooled, grad_weights):  # type: ignore[override]
        (context, feature, mask, mean_w, norms, act, keep, means, gate, gate_keep, weights, w1, w2, u) = ctx.saved_tensors
        n_a, n_p, k, d = context.shape
        dtype, device = context.dtype, context.device
        dropout, scale = ctx.dropout, ctx.scale
        with torch.autocast(device_type=device.type, enabled=False):
            if grad_pooled is None:
                grad_pooled = torch.zeros(n_a, n_p, d, dtype=dtype, device=device)
            grad_pooled = grad_pooled.to(dtype)
            if grad_weights is not None:
                grad_weights = grad_weights.to(dtype)
            acc = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
            g_w1 = torch.zeros(d, d, dtype=acc, device=device)
            g_b1 = torch.zeros(d, dtype=acc, device=device)
            g_w2 = torch.zeros(d, d, dtype=acc, device=device)
            g_b2 = torch.zeros(d, dtype=acc, device=device)
            g_u = torch.zeros(1, d, dtype=acc, device=device)
            g_ub = torch.zeros(1, dtype=acc, device=device)
            g_context = torch.empty_like(context) if ctx.needs_input_grad[0] else None
            g_feature = torch.zeros_like(feature) if ctx.needs_input_grad[1] else None
            budget = CPU_TILE_ELEMENTS if device.type == "cpu" else DEVICE_TILE_ELEMENTS

            for a0, a1, p0, p1 in _tiles(n_a, n_p, k * d, budget):
                na, npp = a1 - a0, p1 - p0
                c = context[a0:a1, p0:p1]
                f = feature[p0:p1]
                nrm = norms[a0:a1, p0:p1]
                s = (c * f).div_(nrm)  # recomputed, (na, np, K, D)
                h = act[a0:a1, p0:p1]
                wts = weights[a0:a1, p0:p1]
                gv = grad_pooled[a0:a1, p0:p1]  # (na, np, D)
                g = gate[a0:a1, p0:p1].reshape(na * npp, d)
                if dropout > 0:
                    km = keep[a0:a1, p0:p1]
                    g_used = g * gate_keep[a0:a1, p0:p1].reshape(na * npp, d) * (scale * scale)
                else:
                    km = None
                    g_used = g
                ug = g_used * u  # (rows, D)

                # Softmax of the weights, backward: grad wrt the logits e.
                g_a = torch.matmul(s, gv.unsqueeze(-1)).squeeze(-1)  # (na, np, K)
                if grad_weights is not None:
                    g_a = g_a + grad_weights[a0:a1, p0:p1]
                g_e = wts * (g_a - (wts * g_a).sum(dim=-1, keepdim=True))
                g_ub += g_e.sum()
                # e = h_used . ug: gradients of ug (per pair) and of h (per position).
                h_used = h * km if km is not None else h
                g_ug = torch.matmul(g_e.unsqueeze(-2), h_used).squeeze(-2).reshape(na * npp, d)
                del h_used
                g_h = g_e.unsqueeze(-1) * ug.view(na, npp, 1, d)
                if km is not None:
                    g_h.mul_(km)
                torch.ops.aten.tanh_backward.grad_input(g_h, h, grad_input=g_h)  # now grad of L1 s
                g_z = g_h.view(-1, d)
                s2 = s.view(-1, d)
                g_w1 += torch.mm(g_z.t(), s2).to(acc)
                g_b1 += g_z.sum(dim=0)
                g_s = torch.mm(g_z, w1).view(na, npp, k, d)
                del g_h, g_z
                g_s.addcmul_(wts.unsqueeze(-1), gv.unsqueeze(-2))  # from pooled = sum_k a_k s_k
                # The gate path: ug = u * drop(tanh(L2 m)).
                g_u += (g_ug * g_used).sum(dim=0, keepdim=True)
                g_g = g_ug * u
                if dropout > 0:
                    g_g = g_g * gate_keep[a0:a1, p0:p1].reshape(na * npp, d) * (scale * scale)
                g_gz = torch.ops.aten.tanh_backward(g_g, g)
                m = means[a0:a1, p0:p1].reshape(na * npp, d)
                g_w2 += torch.mm(g_gz.t(), m).to(acc)
                g_b2 += g_gz.sum(dim=0)
                g_m = torch.mm(g_gz, w2).view(na, npp, 1, d)
                g_s.addcmul_(mean_w[p0:p1].unsqueeze(-1), g_m)
                # s = x / |x|, x = c * f.
                # Where the norm was clamped, s = x / eps is linear in x: no projection term.
                dot = torch.linalg.vecdot(s, g_s).unsqueeze(-1) * (nrm > NORM_EPS)
                g_s.addcmul_(s, dot, value=-1.0).div_(nrm)  # now grad of x
                if g_context is not None:
                    torch.mul(g_s, f, out=g_context[a0:a1, p0:p1])
                if g_feature is not None:
                    g_feature[p0:p1] += (g_s * c).sum(dim=0)

        dtypes = ctx.param_dtypes
        grads = [g.to(t) for g, t in zip((g_w1, g_b1, g_w2, g_b2, g_u, g_ub), dtypes)]
        return (g_context, g_feature, None, *grads, None)


def pool_reference(
    saf: SAF, context: torch.Tensor, feature: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same pooling written with plain autograd tensor ops (no tiling, no custom backward).

    Shapes as :meth:`SAF.forward`; the dropout is applied with ``torch.nn.functional.dropout``
    when the module is training. Slower and hungrier for memory; kept for checking.
    """
    s = context * feature
    s = s / torch.linalg.vector_norm(s, dim=-1, keepdim=True).clamp_min(NORM_EPS)
    maskf = mask.to(s.dtype)
    mean = (s * maskf.unsqueeze(-1)).sum(dim=-2) / maskf.sum(dim=-1, keepdim=True).clamp_min(1.0)
    p = saf.dropout if saf.training else 0.0
    h = nn.functional.dropout(torch.tanh(saf.local_proj(s)), p, saf.training)
    g = nn.functional.dropout(torch.tanh(saf.mean_proj(mean)), p, saf.training)
    e = saf.weight_proj(h * g.unsqueeze(-2)).squeeze(-1).masked_fill(~mask, float("-inf"))
    weights = torch.softmax(e, dim=-1)
    return torch.matmul(weights.unsqueeze(-2), s).squeeze(-2), weights
