"""The schema of every setting: one pydantic model per section of params.yaml.

This is the single source of defaults. The stage commands validate the params file against
:class:`Settings` (types, ranges, choices; unknown keys and sections are refused with the
nearest valid name) and hand typed records to the library; the library's config classes
(``ModelConfig``, ``TrainConfig``, ...) take their defaults from here. Nothing in this module
reads a file: :func:`validate_settings` takes the mapping a caller loaded.

To add a setting: add a field to its section's model below (type, default, one-line
description), add the same key with the same value to params.yaml (a test checks both), and
list it under the stage's ``params:`` in dvc.yaml when it changes the stage's output.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, ClassVar, Literal, Mapping, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from limitr.errors import LimitrError

#: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
DEVICE_FORMS = "auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps"


def check_device_string(value: str) -> str:
    """``value`` when it is a device form this project accepts; a LimitrError otherwise."""
    text = str(value).strip()
    if not DEVICE_PATTERN.match(text):
        raise LimitrError(f"device {value!r} is not one of {DEVICE_FORMS}")
    return text


def _null_path(value: Any) -> Any:
    """The empty string and the words none / null mean null for optional paths."""
    if isinstance(value, str) and value.strip().lower() in {"", "none", "null"}:
        return None
    return value


def _auto_or_bool(value: Any) -> Any:
    """auto, true or false (null = auto; the words in any case)."""
    if value is None:
        return "auto"
    if isinstance(value, str) and value.strip().lower() in {"auto", "true", "false"}:
        text = value.strip().lower()
        return "auto" if text == "auto" else text == "true"
    if not isinstance(value, bool):
        raise ValueError("must be auto, true or false")
    return value


class Section(BaseModel):
    """A section: unknown keys are refused, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class BaseSettings(Section):
    seed: int = Field(0, ge=0, description="seeds data generation order, sampling, initialisation, augmentation")
    device: str = Field("auto", description=f"{DEVICE_FORMS}")

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: Any) -> Any:
        if value is None:
            return "auto"
        if not isinstance(value, str) or not DEVICE_PATTERN.match(value.strip()):
            raise ValueError(f"must be one of {DEVICE_FORMS}")
        return value.strip()


class SynthesizeSettings(Section):
    out: str = Field("data/raw/synthetic", description="folder the synthetic MIMIC-shaped set is written to")
    n_studies: int = Field(2000, ge=1, description="number of studies (about 1.7 images each)")
    fault_rate: float = Field(0.0, ge=0.0, le=1.0, description="share of studies given an injected fault")
    image_scale: float = Field(0.125, gt=0.0, le=4.0, description="image size relative to MIMIC-CXR's originals")
    workers: Optional[int] = Field(None, ge=1, description="rendering processes (null = the usable cores)")


