"""Tests of the vectorize step: cleaning, splitting, polygons, morphometry, block invariance, errors."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pyproj
import pytest
import rasterio
import yaml
from affine import Affine
from rasterio.features import rasterize
from scipy import ndimage
from shapely.geometry import Point

from cinderseg.cones.morphometry import CONE_COLUMNS, SUMMARY_COLUMNS, cone_attributes
from cinderseg.cones.vectorize import VectorizeSettings, vectorize_cones, write_cone_products
from cinderseg.core.errors import ConfigError, InputError
from cinderseg.core.raster import NODATA_FLOAT, geotiff_profile
from cinderseg.terrain.synthetic import SyntheticParams, generate_synthetic_region

REPO = Path(__file__).resolve().parent.parent
RES = 30.0
X0, Y0 = 500000.0, 2200000.0
UTM = "EPSG:32605"


def _transform(x0: float = X0, y0: float = Y0, res: float = RES) -> Affine:
    return Affine(res, 0.0, x0, 0.0, -res, y0)


def _centres(shape: tuple[int, int], transform: Affine) -> tuple[np.ndarray, np.ndarray]:
    """Map x, y of the pixel centres."""
    rows, cols = np.indices(shape)
    x = transform.c + (cols + 0.5) * transform.a
    y = transform.f + (rows + 0.5) * transform.e
    return x, y


def _write(path: Path, array: np.ndarray, transform: Affine | None = None, crs: str = UTM) -> Path:
    profile = geotiff_profile(
        width=array.shape[1],
        height=array.shape[0],
        count=1,
        dtype="float32",
        crs=crs,
        transform=transform or _transform(),
        nodata=NODATA_FLOAT,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array.astype("float32"), 1)
    return path


def _plane(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A tilted base surface (about 3.3 degrees)."""
    return 1000.0 + 0.05 * (x - X0) + 0.03 * (y - Y0)


def _flat_dem(tmp_path: Path, shape: tuple[int, int]) -> Path:
    x, y = _centres(shape, _transform())
    return _write(tmp_path / "dem.tif", _plane(x, y))


#: The network's own outlines, unfiltered by height: the object-forming steps (threshold, holes,
#: opening, splitting, circularity) tested on their own, on DEMs without relief.
#: The network's own objects, without the learned second stage (tests/test_second_stage.py tests it).
FIRST_STAGE = {"second_stage": "none"}
NETWORK_OUTLINE = {"outline": "network", "min_height_m": 0, "min_height_to_diameter": 0, **FIRST_STAGE}


def _run(tmp_path: Path, prob: np.ndarray, dem: Path | None = None, **kw) -> gpd.GeoDataFrame:
    """vectorize_cones on a probability array (on the default grid) with the network's outlines
    (unless ``kw`` says otherwise); reads back the written layer."""
    dem = dem or _flat_dem(tmp_path, prob.shape)
    prob_path = _write(tmp_path / "prob.tif", prob)
    out = tmp_path / "cones.gpkg"
    returned = vectorize_cones(prob_path, dem, out, VectorizeSettings(**{**NETWORK_OUTLINE, **kw}))
    back = gpd.read_file(out, layer="cones")
    assert len(back) == len(returned)
    return back


def _disc(shape: tuple[int, int], cx: float, cy: float, radius: float) -> np.ndarray:
    x, y = _centres(shape, _transform())
    return np.hypot(x - cx, y - cy) <= radius


def _at(row: float, col: float) -> tuple[float, float]:
    """Map coordinates of a (fractional) pixel position."""
    return X0 + col * RES, Y0 - row * RES


# --------------------------------------------------------------------------- settings


