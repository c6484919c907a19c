"""Peak memory and time of the GIS steps (dem, mask, features, tiles) on a large DEM.

Each step runs in its own process on the same inputs, through ``cinderseg.core.step.run_step`` as the
workflow runs it; its peak resident set size (RSS) is the kernel's high-water mark of that process
(``VmHWM``, which an ``exec`` resets, unlike ``ru_maxrss``), so it covers everything the step
allocated, GDAL's block cache included. The
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

# Each step as (module, function, arguments); the arguments may use the module's public names;
# {work} is the benchmark's scratch folder.
STEPS: dict[str, tuple[str, str, str]] = {
    "dem": (
        "cinderseg.terrain.dem",
        "prepare_dem",
        "['{work}/source.tif'], '{work}/dem.tif', resolution_m=30.0, nodata=-32768, region='bench'",
    ),
    "mask": (
        "cinderseg.data.mask",
        "rasterize_labels",
        "'{work}/cones.gpkg', '{work}/dem.tif', '{work}/mask.tif'",
    ),
    "features": (
        "cinderseg.terrain.features",
        "compute_features",
        "'{work}/dem.tif', '{work}/features.tif', FeatureSettings()",
    ),
    "tiles": (
        "cinderseg.data.tiles",
        "make_tiles",
        "'{work}/features.tif', '{work}/mask.tif', '{work}/tiles.npz', '{work}/tiles.csv', "
        "TilingSettings(), role='train'",
    ),
}
# Steps of the memory-scaling benchmark beyond STEPS: the predict step (default settings: ONNX Runtime
# where {model} has its model.onnx, else Keras) with a trained model ({model}), and the tutorial's
# in-memory tiling of the whole region, for contrast.
SCALING_STEPS: dict[str, tuple[str, str, str]] = {
    "predict": (
        "cinderseg.nn.predict",
        "predict_probability",
        "'{work}/features.tif', '{model}', '{work}/probability.tif', PredictSettings(), threads={threads}",
    ),
    "tutorial_tiling": (
        "bench.gis_memory",
        "tutorial_tiling",
        "'{work}/features.tif'",
    ),
}
TILE, STEP = 224, 112


def step_code(step: str, work: Path, **fields: Any) -> str:
    """Python source that runs one step the way the workflow's script does (through run_step);
    ``fields`` fill the arguments' other placeholders ({model}, {threads})."""
    module, function, arguments = {**STEPS, **SCALING_STEPS}[step]
    return (
        "import os\nos.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')\n"
        f"from {module} import *\nfrom cinderseg.core.step import run_step\n"
        f"run_step(None, {function}, {arguments.format(work=work, **fields)})\n"
    )


