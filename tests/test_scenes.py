"""Composite training scenes (cinderseg.data.scenes) and the hard-negative landforms behind them."""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import Point

from cinderseg.core.errors import ConfigError
from cinderseg.core.raster import NODATA_FLOAT, geotiff_profile
from cinderseg.data.scenes import (
    SceneParams,
    compose_scene,
    cone_library,
    cones_removed,
    degrade,
    resample_shape,
    synthetic_cone,
    write_scene,
)
from cinderseg.terrain import negatives

RES = 30.0
UTM = "EPSG:32605"
X0, Y0 = 500000.0, 2200000.0


def _cone(shape, row, col, radius_px, height):
    rows, cols = np.indices(shape)
    r = np.hypot(rows - row, cols - col) / radius_px
    return height * np.clip((1.0 - r) / 0.6, 0.0, 1.0)


def _donor(tmp_path: Path) -> tuple[Path, gpd.GeoDataFrame, list[tuple[float, float, float, float]]]:
    """A tilted 200 x 200 px DEM at 30 m with three cones of known size and height, and their labels."""
    shape = (200, 200)
    rows, cols = np.indices(shape)
    z = 1000.0 + 0.05 * RES * cols - 0.02 * RES * rows
    z += np.random.default_rng(0).normal(0.0, 0.3, shape)
    cones = [(50.0, 60.0, 10.0, 80.0), (140.0, 70.0, 8.0, 40.0), (100.0, 150.0, 14.0, 120.0)]
    for row, col, radius, height in cones:
        z += _cone(shape, row, col, radius, height)
    path = tmp_path / "donor.tif"
    profile = geotiff_profile(
        width=200,
        height=200,
        count=1,
        dtype="float32",
        crs=UTM,
        transform=rasterio.transform.from_origin(X0, Y0, RES, RES),
        nodata=NODATA_FLOAT,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(z.astype("float32"), 1)
    labels = gpd.GeoDataFrame(
        geometry=[
            Point(X0 + (c + 0.5) * RES, Y0 - (r + 0.5) * RES).buffer(rad * RES) for r, c, rad, _ in cones
        ],
        crs=UTM,
    )
    return path, labels, cones


def test_cone_library_cuts_each_cone_above_its_base_plane(tmp_path):
    path, labels, cones = _donor(tmp_path)
    shapes = cone_library(path, labels)
    assert len(shapes) == 3
    for shape, (_, _, radius, height) in zip(shapes, cones, strict=True):
        assert shape.radius_px == pytest.approx(radius, rel=0.02)
        # the tilt is gone: the top is the cone's height, the rim of the patch is flat zero
        assert shape.relief.max() == pytest.approx(height, rel=0.05)
        edge = np.concatenate([shape.relief[0], shape.relief[-1], shape.relief[:, 0], shape.relief[:, -1]])
        assert np.abs(edge).max() < 1e-6


def test_cones_removed_leaves_the_ground_around_them(tmp_path):
    path, labels, cones = _donor(tmp_path)
    ground = cones_removed(path, labels)
    with rasterio.open(path) as ds:
        z = ds.read(1)
    rows, cols = np.indices(z.shape)
    plane = 1000.0 + 0.05 * RES * cols - 0.02 * RES * rows
    for row, col, radius, height in cones:
        inside = np.hypot(rows - row, cols - col) < radius
        assert (z[inside] - plane[inside]).max() > 0.9 * height  # the cone was there
        assert np.abs(ground[inside] - plane[inside]).max() < 3.0  # and is gone
    far = np.hypot(rows - 100, cols - 100) > 90
    assert np.array_equal(ground[far], z[far])  # the rest is untouched


def test_resampled_shapes_have_the_asked_size_height_and_ellipticity():
    rng = np.random.default_rng(1)
    shape = synthetic_cone(rng, radius_px=20.0)
    relief = resample_shape(shape, radius_px=10.0, height_m=55.0, ellipticity=0.6, rotation=0.0)
    assert relief.max() == pytest.approx(55.0, rel=1e-3)
    footprint = relief > 0.5
    rows, cols = np.nonzero(footprint)
    assert (cols.max() - cols.min()) / (rows.max() - rows.min()) == pytest.approx(1 / 0.6, rel=0.2)
    assert cols.max() - cols.min() == pytest.approx(20, abs=3)


def test_degrade_averages_to_the_coarser_grid_with_voids():
    rng = np.random.default_rng(2)
    z = np.zeros((200, 200), dtype=np.float32)
    out = degrade(z, 2, rng, noise_m=1.0, void_fraction=0.05)
    assert out.shape == (100, 100)
    assert 0.03 < np.isnan(out).mean() < 0.07
    assert np.nanstd(out) == pytest.approx(1.0, rel=0.15)


@pytest.mark.parametrize("ground", ["plain", "hills", "coast", "donor"])
def test_compose_scene_is_deterministic_and_labels_every_pasted_cone(tmp_path, ground):
    path, labels, _ = _donor(tmp_path)
    params = SceneParams.from_config(
        {
            "seed": 3,
            "ground": ground,
            "donors": ["d"],
            "width_px": 128,
            "height_px": 128,
            "n_cones": 8,
            "diameter_m": [400, 900],
        },
        resolution_m=60,
    )
    shapes = cone_library(path, labels)
    donor = (cones_removed(path, labels), RES)
    dem, cones = compose_scene(params, shapes, donor)
    dem2, cones2 = compose_scene(params, shapes, donor)
    assert np.array_equal(dem, dem2, equal_nan=True) and cones.equals(cones2)
    assert dem.shape == (128, 128) and 1 <= len(cones) <= 8
    assert (cones["height_m"] >= params.min_height_m).all()
    assert cones["basal_diameter_m"].between(400, 900).all()
    # every label stands above the ground around it
    transform = params.transform
    for x, y, r, h in zip(cones.x, cones.y, cones.radius_m, cones.height_m, strict=True):
        col, row = ~transform @ (x, y)
        rows, cols = np.indices(dem.shape)
        d = np.hypot(rows + 0.5 - row, cols + 0.5 - col) * 60
        top, ring = np.nanmax(dem[d < 0.3 * r]), np.nanmedian(dem[(d > 1.3 * r) & (d < 1.6 * r)])
        assert top - ring > 0.3 * h


def test_write_scene_writes_a_dem_and_its_cones(tmp_path):
    path, labels, _ = _donor(tmp_path)
    params = SceneParams.from_config(
        {"ground": "hills", "donors": ["d"], "width_px": 96, "height_px": 96}, 90
    )
    cones = write_scene(params, tmp_path / "s.tif", tmp_path / "s.gpkg", [(path, labels)])
    with rasterio.open(tmp_path / "s.tif") as ds:
        assert ds.shape == (96, 96) and ds.res == (90.0, 90.0) and ds.crs.to_epsg() == 32605
    back = gpd.read_file(tmp_path / "s.gpkg", layer="cones")
    assert len(back) == len(cones) and back.crs.to_epsg() == 32605
    assert np.allclose(back.area, math.pi * back.radius_m**2, rtol=0.01)


def test_scene_settings_errors_are_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"region\.scene\.ground"):
        SceneParams.from_config({"ground": "moon"}, 30)
    with pytest.raises(ConfigError, match=r"scene\.diameter_m: expected \[lo, hi\]"):
        SceneParams.from_config({"diameter_m": [900, 300]}, 30)
    with pytest.raises(ConfigError, match=r"scene\.ground: 'donor' needs scene\.donors"):
        SceneParams.from_config({"ground": "donor"}, 30)


def test_hard_negatives_are_not_cone_shaped():
    rng = np.random.default_rng(4)
    shape = (256, 256)
    hills = negatives.hill_country(shape, RES, rng)
    assert 40 < hills.max() - hills.min() < 1200
    land, sea = negatives.coast(shape, RES, rng)
    assert sea.any() and (~sea).any() and (land[sea] == 0).all()
    maar = negatives.maar(shape, RES, (128, 128), 900.0, 80.0, 15.0)
    assert maar[128, 128] == pytest.approx(-80.0, abs=1.0) and 10 < maar.max() < 16