def test_settings_defaults_match_schema_and_bad_values_fail():
    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    section = schema["properties"]["vectorize"]["properties"]
    defaults = asdict(VectorizeSettings())
    assert set(section) == set(defaults)
    assert {k: v["default"] for k, v in section.items()} == defaults
    assert VectorizeSettings.from_config(None) == VectorizeSettings()
    for bad in (0, 1, 1.5, -0.1, "0.5", True, math.nan):
        with pytest.raises(ConfigError, match=r"^vectorize\.threshold: "):
            VectorizeSettings.from_config({"threshold": bad})
    with pytest.raises(ConfigError, match=r"vectorize\.opening_px"):
        VectorizeSettings(opening_px=-1)
    with pytest.raises(ConfigError, match=r"vectorize\.split_saddle_ratio"):
        VectorizeSettings(split_saddle_ratio=0)
    with pytest.raises(ConfigError, match=r"vectorize\.fill_holes"):
        VectorizeSettings(fill_holes="yes")
    with pytest.raises(ConfigError, match=r"^vectorize: unknown key 'thresold'"):
        VectorizeSettings.from_config({"thresold": 0.5})
    with pytest.raises(ConfigError, match=r"^vectorize\.outline: 'lidar' is not one of: network, dem$"):
        VectorizeSettings(outline="lidar")
    with pytest.raises(ConfigError, match=r"^vectorize\.min_height_m: "):
        VectorizeSettings(min_height_m=-1)
    for bad in (-0.01, 1, "0.05"):
        with pytest.raises(ConfigError, match=r"^vectorize\.min_height_to_diameter: "):
            VectorizeSettings(min_height_to_diameter=bad)


# --------------------------------------------------------------------------- outlines from the DEM


def _cone_field(tmp_path: Path, cones: list[tuple[float, float, float, float]], shape=(160, 160)) -> Path:
    """A DEM of pointed cones (x, y, basal radius m, height m) on the tilted plane."""
    x, y = _centres(shape, _transform())
    z = _plane(x, y)
    for cx, cy, radius, height in cones:
        z = z + _cone_profile(np.hypot(x - cx, y - cy), radius, height, "pointed")
    return _write(tmp_path / "dem.tif", z)


def _radius(polygon) -> float:
    return math.sqrt(polygon.area / math.pi)


def test_dem_outline_puts_a_too_wide_network_object_on_the_foot_of_its_cone(tmp_path):
    """The network says where a cone is (a blob 1.5 times too wide, 2 px off centre); the DEM says
    where its foot is."""
    cx, cy = _at(80, 80)
    dem = _cone_field(tmp_path, [(cx, cy, 450.0, 80.0)])
    prob = _disc((160, 160), cx + 60, cy - 45, 675.0).astype(float)
    own = _run(tmp_path, prob, dem)
    assert len(own) == 1 and _radius(own.geometry[0]) == pytest.approx(675, rel=0.03)
    cones = _run(tmp_path, prob, dem, outline="dem")
    assert len(cones) == 1
    cone = cones.iloc[0]
    assert _radius(cone.geometry) == pytest.approx(450, rel=0.08)
    assert math.hypot(cone.geometry.centroid.x - cx, cone.geometry.centroid.y - cy) < RES
    assert cone.basal_diameter_m == pytest.approx(900, rel=0.08)
    assert cone.height_m == pytest.approx(80, rel=0.1)
    # morphometry is measured on the DEM outline: the wide blob took in flat ground
    assert cone.height_to_diameter > own.iloc[0].height_to_diameter * 1.3


def test_dem_outline_makes_one_cone_of_a_cone_split_in_two(tmp_path):
    cx, cy = _at(80, 80)
    dem = _cone_field(tmp_path, [(cx, cy, 450.0, 80.0)])
    x, _ = _centres((160, 160), _transform())
    halves = _disc((160, 160), cx, cy, 450.0) & (np.abs(x - cx) > 40)  # a gap: two network objects
    assert len(_run(tmp_path, halves.astype(float), dem, min_circularity=0)) == 2
    merged = _run(tmp_path, halves.astype(float), dem, outline="dem", min_circularity=0)
    assert len(merged) == 1 and _radius(merged.geometry[0]) == pytest.approx(450, rel=0.1)
    assert list(merged.cone_id) == [1]


def test_an_object_without_relief_keeps_its_own_outline(tmp_path):
    prob = _disc((160, 160), *_at(80, 80), 300.0).astype(float)
    own = _run(tmp_path, prob)  # flat DEM: no cone to outline
    kept = _run(tmp_path, prob, outline="dem")
    assert len(kept) == len(own) == 1
    assert kept.geometry[0].equals_exact(own.geometry[0], tolerance=1e-6)


