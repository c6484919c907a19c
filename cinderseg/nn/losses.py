"""Segmentation losses and metrics for the U-Net (imports Keras; GIS modules never import this).

Masks ``y_true`` are 0/1 (cone = 1), predictions ``y_pred`` sigmoid probabilities in 0..1, both
shaped (batch, H, W, 1). The overlap losses are computed over the whole batch at once (all pixels
of all tiles pooled, as in the tutorial), so tiles without cone pixels do not each contribute a
near-maximal loss for a few false-positive pixels:

- ``TP = sum(y p)``, ``FP = sum((1 - y) p)``, ``FN = sum(y (1 - p))``
- Tversky index ``TI = (TP + smooth) / (TP + alpha FP + beta FN + smooth)``; loss ``1 - TI``
  (alpha weights false positives, beta false negatives; beta > alpha favours recall)
- focal Tversky ``(1 - TI) ** gamma``; Dice = Tversky with alpha = beta = 0.5.

Every loss is an instance of the registered, serializable :class:`TverskyLoss` or Keras'
``BinaryCrossentropy``, and the metrics are built-in Keras metrics, so a model saved compiled
(``.keras``) loads with ``safe_mode=True`` once this module is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from cinderseg.core.errors import ConfigError

LOSSES: tuple[str, ...] = ("tversky", "focal_tversky", "dice", "bce")
"""Loss names of the schema's ``train.loss`` enum."""


@keras.saving.register_keras_serializable(package="cinderseg")
class TverskyLoss(keras.losses.Loss):
    """``(1 - TI) ** gamma`` with the Tversky index TI pooled over the batch (see the module doc)."""

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 1.0,
        smooth: float = 1.0,
        name: str = "tversky",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.smooth = float(smooth)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        tp = ops.sum(y_true * y_pred)
        fp = ops.sum((1.0 - y_true) * y_pred)
        fn = ops.sum(y_true * (1.0 - y_pred))
        index = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
        loss = 1.0 - index
        if self.gamma != 1.0:
            loss = ops.power(ops.maximum(loss, 0.0), self.gamma)
        return loss

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(alpha=self.alpha, beta=self.beta, gamma=self.gamma, smooth=self.smooth)
        return config


def tversky_loss(alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0) -> Callable[..., Any]:
    """Tversky loss ``1 - TI``; alpha weights false positives, beta false negatives."""
    return TverskyLoss(alpha=alpha, beta=beta, gamma=1.0, smooth=smooth, name="tversky")


def focal_tversky_loss(
    alpha: float = 0.3, beta: float = 0.7, gamma: float = 0.75, smooth: float = 1.0
) -> Callable[..., Any]:
    """Focal Tversky loss ``(1 - TI) ** gamma`` (Abraham & Khan 2019; the tutorial's gamma 0.75)."""
    return TverskyLoss(alpha=alpha, beta=beta, gamma=gamma, smooth=smooth, name="focal_tversky")


def dice_loss(smooth: float = 1.0) -> Callable[..., Any]:
    """Soft Dice loss ``1 - (2 TP + smooth) / (2 TP + FP + FN + smooth)`` (Tversky, alpha = beta = 0.5)."""
    # (TP + s/2) / (TP + FP/2 + FN/2 + s/2) is the Dice ratio above
    return TverskyLoss(alpha=0.5, beta=0.5, gamma=1.0, smooth=smooth / 2.0, name="dice")


def bce_loss() -> Callable[..., Any]:
    """Binary cross-entropy on probabilities, averaged over pixels and tiles."""
    return keras.losses.BinaryCrossentropy(name="bce")


def make_loss(
    name: str, *, tversky_alpha: float, tversky_beta: float, focal_gamma: float
) -> Callable[..., Any]:
    """The loss called ``name`` (``train.loss``: tversky, focal_tversky, dice or bce)."""
    if name == "tversky":
        return tversky_loss(tversky_alpha, tversky_beta)
    if name == "focal_tversky":
        return focal_tversky_loss(tversky_alpha, tversky_beta, focal_gamma)
    if name == "dice":
        return dice_loss()
    if name == "bce":
        return bce_loss()
    raise ConfigError(f"train.loss: {name!r} is not one of: {', '.join(LOSSES)}")


def iou_metric(threshold: float = 0.5) -> keras.metrics.Metric:
    """IoU (Jaccard) of the cone class, ``TP / (TP + FP + FN)`` over all pixels seen in the epoch,
    predictions thresholded at ``threshold``; logged as ``iou`` / ``val_iou``."""
    return keras.metrics.BinaryIoU(target_class_ids=[1], threshold=threshold, name="iou")


def precision_metric(threshold: float = 0.5) -> keras.metrics.Metric:
    """Pixel precision ``TP / (TP + FP)`` over the epoch at ``threshold``; logged as ``precision``."""
    return keras.metrics.Precision(thresholds=threshold, name="precision")


def recall_metric(threshold: float = 0.5) -> keras.metrics.Metric:
    """Pixel recall ``TP / (TP + FN)`` over the epoch at ``threshold``; logged as ``recall``."""
    return keras.metrics.Recall(thresholds=threshold, name="recall")


def make_metrics(threshold: float = 0.5) -> list[keras.metrics.Metric]:
    """Fresh ``[iou, precision, recall]`` metric objects for ``model.compile(metrics=...)``."""
    return [iou_metric(threshold), precision_metric(threshold), recall_metric(threshold)]