def tutorial_tile_array(x: np.ndarray, tile: int = TILE, step: int = STEP) -> tuple[np.ndarray, int, int]:
    """The tutorial's tiling: ``x`` (C, H, W) zero-padded to whole steps, cut by
    ``skimage.util.view_as_windows`` into every ``tile`` px tile at ``step`` px, reshaped (copied) to
    (N, tile, tile, C) float32, all in memory. Returns (tiles, tile rows, tile columns)."""
    from skimage.util import view_as_windows

    channels, height, width = x.shape
    n_rows = -(-(max(height, tile) - tile) // step) + 1
    n_cols = -(-(max(width, tile) - tile) // step) + 1
    padded = np.zeros(((n_rows - 1) * step + tile, (n_cols - 1) * step + tile, channels), dtype="float32")
    padded[:height, :width] = x.transpose(1, 2, 0)
    tiles = view_as_windows(padded, (tile, tile, channels), step=step).reshape(-1, tile, tile, channels)
    return tiles, n_rows, n_cols


def tutorial_tiling(features: Path | str) -> dict[str, Any]:
    """Read a whole features raster and tile it the tutorial's way (:func:`tutorial_tile_array`);
    the tiles' shape and size in MiB."""
    with rasterio.open(features) as ds:
        x = ds.read(out_dtype="float32")
    x[~np.isfinite(x)] = 0.0
    tiles, _, _ = tutorial_tile_array(x)
    return {"tiles_shape": list(tiles.shape), "tiles_mb": round(tiles.nbytes / 2**20, 1)}


def write_source_dem(path: Path | str, size_px: int, seed: int = 0) -> tuple[float, float, float, float]:
    """An SRTM-like DEM of ``size_px`` squared at 1 arc-second near Hawaii, written block by block.

    Terrain: a regional slope, long-wave undulation and Gaussian cones, int16 metres, a few voids.
    Returns its bounds (west, south, east, north) in degrees.
    """
    path = Path(path)
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


PEAK_RSS = (
    "\nfrom pathlib import Path\n"
    "hwm = [l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM')]\n"
    "print('PEAK_KB', hwm[0].split()[1])\n"
)


def run_step(code: str) -> tuple[float, float]:
    """Run one step in a fresh interpreter; return (wall seconds, peak RSS in MiB)."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code + PEAK_RSS], cwd=HERE.parent, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench: step failed ({proc.returncode}): {code}\n{proc.stderr[-2000:]}")
    peak_kb = next(int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK_KB"))
    return time.perf_counter() - started, peak_kb / 1024.0


def machine_facts(threads: int | None = None) -> dict[str, Any]:
    """CPU model, cores, memory, load and library versions of this machine (TensorFlow's version
    from its package metadata, so that this process need not import it); ``threads``: the
    TensorFlow threads the benchmarks use."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor()
    mem_gib = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {}
    for package in ("tensorflow", "keras", "snakemake"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "threads": threads,
        "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "rasterio": rasterio.__version__,
        **versions,
    }


def bench_gis_memory(size_px: int, work_root: Path = WORK) -> dict[str, Any]:
    """Peak RSS and wall time of each GIS step on a ``size_px`` x ``size_px`` source DEM."""
    work = work_root / f"gis_{size_px}"
    work.mkdir(parents=True, exist_ok=True)
    source = work / "source.tif"
    if not source.exists():  # in its own process, so that this one stays small
        code = f"from bench.gis_memory import write_source_dem; write_source_dem({str(source)!r}, {size_px})"
        subprocess.run([sys.executable, "-c", code], cwd=HERE.parent, check=True)
    _, baseline_mb = run_step(
        "import cinderseg.terrain.dem, cinderseg.terrain.features, cinderseg.data.tiles, cinderseg.data.mask"
    )
    rows = []
    for step in STEPS:
        seconds, peak_mb = run_step(step_code(step, work))
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


def bench_memory_scaling(
    sizes_px: list[int], model: Path | str, work_root: Path = WORK, threads: int = 2
) -> dict[str, Any]:
    """Peak RSS and wall time of dem, mask, features, tiles and predict (``model``, default
    settings) and of the tutorial's in-memory tiling, each in its own process, on square SRTM-like
    sources of ``sizes_px`` (1x, 4x, 16x the area for n, 2n, 4n px); the growth of each step's peak
    from the smallest to the largest region (1.0: flat)."""
    runs = []
    for size_px in sizes_px:
        work = work_root / f"gis_{size_px}"
        work.mkdir(parents=True, exist_ok=True)
        source = work / "source.tif"
        if not source.exists():
            code = (
                f"from bench.gis_memory import write_source_dem; write_source_dem({str(source)!r}, {size_px})"
            )
            subprocess.run([sys.executable, "-c", code], cwd=HERE.parent, check=True)
        steps = {}
        for step in [*STEPS, *SCALING_STEPS]:
            seconds, peak_mb = run_step(step_code(step, work, model=model, threads=threads))
            steps[step] = {"seconds": round(seconds, 1), "peak_rss_mb": round(peak_mb, 1)}
        with rasterio.open(work / "dem.tif") as dem:
            shape = dem.shape
        runs.append(
            {
                "source_px": size_px,
                "dem_px": list(shape),
                "area_factor": round(size_px**2 / sizes_px[0] ** 2, 2),
                "features_float32_mb": round(shape[0] * shape[1] * 3 * 4 / 2**20, 1),
                "steps": steps,
            }
        )
    _, baseline_mb = run_step(
        "import cinderseg.terrain.dem, cinderseg.terrain.features, cinderseg.data.tiles, cinderseg.data.mask"
    )
    growth = {
        step: round(runs[-1]["steps"][step]["peak_rss_mb"] / runs[0]["steps"][step]["peak_rss_mb"], 2)
        for step in runs[0]["steps"]
    }
    last_two = (
        {  # predict: the same full-size windows at 4x and 16x; at 1x they may shrink to the raster
            step: round(runs[-1]["steps"][step]["peak_rss_mb"] / runs[-2]["steps"][step]["peak_rss_mb"], 2)
            for step in runs[0]["steps"]
        }
        if len(runs) > 1
        else {}
    )
    return {
        "benchmark": "memory_scaling",
        "threads": threads,
        "model": str(model),
        "import_only_peak_rss_mb": round(baseline_mb, 1),
        "limit_mb": LIMIT_MB,
        "runs": runs,
        "peak_growth_largest_vs_smallest": growth,
        "peak_growth_largest_vs_second": last_two,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="cinderseg benchmarks")
    parser.add_argument("--quick", action="store_true", help="small variant (2000 px) for a smoke test")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    parser.add_argument("--work", type=Path, default=WORK, help="scratch folder (inputs are reused)")
    args = parser.parse_args(argv)
    size = 2000 if args.quick else 10000
    result = bench_gis_memory(size, args.work)
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
