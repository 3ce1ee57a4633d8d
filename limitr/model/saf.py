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

Mixed precision (see :mod:`limitr.model.precision`): the custom function reads the autocast
state when it is applied, as ``torch.amp.custom_fwd`` does, but for whatever device the
tensors are on, and runs its own casts with autocast off in both passes. The compute dtype
(bf16 under bf16 autocast) is used for the products with L1 (forward, and the two backward
products with twice its cost), for the stored tanh(L1 s) activations and the weight logits
h . ug; the similarity vectors s, their norms, the gate, the softmax, the pooled vector, the
weight gradients and every sum over pairs or positions stay in float32 (the input dtype
when it is float32 or float64, so the float64 parity checks are exact).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from limitr.model.dropout import keep_mask
from limitr.model.precision import accumulate_dtype, compute_dtype

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
        #: The compiled tile kernels (:class:`limitr.model.compiled.SAFKernels`), None = eager.
        #: Not a parameter or buffer: saved models and state dicts do not change.
        self.kernels = None
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
        (zero where masked), both in float32 at least (the inputs' dtype when that is wider).
        Under autocast the projections run in the autocast dtype (module docstring).
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
        compute = compute_dtype(context)
        needs_grad = torch.is_grad_enabled() and any(
            t.requires_grad for t in (context, feature, *params)
        )
        kernels = self.kernels if self.kernels is not None and self.kernels.usable(context.device) else None
        if needs_grad:
            return SAFPoolFunction.apply(context, feature, mask, *params, dropout, compute, kernels)
        # Inference: nothing is kept for a backward, so the activations stay tile-sized.
        with torch.autocast(device_type=context.device.type, enabled=False):
            cast = _cast_params(tuple(t.detach() for t in params), compute)
            acc = accumulate_dtype(compute)
            extra = {} if kernels is None else {"kernels": kernels}
            pooled, weights, _ = saf_pool_forward(context, feature.to(acc), mask, cast, dropout, save=False, **extra)
        return pooled, weights


def _cast_params(params: tuple[torch.Tensor, ...], compute: torch.dtype) -> tuple[torch.Tensor, ...]:
    """(w1, b1) in the compute dtype (the large products); w2, b2, u, ub in the accumulate dtype."""
    acc = accumulate_dtype(compute)
    w1, b1, w2, b2, u, ub = params
    return (w1.to(compute), b1.to(compute), w2.to(acc), b2.to(acc), u.to(acc), ub.to(acc))


def _tiles(a: int, p: int, row_elements: int, budget: int) -> list[tuple[int, int, int, int]]:
    """Rectangular tiles (a0, a1, p0, p1) whose slices of an (A, P, ...) tensor are contiguous."""
    per_a = p * row_elements
    if per_a <= budget:
        step = max(1, budget // per_a)
        return [(a0, min(a0 + step, a), 0, p) for a0 in range(0, a, step)]
    step = max(1, budget // row_elements)
    return [(a0, a0 + 1, p0, min(p0 + step, p)) for a0 in range(a) for p0 in range(0, p, step)]


def _forward_buffers(shape: torch.Size, mask: torch.Tensor, cd: torch.dtype, acc: torch.dtype, dropout: float,
                     save: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[dict]]:
    """What both forwards (eager and compiled tiles) fill: the mean weights (P, K), pooled
    (A, P, D) and weights (A, P, K) in the accumulate dtype, and, when ``save``, the buffers the
    backward reads, which either backward can use."""
    n_a, n_p, k, d = shape
    device = mask.device
    maskf = mask.to(acc)
    mean_w = maskf / maskf.sum(dim=-1, keepdim=True).clamp_min(1.0)  # (P, K)
    pooled = torch.empty(n_a, n_p, d, dtype=acc, device=device)
    weights = torch.empty(n_a, n_p, k, dtype=acc, device=device)
    saved: Optional[dict] = None
    if save:
        saved = {
            "mean_w": mean_w,
            "norms": torch.empty(n_a, n_p, k, 1, dtype=acc, device=device),
            # drop(tanh(L1 s)) before the rescale, in the compute dtype: the backward needs
            # tanh only where it was kept (the gradient is zero where it was dropped).
            "act": torch.empty(n_a, n_p, k, d, dtype=cd, device=device),
            "keep": torch.empty(n_a, n_p, k, d, dtype=torch.bool, device=device) if dropout > 0 else None,
            "means": torch.empty(n_a, n_p, d, dtype=acc, device=device),
            "gate": torch.empty(n_a, n_p, d, dtype=acc, device=device),  # tanh(L2 m), pre-dropout
            "gate_keep": torch.empty(n_a, n_p, d, dtype=torch.bool, device=device) if dropout > 0 else None,
            "scale": 1.0,
        }
    return mean_w, pooled, weights, saved


def saf_pool_forward(
    context: torch.Tensor,
    feature: torch.Tensor,
    mask: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    dropout: float,
    save: bool,
    kernels=None,
) -> tuple[torch.Tensor, torch.Tensor, Optional[dict]]:
    """The tiled forward. params = (w1, b1, w2, b2, u, ub) as :func:`_cast_params` gives them:
    the dtype of w1 is the compute dtype, that of w2 (and of ``feature``) the accumulate dtype.

    Returns pooled (A, P, D) and weights (A, P, K) in the accumulate dtype and, when ``save``,
    what the backward needs; without ``save`` the (A, P, K, D) activations live only tile by tile.
    ``kernels``: compiled tile kernels (:class:`limitr.model.compiled.SAFKernels`) that run each
    tile's work (:func:`forward_tile`) in one fused pass; None = the eager tile code below. The
    dropout masks are drawn in the same order either way.
    """
    if kernels is not None:
        result = kernels.run(_pool_forward_compiled, context, feature, mask, params, dropout, save, kernels)
        if result is not None:
            return result
    w1, b1, w2, b2, u, ub = params
    n_a, n_p, k, d = context.shape
    cd, acc, device = w1.dtype, w2.dtype, context.device
    mean_w, pooled, weights, saved = _forward_buffers(context.shape, mask, cd, acc, dropout, save)
    budget = CPU_TILE_ELEMENTS if device.type == "cpu" else DEVICE_TILE_ELEMENTS
    # On a CPU in float32, tanh runs as 2 sigmoid(2x) - 1 (three vectorised passes cost less
    # than torch's tanh there, about 1.1 against 2.8 ns an element); the 2 goes into L1.
    via_sigmoid = device.type == "cpu" and cd == torch.float32
    w1x, b1x = (w1 * 2.0, b1 * 2.0) if via_sigmoid else (w1, b1)
    for a0, a1, p0, p1 in _tiles(n_a, n_p, k * d, budget):
        na, npp = a1 - a0, p1 - p0
        # s, its norm and the mean in the accumulate dtype (float32 under autocast): the
        # feature is in that dtype, and type promotion makes the product so.
        s = context[a0:a1, p0:p1] * feature[p0:p1]
        nrm = torch.linalg.vector_norm(s, dim=-1, keepdim=True).clamp_min_(NORM_EPS)
        s.div_(nrm)
        m = torch.matmul(mean_w[p0:p1].unsqueeze(-2), s).squeeze(-2)  # (na, np, D)
        g = torch.addmm(b2, m.reshape(na * npp, d), w2.t()).tanh_()  # small: pairs x D^2
        s_cd = s.to(cd)  # the L1 product, the largest of the method, in the compute dtype
        if saved is not None:
            h = saved["act"][a0:a1, p0:p1]
            torch.addmm(b1x, s_cd.view(-1, d), w1x.t(), out=h.view(-1, d))
            saved["norms"][a0:a1, p0:p1] = nrm
            saved["means"][a0:a1, p0:p1] = m
            saved["gate"][a0:a1, p0:p1] = g.view(na, npp, d)
        else:
            h = torch.addmm(b1x, s_cd.view(-1, d), w1x.t()).view(na, npp, k, d)
        del s_cd
        if via_sigmoid:  # h = 2 L1 s here (exact: a power of two), and tanh(x) = 2 sigmoid(2x) - 1
            h.sigmoid_().mul_(2.0).sub_(1.0)
        else:
            h.tanh_()
        if dropout > 0:
            # Dropped in place, the mask drawn straight into the saved buffer, and applied as
            # uint8 (see keep_mask: the fast in-place product).
            km, scale = keep_mask(h.shape, dropout, device, out=saved["keep"][a0:a1, p0:p1] if saved is not None else None)
            gk, _ = keep_mask(g.shape, dropout, device)
            h.mul_(km.view(torch.uint8))
            if saved is not None:
                saved["gate_keep"][a0:a1, p0:p1] = gk.view(na, npp, d)
                saved["scale"] = scale
            g = g * gk.view(torch.uint8) * (scale * scale)  # both dropout rescales folded into the gate
        ug = (g * u).to(cd).view(na, npp, d, 1)
        # The logits leave the product in the compute dtype; bias, mask and softmax in acc.
        e = torch.matmul(h, ug).squeeze(-1).to(acc) + ub
        e.masked_fill_(~mask[p0:p1], float("-inf"))
        wts = torch.softmax(e, dim=-1)
        weights[a0:a1, p0:p1] = wts
        pooled[a0:a1, p0:p1] = torch.matmul(wts.unsqueeze(-2), s).squeeze(-2)
    return pooled, weights, saved


#: Eigen's rational approximation of tanh for float32 (odd numerator of degree 13 over an
#: even denominator of degree 6, on [-7.9988, 7.9988], within a few float32 ulps): a
#: dozen multiply-adds that the compiler fuses, where the library tanh costs more than
#: everything else in the SAF's forward on a CPU without AVX-512.
_TANH_CLAMP = 7.99881172180175781
_TANH_NUM = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
             1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)
_TANH_DEN = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)


def fast_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh(x): the rational approximation above for float32 and narrower, torch.tanh for
    float64 (the float64 parity references stay exact)."""
    if x.dtype == torch.float64:
        return torch.tanh(x)
    x = x.clamp(-_TANH_CLAMP, _TANH_CLAMP)
    x2 = x * x
    p = x2 * _TANH_NUM[0] + _TANH_NUM[1]
    for coef in _TANH_NUM[2:]:
        p = p * x2 + coef
    q = x2 * _TANH_DEN[0] + _TANH_DEN[1]
    for coef in _TANH_DEN[2:]:
        q = q * x2 + coef
    return x * p / q


def forward_tile(
    c: torch.Tensor,
    f: torch.Tensor,
    mean_w: torch.Tensor,
    mask: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    u: torch.Tensor,
    ub: torch.Tensor,
    keep: Optional[torch.Tensor],
    gate_keep: Optional[torch.Tensor],
    scale2: float,
    save: bool,
):
    """One tile of the SAF forward as plain tensor operations, for ``torch.compile``: the same
    mathematics as the eager tile of :func:`saf_pool_forward` (the L1 product in the compute
    dtype, the rest in the accumulate dtype), which the compiler fuses around the products.

    c (na, np, K, D), f (np, K, D), mean_w and mask (np, K); keep (na, np, K, D) and gate_keep
    (na, np, D) the dropout masks or None; scale2 the square of the dropout rescale. Returns
    pooled, weights and, when ``save``, drop(tanh(L1 s)) before the rescale (compute dtype),
    the norms, the means and the gate before its dropout.
    """
    cd, acc = w1.dtype, w2.dtype
    s = c * f
    nrm = torch.linalg.vector_norm(s, dim=-1, keepdim=True).clamp_min(NORM_EPS)
    s = s / nrm
    m = (mean_w.unsqueeze(-1) * s).sum(dim=-2)  # (na, np, D)
    g = torch.tanh(torch.matmul(m, w2.t()) + b2)  # (na, np, D): small
    z = torch.matmul(s.to(cd), w1.t())
    h = fast_tanh(z.to(acc) + b1.to(acc)).to(cd)
    h_used = h if keep is None else h * keep
    g_used = g if gate_keep is None else g * gate_keep * scale2
    ug = (g_used * u).to(cd)
    e = (h_used.to(acc) * ug.to(acc).unsqueeze(-2)).sum(dim=-1) + ub
    e = e.masked_fill(~mask, float("-inf"))
    wts = torch.softmax(e, dim=-1)
    pooled = (wts.unsqueeze(-1) * s).sum(dim=-2)
    if save:  # the activations saved already dropped, as the eager tile saves them
        return pooled, wts, h_used, nrm, m, g
    return pooled, wts


def backward_tile(
    c: torch.Tensor,
    f: torch.Tensor,
    mean_w: torch.Tensor,
    nrm: torch.Tensor,
    h: torch.Tensor,
    wts: torch.Tensor,
    m: torch.Tensor,
    g: torch.Tensor,
    gv: torch.Tensor,
    g_weights: Optional[torch.Tensor],
    keep: Optional[torch.Tensor],
    gate_keep: Optional[torch.Tensor],
    scale2: float,
    w1: torch.Tensor,
    w2: torch.Tensor,
    u: torch.Tensor,
    need_context: bool,
    need_feature: bool,
):
    """One tile of the SAF backward as plain tensor operations, for ``torch.compile``: the
    mathematics of :meth:`SAFPoolFunction.backward`'s eager tile. Returns the tile's context
    and feature gradients (None where not needed) and its parts of the six parameter gradients."""
    cd, acc = w1.dtype, w2.dtype
    d = c.shape[-1]
    s = c * f / nrm
    g_used = g if gate_keep is None else g * gate_keep * scale2
    ug = g_used * u  # (na, np, D)
    g_a = (s * gv.unsqueeze(-2)).sum(dim=-1)  # (na, np, K)
    if g_weights is not None:
        g_a = g_a + g_weights
    g_e = wts * (g_a - (wts * g_a).sum(dim=-1, keepdim=True))
    g_ub = g_e.sum().reshape(1)
    hf = h.to(acc)  # drop(tanh(L1 s)): zero where dropped
    g_ug = (g_e.unsqueeze(-1) * hf).sum(dim=-2)  # (na, np, D)
    g_h = g_e.unsqueeze(-1) * ug.unsqueeze(-2)
    if keep is not None:
        g_h = g_h * keep
    g_z = (g_h * (1 - hf * hf)).to(cd).reshape(-1, d)  # grad of L1 s, compute dtype
    s2 = s.to(cd).reshape(-1, d)
    g_w1 = torch.mm(g_z.t(), s2).to(acc)
    g_b1 = g_z.sum(dim=0, dtype=acc)
    g_s = torch.mm(g_z, w1).to(acc).view(s.shape)
    g_s = g_s + wts.unsqueeze(-1) * gv.unsqueeze(-2)
    g_u = (g_ug * g_used).sum(dim=(0, 1)).unsqueeze(0)
    g_g = g_ug * u
    if gate_keep is not None:
        g_g = g_g * gate_keep * scale2
    g_gz = (g_g * (1 - g * g)).reshape(-1, d)
    g_w2 = torch.mm(g_gz.t(), m.reshape(-1, d))
    g_b2 = g_gz.sum(dim=0)
    g_m = torch.mm(g_gz, w2).view(gv.shape)
    g_s = g_s + mean_w.unsqueeze(-1) * g_m.unsqueeze(-2)
    dot = (s * g_s).sum(dim=-1, keepdim=True) * (nrm > NORM_EPS)
    g_x = (g_s - s * dot) / nrm
    g_c = (g_x * f).to(c.dtype) if need_context else None
    g_f = (g_x * c).sum(dim=0) if need_feature else None
    return g_c, g_f, g_w1, g_b1, g_w2, g_b2, g_u, g_ub


def _pool_forward_compiled(context, feature, mask, params, dropout, save, kernels):
    """:func:`saf_pool_forward` with each tile run by the compiled :func:`forward_tile`."""
    w1, b1, w2, b2, u, ub = params
    n_a, n_p, k, d = context.shape
    cd, acc, device = w1.dtype, w2.dtype, context.device
    mean_w, pooled, weights, saved = _forward_buffers(context.shape, mask, cd, acc, dropout, save)
    budget = kernels.tile_elements(device)
    for a0, a1, p0, p1 in _tiles(n_a, n_p, k * d, budget):
        na, npp = a1 - a0, p1 - p0
        km = gk = None
        scale = 1.0
        if dropout > 0:  # drawn as the eager tile draws them: the L1 mask, then the gate's
            km, scale = keep_mask((na, npp, k, d), dropout, device,
                                  out=saved["keep"][a0:a1, p0:p1] if saved is not None else None)
            gk, _ = keep_mask((na * npp, d), dropout, device)
            gk = gk.view(na, npp, d)
        out = kernels.forward(
            context[a0:a1, p0:p1], feature[p0:p1], mean_w[p0:p1], mask[p0:p1], w1, b1, w2, b2, u, ub,
            km, gk, scale * scale, save,
        )
        pooled[a0:a1, p0:p1] = out[0]
        weights[a0:a1, p0:p1] = out[1]
        if saved is not None:
            saved["act"][a0:a1, p0:p1] = out[2]
            saved["norms"][a0:a1, p0:p1] = out[3]
            saved["means"][a0:a1, p0:p1] = out[4]
            saved["gate"][a0:a1, p0:p1] = out[5]
            if km is not None:
                saved["gate_keep"][a0:a1, p0:p1] = gk
                saved["scale"] = scale
    return pooled, weights, saved


def _pool_backward_compiled(ctx, saved_tensors, grad_pooled, grad_weights, kernels):
    """The backward with each tile run by the compiled :func:`backward_tile`."""
    (context, feature, mask, mean_w, norms, act, keep, means, gate, gate_keep, weights, w1, w2, u) = saved_tensors
    n_a, n_p, k, d = context.shape
    device = context.device
    acc = w2.dtype
    dropout, scale = ctx.dropout, ctx.scale
    grads = [torch.zeros(d, d, dtype=acc, device=device), torch.zeros(d, dtype=acc, device=device),
             torch.zeros(d, d, dtype=acc, device=device), torch.zeros(d, dtype=acc, device=device),
             torch.zeros(1, d, dtype=acc, device=device), torch.zeros(1, dtype=acc, device=device)]
    need_c, need_f = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
    g_context = torch.empty_like(context) if need_c else None
    g_feature = torch.zeros_like(feature) if need_f else None
    for a0, a1, p0, p1 in _tiles(n_a, n_p, k * d, kernels.tile_elements(device)):
        out = kernels.backward(
            context[a0:a1, p0:p1], feature[p0:p1], mean_w[p0:p1], norms[a0:a1, p0:p1], act[a0:a1, p0:p1],
            weights[a0:a1, p0:p1], means[a0:a1, p0:p1], gate[a0:a1, p0:p1], grad_pooled[a0:a1, p0:p1],
            None if grad_weights is None else grad_weights[a0:a1, p0:p1],
            keep[a0:a1, p0:p1] if dropout > 0 else None, gate_keep[a0:a1, p0:p1] if dropout > 0 else None,
            scale * scale, w1, w2, u, need_c, need_f,
        )
        if g_context is not None:
            g_context[a0:a1, p0:p1] = out[0]
        if g_feature is not None:
            g_feature[p0:p1] += out[1]
        for total, part in zip(grads, out[2:]):
            total += part
    return g_context, g_feature, grads


class SAFPoolFunction(torch.autograd.Function):
    """Tiled SAF pooling with a hand-written backward (see the module docstring).

    Saves the context, the dropped tanh(L1 s) activations, the norms, weights and the
    dropout masks; s itself is recomputed per tile in backward from context and feature (cheap,
    in cache) instead of being stored.

    ``compute`` is the dtype of the L1 products (None = the context's dtype); the caller
    reads it from the autocast state (:func:`limitr.model.precision.compute_dtype`) when it
    applies the function, and both passes run with autocast off on their own casts, so the
    backward does the same as the forward whatever autocast state it runs under.
    """

    @staticmethod
    def forward(ctx, context, feature, mask, w1, b1, w2, b2, u, ub, dropout, compute=None, kernels=None):  # type: ignore[override]
        ctx.kernels = kernels
        ctx.param_dtypes = tuple(t.dtype for t in (w1, b1, w2, b2, u, ub))
        ctx.feature_dtype = feature.dtype
        compute = context.dtype if compute is None else compute
        acc = accumulate_dtype(compute)
        with torch.autocast(device_type=context.device.type, enabled=False):
            feature = feature.to(acc)
            params = _cast_params((w1, b1, w2, b2, u, ub), compute)
            extra = {} if kernels is None else {"kernels": kernels}
            pooled, weights, saved = saf_pool_forward(context, feature, mask, params, dropout, save=True, **extra)
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
        device = context.device
        cd, acc = w1.dtype, w2.dtype  # compute and accumulate dtypes of the forward
        dropout, scale = ctx.dropout, ctx.scale
        with torch.autocast(device_type=device.type, enabled=False):
            if grad_pooled is None:
                grad_pooled = torch.zeros(n_a, n_p, d, dtype=acc, device=device)
            grad_pooled = grad_pooled.to(acc)
            if grad_weights is not None:
                grad_weights = grad_weights.to(acc)
            kernels = ctx.kernels
            result = None
            if kernels is not None and kernels.usable(device):
                result = kernels.run(_pool_backward_compiled, ctx, ctx.saved_tensors, grad_pooled, grad_weights, kernels)
            if result is not None:
                g_context, g_feature, acc_grads = result
                return _input_grads(ctx, g_context, g_feature, acc_grads)
            # Parameter gradients are sums over every pair and position: accumulated in
            # float32 at least, whatever the compute dtype.
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
                s = (c * f).div_(nrm)  # recomputed, (na, np, K, D), accumulate dtype (promotion)
                h = act[a0:a1, p0:p1]  # drop(tanh(L1 s)), compute dtype
                wts = weights[a0:a1, p0:p1]
                gv = grad_pooled[a0:a1, p0:p1]  # (na, np, D)
                g = gate[a0:a1, p0:p1].reshape(na * npp, d)
                if dropout > 0:
                    km = keep[a0:a1, p0:p1].view(torch.uint8)
                    gk = gate_keep[a0:a1, p0:p1].reshape(na * npp, d).view(torch.uint8)
                    g_used = g * gk * (scale * scale)
                else:
                    km = gk = None
                    g_used = g
                ug = g_used * u  # (rows, D)

                # Softmax of the weights, backward: grad wrt the logits e (accumulate dtype).
                g_a = torch.matmul(s, gv.unsqueeze(-1)).squeeze(-1)  # (na, np, K)
                if grad_weights is not None:
                    g_a = g_a + grad_weights[a0:a1, p0:p1]
                g_e = wts * (g_a - (wts * g_a).sum(dim=-1, keepdim=True))
                g_ub += g_e.sum()
                g_e_cd = g_e.to(cd)
                # e = h . ug (h already dropped): gradients of ug (per pair) and of h.
                g_ug = torch.matmul(g_e_cd.unsqueeze(-2), h).squeeze(-2).reshape(na * npp, d).to(acc)
                g_h = g_e_cd.unsqueeze(-1) * ug.to(cd).view(na, npp, 1, d)
                if km is not None:
                    g_h.mul_(km)
                # tanh' = 1 - h^2 is right where h was kept; elsewhere g_h is zero already.
                torch.ops.aten.tanh_backward.grad_input(g_h, h, grad_input=g_h)  # now grad of L1 s
                # The two products with L1 (twice the forward's cost) in the compute dtype.
                g_z = g_h.view(-1, d)
                s2 = s.view(-1, d).to(cd)
                g_w1 += torch.mm(g_z.t(), s2).to(acc)
                g_b1 += g_z.sum(dim=0, dtype=acc)
                del s2
                g_s = torch.mm(g_z, w1).view(na, npp, k, d).to(acc)
                del g_h, g_z
                g_s.addcmul_(wts.unsqueeze(-1), gv.unsqueeze(-2))  # from pooled = sum_k a_k s_k
                # The gate path: ug = u * drop(tanh(L2 m)).
                g_u += (g_ug * g_used).sum(dim=0, keepdim=True)
                g_g = g_ug * u
                if gk is not None:
                    g_g = g_g * gk * (scale * scale)
                g_gz = torch.ops.aten.tanh_backward(g_g, g)
                m = means[a0:a1, p0:p1].reshape(na * npp, d)
                g_w2 += torch.mm(g_gz.t(), m)
                g_b2 += g_gz.sum(dim=0)
                g_m = torch.mm(g_gz, w2).view(na, npp, 1, d)
                g_s.addcmul_(mean_w[p0:p1].unsqueeze(-1), g_m)
                # s = x / |x|, x = c * f.
                # Where the norm was clamped, s = x / eps is linear in x: no projection term.
                dot = torch.linalg.vecdot(s, g_s).unsqueeze(-1) * (nrm > NORM_EPS)
                g_s.addcmul_(s, dot, value=-1.0).div_(nrm)  # now grad of x
                if g_context is not None:  # rounded to the context's dtype on the way out
                    torch.mul(g_s, f, out=g_context[a0:a1, p0:p1])
                if g_feature is not None:
                    # One fused pass per row of the tile, each over a whole (P, K, D) slice:
                    # a product and a sum over the rows would allocate the tile again (and a
                    # sum over one row is a copy).
                    for i in range(na):
                        g_feature[p0:p1].addcmul_(g_s[i], c[i])

        return _input_grads(ctx, g_context, g_feature, (g_w1, g_b1, g_w2, g_b2, g_u, g_ub))


def _input_grads(ctx, g_context, g_feature, param_grads) -> tuple:
    """The backward's return value: the gradients in the dtypes of the forward's inputs."""
    grads = [g.to(t) for g, t in zip(param_grads, ctx.param_dtypes)]
    if g_feature is not None:
        g_feature = g_feature.to(ctx.feature_dtype)
    return (g_context, g_feature, None, *grads, None, None, None)
