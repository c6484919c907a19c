"""Tests of cinderseg.terrain.features: channel definitions, block consistency (no seams), nodata, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.transform import Affine
from skimage.exposure import equalize_adapthist

from cinderseg.core.errors import ConfigError, InputError
from cinderseg.core.raster import NODATA_FLOAT
from cinderseg.terrain.clahe import clahe
from cinderseg.terrain.features import (
    CHANNELS,
    CURVATURE_SCALE_PER_M,
    FeatureSettings,
    channel_halo_px,
    compute_features,
)

REPO = Path(__file__).resolve().parent.parent
UTM = "EPSG:32605"
X0, Y0 = 200_000.0, 2_200_000.0


def write_dem(path: Path, z: np.ndarray, res: float = 30.0, crs: str = UTM) -> Path:
    """A float32 DEM GeoTIFF (nodata -9999) like the dem step's output."""
    profile = {
        "driver": "GTiff",
        "width": z.shape[1],
        "height": z.shape[0],
        "count": 1,
        "dtype": "float32",
        "crs": crs,
        "transform": Affine(res, 0.0, X0, 0.0, -res, Y0),
        "nodata": NODATA_FLOAT,
    }
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(z.astype(np.float32), 1)
    return path


def volcanic_dem(shape: tuple[int, int] = (500, 700), res: float = 30.0, seed: int = 0) -> np.ndarray:
    """A shield flank with cones (some cratered), noise, a nodata hole and a nodata corner."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    z = 1500.0 + 0.08 * cols * res - 0.03 * rows * res
    for _ in range(14):
        r0, c0 = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        radius = rng.uniform(150, 450) / res
        d = np.hypot(rows - r0, cols - c0) / radius
        height = 0.36 * radius * res
        z += height * np.clip(1 - d, 0, None)
        if rng.random() < 0.6:
            z -= 0.4 * height * np.clip(1 - d / 0.35, 0, None)
    z += rng.normal(0, 0.5, shape)
    hole = np.hypot(rows - 0.3 * shape[0], cols - 0.55 * shape[1]) < 25
    z[hole] = NODATA_FLOAT
    z[: shape[0] // 5, : shape[1] // 6] = NODATA_FLOAT  # outside the footprint
    z[rng.random(shape) < 0.01] = NODATA_FLOAT  # scattered voids, many next to block edges
    speckled = rng.random(shape) < 0.7
    speckled[: int(shape[0] * 0.6)] = False
    z[speckled] = NODATA_FLOAT  # a band of dense voids: every fill configuration occurs at seams
    for _ in range(60):  # small void patches (need both fill rings), some across block edges
        r, c = rng.integers(0, shape[0] - 9), rng.integers(0, shape[1] - 9)
        z[r : r + rng.integers(3, 9), c : c + rng.integers(3, 9)] = NODATA_FLOAT
    return z.astype(np.float32)


def read_stack(path: Path) -> tuple[np.ndarray, rasterio.profiles.Profile, tuple, dict]:
    with rasterio.open(path) as ds:
        return ds.read(), ds.profile, ds.descriptions, ds.tags()


ALL = FeatureSettings(channels=CHANNELS, local_relief_radius_m=600.0)


# --- settings ----------------------------------------------------------------------------------------


def test_settings_match_schema_defaults() -> None:
    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]["features"]["properties"]
    defaults = FeatureSettings()
    assert set(props) == set(defaults.__dataclass_fields__)
    for key, spec in props.items():
        value = getattr(defaults, key)
        assert (list(value) if isinstance(value, tuple) else value) == spec["default"], key
    assert list(CHANNELS) == props["channels"]["items"]["enum"]
    assert FeatureSettings.from_config({}) == defaults
    assert FeatureSettings.from_config({"channels": ["slope", "clahe"]}).channels == ("slope", "clahe")


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"channels": ["elevation", "roughness"]}, "features.channels"),
        ({"channels": []}, "features.channels"),
        ({"channels": ["sobel", "sobel"]}, "features.channels"),
        ({"channels": "sobel"}, "features.channels"),
        ({"block_px": 64}, "features.block_px"),
        ({"clahe_kernel_px": 4}, "features.clahe_kernel_px"),
        ({"clahe_clip_limit": 0}, "features.clahe_clip_limit"),
        ({"local_relief_radius_m": -5}, "features.local_relief_radius_m"),
        ({"hillshade_altitude_deg": 95}, "features.hillshade_altitude_deg"),
        ({"colour": "red"}, "features: unknown key 'colour'"),
    ],
)
def test_settings_errors_name_the_key(config: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        FeatureSettings.from_config(config)
    assert str(err.value).startswith(key)
    assert "\n" not in str(err.value)
    if "roughness" in str(config):
        assert "roughness" in str(err.value) and "local_relief" in str(err.value)


def test_channel_halo_px() -> None:
    assert channel_halo_px(FeatureSettings(channels=("elevation",)), 30.0) == 0
    assert channel_halo_px(FeatureSettings(channels=("elevation", "sobel")), 30.0) == 3
    assert channel_halo_px(FeatureSettings(channels=("clahe",), clahe_kernel_px=32), 30.0) == 64
    lr = FeatureSettings(channels=("local_relief",), local_relief_radius_m=1000.0)
    assert channel_halo_px(lr, 30.0) == 33
    assert channel_halo_px(lr, 10.0) == 100


# --- block consistency -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block_px", "kernel_px", "channels"),
    [
        (128, 64, CHANNELS),
        (150, 40, CHANNELS),
        (128, 64, ("local_relief", "sobel")),  # halo set by the relief radius
        (130, 64, ("slope", "curvature", "hillshade")),  # halo set by the 3x3 derivatives
    ],
)
def test_no_seams_between_blocks(
    tmp_path: Path, block_px: int, kernel_px: int, channels: tuple[str, ...]
) -> None:
    """Small blocks (many seams) give the whole-raster result, every channel (exact up to libm ulps)."""
    dem = write_dem(tmp_path / "dem.tif", volcanic_dem())
    small = tmp_path / "small.tif"
    whole = tmp_path / "whole.tif"
    base = {**ALL.__dict__, "clahe_kernel_px": kernel_px, "channels": channels}
    compute_features(dem, small, FeatureSettings(**{**base, "block_px": block_px}))
    compute_features(dem, whole, FeatureSettings(**{**base, "block_px": 4096}))
    a, _, _, tags_a = read_stack(small)
    b, _, _, tags_b = read_stack(whole)
    assert tags_a == tags_b
    for i, name in enumerate(channels):
        diff = np.abs(a[i].astype(np.float64) - b[i])
        assert diff.max() <= 1e-6, f"{name}: max difference {diff.max()} between block sizes"


# --- output format and nodata -------------------------------------------------------------------------


def test_output_format_and_nodata(tmp_path: Path) -> None:
    z = volcanic_dem()
    dem = write_dem(tmp_path / "dem.tif", z)
    out = tmp_path / "sub" / "features.tif"
    compute_features(dem, out, ALL, region="r1")
    data, prof, desc, _ = read_stack(out)
    with rasterio.open(dem) as src:
        assert prof["crs"] == src.crs and prof["transform"] == src.transform
    assert prof["dtype"] == "float32" and prof["count"] == len(CHANNELS)
    assert prof["nodata"] == NODATA_FLOAT
    assert desc == CHANNELS
    nod = z == NODATA_FLOAT
    assert np.all(data[:, nod] == NODATA_FLOAT)
    valid = data[:, ~nod]
    assert np.all(np.isfinite(valid)) and not np.any(valid == NODATA_FLOAT)
    lo = {"curvature": -1.0, "local_relief": -1.0}
    for i, name in enumerate(CHANNELS):
        assert valid[i].min() >= lo.get(name, 0.0) and valid[i].max() <= 1.0, name
    assert not list(out.parent.glob(".*tmp*"))


def test_derivatives_near_nodata_are_not_garbage(tmp_path: Path) -> None:
    """A plane with voids: derivatives next to voids and raster edges keep the plane's values."""
    rows, cols = np.mgrid[0:300, 0:320]
    z = 800.0 + 0.3 * 30.0 * cols + 0.4 * 30.0 * rows  # |grad| = 0.5
    z[np.hypot(rows - 150, cols - 160) < 30] = NODATA_FLOAT
    z[200:, :40] = NODATA_FLOAT
    z[50, 50] = NODATA_FLOAT
    dem = write_dem(tmp_path / "dem.tif", z)
    out = tmp_path / "f.tif"
    compute_features(dem, out, FeatureSettings(channels=("sobel", "curvature", "hillshade"), block_px=128))
    data, _, _, _ = read_stack(out)
    valid = z != NODATA_FLOAT
    assert np.abs(data[0][valid] - 0.5).max() < 1e-3
    assert np.abs(data[1][valid]).max() < 1e-3
    assert np.ptp(data[2][valid]) < 1e-3
    assert np.all(data[:, ~valid] == NODATA_FLOAT)