class PreprocessSettings(Section):
    source: Literal["mimic", "iu", "manifest"] = Field(
        "mimic", description="mimic (MIMIC-CXR-JPG layout, real or synthetic) | iu (IU X-ray) | manifest (own CSV)")
    mimic_root: str = Field("data/raw/synthetic/mimic-cxr-jpg", description="MIMIC-CXR-JPG root: files/ and the csv.gz")
    reports: str = Field("data/raw/synthetic/mimic-cxr-reports.zip", description="mimic-cxr-reports.zip or its folder")
    ms_cxr: Optional[str] = Field("data/raw/synthetic/ms-cxr/MS_CXR_Local_Alignment_v1.1.0.csv",
                                  description="MS-CXR phrase grounding CSV (null = none)")
    class_retrieval: Optional[str] = Field("data/raw/synthetic/chexpert_5x200.csv",
                                           description="CheXpert 5x200 CSV (null = none)")
    out: str = Field("data/shards", description="output folder of the study shards")
    image_size: int = Field(144, ge=8, le=4096, description="long side after resizing, padded to a square")
    workers: Optional[int] = Field(None, ge=1, description="worker processes (null = the number of cores)")
    shard_size: int = Field(500, ge=1, description="studies per Parquet file")
    max_pixels: int = Field(100_000_000, ge=1, description="images with more pixels are skipped as image_too_large")
    iu_root: Optional[str] = Field(None, description="IU X-ray root, Kaggle copy or Open-i release (source iu)")
    iu_layout: Literal["auto", "kaggle", "openi"] = Field("auto", description="auto | kaggle | openi")
    iu_images: Optional[str] = Field(None, description="IU images folder (null = images/images_normalized or NLMCXR_png)")
    iu_projections: Optional[str] = Field(None, description="Open-i: a Kaggle indiana_projections.csv for the views")
    manifest: Optional[str] = Field(None, description="CSV manifest, one row per image (source manifest)")
    manifest_root: Optional[str] = Field(None, description="folder the manifest's image paths are relative to (null = its folder)")
    manifest_columns: dict[str, str] = Field(
        default_factory=lambda: {"study": "study_id", "patient": "patient_id", "path": "path", "view": "view",
                                 "text": "report", "split": "split"},
        description="the manifest's column name of each role")
    split_fractions: tuple[float, float, float] = Field(
        (0.8, 0.1, 0.1), description="train, validate, test shares of patients (IU; manifests without split)")
    split_seed: int = Field(0, ge=0, description="seed of that patient-level split and of the class-retrieval sample")

    @field_validator("ms_cxr", "class_retrieval", "iu_root", "iu_images", "iu_projections", "manifest",
                     "manifest_root", mode="before")
    @classmethod
    def _optional_paths(cls, value: Any) -> Any:
        return _null_path(value)

    @field_validator("split_fractions")
    @classmethod
    def _fractions(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(v < 0 for v in value) or abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"must be three shares >= 0 adding up to 1, got {list(value)}")
        return value

    @field_validator("manifest_columns")
    @classmethod
    def _columns(cls, value: dict[str, str]) -> dict[str, str]:
        roles = ("study", "patient", "path", "view", "text", "split")
        unknown = sorted(set(value) - set(roles))
        if unknown:
            raise ValueError(f"unknown role(s) {', '.join(unknown)}; roles: {', '.join(roles)}")
        return value

    @model_validator(mode="after")
    def _source_paths(self) -> "PreprocessSettings":
        if self.source == "iu" and self.iu_root is None:
            raise ValueError("source iu needs iu_root (the IU X-ray download)")
        if self.source == "manifest" and self.manifest is None:
            raise ValueError("source manifest needs manifest (the CSV)")
        return self


class TokenizeSettings(Section):
    shards: str = Field("data/shards", description="study shards from preprocess")
    out: str = Field("data/tokens", description="output folder of the token shards")
    tokenizer: Optional[str] = Field(None, description="Hugging Face name or local path (null = the shipped MiniLM)")
    max_length: int = Field(97, ge=3, le=8192, description="tokens per report including [CLS] and [SEP]")
    train_wordpiece: bool = Field(False, description="train a WordPiece vocabulary on the training reports instead")
    vocab_size: int = Field(8000, ge=8, description="size of that WordPiece vocabulary")

    @field_validator("tokenizer", mode="before")
    @classmethod
    def _optional_paths(cls, value: Any) -> Any:
        return _null_path(value)


class LossWeightSettings(Section):
    local_external: float = Field(1.0, ge=0.0)
    local_internal: float = Field(0.0, ge=0.0)
    global_: float = Field(1.0, ge=0.0, alias="global")


