"""Two CPU processes (gloo) give the loss and gradients of one process on the same global
batch, and the training loop runs under them."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from limitr.model.config import ModelConfig
from limitr.data.prepare import collate_studies
from limitr.data.studies import StudyDataset
from limitr.train.distributed import (
    DistContext,
    GlobalBatchLoss,
    ShardedBatchSampler,
    gather_with_grad,
    init_distributed,
    shutdown_distributed,
    wrap_for_training,
)
from limitr.train.loop import TrainConfig, train
from train_data_factory import tiny_model_dict

WORLD = 2
GLOBAL_BATCH = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(bert: Path):
    from limitr.model import LIMITR

    torch.manual_seed(0)
    model = LIMITR(ModelConfig.from_dict(tiny_model_dict(bert)))
    model.eval()  # batch norm on running statistics and no dropout: the sum is exact
    return model


def _batch(shards: Path, tokens: Path, rank: int, world: int):
    ds = StudyDataset(shards, tokens, "train", 40, train=False)
    sampler = ShardedBatchSampler(len(ds), GLOBAL_BATCH, rank=rank, world_size=world, shuffle=False)
    batch = collate_studies([ds[i] for i in next(iter(sampler))])
    if rank == 1:  # more padding on one rank: the gather must pad the reports of the other
        pad = torch.zeros((len(batch), 3), dtype=torch.int64)
        batch.input_ids = torch.cat([batch.input_ids, pad], 1)
        batch.attention_mask = torch.cat([batch.attention_mask, pad], 1)
        batch.word_ids = torch.cat([batch.word_ids, pad - 1], 1)
    return batch.to_model_inputs("cpu")


def _loss_and_grads(step, model, inputs) -> dict[str, torch.Tensor]:
    losses = step(inputs.frontal, inputs.lateral, inputs.has_lateral, inputs.input_ids,
                  inputs.attention_mask, inputs.word_ids)
    losses.total.backward()
    out = {f"grad.{n}": p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    out["loss.total"] = losses.total.detach().reshape(1)
    out["loss.global"] = losses.global_.detach().reshape(1)
    out["loss.local_external"] = losses.local_external.detach().reshape(1)
    return out


def _worker(rank: int, port: int, bert: str, shards: str, tokens: str, result_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    ctx, device = init_distributed("cpu")
    try:
        assert ctx.enabled and ctx.rank == rank and ctx.backend == "gloo"
        result = Path(result_dir)

        # 1. The gather itself: rank order, padding of dim 1, W x the local gradient.
        from limitr.model.outputs import TextEmbeddings

        n = 2 + rank  # uneven rows too
        local = torch.full((n, 3 + rank, 2), float(rank + 1), requires_grad=True)
        txt = TextEmbeddings(
            global_emb=torch.full((n, 2), float(rank + 1)),
            local=local,
            local_mask=torch.ones((n, 3 + rank), dtype=torch.bool),
        )
        g = gather_with_grad(txt, ctx)
        weights = torch.arange(g.local.numel(), dtype=torch.float32).reshape(g.local.shape)
        (g.local * weights).sum().backward()
        save_file(
            {"local": g.local.detach(), "mask": g.local_mask.to(torch.uint8), "global": g.global_emb,
             "grad": local.grad, "weights": weights},
            str(result / f"gather-{rank}.safetensors"),
        )

        # 2. Loss and gradients of the model on the global batch.
        model = _model(Path(bert))
        step = wrap_for_training(model, ctx, device)
        out = _loss_and_grads(step, model, _batch(Path(shards), Path(tokens), rank, WORLD))
        save_file(out, str(result / f"model-{rank}.safetensors"))

        # 3. The loop itself under two processes (one epoch, two steps).
        cfg = ModelConfig.from_dict(tiny_model_dict(Path(bert)))
        train_cfg = TrainConfig.from_dict(
            {"epochs": 1, "batch_size": GLOBAL_BATCH, "crop_size": 40, "max_steps_per_epoch": 2}
        )
        train(cfg, train_cfg, Path(shards), Path(tokens), result / "run", seed=0, device=device,
              metrics_dir=result / "metrics", dist=ctx)
    finally:
        shutdown_distributed(ctx)


@pytest.mark.slow
def test_two_processes_equal_one_process(tiny_bert, tiny_data, tmp_path: Path) -> None:
    shards, tokens = tiny_data
    torch.multiprocessing.spawn(
        _worker,
        args=(_free_port(), str(tiny_bert), str(shards), str(tokens), str(tmp_path)),
        nprocs=WORLD,
        join=True,
    )

    # The gather, against a plain concatenation.
    parts = [load_file(str(tmp_path / f"gather-{r}.safetensors")) for r in range(WORLD)]
    width = 3 + (WORLD - 1)
    expected = torch.cat([torch.full((2 + r, width, 2), float(r + 1)) for r in range(WORLD)])
    expected_mask = torch.cat(
        [torch.cat([torch.ones(2 + r, 3 + r), torch.zeros(2 + r, width - 3 - r)], 1) for r in range(WORLD)]
    ).to(torch.uint8)
    for r, p in enumerate(parts):
        assert torch.equal(p["mask"], expected_mask)
        assert torch.equal(p["global"][:, 0], torch.cat([torch.full((2 + q,), float(q + 1)) for q in range(WORLD)]))
        # Rows of the padded columns are zero and carry no mask.
        assert torch.equal(p["local"] * p["mask"].unsqueeze(-1), expected * expected_mask.unsqueeze(-1))
        start = sum(2 + q for q in range(r))
        own = p["weights"][start : start + 2 + r, : 3 + r]
        torch.testing.assert_close(p["grad"], WORLD * own)

    # Model loss and gradients, against one process on the same global batch.
    model = _model(tiny_bert)
    single = _loss_and_grads(GlobalBatchLoss(model, DistContext()), model, _batch(shards, tokens, 0, 1))
    for r in range(WORLD):
        ddp = load_file(str(tmp_path / f"model-{r}.safetensors"))
        assert ddp.keys() == single.keys()
        for key in single:
            torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-6, msg=key)
    # Gradients reached the encoders (before the gather) and the alignment (after it).
    for prefix in ("grad.frontal_encoder.", "grad.lateral_encoder.", "grad.text_encoder.", "grad.alignment."):
        assert any(k.startswith(prefix) for k in single), prefix

    # The loop ran with two processes; rank 0 wrote the run.
    summary = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert summary["world_size"] == WORLD and summary["steps"] == 2
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
