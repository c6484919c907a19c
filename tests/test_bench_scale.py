"""The whole-tile benchmark's pieces (bench/whole_tile.py): the SRTM-shaped tile it writes and the
comparison of a tiled run with a whole one (timings are never asserted)."""

from __future__ import annotations

import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from shapely.geometry import Point

from bench.whole_tile import SRTM_NODATA, compare_runs, tile_config, write_srtm_tile
from cinderseg.workflow.config import validate_config


def test_the_tile_is_srtm_shaped(tmp_path: Path) -> None:
    facts = write_srtm_tile(tmp_path / "t.tif", degrees=0.05)
    assert facts["px"] == [181, 181] and facts["cones"] > 0
    with rasterio.open(tmp_path / "t.tif") as ds:
        assert ds.crs.to_epsg() == 4326 and ds.dtypes[0] == "int16" and ds.nodata == SRTM_NODATA
        step = 1 / 3600
        assert np.isclose(ds.transform.c, -156 - step / 2) and np.isclose(ds.transform.f, 20 + step / 2)
        z = ds.read(1)
    assert 0 < (z == SRTM_NODATA).mean() < 0.05 and z.max() > 100
    validate_config(tile_config(tmp_path / "t.tif"))


def _run(folder: Path, probability: np.ndarray, centres: list[tuple[float, float]]) -> Path:
    (folder / "results" / "predictions").mkdir(parents=True)
    (folder / "results" / "cones").mkdir(parents=True)
    profile = {"driver": "GTiff", "width": 40, "height": 30, "count": 1, "dtype": "float32"}
    profile |= {
        "crs": "EPSG:32605",
        "transform": rasterio.transform.from_origin(0, 900, 30, 30),
        "nodata": -9999,
    }
    with rasterio.open(folder / "results" / "predictions" / "tile.tif", "w", **profile) as ds:
        ds.write(probability.astype(np.float32), 1)
    cones = gpd.GeoDataFrame(geometry=[Point(x, y).buffer(100) for x, y in centres], crs="EPSG:32605")
    cones.to_file(folder / "results" / "cones" / "tile.gpkg", layer="cones")
    return folder


def test_comparing_a_tiled_run_with_the_whole_one(tmp_path: Path) -> None:
    p = np.zeros((30, 40))
    p[5:15, 5:15] = 0.9
    whole = _run(tmp_path / "whole", p, [(300, 600), (800, 300)])
    same = tmp_path / "same"
    shutil.copytree(whole, same)
    r = compare_runs(whole, same)
    assert r["probability_max_abs_diff"] == 0 and r["pixel_iou_at_0_5"] == 1.0
    assert r["cones_matched_iou_0_5"] == 2 and r["matched_mean_iou"] == 1.0
    q = p.copy()
    q[5:15, 10:15] = 0.2
    other = _run(tmp_path / "other", q, [(310, 600), (1100, 800)])
    r = compare_runs(whole, other)
    assert r["probability_max_abs_diff"] == 0.7 and r["pixel_iou_at_0_5"] == 0.5
    assert r["cones_tiled"] == 2 and r["cones_matched_iou_0_5"] == 1 and 0.8 < r["matched_mean_iou"] < 1
