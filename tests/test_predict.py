"""Whole-region prediction: windows, blending, TTA, the rebuilt network, the GeoTIFF, bad inputs.

The models are tiny unet_small networks (base 4) saved with a model card, as training writes them.
Two of them have a known output: a *constant* one (last kernel zero, bias logit(0.3)) and a *local*
one (every kernel of the deeper levels zero, so that the output at a pixel depends only on the
9 x 9 px around it and zero input stays zero at every layer): with crop_px >= 4 its stitched map
must equal the network applied to the whole raster at once, which proves that every window lands
where it belongs and that the blending is a weighted average of identical values.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

try:  # before TensorFlow starts its thread pools (another test module may have)
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
except RuntimeError:
    pass

import keras
import rasterio
import yaml
from rasterio.transform import from_origin

from cinderseg.core.errors import ConfigError, InputError
from cinderseg.core.raster import NODATA_FLOAT, geotiff_profile
from cinderseg.nn.model import build_unet
from cinderseg.nn.onnx import META_ANY_SIZE, OnnxPredictor, export_onnx, onnx_path, onnx_session
from cinderseg.nn.predict import Predictor, load_predictor, predict_probability
from cinderseg.nn.runtime import without_start_up_noise
from cinderseg.nn.settings import ModelSettings, PredictSettings
from cinderseg.nn.windows import (
    WindowBuffers,
    axis_profiles,
    axis_windows,
    overview_factors,
    predict_windows,
    read_window,
    weight_profile,
)

REPO = Path(__file__).resolve().parent.parent
CHANNELS = ["local_relief", "slope", "hillshade"]
SMALL = ModelSettings(encoder="unet_small", encoder_weights="none", base_filters=4)
RF = 4  # receptive-field radius of the local model (4 convolutions of 3 x 3)
TRANSFORM = from_origin(200000.0, 2200000.0, 30.0, 30.0)


# --------------------------------------------------------------------------- helpers


def write_features(
    path: Path,
    height: int,
    width: int,
    channels: list[str] = CHANNELS,
    *,
    nodata_box: tuple[slice, slice] | None = None,
    crs: str | None = "EPSG:32605",
    seed: int = 0,
) -> np.ndarray:
    """A float32 features raster like the features step's; returns its (C, H, W) values (nodata -9999)."""
    x = np.random.default_rng(seed).random((len(channels), height, width), dtype=np.float32)
    if nodata_box is not None:
        x[:, nodata_box[0], nodata_box[1]] = NODATA_FLOAT
    profile = geotiff_profile(
        width=width, height=height, count=len(channels), dtype="float32", crs=crs, transform=TRANSFORM,
        nodata=NODATA_FLOAT,
    )  # fmt: skip
    if crs is None:
        del profile["crs"]
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(x)
        dst.descriptions = tuple(channels)
    return x