def test_low_objects_are_not_cones(tmp_path):
    """A cone (H/D 0.09), a lava mound as wide but flat (H/D 0.03) and a small, low knoll (18 m)."""
    cone, mound, knoll = _at(40, 40), _at(40, 120), _at(120, 80)
    dem = _cone_field(
        tmp_path, [(*cone, 450.0, 80.0), (*mound, 450.0, 27.0), (*knoll, 150.0, 18.0)], shape=(160, 160)
    )
    prob = (
        _disc((160, 160), *cone, 450.0) | _disc((160, 160), *mound, 450.0) | _disc((160, 160), *knoll, 150.0)
    ).astype(float)
    every = _run(tmp_path, prob, dem, outline="dem")
    assert len(every) == 3
    by_place = every.sort_values("height_m", ascending=False).reset_index(drop=True)
    assert by_place.height_to_diameter[0] > 0.07 and by_place.height_to_diameter[1] < 0.04
    defaults = vectorize_cones(
        _write(tmp_path / "p.tif", prob), dem, tmp_path / "d.gpkg", VectorizeSettings(**FIRST_STAGE)
    )
    assert len(defaults) == 1, "the defaults keep the cone only"
    assert defaults.geometry[0].distance(Point(*cone)) == 0 and list(defaults.cone_id) == [1]
    tall_only = _run(tmp_path, prob, dem, outline="dem", min_height_m=20)
    assert len(tall_only) == 2 and tall_only.height_m.min() >= 20
    steep_only = _run(tmp_path, prob, dem, outline="dem", min_height_to_diameter=0.05)
    assert len(steep_only) == 2 and steep_only.height_to_diameter.min() >= 0.05
    assert list(steep_only.cone_id) == [1, 2]


# --------------------------------------------------------------------------- morphometry


def _cone_profile(r: np.ndarray, radius: float, height: float, kind: str) -> np.ndarray:
    """Height above the base of an axially symmetric cone at distance r (m)."""
    if kind == "pointed":
        return height * np.clip(1 - r / radius, 0, None)
    if kind == "crater":  # parabolic crater of depth 0.4 H inside a rim at 0.4 R
        rim = 0.4 * radius
        inner = height - 0.4 * height * (1 - (r / rim) ** 2)
        return np.where(r < rim, inner, height * np.clip((radius - r) / (radius - rim), 0, None))
    top = 0.3 * radius  # flat (slightly domed) top
    return np.where(
        r < top,
        height * (1 + 0.05 * (1 - (r / top) ** 2)),
        height * np.clip((radius - r) / (radius - top), 0, None),
    )


def _analytic_volume(radius: float, height: float, kind: str) -> float:
    r = np.linspace(0, radius, 200001)
    return float(np.trapezoid(2 * np.pi * r * _cone_profile(r, radius, height, kind), r))


