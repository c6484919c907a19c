"""Tests of the classical baseline detector: cones found with the right size, distractors rejected,
voids and edges, block-size invariance, the written layer and one-line errors."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import yaml
from affine import Affine
from scipy import ndimage
from shapely.geometry import Point, box

from cinderseg.cones.baseline import EXTRA_COLUMNS, run_baseline
from cinderseg.cones.detector import DETECTION_COLUMNS, BaselineSettings, _Smoother, detect_cones, halo_px
from cinderseg.cones.morphometry import CONE_COLUMNS
from cinderseg.cones.outline import outline_at, outlines_at
from cinderseg.core.errors import ConfigError, InputError
from cinderseg.core.raster import NODATA_FLOAT, geotiff_profile
from cinderseg.terrain.synthetic import SyntheticParams, generate_synthetic_region

REPO = Path(__file__).resolve().parent.parent
RES = 30.0
X0, Y0 = 500000.0, 2200000.0
UTM = "EPSG:32605"
SHAPE = (256, 256)


def _write(path: Path, z: np.ndarray, *, crs: str = UTM, res: float = RES) -> Path:
    profile = geotiff_profile(
        width=z.shape[1],
        height=z.shape[0],
        count=1,
        dtype="float32",
        crs=crs,
        transform=Affine(res, 0.0, X0, 0.0, -res, Y0),
        nodata=NODATA_FLOAT,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.where(np.isfinite(z), z, NODATA_FLOAT).astype("float32"), 1)
    return path


def _xy(shape: tuple[int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Map x, y (m) of the pixel centres."""
    rows, cols = np.indices(shape)
    return X0 + (cols + 0.5) * RES, Y0 - (rows + 0.5) * RES


def _ground(shape: tuple[int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    """A tilted plane (about 3.4 degrees) with 1 m of smooth roughness."""
    x, y = _xy(shape)
    rough = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), 2.0)
    return 1500.0 + 0.05 * (x - X0) + 0.03 * (y - Y0) + rough / rough.std()


def _cone(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, radius: float, crater: bool = True
) -> np.ndarray:
    """A cinder cone (m above its base): height 0.18 x basal diameter, straight flanks, optional crater."""
    height = 0.36 * radius
    r = np.hypot(x - cx, y - cy)
    rim = 0.4 * radius
    flank = height * np.clip((radius - r) / (radius - rim), 0.0, None)
    top = height * (1.0 - 0.3 * (1.0 - (r / rim) ** 2)) if crater else np.full_like(r, height)
    return np.where(r < rim, top, flank)


def _at(row: float, col: float) -> tuple[float, float]:
    return X0 + col * RES, Y0 - row * RES


def _radius(gdf: gpd.GeoDataFrame) -> np.ndarray:
    return np.sqrt(gdf.area.to_numpy() / math.pi)


# --------------------------------------------------------------------------- settings


def test_settings_defaults_match_schema_and_bad_values_fail():
    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    section = schema["properties"]["baseline"]
    assert (
        section["type"] == "object" and section["default"] == {} and section["additionalProperties"] is False
    )
    props = section["properties"]
    assert {k: v["default"] for k, v in props.items()} == asdict(BaselineSettings())
    assert all(v.get("description") and v.get("type") for v in props.values())
    assert BaselineSettings.from_config(None) == BaselineSettings()
    bad = {
        "min_diameter_m": 0,
        "max_diameter_m": "big",
        "n_scales": 1,
        "min_response_m": -1,
        "min_relief_m": math.nan,
        "min_roundness": 1.5,
        "min_flank_slope_deg": True,
        "max_flank_slope_deg": 95,
        "max_overlap": -0.1,
        "block_px": 32,
    }
    for key, value in bad.items():
        with pytest.raises(ConfigError, match=rf"^baseline\.{key}: ") as err:
            BaselineSettings.from_config({key: value})
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^baseline\.max_diameter_m: must be larger"):
        BaselineSettings(min_diameter_m=500, max_diameter_m=400)
    with pytest.raises(ConfigError, match=r"^baseline\.max_flank_slope_deg: must be larger"):
        BaselineSettings(min_flank_slope_deg=30, max_flank_slope_deg=20)
    with pytest.raises(ConfigError, match=r"^baseline: unknown key 'min_relief'"):
        BaselineSettings.from_config({"min_relief": 10})


