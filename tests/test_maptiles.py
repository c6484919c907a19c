"""Regions mapped in tiles: the tile plan, a tile's DEM on the region's grid, the mosaics, the merge
of the cones across seams, the config's checks, and the tiled workflow (SLURM dry run, a real run)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml
from rasterio.transform import from_origin
from shapely.geometry import Point

from cinderseg.cones.baseline import BaselineSettings, run_baseline
from cinderseg.cones.vectorize import VectorizeSettings
from cinderseg.core.errors import ConfigError, InputError
from cinderseg.core.raster import NODATA_FLOAT, geotiff_profile
from cinderseg.terrain.dem import DemGrid, plan_dem_grid, prepare_dem
from cinderseg.terrain.features import FeatureSettings
from cinderseg.terrain.maptiles import MapTile, bbox_grid, has_data, mosaic_cores, plan_map_tiles
from cinderseg.workflow import paths
from cinderseg.workflow.config import validate_config
from cinderseg.workflow.maptiles import (
    RegionTiles,
    merge_tile_cones,
    region_tiles,
    tile_baseline,
    tile_features,
    tile_vectorize,
    tiled_regions,
)
from tests.workflow_helpers import snakemake_command

UTM = rasterio.crs.CRS.from_epsg(32605)


def grid(width: int = 500, height: int = 300, res: float = 30.0) -> DemGrid:
    return DemGrid(UTM, from_origin(210_000.0, 2_190_000.0, res, res), width, height)


# --------------------------------------------------------------------------- the plan


def test_cores_partition_the_grid_and_windows_add_the_margin() -> None:
    g = grid()
    tiles = plan_map_tiles(g, 4.0, 1000.0)  # 133 px cores, 34 px margin
    assert [t.name for t in tiles] == [f"r{r:02d}c{c:02d}" for r in range(3) for c in range(4)]
    seen = np.zeros((g.height, g.width), dtype=int)
    for t in tiles:
        r0, r1, c0, c1 = t.core
        seen[r0:r1, c0:c1] += 1
        assert 100 <= r1 - r0 <= 133 and 100 <= c1 - c0 <= 133  # near-equal, about size_km
        w = t.window
        assert w == (max(0, r0 - 34), min(g.height, r1 + 34), max(0, c0 - 34), min(g.width, c1 + 34))
    assert (seen == 1).all()
    corner = tiles[0]
    assert corner.bounds(g) == (
        210_000.0,
        2_190_000.0 - corner.window[1] * 30,
        210_000.0 + corner.window[3] * 30,
        2_190_000.0,
    )
    assert corner.core_in_tile().col_off == 0 and tiles[5].core_in_tile().col_off == 34


def test_a_region_smaller_than_a_tile_is_one_tile() -> None:
    tiles = plan_map_tiles(grid(100, 80), 50.0, 5000.0)
    assert len(tiles) == 1 and tiles[0].core == tiles[0].window == (0, 80, 0, 100)


def test_tiles_without_data_are_left_out_and_tiny_tiles_refused() -> None:
    g = grid()
    west_only = [(210_000.0, 2_181_000.0, 211_000.0, 2_190_000.0)]  # the first 33 px columns
    tiles = plan_map_tiles(g, 4.0, 0.0, coverage=west_only)
    assert {t.col for t in tiles} == {0} and len(tiles) == 3
    with pytest.raises(InputError, match=r"^here: no tile meets"):
        plan_map_tiles(g, 4.0, 0.0, coverage=[(0.0, 0.0, 1.0, 1.0)], what="here")
    with pytest.raises(InputError, match=r"size_km 1.5 is under 64 px of 30 m"):
        plan_map_tiles(g, 1.5, 0.0)


def test_plan_round_trips_through_params() -> None:
    plan = RegionTiles(grid(), tuple(plan_map_tiles(grid(), 4.0, 1000.0)))
    again = RegionTiles.from_params(yaml.safe_load(yaml.safe_dump(plan.as_params())))
    assert again == plan
    west, south, east, north = plan.lonlat(plan.tile("r01c02"))
    assert -156 < west < east < -155 and 19 < south < north < 20


# --------------------------------------------------------------------------- a tile's DEM


@pytest.fixture(scope="module")
def srtm_like(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from cinderseg.data.examples import write_srtm_like_example

    return write_srtm_like_example(tmp_path_factory.mktemp("srtm"))


def test_a_tiles_dem_is_its_window_of_the_whole_regions_dem(
    srtm_like: dict[str, Path], tmp_path: Path
) -> None:
    sources = [srtm_like["west"], srtm_like["east"]]
    whole = tmp_path / "whole.tif"
    prepare_dem(sources, whole, resolution_m=30.0, nodata=-32768)
    g, coverage = plan_dem_grid(sources, resolution_m=30.0, nodata=-32768)
    assert len(coverage) == 2
    with rasterio.open(whole) as ds:
        assert (ds.crs, ds.transform, ds.width, ds.height) == (g.crs, g.transform, g.width, g.height)
        full = ds.read(1)
    for tile in plan_map_tiles(g, 8.0, 1500.0, coverage=coverage):
        out = tmp_path / f"{tile.name}.tif"
        prepare_dem(
            sources, out, resolution_m=30.0, nodata=-32768, crs=g.crs.to_string(), bounds=tile.bounds(g)
        )
        r0, r1, c0, c1 = tile.window
        with rasterio.open(out) as ds:
            assert ds.transform.c == pytest.approx(g.transform.c + c0 * 30) and ds.shape == (r1 - r0, c1 - c0)
            part = ds.read(1)
        ref = full[r0:r1, c0:c1]
        both = (part != NODATA_FLOAT) & (ref != NODATA_FLOAT)
        assert ((part == NODATA_FLOAT) != (ref == NODATA_FLOAT)).mean() < 1e-3 and both.mean() > 0.8
        # the same bilinear kernel everywhere (constant XSCALE/YSCALE); the warper's transformation is
        # approximated per window (0.01 px): some centimetres on steep flanks
        assert np.abs(part[both] - ref[both]).max() < 0.25


def test_a_bbox_grid_is_the_grid_the_dem_step_writes(srtm_like: dict[str, Path], tmp_path: Path) -> None:
    bbox = [-155.85, 19.78, -155.80, 19.86]  # inside the data, as 3DEP tiles cover a bbox
    sources = [srtm_like["west"], srtm_like["east"]]
    prepare_dem(sources, tmp_path / "dem.tif", resolution_m=30.0, nodata=-32768, bbox_lonlat=bbox)
    g = bbox_grid(bbox, resolution_m=30.0)
    with rasterio.open(tmp_path / "dem.tif") as ds:
        assert (ds.crs, ds.transform, ds.width, ds.height) == (g.crs, g.transform, g.width, g.height)
    with pytest.raises(InputError, match=r"bounds .* need a crs"):
        prepare_dem(sources, tmp_path / "x.tif", resolution_m=30.0, bounds=g.bounds)


def test_a_tile_without_data_gets_empty_outputs(tmp_path: Path) -> None:
    sea = half_sea_dem(tmp_path / "sea.tif")
    east = (201_000 + 100 * 30, 2_199_900 - 100 * 30, 201_000 + 200 * 30, 2_199_900)
    dem = tmp_path / "dem.tif"
    with pytest.raises(InputError, match="no valid elevation"):
        prepare_dem([sea], dem, resolution_m=30.0, crs="EPSG:32605", bounds=east)
    prepare_dem([sea], dem, resolution_m=30.0, crs="EPSG:32605", bounds=east, allow_empty=True)
    far = (300_000.0, 2_000_000.0, 303_000.0, 2_003_000.0)  # meets no source at all
    prepare_dem([], tmp_path / "far.tif", resolution_m=30.0, crs="EPSG:32605", bounds=far, allow_empty=True)
    for path in (dem, tmp_path / "far.tif"):
        assert not has_data(path)
    assert has_data(sea)
    tile_features(dem, tmp_path / "f.tif", FeatureSettings(), label="sea tile r00c01")
    with rasterio.open(tmp_path / "f.tif") as ds:
        assert ds.descriptions == FeatureSettings().channels and ds.tags()["empty"]
        assert (ds.read() == NODATA_FLOAT).all() and ds.shape == (100, 100)
    tile_vectorize(tmp_path / "f.tif", dem, tmp_path / "c.gpkg", VectorizeSettings(), label="t")
    tile_baseline(dem, tmp_path / "b.gpkg", BaselineSettings(), label="t", ring_width_px=2)
    cones, base = gpd.read_file(tmp_path / "c.gpkg"), gpd.read_file(tmp_path / "b.gpkg")
    assert len(cones) == len(base) == 0 and "height_m" in cones.columns and "score" in base.columns


# --------------------------------------------------------------------------- mosaics


def write_tile(path: Path, g: DemGrid, tile: MapTile, data: np.ndarray, *, overviews: bool = False) -> Path:
    r0, r1, c0, c1 = tile.window
    profile = geotiff_profile(
        width=c1 - c0,
        height=r1 - r0,
        count=data.shape[0],
        dtype="float32",
        crs=g.crs,
        transform=g.transform @ rasterio.Affine.translation(c0, r0),
        nodata=NODATA_FLOAT,
    )
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data[:, r0:r1, c0:c1])
        ds.descriptions = ("a", "b")[: data.shape[0]]
        ds.update_tags(model="m")
        if overviews:
            ds.build_overviews([2, 4], rasterio.enums.Resampling.average)
    return path


def test_the_mosaic_takes_each_pixel_from_its_core(tmp_path: Path) -> None:
    g = grid(300, 200)
    truth = np.random.default_rng(0).random((2, g.height, g.width), dtype=np.float32)
    tiles = plan_map_tiles(g, 3.0, 600.0)
    files = []
    for k, tile in enumerate(tiles):
        data = truth.copy()
        r0, r1, c0, c1 = tile.core
        outside = np.ones(truth.shape[1:], dtype=bool)
        outside[r0:r1, c0:c1] = False
        data[:, outside] = 100.0 + k  # what the margins hold must not show
        files.append(write_tile(tmp_path / f"{tile.name}.tif", g, tile, data, overviews=True))
    out = tmp_path / "mosaic.tif"
    mosaic_cores(files[1:], tiles[1:], g, out, block_px=128)  # the first tile missing: nodata there
    with rasterio.open(out) as ds:
        got = ds.read()
        assert ds.descriptions == ("a", "b") and ds.tags()["model"] == "m" and ds.overviews(1) == [2, 4]
        assert (ds.crs, ds.transform) == (g.crs, g.transform)
    r0, r1, c0, c1 = tiles[0].core
    assert (got[:, r0:r1, c0:c1] == NODATA_FLOAT).all()
    got[:, r0:r1, c0:c1] = truth[:, r0:r1, c0:c1]
    np.testing.assert_array_equal(got, truth)


def test_a_tile_off_the_grid_is_refused(tmp_path: Path) -> None:
    g = grid(300, 200)
    tiles = plan_map_tiles(g, 3.0, 600.0)
    data = np.zeros((1, g.height, g.width), dtype=np.float32)
    files = [write_tile(tmp_path / f"{t.name}.tif", g, t, data) for t in tiles]
    shifted = DemGrid(g.crs, g.transform @ rasterio.Affine.translation(1, 0), g.width, g.height)
    with pytest.raises(InputError, match=r"^mosaic: tile r00c00 is not on the region's grid"):
        mosaic_cores(files, tiles, shifted, tmp_path / "out.tif")


def cone_layer(
    path: Path, centres: list[tuple[float, float]], radius: float = 300.0, **columns: list
) -> Path:
    gdf = gpd.GeoDataFrame(
        {"cone_id": np.arange(1, len(centres) + 1), **columns},
        geometry=[Point(x, y).buffer(radius) for x, y in centres],
        crs=UTM,
    )
    gdf.to_file(path, layer="cones", driver="GPKG")
    return path


def test_cones_on_a_seam_are_kept_once(tmp_path: Path) -> None:
    g = grid(200, 100)  # two tiles side by side, seam at x = 213_000
    tiles = plan_map_tiles(g, 3.0, 1500.0)
    assert [t.core for t in tiles] == [(0, 100, 0, 100), (0, 100, 100, 200)]
    y = 2_188_500.0
    west = cone_layer(
        tmp_path / "w.gpkg",
        [(211_000.0, y), (212_999.0, y), (214_000.0, y)],  # own; on the seam; the east tile's, in the margin
        score=[1.0, 2.0, 3.0],
    )
    east = cone_layer(
        tmp_path / "e.gpkg",
        [(213_001.0, y), (214_000.0, y), (215_500.0, y - 900.0)],  # the seam cone again (east of it)
        score=[2.5, 3.0, 1.5],
    )
    merged = merge_tile_cones([west, east], tiles, g, tmp_path / "m.gpkg", region="r")
    x = sorted(round(c.x) for c in merged.geometry.centroid)
    assert x == [211_000, 212_999, 214_000, 215_500]  # the seam cone once: the western of equal copies
    assert list(merged.cone_id) == [1, 2, 3, 4] and merged.geometry.centroid.y.iloc[-1] < y
    base = merge_tile_cones([west, east], tiles, g, tmp_path / "b.gpkg", by_score=True)
    assert list(base.score) == [3.0, 2.5, 1.5, 1.0]  # strongest first; the seam cone's stronger copy
    assert len(gpd.read_file(tmp_path / "b.gpkg")) == 4
    none = cone_layer(tmp_path / "none.gpkg", [(214_000.0, y)])  # only a cone in its margin
    empty = merge_tile_cones([none], tiles[:1], g, tmp_path / "n.gpkg")
    assert len(empty) == 0 and "height_m" in gpd.read_file(tmp_path / "n.gpkg").columns


# --------------------------------------------------------------------------- the config


def tiled_config(srtm_like: dict[str, Path], **tiles: object) -> dict:
    region = {
        "source": "file",
        "dem": [str(srtm_like["west"]), str(srtm_like["east"])],
        "nodata": -32768,
        "role": "predict",
        "tiles": {"size_km": 10, **tiles},
    }
    return {"regions": {"big": region}, "predict": {"model": "pretrained"}}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c["regions"]["big"].update(role="train", labels="x.gpkg"), "not for role 'train'"),
        (
            lambda c: c.update(features={"channels": ["elevation", "sobel", "clahe"]}),
            "elevation, clahe are normalised",
        ),
        (
            lambda c: c["regions"]["big"]["tiles"].update(size_km=1.5),
            r"size_km: 1.5 km is under 64 px of 30 m",
        ),
        (lambda c: c["regions"]["big"]["tiles"].update(margin_m=-1), r"tiles.margin_m: -1 must be >= 0"),
        (lambda c: c["regions"]["big"]["tiles"].pop("size_km"), r"tiles: 'size_km' is a required property"),
        (
            lambda c: c["regions"].__setitem__("s", {"source": "synthetic", "tiles": {"size_km": 5}}),
            r"regions.s.tiles: not for source 'synthetic'",
        ),
    ],
)
def test_tiles_config_errors_name_the_key(srtm_like: dict[str, Path], change, expected: str) -> None:
    cfg = tiled_config(srtm_like)
    change(cfg)
    with pytest.raises(ConfigError, match=expected):
        validate_config(cfg, source="c.yaml")


def test_the_workflow_plans_a_tiled_region(srtm_like: dict[str, Path]) -> None:
    cfg = validate_config(tiled_config(srtm_like))
    assert cfg["regions"]["big"]["tiles"]["margin_m"] == 5000  # the default
    plans = tiled_regions(cfg)
    assert list(plans) == ["big"] and plans["big"].names == ["r00c00", "r00c01", "r01c00", "r01c01"]
    usgs = {"source": "usgs3dep", "bbox": [-155.9, 19.7, -155.4, 20.1], "role": "predict", "product": "1/3"}
    usgs["resolution_m"], usgs["tiles"] = 30, {"size_km": 20, "margin_m": 2000}
    plan = region_tiles("usgs", usgs)
    assert len(plan.tiles) == 9 and plan.grid == bbox_grid(usgs["bbox"], resolution_m=30)


# --------------------------------------------------------------------------- the workflow

JOB = re.compile(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", re.MULTILINE)


def labelled_tiled_config(srtm_like: dict[str, Path], **tiles: object) -> dict:
    """Two labelled regions on the same DEM files: 'whole' mapped whole, 'tiled' in 2 x 2 tiles."""
    cfg = tiled_config(srtm_like, **tiles)
    tiled = cfg["regions"].pop("big")
    tiled.update(role="test", labels=str(srtm_like["labels"]))
    whole = {k: v for k, v in tiled.items() if k != "tiles"}
    cfg["regions"] = {"whole": whole, "tiled": tiled}
    return cfg


def test_a_slurm_dry_run_submits_one_job_per_tile_and_step(
    srtm_like: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(labelled_tiled_config(srtm_like)))
    cmd = snakemake_command(tmp_path, "--configfile", "c.yaml", "--dry-run", profile="slurm-gpu", cores=64)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs: dict[str, list[dict[str, str]]] = {}
    for match in JOB.finditer(proc.stdout + proc.stderr):
        fields = dict(re.findall(r"^    (\w+): (.*)$", match.group(2), re.MULTILINE))
        wildcards = dict(kv.split("=", 1) for kv in fields.get("wildcards", "").split(", ") if kv)
        jobs.setdefault(match.group(1), []).append({**wildcards, "resources": fields["resources"]})
    tiles = ["r00c00", "r00c01", "r01c00", "r01c01"]
    for rule in ("tile_dem", "tile_features", "tile_predict", "tile_vectorize", "tile_baseline"):
        assert sorted(j["maptile"] for j in jobs[rule]) == tiles, rule
        assert {j["region"] for j in jobs[rule]} == {"tiled"}, rule
    for rule in ("mosaic_dem", "mosaic_probability", "mosaic_cones", "mosaic_baseline"):
        assert [j["region"] for j in jobs[rule]] == ["tiled"], rule
    for rule in ("dem", "features", "predict", "vectorize", "baseline"):
        assert [j["region"] for j in jobs[rule]] == ["whole"], rule  # the region mapped whole
    assert sorted(j["region"] for j in jobs["evaluate"]) == ["tiled", "whole"]
    for job in jobs["tile_predict"]:  # on a GPU node each, with the profile's threads
        assert "slurm_partition=gpu" in job["resources"] and "gpu=1" in job["resources"]
    assert all("slurm_partition=cpu" in j["resources"] for j in jobs["tile_dem"] + jobs["mosaic_cones"])
    assert (tmp_path / paths.RESULTS).exists() is False  # a dry run writes nothing


@pytest.mark.workflow
def test_the_tiled_region_equals_the_whole_one(srtm_like: dict[str, Path], tmp_path: Path) -> None:
    # one seam: 2 tiles of 567 px side by side (657 x 503 px); the tiled region is scored (baseline,
    # mask, evaluate on the mosaics), the whole one only mapped
    cfg = labelled_tiled_config(srtm_like, size_km=17, margin_m=3000)
    cfg["regions"]["whole"].update(role="predict")
    cfg["regions"]["whole"].pop("labels")
    # and a region half sea (nodata): its eastern tile has no data at all
    sea = {"source": "file", "dem": str(half_sea_dem(tmp_path / "sea.tif")), "role": "predict"}
    cfg["regions"]["sea"] = {**sea, "tiles": {"size_km": 3, "margin_m": 0}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        snakemake_command(tmp_path, "--configfile", "c.yaml"), capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = {
        name: {k: tmp_path / t.format(region=name) for k, t in TEMPLATES.items()}
        for name in ("whole", "tiled")
    }
    for kind in ("dem", "probability"):
        with rasterio.open(out["whole"][kind]) as a, rasterio.open(out["tiled"][kind]) as b:
            assert (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape), kind
            pa, pb = a.read(1), b.read(1)
        ok = (pa != NODATA_FLOAT) & (pb != NODATA_FLOAT)
        assert ((pa == NODATA_FLOAT) == (pb == NODATA_FLOAT)).mean() > 0.999, kind
        diff = np.abs(pa[ok] - pb[ok])
        if kind == "dem":
            assert diff.max() < 0.25  # the warper's approximation, per window
        else:
            # other windows' blending: the tiles and the whole region are cut into other 512 px windows
            assert diff.mean() < 0.01 and np.quantile(diff, 0.999) < 0.15
            inter, union = ((pa >= 0.5) & (pb >= 0.5) & ok).sum(), (((pa >= 0.5) | (pb >= 0.5)) & ok).sum()
            assert inter / union > 0.97
    baseline = tmp_path / "whole_baseline.gpkg"
    run_baseline(out["whole"]["dem"], baseline, BaselineSettings())
    for kind, whole in (("cones", out["whole"]["cones"]), ("baseline", baseline)):
        a, b = gpd.read_file(whole), gpd.read_file(out["tiled"][kind])
        assert len(a) > 5 and abs(len(a) - len(b)) <= max(1, len(a) // 20), kind
        matched = sum(_best_iou(g, b) > 0.8 for g in a.geometry)
        assert matched >= 0.9 * len(a), kind
        assert list(b.cone_id) == list(range(1, len(b) + 1))
    assert json.loads((tmp_path / paths.METRICS.format(region="tiled")).read_text())
    logs = sorted(p.name for p in (tmp_path / paths.LOGS / "predict" / "tiled").iterdir())
    assert logs == ["r00c00.log", "r00c01.log"]
    east = tmp_path / paths.TILE_PROBABILITY.format(region="sea", maptile="r00c01")
    with rasterio.open(east) as ds:
        assert ds.tags()["empty"] and (ds.read(1) == NODATA_FLOAT).all()
    with rasterio.open(tmp_path / paths.PROBABILITY.format(region="sea")) as ds:
        prob = ds.read(1)
        assert ds.tags()["model"] and "empty" not in ds.tags()  # the western tile's metadata
    assert (prob[:, 100:] == NODATA_FLOAT).all() and (prob[:, :100] != NODATA_FLOAT).all()
    assert gpd.read_file(tmp_path / paths.CONES.format(region="sea")).crs == UTM


def half_sea_dem(path: Path) -> Path:
    """A 200 x 100 px DEM at 30 m in EPSG:32605, hills in its western half, nodata (sea) in the east."""
    rows, cols = np.mgrid[0:100, 0:200]
    z = 200.0 + 3.0 * rows + 40.0 * np.exp(-((rows - 50) ** 2 + (cols - 50) ** 2) / 200.0)
    z[:, 100:] = -32768
    profile = geotiff_profile(
        width=200,
        height=100,
        count=1,
        dtype="float32",
        crs=UTM,
        transform=from_origin(201_000, 2_199_900, 30, 30),
        nodata=-32768,
    )
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(z.astype(np.float32), 1)
    return path


TEMPLATES = {
    "dem": paths.DEM,
    "probability": paths.PROBABILITY,
    "cones": paths.CONES,
    "baseline": paths.BASELINE,
}


def _best_iou(geom, others: gpd.GeoDataFrame) -> float:
    """The largest IoU of ``geom`` with one of ``others`` (0 if none meets it)."""
    near = others.geometry.iloc[others.sindex.query(geom, predicate="intersects")]
    return max((geom.intersection(o).area / geom.union(o).area for o in near), default=0.0)


def test_each_tile_of_a_3dep_region_reads_only_the_3dep_tiles_it_meets(tmp_path: Path) -> None:
    # 10.5 x 16.6 km across the 3DEP tiles' seams at 155 W and 20 N; the map tiles' seam at 155.03 W
    region = {"source": "usgs3dep", "bbox": [-155.08, 19.9, -154.98, 20.05], "role": "predict"}
    region["tiles"] = {"size_km": 6, "margin_m": 0}
    cfg = {"regions": {"edge": region}, "predict": {"model": "pretrained"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cmd = snakemake_command(tmp_path, "--configfile", "c.yaml", "--dry-run")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [
        dict(re.findall(r"^    (\w+): (.*)$", m.group(2), re.MULTILINE)) for m in JOB.finditer(proc.stdout)
    ]
    dems = {j["wildcards"]: j["input"].split(", ") for j in jobs if j.get("output", "").endswith("/dem.tif")}
    assert len(dems) == 6  # 2 columns x 3 rows of 6 km
    region_tiles = {f"USGS_13_n{lat}w{lon}.tif" for lat in (20, 21) for lon in (155, 156)}
    for wildcards, inputs in dems.items():
        names = {Path(p).name for p in inputs}
        assert names <= region_tiles and names, wildcards
        east = {n for n in names if "w155" in n}
        assert not east if "c00" in wildcards else east, wildcards  # the western column: no eastern tile
