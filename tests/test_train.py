"""Tests of cinderseg.nn.train: settings, input pipeline, callbacks, a tiny training run, resume
after a kill."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import pytest
import yaml

from cinderseg.core.errors import ConfigError, InputError
from cinderseg.data.augment import augment_tile, shape_draws
from cinderseg.data.tiles import MANIFEST_COLUMNS
from cinderseg.nn.callbacks import TimeBudget, make_callbacks
from cinderseg.nn.model import load_model
from cinderseg.nn.pipeline import (
    augment_numpy,
    augment_pair,
    data_fingerprint,
    epoch_draws,
    epoch_steps,
    eval_dataset,
    open_training_data,
)
from cinderseg.nn.settings import ModelSettings, TrainingRun, TrainSettings, monitor_mode, plan_phases
from cinderseg.nn.state import STATE_FILE, run_fingerprint
from cinderseg.nn.train import (
    TrainOutputs,
    augmentation_summary,
    log_augmentation,
    train_dataset,
    train_model,
)

REPO = Path(__file__).resolve().parent.parent
SIZE = 32
TINY_MODEL = {"name": "tiny", "encoder": "unet_small", "base_filters": 8}


def write_tiles(
    directory: Path,
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    splits: list[str],
    channels: tuple[str, ...] = ("elevation", "sobel", "clahe"),
) -> tuple[Path, Path]:
    """A tiles .npz (uncompressed, as the tiles step writes it) and its manifest CSV."""
    tiles, manifest = directory / f"{name}.npz", directory / f"{name}.csv"
    np.savez(tiles, x=x.astype("float16"), y=y.astype("uint8"), channels=np.array(channels))
    rows = [
        {"tile_id": i, "row_off": 0, "col_off": 0, "size": x.shape[1], "split": s,
         "positive_fraction": float(y[i].mean()), "nodata_fraction": 0.0,
         "minx": 0.0, "miny": 0.0, "maxx": 1.0, "maxy": 1.0}
        for i, s in enumerate(splits)
    ]  # fmt: skip
    pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).to_csv(manifest, index=False)
    return tiles, manifest


def cone_tiles(
    n: int, *, seed: int = 0, size: int = SIZE, every_negative: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Tiles whose 'cones' are bright discs in channel 0 (every ``every_negative``-th tile has none)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.1, (n, size, size, 3)).astype("float32")
    y = np.zeros((n, size, size, 1), np.uint8)
    rr, cc = np.mgrid[0:size, 0:size]
    for i in range(n):
        if i % every_negative == 0:
            continue
        for _ in range(2):
            r, c = rng.uniform(4, size - 4, 2)
            disc = np.hypot(rr - r, cc - c) < rng.uniform(3, 6)
            y[i, disc, 0] = 1
            x[i, disc, 0] += 0.8
    return x, y


def marker_tiles(n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tiles with an asymmetric L-shaped marker (channel 0, also the mask) and their id in channel 1."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, SIZE, SIZE, 3), np.float32)
    y = np.zeros((n, SIZE, SIZE, 1), np.uint8)
    for i in range(n):
        if i % 4 == 0:  # a negative tile: no marker
            x[i, :, :, 1] = i
            continue
        r, c = rng.integers(2, SIZE - 12, 2)
        y[i, r : r + 10, c, 0] = 1
        y[i, r + 9, c : c + 6, 0] = 1
        x[i, :, :, 0] = y[i, :, :, 0]
        x[i, :, :, 1] = i
        x[i, :, :, 2] = rng.random((SIZE, SIZE))
    return x.astype("float16").astype("float32"), y


@pytest.fixture(scope="module")
def cone_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One training region of 64 tiles: 48 train, 16 val."""
    d = tmp_path_factory.mktemp("cones")
    x, y = cone_tiles(64)
    tiles, manifest = write_tiles(d, "volcano", x, y, ["train"] * 48 + ["val"] * 16)
    return {"tiles": [tiles], "manifests": [manifest], "regions": ["volcano"]}