def test_attributes_of_cones_of_known_size(tmp_path):
    shape = (240, 200)
    radius, height = 600.0, 216.0  # D = 1200 m = 40 px, H/W = 0.18
    kinds = {"pointed": _at(50.5, 60.5), "crater": _at(120.5, 140.5), "flat": _at(190.5, 60.5)}
    x, y = _centres(shape, _transform())
    dem = _plane(x, y)
    prob = np.zeros(shape)
    for kind, (cx, cy) in kinds.items():
        r = np.hypot(x - cx, y - cy)
        dem += _cone_profile(r, radius, height, kind)
        prob[r <= radius] = 0.9
    dem_path = _write(tmp_path / "dem.tif", dem)
    cones = _run(tmp_path, prob, dem_path)
    assert len(cones) == 3
    assert list(cones["cone_id"]) == [1, 2, 3]  # raster order of the first pixel: pointed, crater, flat
    for (kind, (cx, cy)), cone in zip(kinds.items(), cones.itertuples(), strict=True):
        assert abs(cone.centroid_x - cx) < RES / 2 and abs(cone.centroid_y - cy) < RES / 2, kind
        assert abs(cone.circle_x - cx) < RES / 2 and abs(cone.circle_y - cy) < RES / 2, kind
        assert abs(cone.basal_diameter_m - 2 * radius) < RES, kind
        assert abs(cone.basal_diameter_fit_m - 2 * radius) < RES, kind
        assert abs(cone.circle_radius_m - radius) < RES / 2, kind
        assert cone.circularity > 0.97, kind
        base = float(_plane(np.array(cx), np.array(cy)))
        assert abs(cone.base_elevation_m - base) < 2.0, kind
        top = height * (1.05 if kind == "flat" else 1.0)
        assert cone.height_m == pytest.approx(top, rel=0.03), kind
        assert cone.height_to_diameter == pytest.approx(top / (2 * radius), rel=0.04), kind
        assert cone.volume_m3 == pytest.approx(_analytic_volume(radius, height, kind), rel=0.10), kind
        assert cone.probability_mean == pytest.approx(0.9) and cone.probability_max == pytest.approx(0.9)
        assert not cone.touches_edge
        assert cone.region == ""
    pointed, crater, flat = cones.itertuples()
    assert pointed.summit_elevation_m == pytest.approx(
        float(_plane(*map(np.array, kinds["pointed"]))) + height, abs=1
    )
    assert pointed.flank_slope_mean_deg == pytest.approx(math.degrees(math.atan(height / radius)), abs=2.0)
    assert crater.flank_slope_mean_deg > pointed.flank_slope_mean_deg  # steeper flank outside the rim
    assert not pointed.crater and pointed.crater_depth_m == 0
    assert not flat.crater and flat.crater_depth_m == 0
    assert crater.crater
    assert crater.crater_depth_m == pytest.approx(0.4 * height, rel=0.1)


def test_realistic_cones_measured_and_block_size_invariant(tmp_path):
    """Synthetic Mauna Kea-like cones: true outlines as probability, blocks smaller than the raster."""
    params = SyntheticParams(
        seed=3, width_px=320, height_px=320, n_cones=14, diameter_median_m=600, diameter_max_m=1500
    )
    region = generate_synthetic_region(params)
    shape = region.dem.shape
    mask = rasterize(((g, 1) for g in region.cones.geometry), out_shape=shape, transform=region.transform)
    prob = ndimage.gaussian_filter(mask.astype(float), 1.0)
    prob[-6:-3, :] = 0.9  # a line across the raster: wider than max_diameter_m, not a cone
    dem = _write(tmp_path / "dem.tif", region.dem, region.transform, params.crs)
    prob_path = _write(tmp_path / "prob.tif", prob, region.transform, params.crs)
    results = []
    for block in (64, 4096):
        settings = VectorizeSettings(block_px=block, max_diameter_m=2000.0, **NETWORK_OUTLINE)
        out = tmp_path / f"cones_{block}.gpkg"
        vectorize_cones(prob_path, dem, out, settings, region="syn", summary_path=tmp_path / f"s{block}.csv")
        results.append(gpd.read_file(out, layer="cones"))
    small, whole = results
    assert len(small) == len(whole) > 0
    pd.testing.assert_frame_equal(small.drop(columns="geometry"), whole.drop(columns="geometry"))
    assert small.geometry.geom_equals_exact(whole.geometry, tolerance=0).all()
    assert (tmp_path / "s64.csv").read_text() == (tmp_path / "s4096.csv").read_text()
    opened = [
        vectorize_cones(
            prob_path,
            dem,
            tmp_path / "o.gpkg",
            VectorizeSettings(block_px=block, max_diameter_m=2000, opening_px=2, **NETWORK_OUTLINE),
        )
        for block in (64, 4096)
    ]
    assert len(opened[0]) == len(opened[1]) > 0
    assert opened[0].geometry.geom_equals_exact(opened[1].geometry, tolerance=0).all()
    from_dem = [
        vectorize_cones(
            prob_path,
            dem,
            tmp_path / "d.gpkg",
            VectorizeSettings(block_px=block, max_diameter_m=2000, **FIRST_STAGE),
        )
        for block in (64, 4096)
    ]
    assert len(from_dem[0]) == len(from_dem[1]) > 0
    pd.testing.assert_frame_equal(from_dem[0].drop(columns="geometry"), from_dem[1].drop(columns="geometry"))
    # cones do straddle the 64 px block borders (and their halos)
    cols = [(b[0] - region.transform.c) / RES for b in whole.geometry.bounds.itertuples(index=False)]
    cols_max = [(b[2] - region.transform.c) / RES for b in whole.geometry.bounds.itertuples(index=False)]
    assert sum(math.floor(a / 64) != math.floor(b / 64) for a, b in zip(cols, cols_max, strict=True)) >= 3
    # the line is dropped; every polygon is at most max_diameter_m across
    bounds = whole.geometry.bounds
    assert ((bounds.maxx - bounds.minx) <= 2000).all() and ((bounds.maxy - bounds.miny) <= 2000).all()
    assert whole.crs == rasterio.crs.CRS.from_string(params.crs)
    # polygons cover the thresholded pixels (line excluded)
    back = rasterize(((g, 1) for g in whole.geometry), out_shape=shape, transform=region.transform)
    want = (prob >= 0.5) & (np.arange(shape[0])[:, None] < shape[0] - 8)
    assert (back.astype(bool) & want).sum() / (back.astype(bool) | want).sum() > 0.99
    # isolated true cones come back one to one, with their size, height and crater
    true = region.cones
    isolated = true[~true["coalesced"]]
    assert len(isolated) >= 5
    xy = np.c_[whole.centroid_x, whole.centroid_y]
    for cone in isolated.itertuples():
        dist = np.hypot(xy[:, 0] - cone.x, xy[:, 1] - cone.y)
        found = whole.iloc[int(np.argmin(dist))]
        assert dist.min() < RES, cone.cone_id
        assert found.basal_diameter_m == pytest.approx(cone.basal_diameter_m, rel=0.05)
        assert found.height_m == pytest.approx(cone.height_m, rel=0.08)
        if not cone.breached:
            assert bool(found.crater) == bool(cone.crater), cone.cone_id
    assert whole["height_to_diameter"].median() == pytest.approx(0.18, abs=0.03)
    assert len(whole) >= len(true) - true["coalesced"].sum() // 2 - 2


