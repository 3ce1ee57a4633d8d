"""The ``train`` section of params.yaml as a typed record."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional, Union, get_args

from limitr.errors import LimitrError
from limitr.settings import TrainSettings

#: The schema's defaults (the single source; see limitr/settings.py).
_DEFAULTS = TrainSettings()

#: Keys of params.yaml's ``train`` section that the stage reads, not the loop: the folders,
#: and ``seed`` (the training seed, null = ``base.seed``; it reaches the loop as an argument).
STAGE_KEYS: tuple[str, ...] = TrainSettings.STAGE_KEYS
#: Knobs that may change when a run is resumed (they do not alter the steps already taken).
RESUMABLE_CHANGES: tuple[str, ...] = ("epochs", "patience", "num_workers", "compile")

#: Learning-rate schedules, as the schema lists them: ``plateau`` (the paper's, on the
#: validation r_sum, per epoch) and ``cosine`` (per step, down to 0 at the run's last step).
SCHEDULES: tuple[str, ...] = get_args(TrainSettings.model_fields["schedule"].annotation)


@dataclass
class TrainConfig:
    """The ``train`` section of params.yaml (folders aside). Learning rates per step, no unit.

    image_lr: learning rate of the image encoders (None = ``lr``); head_lr: learning rate of
    the randomly initialised text projection, SAF and score heads (None = ``lr``, as in the
    paper); grad_clip: max global L2 norm (None or 0 = off); ema_decay: validate, and keep as
    best/, a moving average of the weights with this decay per step (None = the raw weights;
    see limitr/train/averaging.py); patience: epochs without a better validation r_sum before
    stopping (None = never); schedule: "plateau" (halve the rates after ``plateau_patience``
    epochs without a better validation r_sum) or "cosine" (per step, after ``warmup_steps`` of
    linear warm-up, down to 0 at the last step; ``epochs`` then shapes the schedule and a run
    cannot be resumed with another); mixed_precision: "auto" (on CUDA and on CPUs with native
    bf16), true or false;
    max_steps_per_epoch: cap for quick runs (None = every full global batch);
    num_workers: DataLoader worker processes per training process, or "auto" (chosen from
    the cores, see ``limitr.train.loop.resolve_num_workers``); results do not depend on it;
    compile: the local alignment compiled with torch.compile, "auto", true or false (see
    ``limitr.model.compiled.choose``); results agree with eager within float32 rounding;
    val_rerank_top_k: validation ranks each query's global top-K by the total score (None =
    every pair scored with the local alignment, O(n^2)); val_max_studies: validation uses a
    fixed seeded subset of at most this many studies (None = all). See limitr/train/validate.py.
    """

    epochs: int = _DEFAULTS.epochs
    batch_size: int = _DEFAULTS.batch_size
    crop_size: int = _DEFAULTS.crop_size
    upsample_to: Optional[int] = _DEFAULTS.upsample_to
    lr: float = _DEFAULTS.lr
    image_lr: Optional[float] = _DEFAULTS.image_lr
    head_lr: Optional[float] = _DEFAULTS.head_lr
    betas: tuple[float, float] = _DEFAULTS.betas
    weight_decay: float = _DEFAULTS.weight_decay
    grad_clip: Optional[float] = _DEFAULTS.grad_clip
    ema_decay: Optional[float] = _DEFAULTS.ema_decay
    patience: Optional[int] = _DEFAULTS.patience
    schedule: str = _DEFAULTS.schedule
    warmup_steps: int = _DEFAULTS.warmup_steps
    plateau_factor: float = _DEFAULTS.plateau_factor
    plateau_patience: int = _DEFAULTS.plateau_patience
    mixed_precision: Union[str, bool] = _DEFAULTS.mixed_precision
    num_workers: Union[int, str] = _DEFAULTS.num_workers
    compile: Union[str, bool] = _DEFAULTS.compile
    max_steps_per_epoch: Optional[int] = _DEFAULTS.max_steps_per_epoch
    val_rerank_top_k: Optional[int] = _DEFAULTS.val_rerank_top_k
    val_max_studies: Optional[int] = _DEFAULTS.val_max_studies

    @classmethod
    def from_dict(cls, d: Optional[Mapping[str, Any]]) -> "TrainConfig":
        """From a params-style mapping; the stage's keys are ignored, unknown keys raise."""
        d = {k: v for k, v in dict(d or {}).items() if k not in STAGE_KEYS}
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise LimitrError(f"unknown key(s) in train: {', '.join(unknown)} (known: {', '.join(known)})")
        kwargs: dict[str, Any] = {}
        try:
            for key, value in d.items():
                if key == "betas":
                    b = [float(x) for x in value]
                    if len(b) != 2:
                        raise ValueError
                    kwargs[key] = (b[0], b[1])
                elif key == "num_workers" and isinstance(value, str) and value.strip().lower() == "auto":
                    kwargs[key] = "auto"
                elif key == "schedule":
                    kwargs[key] = str(value).strip().lower()
                elif key in ("mixed_precision", "compile"):
                    kwargs[key] = value if isinstance(value, bool) else str(value).lower()
                elif key == "num_workers" and str(value).lower() == "auto":
                    kwargs[key] = "auto"
                elif value is None:
                    kwargs[key] = None
                elif key in ("epochs", "batch_size", "crop_size", "upsample_to", "patience",
                             "plateau_patience", "warmup_steps", "num_workers", "max_steps_per_epoch",
                             "val_rerank_top_k", "val_max_studies"):
                    if isinstance(value, bool) or float(value) != int(value):
                        raise ValueError
                    kwargs[key] = int(value)
                else:
                    kwargs[key] = float(value)
        except (TypeError, ValueError):
            raise LimitrError(f"train.{key} has an invalid value {d[key]!r}") from None
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.crop_size < 16:
            raise LimitrError(
                "train.epochs must be >= 1, train.batch_size >= 2 (the losses contrast pairs "
                f"within a batch) and train.crop_size >= 16; got {self.epochs}, {self.batch_size}, {self.crop_size}"
            )
        if self.lr <= 0 or any(v is not None and v <= 0 for v in (self.image_lr, self.head_lr)):
            raise LimitrError("train.lr, train.image_lr and train.head_lr must be positive")
        if self.mixed_precision not in ("auto", True, False, "true", "false"):
            raise LimitrError(f"train.mixed_precision must be auto, true or false, got {self.mixed_precision!r}")
        if self.compile not in ("auto", True, False, "true", "false"):
            raise LimitrError(f"train.compile must be auto, true or false, got {self.compile!r}")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise LimitrError(f"train.ema_decay must be null or in [0, 1), got {self.ema_decay}")
        if self.schedule not in SCHEDULES:
            raise LimitrError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.warmup_steps < 0:
            raise LimitrError(f"train.warmup_steps must be a whole number >= 0, got {self.warmup_steps}")
        if self.warmup_steps and self.schedule != "cosine":
            raise LimitrError(
                f"train.warmup_steps {self.warmup_steps} applies to the cosine schedule only: "
                "set train.schedule: cosine, or train.warmup_steps: 0"
            )
        if not 0 < self.plateau_factor < 1:
            raise LimitrError(f"train.plateau_factor must be in (0, 1), got {self.plateau_factor}")
        if self.num_workers != "auto" and (not isinstance(self.num_workers, int) or self.num_workers < 0):
            raise LimitrError(f"train.num_workers must be auto or a whole number >= 0, got {self.num_workers!r}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise LimitrError("train.max_steps_per_epoch must be null or >= 1")
        if self.num_workers != "auto" and (not isinstance(self.num_workers, int) or self.num_workers < 0):
            raise LimitrError(f"train.num_workers must be auto or a count >= 0, got {self.num_workers!r}")
        for key in ("val_rerank_top_k", "val_max_studies"):
            value = getattr(self, key)
            if value is not None and value < (10 if key == "val_rerank_top_k" else 2):
                raise LimitrError(
                    f"train.{key} must be null or at least {10 if key == 'val_rerank_top_k' else 2} "
                    f"(R@10 needs 10 candidates re-ranked), got {value}"
                )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d