def test_halo_covers_the_largest_cone():
    s = BaselineSettings()
    for res in (10.0, 30.0, 90.0):
        assert halo_px(s, res) * res >= s.max_diameter_m


def test_locally_linear_smoothing_is_exact_for_planes_next_to_voids():
    rows, cols = np.indices((128, 128), dtype=np.float64)
    z = 100.0 + 0.7 * rows - 0.4 * cols
    valid = np.ones(z.shape, dtype=bool)
    valid[30:60, 40:70] = False
    valid[:, :5] = False
    valid[:13] = valid[-13:] = valid[:, -13:] = False  # the caller's halo: no circular wrap-around
    smoother = _Smoother(np.where(valid, z, np.nan), valid)
    for sigma in (1.0, 4.0):
        value, enough = smoother.smooth(sigma)
        ok = valid & enough
        offset = np.median(z[valid])
        assert np.abs(value[ok] + offset - z[ok]).max() < 1e-6
        assert not enough[45, 55]  # deep inside the void
        assert ok.sum() > 0.9 * valid.sum()


def test_smoothing_on_padded_fast_transform_sizes_equals_the_direct_fit():
    # 107 x 101 px (primes): the transforms run on 108 x 102 px; the core must not see the padding.
    rng = np.random.default_rng(3)
    z = 50.0 + rng.normal(0.0, 5.0, (107, 101)).cumsum(axis=0)
    valid = rng.random(z.shape) > 0.2
    smoother = _Smoother(np.where(valid, z, np.nan), valid)
    assert smoother.fft_shape != z.shape
    sigma, half = 3.0, 9  # the kernel is cut at 3 sigma
    value, _ = smoother.smooth(sigma)
    offset = np.median(z[valid])
    d = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-0.5 * (d / sigma) ** 2)
    g /= g.sum()
    for r, c in [(half, half), (50, 60), (107 - half - 1, 101 - half - 1), (30, 90)]:
        win = (slice(r - half, r + half + 1), slice(c - half, c + half + 1))
        w = np.outer(g, g)[valid[win]]
        dv, du = np.meshgrid(d, d, indexing="ij")
        design = np.stack([np.ones_like(w), du[valid[win]], dv[valid[win]]], axis=1)
        coef = np.linalg.solve(design.T @ (w[:, None] * design), design.T @ (w * z[win][valid[win]]))
        assert value[r, c] + offset == pytest.approx(coef[0], abs=1e-8)


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize("crater", [True, False])
def test_isolated_cone_found_with_right_centre_and_diameter(tmp_path, crater):
    x, y = _xy()
    cx, cy = _at(120.3, 131.7)
    radius = 420.0
    z = _ground() + _cone(x, y, cx, cy, radius, crater)
    found = detect_cones(_write(tmp_path / "dem.tif", z), BaselineSettings(), region="one")
    assert len(found) == 1
    assert list(found.columns) == [*DETECTION_COLUMNS, "geometry"]
    c = found.geometry.iloc[0].centroid
    assert math.hypot(c.x - cx, c.y - cy) < 0.1 * radius
    assert _radius(found)[0] == pytest.approx(radius, rel=0.12)
    assert found.relief_m.iloc[0] == pytest.approx(0.36 * radius, rel=0.15)
    assert found.roundness.iloc[0] > 0.9
    assert found.score.iloc[0] > BaselineSettings().min_response_m


def test_two_separate_cones_give_two(tmp_path):
    x, y = _xy()
    centres = [(_at(80, 70), 300.0), (_at(170, 180), 550.0)]
    z = _ground(seed=1) + sum(_cone(x, y, *c, r) for c, r in centres)
    found = detect_cones(_write(tmp_path / "dem.tif", z), BaselineSettings())
    assert len(found) == 2
    for (cx, cy), r in centres:
        d = np.hypot(found.centroid.x - cx, found.centroid.y - cy)
        i = int(np.argmin(d))
        assert d.iloc[i] < 0.15 * r
        assert _radius(found)[i] == pytest.approx(r, rel=0.15)


