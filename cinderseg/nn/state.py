"""The resumable state of a training run, and the fingerprint that decides whether a state is resumed.

Training state lives in a state directory outside the workflow's declared outputs
(``results/models/{name}.state/``): after every epoch the weights with the optimizer state
(``last-EEEE.weights.h5``), the best weights so far (``best-EEEE.weights.h5``, written by
ModelCheckpoint) and ``state.json`` (epoch, phase, history, callback counters, elapsed time, and a
fingerprint of config and data) are written; ``state.json`` is replaced atomically last, so a kill at
any moment leaves a consistent state. A later run with the same fingerprint resumes at the next
epoch; a different fingerprint starts over (logged). The directory is removed after success.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cinderseg.nn.pipeline import TrainingData
    from cinderseg.nn.settings import ModelSettings, TrainSettings

log = logging.getLogger("cinderseg")

STATE_VERSION = 1
STATE_FILE = "state.json"
# Keys of the train section that do not change what an epoch computes: a state saved under other
# values of these is still resumed (e.g. a larger time budget for a run that was cut short).
RESUME_NEUTRAL_KEYS = ("max_minutes", "calibrate")


def plain(value: Any) -> Any:
    """Tuples as lists and numpy scalars as Python numbers (for JSON)."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def settings_dict(settings: Any) -> dict[str, Any]:
    """A settings dataclass as plain JSON data."""
    return {k: plain(v) for k, v in asdict(settings).items()}


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
    train = {k: plain(v) for k, v in asdict(settings).items() if k not in RESUME_NEUTRAL_KEYS}
    content = {
        "model": settings_dict(model_settings),
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
        tmp.write_text(json.dumps(payload, indent=1, default=plain))
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

    @classmethod
    def open(cls, state_dir: Path, fingerprint: str) -> TrainingState:
        """The state to go on from: the saved one if it matches ``fingerprint`` (a resumed session), else
        a new one in an emptied ``state_dir``. Counts this session."""
        state = cls.load(state_dir, fingerprint)
        if state is None:
            _reset_state_dir(state_dir)
            state = cls(fingerprint=fingerprint)
            log.info("training from scratch; state in %s", state_dir)
        else:
            prune_state_dir(state_dir, {state.last_weights, state.best.get("file", "")})
            state.resumed_from.append(state.next_epoch)
            log.info(
                "resuming from the state in %s: %d epoch(s) done, next epoch %d",
                state_dir,
                state.next_epoch,
                state.next_epoch + 1,
            )
        state.sessions += 1
        return state


def _reset_state_dir(state_dir: Path) -> None:
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True, exist_ok=True)


def prune_state_dir(state_dir: Path, keep: set[str]) -> None:
    """Remove weights files and temporaries the state no longer refers to."""
    for p in state_dir.iterdir():
        if p.name != STATE_FILE and p.name not in keep and p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


class SessionClock:
    """Seconds of training in all sessions: those of earlier sessions plus this one's so far."""

    def __init__(self, before_s: float = 0.0) -> None:
        self.before_s = before_s
        self.started = time.perf_counter()

    def __call__(self) -> float:
        return self.before_s + time.perf_counter() - self.started