def save(
    model: keras.Model, folder: Path, *, channels: list[str] = CHANNELS, tile: int = 64, card: bool = True
) -> Path:
    """Save like training does: model.keras and model_card.json beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.keras"
    model.save(path)
    if card:
        data = {"channels": channels, "tile_size": tile, "settings": {"model": asdict(SMALL)}}
        (folder / "model_card.json").write_text(json.dumps(data))
    return path


def constant_unet(p: float = 0.3, tile: int = 64, channels: int = 3) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = build_unet(SMALL, tile_size=tile, n_channels=channels)
    kernel, _ = model.get_layer("probability").get_weights()
    model.get_layer("probability").set_weights(
        [np.zeros_like(kernel), np.full(1, math.log(p / (1 - p)), "float32")]
    )
    return model


def _layers(model: keras.Model) -> list[keras.layers.Layer]:
    out = []
    for layer in model.layers:
        out.append(layer)
        if isinstance(layer, keras.Model):
            out.extend(_layers(layer))
    return out


def localize(model: keras.Model) -> keras.Model:
    """Zero every kernel below level 0 (and the upsampling into it): a 9 x 9 px local network."""
    for layer in _layers(model):
        deep = re.match(r"^(enc[1-4]|dec[1-3])_(conv|up)", layer.name) or layer.name == "dec0_up"
        if deep and layer.weights:
            layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    return model


def local_unet(tile: int = 64, channels: int = 3, seed: int = 1) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = localize(build_unet(SMALL, tile_size=tile, n_channels=channels))
    out = model.get_layer("probability")
    kernel, bias = out.get_weights()
    out.set_weights([kernel * 20, bias])  # probabilities spread over 0..1 rather than near 0.5
    return model


def run(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict_on_batch(x.astype("float32")))[..., 0]


def direct(
    weights_from: keras.Model, x: np.ndarray, tta: list[tuple[int, bool]] = ((0, False),)
) -> np.ndarray:
    """The local U-Net applied to a whole (C, H, W) raster at once (nodata as 0), TTA averaged."""
    c, h, w = x.shape
    size = 32 * math.ceil(max(h, w) / 32)
    model = build_unet(SMALL, tile_size=size, n_channels=c)
    model.set_weights(weights_from.get_weights())
    padded = np.zeros((1, size, size, c), "float32")
    padded[0, :h, :w] = np.where(x == NODATA_FLOAT, 0, x).transpose(1, 2, 0)
    out = np.zeros((size, size), "float32")
    for turns, mirror in tta:
        t = np.rot90(padded, turns, axes=(1, 2))
        t = t[:, :, ::-1] if mirror else t
        y = run(model, np.ascontiguousarray(t))[0]
        y = y[:, ::-1] if mirror else y
        out += np.rot90(y, -turns)
    return out[:h, :w] / len(tta)


def comparable(height: int, width: int) -> np.ndarray:
    """Pixels where :func:`direct` must equal the stitched map: all but the last RF rows (columns) when
    the whole-raster network's input extends beyond the raster. There it sees zero *input* beyond the
    edge, which its convolutions spread inward, while a window flush with the edge sees zero *padding*
    at every layer."""
    size = 32 * math.ceil(max(height, width) / 32)
    mask = np.ones((height, width), bool)
    if height < size:
        mask[height - RF :] = False
    if width < size:
        mask[:, width - RF :] = False
    return mask


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.fixture(scope="module")
def const_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(constant_unet(), tmp_path_factory.mktemp("const"))


@pytest.fixture(scope="module")
def local_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, keras.Model]:
    model = local_unet()
    return save(model, tmp_path_factory.mktemp("local")), model


# --------------------------------------------------------------------------- settings


def test_settings_defaults_follow_the_schema() -> None:
    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())["properties"]["predict"]
    assert schema["additionalProperties"] is False and schema["default"] == {}
    props = schema["properties"]
    defaults = PredictSettings()
    assert set(props) == set(vars(defaults)) | {"model"}
    assert props["model"]["default"] == ""
    for key in vars(defaults):
        assert getattr(defaults, key) == props[key]["default"], key
    assert PredictSettings.from_config({"model": "x.keras", "tta": "d4"}) == PredictSettings(tta="d4")


@pytest.mark.parametrize(
    ("section", "key"),
    [({"window_px": 100}, "window_px"), ({"window_px": 32}, "window_px"),
     ({"overlap_px": 1024}, "overlap_px"), ({"overlap_px": -1}, "overlap_px"), ({"crop_px": 64}, "crop_px"),
     ({"overlap_px": 0}, "crop_px"),
     ({"tta": "rot"}, "tta"), ({"batch_size": 0}, "batch_size"), ({"window_px": True}, "window_px")],
)  # fmt: skip
def test_bad_settings_name_the_key(section: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^predict\.{key}: ") as err:
        PredictSettings.from_config(section)
    assert "\n" not in str(err.value)


def test_an_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^predict: unknown key 'window' \(allowed: .*window_px"):
        PredictSettings.from_config({"window": 1})


# --------------------------------------------------------------------------- windows and weights


def test_window_grid_covers_the_axis_with_the_last_window_flush() -> None:
    assert axis_windows(50, 64, 16) == [(0, 64)]  # padded beyond the end
    assert axis_windows(64, 64, 16) == [(0, 64)]
    assert axis_windows(160, 64, 16) == [(0, 64), (48, 64), (96, 64)]  # exactly a multiple
    assert axis_windows(170, 64, 16) == [(0, 64), (48, 64), (96, 64), (106, 64)]
    # a network taking any multiple of 32: the last window just large enough, at least min_px
    assert axis_windows(170, 64, 16, min_px=32) == [(0, 64), (48, 64), (96, 64), (138, 32)]
    assert axis_windows(6500, 1024, 128, min_px=224)[-2:] == [(5376, 1024), (6244, 256)]
    assert axis_windows(4000, 1024, 128, min_px=224)[-1] == (3584, 416)
    assert axis_windows(50, 1024, 128, min_px=64) == [(0, 64)]
    assert axis_windows(300, 1024, 128, min_px=64) == [(0, 320)]


def test_weight_profiles_ramp_inside_the_overlap_and_sum_to_one() -> None:
    window, overlap, crop = 64, 24, 4
    w = weight_profile(window, overlap, crop, lead=True, trail=True)
    assert np.all(w[:crop] == 0) and np.all(w[-crop:] == 0)  # crop margins on sides with a neighbour
    assert np.all(w[overlap - crop : window - overlap + crop] == 1)
    assert np.all(np.diff(w[: overlap - crop]) >= 0) and 0 < w[crop] < 0.05  # smooth rise
    edge = weight_profile(window, overlap, crop, lead=False, trail=True)
    assert np.all(edge[: window - overlap + crop] == 1)  # raster edge side: full weight
    stride = window - overlap
    windows = axis_windows(3 * stride + overlap, window, overlap)
    assert len(windows) == 3
    total = np.zeros(3 * stride + overlap)
    for (origin, size), profile in zip(windows, axis_profiles(windows, overlap, crop), strict=True):
        total[origin : origin + size] += profile
    np.testing.assert_allclose(total, 1.0, atol=1e-6)  # a partition of unity


@pytest.mark.parametrize("min_px", [None, 32])
@pytest.mark.parametrize(("height", "width"), [(50, 170), (64, 64), (160, 161), (203, 97), (41, 1000)])
def test_every_pixel_gets_positive_weight(height: int, width: int, min_px: int | None) -> None:
    window, overlap, crop = 64, 24, 8
    rows, cols = (axis_windows(n, window, overlap, min_px=min_px) for n in (height, width))
    total = np.zeros((height, width))
    for (r, h), wy in zip(rows, axis_profiles(rows, overlap, crop), strict=True):
        for (c, w), wx in zip(cols, axis_profiles(cols, overlap, crop), strict=True):
            total[r : r + h, c : c + w] += wy[: height - r, None] * wx[None, : width - c]
    assert total.min() > 0.05


def test_overview_factors_go_down_to_one_block() -> None:
    assert overview_factors(200, 200) == []
    assert overview_factors(300, 420) == [2]
    assert overview_factors(4000, 6500) == [2, 4, 8, 16, 32]


# --------------------------------------------------------------------------- stitching


@pytest.mark.parametrize(
    ("height", "width"),
    [(50, 70), (96, 96), (160, 256), (233, 301)],  # smaller than a window, multiples of the stride, neither
)
def test_a_constant_network_stitches_to_a_constant_map(
    const_model: Path, tmp_path: Path, height: int, width: int
) -> None:
    features = tmp_path / "f.tif"
    write_features(features, height, width)
    out = tmp_path / "p.tif"
    settings = PredictSettings(window_px=96, overlap_px=32, crop_px=8)
    stats = predict_probability(features, const_model, out, settings)
    p = read(out)
    assert p.shape == (height, width)
    np.testing.assert_allclose(p, 0.3, atol=1e-6)
    n_rows, n_cols = (len(axis_windows(n, 96, 32, min_px=64)) for n in (height, width))
    assert stats["windows"] == n_rows * n_cols
    assert stats["window_px"] == 96
    assert stats["valid_pixels"] == height * width


def test_networks_that_cannot_be_reshaped_use_full_windows_at_the_edges(
    local_model: tuple[Path, keras.Model], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> None:
        raise ValueError("not reshapable")

    monkeypatch.setattr("cinderseg.nn.model.reshape_model", refuse)
    path, model = local_model
    x = write_features(tmp_path / "f.tif", 233, 301)
    settings = PredictSettings(window_px=96, overlap_px=32, crop_px=RF)
    stats = predict_probability(tmp_path / "f.tif", path, tmp_path / "p.tif", settings)
    assert stats["window_shapes"] == [[96, 96]] and stats["windows"] == 4 * 5
    check = comparable(233, 301)
    np.testing.assert_allclose(read(tmp_path / "p.tif")[check], direct(model, x)[check], atol=1e-5)


def test_small_raster_shrinks_the_window_to_fit(const_model: Path, tmp_path: Path) -> None:
    write_features(tmp_path / "f.tif", 40, 70)
    stats = predict_probability(
        tmp_path / "f.tif", const_model, tmp_path / "p.tif", PredictSettings(window_px=512)
    )
    assert stats["window_px"] == 96 and stats["windows"] == 1  # 70 px rounded up to 96, not 512


@pytest.mark.parametrize(("height", "width", "batch"), [(70, 50, 1), (224, 224, 2), (233, 301, 3)])
def test_stitched_map_equals_the_whole_raster_prediction(
    local_model: tuple[Path, keras.Model], tmp_path: Path, height: int, width: int, batch: int
) -> None:
    path, model = local_model
    x = write_features(tmp_path / "f.tif", height, width, nodata_box=(slice(10, 20), slice(30, 45)))
    settings = PredictSettings(window_px=96, overlap_px=32, crop_px=RF, batch_size=batch)
    stats = predict_probability(tmp_path / "f.tif", path, tmp_path / "p.tif", settings)
    p = read(tmp_path / "p.tif")
    expected = direct(model, x)
    valid = p != NODATA_FLOAT
    assert np.array_equal(~valid, x[0] == NODATA_FLOAT)
    assert expected[valid].std() > 0.1  # the local network's output really varies
    check = valid & comparable(height, width)
    np.testing.assert_allclose(p[check], expected[check], atol=1e-5)
    expected_windows = {(70, 50): 1, (224, 224): 3 * 3, (233, 301): 4 * 5}[(height, width)]
    assert stats["windows"] == expected_windows


TRANSFORMS = {
    "flips": [(0, False), (0, True), (2, True)],  # identity, left-right, up-down
    "d4": [(k, m) for m in (False, True) for k in range(4)],
}


@pytest.mark.parametrize("tta", ["flips", "d4"])
def test_tta_averages_the_transformed_predictions(
    local_model: tuple[Path, keras.Model], tmp_path: Path, tta: str
) -> None:
    path, model = local_model
    x = write_features(tmp_path / "f.tif", 150, 120)
    settings = PredictSettings(window_px=96, overlap_px=32, crop_px=RF, tta=tta)
    stats = predict_probability(tmp_path / "f.tif", path, tmp_path / "p.tif", settings)
    assert [96, 64] in stats["window_shapes"]  # non-square edge windows, turned by d4
    expected = direct(model, x, TRANSFORMS[tta])
    check = comparable(150, 120)
    np.testing.assert_allclose(read(tmp_path / "p.tif")[check], expected[check], atol=1e-5)
    assert not np.allclose(expected, direct(model, x), atol=1e-3)  # the transforms do change this network
    assert stats["network_calls"] == len(TRANSFORMS[tta]) * stats["windows"]


def symmetric_conv_model(channels: int = 3) -> keras.Model:
    """A plain conv net (any input size) whose 3 x 3 kernels have the symmetries of the square."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, None, channels))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="tanh")(inputs)
    out = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(x)
    model = keras.Model(inputs, out)
    for layer in model.layers[1:]:
        k, b = layer.get_weights()
        sym = sum(np.rot90(kk, t, axes=(0, 1)) for kk in (k, k[:, ::-1]) for t in range(4)) / 8
        layer.set_weights([sym, b])
    return model


