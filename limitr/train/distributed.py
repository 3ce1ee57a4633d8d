"""Data-parallel training under torchrun: process group, sharding, and the gather of features.

The contrastive losses need every report of the global batch as a negative for every study,
so each rank gathers the embeddings of all ranks and scores the full global B x B matrices.
Gradients must still come out equal to a single-process run on the same global batch:

- an encoder parameter on rank r only sees the gradient through r's own slice of the gathered
  features, and DDP divides the sum over ranks by W; the gather's backward therefore returns
  W x the local slice's gradient. Every rank computes the same loss from the same gathered
  features, so this is exactly what a reduce-scatter of all ranks' gradients would return,
  without the communication (and gloo has no reduce-scatter);
- the parameters that act after the gather (SAF, the sigmoid heads) get the full gradient on
  every rank, and DDP's mean over ranks leaves it unchanged.

That is why the loss itself is not scaled: scaling it by W would fix the encoders but
multiply the score heads' gradients by W. (With SAF dropout active each rank draws its own
masks, so each slice gets the gradient of its own rank's draw: still an unbiased estimate.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Iterator, Optional, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from limitr.errors import LimitrError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank in [0, world_size); local_rank picks its GPU."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT), NCCL on CUDA and gloo on the CPU; a plain run gets a one-process context.

    Returns the context and this process's device (``cuda:LOCAL_RANK`` on CUDA).
    """
    device = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), device
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if torch.cuda.device_count() <= local_rank:
            raise LimitrError(
                f"LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible): "
                "start at most one process per GPU"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend), device


def shutdown_distributed(ctx: DistContext) -> None:
    """Leave the process group when this process joined one."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def broadcast_floats(values: Sequence[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Rank 0's ``values`` on every rank (float64)."""
    if not ctx.enabled:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return [float(v) for v in t.tolist()]


class ShardedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Deterministic global batches, each split across ranks in rank order.

    Epoch ``e`` shuffles with a generator seeded by ``(seed, e)``; global batch k is the k-th
    run of ``global_batch`` indices, and rank r takes its r-th piece. The pieces of all ranks,
    in rank order, are the single-process batch, so gathered features line up with it.
    ``drop_last`` drops the incomplete last global batch (training); ``max_batches`` caps the
    number of batches per epoch.
    """

    def __init__(
        self,
        n_items: int,
        global_batch: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        max_batches: Optional[int] = None,
    ) -> None:
        if global_batch < world_size:
            raise LimitrError(f"batch size {global_batch} is smaller than the {world_size} processes")
        if drop_last and global_batch % world_size:
            raise LimitrError(
                f"batch size {global_batch} does not divide among {world_size} processes: "
                "choose a multiple of the process count"
            )
        self.n_items, self.global_batch = int(n_items), int(global_batch)
        self.rank, self.world_size = int(rank), int(world_size)
        self.seed, self.shuffle, self.drop_last = int(seed), shuffle, drop_last
        self.max_batches = max_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        full, rest = divmod(self.n_items, self.global_batch)
        n = full if self.drop_last or rest == 0 else full + 1
        return n if self.max_batches is None else min(n, int(self.max_batches))

    def global_batches(self) -> list[np.ndarray]:
        """This epoch's global batches (dataset indices), before the split across ranks."""
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(self.n_items)
        else:
            order = np.arange(self.n_items)
        return [order[k * self.global_batch : (k + 1) * self.global_batch] for k in range(len(self))]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield np.array_split(batch, self.world_size)[self.rank].tolist()


class _GatherKeepLocalGrad(torch.autograd.Function):
    """All-gather along dim 0 (rank order); backward: W x the gradient of the local slice."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, counts: tuple[int, ...], rank: int):  # type: ignore[override]
        ctx.start = sum(counts[:rank])
        ctx.stop = ctx.start + counts[rank]
        ctx.world = len(counts)
        return _gather_rows(local, counts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad[ctx.start : ctx.stop] * ctx.world, None, None


def _gather_rows(local: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """Concatenate every rank's ``local`` (counts[r] rows each) in rank order, without grad."""
    wire = local.detach()
    is_bool = wire.dtype == torch.bool
    if is_bool:  # not every backend moves bools
        wire = wire.to(torch.uint8)
    most = max(counts)
    if wire.shape[0] < most:
        wire = torch.cat([wire, wire.new_zeros((most - wire.shape[0], *wire.shape[1:]))])
    pieces = [torch.empty_like(wire) for _ in counts]
    dist.all_gather(pieces, wire.contiguous())
    out = torch.cat([p[:n] for p, n in zip(pieces, counts)])
    return out.bool() if is_bool else out