# --------------------------------------------------------------------------- cleaning and splitting


def test_touching_discs_split_ellipse_not(tmp_path):
    shape = (120, 160)
    a, b = _at(35.5, 30.5), _at(35.5, 48.5)  # two 300 m discs 540 m apart (overlapping by 60 m)
    prob = (_disc(shape, *a, 300) | _disc(shape, *b, 300)).astype(float)
    x, y = _centres(shape, _transform())
    ex, ey = _at(80.5, 110.5)
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    u, v = (x - ex) * c + (y - ey) * s, -(x - ex) * s + (y - ey) * c
    prob[(u / 420) ** 2 + (v / 300) ** 2 <= 1] = 0.8  # ellipse of aspect 1.4
    relief = [_cone_profile(np.hypot(x - cx, y - cy), 300, 108, "pointed") for cx, cy in (a, b)]
    dem = _write(tmp_path / "dem.tif", _plane(x, y) + np.maximum(*relief))  # two coalesced cones
    cones = _run(tmp_path, prob, dem)
    assert len(cones) == 3
    centres = np.c_[cones.centroid_x, cones.centroid_y]
    for cx, cy in (a, b, (ex, ey)):
        assert np.hypot(centres[:, 0] - cx, centres[:, 1] - cy).min() < 2 * RES
    discs = cones[cones.probability_max == 1.0]
    assert len(discs) == 2 and discs.area_m2.sum() == pytest.approx(
        prob[prob == 1].sum() * RES * RES, rel=0.01
    )
    # the base ring of each leaves out its neighbour: heights are those of the cones
    assert discs.height_m.to_numpy() == pytest.approx([108, 108], rel=0.01)
    assert len(_run(tmp_path, prob, dem, split_touching=False, min_circularity=0)) == 2
    assert len(_run(tmp_path, prob, dem, split_min_distance_m=600, min_circularity=0)) == 2
    assert len(_run(tmp_path, prob, dem, split_saddle_ratio=0.3, min_circularity=0)) == 2  # waist 0.44 x r
    # unsplit, the pair is a peanut, not round: the default min_circularity drops it
    assert len(_run(tmp_path, prob, dem, split_touching=False)) == 1