def _cone_field() -> tuple[np.ndarray, np.ndarray]:
    """Elevations (m) with three cones of 300-550 m basal radius on rough tilted ground and a void
    (NaN), and validity."""
    x, y = _xy()
    centres = [(_at(80, 70), 300.0), (_at(170, 180), 550.0), (_at(60, 200), 400.0)]
    z = _ground(seed=2) + sum(_cone(x, y, *c, r, crater=r > 350) for c, r in centres)
    z[120:135, 40:60] = np.nan
    return z, np.isfinite(z)


def test_outlines_of_many_candidates_equal_each_outlined_alone():
    """The batched outlines (one scale, many centres, windows in chunks) are those of each centre alone."""
    z, valid = _cone_field()
    rng = np.random.default_rng(3)
    rows = np.concatenate([[80, 170, 60, 81, 169], rng.integers(40, 216, 60), [127]])
    cols = np.concatenate([[70, 180, 200, 71, 181], rng.integers(40, 216, 60), [50]])
    r0 = 12.0  # pixels: a 360 m cone at 30 m
    batch = outlines_at(z, valid, rows, cols, r0)
    assert batch.found[:5].all()
    assert not batch.found[-1]  # a centre in the void has none
    for i, (row, col) in enumerate(zip(rows, cols, strict=True)):
        alone = outline_at(z, valid, int(row), int(col), r0)
        assert (alone is None) == (not batch.found[i])
        if alone is not None:
            np.testing.assert_allclose(alone.radii, batch.radii[i], atol=1e-9)
            assert alone.height == pytest.approx(batch.height[i], abs=1e-9)
            assert alone.valid_fraction == batch.valid_fraction[i]
    # a cone 420 m wide at r0 = 14 px: its outline's equivalent radius matches within a pixel
    one = outlines_at(z, valid, np.array([170]), np.array([180]), 550.0 / RES / 1.3)[0]
    assert one is not None
    assert math.sqrt(np.mean(one.radii**2)) * RES == pytest.approx(550.0, abs=1.5 * RES)


def test_outline_windows_beyond_the_array_are_nodata():
    """A centre near the array's edge is outlined as if the array went on with nodata."""
    z, valid = _cone_field()
    pad = 40
    zp = np.pad(z, pad, constant_values=np.nan)
    vp = np.pad(valid, pad, constant_values=False)
    rows, cols = np.array([60, 5, 250]), np.array([200, 128, 3])
    edge = outlines_at(z, valid, rows, cols, 12.0)
    padded = outlines_at(zp, vp, rows + pad, cols + pad, 12.0)
    assert edge.found[0]
    np.testing.assert_array_equal(edge.found, padded.found)
    np.testing.assert_allclose(edge.radii, padded.radii, atol=1e-9)
    np.testing.assert_array_equal(edge.valid_fraction, padded.valid_fraction)
    assert edge.valid_fraction[0] == 1.0


def _ridge(x: np.ndarray, y: np.ndarray, width: float, height: float, flat: bool) -> np.ndarray:
    """A long straight feature across the raster: a ridge (Gaussian section) or a flat-topped flow."""
    across = ((x - X0) * 0.6 - (y - Y0) * 0.8) - 0.5 * SHAPE[1] * RES * 0.6 + 0.5 * SHAPE[0] * RES * 0.8
    if flat:  # lava flow: steep margins, flat top, slight levees
        edge = np.clip((width / 2 - np.abs(across)) / 60.0, 0.0, 1.0)
        levee = 0.2 * np.exp(-(((np.abs(across) - width / 2 + 60.0) / 40.0) ** 2))
        return height * (edge + levee * edge)
    return height * np.exp(-0.5 * (across / (width / 2.5)) ** 2)


