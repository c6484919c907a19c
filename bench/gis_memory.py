"""Peak memory and time of the GIS steps (dem, mask, features, tiles) on a large DEM.

Each step runs in its own process on the same inputs; its peak resident set size (RSS) is read from
the kernel (``wait4``'s ``ru_maxrss``), so the figure covers everything the step allocated. The
source is SRTM-like (EPSG:4326, int16, voids -32768), so the dem step really reprojects. The result
is compared with the size of the DEM held in memory as float32 (the tutorial's approach holds the
whole island, its channels and all its tiles in memory at once).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window
from shapely.geometry import Point

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
WORK = HERE / "work"
LIMIT_MB = 2048

STEPS: dict[str, str] = {
    "dem": (
        "from cinderseg.dem import prepare_dem; "
        "prepare_dem(['{work}/source.tif'], '{work}/dem.tif', resolution_m=30.0, nodata=-32768, "
        "region='bench')"
    ),
    "mask": (
        "from cinderseg.mask import rasterize_labels; "
        "rasterize_labels('{work}/cones.gpkg', '{work}/dem.tif', '{work}/mask.tif', region='bench')"
    ),
    "features": (
        "from cinderseg.features import FeatureSettings, compute_features; "
        "compute_features('{work}/dem.tif', '{work}/features.tif', FeatureSettings.from_config({{}}), "
        "region='bench')"
    ),
    "tiles": (
        "from cinderseg.tiles import TilingSettings, make_tiles; "
        "make_tiles('{work}/features.tif', '{work}/mask.tif', '{work}/tiles.npz', '{work}/tiles.csv', "
        "TilingSettings.from_config({{}}), role='train', region='bench')"
    ),
}


def write_source_dem(path: Path, size_px: int, seed: int = 0) -> tuple[float, float, float, float]:
    """An SRTM-like DEM of ``size_px`` squared at 1 arc-second near Hawaii, written block by block.

    Terrain: a regional slope, long-wave undulation and Gaussian cones, int16 metres, a few voids.
    Returns its bounds (west, south, east, north) in degrees.
    """
    step = 1.0 / 3600.0
    west, north = -156.0, 20.5
    transform = from_origin(west, north, step, step)
    rng = np.random.default_rng(seed)
    n_cones = max(10, size_px * size_px // 400_000)
    cone_rc = rng.uniform(0, size_px, size=(n_cones, 2))
    cone_r = rng.uniform(8, 30, size=n_cones)
    profile = {
        "driver": "GTiff",
        "width": size_px,
        "height": size_px,
        "count": 1,
        "dtype": "int16",
        "crs": CRS.from_epsg(4326),
        "transform": transform,
        "nodata": -32768,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "bigtiff": "IF_SAFER",
    }
    block = 1024
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size_px, block):
            h = min(block, size_px - row)
            rr = np.arange(row, row + h, dtype="float32")[:, None]
            cc = np.arange(size_px, dtype="float32")[None, :]
            z = 500.0 + 0.15 * (size_px - rr) + 40.0 * np.sin(cc / 700.0) * np.cos(rr / 900.0)
            near = np.abs(cone_rc[:, 0] - (row + h / 2)) < h / 2 + 4 * cone_r
            for (cr, ccx), r in zip(cone_rc[near], cone_r[near], strict=True):
                z += 0.36 * r * 30.0 * np.exp(-((rr - cr) ** 2 + (cc - ccx) ** 2) / (2 * (r / 2) ** 2))
            z = np.round(z).astype("int16")
            if row == 0:
                z[10:14, 20:30] = -32768
            dst.write(z, 1, window=Window(0, row, size_px, h))
    cones = gpd.GeoDataFrame(
        {"radius_m": cone_r * 30.0},
        geometry=[Point(west + c * step, north - r * step) for r, c in cone_rc],
        crs="EPSG:4326",
    )
    cones.to_file(path.with_name("cones.gpkg"), driver="GPKG")
    return west, north - size_px * step, west + size_px * step, north


def run_step(code: str) -> tuple[float, float]:
    """Run one step in a fresh interpreter; return (wall seconds, peak RSS in MiB)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=HERE.parent)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench: step failed with exit code {proc.returncode}: {code}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024.0


def machine_facts() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "rasterio": rasterio.__version__,
    }


def bench_gis_memory(size_px: int) -> dict[str, Any]:
    """Peak RSS and wall time of each GIS step on a ``size_px`` x ``size_px`` source DEM."""
    work = WORK / f"gis_{size_px}"
    work.mkdir(parents=True, exist_ok=True)
    source = work / "source.tif"
    if not source.exists():
        write_source_dem(source, size_px)
    _, baseline_mb = run_step("import cinderseg.dem, cinderseg.features, cinderseg.tiles, cinderseg.mask")
    rows = []
    for step, template in STEPS.items():
        seconds, peak_mb = run_step(template.format(work=work))
        rows.append({"step": step, "seconds": round(seconds, 1), "peak_rss_mb": round(peak_mb, 1)})
    with rasterio.open(work / "dem.tif") as dem:
        shape = dem.shape
    in_memory_mb = shape[0] * shape[1] * 4 / 2**20
    return {
        "benchmark": "gis_memory",
        "source_px": [size_px, size_px],
        "dem_px": list(shape),
        "dem_float32_in_memory_mb": round(in_memory_mb, 1),
        "import_only_peak_rss_mb": round(baseline_mb, 1),
        "limit_mb": LIMIT_MB,
        "steps": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="cinderseg benchmarks")
    parser.add_argument("--quick", action="store_true", help="small variant (2000 px) for a smoke test")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args(argv)
    size = 2000 if args.quick else 10000
    result = bench_gis_memory(size)
    result["machine"] = machine_facts()
    result["date"] = time.strftime("%Y-%m-%d")
    print(
        f"GIS steps on a {result['dem_px'][0]} x {result['dem_px'][1]} px DEM "
        f"(float32 in memory: {result['dem_float32_in_memory_mb']:.0f} MiB; limit {LIMIT_MB} MiB)"
    )
    print(f"{'step':<10}{'seconds':>10}{'peak RSS MiB':>15}{'RSS / DEM size':>16}")
    for row in result["steps"]:
        ratio = row["peak_rss_mb"] / result["dem_float32_in_memory_mb"]
        print(f"{row['step']:<10}{row['seconds']:>10.1f}{row['peak_rss_mb']:>15.0f}{ratio:>16.2f}")
    print(
        "(a Python process importing the GIS modules alone peaks at "
        f"{result['import_only_peak_rss_mb']:.0f} MiB)"
    )
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    over = [r["step"] for r in result["steps"] if r["peak_rss_mb"] > LIMIT_MB]
    if over:
        raise SystemExit(f"bench: peak RSS over {LIMIT_MB} MiB in: {', '.join(over)}")


if __name__ == "__main__":
    main()
