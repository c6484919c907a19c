"""The settings of the network's steps: the config's ``model``, ``train`` and ``predict`` sections, one
training run, and the training phases the settings mean. Free of TensorFlow, so that the workflow can
validate them.

Each section class has one field per key of its schema section (``cinderseg/core/config.schema.yaml``,
the one source of keys, types, ranges, defaults and meanings); only the checks across keys that the
schema cannot express are written here. Errors are one ConfigError line naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cinderseg.core.errors import ConfigError
from cinderseg.core.modelcard import WEIGHT_KEYWORDS
from cinderseg.core.schema import section_default, validate_section

MONITOR_MODES = {"val_iou": "max", "val_loss": "min"}
"""Whether the monitored validation metric should grow (``max``) or shrink (``min``)."""


def monitor_mode(monitor: str) -> str:
    """``"max"`` for a metric that should grow (``val_iou``), ``"min"`` for a loss (``val_loss``)."""
    if monitor not in MONITOR_MODES:
        raise ConfigError(f"train.monitor: {monitor!r} is not one of: {', '.join(MONITOR_MODES)}")
    return MONITOR_MODES[monitor]


def _tuples(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with its lists as tuples (the fields of frozen settings)."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}


def _freeze(settings: Any) -> None:
    """Replace list fields of a frozen settings object by tuples (settings built from lists)."""
    for name, value in _tuples({f.name: getattr(settings, f.name) for f in fields(settings)}).items():
        object.__setattr__(settings, name, value)


@dataclass(frozen=True)
class ModelSettings:
    """The config's ``model`` section (meaning of each key: the schema)."""

    name: str = section_default("model", "name")
    encoder: str = section_default("model", "encoder")
    encoder_weights: str = section_default("model", "encoder_weights")
    decoder_filters: tuple[int, ...] = section_default("model", "decoder_filters")
    base_filters: int = section_default("model", "base_filters")
    dropout: float = section_default("model", "dropout")
    batchnorm_momentum: float = section_default("model", "batchnorm_momentum")

    def __post_init__(self) -> None:
        _freeze(self)
        validate_section("model", asdict(self))

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> ModelSettings:
        """Settings from the config's ``model`` section (missing keys take the schema's defaults)."""
        return cls(**_tuples(validate_section("model", section)))

    @property
    def weights_keyword(self) -> str | None:
        """'pretrained', 'imagenet' or 'none' (case-insensitive), or None for a weights file path."""
        value = self.encoder_weights.strip().lower()
        return value if value in WEIGHT_KEYWORDS else None


@dataclass(frozen=True)
class TrainSettings:
    """The config's ``train`` section (meaning of each key: the schema); factor ranges as float pairs."""

    epochs: int = section_default("train", "epochs")
    frozen_epochs: int = section_default("train", "frozen_epochs")
    fine_tune: str = section_default("train", "fine_tune")
    fine_tune_blocks: int = section_default("train", "fine_tune_blocks")
    batch_size: int = section_default("train", "batch_size")
    learning_rate: float = section_default("train", "learning_rate")
    fine_tune_learning_rate: float = section_default("train", "fine_tune_learning_rate")
    loss: str = section_default("train", "loss")
    tversky_alpha: float = section_default("train", "tversky_alpha")
    tversky_beta: float = section_default("train", "tversky_beta")
    focal_gamma: float = section_default("train", "focal_gamma")
    monitor: str = section_default("train", "monitor")
    early_stopping_patience: int = section_default("train", "early_stopping_patience")
    reduce_lr_patience: int = section_default("train", "reduce_lr_patience")
    reduce_lr_factor: float = section_default("train", "reduce_lr_factor")
    augment: bool = section_default("train", "augment")
    positive_oversampling: float = section_default("train", "positive_oversampling")
    steps_per_epoch: int = section_default("train", "steps_per_epoch")
    max_minutes: float = section_default("train", "max_minutes")
    seed: int = section_default("train", "seed")
    relief_exaggeration: tuple[float, float] | None = section_default("train", "relief_exaggeration")
    resolution_scale: tuple[float, float] | None = section_default("train", "resolution_scale")
    calibrate: bool = section_default("train", "calibrate")
    initial_model: str = section_default("train", "initial_model")

    def __post_init__(self) -> None:
        _freeze(self)
        validate_section("train", asdict(self))
        for key in ("relief_exaggeration", "resolution_scale"):
            value = getattr(self, key)
            if value is None:
                continue
            if value[0] > value[1]:
                raise ConfigError(f"train.{key}: expected [lo, hi] with lo <= hi, got {list(value)}")
            object.__setattr__(self, key, (float(value[0]), float(value[1])))

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> TrainSettings:
        """Settings from the config's ``train`` section (missing keys take the schema's defaults)."""
        return cls(**_tuples(validate_section("train", section)))

    @property
    def shape_augmentation(self) -> bool:
        """Whether tiles are exaggerated or zoomed (``relief_exaggeration`` or ``resolution_scale``)."""
        return self.relief_exaggeration is not None or self.resolution_scale is not None