def test_elongated_objects_are_not_cones(tmp_path):
    prob = np.zeros((100, 100))
    prob[40:48, 10:90] = 1.0  # a 240 m x 2400 m lobe: circularity about 0.3
    prob[60:80, 40:60] = 1.0  # a square: circularity about 0.85 after smoothing
    assert len(_run(tmp_path, prob)) == 1
    assert len(_run(tmp_path, prob, min_circularity=0)) == 2
    with pytest.raises(ConfigError, match=r"vectorize.min_circularity"):
        VectorizeSettings(min_circularity=1.5)


def test_threshold_is_inclusive_and_selects_the_contour(tmp_path):
    shape = (100, 100)
    cx, cy = _at(50, 50)
    x, y = _centres(shape, _transform())
    sigma = 400.0
    prob = 0.95 * np.exp(-(np.hypot(x - cx, y - cy) ** 2) / (2 * sigma**2))
    for t in (0.3, 0.7):
        cones = _run(tmp_path, prob, threshold=t)
        assert len(cones) == 1
        expected = 2 * sigma * math.sqrt(2 * math.log(0.95 / t))
        assert cones.basal_diameter_m.iloc[0] == pytest.approx(expected, abs=RES)
    step = np.zeros(shape)
    step[10:14, 10:14] = 0.5
    step[40:44, 40:44] = np.nextafter(np.float32(0.5), np.float32(0))
    cones = _run(tmp_path, step, threshold=0.5, min_area_m2=0)
    assert len(cones) == 1 and cones.area_m2.iloc[0] == pytest.approx(15.5 * RES * RES)


def test_min_area_filter(tmp_path):
    shape = (60, 100)
    prob = np.zeros(shape)
    prob[10:13, 10:13] = 0.9  # 9 px = 8100 m2
    prob[10:12, 40:44] = 0.9  # 8 px = 7200 m2
    prob[30:50, 60:80] = 0.9
    cones = _run(tmp_path, prob, min_area_m2=7500)
    assert len(cones) == 2
    assert sorted(round(a / (RES * RES) + 0.5) for a in cones.area_m2) == [9, 400]
    assert len(_run(tmp_path, prob, min_area_m2=8200)) == 1
    assert len(_run(tmp_path, prob, min_area_m2=0)) == 3


def test_holes_filled_and_inner_objects_absorbed(tmp_path):
    shape = (80, 80)
    cx, cy = _at(40.5, 40.5)
    outer, inner = _disc(shape, cx, cy, 600), _disc(shape, cx, cy, 240)
    prob = (outer & ~inner).astype(float)
    prob[_disc(shape, cx, cy, 75)] = 0.7  # a small object in the hole
    filled = _run(tmp_path, prob, min_circularity=0)
    assert len(filled) == 1
    geom = filled.geometry.iloc[0]
    assert len(geom.interiors) == 0
    assert filled.area_m2.iloc[0] == pytest.approx(outer.sum() * RES * RES, rel=0.01)
    kept = _run(tmp_path, prob, min_circularity=0, fill_holes=False)
    assert len(kept) == 2
    ring = kept.loc[kept.area_m2.idxmax()]
    assert len(ring.geometry.interiors) == 1
    assert ring.area_m2 == pytest.approx((outer & ~inner).sum() * RES * RES, rel=0.01)


def test_opening_removes_thin_bridges(tmp_path):
    shape = (60, 120)
    prob = (_disc(shape, *_at(30.5, 20.5), 240) | _disc(shape, *_at(30.5, 90.5), 240)).astype(float)
    prob[30, 20:91] = 0.9  # a one-pixel bridge
    assert len(_run(tmp_path, prob, min_circularity=0, split_touching=False)) == 1
    opened = _run(tmp_path, prob, min_circularity=0, split_touching=False, opening_px=1)
    assert len(opened) == 2
    assert opened.basal_diameter_m.to_numpy() == pytest.approx([480, 480], abs=2 * RES)


# --------------------------------------------------------------------------- outputs and georeferencing


