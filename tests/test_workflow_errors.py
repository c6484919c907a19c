"""Bad input through the whole workflow: one line naming the file or region, non-zero exit, no output.

Also the other side: an SRTM-like geographic DEM in two files, with voids and point labels in lon/lat,
just works.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import Point

from cinderseg.examples import write_srtm_like_example
from cinderseg.synthetic import SyntheticParams
from cinderseg.tiles import load_tiles
from tests.workflow_helpers import snakemake, write_config

pytestmark = pytest.mark.workflow
UTM5N = "EPSG:32605"
TILING = {"size": 64, "step": 32, "split_block_px": 64}


def write_dem(path: Path, *, crs: str | None = UTM5N, size: int = 160) -> None:
    """A small sloping DEM in UTM 5N at 30 m (upper-left 200000, 2200000)."""
    z = (1000 + np.add.outer(np.arange(size), np.arange(size)) * 2.0).astype("float32")
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=1, dtype="float32", crs=crs,
        transform=from_origin(200000, 2200000, 30, 30), nodata=-9999,
    ) as dst:  # fmt: skip
        dst.write(z, 1)


def write_points(path: Path, points: list[tuple[float, float]], radius: float | None = 150.0) -> None:
    columns = {"radius_m": [radius] * len(points)} if radius is not None else {"name": ["c"] * len(points)}
    gdf = gpd.GeoDataFrame(columns, geometry=[Point(x, y) for x, y in points], crs=UTM5N)
    gdf.to_file(path, driver="GPKG")


def file_region(dem: str = "dem.tif", labels: str = "labels.gpkg") -> dict:
    return {"source": "file", "dem": dem, "role": "train", "labels": labels, "resolution_m": 30}


def fail(work: Path, cfg: dict) -> str:
    """Run the workflow, expect a failure, and return the one-line cinderseg error."""
    proc = snakemake(work, "--configfile", write_config(work, "c.yaml", cfg), check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("cinderseg: error:")]
    assert lines, proc.stderr[-3000:]
    return lines[0]


def outputs(work: Path) -> list[str]:
    """Data files left under results/ (logs and benchmarks aside)."""
    results = work / "results"
    if not results.exists():
        return []
    return sorted(
        str(p.relative_to(results))
        for p in results.rglob("*")
        if p.is_file() and p.parts[len(results.parts)] not in {"logs", "benchmarks"}
    )


def test_missing_dem_stops_before_any_job(tmp_path: Path) -> None:
    line = fail(tmp_path, {"regions": {"vol": file_region(dem="nowhere.tif")}})
    assert "c.yaml: regions.vol.dem: DEM file not found: nowhere.tif" in line
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("make_dem", "expected"),
    [
        (lambda p: write_dem(p, crs=None), "raster has no CRS"),
        (lambda p: p.write_bytes(b""), "file is empty (0 bytes)"),
        (lambda p: p.write_bytes(b"II*\x00" + bytes(range(256)) * 8), "not a readable raster"),
    ],
    ids=["no-crs", "zero-byte", "corrupt"],
)
def test_bad_dem_names_region_and_file(tmp_path: Path, make_dem, expected: str) -> None:
    make_dem(tmp_path / "dem.tif")
    write_points(tmp_path / "labels.gpkg", [(202400, 2197600)])
    line = fail(tmp_path, {"regions": {"vol": file_region()}, "tiling": TILING})
    assert "vol" in line and "dem.tif" in line and expected in line
    assert outputs(tmp_path) == []


@pytest.mark.parametrize(
    ("points", "radius", "expected"),
    [
        ([], 150.0, "no features"),
        ([(900000, 100000)], 150.0, "outside the DEM"),
        ([(202400, 2197600)], None, "radius_m"),
        ([(202400, 2197600)], -5.0, "negative"),
    ],
    ids=["no-features", "outside", "no-radius", "negative-radius"],
)
def test_bad_labels_name_region_and_file(tmp_path: Path, points, radius, expected: str) -> None:
    write_dem(tmp_path / "dem.tif")
    write_points(tmp_path / "labels.gpkg", points, radius)
    line = fail(tmp_path, {"regions": {"vol": file_region()}, "tiling": TILING})
    assert "vol" in line and "labels.gpkg" in line and expected in line
    assert "masks/vol.tif" not in outputs(tmp_path)
    assert "tiles/vol.npz" not in outputs(tmp_path)


def test_region_smaller_than_one_tile(tmp_path: Path) -> None:
    region = {"source": "synthetic", "role": "train", "labels": "synthetic",
              "synthetic": {"width_px": 100, "height_px": 100, "n_cones": 2}}  # fmt: skip
    line = fail(tmp_path, {"regions": {"little": region}, "tiling": {"size": 128, "step": 64}})
    assert "region 'little'" in line and "smaller than one tile" in line and "tiling.size" in line
    assert not any(p.startswith("tiles/") for p in outputs(tmp_path))


def test_impossible_synthetic_region_names_region_and_key(tmp_path: Path) -> None:
    region = {"source": "synthetic", "role": "train", "labels": "synthetic",
              "synthetic": {"width_px": 64, "height_px": 64, "n_cones": 400}}  # fmt: skip
    line = fail(tmp_path, {"regions": {"crowded": region}, "tiling": {"size": 64, "step": 32}})
    assert "region 'crowded'" in line and "synthetic.n_cones" in line
    assert outputs(tmp_path) == []


def test_srtm_like_files_with_voids_and_lonlat_labels_just_work(tmp_path: Path) -> None:
    """Geographic int16 DEM in two files, SRTM voids, point labels in EPSG:4326: reprojected to UTM."""
    params = SyntheticParams(seed=5, width_px=320, height_px=256, n_cones=10, resolution_m=30.0)
    paths = write_srtm_like_example(tmp_path / "data", params=params)
    with rasterio.open(paths["west"]) as src:
        assert src.crs.to_epsg() == 4326 and src.dtypes[0] == "int16"
    region = {
        "source": "file",
        "dem": [str(paths["west"].relative_to(tmp_path)), str(paths["east"].relative_to(tmp_path))],
        "nodata": -32768,
        "role": "train",
        "labels": str(paths["labels"].relative_to(tmp_path)),
        "resolution_m": 30,
    }
    cfg = {
        "regions": {"srtm": region},
        "tiling": {"size": 128, "step": 64, "split_block_px": 128},
        # the default run trains a model too: a tiny one here
        "model": {"encoder": "unet_small", "base_filters": 8},
        "train": {"epochs": 1, "batch_size": 4},
    }
    snakemake(tmp_path, "--configfile", write_config(tmp_path, "c.yaml", cfg))
    with rasterio.open(tmp_path / "results" / "dem" / "srtm.tif") as dem:
        assert dem.crs.to_epsg() == 32605
        z = dem.read(1, masked=True)
    with rasterio.open(tmp_path / "results" / "masks" / "srtm.tif") as mask:
        cones = mask.read(1) == 1
    # The voids were small: filled. The cones cover about the labelled area (pi r^2 per cone).
    interior = z[20:-20, 20:-20]
    assert not np.ma.getmaskarray(interior).any()
    labelled = gpd.read_file(paths["labels"])
    expected_px = float(np.sum(np.pi * labelled["radius_m"] ** 2)) / 30.0**2
    assert cones.sum() == pytest.approx(expected_px, rel=0.1)
    x, y, channels = load_tiles(tmp_path / "results" / "tiles" / "srtm.npz")
    assert x.shape[0] > 0 and y.sum() > 0 and list(channels) == ["local_relief", "slope", "hillshade"]