def test_tta_of_an_equivariant_network_changes_nothing(tmp_path: Path) -> None:
    path = save(symmetric_conv_model(), tmp_path / "m", card=False)  # no card: used as it is
    write_features(tmp_path / "f.tif", 150, 130)
    maps = {}
    for tta in ("none", "flips", "d4"):
        settings = PredictSettings(window_px=64, overlap_px=16, crop_px=4, tta=tta)
        predict_probability(tmp_path / "f.tif", path, tmp_path / f"{tta}.tif", settings)
        maps[tta] = read(tmp_path / f"{tta}.tif")
    assert maps["none"].std() > 0.01
    np.testing.assert_allclose(maps["flips"], maps["none"], atol=1e-5)
    np.testing.assert_allclose(maps["d4"], maps["none"], atol=1e-5)


def test_predict_windows_undoes_each_transform() -> None:
    class Corner:  # "model" answering with its input's first channel: TTA must give the input back
        inputs = (keras.KerasTensor((None, None, None, 3)),)

        def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
            return x[..., :1]

    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    for tta in ("none", "flips", "d4"):
        out = predict_windows(Predictor(Corner(), 32, 3), x, tta)  # type: ignore[arg-type]
        np.testing.assert_allclose(out, x[..., 0], atol=1e-6)


