"""An exponential moving average of the weights (``train.ema_decay``), for validation and
the checkpoints that evaluation reads.

After every optimizer step the average moves towards the current weights:
``average += (1 - d) * (weights - average)`` with ``d = min(decay, (1 + n) / (10 + n))`` at
the ``n``-th update, so the first updates follow the weights closely instead of keeping
the random initialisation. It covers the trainable parameters and the floating-point buffers
(BatchNorm's running statistics); frozen parameters do not move and are left out. The
training itself never sees it: the optimizer steps the raw weights, and a resume restores
both.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class WeightAverage:
    """The moving average of ``model``'s trainable parameters and float buffers."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        params = dict(model.named_parameters())
        state = model.state_dict()
        self.names = [n for n, t in state.items()
                      if t.is_floating_point() and (n not in params or params[n].requires_grad)]
        self.average = {n: state[n].detach().clone() for n in self.names}

    def rate(self) -> float:
        """The decay of the next update."""
        return min(self.decay, (1.0 + self.updates + 1) / (10.0 + self.updates + 1))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.rate()
        self.updates += 1
        state = model.state_dict()
        torch._foreach_lerp_(list(self.average.values()), [state[n].detach() for n in self.names], 1.0 - d)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """The averaged weights in ``model`` inside the block; the raw ones back after it."""
        state = model.state_dict()
        raw = {n: state[n].detach().clone() for n in self.names}
        with torch.no_grad():
            for n in self.names:
                state[n].copy_(self.average[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n in self.names:
                    state[n].copy_(raw[n])

    def state_dict(self) -> dict:
        """Plain tensors and numbers (a checkpoint's ``state.pt`` reads with weights_only)."""
        return {"decay": self.decay, "updates": self.updates, "average": dict(self.average)}

    def load_state_dict(self, saved: dict) -> None:
        average = saved["average"]
        if sorted(average) != sorted(self.names):
            raise ValueError("the saved weight average does not fit this model")
        for n in self.names:
            self.average[n].copy_(average[n])
        self.updates = int(saved["updates"])
