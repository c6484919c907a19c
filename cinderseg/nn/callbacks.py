"""The Keras callbacks of a training phase: best checkpoint, early stopping and learning-rate reduction on
the monitored metric (their counters survive a resume), the time budget, the per-epoch record that
saves the resumable state (:mod:`cinderseg.nn.state`), and batch progress.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import keras
import numpy as np

from cinderseg.nn.settings import monitor_mode
from cinderseg.nn.state import prune_state_dir

if TYPE_CHECKING:
    from cinderseg.nn.settings import Phase, TrainSettings
    from cinderseg.nn.state import TrainingState

log = logging.getLogger("cinderseg")

HISTORY_METRICS = ("loss", "iou", "precision", "recall")
MIN_LEARNING_RATE = 1e-7


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
        st.seed_states = [np.asarray(v.numpy()).tolist() for v in seed_states(self.model)]
        st.elapsed_s = self.clock()
        es, rl = self.early_stopping, self.reduce_lr
        st.callbacks = {
            "early_stopping": {"wait": es.wait, "best": _float_or_none(es.best), "best_epoch": es.best_epoch},
            "reduce_lr": {"wait": rl.wait, "best": _float_or_none(rl.best), "cooldown": rl.cooldown_counter},
            "checkpoint_best": _float_or_none(self.checkpoint.best),
        }
        st.save(self.state_dir)
        prune_state_dir(self.state_dir, {last, st.best.get("file", "")})
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


def seed_states(model: keras.Model) -> list[keras.Variable]:
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


class BatchProgress(keras.callbacks.Callback):
    """Reports every training batch to ``advance`` (of :func:`cinderseg.core.progress.track`)."""

    def __init__(self, advance: Callable[[float], None]) -> None:
        super().__init__()
        self.advance = advance

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.advance(1)
