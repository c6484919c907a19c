"""Training of the U-Net on the tiles of the training regions, resumable after a kill.

The pieces: the input pipeline (:mod:`cinderseg.nn.pipeline`: memory-mapped tiles, oversampling,
augmentation), the resumable state (:mod:`cinderseg.nn.state`), the callbacks
(:mod:`cinderseg.nn.callbacks`) and the model card and curves (:mod:`cinderseg.nn.card`). The run's
settings are one :class:`cinderseg.nn.settings.TrainingRun`; its files one :class:`TrainOutputs`.

Training tiles (:func:`train_dataset`): each epoch's draws (:func:`cinderseg.nn.pipeline.epoch_draws`);
with ``relief_exaggeration`` and/or ``resolution_scale`` each drawn tile is first transformed as if its
DEM were vertically exaggerated by a factor ``f`` and/or resampled so that cones appear ``s`` times
larger (:mod:`cinderseg.data.augment`, factors drawn log-uniformly per tile, also a pure function of
``(seed, epoch)``), then given one of the 8 symmetries of the square (``augment``).

Schedule. ``unet_small`` trains in one phase at ``learning_rate``. A pretrained encoder trains
``frozen_epochs`` with the encoder frozen at ``learning_rate``, then fine-tunes (``fine_tune``: all
or the top ``fine_tune_blocks`` blocks; ``none`` keeps it frozen throughout) at
``fine_tune_learning_rate``, recompiled. Early stopping and learning-rate reduction act within a
phase (early stopping of the frozen phase moves on to fine-tuning, from the best weights so far);
the best checkpoint is global. The final model holds the weights of the best epoch on the
monitored validation metric. Each epoch is logged; the batches of a phase show as progress
(:func:`cinderseg.core.progress.track`: a bar on a terminal, a log line per tenth otherwise).

Calibration. With ``calibrate`` (default), after training a temperature ``T`` is fitted on the
validation tiles (pixel binary cross-entropy of ``sigmoid(logit(p) / T)``, :mod:`cinderseg.nn.calibrate`)
and written to the model card, with the validation pixel F1 at thresholds 0.1..0.9 after
calibration; prediction applies it (:mod:`cinderseg.nn.predict`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from cinderseg.core.errors import ConfigError, InputError
from cinderseg.core.modelcard import model_path, read_model_card
from cinderseg.core.progress import track
from cinderseg.core.raster import atomic_write
from cinderseg.data.augment import NOT_TRANSFORMED, augment_tile, exaggeration_report, shape_draws
from cinderseg.nn.calibrate import LogitHistogram, calibration_report
from cinderseg.nn.callbacks import BatchProgress, EpochRecorder, make_callbacks, seed_states
from cinderseg.nn.card import model_card, plot_training_curves
from cinderseg.nn.losses import iou_metric, make_loss, precision_metric, recall_metric
from cinderseg.nn.model import build_unet, load_model, set_encoder_trainable
from cinderseg.nn.pipeline import (
    TileTransform,
    TrainingData,
    augment_pair,
    dataset_options,
    epoch_draws,
    epoch_steps,
    eval_dataset,
    open_training_data,
    tile_loader,
)
from cinderseg.nn.runtime import NOTICE, configure_threads
from cinderseg.nn.settings import Phase, TrainingRun, TrainSettings, plan_phases
from cinderseg.nn.state import SessionClock, TrainingState, plain, run_fingerprint
from cinderseg.terrain.features import FeatureSettings

log = logging.getLogger("cinderseg")
BEST_TEMPLATE = "best-{epoch:04d}.weights.h5"


@dataclass(frozen=True)
class TrainOutputs:
    """The files of a training run: the model (``.keras``, the best epoch's weights), its history (CSV,
    one row per epoch), training curves (PNG) and model card (JSON). ``state_dir`` holds the resumable
    state; default: ``<model folder>.state`` beside the model's folder."""

    model: Path
    history: Path
    curves: Path
    card: Path
    state_dir: Path | None = None

    def __post_init__(self) -> None:
        for name in ("model", "history", "curves", "card", "state_dir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))

    @property
    def state(self) -> Path:
        """The state directory (see :mod:`cinderseg.nn.state`)."""
        folder = self.model.parent
        return self.state_dir if self.state_dir is not None else folder.with_name(folder.name + ".state")


def initialise_from(model: keras.Model, initial_model: str, channels: Sequence[str]) -> dict[str, Any]:
    """Copy the weights of a trained cinderseg model into ``model`` (fine-tuning starts from them).

    ``initial_model``: ``pretrained`` (the shipped model,
    :data:`cinderseg.core.modelcard.PRETRAINED_MODEL`) or
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
    if not path.is_file():
        raise InputError(f"{key}: model file not found: {path}")
    card = read_model_card(path, what=key)
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
    outputs: TrainOutputs,
    run: TrainingRun,
    *,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict[str, Any]:
    """Train the U-Net of ``run`` on the tiles of the training regions; write ``outputs``.

    ``tiles_paths`` and ``manifest_paths``: one tiles file and its manifest per training region. A
    state in ``outputs.state`` left by a killed run of the same settings and tiles is resumed; the
    directory is removed after success. ``extra_callbacks`` run after the built-in ones (tests).
    Returns the model card.
    """
    started = time.perf_counter()
    configure_threads(run.threads)
    data = open_training_data(tiles_paths, manifest_paths, run.regions, tile_size=run.tile_size)
    log.info("training data: %s", data.summary())
    altitude_deg = FeatureSettings.from_config(run.features).hillshade_altitude_deg
    augmentation = augmentation_summary(run.train, data.channels, altitude_deg)
    log_augmentation(augmentation, features_given=run.features is not None)
    fingerprint = run_fingerprint(
        run.model,
        run.train,
        data,
        hillshade_altitude_deg=altitude_deg if run.train.shape_augmentation else None,
    )
    state = TrainingState.open(outputs.state, fingerprint)
    clock = SessionClock(state.elapsed_s)
    keras.utils.set_random_seed(run.train.seed)
    model = build_unet(run.model, tile_size=data.tile_size, n_channels=len(data.channels))
    initial = None
    if run.train.initial_model:
        initial = initialise_from(model, run.train.initial_model, data.channels)
    session = _Session(data, run, state, outputs.state, clock, altitude_deg)
    session.train(model, extra_callbacks)
    card = _finish(model, session, outputs, initial=initial, augmentation=augmentation)
    best = state.best
    log.info(
        "model %s: best %s %.4f at epoch %d of %d (%s), %.0f s in all (this session %.0f s)",
        outputs.model,
        run.train.monitor,
        best["value"],
        best["epoch"],
        len(state.history),
        state.stop_reason,
        session.clock(),
        time.perf_counter() - started,
    )
    return card


class _Session:
    """One session of a training run: its phases (see the module doc's Schedule) from ``state`` on."""

    def __init__(
        self,
        data: TrainingData,
        run: TrainingRun,
        state: TrainingState,
        state_dir: Path,
        clock: SessionClock,
        altitude_deg: float,
    ) -> None:
        self.data, self.run, self.state, self.state_dir = data, run, state, state_dir
        self.clock = clock
        self.altitude_deg = altitude_deg
        s = run.train
        self.phases = plan_phases(run.model.encoder, s)
        self.steps = epoch_steps(len(data.train), int(data.train_positive.sum()), s)
        self.loss = make_loss(
            s.loss, tversky_alpha=s.tversky_alpha, tversky_beta=s.tversky_beta, focal_gamma=s.focal_gamma
        )
        self.val_ds = eval_dataset(data, s.batch_size, threads=run.threads)

    def train(self, model: keras.Model, extra_callbacks: Sequence[keras.callbacks.Callback]) -> None:
        """Train the phases not done yet; the state then holds the best epoch (InputError if none)."""
        state, s = self.state, self.run.train
        log.info(
            "model %s (encoder %s, %d parameters), %d phase(s) %s, %d steps of %d tiles per epoch",
            self.run.model.name,
            self.run.model.encoder,
            model.count_params(),
            len(self.phases),
            [(p.name, p.start + 1, p.end) for p in self.phases],
            self.steps,
            s.batch_size,
        )
        for index, phase in enumerate(self.phases):
            if state.finished:
                break
            if index < state.phase or (index == state.phase and state.phase_done):
                continue
            self._phase(model, index, phase, extra_callbacks)
            state.phase, state.phase_done = index, True
            state.save(self.state_dir)
        if not state.history or not state.best.get("file"):
            raise InputError(f"training produced no epoch with a {s.monitor} value; see the log")
        state.finished = True
        state.stop_reason = state.stop_reason or "all epochs done"
        state.save(self.state_dir)

    def _phase(
        self,
        model: keras.Model,
        index: int,
        phase: Phase,
        extra_callbacks: Sequence[keras.callbacks.Callback],
    ) -> None:
        """Train one phase from the state's next epoch (resuming within it) or from its start."""
        state, s = self.state, self.run.train
        resuming = index == state.phase and state.next_epoch > phase.start
        start = max(phase.start, state.next_epoch)
        self._compile(model, phase, resuming)
        callbacks = self._callbacks(index, phase, resuming)
        log.info(
            "phase %s: epochs %d-%d, encoder %s, learning rate %.2g%s",
            phase.name,
            start + 1,
            phase.end,
            phase.encoder or "(none)",
            float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
            " (resumed)" if resuming else "",
        )
        train_ds = train_dataset(
            self.data,
            s,
            start_epoch=start,
            end_epoch=phase.end,
            steps=self.steps,
            threads=self.run.threads,
            hillshade_altitude_deg=self.altitude_deg,
        )
        batches = (phase.end - start) * self.steps
        with track(f"phase {phase.name}", batches, unit="batches", logger=NOTICE) as advance:
            model.fit(
                train_ds,
                epochs=phase.end,
                initial_epoch=start,
                steps_per_epoch=self.steps,
                validation_data=self.val_ds,
                callbacks=[*callbacks, BatchProgress(advance), *extra_callbacks],
                shuffle=False,  # the dataset is shuffled (and oversampled) by epoch_draws
                verbose=0,
            )

    def _compile(self, model: keras.Model, phase: Phase, resuming: bool) -> None:
        """Set the encoder's trainability and compile for ``phase``; restore the weights to go on from."""
        if phase.encoder is not None:
            set_encoder_trainable(model, phase.encoder, top_blocks=phase.top_blocks)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=phase.learning_rate),
            loss=self.loss,
            metrics=[iou_metric(), precision_metric(), recall_metric()],
        )
        if resuming:
            # the last completed epoch's weights and this phase's optimizer state (learning rate too)
            model.optimizer.build(model.trainable_variables)
            _load_weights_quietly(model, self.state_dir / self.state.last_weights)
            seeds = seed_states(model)
            if len(seeds) == len(self.state.seed_states):
                for var, value in zip(seeds, self.state.seed_states, strict=True):
                    var.assign(np.asarray(value, dtype=var.dtype))
        elif self.state.best.get("file"):
            # a new phase starts from the best weights so far (what EarlyStopping restores)
            _load_weights_quietly(model, self.state_dir / self.state.best["file"])

    def _callbacks(self, index: int, phase: Phase, resuming: bool) -> list[keras.callbacks.Callback]:
        """Checkpoint, early stopping, LR reduction, time budget and the epoch recorder, in that order."""
        state, s = self.state, self.run.train
        checkpoint, early_stopping, reduce_lr, budget = make_callbacks(
            s,
            best_path_template=str(self.state_dir / BEST_TEMPLATE),
            initial_best=state.best.get("value"),
            resume=state.callbacks if resuming else None,
            clock=self.clock,
        )
        recorder = EpochRecorder(
            state=state,
            state_dir=self.state_dir,
            phase_index=index,
            phase=phase,
            checkpoint=checkpoint,
            early_stopping=early_stopping,
            reduce_lr=reduce_lr,
            budget=budget,
            samples_per_epoch=self.steps * s.batch_size,
            total_epochs=s.epochs,
            clock=self.clock,
            best_template=BEST_TEMPLATE,
        )
        return [checkpoint, early_stopping, reduce_lr, budget, recorder]


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
    maps, exaggerated and zoomed (:func:`cinderseg.data.augment.augment_tile` with the factors of
    :func:`cinderseg.data.augment.shape_draws`, if ``settings.relief_exaggeration`` or
    ``settings.resolution_scale``), given a symmetry (if ``settings.augment``), batched and
    prefetched. ``hillshade_altitude_deg`` is the sun altitude the tiles' hillshade was computed with.
    """
    n = steps * settings.batch_size
    pairs = data.train
    shaped = settings.shape_augmentation

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
    load = tile_loader(data, _shape_transform(data.channels, hillshade_altitude_deg) if shaped else None)

    def load_and_augment(
        src: tf.Tensor, tile: tf.Tensor, code: tf.Tensor, f: tf.Tensor, s: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        x, y = load(src, tile, f, s) if shaped else load(src, tile)
        return augment_pair(x, y, code) if settings.augment else (x, y)

    ds = ds.map(load_and_augment, num_parallel_calls=max(1, threads), deterministic=True)
    ds = ds.batch(settings.batch_size, drop_remainder=True).prefetch(2)
    return ds.with_options(dataset_options(threads))


def _shape_transform(channels: Sequence[str], altitude_deg: float) -> TileTransform:
    """Relief exaggeration ``f`` and zoom ``s`` of a tile (:func:`cinderseg.data.augment.augment_tile`)."""

    def transform(x: np.ndarray, y: np.ndarray, f: float, s: float) -> tuple[np.ndarray, np.ndarray]:
        return augment_tile(x, y, channels, exaggeration=f, scale=s, altitude_deg=altitude_deg)

    return transform


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


def _finish(
    model: keras.Model,
    session: _Session,
    outputs: TrainOutputs,
    *,
    initial: dict[str, Any] | None,
    augmentation: dict[str, Any],
) -> dict[str, Any]:
    """Write the final model (the best epoch's weights), its history, curves and card; remove the state.

    The model is a fresh, uncompiled copy of the network without optimizer state: the same small
    inference artefact whether the run was resumed or not. Returns the card.
    """
    state, run = session.state, session.run
    _load_weights_quietly(model, session.state_dir / state.best["file"])
    final = keras.Model.from_config(model.get_config())
    final.set_weights(model.get_weights())
    calibration = calibrate_model(final, session.data, run.train, threads=run.threads)
    extra = {
        "initial_model": initial,
        "augmentation": augmentation,
        "calibration": calibration,
        "wall_time_s": round(session.clock(), 2),
    }
    card = model_card(
        run, session.data, state, final, phases=session.phases, steps=session.steps, extra=extra
    )
    history = pd.DataFrame(state.history)
    with atomic_write(outputs.history) as tmp:
        history.to_csv(tmp, index=False)
    plot_training_curves(
        history,
        outputs.curves,
        monitor=run.train.monitor,
        best_epoch=int(state.best["epoch"]),
        title=f"{run.model.name} ({run.model.encoder}) on {', '.join(card['training_regions'])}",
    )
    with atomic_write(outputs.card) as tmp:
        tmp.write_text(json.dumps(card, indent=2, default=plain) + "\n")
    _save_model_atomically(final, outputs.model)
    shutil.rmtree(session.state_dir, ignore_errors=True)
    return card


def calibrate_model(
    model: keras.Model, data: TrainingData, settings: TrainSettings, *, threads: int = 1
) -> dict[str, Any]:
    """Calibration report of ``model`` on the validation tiles (see
    :func:`cinderseg.nn.calibrate.calibration_report`): the temperature is fitted if
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