TINY_TRAIN = {"epochs": 5, "batch_size": 8, "early_stopping_patience": 10}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, cone_data: dict[str, Any]) -> dict[str, Any]:
    """An uninterrupted tiny training run (unet_small), started over a stale state of another config."""
    d = tmp_path_factory.mktemp("tiny")
    state_dir = d / "tiny.state"
    state_dir.mkdir()
    (state_dir / STATE_FILE).write_text(json.dumps({"version": 1, "fingerprint": "other", "next_epoch": 7}))
    (state_dir / "last-0007.weights.h5").write_bytes(b"old")
    out = outputs(d / "tiny")
    handler, logger = _ListHandler(), logging.getLogger("cinderseg")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    started = time.perf_counter()
    try:
        run = TrainingRun.from_config(
            TINY_MODEL, TINY_TRAIN, regions=cone_data["regions"], tile_size=SIZE, threads=2
        )
        card = train_model(cone_data["tiles"], cone_data["manifests"], out, run)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return {
        "dir": d,
        "out": out,
        "card": card,
        "seconds": time.perf_counter() - started,
        "log": handler.lines,
    }


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def outputs(d: Path) -> TrainOutputs:
    return TrainOutputs(
        model=d / "model.keras",
        history=d / "history.csv",
        curves=d / "training_curves.png",
        card=d / "model_card.json",
    )


# --------------------------------------------------------------------------- settings and callbacks


def test_settings_defaults_follow_the_schema() -> None:
    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]["train"]["properties"]
    defaults = TrainSettings()
    assert set(props) == set(vars(defaults))
    for key, spec in props.items():
        assert getattr(defaults, key) == spec["default"], key