# --- channel definitions -----------------------------------------------------------------------------


def test_elevation_uses_global_percentiles(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    z = rng.uniform(100.0, 3000.0, (300, 400))
    dem = write_dem(tmp_path / "dem.tif", z)
    out = tmp_path / "f.tif"
    compute_features(dem, out, FeatureSettings(channels=("elevation",), block_px=128))
    data, _, _, tags = read_stack(out)
    p1, p99 = np.percentile(z.astype(np.float32), [1, 99])
    assert float(tags["elevation_p1"]) == pytest.approx(p1, abs=0.1)
    assert float(tags["elevation_p99"]) == pytest.approx(p99, abs=0.1)
    elev = data[0]
    assert np.mean(elev == 0.0) == pytest.approx(0.01, abs=0.002)
    assert np.mean(elev == 1.0) == pytest.approx(0.01, abs=0.002)
    expected = np.clip((z.astype(np.float32) - p1) / (p99 - p1), 0, 1)
    assert np.abs(elev - expected).max() < 1e-4


@pytest.mark.parametrize("res", [10.0, 30.0])
def test_sobel_and_slope_of_a_plane_are_resolution_independent(tmp_path: Path, res: float) -> None:
    rows, cols = np.mgrid[0:150, 0:160]
    gx, gy = 0.3, 0.4  # dz/dx east, dz/dy north (m/m): tan(slope) = 0.5
    z = 2000.0 + gx * cols * res - gy * rows * res
    dem = write_dem(tmp_path / "dem.tif", z, res=res)
    out = tmp_path / "f.tif"
    compute_features(dem, out, FeatureSettings(channels=("sobel", "slope", "hillshade", "curvature")))
    data, _, _, _ = read_stack(out)
    inner = (slice(2, -2), slice(2, -2))
    np.testing.assert_allclose(data[0][inner], 0.5, atol=1e-4)
    np.testing.assert_allclose(data[1][inner], math.degrees(math.atan(0.5)) / 90.0, atol=1e-4)
    # hillshade of the plane: normal (-gx, -gy, 1)/|.|, sun at azimuth 315, altitude 45
    az, alt = math.radians(315), math.radians(45)
    sun = np.array([math.sin(az) * math.cos(alt), math.cos(az) * math.cos(alt), math.sin(alt)])
    expected = float(np.dot([-gx, -gy, 1.0], sun) / math.sqrt(1 + gx * gx + gy * gy))
    np.testing.assert_allclose(data[2][inner], expected, atol=1e-4)
    np.testing.assert_allclose(data[3][inner], 0.0, atol=1e-3)


def test_hillshade_lights_slopes_facing_the_sun(tmp_path: Path) -> None:
    rows, cols = np.mgrid[0:100, 0:200]
    # left half rises to the south-east (faces north-west, the sun), right half faces south-east
    z = np.where(cols < 100, 0.5 * 30 * (cols + rows), 0.5 * 30 * (200 - cols + 100 - rows)) + 500.0
    dem = write_dem(tmp_path / "dem.tif", z)
    out = tmp_path / "f.tif"
    flat = tmp_path / "flat.tif"
    settings = FeatureSettings(channels=("hillshade",))
    compute_features(dem, out, settings)
    compute_features(write_dem(tmp_path / "flat_dem.tif", np.full((64, 64), 100.0)), flat, settings)
    hs = read_stack(out)[0][0]
    assert hs[50, 50] > 0.9 and hs[50, 150] < 0.2
    np.testing.assert_allclose(read_stack(flat)[0][0], math.sin(math.radians(45)), atol=1e-6)


def test_curvature_of_a_paraboloid(tmp_path: Path) -> None:
    rows, cols = np.mgrid[0:100, 0:120].astype(np.float64)
    res, a = 30.0, 0.002  # z = a r^2: Laplacian 4a = 0.008 1/m (concave, a bowl)
    x, y = (cols - 60) * res, (rows - 50) * res
    dem = write_dem(tmp_path / "bowl.tif", 1000.0 + a * (x * x + y * y))
    hill = write_dem(tmp_path / "hill.tif", 9000.0 - a * (x * x + y * y))
    settings = FeatureSettings(channels=("curvature",))
    compute_features(dem, tmp_path / "bowl_f.tif", settings)
    compute_features(hill, tmp_path / "hill_f.tif", settings)
    inner = (slice(2, -2), slice(2, -2))
    bowl = read_stack(tmp_path / "bowl_f.tif")[0][0][inner]
    top = read_stack(tmp_path / "hill_f.tif")[0][0][inner]
    np.testing.assert_allclose(bowl, -4 * a / CURVATURE_SCALE_PER_M, atol=0.02)
    np.testing.assert_allclose(top, 4 * a / CURVATURE_SCALE_PER_M, atol=0.02)


def test_local_relief(tmp_path: Path) -> None:
    rows, cols = np.mgrid[0:200, 0:200].astype(np.float64)
    res = 30.0
    z = 1000.0 + 0.1 * cols * res + 0.05 * rows * res  # tilted plane
    d = np.hypot(rows - 100, cols - 100)
    z_cone = z + 80.0 * np.clip(1 - d / 10.0, 0, None)
    z_void = z.copy()
    z_void[30:60, 120:170] = NODATA_FLOAT
    settings = FeatureSettings(channels=("local_relief",), local_relief_radius_m=600.0)  # 20 px
    compute_features(write_dem(tmp_path / "plane.tif", z_void), tmp_path / "p.tif", settings)
    compute_features(write_dem(tmp_path / "cone.tif", z_cone), tmp_path / "c.tif", settings)
    plane = read_stack(tmp_path / "p.tif")[0][0]
    cone = read_stack(tmp_path / "c.tif")[0][0]
    # the local plane of a plane is the plane, also at raster edges and next to voids
    assert np.abs(plane[z_void != NODATA_FLOAT]).max() < 1e-3
    assert np.all(plane[z_void == NODATA_FLOAT] == NODATA_FLOAT)
    assert cone[100, 100] > 0.5  # the summit stands above its surroundings
    assert cone[100, 92] > cone[100, 100 + 20]  # the flank too, unlike the plane around it
    assert abs(cone[100, 160]) < 1e-3 and abs(cone[0, 0]) < 1e-3  # far from the cone: the plane again
    assert cone.min() >= -1.0 and cone.max() <= 1.0


def test_clahe_equals_skimage_up_to_final_stretch() -> None:
    rng = np.random.default_rng(5)
    from scipy.ndimage import gaussian_filter

    for shape, k in [((300, 250), 64), ((200, 333), 32)]:
        x = gaussian_filter(rng.random(shape), 4)
        x = (x - x.min()) / (x.max() - x.min())  # holds 0 and 1: skimage's input stretch is identity
        ours = clahe(x, k, 0.01).astype(np.float64)
        ref = equalize_adapthist(x, kernel_size=k, clip_limit=0.01)
        stretched = (ours - ours.min()) / (ours.max() - ours.min())
        np.testing.assert_allclose(stretched, ref, atol=1e-6)
        assert ours.min() >= 0.0 and ours.max() <= 1.0


def test_clahe_channel_is_clahe_of_normalised_elevation(tmp_path: Path) -> None:
    z = volcanic_dem()
    dem = write_dem(tmp_path / "dem.tif", z)
    out = tmp_path / "f.tif"
    settings = FeatureSettings(channels=("elevation", "clahe"), block_px=128, clahe_kernel_px=32)
    compute_features(dem, out, settings)
    data, _, _, tags = read_stack(out)
    p1, med, p99 = (float(tags[f"elevation_{k}"]) for k in ("p1", "median", "p99"))
    zz = np.where(z == NODATA_FLOAT, med, z.astype(np.float64))
    expected = clahe(np.clip((zz - p1) / (p99 - p1), 0, 1), 32, 0.01)
    valid = z != NODATA_FLOAT
    np.testing.assert_array_equal(data[1][valid], expected[valid])
    assert np.corrcoef(data[0][valid], data[1][valid])[0, 1] > 0.5


# --- errors ------------------------------------------------------------------------------------------


def test_all_nodata_dem_is_an_input_error(tmp_path: Path) -> None:
    dem = write_dem(tmp_path / "dem.tif", np.full((50, 60), NODATA_FLOAT))
    out = tmp_path / "f.tif"
    with pytest.raises(InputError, match=r"region 'r9'.*all pixels are nodata"):
        compute_features(dem, out, FeatureSettings(), region="r9")
    assert not out.exists()


def test_geographic_dem_is_an_input_error(tmp_path: Path) -> None:
    dem = write_dem(tmp_path / "dem.tif", np.ones((50, 60)), res=0.001, crs="EPSG:4326")
    with pytest.raises(InputError, match="metric"):
        compute_features(dem, tmp_path / "f.tif", FeatureSettings(), region="r9")


def test_missing_dem_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="region 'r9'"):
        compute_features(tmp_path / "nope.tif", tmp_path / "f.tif", FeatureSettings(), region="r9")
