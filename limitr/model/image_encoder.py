"""Image encoder: a torchvision ResNet giving local (layer3, or layer2) and global (layer4) features."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import nn

from limitr.data.prepare import normalize_images  # noqa: F401  (the encoders' input convention)
from limitr.errors import LimitrError
from limitr.model.config import LOCAL_LAYERS

#: Output channels of the stages that feed the local and global branches, per backbone.
_WIDTHS: dict[str, dict[str, int]] = {
    "resnet18": {"layer2": 128, "layer3": 256, "layer4": 512},
    "resnet34": {"layer2": 128, "layer3": 256, "layer4": 512},
    "resnet50": {"layer2": 512, "layer3": 1024, "layer4": 2048},
}

#: Set to 1 to let torchvision fetch named weights that are not in the torch hub cache.
ALLOW_DOWNLOADS_ENV = "LIMITR_ALLOW_DOWNLOADS"


def downloads_allowed() -> bool:
    """Whether the environment opts in to network downloads (``LIMITR_ALLOW_DOWNLOADS=1``)."""
    return os.environ.get(ALLOW_DOWNLOADS_ENV, "").strip().lower() in {"1", "true", "yes"}


#: Run the encoders on channels-last activations (see ImageEncoder.forward); a switch for
#: benchmarks/bench_train_step.py, which measures what it is worth.
CHANNELS_LAST = True


class ImageEncoder(nn.Module):
    """One view's encoder.

    forward(images (B, 3, H, W)) -> (global (B, D), local map (B, D, h, w)), where the
    local map is ``local_layer`` (layer3 as in the method, h = H / 16; layer2 gives
    h = H / 8 and a smaller receptive field) projected by a bias-free 1x1 convolution and
    the global vector is layer4 average-pooled and projected by a linear layer.
    """

    def __init__(
        self, backbone: str, embed_dim: int, weights: Optional[str] = None, local_layer: str = "layer3"
    ) -> None:
        super().__init__()
        import torchvision

        if backbone not in _WIDTHS:
            raise LimitrError(f"unknown image backbone {backbone!r}; use one of {', '.join(_WIDTHS)}")
        if local_layer not in LOCAL_LAYERS:
            raise LimitrError(f"unknown local layer {local_layer!r}; use one of {', '.join(LOCAL_LAYERS)}")
        net = torchvision.models.get_model(backbone, weights=None)
        if weights:
            _load_backbone_weights(net, backbone, weights)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.local_layer = local_layer
        self.local_proj = nn.Conv2d(_WIDTHS[backbone][local_layer], embed_dim, kernel_size=1, bias=False)
        self.global_proj = nn.Linear(_WIDTHS[backbone]["layer4"], embed_dim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Channels-last activations: oneDNN's (CPU) and cuDNN's (tensor core) convolutions are
        # faster on them, about 10 % of the encoder's forward and backward on a CPU. The
        # weights keep their layout, so saved state dicts do not change.
        if CHANNELS_LAST:
            images = images.contiguous(memory_format=torch.channels_last)
        x2 = self.layer2(self.layer1(self.stem(images)))
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        global_emb = self.global_proj(torch.flatten(nn.functional.adaptive_avg_pool2d(x4, 1), 1))
        return global_emb, self.local_proj(x2 if self.local_layer == "layer2" else x3)


def _load_backbone_weights(net: nn.Module, backbone: str, weights: str) -> None:
    """Load a local file (state dict or safetensors) or a torchvision weights name into ``net``."""
    path = Path(weights).expanduser()
    if path.is_file():
        state = _read_state_dict(path)
    elif any(sep in weights for sep in ("/", os.sep)) or path.suffix in {".pt", ".pth", ".bin", ".safetensors"}:
        raise LimitrError(f"model.image_weights: file {weights} does not exist")
    else:
        state = _torchvision_state_dict(backbone, weights)
    # The classifier head is not part of this model.
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise LimitrError(f"model.image_weights {weights} does not fit a torchvision {backbone}: {exc}") from exc
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise LimitrError(
            f"model.image_weights {weights} does not fit a torchvision {backbone}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}"
        )


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad or pickled-object file
        raise LimitrError(f"model.image_weights {path} is not a plain state-dict file: {exc}") from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise LimitrError(f"model.image_weights {path} does not hold a state dict")
    return state


def _torchvision_state_dict(backbone: str, name: str) -> Mapping[str, torch.Tensor]:
    """A torchvision named weight from the torch hub cache; never downloads unless allowed."""
    import torchvision

    enum = torchvision.models.get_model_weights(backbone)
    short = name.split(".")[-1]
    if short == "DEFAULT":
        entry = enum.DEFAULT
    elif short in enum.__members__:
        entry = enum[short]
    else:
        raise LimitrError(
            f"model.image_weights {name!r} is neither a file nor a torchvision weight of "
            f"{backbone} (known: {', '.join(enum.__members__)})"
        )
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(entry.url)
    if cached.is_file():
        return _read_state_dict(cached)
    if downloads_allowed():
        return entry.get_state_dict(progress=False)
    raise LimitrError(
        f"torchvision weights {backbone} {short} are not available offline (expected {cached}); "
        f"download {entry.url} to that path, give a local file in model.image_weights, "
        f"or set {ALLOW_DOWNLOADS_ENV}=1 to allow the download"
    )
