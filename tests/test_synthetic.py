"""Tests of the synthetic region generator: morphometry measured on the generated DEM, distractors,
determinism, files written, parameter validation."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
from scipy import ndimage

from cinderseg.core.errors import ConfigError
from cinderseg.core.raster import NODATA_FLOAT
from cinderseg.terrain.synthetic import (
    CONE_COLUMNS,
    SyntheticParams,
    SyntheticRegion,
    generate_synthetic_region,
    write_synthetic_region,
)

RES = 20.0
PARAMS = SyntheticParams(seed=7, width_px=768, height_px=768, resolution_m=RES, n_cones=40)


@pytest.fixture(scope="module")
def region() -> SyntheticRegion:
    return generate_synthetic_region(PARAMS)


# ---------------------------------------------------------------------------------------------- measuring
@dataclasses.dataclass
class ConeMeasure:
    height_ratio: float  # detrended summit height / basal diameter
    flank_slope_deg: float  # mean slope of the detrended DEM on the mid-flank (0.55-0.8 of the radius)
    rim_ratio: float  # median radius of the highest point along 36 radial profiles / basal radius
    centre_depth: float  # highest point minus the centre (detrended), metres
    prominence: float  # detrended max within 0.6 R minus the ring's median, metres
    rim_heights: np.ndarray  # highest detrended point 0.3-0.7 R out along 36 radial profiles, metres
    azimuths: np.ndarray  # map azimuths (radians counter-clockwise from east) of those profiles
    downhill: float  # map azimuth of the ring plane's downhill direction


def _window(
    dem: np.ndarray, row: float, col: float, radius_px: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    half = math.ceil(1.6 * radius_px) + 2
    r0, c0 = max(int(row) - half, 0), max(int(col) - half, 0)
    sub = dem[r0 : int(row) + half + 1, c0 : int(col) + half + 1].astype(np.float64)
    rr, cc = np.mgrid[r0 : r0 + sub.shape[0], c0 : c0 + sub.shape[1]]
    return sub, cc + 0.5 - col, rr + 0.5 - row


def measure_cone(
    dem: np.ndarray,
    transform,
    x: float,
    y: float,
    radius_m: float,
    res: float,
    others: gpd.GeoDataFrame | None = None,
) -> ConeMeasure:
    """Measure a cone on the DEM around the labelled circle: the base is a plane fitted to the ring
    1.15-1.5 radii from the centre (the cone sits on a sloping flank), leaving out ring pixels within
    1.15 radii of the ``others`` cones (labelled neighbours)."""
    col, row = ~transform @ (x, y)
    radius = radius_m / res
    sub, dx, dy = _window(dem, row, col, radius)
    rho = np.hypot(dx, dy) / radius
    ring = (rho >= 1.15) & (rho <= 1.5)
    if others is not None:
        for o in others.itertuples(index=False):
            if (o.x, o.y) == (x, y):
                continue
            ocol, orow = ~transform @ (o.x, o.y)
            ring &= np.hypot(dx + col - ocol, dy + row - orow) > 1.15 * o.radius_m / res
    design = np.column_stack([np.ones(ring.sum()), dx[ring], dy[ring]])
    coef = np.linalg.lstsq(design, sub[ring], rcond=None)[0]
    # second pass without the highest ring pixels (a neighbour's flank, a knob)
    resid = sub[ring] - design @ coef
    low = resid <= np.percentile(resid, 60)
    coef = np.linalg.lstsq(design[low], sub[ring][low], rcond=None)[0]
    det = sub - (coef[0] + coef[1] * dx + coef[2] * dy)
    gy, gx = np.gradient(det, res)
    slope = np.degrees(np.arctan(np.hypot(gx, gy)))
    flank = (rho >= 0.55) & (rho <= 0.8)
    rhos = np.linspace(0.0, 1.0, 101)
    az_px = np.linspace(0.0, 2 * np.pi, 36, endpoint=False)  # in (col, row) = (east, south) axes
    origin_r, origin_c = -dy[0, 0], -dx[0, 0]  # position of the centre in window pixel coordinates
    rims, rim_heights = [], []
    for az in az_px:
        pr = origin_r - 0.5 + rhos * radius * np.sin(az)
        pc = origin_c - 0.5 + rhos * radius * np.cos(az)
        prof = ndimage.map_coordinates(det, [pr, pc], order=1)
        rims.append(rhos[int(np.argmax(prof))])
        rim_heights.append(prof[30:71].max())  # highest point 0.3-0.7 radii out
    centre = float(ndimage.map_coordinates(det, [[origin_r - 0.5], [origin_c - 0.5]], order=1)[0])
    return ConeMeasure(
        height_ratio=float(det[rho <= 1].max() / (2 * radius_m)),
        flank_slope_deg=float(slope[flank].mean()),
        rim_ratio=float(np.median(rims)),
        centre_depth=float(det[rho <= 1].max() - centre),
        prominence=float(det[rho <= 0.6].max() - np.median(det[ring])),
        rim_heights=np.array(rim_heights),
        azimuths=-az_px,  # south-positive to north-positive
        downhill=math.atan2(coef[2], -coef[1]),  # uphill is (+b east, +c south) -> downhill (-b, +c north)
    )


@pytest.fixture(scope="module")
def measures(region: SyntheticRegion) -> list[tuple[object, ConeMeasure]]:
    return [
        (c, measure_cone(region.dem, region.transform, c.x, c.y, c.radius_m, RES, region.cones))
        for c in region.cones.itertuples(index=False)
    ]


# ---------------------------------------------------------------------------------------------- morphometry
def test_height_over_basal_diameter_measured_on_dem(measures) -> None:
    resolved = [m for c, m in measures if not c.coalesced and c.basal_diameter_m >= 15 * RES]
    assert len(resolved) >= 15
    ratios = np.array([m.height_ratio for m in resolved])
    assert abs(ratios.mean() - 0.18) <= 0.03, ratios.mean()
    assert ratios.min() > 0.10 and ratios.max() < 0.28


def test_height_ratio_follows_parameter() -> None:
    params = dataclasses.replace(PARAMS, height_ratio=0.12, seed=11)
    reg = generate_synthetic_region(params)
    ratios = [
        measure_cone(reg.dem, reg.transform, c.x, c.y, c.radius_m, RES).height_ratio
        for c in reg.cones.itertuples(index=False)
        if not c.coalesced and c.basal_diameter_m >= 15 * RES
    ]
    assert abs(np.mean(ratios) - 0.12) <= 0.025


def test_crater_over_basal_diameter_measured_on_dem(measures) -> None:
    cratered = [
        m
        for c, m in measures
        if c.crater and not c.breached and not c.coalesced and c.basal_diameter_m >= 20 * RES
    ]
    assert len(cratered) >= 8
    rim = np.array([m.rim_ratio for m in cratered])
    assert abs(rim.mean() - 0.40) <= 0.05, rim.mean()
    # the crater is a real depression: the centre lies well below the rim
    heights = {id(m): c.height_m for c, m in measures}
    assert all(m.centre_depth > 0.15 * heights[id(m)] for m in cratered)


def test_cones_without_crater_have_rounded_tops(measures) -> None:
    plain = [
        (c, m) for c, m in measures if not c.crater and not c.coalesced and c.basal_diameter_m >= 15 * RES
    ]
    assert len(plain) >= 4
    for c, m in plain:
        assert m.centre_depth < 0.12 * c.height_m
        assert m.rim_ratio < 0.35  # highest point near the centre, not on a rim


def test_cones_present_where_labelled_and_flank_slopes(region, measures) -> None:
    for c, m in measures:
        assert m.prominence > 0.5 * c.height_m, c.cone_id
    slopes = np.array(
        [m.flank_slope_deg for c, m in measures if not c.coalesced and c.basal_diameter_m >= 15 * RES]
    )
    assert 20.0 <= slopes.mean() <= 35.0, slopes.mean()
    assert slopes.min() > 15.0 and slopes.max() < 40.0
    # negative control: the same statistic at random places away from cones is much smaller
    rng = np.random.default_rng(0)
    cx, cy, cr = (region.cones[k].to_numpy() for k in ("x", "y", "radius_m"))
    typical = float(np.median(cr))
    background = []
    while len(background) < 40:
        x = PARAMS.origin_x + rng.uniform(3 * typical, PARAMS.width_px * RES - 3 * typical)
        y = PARAMS.origin_y - rng.uniform(3 * typical, PARAMS.height_px * RES - 3 * typical)
        if np.all(np.hypot(cx - x, cy - y) > cr + 2 * typical):
            background.append(measure_cone(region.dem, region.transform, x, y, typical, RES).prominence)
    cone_prom = [m.prominence for c, m in measures if abs(c.radius_m - typical) < 0.3 * typical]
    assert np.median(background) < 0.25 * np.median(cone_prom)


def test_breached_craters_open_downslope() -> None:
    params = dataclasses.replace(PARAMS, seed=PARAMS.seed + 100, crater_fraction=1.0, breached_fraction=1.0)
    reg = generate_synthetic_region(params)
    assert reg.cones["breached"].all()
    breached = [
        measure_cone(reg.dem, reg.transform, c.x, c.y, c.radius_m, RES, reg.cones)
        for c in reg.cones.itertuples(index=False)
        if not c.coalesced and c.basal_diameter_m >= 15 * RES
    ]
    assert len(breached) >= 10
    aligned = 0
    for m in breached:
        low = int(np.argmin(m.rim_heights))
        assert m.rim_heights[low] < 0.7 * m.rim_heights.max()  # a sector of the rim is missing
        diff = abs((m.azimuths[low] - m.downhill + math.pi) % (2 * math.pi) - math.pi)
        aligned += diff < math.radians(60)
    assert aligned >= 0.8 * len(breached)
    # with breached_fraction 0 no rim has such a gap
    intact = generate_synthetic_region(dataclasses.replace(params, breached_fraction=0.0))
    gaps = [
        (m.rim_heights.min() / m.rim_heights.max())
        for c in intact.cones.itertuples(index=False)
        if not c.coalesced and c.basal_diameter_m >= 15 * RES
        for m in [measure_cone(intact.dem, intact.transform, c.x, c.y, c.radius_m, RES, intact.cones)]
    ]
    assert np.median(gaps) > 0.8


def test_cone_table_layout_and_overlaps(region) -> None:
    cones = region.cones
    assert list(cones.columns) == [*CONE_COLUMNS, "geometry"]
    assert len(cones) == PARAMS.n_cones
    assert cones["cone_id"].is_unique
    np.testing.assert_allclose(cones["basal_diameter_m"], 2 * cones["radius_m"])
    assert ((cones["crater_diameter_m"] > 0) == cones["crater"]).all()
    assert not (cones["breached"] & ~cones["crater"]).any()
    np.testing.assert_allclose(cones.geometry.area, np.pi * cones["radius_m"] ** 2, rtol=0.01)
    # whole basal circles inside the region
    xmin, ymin, xmax, ymax = cones.total_bounds
    assert xmin >= PARAMS.origin_x and xmax <= PARAMS.origin_x + PARAMS.width_px * RES
    assert ymax <= PARAMS.origin_y and ymin >= PARAMS.origin_y - PARAMS.height_px * RES
    x, y, r = (cones[k].to_numpy() for k in ("x", "y", "radius_m"))
    dist = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    overlap = dist < r[:, None] + r[None, :]
    np.fill_diagonal(overlap, False)
    coalesced = cones["coalesced"].to_numpy()
    assert coalesced.sum() >= 2
    assert np.array_equal(overlap.any(axis=1), coalesced)  # exactly the coalesced cones overlap


def test_coalesced_cones_keep_distinct_summits(region) -> None:
    """Coalesced neighbours combine by maximum: the cone relief (DEM minus the same terrain without cones)
    never exceeds the taller cone, each cone keeps its own summit and a saddle lies between them."""
    plain = {"n_lava_flows": 0, "n_gullies": 0, "n_pit_craters": 0, "n_knobs": 0}
    base = generate_synthetic_region(dataclasses.replace(PARAMS, n_cones=0, **plain))
    with_cones = generate_synthetic_region(dataclasses.replace(PARAMS, **plain))
    relief = with_cones.dem.astype(np.float64) - base.dem.astype(np.float64)
    cones = region.cones
    x, y, r, h = (cones[k].to_numpy() for k in ("x", "y", "radius_m", "height_m"))
    rows, cols = np.mgrid[: relief.shape[0], : relief.shape[1]]
    # relief never exceeds the tallest cone covering a pixel (a sum would exceed it where flanks overlap)
    bound = np.zeros(relief.shape)
    for c in cones.itertuples(index=False):
        col, row = ~region.transform @ (c.x, c.y)
        disc = np.hypot(cols + 0.5 - col, rows + 0.5 - row) <= 1.2 * c.radius_m / RES
        bound[disc] = np.maximum(bound[disc], c.height_m)
    assert np.all(relief <= 1.1 * bound + 5.0)  # + the roughness the cones bury
    checked = 0
    for i in range(len(cones)):
        for j in range(i + 1, len(cones)):
            if math.hypot(x[i] - x[j], y[i] - y[j]) >= r[i] + r[j]:
                continue
            (ci, ri_), (cj, rj_) = (~region.transform @ (x[i], y[i])), (~region.transform @ (x[j], y[j]))
            disc_i = np.hypot(cols + 0.5 - ci, rows + 0.5 - ri_) <= 0.5 * r[i] / RES
            disc_j = np.hypot(cols + 0.5 - cj, rows + 0.5 - rj_) <= 0.5 * r[j] / RES
            peak_i, peak_j = relief[disc_i].max(), relief[disc_j].max()
            assert peak_i > 0.9 * h[i] and peak_j > 0.9 * h[j]
            t = np.linspace(0.0, 1.0, 200)
            line = ndimage.map_coordinates(
                relief, [ri_ - 0.5 + t * (rj_ - ri_), ci - 0.5 + t * (cj - ci)], order=1
            )
            assert line.min() < min(peak_i, peak_j) - 0.15 * min(h[i], h[j])
            checked += 1
    assert checked >= 2


def test_diameters_follow_truncated_lognormal() -> None:
    params = SyntheticParams(seed=3, width_px=1024, height_px=1024, resolution_m=30.0, n_cones=150)
    d = generate_synthetic_region(params).cones["basal_diameter_m"].to_numpy()
    assert d.min() >= params.diameter_min_m and d.max() <= params.diameter_max_m
    assert 0.8 * params.diameter_median_m <= np.median(d) <= 1.25 * params.diameter_median_m
    assert 0.25 <= np.log(d).std() <= 0.5


def test_regional_slope_and_roughness(region) -> None:
    dem = region.dem.astype(np.float64)
    rows, cols = np.mgrid[: dem.shape[0], : dem.shape[1]]
    design = np.column_stack([np.ones(dem.size), cols.ravel() * RES, rows.ravel() * RES])
    coef = np.linalg.lstsq(design, dem.ravel(), rcond=None)[0]
    regional = math.degrees(math.atan(math.hypot(coef[1], coef[2])))
    assert 1.0 <= regional <= 10.0, regional
    # roughness off the cones: metres to a few tens of metres of relief around a 1 km mean
    highpass = dem - ndimage.uniform_filter(dem, size=int(2000 / RES) + 1, mode="nearest")
    off = np.ones(dem.shape, dtype=bool)
    for c in region.cones.itertuples(index=False):
        col, row = ~region.transform @ (c.x, c.y)
        off &= np.hypot(cols + 0.5 - col, rows + 0.5 - row) > 1.5 * c.radius_m / RES
    std = highpass[50:-50, 50:-50][off[50:-50, 50:-50]].std()
    assert 1.0 <= std <= 30.0, std
    assert region.dem.dtype == np.float32 and np.isfinite(region.dem).all()


# ---------------------------------------------------------------------------------------------- distractors
@pytest.fixture(scope="module")
def no_distractors() -> SyntheticRegion:
    return generate_synthetic_region(
        dataclasses.replace(PARAMS, n_lava_flows=0, n_gullies=0, n_pit_craters=0, n_knobs=0)
    )


def _diff(region: SyntheticRegion, no_distractors: SyntheticRegion, family: str) -> np.ndarray:
    only = {"n_lava_flows": 0, "n_gullies": 0, "n_pit_craters": 0, "n_knobs": 0}
    only[family] = getattr(PARAMS, family)
    reg = generate_synthetic_region(dataclasses.replace(PARAMS, **only))
    # the cones do not depend on the distractors
    assert reg.cones.drop(columns="geometry").equals(region.cones.drop(columns="geometry"))
    diff = reg.dem.astype(np.float64) - no_distractors.dem.astype(np.float64)
    # cones bury what lies under them: compare off the cones only
    diff[_cone_disc_mask(region, 1.25)] = 0.0
    return diff


def _cone_disc_mask(region: SyntheticRegion, scale: float = 1.0) -> np.ndarray:
    rows, cols = np.mgrid[: region.dem.shape[0], : region.dem.shape[1]]
    mask = np.zeros(region.dem.shape, dtype=bool)
    for c in region.cones.itertuples(index=False):
        col, row = ~region.transform @ (c.x, c.y)
        mask |= np.hypot(cols + 0.5 - col, rows + 0.5 - row) <= scale * c.radius_m / RES
    return mask


def test_pit_craters_are_unlabelled_depressions(region, no_distractors) -> None:
    diff = _diff(region, no_distractors, "n_pit_craters")
    labels, count = ndimage.label(diff < -1.0)
    assert count == PARAMS.n_pit_craters
    for k in range(1, count + 1):
        pit = labels == k
        assert diff[pit].min() < -10.0  # tens of metres deep
        # no cone around it: at most a metre-scale rim
        near = ndimage.binary_dilation(pit, iterations=10) & ~pit
        assert diff[near].max() < 0.1 * -diff[pit].min()
    assert not (labels > 0)[ndimage.binary_dilation(_cone_disc_mask(region, 1.25))].any()


def test_knobs_are_unlabelled_elongated_hills(region, no_distractors) -> None:
    diff = _diff(region, no_distractors, "n_knobs")
    assert diff.min() > -1e-3
    labels, count = ndimage.label(diff > 1.0)
    assert PARAMS.n_knobs - 2 <= count <= PARAMS.n_knobs
    aspects = []
    for sl in ndimage.find_objects(labels):
        rr, cc = np.nonzero(labels[sl] > 0)
        eig = np.linalg.eigvalsh(np.cov(np.vstack([rr, cc])))
        aspects.append(math.sqrt(eig[1] / max(eig[0], 1e-9)))
    assert np.median(aspects) > 1.3
    assert not (labels > 0)[ndimage.binary_dilation(_cone_disc_mask(region, 1.25))].any()


def test_lava_flows_and_gullies(region, no_distractors) -> None:
    flows = _diff(region, no_distractors, "n_lava_flows")
    assert flows.min() > -1e-3 and flows.max() > 5.0
    assert (flows > 1.0).mean() > 0.01  # lobes cover a visible part of the flank
    gullies = _diff(region, no_distractors, "n_gullies")
    assert gullies.max() < 1e-3 and gullies.min() < -5.0
    assert 0.001 < (gullies < -1.0).mean() < 0.1


# ---------------------------------------------------------------------------------------------- determinism
def test_deterministic_and_seed_dependent(region) -> None:
    again = generate_synthetic_region(PARAMS)
    assert again.dem.dtype == np.float32
    assert np.array_equal(again.dem, region.dem)
    assert again.cones.drop(columns="geometry").equals(region.cones.drop(columns="geometry"))
    assert again.cones.geometry.geom_equals_exact(region.cones.geometry, tolerance=0).all()
    other = generate_synthetic_region(dataclasses.replace(PARAMS, seed=PARAMS.seed + 1))
    assert np.abs(other.dem - region.dem).mean() > 1.0
    assert not np.allclose(other.cones["x"], region.cones["x"])


def test_transform_and_crs(region) -> None:
    assert region.transform.a == RES and region.transform.e == -RES
    assert (region.transform.c, region.transform.f) == (PARAMS.origin_x, PARAMS.origin_y)
    assert region.crs.to_epsg() == 32605
    assert region.dem.shape == (PARAMS.height_px, PARAMS.width_px)


def test_default_region_is_fast() -> None:
    start = time.perf_counter()
    reg = generate_synthetic_region(SyntheticParams())
    assert time.perf_counter() - start < 10.0
    assert reg.dem.shape == (1024, 1024) and len(reg.cones) == 60


# ---------------------------------------------------------------------------------------------- files
def test_write_round_trip(tmp_path: Path) -> None:
    params = SyntheticParams(
        seed=5, width_px=300, height_px=260, resolution_m=25.0, n_cones=8, crs="EPSG:32610"
    )
    dem_path, cones_path = tmp_path / "out" / "dem.tif", tmp_path / "out" / "cones.gpkg"
    write_synthetic_region(params, dem_path, cones_path)
    expected = generate_synthetic_region(params)
    with rasterio.open(dem_path) as ds:
        assert ds.dtypes == ("float32",)
        assert ds.nodata == NODATA_FLOAT
        assert ds.crs.to_epsg() == 32610
        assert ds.transform == expected.transform
        assert (ds.width, ds.height) == (300, 260)
        assert np.array_equal(ds.read(1), expected.dem)
    assert pyogrio.list_layers(cones_path)[:, 0].tolist() == ["cones"]
    cones = gpd.read_file(cones_path, layer="cones")
    assert list(cones.columns) == [*CONE_COLUMNS, "geometry"]
    assert len(cones) == 8 and cones.crs.to_epsg() == 32610
    assert cones["crater"].dtype == bool and cones["coalesced"].dtype == bool
    np.testing.assert_allclose(cones["radius_m"], expected.cones["radius_m"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cones.gpkg", "dem.tif"]


def test_zero_cones_gives_empty_valid_layer(tmp_path: Path) -> None:
    params = SyntheticParams(seed=2, width_px=64, height_px=48, n_cones=0)
    write_synthetic_region(params, tmp_path / "dem.tif", tmp_path / "cones.gpkg")
    info = pyogrio.read_info(tmp_path / "cones.gpkg", layer="cones")
    assert info["features"] == 0
    assert set(CONE_COLUMNS) <= set(info["fields"].tolist())
    cones = gpd.read_file(tmp_path / "cones.gpkg", layer="cones")
    assert len(cones) == 0 and cones.crs.to_epsg() == 32605
    with rasterio.open(tmp_path / "dem.tif") as ds:
        assert ds.read(1).shape == (48, 64)


# ---------------------------------------------------------------------------------------------- validation
def test_from_config_defaults_and_values() -> None:
    assert SyntheticParams.from_config({}, 30) == SyntheticParams()
    assert SyntheticParams.from_config(None, 30) == SyntheticParams()
    p = SyntheticParams.from_config({"seed": 4, "n_cones": 3, "diameter_median_m": 500}, 10.0)
    assert (p.seed, p.n_cones, p.diameter_median_m, p.resolution_m) == (4, 3, 500, 10.0)


@pytest.mark.parametrize(
    ("config", "resolution", "message"),
    [
        ({"width_px": 16}, 30, r"^synthetic\.width_px: 16 must be >= 32$"),
        (
            {"diameter_min_m": 2000, "diameter_max_m": 1700},
            30,
            r"^synthetic\.diameter_min_m: 2000 is larger than synthetic\.diameter_max_m \(1700\)$",
        ),
        ({"crater_fraction": 1.5}, 30, r"^synthetic\.crater_fraction: 1\.5 must be <= 1$"),
        ({"coalesced_fraction": -0.1}, 30, r"synthetic\.coalesced_fraction"),
        ({"height_ratio": 1.0}, 30, r"^synthetic\.height_ratio: 1\.0 must be < 1$"),
        ({"wobble": 3}, 30, r"^synthetic: unknown key 'wobble' \(allowed: breached_fraction, "),
        ({"crs": "EPSG:4326"}, 30, r"^synthetic\.crs: CRS EPSG:4326 is not projected in metres"),
        ({"crs": "not a crs"}, 30, r"^synthetic\.crs: CRS not a crs is not a valid CRS"),
        ({"n_cones": -1}, 30, r"^synthetic\.n_cones: -1 must be >= 0$"),
        ({"seed": 1.5}, 30, r"^synthetic\.seed: 1\.5 is not of type integer$"),
        ({"height_px": True}, 30, r"^synthetic\.height_px: True is not of type integer$"),
        ({"height_ratio": 0}, 30, r"^synthetic\.height_ratio: 0 must be > 0$"),
        ({"diameter_sigma": -1}, 30, r"synthetic\.diameter_sigma"),
        ({"origin_x": "east"}, 30, r"^synthetic\.origin_x: 'east' is not of type number$"),
        ({}, 0, r"^resolution_m: 0 must be > 0$"),
    ],
)
def test_bad_params_raise_config_error(config, resolution, message) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        SyntheticParams.from_config(config, resolution)
    assert "\n" not in str(err.value)


def test_too_many_cones_for_region_is_config_error() -> None:
    with pytest.raises(ConfigError, match=r"synthetic\.n_cones \(400\)"):
        generate_synthetic_region(SyntheticParams(width_px=128, height_px=128, n_cones=400))
    with pytest.raises(ConfigError, match=r"synthetic\.n_cones"):
        generate_synthetic_region(SyntheticParams(width_px=32, height_px=32, n_cones=1, diameter_min_m=1500))