@dataclass(frozen=True)
class PredictSettings:
    """The config's ``predict`` section (window sizes in pixels; meaning of each key: the schema).

    ``model`` names the model to apply: an input of the step rather than a way of predicting, so it
    takes no part in comparisons.
    """

    model: str = field(default=section_default("predict", "model"), compare=False)
    window_px: int = section_default("predict", "window_px")
    overlap_px: int = section_default("predict", "overlap_px")
    crop_px: int = section_default("predict", "crop_px")
    tta: str = section_default("predict", "tta")
    batch_size: int = section_default("predict", "batch_size")
    runtime: str = section_default("predict", "runtime")

    def __post_init__(self) -> None:
        validate_section("predict", asdict(self))
        if self.overlap_px >= self.window_px:
            raise ConfigError(
                f"predict.overlap_px: {self.overlap_px} is not smaller than predict.window_px "
                f"({self.window_px})"
            )
        if self.overlap_px == 0 and self.crop_px:
            raise ConfigError(f"predict.crop_px: {self.crop_px} is not 0 though predict.overlap_px is 0")
        if self.overlap_px and 2 * self.crop_px >= self.overlap_px:
            raise ConfigError(
                f"predict.crop_px: {self.crop_px} is not less than half of predict.overlap_px "
                f"({self.overlap_px})"
            )

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> PredictSettings:
        """Settings from the config's ``predict`` section (missing keys take the schema's defaults)."""
        return cls(**validate_section("predict", section))

    @property
    def stride_px(self) -> int:
        """Distance between the origins of neighbouring windows (the last one may be closer)."""
        return self.window_px - self.overlap_px


@dataclass(frozen=True)
class TrainingRun:
    """One training run: the network and its training, and what the model card records beside them.

    ``config``: the ``model`` and ``train`` sections as given (the card records them beside the
    resolved settings). ``features``: the features section the tiles were computed with (None:
    unknown; the hillshade's sun altitude then takes its default). ``regions``: the training regions'
    names, one per tiles file (None: the files' stems). ``tile_size``: the tiles' expected side in px
    (``tiling.size``; None: any). ``resolutions_m``: pixel size in metres of each training region.
    ``threads``: TensorFlow's CPU threads. ``fold``: the cross-validation fold the model holds out,
    as plain data (:meth:`cinderseg.data.folds.Fold.as_params`), or None.
    """

    model: ModelSettings = field(default_factory=ModelSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    features: Mapping[str, Any] | None = None
    regions: Sequence[str] | None = None
    tile_size: int | None = None
    resolutions_m: Mapping[str, float] = field(default_factory=dict)
    threads: int = 1
    fold: Mapping[str, Any] | None = None

    @classmethod
    def from_config(
        cls, model: Mapping[str, Any] | None = None, train: Mapping[str, Any] | None = None, **run: Any
    ) -> TrainingRun:
        """A run from the config's ``model`` and ``train`` sections and the other fields (keywords)."""
        return cls(
            model=ModelSettings.from_config(model),
            train=TrainSettings.from_config(train),
            config={"model": dict(model or {}), "train": dict(train or {})},
            **run,
        )


@dataclass(frozen=True)
class Phase:
    """Epochs ``[start, end)`` (0-based) trained with one encoder setting and learning rate.

    ``encoder`` is the mode passed to ``set_encoder_trainable`` (``None``: a model without a
    pretrained encoder, trained whole).
    """

    name: str
    start: int
    end: int
    encoder: str | None
    learning_rate: float
    top_blocks: int = 2


def plan_phases(encoder: str, settings: TrainSettings) -> list[Phase]:
    """The training phases of ``encoder`` under ``settings``: frozen, then fine-tuning (see
    :mod:`cinderseg.nn.train`, Schedule)."""
    s = settings
    if encoder == "unet_small":
        return [Phase("train", 0, s.epochs, None, s.learning_rate)]
    if s.fine_tune == "none":
        return [Phase("frozen", 0, s.epochs, "frozen", s.learning_rate)]
    frozen = min(s.frozen_epochs, s.epochs)
    phases = []
    if frozen > 0:
        phases.append(Phase("frozen", 0, frozen, "frozen", s.learning_rate))
    if frozen < s.epochs:
        phases.append(
            Phase("fine_tune", frozen, s.epochs, s.fine_tune, s.fine_tune_learning_rate, s.fine_tune_blocks)
        )
    return phases