def _pad_dim1(t: torch.Tensor, width: int) -> torch.Tensor:
    if t.ndim < 2 or t.shape[1] == width:
        return t
    pad = t.new_zeros((t.shape[0], width - t.shape[1], *t.shape[2:]))
    return torch.cat([t, pad], dim=1)


def gather_with_grad(bundle: T, ctx: DistContext) -> T:
    """The global batch of an embedding dataclass (``ImageEmbeddings``, ``TextEmbeddings``).

    Every tensor field is gathered along dim 0 in rank order; where dim 1 differs across ranks
    (reports trimmed to different lengths) it is zero-padded to the longest first, which masks
    stay False over. Gradients flow back to this rank's own slice (see the module docstring
    for the factor W). Fields that are not tensors are kept as they are.
    """
    if not ctx.enabled:
        return bundle
    names = [f.name for f in fields(bundle)]  # type: ignore[arg-type]
    values = {name: getattr(bundle, name) for name in names}
    tensor_names = [n for n in names if isinstance(values[n], torch.Tensor)]
    if not tensor_names:
        return bundle
    device = values[tensor_names[0]].device
    shapes = torch.tensor(
        [[values[n].shape[0], values[n].shape[1] if values[n].ndim > 1 else 0] for n in tensor_names],
        dtype=torch.int64,
        device=device,
    )
    all_shapes = [torch.empty_like(shapes) for _ in range(ctx.world_size)]
    dist.all_gather(all_shapes, shapes)
    sizes = torch.stack(all_shapes).cpu()  # (W, fields, 2)
    out = dict(values)
    for i, name in enumerate(tensor_names):
        counts = tuple(int(c) for c in sizes[:, i, 0])
        local = _pad_dim1(values[name], int(sizes[:, i, 1].max()))
        if local.requires_grad:
            out[name] = _GatherKeepLocalGrad.apply(local, counts, ctx.rank)
        else:
            out[name] = _gather_rows(local, counts)
    return type(bundle)(**out)


def as_float32(bundle: T) -> T:
    """The embedding dataclass with its floating-point tensors in float32 (others as they are)."""
    out = {}
    for f in fields(bundle):  # type: ignore[arg-type]
        v = getattr(bundle, f.name)
        out[f.name] = v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
    return type(bundle)(**out)


class GlobalBatchLoss(nn.Module):
    """Encode this rank's studies, gather the global batch, return ``model.loss`` over it
    (float32 losses, whatever autocast the forward runs under).

    This is the module DDP wraps (DDP only prepares gradient reduction in ``forward``).
    Inputs as ``ModelInputs``: frontal, lateral (or None), has_lateral, input_ids,
    attention_mask, word_ids. Returns the model's ``Losses`` (scalars, same on every rank).
    """

    def __init__(self, model: nn.Module, ctx: DistContext) -> None:
        super().__init__()
        self.model = model
        self.ctx = ctx

    def forward(
        self,
        frontal: torch.Tensor,
        lateral: Optional[torch.Tensor],
        has_lateral: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        word_ids: torch.Tensor,
    ):
        img = gather_with_grad(self.model.encode_images(frontal, lateral, has_lateral), self.ctx)
        txt = gather_with_grad(self.model.encode_text(input_ids, attention_mask, word_ids), self.ctx)
        # The gathered embeddings are small (B x (N + M) x D): float32 copies keep the
        # elementwise work on them exact. Under autocast the loss still runs its large
        # products (attention contexts, SAF projections) in the autocast dtype and keeps the
        # softmaxes, norms, scores and loss reductions in float32 (limitr/model/precision.py).
        return self.model.loss(as_float32(img), as_float32(txt))


def wrap_for_training(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """``GlobalBatchLoss(model)``, under DDP when several processes run.

    Batch norms keep per-process statistics (as the paper's DataParallel did). SyncBatchNorm
    is not used: the lateral encoder only sees the studies that have a lateral, so a rank
    whose slice has none would skip its collective and stall the others.
    """
    step = GlobalBatchLoss(model, ctx)
    if not ctx.enabled:
        return step
    return nn.parallel.DistributedDataParallel(
        step,
        device_ids=[device.index] if device.type == "cuda" else None,
        # a slice without laterals leaves the lateral encoder unused on that rank
        find_unused_parameters=True,
    )
