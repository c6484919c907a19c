"""Losses and metrics against values computed by hand on small arrays."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from cinderseg.core.errors import ConfigError
from cinderseg.nn.losses import (
    LOSSES,
    TverskyLoss,
    bce_loss,
    dice_loss,
    focal_tversky_loss,
    iou_metric,
    make_loss,
    make_metrics,
    precision_metric,
    recall_metric,
    tversky_loss,
)

# One 2x2 tile: truth [1, 1, 0, 0], prediction [0.9, 0.4, 0.2, 0.0]
# TP = 0.9 + 0.4 = 1.3, FP = 0.2, FN = 0.1 + 0.6 = 0.7
Y = np.array([1, 1, 0, 0], dtype=np.float32).reshape(1, 2, 2, 1)
P = np.array([0.9, 0.4, 0.2, 0.0], dtype=np.float32).reshape(1, 2, 2, 1)


def value(loss, y=Y, p=P) -> float:
    return float(keras.ops.convert_to_numpy(loss(y, p)))


def test_tversky_hand_computed() -> None:
    # smooth 0: 1 - 1.3 / (1.3 + 0.3 * 0.2 + 0.7 * 0.7) = 0.55 / 1.85
    assert value(tversky_loss(0.3, 0.7, smooth=0.0)) == pytest.approx(0.55 / 1.85, rel=1e-5)
    # smooth 1: 1 - 2.3 / 2.85
    assert value(tversky_loss(0.3, 0.7, smooth=1.0)) == pytest.approx(0.55 / 2.85, rel=1e-5)
    # alpha weights false positives, beta false negatives: swapping them changes the loss
    # 1 - 1.3 / (1.3 + 0.7 * 0.2 + 0.3 * 0.7) = 0.35 / 1.65
    assert value(tversky_loss(0.7, 0.3, smooth=0.0)) == pytest.approx(0.35 / 1.65, rel=1e-5)


def test_dice_focal_and_bce_hand_computed() -> None:
    # Dice: 1 - 2 * 1.3 / (2 * 1.3 + 0.2 + 0.7) = 0.9 / 3.5
    assert value(dice_loss(smooth=0.0)) == pytest.approx(0.9 / 3.5, rel=1e-5)
    # focal Tversky: (0.55 / 1.85) ** 0.75
    assert value(focal_tversky_loss(0.3, 0.7, 0.75, smooth=0.0)) == pytest.approx(
        (0.55 / 1.85) ** 0.75, rel=1e-5
    )
    # BCE: -(ln 0.9 + ln 0.4 + ln(1 - 0.2) + ln(1 - 0)) / 4
    expected = -(math.log(0.9) + math.log(0.4) + math.log(0.8) + 0.0) / 4
    assert value(bce_loss()) == pytest.approx(expected, rel=1e-4)


def test_overlap_losses_pool_the_batch() -> None:
    # tile A: no cone, one false-positive pixel of 0.5; tile B: perfect.
    y = np.array([[0, 0, 0, 0], [1, 1, 0, 0]], dtype=np.float32).reshape(2, 2, 2, 1)
    p = np.array([[0.5, 0, 0, 0], [1, 1, 0, 0]], dtype=np.float32).reshape(2, 2, 2, 1)
    # pooled: TP = 2, FP = 0.5, FN = 0: 1 - 2 / (2 + 0.3 * 0.5) (per-tile mean would give 0.5)
    assert value(tversky_loss(0.3, 0.7, smooth=0.0), y, p) == pytest.approx(0.15 / 2.15, rel=1e-5)
    # a perfect prediction has zero loss, an all-wrong one the maximum 1 (smooth 0)
    assert value(tversky_loss(smooth=0.0), Y, Y) == pytest.approx(0.0, abs=1e-6)
    assert value(dice_loss(smooth=0.0), Y, 1.0 - Y) == pytest.approx(1.0, abs=1e-6)


def test_make_loss_names_and_parameters() -> None:
    kw = {"tversky_alpha": 0.2, "tversky_beta": 0.8, "focal_gamma": 2.0}
    losses = {name: make_loss(name, **kw) for name in LOSSES}
    assert set(LOSSES) == {"tversky", "focal_tversky", "dice", "bce"}
    # 1 - 1.3 / (1.3 + 0.2 * 0.2 + 0.8 * 0.7 + 1) = 0.6 / 2.9 (smooth 1)
    assert value(losses["tversky"]) == pytest.approx(0.6 / 2.9, rel=1e-5)
    assert value(losses["focal_tversky"]) == pytest.approx((0.6 / 2.9) ** 2.0, rel=1e-5)
    assert value(losses["dice"]) == pytest.approx(1 - 3.6 / 4.5, rel=1e-5)
    assert isinstance(losses["bce"], keras.losses.BinaryCrossentropy)
    with pytest.raises(ConfigError, match=r"train\.loss: 'hinge'"):
        make_loss("hinge", **kw)


def test_losses_serialize_in_safe_mode() -> None:
    loss = focal_tversky_loss(0.4, 0.6, 0.5, smooth=2.0)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss), safe_mode=True
    )
    assert isinstance(restored, TverskyLoss)
    assert (restored.alpha, restored.beta, restored.gamma, restored.smooth) == (0.4, 0.6, 0.5, 2.0)
    assert value(restored) == pytest.approx(value(loss), rel=1e-6)


def test_metrics_hand_computed_and_accumulated_over_batches() -> None:
    # truth [1, 1, 0, 0, 1], prediction > 0.5 -> [1, 0, 1, 0, 1]: TP 2, FP 1, FN 1
    y1 = np.array([1, 1, 0, 0, 1], dtype=np.float32).reshape(1, 1, 5, 1)
    p1 = np.array([0.9, 0.4, 0.6, 0.1, 0.7], dtype=np.float32).reshape(1, 1, 5, 1)
    metrics = {"iou": iou_metric(), "precision": precision_metric(), "recall": recall_metric()}
    assert [m.name for m in make_metrics()] == ["iou", "precision", "recall"]
    for m in metrics.values():
        m.update_state(y1, p1)
    got = {k: float(m.result()) for k, m in metrics.items()}
    assert got == pytest.approx({"iou": 2 / 4, "precision": 2 / 3, "recall": 2 / 3}, rel=1e-6)
    # a second batch with one more false positive: TP 2, FP 2, FN 1 over the epoch
    y2 = np.zeros((1, 1, 2, 1), dtype=np.float32)
    p2 = np.array([0.8, 0.1], dtype=np.float32).reshape(1, 1, 2, 1)
    for m in metrics.values():
        m.update_state(y2, p2)
    got = {k: float(m.result()) for k, m in metrics.items()}
    assert got == pytest.approx({"iou": 2 / 5, "precision": 2 / 4, "recall": 2 / 3}, rel=1e-6)


def test_metric_threshold() -> None:
    y = np.array([1, 0], dtype=np.float32).reshape(1, 1, 2, 1)
    p = np.array([0.6, 0.3], dtype=np.float32).reshape(1, 1, 2, 1)
    strict = iou_metric(threshold=0.7)
    strict.update_state(y, p)
    assert float(strict.result()) == pytest.approx(0.0)
    lenient = iou_metric(threshold=0.2)
    lenient.update_state(y, p)
    assert float(lenient.result()) == pytest.approx(0.5)