@pytest.mark.parametrize(
    ("config", "key"),
    [({"bogus": 1}, "train: unknown key 'bogus'"), ({"batch_size": 0}, "train.batch_size"),
     ({"monitor": "iou"}, "train.monitor"), ({"reduce_lr_factor": 1.0}, "train.reduce_lr_factor"),
     ({"fine_tune": "some"}, "train.fine_tune"),
     ({"relief_exaggeration": [1.6, 0.4]}, "train.relief_exaggeration"),
     ({"relief_exaggeration": [0.0, 1.6]}, "train.relief_exaggeration"),
     ({"resolution_scale": 1.2}, "train.resolution_scale"),
     ({"resolution_scale": [0.7, 1.4, 2.0]}, "train.resolution_scale"),
     ({"calibrate": "yes"}, "train.calibrate")],
)  # fmt: skip
def test_bad_settings_name_the_key(config: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        TrainSettings.from_config(config)


@pytest.mark.parametrize(("monitor", "mode"), [("val_iou", "max"), ("val_loss", "min")])
def test_callbacks_monitor_with_the_right_mode(monitor: str, mode: str) -> None:
    assert monitor_mode(monitor) == mode
    callbacks = make_callbacks(TrainSettings(monitor=monitor), best_path_template="best-{epoch}.weights.h5")
    checkpoint, early_stopping, reduce_lr, _ = callbacks
    assert early_stopping.restore_best_weights and checkpoint.save_best_only
    better, worse = (0.6, 0.4) if mode == "max" else (0.4, 0.6)
    for cb in (checkpoint, early_stopping, reduce_lr):
        assert cb.monitor == monitor and cb.mode == mode
        cb._set_monitor_op()
        assert bool(cb._is_improvement(better, 0.5)) and not bool(cb._is_improvement(worse, 0.5))
    assert reduce_lr.factor == TrainSettings().reduce_lr_factor


def test_phases_freeze_then_fine_tune() -> None:
    s = TrainSettings(epochs=10, frozen_epochs=3, fine_tune="top", fine_tune_blocks=2)
    frozen, tune = plan_phases("hed_vgg16", s)
    assert (frozen.start, frozen.end, frozen.encoder, frozen.learning_rate) == (
        0,
        3,
        "frozen",
        s.learning_rate,
    )
    assert (tune.start, tune.end, tune.encoder, tune.top_blocks) == (3, 10, "top", 2)
    assert tune.learning_rate == s.fine_tune_learning_rate
    [only] = plan_phases("unet_small", s)
    assert (only.start, only.end, only.encoder, only.learning_rate) == (0, 10, None, s.learning_rate)
    [kept] = plan_phases("resnet50", TrainSettings(epochs=4, fine_tune="none"))
    assert (kept.end, kept.encoder) == (4, "frozen")
    [whole] = plan_phases("mobilenet_v2", TrainSettings(epochs=4, frozen_epochs=0, fine_tune="all"))
    assert (whole.start, whole.encoder) == (0, "all")
    [short] = plan_phases("hed_vgg16", TrainSettings(epochs=2, frozen_epochs=5))
    assert (short.end, short.encoder) == (2, "frozen")


# --------------------------------------------------------------------------- sampling and augmentation


def test_epoch_draws_oversample_positives_and_are_reproducible() -> None:
    positive = np.zeros(500, bool)
    positive[:100] = True
    idx, codes = epoch_draws(positive, 3, 20_000, oversampling=3.0, augment=True, seed=1)
    again, _ = epoch_draws(positive, 3, 20_000, oversampling=3.0, augment=True, seed=1)
    other, _ = epoch_draws(positive, 4, 20_000, oversampling=3.0, augment=True, seed=1)
    assert np.array_equal(idx, again) and not np.array_equal(idx, other)
    counts = np.bincount(idx, minlength=500)
    ratio = counts[:100].mean() / counts[100:].mean()
    assert ratio == pytest.approx(3.0, rel=0.05)
    assert set(np.unique(codes)) == set(range(8))
    # fractional oversampling on average, and no oversampling: each tile once per pool
    idx, _ = epoch_draws(positive, 0, 50_000, oversampling=1.5, augment=False, seed=2)
    counts = np.bincount(idx, minlength=500)
    assert counts[:100].mean() / counts[100:].mean() == pytest.approx(1.5, rel=0.05)
    idx, codes = epoch_draws(positive, 0, 500, oversampling=1.0, augment=False, seed=2)
    assert sorted(idx) == list(range(500)) and not codes.any()
    s = TrainSettings(batch_size=8, positive_oversampling=3.0)
    assert epoch_steps(500, 100, s) == 88  # (400 + 300) / 8, rounded up
    assert epoch_steps(500, 100, TrainSettings(steps_per_epoch=5)) == 5


def test_augmentation_covers_the_eight_symmetries() -> None:
    marker = np.zeros((8, 8, 1), np.float32)
    marker[1:6, 2, 0] = 1
    marker[5, 2:5, 0] = 1
    seen = set()
    for code in range(8):
        x, y = augment_pair(
            keras.ops.convert_to_tensor(marker), keras.ops.convert_to_tensor(marker * 2), code
        )
        x = np.asarray(x)
        assert np.array_equal(x, augment_numpy(marker, code)) and np.array_equal(np.asarray(y), 2 * x)
        seen.add(x.tobytes())
    assert len(seen) == 8


def test_pipeline_keeps_x_and_y_aligned_and_validation_apart(tmp_path: Path) -> None:
    x, y = marker_tiles(40)
    splits = ["train"] * 30 + ["val"] * 10
    tiles, manifest = write_tiles(tmp_path, "m", x, y, splits)
    data = open_training_data([tiles], [manifest], ["m"])
    assert isinstance(data.sources[0].x, np.memmap) and isinstance(data.sources[0].y, np.memmap)
    s = TrainSettings(batch_size=5, positive_oversampling=3.0, seed=3)
    ds = train_dataset(data, s, start_epoch=0, end_epoch=8, steps=6)
    codes, drawn = set(), []
    for xb, yb in ds:
        assert xb.shape == (5, SIZE, SIZE, 3) and yb.shape == (5, SIZE, SIZE, 1)
        for xi, yi in zip(np.asarray(xb), np.asarray(yb), strict=True):
            tile = int(xi[0, 0, 1])
            drawn.append(tile)
            assert splits[tile] == "train"
            assert np.array_equal(yi[..., 0], xi[..., 0])  # the mask moved with the marker
            match = [c for c in range(8) if np.array_equal(xi, augment_numpy(x[tile], c))]
            assert match and np.array_equal(yi, augment_numpy(y[tile], match[0]))
            codes.add(match[0] if tile % 4 else -1)
    assert len(drawn) == 8 * 6 * 5
    assert codes >= set(range(8))
    positive = np.array([t % 4 != 0 for t in drawn])
    # 30 train tiles, 22 positive, drawn 3x as often: 66 / (66 + 8) of the draws
    assert positive.mean() == pytest.approx(66 / 74, abs=0.04)
    # the same seed gives the same batches; validation: the val tiles in order, not augmented
    first = next(iter(train_dataset(data, s, start_epoch=0, end_epoch=1, steps=6)))[0]
    assert np.array_equal(np.asarray(first), np.asarray(next(iter(ds))[0]))
    val = np.concatenate([np.asarray(xb) for xb, _ in eval_dataset(data, 4)])
    assert np.array_equal(val, x[30:])


def test_pipeline_exaggerates_and_zooms_each_tile_as_drawn(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    channels = ("slope", "hillshade", "curvature")
    x = rng.random((12, SIZE, SIZE, 3)).astype(np.float32)
    x[..., 2] = 2 * x[..., 2] - 1
    y = np.zeros((12, SIZE, SIZE, 1), np.uint8)
    y[:, 10:20, 8:22] = 1
    tiles, manifest = write_tiles(tmp_path, "s", x, y, ["train"] * 10 + ["val"] * 2, channels)
    data = open_training_data([tiles], [manifest], ["s"])
    x16 = np.asarray(data.sources[0].x, np.float32)
    s = TrainSettings(batch_size=4, seed=9, relief_exaggeration=[0.4, 1.6], resolution_scale=[0.7, 1.4])
    assert s.relief_exaggeration == (0.4, 1.6) and s.shape_augmentation
    ds = train_dataset(data, s, start_epoch=2, end_epoch=4, steps=3, hillshade_altitude_deg=30.0)
    got = [(np.asarray(xb), np.asarray(yb)) for xb, yb in ds]
    for epoch, batches in ((2, got[:3]), (3, got[3:])):
        idx, codes = epoch_draws(data.train_positive, epoch, 12, oversampling=2.0, augment=True, seed=9)
        f, z = shape_draws(12, epoch, seed=9, relief_exaggeration=(0.4, 1.6), resolution_scale=(0.7, 1.4))
        assert len(np.unique(f)) == 12 and len(np.unique(z)) == 12
        xs = np.concatenate([b[0] for b in batches])
        ys = np.concatenate([b[1] for b in batches])
        for k in range(12):
            xe, ye = augment_tile(
                x16[idx[k]], y[idx[k]], channels, exaggeration=f[k], scale=z[k], altitude_deg=30.0
            )
            assert np.allclose(xs[k], augment_numpy(xe, codes[k]), atol=1e-6)
            assert np.array_equal(ys[k], augment_numpy(ye, codes[k]).astype(np.float32))
    # the same draws again (a resumed run), and exaggeration off for the same seed changes only x
    again = [np.asarray(xb) for xb, _ in train_dataset(data, s, start_epoch=2, end_epoch=4, steps=3,
                                                        hillshade_altitude_deg=30.0)]  # fmt: skip
    assert all(np.array_equal(a, b[0]) for a, b in zip(again, got, strict=True))


def test_the_run_fingerprint_follows_the_augmentation(cone_data: dict[str, Any]) -> None:
    data = open_training_data(cone_data["tiles"], cone_data["manifests"])
    model = ModelSettings.from_config(TINY_MODEL)

    def fingerprint(**train: Any) -> str:
        return run_fingerprint(model, TrainSettings(**train), data)

    base = fingerprint()
    assert fingerprint(relief_exaggeration=[0.4, 1.6]) != base
    assert fingerprint(relief_exaggeration=[0.4, 1.6]) != fingerprint(relief_exaggeration=[0.5, 1.6])
    assert fingerprint(resolution_scale=[0.7, 1.4]) != base
    assert fingerprint(max_minutes=3.0) == base and fingerprint(calibrate=False) == base  # resume-neutral
    ex = TrainSettings(relief_exaggeration=[0.4, 1.6])
    assert run_fingerprint(model, ex, data, hillshade_altitude_deg=30.0) != run_fingerprint(
        model, ex, data, hillshade_altitude_deg=45.0
    )


def test_reading_is_lazy(tmp_path: Path) -> None:
    """Iterating over 170 MB of tiles leaves anonymous memory far below the data size."""
    n, size = 2600, 64
    x = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.float16, (n, size, size, 4))
    for i in range(0, n, 200):
        x[i : i + 200] = np.random.default_rng(i).random((min(200, n - i), size, size, 4))
    y = np.zeros((n, size, size, 1), np.uint8)
    y[::2, 10:20, 10:20] = 1
    tiles, manifest = write_tiles(tmp_path, "big", np.asarray(x), y, ["train"] * 100 + ["val"] * (n - 100),
                                  ("a", "b", "c", "d"))  # fmt: skip
    del x
    (tmp_path / "x.npy").unlink()
    small = write_tiles(tmp_path, "small", *cone_tiles(8, size=size), ["train"] * 4 + ["val"] * 4)

    def anon_mb() -> float:
        status = Path("/proc/self/status").read_text().splitlines()
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon")) / 1024

    for _ in eval_dataset(open_training_data([small[0]], [small[1]]), 2):  # warm up TensorFlow
        pass
    before, count = anon_mb(), 0
    data = open_training_data([tiles], [manifest])
    for xb, _ in eval_dataset(data, 50):
        count += int(xb.shape[0])
    assert count == n - 100
    assert anon_mb() - before < 60, "tiles must be read lazily from the memory map"


# --------------------------------------------------------------------------- bad input


def test_bad_training_data_is_one_clear_error(tmp_path: Path) -> None:
    x, y = cone_tiles(12)
    a = write_tiles(tmp_path, "a", x, y, ["train"] * 8 + ["val"] * 4)
    only_val = write_tiles(tmp_path, "v", x, y, ["val"] * 12)
    no_val = write_tiles(tmp_path, "t", x, y, ["train"] * 12)
    empty = write_tiles(tmp_path, "e", x, np.zeros_like(y), ["train"] * 8 + ["val"] * 4)
    two_ch = write_tiles(tmp_path, "c", x[..., :2], y, ["train"] * 12, ("elevation", "slope"))
    big = write_tiles(tmp_path, "b", *cone_tiles(12, size=64), ["train"] * 12)
    cases = [
        ([only_val], r"no training tiles \(split 'train'\) in .*v\.npz"),
        ([empty], r"no cone pixels in the 8 training tiles of .*e\.npz"),
        ([no_val], r"no validation tiles .*t\.npz.*tiling\.split_block_px.*tiling\.val_fraction"),
        ([a, two_ch], r"different channels: .*a\.npz has \[elevation, sobel, clahe\], .*c\.npz has"),
        ([a, big], r"different sizes: .*a\.npz has 32 px tiles, .*b\.npz has 64 px"),
    ]
    for pairs, message in cases:
        with pytest.raises(InputError, match=message):
            open_training_data([p[0] for p in pairs], [p[1] for p in pairs])
    with pytest.raises(InputError, match=r"tiles are 32 px but tiling\.size is 64"):
        open_training_data([a[0]], [a[1]], tile_size=64)
    pd.read_csv(a[1]).iloc[:5].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(InputError, match=r"holds 12 tiles but its manifest .*short\.csv lists 5"):
        open_training_data([a[0]], [tmp_path / "short.csv"])
    out = outputs(tmp_path / "model")
    with pytest.raises(InputError, match="no validation tiles"):
        train_model([no_val[0]], [no_val[1]], out, TrainingRun.from_config(TINY_MODEL))
    assert not any(p.exists() for p in (out.model, out.history, out.curves, out.card))
    assert not (tmp_path / "model.state").exists()


# --------------------------------------------------------------------------- training


def test_tiny_training_learns_and_writes_its_outputs(
    tiny_run: dict[str, Any], cone_data: dict[str, Any]
) -> None:
    out, card, seconds = tiny_run["out"], tiny_run["card"], tiny_run["seconds"]
    history = pd.read_csv(out.history)
    assert list(history["epoch"]) == [1, 2, 3, 4, 5]
    assert history["loss"].iloc[-1] < 0.9 * history["loss"].iloc[0], "training loss should decrease"
    assert history["val_iou"].max() > history["val_iou"].iloc[0]
    assert {"iou", "precision", "recall", "val_loss", "val_precision", "val_recall", "learning_rate"} <= set(
        history
    )
    assert (history["tiles_per_s"] > 0).all()
    # the model card, and the best epoch is the one with the highest val_iou (mode max)
    saved = json.loads(out.card.read_text())
    assert saved == json.loads(json.dumps(card))
    best = int(history["val_iou"].idxmax())
    assert saved["best_epoch"] == best + 1 and saved["best_value"] == pytest.approx(history["val_iou"][best])
    assert saved["best_validation_metrics"]["val_iou"] == pytest.approx(history["val_iou"][best])
    assert saved["monitor"] == "val_iou" and saved["monitor_mode"] == "max" and saved["epochs_run"] == 5
    assert saved["encoder"] == "unet_small" and saved["training_regions"] == ["volcano"]
    # what the encoder started from, truthfully: unet_small has no pretrained weights
    assert saved["encoder_start"] == "random initialisation (unet_small has no pretrained weights)"
    assert saved["settings"]["model"]["encoder_weights"] == "none" and saved["initial_model"] is None
    assert saved["channels"] == ["elevation", "sobel", "clahe"] and saved["tile_size"] == SIZE
    assert saved["config"]["model"] == TINY_MODEL and saved["config"]["train"] == TINY_TRAIN
    assert saved["data_fingerprint"] == data_fingerprint(
        cone_data["tiles"], cone_data["manifests"], ["volcano"]
    )
    assert {"tensorflow", "keras", "numpy", "cinderseg"} <= set(saved["library_versions"])
    assert saved["augmentation"] == {
        "symmetries": True,
        "relief_exaggeration": None,
        "resolution_scale": None,
    }
    # calibration: a temperature fitted on the validation tiles, and pixel F1 at 0.1..0.9 after it
    calibration = saved["calibration"]
    assert saved["temperature"] == calibration["temperature"] > 0 and calibration["fitted"]
    assert calibration["val_bce"] <= calibration["val_bce_uncalibrated"] + 1e-9
    assert calibration["val_pixels"] == 16 * SIZE * SIZE
    assert [r["threshold"] for r in calibration["threshold_scores"]] == pytest.approx(np.arange(1, 10) / 10)
    assert calibration["best_f1"] == max(r["f1"] for r in calibration["threshold_scores"])
    assert saved["tiles"]["train_tiles"] == 48 and saved["tiles"]["val_tiles"] == 16
    assert 0 < saved["wall_time_s"] <= seconds + 1 and saved["sessions"] == 1
    assert out.curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.curves.stat().st_size > 20_000
    assert not (tiny_run["dir"] / "tiny.state").exists(), "the state directory is removed after success"
    assert any("saved for another config or other tiles: starting over" in line for line in tiny_run["log"])
    # the model file: the best epoch's weights, loadable, predicting probabilities of the right shape;
    # weights only (float32), no optimizer state
    assert out.model.stat().st_size < 4 * saved["parameters"] * 1.2 + 200_000
    model = load_model(out.model)
    assert not model.compiled and model.count_params() == saved["parameters"]
    x = np.asarray(
        open_training_data(cone_data["tiles"], cone_data["manifests"]).sources[0].x[48:56], np.float32
    )
    p = np.asarray(model.predict(x, verbose=0))
    assert p.shape == (8, SIZE, SIZE, 1) and 0 <= p.min() and p.max() <= 1
    model.compile(loss="binary_crossentropy", metrics=[keras.metrics.BinaryIoU([1], name="iou")])
    val = open_training_data(cone_data["tiles"], cone_data["manifests"])
    result = model.evaluate(eval_dataset(val, 8), return_dict=True, verbose=0)
    assert result["iou"] == pytest.approx(saved["best_value"], abs=1e-4)


def test_shape_augmentation_is_logged_and_summarised_for_the_card(caplog: pytest.LogCaptureFixture) -> None:
    s = TrainSettings(relief_exaggeration=[0.4, 1.6], resolution_scale=[0.7, 1.4])
    summary = augmentation_summary(s, ("elevation", "sobel", "clahe"), 45.0)
    assert summary["relief_exaggeration"] == [0.4, 1.6] and summary["resolution_scale"] == [0.7, 1.4]
    channels = summary["exaggeration_channels"]
    assert channels["elevation"]["transform"] == "exact"
    assert channels["sobel"]["transform"] == "approximate"  # no slope channel: clipped values are bounds
    assert json.loads(json.dumps(summary)) == summary  # goes into the card as it is
    with caplog.at_level(logging.INFO, logger="cinderseg"):
        log_augmentation(augmentation_summary(s, ("local_relief", "hillshade"), 45.0), features_given=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("channel hillshade: not transformed" in w for w in warnings)
    assert any("sun altitude of 45 deg" in w for w in warnings)
    off = augmentation_summary(TrainSettings(), ("slope",), 45.0)
    assert off == {"symmetries": True, "relief_exaggeration": None, "resolution_scale": None}


def test_frozen_phase_keeps_the_encoder_then_fine_tuning_moves_it(
    tmp_path: Path, cone_data: dict[str, Any]
) -> None:
    snapshots: list[tuple[str, list[np.ndarray]]] = []

    class Snapshot(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            snapshots.append(("begin", [np.array(w) for w in self.model.get_layer("encoder").weights]))

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            snapshots.append(
                (f"epoch{epoch + 1}", [np.array(w) for w in self.model.get_layer("encoder").weights])
            )

    model = {"name": "hed", "encoder": "hed_vgg16", "encoder_weights": "none", "decoder_filters": [16] * 5}
    train = {"epochs": 2, "frozen_epochs": 1, "fine_tune": "top", "fine_tune_blocks": 1, "batch_size": 8}
    run = TrainingRun.from_config(model, train, threads=2)
    card = train_model(
        cone_data["tiles"], cone_data["manifests"], outputs(tmp_path), run, extra_callbacks=[Snapshot()]
    )
    assert [p["name"] for p in card["phases"]] == ["frozen", "fine_tune"]
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history["phase"]) == ["frozen", "fine_tune"]
    assert history["learning_rate"].tolist() == pytest.approx([1e-3, 1e-4])
    (_, start), (_, after_frozen), (_, begin_tune), (_, after_tune) = snapshots
    assert all(np.array_equal(a, b) for a, b in zip(start, after_frozen, strict=True))
    changed = [not np.array_equal(a, b) for a, b in zip(begin_tune, after_tune, strict=True)]
    assert changed[-1] and not changed[0], "only the top block (block5) is fine-tuned"


CHILD = """
import json, sys, time
import keras
from cinderseg.nn.settings import TrainingRun
from cinderseg.nn.train import TrainOutputs, train_model

class SlowAfter(keras.callbacks.Callback):  # gives the test time to kill us after epoch 2
    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 >= 2:
            time.sleep(60)

args = json.loads(sys.argv[1])
out, run = TrainOutputs(**args["out"]), TrainingRun.from_config(**args["run"])
train_model(args["tiles"], args["manifests"], out, run, extra_callbacks=[SlowAfter()])
"""


def test_training_resumes_after_a_kill(
    tmp_path: Path, cone_data: dict[str, Any], tiny_run: dict[str, Any]
) -> None:
    out = outputs(tmp_path / "m")
    args = {
        "tiles": [str(p) for p in cone_data["tiles"]],
        "manifests": [str(p) for p in cone_data["manifests"]],
        "out": {k: str(getattr(out, k)) for k in ("model", "history", "curves", "card")},
        "run": {"model": TINY_MODEL, "train": TINY_TRAIN, "regions": cone_data["regions"], "threads": 2},
    }
    state = tmp_path / "m.state" / STATE_FILE
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 600  # a loaded machine (parallel tests) may take minutes to epoch 2
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if state.exists() and json.loads(state.read_text())["next_epoch"] >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"training ended before the kill:\n{proc.communicate()[1][-3000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed = json.loads(state.read_text())
    assert killed["next_epoch"] == 2 and not out.model.exists()
    # The state names its weights files, and they are complete on disk (files of an older epoch may
    # remain if the kill came between the state's rename and their pruning; the next run prunes them).
    assert killed["last_weights"] == "last-0002.weights.h5"
    assert killed["best"]["file"] == f"best-{killed['best']['epoch']:04d}.weights.h5"
    for name in (killed["last_weights"], killed["best"]["file"]):
        assert (state.parent / name).stat().st_size > 0

    # the next run, as the next `snakemake` call would start it
    card = train_model(args["tiles"], args["manifests"], out, TrainingRun.from_config(**args["run"]))
    history = pd.read_csv(out.history)
    assert list(history["epoch"]) == [1, 2, 3, 4, 5], "no epoch twice, none missing"
    assert list(history["session"]) == [1, 1, 2, 2, 2], "the second run trained epochs 3-5 only"
    assert card["resumed_from_epochs"] == [2] and card["sessions"] == 2 and card["epochs_run"] == 5
    # the same metrics as the uninterrupted run: same tiles, weights, optimizer and dropout states
    uninterrupted = pd.read_csv(tiny_run["out"].history)
    for key in ("loss", "val_loss"):
        assert history[key].tolist() == pytest.approx(uninterrupted[key].tolist(), rel=1e-4), key
    # IoU thresholds each pixel at 0.5: float rounding under another thread count (the test session's
    # TensorFlow against the killed subprocess's) flips a few of 16 384 pixels, moving it by ~2e-4; a resume
    # from other tiles or weights would move it by as much as an epoch does (0.05 here)
    for key in ("iou", "val_iou"):
        assert history[key].tolist() == pytest.approx(uninterrupted[key].tolist(), abs=2e-3), key
    assert not state.parent.exists()
    model = load_model(out.model)
    assert model.output_shape == (None, SIZE, SIZE, 1)


def test_a_run_interrupted_while_writing_outputs_finishes_without_training(
    tmp_path: Path, cone_data: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import cinderseg.nn.train as train

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk full")

    out = outputs(tmp_path / "m")
    run = TrainingRun.from_config(TINY_MODEL, {"epochs": 1, "batch_size": 16})
    with monkeypatch.context() as m:
        m.setattr(train, "plot_training_curves", crash)
        with pytest.raises(RuntimeError, match="disk full"):
            train_model(cone_data["tiles"], cone_data["manifests"], out, run)
    assert not out.model.exists()
    assert json.loads((tmp_path / "m.state" / STATE_FILE).read_text())["finished"]
    card = train_model(cone_data["tiles"], cone_data["manifests"], out, run)
    assert card["resumed_from_epochs"] == [1] and card["epochs_run"] == 1 and card["sessions"] == 2
    assert pd.read_csv(out.history)["session"].tolist() == [1]
    assert load_model(out.model).output_shape == (None, SIZE, SIZE, 1)


def test_time_budget_and_resumed_counters() -> None:
    class FakeModel:
        stop_training = False

    now = [0.0]
    budget = TimeBudget(2.0, clock=lambda: now[0])
    budget.set_model(FakeModel())
    now[0] = 100.0
    budget.on_epoch_end(0)
    assert not budget.model.stop_training
    now[0] = 121.0
    budget.on_epoch_end(1)
    assert budget.model.stop_training and budget.exceeded
    resume = {"early_stopping": {"wait": 2, "best": 0.4, "best_epoch": 3},
              "reduce_lr": {"wait": 1, "best": 0.4, "cooldown": 0}}  # fmt: skip
    _, es, rl, _ = make_callbacks(TrainSettings(), best_path_template="b-{epoch}.weights.h5", resume=resume)
    es.on_train_begin()
    rl.on_train_begin()
    assert (es.wait, es.best, es.best_epoch) == (2, 0.4, 3) and (rl.wait, rl.best) == (1, 0.4)