@pytest.mark.parametrize(
    "terrain",
    ["flat", "tilted", "ridge", "lava_flow", "pit_crater"],
)
def test_no_detections_on_non_cone_terrain(tmp_path, terrain):
    x, y = _xy()
    if terrain == "flat":
        z = np.full(SHAPE, 1200.0)
    elif terrain == "tilted":
        z = 2000.0 + 0.25 * (x - X0) - 0.1 * (y - Y0)  # 15 degrees
    elif terrain == "ridge":
        z = _ground() + _ridge(x, y, 500.0, 60.0, flat=False)
    elif terrain == "lava_flow":
        z = _ground() + _ridge(x, y, 700.0, 30.0, flat=True)
    else:  # steep-walled pit 80 m deep with a 2 m rim
        cx, cy = _at(128, 128)
        r = np.hypot(x - cx, y - cy) / 350.0
        z = _ground() - 80.0 * np.clip((1.0 - r) / 0.4, 0.0, 1.0) + 2.0 * np.exp(-(((r - 1.05) / 0.15) ** 2))
    found = detect_cones(_write(tmp_path / "dem.tif", z), BaselineSettings())
    assert len(found) == 0, found.drop(columns="geometry").to_string()


def test_synthetic_region_cones_are_found(tmp_path):
    """A small realistic region (cinderseg.terrain.synthetic, with lava flows, gullies, pits and knobs)."""
    params = SyntheticParams(seed=3, width_px=320, height_px=320, n_cones=10, diameter_median_m=600)
    region = generate_synthetic_region(params)
    dem = tmp_path / "dem.tif"
    profile = geotiff_profile(
        width=320,
        height=320,
        count=1,
        dtype="float32",
        crs=region.crs,
        transform=region.transform,
        nodata=None,
    )
    with rasterio.open(dem, "w", **profile) as dst:
        dst.write(region.dem, 1)
    found = detect_cones(dem, BaselineSettings())
    truth = region.cones
    tc = np.column_stack([truth.x, truth.y])
    pc = np.column_stack([found.centroid.x, found.centroid.y])
    d = np.hypot(pc[:, None, 0] - tc[None, :, 0], pc[:, None, 1] - tc[None, :, 1])
    rp, rt = _radius(found)[:, None], truth.radius_m.to_numpy()[None, :]
    rmin = np.minimum(rp, rt)
    ok = (d <= rmin) & (np.abs(rp - rt) <= 0.5 * rmin)
    recall = ok.any(axis=0).mean()
    precision = ok.any(axis=1).mean()
    # the distractors (knobs, flow lobes) fool a classical detector now and then: 10 of 10 cones, 5 others
    assert recall >= 0.9 and precision >= 0.6, (recall, precision)


# --------------------------------------------------------------------------- windows, voids, edges


def test_block_size_invariance_with_cones_on_block_borders(tmp_path):
    shape = (256, 256)
    x, y = _xy(shape)
    # centres on block borders and corners of 64 px blocks, and one cut by the raster's corner
    cones = [((64.0, 64.0), 330.0), ((128.5, 190.0), 450.0), ((192.0, 127.6), 380.0), ((250.0, 254.0), 400.0)]
    z = _ground(shape, seed=2) + sum(_cone(x, y, *_at(*rc), r) for rc, r in cones)
    dem = _write(tmp_path / "dem.tif", z)
    results = [detect_cones(dem, BaselineSettings(max_diameter_m=1500, block_px=b)) for b in (64, 100, 4096)]
    ref = results[-1]
    assert len(ref) >= 4
    for other in results[:-1]:
        assert len(other) == len(ref)
        np.testing.assert_allclose(other.score.to_numpy(), ref.score.to_numpy(), rtol=1e-6)
        for a, b in zip(other.geometry, ref.geometry, strict=True):
            assert a.symmetric_difference(b).area < 1e-6 * b.area
    for (row, col), r in cones[:3]:
        cx, cy = _at(row, col)
        assert np.min(np.hypot(ref.centroid.x - cx, ref.centroid.y - cy)) < 0.15 * r


