"""Whole-region prediction: the trained U-Net slid over a features raster in blended windows.

The window grid, blending weights, strip writer and test-time augmentation are in
:mod:`cinderseg.nn.windows`. Windows without any valid pixel (e.g. sea) are not predicted. Progress
goes through :func:`cinderseg.core.progress.track` (a bar on a terminal, a log line per tenth of the
windows otherwise).

The network (:class:`Predictor` for Keras, :class:`cinderseg.nn.onnx.OnnxPredictor` for ONNX
Runtime; ``predict.runtime``). With ``auto`` (the default) a ``model.onnx`` exported from the very
``model.keras`` beside it (the train rule writes one) runs in ONNX Runtime and TensorFlow is never
imported (6 s and 660 MiB saved per job); on a machine with an NVIDIA GPU, or without a fit ONNX file,
Keras runs it. Both give the same probabilities within 1e-5. Keras: the U-Net is fully
convolutional: a model trained on 224 px tiles is rebuilt at the window size and its weights copied
(:func:`load_predictor`), and the same network with other input shapes
(:func:`cinderseg.nn.model.reshape_model`) predicts the smaller windows at the raster's edges.
Networks that cannot be reshaped (size-dependent padding layers, fixed-size models without a card)
keep their size. The network sees ``batch_size`` windows per call (Keras: ``predict_on_batch``, faster
on CPU than an eager call, 0.43 s against 0.57 s for a 1024 px unet_small window on 2 cores, with half
the peak memory).

I/O. One background thread reads the next batch of windows and writes the finished output rows while
the network runs on the current batch (GDAL and ONNX Runtime release Python's lock); each window's
2-D blending weight is made once per window kind and reused.

Calibration: the model card's ``temperature`` T (fitted on the validation tiles after training,
see :mod:`cinderseg.nn.calibrate`; a card without it, or no card, means T = 1) turns every network
output p into ``sigmoid(logit(p) / T)`` before TTA averaging and blending, so that the map's
probabilities are calibrated; the 0.5 decision is unchanged by T.

Output: a float32 probability GeoTIFF on the features raster's grid (same CRS, transform and size,
hence the DEM's), nodata ``NODATA_FLOAT``, tiled and compressed
(:func:`cinderseg.core.raster.geotiff_profile`) with internal average overviews (2, 4, 8, ...), band
description ``probability`` and tags naming the model, window, overlap, crop, TTA and temperature;
written atomically.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio

from cinderseg.core.errors import ConfigError, InputError
from cinderseg.core.modelcard import MODEL_CARD, read_model_card
from cinderseg.core.progress import track
from cinderseg.core.raster import NODATA_FLOAT, geotiff_profile, open_raster
from cinderseg.core.settings import is_int, is_number
from cinderseg.nn.calibrate import apply_temperature
from cinderseg.nn.onnx import OnnxPredictor, onnx_path, onnx_predictor, onnx_session, runtime_line
from cinderseg.nn.runtime import NOTICE, nvidia_driver
from cinderseg.nn.settings import ModelSettings, PredictSettings
from cinderseg.nn.windows import (
    MIN_WINDOW_PX,
    WindowPlan,
    Windows,
    axis_profiles,
    axis_windows,
    effective_window,
    write_probability,
)

if TYPE_CHECKING:
    import keras

log = logging.getLogger("cinderseg")

REFERENCE_TILE_PX = 224
"""Tile side used to express throughput as tiles/s (the tutorial's and the default training tile)."""

GDAL_CACHE_BYTES = 16 * 2**20
"""GDAL's block cache while predicting: the features are read window by window and the output
written row by row, so blocks are rarely read twice; more cache only grows the memory with the
raster (the workflow's steps otherwise allow 256 MiB)."""


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
    runtime: str = field(default="keras", init=False)

    @property
    def name(self) -> str:
        """How the model is named in messages and tags."""
        return str(self.path) if self.path is not None else self.model.name

    @property
    def reshapable(self) -> bool:
        """Whether :meth:`model_for` may give other window shapes: models without a fixed input size,
        and cinderseg U-Nets (with a card) without size-dependent padding or cropping layers."""
        import keras

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
            from cinderseg.nn import model as nn_model

            self._flexible.append(nn_model.reshape_model(self.model, None, None))
        return self._flexible[0]

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The output's (rows, columns) for a ``height`` x ``width`` px window (an error if the network
        takes no such window)."""
        out = tuple(self.model_for(height, width).compute_output_shape((1, height, width, self.n_channels)))
        return out[1], out[2]

    def run(self, x: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (B, h, w) float32 of windows ``x`` (B, h, w, C) float32."""
        model = self.model_for(x.shape[1], x.shape[2])
        return self.calibrated(np.asarray(model.predict_on_batch(x))[..., 0])


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
    from cinderseg.nn.model import load_model, model_io

    path = Path(model_path)
    model = load_model(path, compile=False)
    height, width, n_channels = model_io(model, str(path))
    card = read_model_card(path, required=False)
    if card is None:
        log.info("model %s: no %s beside it; used as it is", path, MODEL_CARD)
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
    channels, tile_size, model_section, temperature = _card_entries(path, card, n_channels)
    if expected_tile_size is not None and int(expected_tile_size) != tile_size:
        raise InputError(
            f"model {path}: trained on {tile_size} px tiles but tiling.size is {expected_tile_size}; "
            f"set tiling.size: {tile_size} or retrain the model"
        )
    predictor = Predictor(model, int(height or tile_size), n_channels, channels, tile_size, path, temperature)
    if expected_channels is not None:
        check_channels(predictor, expected_channels, source="the features")
    if window_px == height == width:
        return predictor
    rebuilt = _rebuilt(path, model, model_section, int(window_px), n_channels)
    return Predictor(rebuilt, int(window_px), n_channels, channels, tile_size, path, temperature)


