"""Smoke test of the benchmark suite: the quick variant runs and writes valid JSON (timings are never
asserted), and the table's helpers read Snakemake's benchmark files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.workflow import jobs_done, step_times
from tests.workflow_helpers import REPO


def test_quick_bench_runs_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(out), "--work", str(tmp_path / "work")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    m = result["measurements"]
    assert m["end_to_end"]["skipped"] and m["incremental"]["skipped"]
    assert {r["variant"] for r in m["prediction"]["rows"]} == {"ours", "tutorial"}
    assert m["compute"]["peak_matmul_gflops"] > 0
    assert m["compute"]["ours_phases_seconds"]["network"] > 0
    # the FLOP count from layer shapes agrees with TensorFlow's profiler
    prof = m["compute"]["profiler_flops_per_pixel"]
    assert prof is None or abs(m["compute"]["flops_per_pixel"] / prof - 1) < 0.05
    steps = m["memory"]["runs"][0]["steps"]
    assert list(steps) == ["dem", "mask", "features", "tiles", "predict", "tutorial_tiling"]
    assert all(s["peak_rss_mb"] > 0 for s in steps.values())
    assert m["training"]["rows"][0]["train_tiles_per_s"] > 0
    assert m["dry_run"]["rows"][0]["regions"] == 1
    machine = result["machine"]
    assert machine["cores"] >= 1 and machine["threads"] >= 1 and machine["tensorflow"]
    assert len(machine["load_average_1_5_15_min"]) == 3
    assert "| measurement" in proc.stdout and "3 compute" in proc.stdout
    assert [row["measurement"] for row in result["table"] if row["measurement"]] == [
        "2 prediction",
        "3 compute",
        "4 memory",
        "5 training",
        "6 dry run",
    ]


def test_step_times_sum_the_rules_benchmark_files(tmp_path: Path) -> None:
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for step, region, seconds, rss in [
        ("dem", "a", 1.5, 100),
        ("dem", "b", 2.5, 300),
        ("train", "unet", 60, "NA"),
    ]:
        path = tmp_path / step / f"{region}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{seconds}\t0:00:01\t{rss}\t1\t1\t1\t1\t1\t50\t1\n")
    steps = step_times(tmp_path)
    assert steps["dem"] == {"jobs": 2, "seconds": 4.0, "max_rss_mb": 300.0}
    assert steps["train"] == {"jobs": 1, "seconds": 60.0, "max_rss_mb": 0.0}
    assert jobs_done("...\n21 of 21 steps (100%) done\n") == 21
    assert jobs_done("Nothing to be done.") == 0


def test_cone_free_ground_leaves_out_the_sea_and_a_margin_around_every_labelled_cone(tmp_path: Path) -> None:
    import geopandas as gpd
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window
    from shapely.geometry import Point

    from bench.recipe_folds import CONE_FREE_MARGIN_M, alarms_on, cone_free_ground

    z = np.full((200, 200), 500.0, dtype=np.float32)
    z[:, 160:] = 0.0  # sea
    z[:10, :10] = -9999.0  # a void
    dem = tmp_path / "dem.tif"
    transform = from_origin(0.0, 6000.0, 30.0, 30.0)
    profile = {"driver": "GTiff", "width": 200, "height": 200, "count": 1, "dtype": "float32"}
    with rasterio.open(dem, "w", **profile, crs="EPSG:32605", transform=transform, nodata=-9999.0) as ds:
        ds.write(z, 1)
    truth = gpd.GeoDataFrame({"radius_m": [200.0]}, geometry=[Point(2415.0, 2985.0)], crs="EPSG:32605")
    free, block_transform, km2 = cone_free_ground(dem, truth, Window(0, 0, 200, 200))
    reach = 200.0 + CONE_FREE_MARGIN_M
    assert not free[:, 160:].any() and not free[:10, :10].any()
    assert not free[100, 80] and free[100, 80 - int(reach / 30) - 2]
    disc = np.pi * reach**2 / 900.0
    assert abs(free.sum() - (160 * 200 - 100 - disc)) < 0.02 * disc
    assert km2 == free.sum() * 900.0 / 1e6
    cones = gpd.GeoDataFrame(
        geometry=[
            Point(x, y).buffer(100.0)
            for x, y in ((2415.0, 2985.0), (300.0, 300.0), (5400.0, 3000.0), (150.0, 5900.0))
        ],
        crs="EPSG:32605",
    )  # on the labelled cone, on cone-free land, at sea, in the void
    assert alarms_on(free, block_transform, cones) == 1
    assert alarms_on(free, block_transform, cones.iloc[:0]) == 0


def test_negative_dems_are_gridded_in_utm_and_cut_to_their_window(tmp_path: Path) -> None:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    from bench.negative_dems import Source, to_utm

    z = np.full((360, 360), 300.0, dtype=np.float32)
    z[:, :40] = -32768.0  # nodata
    z[100:110, 100:110] = -5000.0  # a spike below any real ground
    src = tmp_path / "tile.tif"
    profile = {"driver": "GTiff", "width": 360, "height": 360, "count": 1, "dtype": "float32"}
    with rasterio.open(
        src,
        "w",
        **profile,
        crs="EPSG:4326",
        transform=from_origin(-122.0, 38.0, 1 / 360, 1 / 360),
        nodata=-32768.0,
    ) as ds:
        ds.write(z, 1)
    whole, cut = tmp_path / "whole.tif", tmp_path / "cut.tif"
    to_utm(src, whole, Source("x", False, "x", 32610, 90.0, None))
    to_utm(src, cut, Source("x", False, "x", 32610, 90.0, (5, 6, 20, 15)))
    with rasterio.open(whole) as a, rasterio.open(cut) as b:
        assert a.crs.to_epsg() == 32610 and a.res == (90.0, 90.0) and b.shape == (15, 20)
        za, zb = a.read(1), b.read(1)
        assert np.array_equal(zb, za[6:21, 5:25], equal_nan=True)
        assert b.transform == a.window_transform(rasterio.windows.Window(5, 6, 20, 15))
        land = za[np.isfinite(za)]
        assert land.min() == land.max() == 300.0  # voids and the spike became NaN, not ground
        assert np.isnan(za).any()


def test_a_dem_from_contours_ramps_between_lines_and_flattens_a_summit_above_its_last_line() -> None:
    from bench.contour_dem import from_contours

    yy, xx = np.mgrid[:120, :120].astype(float)
    plane = 100.0 + 0.5 * xx  # a slope rising 5 m per 10 px: lines at 110, 120, ... every 20 px
    cone = np.clip(25.0 - 0.5 * np.hypot(yy - 60, xx - 60), 0.0, None)
    z = plane.copy()
    z[:3, :3] = np.nan
    gridded = from_contours(z, 10.0)
    assert np.isnan(gridded[:3, :3]).all() and np.isfinite(gridded[5:, 5:]).all()
    row = gridded[60, 25:95]
    assert np.all(np.diff(row) >= 0) and np.abs(gridded[5:, 5:] - z[5:, 5:]).max() <= 10.0
    assert np.abs(row - z[60, 25:95]).max() < 1.0, "a plane is nearly rebuilt by its ramps"
    summit = from_contours(200.0 + cone, 10.0)  # a cone 25 m high: its top 5 m lie above the 220 m line
    assert summit[60, 60] == 220.0 and (summit <= 220.0).all()
    assert summit[60, 60] == summit[60, 58] == summit[58, 60], "flat above the last line"
