"""Mixed precision: which parts of the model run in the autocast dtype and which in float32.

Under ``torch.autocast`` (bf16 on CUDA and on CPUs that have it, fp16 on older GPUs) the
large matrix products run in the low dtype: the encoders, the attention-context products
and the SAF projections (the largest work of the method, 2 B^2 (N+M) D^2 per step). What
needs more than bf16's 8 significant bits is kept in float32 (never lower than the input
dtype, so float64 stays float64):

- norms and normalised vectors (a norm is a sum of D squares; cosines feed the losses);
- the logits of the attention and their softmaxes (the second softmax is sharpened by temp1,
  so a logit error of 2^-8 relative would move the weights by about temp1 times that);
- the SAF's similarity vectors, weight logits, softmax, pooled vector and gradient sums;
- the score heads and their sigmoids (scores rank up to thousands of candidates: in bf16
  a score in (0.5, 1) has a step of 2^-8 and ties would swamp the retrieval metrics);
- the global cosine matrix and every loss reduction (cross-entropies over the batch).
"""

from __future__ import annotations

import contextlib

import torch

_LOW = (torch.float16, torch.bfloat16)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for the 16-bit float dtypes, ``dtype`` itself otherwise."""
    return torch.float32 if dtype in _LOW else dtype


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of matrix products on ``x`` under the current autocast state of its device:
    the autocast dtype when autocast is on (float64 is left alone, as autocast does), else
    ``x.dtype``."""
    device_type = x.device.type
    if x.dtype != torch.float64 and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is fp16 or bf16, unchanged otherwise."""
    return x.to(accumulate_dtype(x.dtype))


def full_precision(x: torch.Tensor):
    """A context in which autocast is off on ``x``'s device (ops run in their inputs' dtype)."""
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


#: /proc/cpuinfo flags of native bf16 dot products: AVX512-BF16 and AMX-BF16 (x86), BF16 (Arm).
_NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_bf16_dot_products(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX on x86, BF16 on Arm),
    read from the kernel's CPU flags (False where there are none to read). With them bf16
    matrix products run about twice as fast as float32 (measured on an AMD EPYC with
    AVX512-BF16: 430 against 200 GFLOP/s on 2 cores); with AVX-512 alone oneDNN converts in
    software and bf16 gains little, so ``train.mixed_precision: auto`` stays in float32 there."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return not _NATIVE_BF16_FLAGS.isdisjoint(value.split())
    except OSError:
        pass
    return False