class ModelSettings(Section):
    image_backbone: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    image_weights: Optional[str] = Field(None, description="null (random) | state-dict file | torchvision weights name")
    local_layer: Literal["layer2", "layer3"] = "layer2"
    text_encoder: Optional[str] = Field(None, description="Hugging Face name or local path (null = the shipped MiniLM)")
    text_freeze_layers: int = Field(4, ge=-1, description="-1 = all, 0 = none, k = embeddings and k lower layers")
    embed_dim: int = Field(256, ge=1, description="D, the joint embedding width")
    lateral: bool = True
    positional_encoding: bool = False
    positional_encoding_scale: float = Field(0.25, gt=0.0)
    caption_attention: bool = True
    image_attention: bool = True
    temp1: float = Field(4.0, gt=0.0)
    attention_scale: float = Field(0.03125, gt=0.0)
    temp3: float = Field(10.0, gt=0.0)
    internal_weighting: Literal["saf", "uniform"] = "saf"
    saf_dropout: float = Field(0.4, ge=0.0, lt=1.0)
    loss_weights: LossWeightSettings = Field(default_factory=LossWeightSettings)
    score_chunk: Optional[int] = Field(64, ge=1, description="reports per chunk of the B x B local scores")
    score_local_weight: Union[Literal["validate"], float] = Field(
        "validate", description="factor on the local term of the combined score: validate (chosen on the "
        "validation split) | a number >= 0 (1 = the paper's mean of the weighted terms, 0 = global only)")

    @field_validator("image_weights", "text_encoder", mode="before")
    @classmethod
    def _optional_paths(cls, value: Any) -> Any:
        return _null_path(value)

    @field_validator("score_local_weight")
    @classmethod
    def _local_weight(cls, value: Any) -> Any:
        if value != "validate" and not value >= 0:
            raise ValueError("must be validate or a number >= 0")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ModelSettings":
        if self.positional_encoding and self.embed_dim % 4 != 0:
            raise ValueError(f"embed_dim = {self.embed_dim} must be divisible by 4 for the positional encoding "
                             "(or set model.positional_encoding: false)")
        if self.loss_weights.local_external > 0 and not (self.caption_attention or self.image_attention):
            raise ValueError("loss_weights.local_external > 0 needs caption_attention or image_attention")
        return self

    def to_config_dict(self) -> dict[str, Any]:
        """The mapping ``ModelConfig.from_dict`` takes (``global`` spelled as in params.yaml)."""
        return self.model_dump(by_alias=True)