# --------------------------------------------------------------------------- the rebuilt network


def test_weights_of_a_64_px_model_work_in_a_256_px_window(local_model: tuple[Path, keras.Model]) -> None:
    path, model = local_model
    predictor = load_predictor(path, 256, expected_channels=CHANNELS, expected_tile_size=64)
    assert predictor.model.input_shape == (None, 256, 256, 3) and predictor.window_px == 256
    assert predictor.channels == tuple(CHANNELS) and predictor.tile_size == 64
    for a, b in zip(predictor.model.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(5).random((1, 256, 256, 3), dtype=np.float32)
    big = run(predictor.model, x)[0, 96:160, 96:160]
    small = run(model, x[:, 96:160, 96:160])[0]
    np.testing.assert_allclose(big[RF:-RF, RF:-RF], small[RF:-RF, RF:-RF], atol=1e-5)


def test_a_large_window_over_a_large_raster(local_model: tuple[Path, keras.Model], tmp_path: Path) -> None:
    path, model = local_model
    x = write_features(tmp_path / "f.tif", 300, 420)
    stats = predict_probability(
        tmp_path / "f.tif", path, tmp_path / "p.tif", PredictSettings(window_px=256, overlap_px=64, crop_px=8)
    )
    assert stats["window_px"] == 256 and stats["windows"] == 2 * 2
    check = comparable(300, 420)
    np.testing.assert_allclose(read(tmp_path / "p.tif")[check], direct(model, x)[check], atol=1e-5)


# --------------------------------------------------------------------------- the GeoTIFF


def test_output_is_georeferenced_like_the_features(
    const_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = (slice(0, 40), slice(100, 180))
    write_features(tmp_path / "f.tif", 300, 420, nodata_box=box)
    out = tmp_path / "p.tif"
    monkeypatch.setattr("cinderseg.core.progress._on_terminal", lambda: False)  # progress as log lines
    with caplog.at_level(logging.INFO, logger="cinderseg"):
        stats = predict_probability(
            tmp_path / "f.tif", const_model, out, PredictSettings(window_px=128, overlap_px=32, crop_px=8),
            region="r1",
        )  # fmt: skip
    with rasterio.open(tmp_path / "f.tif") as f, rasterio.open(out) as p:
        assert (p.crs, p.transform, p.shape) == (f.crs, f.transform, f.shape)
        assert p.count == 1 and p.dtypes[0] == "float32" and p.nodata == NODATA_FLOAT
        assert p.block_shapes[0] == (256, 256) and p.compression is not None
        assert p.overviews(1) == [2]
        assert p.descriptions == ("probability",)
        tags = p.tags()
        assert tags["model"] == str(const_model) and tags["window_px"] == "128" and tags["tta"] == "none"
        assert tags["channels"] == ",".join(CHANNELS)
        data = p.read(1)
        overview = p.read(1, out_shape=(150, 210))
    assert np.all(data[box] == NODATA_FLOAT)
    rest = np.ones(data.shape, bool)
    rest[box] = False
    np.testing.assert_allclose(data[rest], 0.3, atol=1e-6)
    assert np.all(np.isclose(overview, 0.3, atol=1e-6) | (overview == NODATA_FLOAT))
    progress = [r.getMessage() for r in caplog.records if r.name == "cinderseg.notice"]
    n = stats["windows"]
    assert progress and progress[-1].startswith(f"predict r1: {n}/{n} windows (100%)"), progress
    assert stats["valid_pixels"] == 300 * 420 - 40 * 80
    assert stats["km2"] == pytest.approx(300 * 420 * 900 / 1e6)
    assert stats["seconds"] > 0 and stats["tiles_per_s"] > 0 and stats["region"] == "r1"
    assert {f.name for f in tmp_path.iterdir()} == {"f.tif", "p.tif"}  # no temporary file left


def test_windows_without_valid_pixels_are_not_predicted(const_model: Path, tmp_path: Path) -> None:
    write_features(tmp_path / "f.tif", 200, 300, nodata_box=(slice(0, 200), slice(0, 150)))
    settings = PredictSettings(window_px=96, overlap_px=32, crop_px=8)
    stats = predict_probability(tmp_path / "f.tif", const_model, tmp_path / "p.tif", settings)
    p = read(tmp_path / "p.tif")
    assert np.all(p[:, :150] == NODATA_FLOAT)
    np.testing.assert_allclose(p[:, 150:], 0.3, atol=1e-6)
    assert stats["windows_skipped"] == 3  # 3 rows of windows; only the first column lies left of 150
    assert stats["network_calls"] == stats["windows"] - stats["windows_skipped"]


def test_a_window_read_into_reused_buffers_equals_a_fresh_read(tmp_path: Path) -> None:
    """The buffers keep nothing of an earlier, larger or other window: the zero padding beyond the
    raster, nodata (the raster's and non-finite) zeroed, the valid mask."""
    x = write_features(tmp_path / "f.tif", 150, 170, nodata_box=(slice(10, 20), slice(30, 60)))
    with rasterio.open(tmp_path / "f.tif", "r+") as ds:
        ds.write(np.full((5, 5), np.nan, dtype=np.float32), 2, window=rasterio.windows.Window(140, 100, 5, 5))
    x[1, 100:105, 140:145] = np.nan
    buffers = WindowBuffers()
    with rasterio.open(tmp_path / "f.tif") as ds:
        for row, col, size in [(0, 0, (96, 96)), (100, 120, (96, 96)), (0, 0, (96, 96)), (64, 96, (64, 96))]:
            got = read_window(ds, row, col, size, ds.nodata, buffers)
            fresh = read_window(ds, row, col, size, ds.nodata)
            for a, b in zip(got, fresh, strict=True):
                np.testing.assert_array_equal(a, b)
            features, valid, h, w = got
            assert features.shape == (*size, 3) and features.flags.c_contiguous
            assert (h, w) == (min(size[0], 150 - row), min(size[1], 170 - col))
            assert not features[h:].any() and not features[:, w:].any()
            inside = np.moveaxis(x[:, row : row + h, col : col + w], 0, -1)
            expected_valid = (inside != NODATA_FLOAT).all(axis=-1) & np.isfinite(inside).all(axis=-1)
            np.testing.assert_array_equal(valid, expected_valid)
            np.testing.assert_array_equal(features[:h, :w][valid], inside[valid])
            assert not features[:h, :w][~valid].any()


def test_a_keras_model_without_card_is_used_at_its_own_size(tmp_path: Path) -> None:
    path = save(constant_unet(0.7), tmp_path / "m", card=False)
    write_features(tmp_path / "f.tif", 100, 150)
    stats = predict_probability(
        tmp_path / "f.tif", path, tmp_path / "p.tif", PredictSettings(overlap_px=32, crop_px=8)
    )
    assert stats["window_px"] == 64 and stats["windows"] == 3 * 4
    np.testing.assert_allclose(read(tmp_path / "p.tif"), 0.7, atol=1e-6)
    with pytest.raises(InputError, match=r"fixed 64 px input .*overlap_px \(128\)"):
        predict_probability(tmp_path / "f.tif", path, tmp_path / "q.tif", PredictSettings())
    assert not (tmp_path / "q.tif").exists()


# --------------------------------------------------------------------------- bad inputs


def bad_case(case: str, tmp_path: Path, const_model: Path) -> tuple[Path, Path, dict]:
    """(features, model, extra keyword arguments) of one bad input."""
    features = tmp_path / "in" / "f.tif"
    features.parent.mkdir()
    model, kwargs = const_model, {}
    if case == "order":
        write_features(features, 80, 80, ["slope", "local_relief", "hillshade"])
    elif case == "names":
        write_features(features, 80, 80, ["local_relief", "slope", "curvature"])
    elif case == "count":
        write_features(features, 80, 80, ["a", "b"])
        model = save(constant_unet(), tmp_path / "nocard", card=False)
    elif case == "config_channels":
        write_features(features, 80, 80)
        kwargs = {"expected_channels": ["elevation", "sobel", "clahe"]}
    elif case == "tile_size":
        write_features(features, 80, 80)
        kwargs = {"expected_tile_size": 224}
    elif case == "missing_model":
        write_features(features, 80, 80)
        model = tmp_path / "nowhere" / "model.keras"
    elif case == "no_crs":
        write_features(features, 80, 80, crs=None)
    elif case == "bad_card":
        write_features(features, 80, 80)
        model = save(constant_unet(), tmp_path / "badcard")
        (model.parent / "model_card.json").write_text(json.dumps({"channels": CHANNELS}))
    return features, model, kwargs


@pytest.mark.parametrize(
    ("case", "names", "match"),
    [
        ("order", "model", r"trained on channels \[local_relief, slope, hillshade\] .*another order"),
        ("names", "model", r"trained on channels .* \[local_relief, slope, curvature\]"),
        ("count", "model", r"takes 3 channel\(s\) but .* has 2"),
        ("config_channels", "features", r"features\.channels is \[elevation, sobel, clahe\]"),
        ("tile_size", "model", r"trained on 64 px tiles but tiling\.size is 224"),
        ("missing_model", "model", r"model file not found"),
        ("no_crs", "features", r"raster has no CRS"),
        ("bad_card", "model", r"lacks 'channels'"),
    ],
)
def test_bad_inputs_are_one_line_naming_the_file_and_leave_no_output(
    case: str, names: str, match: str, tmp_path: Path, const_model: Path
) -> None:
    features, model, kwargs = bad_case(case, tmp_path, const_model)
    out_dir = tmp_path / "out"
    with pytest.raises(InputError, match=match) as err:
        predict_probability(
            features,
            model,
            out_dir / "p.tif",
            PredictSettings(window_px=64, overlap_px=16, crop_px=4),
            region="r",
            **kwargs,
        )
    message = str(err.value)
    assert "\n" not in message
    named = features if names == "features" else model
    assert str(named) in message
    assert not out_dir.exists() or not any(out_dir.iterdir())


# --------------------------------------------------------------------------- calibration


def test_the_cards_temperature_calibrates_the_map(const_model: Path, tmp_path: Path) -> None:
    write_features(tmp_path / "f.tif", 64, 96)
    settings = PredictSettings(window_px=64, overlap_px=32, crop_px=8)
    # a card without temperature (the const model's): T = 1, the network's own probabilities
    assert load_predictor(const_model, 64).temperature == 1.0
    predict_probability(tmp_path / "f.tif", const_model, tmp_path / "plain.tif", settings)
    np.testing.assert_allclose(read(tmp_path / "plain.tif"), 0.3, atol=1e-6)
    folder = tmp_path / "t2"
    path = save(constant_unet(), folder)
    card = json.loads((folder / "model_card.json").read_text())
    (folder / "model_card.json").write_text(json.dumps({**card, "temperature": 2.0}))
    assert load_predictor(path, 96).temperature == 2.0
    stats = predict_probability(tmp_path / "f.tif", path, tmp_path / "p2.tif", settings)
    assert stats["temperature"] == 2.0
    with rasterio.open(tmp_path / "p2.tif") as ds:
        assert float(ds.tags()["temperature"]) == 2.0
    softened = 1 / (1 + math.exp(-math.log(0.3 / 0.7) / 2))  # sigmoid(logit(0.3) / 2), nearer 0.5
    np.testing.assert_allclose(read(tmp_path / "p2.tif"), softened, atol=1e-6)
    (folder / "model_card.json").write_text(json.dumps({**card, "temperature": -1}))
    with pytest.raises(InputError, match="temperature must be a number > 0"):
        load_predictor(path, 64)


# --------------------------------------------------------------------------- ONNX Runtime


@pytest.fixture(scope="module")
def onnx_local(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, keras.Model]:
    """The local U-Net saved with its card and exported to ONNX beside it (as the train rule does)."""
    model = local_unet(seed=1)
    path = save(model, tmp_path_factory.mktemp("onnx_local"))
    assert export_onnx(path) == onnx_path(path) == path.with_name("model.onnx")
    return path, model


def test_onnx_and_keras_give_the_same_probabilities(onnx_local: tuple[Path, keras.Model]) -> None:
    path, _ = onnx_local
    session, why = onnx_session(path, 96, n_channels=3, threads=2)
    assert session is not None, why
    assert session.get_modelmeta().custom_metadata_map[META_ANY_SIZE] == "1"
    keras_net = load_predictor(path, 96)
    onnx_net = OnnxPredictor(session, 96, 3, tuple(CHANNELS), 64, path, 1.0, any_size=True)
    rng = np.random.default_rng(8)
    for shape in [(1, 96, 96), (2, 96, 64), (1, 64, 160)]:  # the window, edge windows, a batch
        x = rng.random((*shape, 3), dtype=np.float32)
        expected = keras_net.run(x)
        assert expected.std() > 0.05
        np.testing.assert_allclose(onnx_net.run(x), expected, atol=1e-4)
        assert onnx_net.output_size(*shape[1:]) == shape[1:]
    with pytest.raises(ValueError, match="no 70 x 96 px windows"):
        onnx_net.output_size(70, 96)


@pytest.mark.parametrize(("tta", "batch"), [("none", 1), ("none", 3), ("d4", 2)])
def test_onnx_runtime_maps_equal_the_keras_maps(
    onnx_local: tuple[Path, keras.Model], tmp_path: Path, tta: str, batch: int
) -> None:
    path, _ = onnx_local
    write_features(tmp_path / "f.tif", 233, 301, nodata_box=(slice(10, 20), slice(30, 45)))
    maps, stats = {}, {}
    for runtime in ("keras", "onnxruntime", "auto"):
        settings = PredictSettings(
            window_px=96, overlap_px=32, crop_px=RF, tta=tta, batch_size=batch, runtime=runtime
        )
        stats[runtime] = predict_probability(tmp_path / "f.tif", path, tmp_path / f"{runtime}.tif", settings)
        maps[runtime] = read(tmp_path / f"{runtime}.tif")
    assert [stats[r]["runtime"] for r in ("keras", "onnxruntime", "auto")] == [
        "keras",
        "onnxruntime",
        "onnxruntime",
    ]
    assert stats["onnxruntime"]["window_shapes"] == stats["keras"]["window_shapes"]
    assert np.array_equal(maps["onnxruntime"] == NODATA_FLOAT, maps["keras"] == NODATA_FLOAT)
    np.testing.assert_allclose(maps["onnxruntime"], maps["keras"], atol=1e-4)
    np.testing.assert_array_equal(maps["auto"], maps["onnxruntime"])


def test_a_stale_or_missing_onnx_file_falls_back_to_keras(
    onnx_local: tuple[Path, keras.Model], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, _ = onnx_local
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("model.keras", "model_card.json", "model.onnx"):
        (folder / name).write_bytes((path.parent / name).read_bytes())
    write_features(tmp_path / "f.tif", 80, 90)
    settings = PredictSettings(window_px=64, overlap_px=16, crop_px=4)
    assert (
        predict_probability(tmp_path / "f.tif", folder / "model.keras", tmp_path / "a.tif", settings)[
            "runtime"
        ]
        == "onnxruntime"
    )
    save(local_unet(seed=9), folder)  # retrained: the ONNX file is stale now
    with caplog.at_level(logging.INFO, logger="cinderseg"):
        stats = predict_probability(tmp_path / "f.tif", folder / "model.keras", tmp_path / "b.tif", settings)
    assert stats["runtime"] == "keras"
    assert any(
        "model.onnx was exported from another model.keras (stale)" in r.getMessage() for r in caplog.records
    )
    strict = PredictSettings(window_px=64, overlap_px=16, crop_px=4, runtime="onnxruntime")
    with pytest.raises(
        InputError, match=r"predict\.runtime is onnxruntime but model\.onnx was exported"
    ) as err:
        predict_probability(tmp_path / "f.tif", folder / "model.keras", tmp_path / "c.tif", strict)
    assert str(folder / "model.keras") in str(err.value) and "\n" not in str(err.value)
    (folder / "model.onnx").unlink()
    with pytest.raises(InputError, match=r"but no model\.onnx beside it"):
        predict_probability(tmp_path / "f.tif", folder / "model.keras", tmp_path / "c.tif", strict)
    (folder / "model.onnx").write_bytes(b"not onnx")
    stats = predict_probability(tmp_path / "f.tif", folder / "model.keras", tmp_path / "d.tif", settings)
    assert stats["runtime"] == "keras"
    assert not (tmp_path / "c.tif").exists()


def test_a_fixed_size_network_is_exported_at_its_size(tmp_path: Path) -> None:
    path = save(constant_unet(0.7), tmp_path / "m", card=False)  # fixed 64 px input, no card
    export_onnx(path)
    session, why = onnx_session(path, 64, n_channels=3, threads=1)
    assert session is not None and session.get_inputs()[0].shape[1:] == [64, 64, 3], why
    assert onnx_session(path, 128, n_channels=3, threads=1) == (
        None,
        "model.onnx takes only 64 x 64 px windows, not 128",
    )
    net = OnnxPredictor(session, 64, 3, None, None, path, 1.0, any_size=False)
    np.testing.assert_allclose(net.run(np.zeros((2, 64, 64, 3), np.float32)), 0.7, atol=1e-6)


def test_the_shipped_model_has_its_onnx_copy() -> None:
    from cinderseg.core.modelcard import PRETRAINED_MODEL

    session, why = onnx_session(PRETRAINED_MODEL, 1024, n_channels=3, threads=2)
    assert session is not None, why  # exported from this very model.keras
    net = load_predictor(PRETRAINED_MODEL, 256)
    onnx_net = OnnxPredictor(
        session, 256, 3, net.channels, net.tile_size, PRETRAINED_MODEL, net.temperature, True
    )
    x = np.random.default_rng(2).random((1, 256, 256, 3), dtype=np.float32)
    np.testing.assert_allclose(onnx_net.run(x), net.run(x), atol=1e-4)


def test_prediction_needs_no_keras_for_its_constants() -> None:
    from cinderseg.nn import encoders, windows

    assert windows.DOWNSAMPLING == encoders.DOWNSAMPLING  # repeated so that predict need not import Keras


NO_TF_CHILD = """
import sys
from cinderseg.core.step import run_step
from cinderseg.nn.predict import predict_probability
from cinderseg.nn.settings import PredictSettings

features, model, out, log = sys.argv[1:]
settings = PredictSettings(window_px=96, overlap_px=32, crop_px=4)
stats = run_step(log, predict_probability, features, model, out, settings, region="r1", threads=2)
assert stats["runtime"] == "onnxruntime", stats
assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "TensorFlow was imported"
"""


def test_the_onnx_path_never_imports_tensorflow(onnx_local: tuple[Path, keras.Model], tmp_path: Path) -> None:
    path, _ = onnx_local
    write_features(tmp_path / "f.tif", 100, 120)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [str(p) for p in (tmp_path / "f.tif", path, tmp_path / "p.tif", tmp_path / "predict.log")]
    proc = subprocess.run(
        [sys.executable, "-c", NO_TF_CHILD, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "", proc.stderr
    log = (tmp_path / "predict.log").read_text()
    assert "ONNX Runtime 1." in log and ": CPU, 2 threads" in log and "TensorFlow" not in log, log


# --------------------------------------------------------------------------- a quiet start

QUIET_CHILD = """
import sys
from cinderseg.core.step import run_step
from cinderseg.nn.predict import predict_probability

features, model, out, log = sys.argv[1:]
run_step(log, predict_probability, features, model, out, region="r1")
"""
START_UP_NOISE = (
    "cuInit",
    "cudart_stub",
    "Could not find cuda",
    "oneDNN",
    "absl::InitializeLog",
    "cpu_feature",
)


def test_start_up_noise_is_dropped_and_errors_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    kept = "E0000 00:00:1796429784.1   19754 other.cc:1] a real error\nTraceback (most recent call last):\n"
    cuinit = (
        "E0000 00:00:1796429784.734386   19754 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA "
        "error: Failed call to cuInit: UNKNOWN ERROR (303)\n"
    )
    text = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1796429781.681593   19754 port.cc:153] oneDNN custom operations are on.\n"
        "I0000 00:00:1796429781.681935   19754 cudart_stub.cc:31] Could not find cuda drivers\n"
        "W0000 00:00:1796429781.7   19754 some.cc:2] a warning\n" + cuinit + kept
    )
    assert without_start_up_noise(text, driver=False) == kept
    assert without_start_up_noise(text, driver=True) == cuinit + kept  # a driver that fails: shown
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # asked for everything
    assert without_start_up_noise(text, driver=False) == text


def test_the_predict_step_starts_tensorflow_quietly(const_model: Path, tmp_path: Path) -> None:
    """The predict step as its script runs it, in a fresh process: no CUDA errors or start-up lines on
    stderr; the log names the device in one line and shows the progress."""
    write_features(tmp_path / "f.tif", 100, 120)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    env["PYTHONPATH"] = str(REPO)
    args = [str(p) for p in (tmp_path / "f.tif", const_model, tmp_path / "p.tif", tmp_path / "predict.log")]
    proc = subprocess.run(
        [sys.executable, "-c", QUIET_CHILD, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not [noise for noise in START_UP_NOISE if noise in proc.stderr], proc.stderr
    assert not re.search(r"^[IWE]\d{4} ", proc.stderr, re.MULTILINE), proc.stderr
    log = (tmp_path / "predict.log").read_text()
    assert len(re.findall(r"TensorFlow: (CPU, 1 thread|\d+ GPUs? \(.*\), mixed precision)", log)) == 1, log
    assert "predict r1: 1/1 windows (100%)" in log