def test_empty_result_writes_empty_layer_with_all_columns(tmp_path):
    shape = (50, 50)
    dem = _flat_dem(tmp_path, shape)
    prob = _write(tmp_path / "prob.tif", np.full(shape, 0.2))
    out, summary = tmp_path / "cones.gpkg", tmp_path / "summary.csv"
    cones = vectorize_cones(
        prob, dem, out, VectorizeSettings(**FIRST_STAGE), region="none", summary_path=summary
    )
    assert len(cones) == 0
    assert [name for name, _ in pyogrio.list_layers(out)] == ["cones", "rejected"]
    assert len(gpd.read_file(out, layer="rejected")) == 0
    back = gpd.read_file(out, layer="cones")
    assert len(back) == 0
    assert list(back.columns) == [*CONE_COLUMNS, "geometry"]
    assert back.crs == pyproj.CRS(UTM)
    table = pd.read_csv(summary)
    assert list(table.columns) == list(SUMMARY_COLUMNS)
    assert table.loc[0, "region"] == "none" and table.loc[0, "n_cones"] == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_georeferencing_round_trip_and_lonlat(tmp_path):
    crs = "EPSG:32719"  # southern UTM, false northing
    transform = _transform(x0=312345.0, y0=7654321.0, res=RES)
    shape = (90, 110)
    cx, cy = 312345.0 + 47.3 * RES, 7654321.0 - 38.6 * RES  # not on a pixel centre
    x, y = _centres(shape, transform)
    prob = (np.hypot(x - cx, y - cy) <= 450).astype(float)
    dem = _write(tmp_path / "dem.tif", 500 + 0.01 * (x - x.min()), transform, crs)
    prob_path = _write(tmp_path / "prob.tif", prob, transform, crs)
    cones = vectorize_cones(
        prob_path, dem, tmp_path / "c.gpkg", VectorizeSettings(**NETWORK_OUTLINE), region="south"
    )
    back = gpd.read_file(tmp_path / "c.gpkg", layer="cones")
    assert back.crs == pyproj.CRS(crs) and cones.crs == pyproj.CRS(crs)
    assert len(back) == 1
    cone = back.iloc[0]
    assert abs(cone.centroid_x - cx) < RES / 2 and abs(cone.centroid_y - cy) < RES / 2
    assert back.geometry.iloc[0].hausdorff_distance(Point(cx, cy).buffer(450)) < RES
    assert cone.region == "south"
    lon, lat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(cx, cy)
    assert lat < 0 and abs(cone.lon - lon) < 2e-4 and abs(cone.lat - lat) < 2e-4
    exact = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(
        cone.centroid_x, cone.centroid_y
    )
    assert (cone.lon, cone.lat) == pytest.approx(exact, abs=1e-9)


def test_cone_attributes_reprojects_and_flags_edges_and_nodata(tmp_path):
    shape = (80, 80)
    x, y = _centres(shape, _transform())
    dem = _plane(x, y)
    dem[60:, 60:] = NODATA_FLOAT
    dem_path = _write(tmp_path / "dem.tif", dem)
    circles = gpd.GeoSeries(
        [
            Point(_at(30, 30)).buffer(300),  # inside
            Point(_at(2, 40)).buffer(300),  # cut by the top edge
            Point(_at(57, 57)).buffer(150),  # reaching into the nodata corner
        ],
        crs=UTM,
    )
    cones = cone_attributes(gpd.GeoDataFrame(geometry=circles.to_crs("EPSG:4326")), dem_path, region="r")
    assert cones.crs == pyproj.CRS(UTM)
    assert list(cones.columns) == [*CONE_COLUMNS, "geometry"]
    assert list(cones.cone_id) == [1, 2, 3]
    assert list(cones.touches_edge) == [False, True, True]
    assert cones.probability_mean.isna().all() and cones.probability_max.isna().all()
    assert cones.area_m2.iloc[0] == pytest.approx(math.pi * 300**2, rel=0.01)
    assert cones.height_m.iloc[0] == pytest.approx(0.0, abs=0.01)  # a plane: no relief
    assert cones.volume_m3.iloc[0] == pytest.approx(0.0, abs=20.0)  # float32 rounding only
    assert cones.flank_slope_mean_deg.iloc[0] == pytest.approx(
        math.degrees(math.atan(math.hypot(0.05, 0.03)))
    )
    empty = cone_attributes(gpd.GeoSeries([], crs=UTM), dem_path)
    assert len(empty) == 0 and list(empty.columns) == [*CONE_COLUMNS, "geometry"]