def _card_entries(
    path: Path, card: Mapping[str, Any], n_channels: int
) -> tuple[tuple[str, ...], int, dict[str, Any], float]:
    """The card's channels, tile size, model section and temperature; InputError if it lacks them or
    they do not fit a model of ``n_channels`` inputs."""
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
            f"model {path}: its {MODEL_CARD} lacks 'channels' (list of names), 'tile_size' or "
            "'settings.model'; not a cinderseg model card"
        )
    if len(channels) != n_channels:
        raise InputError(
            f"model {path}: its card lists {len(channels)} channel(s) but the model takes {n_channels}"
        )
    temperature = card.get("temperature", 1.0)
    if not is_number(temperature) or temperature <= 0:
        raise InputError(f"model {path}: its card's temperature must be a number > 0, got {temperature!r}")
    return tuple(channels), int(tile_size), model_section, float(temperature)


def _rebuilt(
    path: Path, model: keras.Model, model_section: Mapping[str, Any], window_px: int, n_channels: int
) -> keras.Model:
    """The card's U-Net built for ``window_px`` windows (no encoder weights loaded) with ``model``'s
    weights; InputError if they do not fit."""
    from cinderseg.nn.model import build_unet

    try:
        settings = ModelSettings.from_config({**model_section, "encoder_weights": "none"})
        rebuilt = build_unet(settings, tile_size=window_px, n_channels=n_channels)
        rebuilt.set_weights(model.get_weights())
    except ConfigError as err:
        raise InputError(f"model {path}: cannot rebuild it at {window_px} px windows: {err}") from err
    except ValueError as err:
        reason = " ".join(str(err).split())[:200]
        raise InputError(
            f"model {path}: its weights do not fit the U-Net described by its card ({reason})"
        ) from err
    return rebuilt


# --------------------------------------------------------------------------- prediction


Network = Predictor | OnnxPredictor
"""What runs the windows: Keras (:class:`Predictor`) or ONNX Runtime (:class:`OnnxPredictor`)."""