class TrainSettings(Section):
    shards: str = Field("data/shards", description="study shards from preprocess")
    tokens: str = Field("data/tokens", description="token shards from tokenize")
    out: str = Field("data/model", description="run folder: checkpoints, config.json, report.json")
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(16, ge=2, description="global batch over all processes")
    crop_size: int = Field(128, ge=16, description="random crop (train) / center crop (eval)")
    upsample_to: Optional[int] = Field(None, ge=16, description="resize crops before the encoder (null = no)")
    lr: float = Field(5.0e-5, gt=0.0)
    image_lr: Optional[float] = Field(1.0e-4, gt=0.0, description="image encoders (null = lr)")
    head_lr: Optional[float] = Field(1.0e-3, gt=0.0, description="text projection, SAF, score heads (null = lr)")
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = Field(1.0e-6, ge=0.0)
    grad_clip: Optional[float] = Field(0.25, ge=0.0, description="max global gradient norm (null or 0 = off)")
    ema_decay: Optional[float] = Field(
        0.995, ge=0.0, lt=1.0, description="validate and keep a moving average of the weights with this decay per "
        "step (null = the raw weights, as in the paper)")
    patience: Optional[int] = Field(5, ge=1, description="epochs without a better r_sum before stopping")
    schedule: Literal["plateau", "cosine"] = Field(
        "plateau", description="learning-rate schedule: plateau (halve on a validation plateau, as in the paper) | "
        "cosine (per step from each rate down to 0 at the last step)")
    warmup_steps: int = Field(0, ge=0, description="steps of linear warm-up from 0 (cosine schedule only)")
    plateau_factor: float = Field(0.5, gt=0.0, lt=1.0)
    plateau_patience: int = Field(1, ge=0)
    mixed_precision: Union[Literal["auto"], bool] = Field("auto", description="auto (CUDA; CPUs with native bf16) | true | false")
    num_workers: Union[Literal["auto"], int] = Field(
        "auto", description="DataLoader workers per process: auto (none on <= 2 cores, else min(4, cores - 1)) or a number")
    compile: Union[Literal["auto"], bool] = Field(
        "auto", description="the local alignment compiled with torch.compile: auto (on CUDA when the run is long "
        "enough to pay the compile; eager on CPUs, where it measured slower) | true | false")
    compile_cache: str = Field("data/compile-cache", description="folder of the compiled kernels (reused by resumes)")
    max_steps_per_epoch: Optional[int] = Field(None, ge=1, description="cap for quick runs")
    val_rerank_top_k: Optional[int] = Field(
        20, ge=1, description="validation re-ranks each query's global top-K by the total score (null = all pairs)")
    val_max_studies: Optional[int] = Field(
        1000, ge=2, description="validation on a fixed seeded subset of at most this many studies (null = all)")
    seed: Optional[int] = Field(None, ge=0, description="training seed (null = base.seed)")

    @field_validator("betas")
    @classmethod
    def _betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError(f"each beta must be in [0, 1), got {list(value)}")
        return value

    @field_validator("num_workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if value is None:
            return 0
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError("must be auto or a whole number >= 0")
        return value

    @field_validator("mixed_precision", "compile", mode="before")
    @classmethod
    def _auto_or_bool(cls, value: Any) -> Any:
        return _auto_or_bool(value)

    @field_validator("betas", mode="before")
    @classmethod
    def _betas_shape(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError("must be a list of two numbers, e.g. [0.5, 0.999]")
        return value

    #: Keys the stage reads, not the loop (folders, and the seed that reaches it as an argument).
    STAGE_KEYS: ClassVar[tuple[str, ...]] = ("shards", "tokens", "out", "seed", "compile_cache")

    def to_config_dict(self) -> dict[str, Any]:
        """The mapping ``TrainConfig.from_dict`` takes (the stage's keys left out)."""
        d = self.model_dump()
        d["betas"] = list(d["betas"])
        return {k: v for k, v in d.items() if k not in self.STAGE_KEYS}


class EmbedSettings(Section):
    model: str = Field("data/model", description="train stage output")
    shards: str = Field("data/shards", description="study shards and tables from preprocess")
    tokens: str = Field("data/tokens", description="token shards from tokenize")
    out: str = Field("data/embeddings", description="output folder of the embeddings")
    batch_size: int = Field(64, ge=1, description="items per encoder call")
    rows_per_file: int = Field(4096, ge=1, description="items per safetensors file of embeddings")


class EvaluateSettings(Section):
    embeddings: str = Field("data/embeddings", description="embed stage output")
    model: str = Field("data/model", description="train stage output")
    shards: str = Field("data/shards", description="study shards from preprocess")
    metrics: str = Field("metrics", description="folder of the metrics JSON files")
    plots: str = Field("metrics/plots", description="folder of the plot data and images")
    ground_truth: Optional[str] = Field("data/raw/synthetic/ground_truth.jsonl",
                                        description="synthetic data only: the probes' ground truth (null = skip)")
    block_size: int = Field(1000, ge=1, description="candidates per block of the block protocol")
    rerank_top_k: Optional[int] = Field(None, ge=1, description="re-rank the global top-K with the local score")
    score_block: int = Field(64, ge=1, description="images and texts per similarity call")
    bootstrap: int = Field(1000, ge=0, description="test-study draws for the 95% intervals (0 = none)")
    bootstrap_seed: int = Field(0, ge=0, description="seed of those draws (the same draws for every run)")
    compile: Union[Literal["auto"], bool] = Field(
        "auto", description="the local scores' forward compiled with torch.compile: auto (on CUDA when the test "
        "split is large enough to pay the compile; eager on CPUs) | true | false")
    compile_cache: str = Field("data/compile-cache", description="folder of the compiled kernels")

    @field_validator("compile", mode="before")
    @classmethod
    def _auto_or_bool(cls, value: Any) -> Any:
        return _auto_or_bool(value)

    @field_validator("ground_truth", mode="before")
    @classmethod
    def _optional_paths(cls, value: Any) -> Any:
        return _null_path(value)


class TransferSetSettings(Section):
    model: str = Field(description="train stage output of the model's own source")
    tokens: str = Field(description="that run's tokens folder: the model's tokenizer and token limit")
    shards: str = Field(description="that run's shards: the model's image size")
    target: str = Field(description="the other source's preprocess output, at the same image size")


class TransferSettings(Section):
    sets: dict[str, TransferSetSettings] = Field(
        default_factory=dict, description="name -> a model and another source's shards (empty = none)")
    out: str = Field("data/transfer", description="folder of each set's tokens and embeddings")
    metrics: str = Field("metrics/transfer", description="folder of each set's metrics file, <name>.json")

    @field_validator("sets", mode="before")
    @classmethod
    def _no_sets(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("sets")
    @classmethod
    def _names(cls, value: dict) -> dict:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)):
                raise ValueError(f"set name {name!r} must be letters, digits, _ or - (it names a metrics file)")
        return value


class Settings(Section):
    """The whole params file. Every section is optional; a missing one takes its defaults."""

    base: BaseSettings = Field(default_factory=BaseSettings)
    synthesize: SynthesizeSettings = Field(default_factory=SynthesizeSettings)
    preprocess: PreprocessSettings = Field(default_factory=PreprocessSettings)
    tokenize: TokenizeSettings = Field(default_factory=TokenizeSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    embed: EmbedSettings = Field(default_factory=EmbedSettings)
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    transfer: TransferSettings = Field(default_factory=TransferSettings)

    @model_validator(mode="after")
    def _across_sections(self) -> "Settings":
        if self.tokenize.train_wordpiece:
            raise ValueError(
                "tokenize.train_wordpiece: true gives token ids that do not match the pretrained text "
                f"encoder's embeddings (model.text_encoder = {self.model.text_encoder or 'the shipped MiniLM'}); "
                "set tokenize.train_wordpiece: false"
            )
        return self


SECTIONS: tuple[str, ...] = tuple(Settings.model_fields)


def section_model(name: str) -> type[Section]:
    """The model class of section ``name``."""
    return Settings.model_fields[name].annotation  # type: ignore[return-value]


def _fields_at(model: type[BaseModel], path: tuple) -> list[str]:
    """The valid key names at ``path`` (a location inside :class:`Settings`)."""
    for part in path:
        info = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None)
        if info is None or not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)):
            return []
        model = info.annotation
    return [f.alias or name for name, f in model.model_fields.items()]