def test_products_and_figures(tmp_path):
    shape = (60, 60)
    x, y = _centres(shape, _transform())
    cx, cy = _at(30.5, 30.5)
    r = np.hypot(x - cx, y - cy)
    dem = _write(tmp_path / "dem.tif", _plane(x, y) + _cone_profile(r, 450, 160, "crater"))
    prob = _write(tmp_path / "prob.tif", (r <= 450) * 0.8)
    paths = {
        "cones_path": tmp_path / "out" / "c.gpkg",
        "summary_path": tmp_path / "out" / "c.csv",
        "size_frequency_path": tmp_path / "fig" / "sf.png",
        "height_vs_diameter_path": tmp_path / "fig" / "hd.png",
        "cone_map_path": tmp_path / "fig" / "map.png",
    }
    cones = write_cone_products(prob, dem, VectorizeSettings(**FIRST_STAGE), region="one", **paths)
    assert len(cones) == 1
    table = pd.read_csv(paths["summary_path"])
    assert table.loc[0, "n_cones"] == 1 and table.loc[0, "n_crater"] == 1
    assert table.loc[0, "basal_diameter_median_m"] == pytest.approx(900, abs=RES)
    for key in ("size_frequency_path", "height_vs_diameter_path", "cone_map_path"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # nothing found: the figures still come out, saying so
    zero = _write(tmp_path / "zero.tif", np.zeros(shape))
    assert len(write_cone_products(zero, dem, VectorizeSettings(**FIRST_STAGE), region="none", **paths)) == 0
    for key in ("size_frequency_path", "height_vs_diameter_path", "cone_map_path"):
        assert paths[key].stat().st_size > 1000


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_fail_with_one_line_and_leave_no_output(tmp_path):
    shape = (40, 40)
    dem = _flat_dem(tmp_path, shape)
    out, summary = tmp_path / "c.gpkg", tmp_path / "s.csv"
    prob = np.zeros(shape)
    prob[10:20, 10:20] = 0.9
    shifted = _write(tmp_path / "shifted.tif", prob, _transform(x0=X0 + RES))
    smaller = _write(tmp_path / "smaller.tif", prob[:-1])
    other_crs = _write(tmp_path / "crs.tif", prob, crs="EPSG:32606")
    good = _write(tmp_path / "prob.tif", prob)
    geographic = _write(
        tmp_path / "geo.tif", np.full(shape, 100.0), Affine(0.001, 0, -155, 0, -0.001, 20), "EPSG:4326"
    )
    cases = [
        (shifted, dem, r"probability raster of region 'mk': .*shifted\.tif is not on the grid of the DEM"),
        (smaller, dem, r"smaller\.tif is not on the grid .*39x40 px vs 40x40"),
        (other_crs, dem, r"crs\.tif is not on the grid .*CRS"),
        (tmp_path / "missing.tif", dem, r"probability raster of region 'mk': file not found: .*missing\.tif"),
        (good, tmp_path / "nodem.tif", r"DEM of region 'mk': file not found: .*nodem\.tif"),
        (good, geographic, r"DEM of region 'mk': CRS EPSG:4326 is not projected"),
    ]
    for prob_path, dem_path, message in cases:
        with pytest.raises(InputError, match=message) as err:
            vectorize_cones(
                prob_path, dem_path, out, VectorizeSettings(**FIRST_STAGE), region="mk", summary_path=summary
            )
        assert "\n" not in str(err.value)
        assert not out.exists() and not summary.exists()
    with pytest.raises(ConfigError, match=r"vectorize\.threshold"):
        vectorize_cones(good, dem, out, VectorizeSettings(threshold=1.0, **FIRST_STAGE))
    assert not out.exists()


def test_gis_modules_do_not_import_tensorflow():
    code = (
        "import sys, cinderseg.cones.vectorize, cinderseg.assess.figures; "
        "print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