def predict_probability(
    features_path: str | os.PathLike[str],
    model: str | os.PathLike[str] | Network | keras.Model,
    out_path: str | os.PathLike[str],
    settings: PredictSettings | None = None,
    *,
    expected_channels: Sequence[str] | None = None,
    expected_tile_size: int | None = None,
    region: str = "",
    threads: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict the cone probability of every pixel of a features raster; write it as a GeoTIFF.

    ``features_path``: the features step's float32 raster (bands named by channel, metric CRS).
    ``model``: a ``.keras`` file (with ``model_card.json`` beside it, and ``model.onnx`` for ONNX
    Runtime; see :func:`load_predictor` and ``predict.runtime``), a :class:`Predictor` or
    :class:`OnnxPredictor` (used at its window size) or a Keras model (used as it is).
    ``expected_channels`` (the config's ``features.channels``) must equal the features raster's band
    names and the model's channels; ``expected_tile_size`` (the config's ``tiling.size``) the model's
    training tile size. ``threads``: CPU threads of the network. ``progress``: report the windows done.
    Returns statistics: windows, pixels, seconds, km2/s, tiles/s (of 224 px), the runtime etc.
    """
    started = time.perf_counter()
    settings = settings if settings is not None else PredictSettings()
    if not isinstance(settings, PredictSettings):
        settings = PredictSettings.from_config(settings)  # type: ignore[arg-type]
    what = f"features of region '{region}'" if region else "features"
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), open_raster(features_path, what=what) as ds:
        _check_band_names(ds, features_path, what, expected_channels)
        predictor = _predictor(model, settings, ds, expected_channels, expected_tile_size, threads)
        _check_model_bands(predictor, ds, features_path, what)
        plan = _plan(predictor, ds, settings, what)
        area, height, width = _area_km2(ds), ds.height, ds.width
        load_s = time.perf_counter() - started
        description = f"predict {region}" if region else "predict"
        with track(description, plan.windows, unit="windows", enabled=progress, logger=NOTICE) as advance:
            counts = write_probability(ds, out_path, predictor, plan, settings, advance)
    seconds = time.perf_counter() - started
    pixels = height * width
    stats = {
        "region": region,
        "model": predictor.name,
        "runtime": predictor.runtime,
        "width": width,
        "height": height,
        "pixels": pixels,
        "valid_pixels": counts["valid_pixels"],
        "window_px": predictor.window_px,
        "overlap_px": settings.overlap_px,
        "crop_px": settings.crop_px,
        "tta": settings.tta,
        "temperature": predictor.temperature,
        "windows": plan.windows,
        "windows_skipped": counts["windows_skipped"],
        "window_shapes": [list(shape) for shape in plan.shapes],
        "network_calls": counts["network_calls"],
        "coverage": round(sum(h for _, h in plan.rows) * sum(w for _, w in plan.cols) / pixels, 3),
        "overviews": counts["overviews"],
        "threads": int(threads),
        "seconds": round(seconds, 3),
        "load_seconds": round(load_s, 3),
        "predict_seconds": round(seconds - load_s, 3),
        "km2": round(area, 3) if area is not None else None,
        "km2_per_s": round(area / seconds, 3) if area is not None else None,
        "megapixels_per_s": round(pixels / 1e6 / seconds, 3),
        "tiles_per_s": round(pixels / REFERENCE_TILE_PX**2 / seconds, 2),
    }
    log.info("predicted %s: %s", out_path, stats)
    return stats


def _check_band_names(
    ds: rasterio.DatasetReader,
    features_path: str | os.PathLike[str],
    what: str,
    expected_channels: Sequence[str] | None,
) -> None:
    """InputError unless the raster's band names are ``expected_channels`` (if given)."""
    names = list(ds.descriptions)
    if expected_channels is not None and names != [str(c) for c in expected_channels]:
        raise InputError(
            f"{what}: {features_path} has bands [{', '.join(str(n) for n in names)}] but "
            f"features.channels is [{', '.join(str(c) for c in expected_channels)}]; "
            "recompute the features"
        )


def _predictor(
    model: str | os.PathLike[str] | Network | keras.Model,
    settings: PredictSettings,
    ds: rasterio.DatasetReader,
    expected_channels: Sequence[str] | None,
    expected_tile_size: int | None,
    threads: int,
) -> Network:
    """The network for ``model`` on raster ``ds`` (see :func:`predict_probability`); TensorFlow's
    threads are set (and TensorFlow imported) only where Keras runs it."""
    if isinstance(model, Predictor | OnnxPredictor):
        if expected_tile_size is not None and model.tile_size not in (None, expected_tile_size):
            raise InputError(
                f"model {model.name}: trained on {model.tile_size} px tiles but tiling.size "
                f"is {expected_tile_size}"
            )
        return _started(model, threads)
    if "keras" in sys.modules and isinstance(model, sys.modules["keras"].Model):
        from cinderseg.nn.model import model_io

        h, w, c = model_io(model, model.name)
        if h is not None and h != w:
            raise InputError(f"model {model.name}: input {h} x {w} px is not square")
        return _started(Predictor(model, int(h or settings.window_px), c), threads)
    card = read_model_card(model, required=False) if Path(model).is_file() else None
    tile_size = card.get("tile_size") if card else None
    size = effective_window(settings, ds.height, ds.width, tile_size if is_int(tile_size) else None)
    if card is not None and settings.runtime != "keras":
        network = _onnx_predictor(Path(model), card, size, settings.runtime, threads)
        if network is not None:
            if expected_channels is not None:
                check_channels(network, expected_channels, source="the features")
            if expected_tile_size is not None and network.tile_size != int(expected_tile_size):
                raise InputError(
                    f"model {model}: trained on {network.tile_size} px tiles but tiling.size is "
                    f"{expected_tile_size}; set tiling.size: {network.tile_size} or retrain the model"
                )
            return _started(network, threads)
    elif settings.runtime == "onnxruntime" and Path(model).is_file():
        raise InputError(f"model {model}: predict.runtime is onnxruntime but it has no {MODEL_CARD}")
    predictor = load_predictor(
        model, size, expected_channels=expected_channels, expected_tile_size=expected_tile_size
    )
    return _started(predictor, threads)


def _onnx_predictor(
    path: Path, card: Mapping[str, Any], window_px: int, runtime: str, threads: int
) -> OnnxPredictor | None:
    """The ONNX Runtime network of a ``.keras`` model with a card, or None where Keras must run it
    (``runtime`` auto: a GPU, or no fit ``model.onnx``; logged). InputError where ``runtime`` is
    onnxruntime and no fit ONNX file exists."""
    if runtime == "auto" and nvidia_driver():
        log.info("model %s: Keras (TensorFlow uses the GPU)", path)
        return None
    listed = card.get("channels")
    channels, tile_size, _, temperature = _card_entries(
        path, card, len(listed) if isinstance(listed, list) else 0
    )
    n_channels = len(channels)
    session, why = onnx_session(path, window_px, n_channels=n_channels, threads=threads)
    if session is None:
        if runtime == "onnxruntime":
            raise InputError(
                f"model {path}: predict.runtime is onnxruntime but {why}; export it with "
                f"`python -m cinderseg.nn.onnx {path}` or set predict.runtime: auto"
            )
        log.info("model %s: Keras (%s)", path, why)
        return None
    log.info("model %s: ONNX Runtime (%s)", path, onnx_path(path).name)
    return onnx_predictor(
        session, path, window_px, n_channels=n_channels, channels=channels, tile_size=tile_size,
        temperature=temperature,
    )  # fmt: skip


def _started(network: Network, threads: int) -> Network:
    """``network``, with TensorFlow's threads set for Keras, and the device logged."""
    if network.runtime == "keras":
        from cinderseg.nn.runtime import configure_threads

        configure_threads(threads)
    else:
        log.info("%s", runtime_line(threads))
    return network


def _check_model_bands(
    predictor: Predictor, ds: rasterio.DatasetReader, features_path: str | os.PathLike[str], what: str
) -> None:
    """InputError unless the raster's bands fit the model (names if the raster has them, else count)."""
    names = list(ds.descriptions)
    if all(n for n in names):
        check_channels(predictor, names, source=f"{features_path}")
    elif predictor.n_channels != ds.count:
        raise InputError(
            f"model {predictor.name}: takes {predictor.n_channels} channel(s) but {features_path} "
            f"has {ds.count} band(s)"
        )
    else:
        log.warning("%s: %s has no band names; channel order not checked", what, features_path)


def _plan(predictor: Network, ds: rasterio.DatasetReader, settings: PredictSettings, what: str) -> WindowPlan:
    """The windows, weights and output profile of raster ``ds`` (logged)."""
    height, width, window = ds.height, ds.width, predictor.window_px
    overlap, crop = settings.overlap_px, settings.crop_px
    if overlap >= window and (height > window or width > window):
        raise InputError(
            f"model {predictor.name}: fixed {window} px input (no {MODEL_CARD} to rebuild it at "
            f"predict.window_px); predict.overlap_px ({overlap}) must be smaller than {window}"
        )
    rows, cols = _window_grid(predictor, height, width, settings)
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
    log.info(
        "%s: %d x %d px in %d x %d windows of %s px (overlap %d, crop %d, tta %s), model %s (%s)",
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
        predictor.runtime,
    )
    return WindowPlan(
        rows, cols, axis_profiles(rows, overlap, crop), axis_profiles(cols, overlap, crop), shapes, profile
    )


def _window_grid(
    predictor: Network, height: int, width: int, settings: PredictSettings
) -> tuple[Windows, Windows]:
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
                out = predictor.output_size(h, w)
                if out != (h, w):
                    raise ValueError(f"{h} x {w} px windows give {out} px outputs")
            return rows, cols
        except Exception as err:  # a network that cannot be reshaped: full-size windows
            log.warning(
                "model %s: full-size windows at the edges (%s: %s)", predictor.name, type(err).__name__, err
            )
    return axis_windows(height, window, overlap), axis_windows(width, window, overlap)


def _area_km2(ds: rasterio.DatasetReader) -> float | None:
    """The raster's area in km2 (None without a projected CRS)."""
    if ds.crs is None or not ds.crs.is_projected:
        return None
    unit = ds.crs.linear_units_factor[1] if ds.crs.linear_units_factor else 1.0
    return abs(ds.transform.a * ds.transform.e) * unit * unit * ds.width * ds.height / 1e6