def test_nodata_voids_and_edges(tmp_path):
    x, y = _xy()
    z = _ground(seed=4)
    inside, beside = _at(100, 100), _at(190, 190)
    z = z + _cone(x, y, *inside, 400.0) + _cone(x, y, *beside, 400.0)
    void = box(*_at(140, 40), *_at(40, 160))  # minx, miny, maxx, maxy: rows 40-140, cols 40-160
    rows, cols = np.indices(SHAPE)
    hole = (rows >= 40) & (rows < 140) & (cols >= 40) & (cols < 160)
    z[hole] = np.nan
    z[:, :20] = np.nan  # a nodata margin: an edge inside the raster
    found = detect_cones(_write(tmp_path / "dem.tif", z), BaselineSettings())
    assert len(found) == 1
    assert void.contains(Point(*inside)) and not any(void.contains(p) for p in found.centroid)
    c = found.centroid.iloc[0]
    assert math.hypot(c.x - beside[0], c.y - beside[1]) < 40.0
    assert found.geometry.iloc[0].intersection(void).area < 0.01 * found.area.iloc[0]

    # only the tilted plane, with the same voids: no artefacts at void or raster edges
    plane = 2000.0 + 0.12 * (x - X0) + 0.05 * (y - Y0)
    plane[hole] = np.nan
    plane[:, :20] = np.nan
    assert len(detect_cones(_write(tmp_path / "plane.tif", plane), BaselineSettings())) == 0


def test_all_nodata_and_geographic_dem_fail_with_one_line(tmp_path):
    dem = _write(tmp_path / "void.tif", np.full((64, 64), np.nan))
    with pytest.raises(InputError) as err:
        detect_cones(dem, BaselineSettings(), region="mk")
    msg = str(err.value)
    assert "region 'mk'" in msg and "nodata" in msg and str(dem) in msg and "\n" not in msg
    geo = tmp_path / "geo.tif"
    profile = geotiff_profile(
        width=32, height=32, count=1, dtype="float32", crs="EPSG:4326",
        transform=Affine(0.001, 0, -155.5, 0, -0.001, 19.8), nodata=NODATA_FLOAT,
    )  # fmt: skip
    with rasterio.open(geo, "w", **profile) as dst:
        dst.write(np.zeros((1, 32, 32), dtype="float32"))
    with pytest.raises(InputError, match=r"region 'mk'.*is not projected"):
        detect_cones(geo, BaselineSettings(), region="mk")
    with pytest.raises(InputError, match="not found"):
        detect_cones(tmp_path / "missing.tif", BaselineSettings(), region="mk")


# --------------------------------------------------------------------------- output layer


def back_crs(dem):
    with rasterio.open(dem) as ds:
        return ds.crs


def test_run_baseline_writes_the_contract_layer(tmp_path):
    x, y = _xy()
    z = _ground(seed=5) + _cone(x, y, *_at(90, 100), 350.0) + _cone(x, y, *_at(180, 170), 500.0)
    dem = _write(tmp_path / "dem.tif", z)
    out = tmp_path / "out" / "baseline.gpkg"
    returned = run_baseline(dem, out, BaselineSettings(), region="twin")
    assert pyogrio.list_layers(out)[:, 0].tolist() == ["cones", "rejected"]
    rejected = gpd.read_file(out, layer="rejected")
    assert set(rejected.columns) == {"reason", "score", "geometry"} and rejected.crs == back_crs(dem)
    back = gpd.read_file(out, layer="cones")
    assert list(back.columns) == [*CONE_COLUMNS, *EXTRA_COLUMNS, "geometry"]
    assert len(back) == len(returned) == 2
    assert back.crs == rasterio.open(dem).crs
    assert back.cone_id.tolist() == [1, 2] and set(back.region) == {"twin"}
    assert back.score.is_monotonic_decreasing
    assert back.probability_mean.isna().all() and back.probability_max.isna().all()
    assert (back.geometry.geom_type == "Polygon").all()
    big = back.iloc[int(np.argmax(back.basal_diameter_m))]
    assert big.basal_diameter_m == pytest.approx(1000.0, rel=0.12)
    assert big.height_m == pytest.approx(180.0, rel=0.15)
    assert not list(tmp_path.glob("out/.*"))  # no temporary file left

    flat = _write(tmp_path / "flat.tif", np.full(SHAPE, 800.0))
    empty = tmp_path / "empty.gpkg"
    assert len(run_baseline(flat, empty, BaselineSettings(), region="flat")) == 0
    back = gpd.read_file(empty, layer="cones")
    assert len(back) == 0 and list(back.columns) == [*CONE_COLUMNS, *EXTRA_COLUMNS, "geometry"]
