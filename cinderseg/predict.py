"""Whole-region prediction: the trained U-Net slid over a features raster in blended windows.

Imports TensorFlow/Keras; the GIS modules never import this one.

Windows. Square windows of ``window_px`` (the U-Net is fully convolutional: a model trained on
224 px tiles is rebuilt at the window size and its weights copied, see :func:`load_predictor`)
start every ``window_px - overlap_px`` px along each axis (:func:`axis_windows`). The last window
of a row or column ends flush with the raster's right/bottom edge and is only as large as needed
(overlapping its neighbour by at least ``overlap_px``, rounded up to 32 px, not below the training
tile size): the same network with other input shapes (:func:`reshape_model`) predicts these edge
windows, so that the edges are not predicted again in full windows (on 6500 x 4000 px, 1.29 window
pixels per raster pixel instead of 1.61). Networks that cannot be reshaped (size-dependent padding
layers, fixed-size models without a card) use full-size windows flush with the edges. An axis
shorter than a window has one window, zero-padded beyond the raster. Nodata feature pixels
(non-finite or the raster's nodata in any band) are 0 for the network, as in the training tiles,
and nodata (``NODATA_FLOAT``) in the output.

Blending. Every window's probabilities enter a running weighted sum and weight sum (the output is
their ratio). A window's weight is the outer product of two 1-D profiles: on a side with a
neighbouring window, ``crop_px`` px of zero weight at the edge (where zero padding and the missing
context spoil the network's output), then a raised-cosine ramp ``sin^2`` up to 1 over the rest of
the overlap (``overlap_px - 2 crop_px`` px), so that two regular neighbours' weights sum to exactly 1
across their overlap; a side on the raster's edge keeps full weight up to the edge. Every pixel thus
has a positive weight sum, and a constant network output stitches to the same constant.

Memory. Windows are processed one window row at a time; the weighted sums live in a strip buffer
one window (plus one output block) high spanning the raster's width, and rows that no later window
touches are written as soon as a whole output block row (256 px) is final. Memory is therefore
independent of the raster's height, linear in its width, and the features are read window by
window. The network sees ``batch_size`` windows per call (``predict_on_batch``: faster on CPU than
an eager ``model(x, training=False)`` call, 0.43 s against 0.57 s for a 1024 px unet_small window on
2 cores, with half the peak memory). Windows without any valid pixel (e.g. sea) are not predicted.

Test-time augmentation (``tta``): ``flips`` averages the identity and the horizontal and vertical
flips, ``d4`` the 8 symmetries of the square (quarter turns, each optionally mirrored); each
prediction is transformed back before averaging. Cones have no orientation, so this costs 3x / 8x
time for a smoother map.

Calibration: the model card's ``temperature`` T (fitted on the validation tiles after training,
see :mod:`cinderseg.calibrate`; a card without it, or no card, means T = 1) turns every network
output p into ``sigmoid(logit(p) / T)`` before TTA averaging and blending, so that the map's
probabilities are calibrated; the 0.5 decision is unchanged by T.

Output: a float32 probability GeoTIFF on the features raster's grid (same CRS, transform and size,
hence the DEM's), nodata ``NODATA_FLOAT``, tiled and compressed (:func:`cinderseg.raster.geotiff_profile`)
with internal average overviews (2, 4, 8, ...), band description ``probability`` and tags naming
the model, window, overlap, crop, TTA and temperature; written atomically.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import keras
import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from cinderseg.calibrate import apply_temperature
from cinderseg.config import MODEL_CARD
from cinderseg.errors import ConfigError, InputError
from cinderseg.model import DOWNSAMPLING, ModelSettings, build_unet, load_model
from cinderseg.raster import BLOCK_PX, NODATA_FLOAT, atomic_write, geotiff_profile, open_raster
from cinderseg.settings import is_int, is_number, known_keys_only
from cinderseg.train import configure_threads

log = logging.getLogger("cinderseg")

TTA_MODES: tuple[str, ...] = ("none", "flips", "d4")
"""Values of ``predict.tta``."""
CARD_NAME = MODEL_CARD
"""The model card's file name, beside the ``.keras`` model."""
MIN_WINDOW_PX = 64
REFERENCE_TILE_PX = 224
"""Tile side used to express throughput as tiles/s (the tutorial's and the default training tile)."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class PredictSettings:
    """Settings of the predict step: the schema's ``predict`` section (window sizes in pixels).

    The section's ``model`` key (which model file to apply) is an input of the step, not a setting:
    :meth:`from_config` accepts and drops it.
    """

    window_px: int = 1024
    overlap_px: int = 128
    crop_px: int = 16
    tta: str = "none"
    batch_size: int = 1

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, expected: str) -> None:
            if not ok:
                raise ConfigError(f"predict.{key}: expected {expected}, got {getattr(self, key)!r}")

        need(
            is_int(self.window_px) and self.window_px >= MIN_WINDOW_PX and self.window_px % DOWNSAMPLING == 0,
            "window_px",
            f"a multiple of {DOWNSAMPLING} >= {MIN_WINDOW_PX}",
        )
        need(
            is_int(self.overlap_px) and 0 <= self.overlap_px < self.window_px,
            "overlap_px",
            f"an integer >= 0 and smaller than predict.window_px ({self.window_px})",
        )
        if self.overlap_px == 0:
            need(is_int(self.crop_px) and self.crop_px == 0, "crop_px", "0 when predict.overlap_px is 0")
        else:
            need(
                is_int(self.crop_px) and 0 <= self.crop_px and 2 * self.crop_px < self.overlap_px,
                "crop_px",
                f"an integer >= 0 and less than half of predict.overlap_px ({self.overlap_px})",
            )
        need(self.tta in TTA_MODES, "tta", "one of " + ", ".join(TTA_MODES))
        need(is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "an integer >= 1")

    @classmethod
    def from_config(cls, predict: Mapping[str, Any] | None) -> PredictSettings:
        """Settings from the config's ``predict`` section (missing keys take the defaults; ``model``
        is dropped)."""
        known = [f.name for f in fields(cls)]
        values = known_keys_only("predict", predict, [*known, "model"])
        values.pop("model", None)
        return cls(**values)

    @property
    def stride_px(self) -> int:
        """Distance between the origins of neighbouring windows (the last one may be closer)."""
        return self.window_px - self.overlap_px


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Predictor:
    """A network ready for square windows of ``window_px``, with what its model card says.

    ``channels`` and ``tile_size`` come from the card (None without one); ``path`` is the model file;
    ``temperature`` is the card's calibration temperature (1: none).
    :meth:`model_for` gives the same network for windows of another shape (the raster's edges).
    """

    model: keras.Model
    window_px: int
    n_channels: int
    channels: tuple[str, ...] | None = None
    tile_size: int | None = None
    path: Path | None = None
    temperature: float = 1.0
    _flexible: list[keras.Model] = field(default_factory=list, compare=False, repr=False)

    @property
    def name(self) -> str:
        """How the model is named in messages and tags."""
        return str(self.path) if self.path is not None else self.model.name

    @property
    def reshapable(self) -> bool:
        """Whether :meth:`model_for` may give other window shapes: models without a fixed input size,
        and cinderseg U-Nets (with a card) without size-dependent padding or cropping layers."""
        height, width = tuple(self.model.inputs[0].shape)[1:3]
        if height is None and width is None:
            return True
        if self.channels is None:
            return False  # a fixed-size model without a card is used as it is
        return not any(
            isinstance(layer, (keras.layers.ZeroPadding2D, keras.layers.Cropping2D))
            for layer in self.model.layers
        )

    def calibrated(self, prob: np.ndarray) -> np.ndarray:
        """The network's probabilities calibrated with :attr:`temperature` (unchanged at 1)."""
        return apply_temperature(prob, self.temperature)

    def model_for(self, height: int, width: int) -> keras.Model:
        """The network for ``height`` x ``width`` px windows: :attr:`model` for its own size, else one
        copy of it taking any size (made once; same weights, same per-pixel results)."""
        shape = tuple(self.model.inputs[0].shape)[1:3]
        if shape == (None, None) or shape == (height, width):
            return self.model
        if not self._flexible:
            self._flexible.append(reshape_model(self.model, None, None))
        return self._flexible[0]


def reshape_model(model: keras.Model, height: int | None, width: int | None) -> keras.Model:
    """A copy of a functional model (nested ones included) taking ``height`` x ``width`` px inputs
    (None: any size).

    The input layers' shapes in the model's config are replaced and the weights copied; fully
    convolutional networks give the same per-pixel results. ValueError if the output does not
    come out as (batch, height, width, 1).
    """
    config = model.get_config()

    def resize(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class_name") == "InputLayer" and "batch_shape" in node.get("config", {}):
                shape = list(node["config"]["batch_shape"])
                node["config"]["batch_shape"] = [shape[0], height, width, *shape[3:]]
            for value in node.values():
                resize(value)
        elif isinstance(node, list):
            for value in node:
                resize(value)

    resize(config)
    reshaped = model.__class__.from_config(config)
    if tuple(reshaped.outputs[0].shape)[1:] != (height, width, 1):
        raise ValueError(f"reshaped to {height} x {width} px, the model gives {reshaped.outputs[0].shape}")
    reshaped.set_weights(model.get_weights())
    return reshaped


def read_card(model_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The model card (``model_card.json``) beside a model file, or None if there is none."""
    card_path = Path(model_path).with_name(CARD_NAME)
    if not card_path.is_file():
        return None
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"model {model_path}: unreadable model card {card_path} ({err})") from err
    if not isinstance(card, dict):
        raise InputError(f"model {model_path}: {card_path} is not a model card (not a JSON object)")
    return card


def _model_io(model: keras.Model, name: str) -> tuple[int | None, int | None, int]:
    """(height, width, channels) of the model's input; InputError unless it maps (B,h,w,C) to (B,h,w,1)."""
    shape_in = tuple(model.inputs[0].shape) if model.inputs else ()
    shape_out = tuple(keras.tree.flatten(model.outputs)[0].shape) if model.outputs else ()
    if len(shape_in) != 4 or shape_in[3] is None or len(shape_out) != 4 or shape_out[3] != 1:
        raise InputError(
            f"model {name}: expected an input (batch, height, width, channels) and one output "
            f"probability (batch, height, width, 1), got {shape_in} -> {shape_out}"
        )
    if shape_in[1:3] != shape_out[1:3]:
        raise InputError(f"model {name}: output size {shape_out[1:3]} is not its input size {shape_in[1:3]}")
    return shape_in[1], shape_in[2], int(shape_in[3])


def check_channels(
    predictor: Predictor, channels: Sequence[str], *, source: str = "the features raster"
) -> None:
    """InputError naming the model unless ``channels`` (names, in band order) fit the model.

    With a model card, names and order must equal the card's; without one only the count is checked.
    """
    channels = [str(c) for c in channels]
    if predictor.channels is not None and list(predictor.channels) != channels:
        same_set = sorted(predictor.channels) == sorted(channels)
        raise InputError(
            f"model {predictor.name}: trained on channels [{', '.join(predictor.channels)}] but "
            f"{source} has [{', '.join(channels)}]"
            + (" (same channels in another order; the order matters)" if same_set else "")
            + "; compute the features with the model's channels or use a model trained on these"
        )
    if len(channels) != predictor.n_channels:
        raise InputError(
            f"model {predictor.name}: takes {predictor.n_channels} channel(s) but {source} has "
            f"{len(channels)}"
        )


def load_predictor(
    model_path: str | os.PathLike[str],
    window_px: int,
    *,
    expected_channels: Sequence[str] | None = None,
    expected_tile_size: int | None = None,
) -> Predictor:
    """Load a trained model and make it take ``window_px`` x ``window_px`` windows.

    With ``model_card.json`` beside the model: the U-Net of the card's ``settings.model`` is rebuilt
    at ``window_px`` (a multiple of 32; no encoder weights downloaded) and the trained weights are
    copied (the network is fully convolutional); ``expected_channels`` (names in band order) must equal
    the card's ``channels`` and ``expected_tile_size`` its ``tile_size``. Without a card the model is
    used as it is, at its own input size (``window_px`` only for a model without a fixed size), and only
    the channel count is checked. Mismatches raise InputError with one line naming the model file.
    """
    path = Path(model_path)
    model = load_model(path, compile=False)
    height, width, n_channels = _model_io(model, str(path))
    card = read_card(path)
    if card is None:
        log.info("model %s: no %s beside it; used as it is", path, CARD_NAME)
        if height is None or width is None:
            size = int(window_px)
        elif height != width:
            raise InputError(f"model {path}: input {height} x {width} px is not square (and it has no card)")
        else:
            size = int(height)
        predictor = Predictor(model, size, n_channels, path=path)
        if expected_channels is not None:
            check_channels(predictor, expected_channels, source="the features")
        return predictor

    channels = card.get("channels")
    tile_size = card.get("tile_size")
    model_section = (card.get("settings") or {}).get("model")
    if (
        not isinstance(channels, list)
        or not all(isinstance(c, str) for c in channels)
        or not is_int(tile_size)
        or not isinstance(model_section, dict)
    ):
        raise InputError(
            f"model {path}: its {CARD_NAME} lacks 'channels' (list of names), 'tile_size' or "
            "'settings.model'; not a cinderseg model card"
        )
    if len(channels) != n_channels:
        raise InputError(
            f"model {path}: its card lists {len(channels)} channel(s) but the model takes {n_channels}"
        )
    temperature = card.get("temperature", 1.0)
    if not is_number(temperature) or temperature <= 0:
        raise InputError(f"model {path}: its card's temperature must be a number > 0, got {temperature!r}")
    temperature = float(temperature)
    if expected_tile_size is not None and int(expected_tile_size) != tile_size:
        raise InputError(
            f"model {path}: trained on {tile_size} px tiles but tiling.size is {expected_tile_size}; "
            f"set tiling.size: {tile_size} or retrain the model"
        )
    predictor = Predictor(
        model, int(height or tile_size), n_channels, tuple(channels), int(tile_size), path, temperature
    )
    if expected_channels is not None:
        check_channels(predictor, expected_channels, source="the features")
    if window_px == height == width:
        return predictor
    try:
        settings = ModelSettings.from_config({**model_section, "encoder_weights": "none"})
        rebuilt = build_unet(settings, tile_size=int(window_px), n_channels=n_channels)
        rebuilt.set_weights(model.get_weights())
    except ConfigError as err:
        raise InputError(f"model {path}: cannot rebuild it at {window_px} px windows: {err}") from err
    except ValueError as err:
        reason = " ".join(str(err).split())[:200]
        raise InputError(
            f"model {path}: its weights do not fit the U-Net described by its card ({reason})"
        ) from err
    return Predictor(rebuilt, int(window_px), n_channels, tuple(channels), int(tile_size), path, temperature)


# --------------------------------------------------------------------------- windows and weights


def axis_windows(n: int, window: int, overlap: int, *, min_px: int | None = None) -> list[tuple[int, int]]:
    """(origin, size) of the windows along an axis of ``n`` px.

    Windows of ``window`` px start every ``window - overlap`` px; the last one ends flush with the
    axis' end. With ``min_px`` (a network that takes any multiple of 32) the last window is only as
    large as needed to reach the end while overlapping its neighbour by ``overlap`` px, rounded up to
    a multiple of 32 and at least ``min_px``; otherwise it has the full size. An axis shorter than a
    window has one window, reaching beyond the end (padded), of ``window`` px or, with ``min_px``,
    of the axis' length rounded up to 32 px (at least ``min_px``).
    """

    def last_size(needed: int) -> int:
        if min_px is None:
            return window
        return min(window, max(DOWNSAMPLING * math.ceil(needed / DOWNSAMPLING), min_px))

    if n <= window:
        return [(0, last_size(n))]
    windows = []
    origin = 0
    while origin + window < n:
        windows.append((origin, window))
        origin += window - overlap
    size = last_size(n - origin)
    windows.append((n - size, size))
    return windows


def weight_profile(window: int, overlap: int, crop: int, *, lead: bool, trail: bool) -> np.ndarray:
    """1-D blending weight (float32, ``window`` values) of a window along one axis.

    ``lead``/``trail``: whether a neighbouring window overlaps its start/end. On such a side ``crop``
    px get weight 0, then a ``sin^2`` ramp rises to 1 over ``overlap - 2 crop`` px; the ramps of two
    neighbours ``window - overlap`` apart sum to exactly 1. Sides without a neighbour keep weight 1.
    """
    w = np.ones(window, dtype=np.float64)
    ramp_px = overlap - 2 * crop
    if overlap > 0 and ramp_px > 0:
        t = (np.arange(ramp_px) + 0.5) / ramp_px
        rise = np.concatenate([np.zeros(crop), np.sin(0.5 * np.pi * t) ** 2])  # overlap - crop values
        if lead:
            w[: rise.size] = np.minimum(w[: rise.size], rise)
        if trail:
            w[window - rise.size :] = np.minimum(w[window - rise.size :], rise[::-1])
    return w.astype(np.float32)


def axis_profiles(windows: Sequence[tuple[int, int]], overlap: int, crop: int) -> list[np.ndarray]:
    """The weight profile of each window of :func:`axis_windows` (ramps only towards neighbours)."""
    n = len(windows)
    return [
        weight_profile(size, overlap, crop, lead=i > 0, trail=i + 1 < n)
        for i, (_, size) in enumerate(windows)
    ]


def _tta_transforms(mode: str) -> list[tuple[int, bool]]:
    """(quarter turns, mirror) pairs applied to the windows; mirror flips the columns after turning."""
    if mode == "none":
        return [(0, False)]
    if mode == "flips":
        return [(0, False), (0, True), (2, True)]  # identity, left-right, up-down (= half turn + mirror)
    return [(k, m) for m in (False, True) for k in range(4)]


def _forward(x: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    y = np.rot90(x, turns, axes=(1, 2)) if turns else x
    return y[:, :, ::-1] if mirror else y


def _backward(y: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    if mirror:
        y = y[:, :, ::-1]
    return np.rot90(y, -turns, axes=(1, 2)) if turns else y


def predict_windows(predictor: Predictor, x: np.ndarray, tta: str = "none") -> np.ndarray:
    """Probabilities (B, h, w) float32 of a batch of windows ``x`` (B, h, w, C), averaged over ``tta``."""
    out = np.zeros(x.shape[:3], dtype=np.float32)
    transforms = _tta_transforms(tta)
    for turns, mirror in transforms:
        xt = np.ascontiguousarray(_forward(x, turns, mirror), dtype=np.float32)
        model = predictor.model_for(xt.shape[1], xt.shape[2])
        y = predictor.calibrated(np.asarray(model.predict_on_batch(xt))[..., 0])
        out += _backward(y, turns, mirror)
    if len(transforms) > 1:
        out /= len(transforms)
    return out


# --------------------------------------------------------------------------- output


def overview_factors(height: int, width: int, block: int = BLOCK_PX) -> list[int]:
    """Overview decimation factors 2, 4, ... until the smallest overview fits in one block."""
    factors = []
    factor = 2
    while math.ceil(max(height, width) / (factor // 2)) > block:
        factors.append(factor)
        factor *= 2
    return factors


class _StripWriter:
    """Weighted sums of a strip of rows spanning the raster's width; writes rows as they become final.

    Rows ``[base, base + capacity)`` of the raster are held; :meth:`flush` writes the rows before a
    given one in whole output-block rows (the last chunk may be partial) and moves the strip down.
    """

    def __init__(self, dst: rasterio.io.DatasetWriter, capacity: int, block: int) -> None:
        self.dst = dst
        self.block = block
        self.width = dst.width
        self.height = dst.height
        self.base = 0
        self.acc = np.zeros((capacity, self.width), dtype=np.float32)
        self.wsum = np.zeros((capacity, self.width), dtype=np.float32)
        self.valid = np.zeros((capacity, self.width), dtype=bool)
        self.valid_pixels = 0
        self.uncovered_pixels = 0

    def add(self, row: int, col: int, prob: np.ndarray, weight: np.ndarray, valid: np.ndarray) -> None:
        """Add one window's probabilities (clipped to the raster) with its weights."""
        h, w = prob.shape
        r = row - self.base
        self.acc[r : r + h, col : col + w] += prob * weight
        self.wsum[r : r + h, col : col + w] += weight
        self.valid[r : r + h, col : col + w] = valid

    def flush(self, before: int, *, final: bool = False) -> None:
        """Write the rows above ``before`` (rounded down to a block row unless ``final``)."""
        end = min(before, self.height) if final else (before // self.block) * self.block
        n = end - self.base
        if n <= 0:
            return
        wsum = self.wsum[:n]
        covered = wsum > 0
        valid = self.valid[:n]
        out = np.full((n, self.width), NODATA_FLOAT, dtype=np.float32)
        good = valid & covered
        np.divide(self.acc[:n], wsum, out=out, where=good)
        np.clip(out, 0.0, 1.0, out=out, where=good)
        self.valid_pixels += int(good.sum())
        self.uncovered_pixels += int((valid & ~covered).sum())
        self.dst.write(out, 1, window=Window(0, self.base, self.width, n))
        for buf in (self.acc, self.wsum, self.valid):
            buf[:-n] = buf[n:].copy()
            buf[-n:] = 0
        self.base = end


# --------------------------------------------------------------------------- prediction


def _window_grid(
    predictor: Predictor, height: int, width: int, settings: PredictSettings
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Row and column windows (origin, size) of a raster: smaller windows at the edges where the
    network takes them (prepared here, so that a failure falls back to full-size windows)."""
    window, overlap = predictor.window_px, settings.overlap_px
    if predictor.reshapable:
        min_px = max(predictor.tile_size or MIN_WINDOW_PX, MIN_WINDOW_PX)
        rows = axis_windows(height, window, overlap, min_px=min_px)
        cols = axis_windows(width, window, overlap, min_px=min_px)
        shapes = {(h, w) for _, h in rows for _, w in cols}
        if settings.tta == "d4":
            shapes |= {(w, h) for h, w in shapes}
        try:
            for h, w in shapes:
                out = tuple(predictor.model_for(h, w).compute_output_shape((1, h, w, predictor.n_channels)))
                if out[1:3] != (h, w):
                    raise ValueError(f"{h} x {w} px windows give {out[1:3]} px outputs")
            return rows, cols
        except Exception as err:  # a network that cannot be reshaped: full-size windows
            log.warning(
                "model %s: full-size windows at the edges (%s: %s)", predictor.name, type(err).__name__, err
            )
    return axis_windows(height, window, overlap), axis_windows(width, window, overlap)


def _batches(windows: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices of consecutive windows of the same size, at most ``batch_size`` per batch."""
    batches: list[list[int]] = []
    for j, (_, size) in enumerate(windows):
        if batches and len(batches[-1]) < batch_size and windows[batches[-1][0]][1] == size:
            batches[-1].append(j)
        else:
            batches.append([j])
    return batches


def effective_window(settings: PredictSettings, height: int, width: int, tile_size: int | None) -> int:
    """The window size for a raster: ``window_px``, or for a raster smaller than a window its larger
    side rounded up to a multiple of 32 (not below the training tile size nor 64 px)."""
    fit = DOWNSAMPLING * math.ceil(max(height, width) / DOWNSAMPLING)
    return min(settings.window_px, max(fit, tile_size or 0, MIN_WINDOW_PX))


def _read_window(
    ds: rasterio.DatasetReader, row: int, col: int, size: tuple[int, int], nodata: float | None
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Window of ``size`` (rows, columns) as (rows, columns, C) float32 with nodata and pixels outside
    the raster 0, its valid mask, and the number of its rows/columns inside the raster."""
    h, w = min(size[0], ds.height - row), min(size[1], ds.width - col)
    data = ds.read(window=Window(col, row, w, h), out_dtype="float32")  # (C, h, w)
    bad = ~np.isfinite(data)
    if nodata is not None and not math.isnan(nodata):
        bad |= data == np.float32(nodata)
    bad = bad.any(axis=0)
    x = np.zeros((*size, data.shape[0]), dtype=np.float32)
    x[:h, :w] = np.moveaxis(data, 0, -1)
    x[:h, :w][bad] = 0.0
    return x, ~bad, h, w


def _area_km2(ds: rasterio.DatasetReader) -> float | None:
    if ds.crs is None or not ds.crs.is_projected:
        return None
    unit = ds.crs.linear_units_factor[1] if ds.crs.linear_units_factor else 1.0
    return abs(ds.transform.a * ds.transform.e) * unit * unit * ds.width * ds.height / 1e6


def predict_probability(
    features_path: str | os.PathLike[str],
    model: str | os.PathLike[str] | Predictor | keras.Model,
    out_path: str | os.PathLike[str],
    settings: PredictSettings | None = None,
    *,
    expected_channels: Sequence[str] | None = None,
    expected_tile_size: int | None = None,
    region: str = "",
    threads: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Predict the cone probability of every pixel of a features raster; write it as a GeoTIFF.

    ``features_path``: the features step's float32 raster (bands named by channel, metric CRS).
    ``model``: a ``.keras`` file (with ``model_card.json`` beside it; see :func:`load_predictor`), a
    :class:`Predictor` (used at its window size) or a Keras model (used as it is).
    ``expected_channels`` (the config's ``features.channels``) must equal the features raster's band
    names and the model's channels; ``expected_tile_size`` (the config's ``tiling.size``) the model's
    training tile size. ``threads``: TensorFlow CPU threads. ``progress(done, total)`` is called with
    window counts. Returns statistics: windows, pixels, seconds, km2/s, tiles/s (of 224 px) etc.
    """
    started = time.perf_counter()
    settings = settings if settings is not None else PredictSettings()
    if not isinstance(settings, PredictSettings):
        settings = PredictSettings.from_config(settings)  # type: ignore[arg-type]
    configure_threads(threads)
    what = f"features of region '{region}'" if region else "features"
    with open_raster(features_path, what=what) as ds:
        height, width, n_bands = ds.height, ds.width, ds.count
        names = list(ds.descriptions)
        if expected_channels is not None and names != [str(c) for c in expected_channels]:
            raise InputError(
                f"{what}: {features_path} has bands [{', '.join(str(n) for n in names)}] but "
                f"features.channels is [{', '.join(str(c) for c in expected_channels)}]; "
                "recompute the features"
            )

        if isinstance(model, Predictor):
            predictor = model
            if expected_tile_size is not None and predictor.tile_size not in (None, expected_tile_size):
                raise InputError(
                    f"model {predictor.name}: trained on {predictor.tile_size} px tiles but tiling.size "
                    f"is {expected_tile_size}"
                )
        elif isinstance(model, keras.Model):
            h, w, c = _model_io(model, model.name)
            predictor = Predictor(model, int(h or settings.window_px), c)
            if h is not None and h != w:
                raise InputError(f"model {model.name}: input {h} x {w} px is not square")
        else:
            card = read_card(model) if Path(model).is_file() else None
            tile_size = card.get("tile_size") if card else None
            size = effective_window(settings, height, width, tile_size if is_int(tile_size) else None)
            predictor = load_predictor(
                model, size, expected_channels=expected_channels, expected_tile_size=expected_tile_size
            )
        if all(n for n in names):
            check_channels(predictor, names, source=f"{features_path}")
        elif predictor.n_channels != n_bands:
            raise InputError(
                f"model {predictor.name}: takes {predictor.n_channels} channel(s) but {features_path} "
                f"has {n_bands} band(s)"
            )
        else:
            log.warning("%s: %s has no band names; channel order not checked", what, features_path)

        window = predictor.window_px
        overlap, crop = settings.overlap_px, settings.crop_px
        if overlap >= window and (height > window or width > window):
            raise InputError(
                f"model {predictor.name}: fixed {window} px input (no {CARD_NAME} to rebuild it at "
                f"predict.window_px); predict.overlap_px ({overlap}) must be smaller than {window}"
            )
        rows, cols = _window_grid(predictor, height, width, settings)
        profiles_y = axis_profiles(rows, overlap, crop)
        profiles_x = axis_profiles(cols, overlap, crop)
        shapes = sorted({(h, w) for _, h in rows for _, w in cols}, reverse=True)
        profile = geotiff_profile(
            width=width,
            height=height,
            count=1,
            dtype="float32",
            crs=ds.crs,
            transform=ds.transform,
            nodata=NODATA_FLOAT,
        )
        block = int(profile.get("blockysize", height))
        total = len(rows) * len(cols)
        log.info(
            "%s: %d x %d px in %d x %d windows of %s px (overlap %d, crop %d, tta %s), model %s",
            what,
            width,
            height,
            len(rows),
            len(cols),
            ", ".join(f"{h}x{w}" for h, w in shapes),
            overlap,
            crop,
            settings.tta,
            predictor.name,
        )
        nodata = ds.nodata
        area = _area_km2(ds)
        load_s = time.perf_counter() - started
        done = skipped = network_calls = 0
        with atomic_write(out_path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            dst.set_band_description(1, "probability")
            dst.update_tags(
                model=predictor.name,
                channels=",".join(predictor.channels or names),
                window_px=str(window),
                overlap_px=str(overlap),
                crop_px=str(crop),
                tta=settings.tta,
                temperature=repr(predictor.temperature),
            )
            strip = _StripWriter(dst, window + block, block)
            for i, (row, size_y) in enumerate(rows):
                strip.flush(row)
                for batch in _batches(cols, settings.batch_size):
                    reads = [_read_window(ds, row, cols[j][0], (size_y, cols[j][1]), nodata) for j in batch]
                    keep = [k for k, r in enumerate(reads) if r[1].any()]  # all-nodata windows: no network
                    skipped += len(batch) - len(keep)
                    if keep:
                        network_calls += len(_tta_transforms(settings.tta))
                        x = np.stack([reads[k][0] for k in keep])
                        prob = predict_windows(predictor, x, settings.tta)
                        for p, k in enumerate(keep):
                            _, valid, h, w = reads[k]
                            weight = profiles_y[i][:h, None] * profiles_x[batch[k]][None, :w]
                            strip.add(row, cols[batch[k]][0], prob[p, :h, :w], weight, valid)
                    done += len(batch)
                    if progress is not None:
                        progress(done, total)
            strip.flush(height, final=True)
            if strip.uncovered_pixels:  # cannot happen with validated settings: a bug if it does
                raise RuntimeError(f"{what}: {strip.uncovered_pixels} valid pixels got no window weight")
            factors = overview_factors(height, width)
            if factors:
                dst.build_overviews(factors, Resampling.average)
                dst.update_tags(ns="rio_overview", resampling="average")
    seconds = time.perf_counter() - started
    predict_s = seconds - load_s
    pixels = height * width
    stats = {
        "region": region,
        "model": predictor.name,
        "width": width,
        "height": height,
        "pixels": pixels,
        "valid_pixels": strip.valid_pixels,
        "window_px": window,
        "overlap_px": overlap,
        "crop_px": crop,
        "tta": settings.tta,
        "temperature": predictor.temperature,
        "windows": total,
        "windows_skipped": skipped,
        "window_shapes": [list(shape) for shape in shapes],
        "network_calls": network_calls,
        "coverage": round(sum(h for _, h in rows) * sum(w for _, w in cols) / pixels, 3),
        "overviews": factors,
        "threads": int(threads),
        "seconds": round(seconds, 3),
        "load_seconds": round(load_s, 3),
        "predict_seconds": round(predict_s, 3),
        "km2": round(area, 3) if area is not None else None,
        "km2_per_s": round(area / seconds, 3) if area is not None else None,
        "megapixels_per_s": round(pixels / 1e6 / seconds, 3),
        "tiles_per_s": round(pixels / REFERENCE_TILE_PX**2 / seconds, 2),
    }
    log.info("predicted %s: %s", out_path, stats)
    return stats