_TYPE_TAGS = {"bool", "int", "float", "str", "function-before", "function-after"}


def describe_error(exc: ValidationError, source: str, root: tuple = ()) -> str:
    """One line for the first problem of ``exc``: the setting, what is wrong, what to do."""
    err = exc.errors()[0]
    # Union members show up in the location as type tags (literal['auto'], int): drop them.
    loc = tuple(str(p) for p in (*root, *err["loc"])
                if not (isinstance(p, str) and ("[" in p or p in _TYPE_TAGS)))
    name = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        where = "section" if len(loc) == 1 else "key"
        valid = _fields_at(Settings, loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else f"; valid {where}s: {', '.join(valid)}"
        return f"{source}: unknown {where} {name}{hint}"
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if err["type"] in ("model_type", "dict_type"):
        return f"{source}: {name} must be a mapping of keys, got {err.get('input')!r}"
    if err["type"] == "value_error" and not loc:
        return f"{source}: {message}"
    if err["type"] == "value_error" and len(loc) == 1:
        return f"{source}: {name}: {message}"
    shown = err.get("input")
    return f"{source}: {name}: {message[0].lower() + message[1:]} (got {shown!r})"


def validate_settings(data: Optional[Mapping[str, Any]], source: str = "params") -> Settings:
    """The typed settings of a params mapping, or a LimitrError in one line naming the setting."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise LimitrError(f"{source} must hold a mapping of sections, got {type(data).__name__}")
    # An empty section (``synthesize:`` with nothing under it) means all its defaults.
    cleaned = {k: ({} if v is None else v) for k, v in data.items()}
    try:
        return Settings.model_validate(cleaned)
    except ValidationError as exc:
        raise LimitrError(describe_error(exc, source)) from None


def update_section(settings: Settings, name: str, changes: Mapping[str, Any], source: str = "option") -> Settings:
    """``settings`` with the given keys of section ``name`` replaced (None values ignored),
    validated like the params file; the error names ``source``."""
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        return settings
    current = getattr(settings, name)
    merged = {**current.model_dump(by_alias=True), **changes}
    try:
        new_section = type(current).model_validate(merged)
    except ValidationError as exc:
        raise LimitrError(describe_error(exc, source, (name,))) from None
    return settings.model_copy(update={name: new_section})


def default_of(section: str, key: str) -> Any:
    """The schema's default of ``section.key`` (for the library's config classes)."""
    info = section_model(section).model_fields[key]
    return info.get_default(call_default_factory=True)


def defaults() -> Settings:
    """Every setting at its default."""
    return Settings()
