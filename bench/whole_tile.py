"""A whole 1-degree SRTM tile from DEM to cone polygons: each step, ``cinderseg predict`` and the workflow.

``python -m bench.whole_tile [--quick] [--only steps cli workflow tiled] [--threads 2] [--size-km 60]``

The tile (:func:`write_srtm_tile`) is SRTM-shaped: 3601 x 3601 px at 1 arc-second (pixel centres on
whole degrees, N19 W156, EPSG:4326, int16 metres, voids -32768), drawn from a synthetic volcanic
region (cinderseg.terrain.synthetic, about 750 cones, lava flows, gullies, pit craters, knobs)
reprojected bilinearly. At 30 m in UTM zone 5 its grid is 3556 x 3745 px (about 11 600 km2 of data).

Four measurements, each of the same tile and the shipped model (``pretrained``):

- ``steps``: each step in its own process through ``cinderseg.core.step.run_step``, as the workflow's
  scripts run it (dem, features, predict, vectorize with its figures, baseline): wall and CPU
  seconds, km2/s and peak RSS (``VmHWM`` of the process);
- ``cli``: ``cinderseg predict --dem TILE --out CONES.gpkg`` in one process, its wall time and peak
  RSS, and each phase's (the peak is reset between phases through ``/proc/self/clear_refs``);
- ``workflow``: ``snakemake --cores N`` on a predict-only config (the tile as a ``file`` region, role
  predict, ``predict.model: pretrained``) from an empty folder; wall time and each job's seconds and
  sampled peak RSS from its benchmark table;
- ``tiled``: the same config with ``tiles: {size_km: ...}`` (map tiles, one job per tile and step,
  then the mosaics): wall time here, the critical path a cluster with a node per tile would take
  (the longest job of each step in turn), and how its probability map and cones match the whole run's.

The network's share is the predict step's seconds over the sum. ``--quick`` uses a quarter-degree
tile (901 px; tiles of a quarter of ``--size-km``) for a smoke test. Results:
``bench/work/whole_tile/result.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import Resampling, reproject

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "whole_tile"
SRTM_NODATA = -32768
#: The tile: its south-west corner (degrees) and pixels per degree (+1: SRTM repeats the edges).
TILE_LON, TILE_LAT, ARCSEC = -156, 19, 1.0
#: The synthetic region under the tile, in EPSG:32605 (its UTM zone): it covers N19 W156 with margin.
REGION_CRS = "EPSG:32605"
REGION = {"origin_x": 183000.0, "origin_y": 2216000.0, "width_px": 3600, "height_px": 3810}
#: Landforms per 1024 x 1024 px of 30 m (the synthetic defaults' densities, a little more distractors).
PER_MPX = {"n_cones": 55, "n_lava_flows": 10, "n_gullies": 17, "n_pit_craters": 5, "n_knobs": 8}
STEPS = ("dem", "features", "predict", "vectorize", "baseline")


def write_srtm_tile(path: Path, *, degrees: float = 1.0, seed: int = 11) -> dict[str, Any]:
    """Write an SRTM-like tile of ``degrees`` (1: 3601 x 3601 px) at 1 arc-second to ``path``.

    EPSG:4326, int16 metres, nodata -32768 with voids of 3-20 px (SRTM's radar shadows), pixel
    centres on whole multiples of 1 arc-second from (TILE_LON, TILE_LAT + 1) (a smaller tile is the
    north-west part of the whole one). The terrain is a
    synthetic region (seed ``seed``) in EPSG:32605, reprojected bilinearly. Returns its facts.
    """
    from cinderseg.terrain.synthetic import SyntheticParams, generate_synthetic_region

    width = round(REGION["width_px"] * degrees) + 120  # the region starts 1-2 km outside the tile
    height = round(REGION["height_px"] * degrees) + 120
    scale = width * height / 1024**2
    params = SyntheticParams(
        seed=seed,
        width_px=width,
        height_px=height,
        crs=REGION_CRS,
        origin_x=REGION["origin_x"],
        origin_y=REGION["origin_y"],
        resolution_m=30.0,
        **{key: max(1, round(n * scale)) for key, n in PER_MPX.items()},
    )
    region = generate_synthetic_region(params)
    step = ARCSEC / 3600.0
    size = round(degrees * 3600 / ARCSEC) + 1
    north = TILE_LAT + 1  # a smaller tile is the north-west part of the whole one
    transform = from_origin(TILE_LON - step / 2, north + step / 2, step, step)
    geo = np.full((size, size), np.nan, dtype="float32")
    reproject(
        region.dem,
        geo,
        src_transform=region.transform,
        src_crs=region.crs,
        dst_transform=transform,
        dst_crs=CRS.from_epsg(4326),
        resampling=Resampling.bilinear,
        dst_nodata=np.nan,
    )
    dem = np.where(np.isnan(geo), SRTM_NODATA, np.round(geo)).astype("int16")
    del geo
    rng = np.random.default_rng(seed)
    n_voids = max(3, round(40 * degrees * degrees))
    for _ in range(n_voids):
        r, c = rng.integers(30, size - 30, size=2)
        h, w = rng.integers(3, 21, size=2)
        dem[r : r + h, c : c + w] = SRTM_NODATA
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 1,
        "dtype": "int16",
        "crs": CRS.from_epsg(4326),
        "transform": transform,
        "nodata": SRTM_NODATA,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(dem, 1)
    os.replace(tmp, path)
    cones = path.with_name("true_cones.gpkg")
    region.cones.to_file(cones, layer="cones", driver="GPKG")
    return {"px": [size, size], "arcsec": ARCSEC, "cones": len(region.cones), "voids": n_voids}


# Each step as the workflow's script runs it: Python source run in a fresh interpreter; {work} is the
# scratch folder, {tile} the tile, {threads} the TensorFlow threads and the vectorize step's processes.
STEP_CODE: dict[str, str] = {
    "dem": (
        "from cinderseg.terrain.dem import prepare_dem\n"
        "run_step(None, prepare_dem, ['{tile}'], '{work}/dem.tif', resolution_m=30.0, nodata=-32768,"
        " region='tile')\n"
    ),
    "features": (
        "from cinderseg.terrain.features import FeatureSettings, compute_features\n"
        "run_step(None, compute_features, '{work}/dem.tif', '{work}/features.tif', FeatureSettings(),"
        " region='tile')\n"
    ),
    "predict": (
        "from cinderseg.core.modelcard import model_path\n"
        "from cinderseg.nn.predict import predict_probability\n"
        "from cinderseg.nn.settings import PredictSettings\n"
        "run_step(None, predict_probability, '{work}/features.tif', model_path('pretrained'),"
        " '{work}/probability.tif', PredictSettings(), region='tile', threads={threads})\n"
    ),
    "vectorize": (
        "from cinderseg.cones.vectorize import VectorizeSettings, write_cone_products\n"
        "run_step(None, write_cone_products, '{work}/probability.tif', '{work}/dem.tif',"
        " VectorizeSettings(), cones_path='{work}/cones.gpkg', summary_path='{work}/summary.csv',"
        " size_frequency_path='{work}/sf.png', height_vs_diameter_path='{work}/hd.png',"
        " cone_map_path='{work}/map.png', region='tile', workers={threads})\n"
    ),
    "baseline": (
        "from cinderseg.cones.baseline import BaselineSettings, run_baseline\n"
        "run_step(None, run_baseline, '{work}/dem.tif', '{work}/baseline.gpkg', BaselineSettings(),"
        " region='tile')\n"
    ),
}
PEAK = (
    "import resource\n"
    "from pathlib import Path\n"
    "hwm = [l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM')]\n"
    "use = resource.getrusage(resource.RUSAGE_SELF)\n"
    "print('PEAK_KB', hwm[0].split()[1], 'CPU_S', use.ru_utime + use.ru_stime)\n"
)


def run_sampled(argv: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``argv`` (the repository as working directory); the finished process, and the peak of the
    memory of its process tree (MiB; sampled every 0.2 s, so forked workers count too): the sum of
    each process's proportional set size (PSS: a page shared by n processes counts 1/n in each), or
    of their RSS where PSS cannot be read (an upper bound: shared pages count in every process)."""
    import psutil

    peak = 0
    with subprocess.Popen(
        argv, cwd=HERE.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        while True:
            try:
                out, err = proc.communicate(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                total = 0
                try:
                    root = psutil.Process(proc.pid)
                    for p in [root, *root.children(recursive=True)]:
                        try:
                            total += p.memory_full_info().pss
                        except (psutil.AccessDenied, AttributeError):
                            total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
                peak = max(peak, total)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), round(peak / 2**20, 1)


def run_code(code: str, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``code`` in a fresh interpreter (the repository as working directory); its wall and CPU
    seconds, peak RSS (MiB) and peak RSS of its process tree (workers included).
    SystemExit with the error's tail if it fails."""
    started = time.perf_counter()
    proc, tree_mb = run_sampled(
        [sys.executable, "-c", code + PEAK], {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"bench: failed ({proc.returncode}):\n{code}\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PEAK_KB"))
    _, kb, _, cpu = line.split()
    return {
        "seconds": round(wall, 1),
        "cpu_s": round(float(cpu), 1),
        "peak_rss_mb": round(int(kb) / 1024, 1),
        "peak_rss_tree_mb": tree_mb,
    }


def dem_area_km2(dem: Path) -> float:
    """Area of the valid pixels of a DEM on a metric grid, km2 (read by blocks)."""
    from cinderseg.core.raster import iter_windows, valid_pixels

    with rasterio.open(dem) as ds:
        n = 0
        for win in iter_windows(ds.height, ds.width, 2048):
            n += int(valid_pixels(ds.read(1, window=win), ds.nodata).sum())
        return n * abs(ds.transform.a * ds.transform.e) / 1e6


def bench_steps(tile: Path, work: Path, threads: int, only: tuple[str, ...] = STEPS) -> dict[str, Any]:
    """Each step in its own process on ``tile``: seconds, CPU seconds, km2/s, peak RSS (MiB)."""
    work.mkdir(parents=True, exist_ok=True)
    header = (
        "import os\nos.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')\n"
        "from cinderseg.core.step import run_step\n"
    )
    rows: dict[str, Any] = {}
    for step in only:
        rows[step] = run_code(header + STEP_CODE[step].format(work=work, tile=tile, threads=threads))
        print(f"  {step}: {rows[step]}", flush=True)
    area = dem_area_km2(work / "dem.tif")
    for row in rows.values():
        row["km2_per_s"] = round(area / row["seconds"], 1)
    return {"area_km2": round(area, 1), "steps": rows}


# Wraps a module's function so that each call records its wall seconds and its own peak RSS: the
# process's high-water mark is reset before the call (``/proc/self/clear_refs``, Linux >= 4.0), and
# the mark it had reached is kept in PEAK_KB so that the whole run's peak is known too.
PHASES = """
import functools, importlib, json, resource, time
from pathlib import Path
PHASES, PEAK_KB = {}, [0]
def _hwm_kb():
    line = [l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM')][0]
    return int(line.split()[1])
def _timed(module, name, phase):
    mod = importlib.import_module(module)
    inner = getattr(mod, name)
    @functools.wraps(inner)
    def wrapper(*args, **kwargs):
        PEAK_KB[0] = max(PEAK_KB[0], _hwm_kb())
        Path('/proc/self/clear_refs').write_text('5')
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            PHASES[phase] = {'seconds': round(time.perf_counter() - started, 1),
                             'peak_rss_mb': round(_hwm_kb() / 1024, 1)}
    setattr(mod, name, wrapper)
def _report():
    use = resource.getrusage(resource.RUSAGE_SELF)
    print('RESULT', json.dumps({'phases': PHASES, 'peak_rss_mb': round(max(PEAK_KB[0], _hwm_kb()) / 1024, 1),
                                'cpu_s': round(use.ru_utime + use.ru_stime, 1)}))
"""
CLI_PHASES = (
    ("cinderseg.terrain.dem", "prepare_dem", "dem"),
    ("cinderseg.terrain.features", "compute_features", "features"),
    ("cinderseg.nn.predict", "predict_probability", "predict"),
    ("cinderseg.cones.vectorize", "vectorize_cones", "vectorize"),
)


def bench_cli(tile: Path, work: Path, threads: int) -> dict[str, Any]:
    """``cinderseg predict`` on ``tile`` in one fresh process: wall and CPU seconds, peak RSS, and
    each phase's seconds and peak RSS (the cone layer and the probability map are written to ``work``)."""
    work.mkdir(parents=True, exist_ok=True)
    argv = ["predict", "--dem", str(tile), "--out", str(work / "cones.gpkg"), "--nodata", "-32768"]
    argv += ["--probability", str(work / "probability.tif"), "--threads", str(threads), "--quiet"]
    code = PHASES + "".join(f"_timed({m!r}, {n!r}, {p!r})\n" for m, n, p in CLI_PHASES)
    code += (
        f"from cinderseg.cli import main\nstatus = main({argv!r})\n_report()\nassert status == 0, status\n"
    )
    started = time.perf_counter()
    proc, tree_mb = run_sampled([sys.executable, "-c", code], {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"bench: cinderseg predict failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])
    return {
        "seconds": round(wall, 1),
        **result,
        "peak_rss_tree_mb": tree_mb,
        "said": proc.stdout.splitlines()[0],
    }


def tile_config(tile: Path) -> dict[str, Any]:
    """The predict-only config of the tile: one ``file`` region, role predict, the shipped model."""
    region = {"source": "file", "dem": str(tile.resolve()), "nodata": SRTM_NODATA, "role": "predict"}
    return {"regions": {"tile": region}, "predict": {"model": "pretrained"}}


def bench_workflow(tile: Path, work: Path, cores: int) -> dict[str, Any]:
    """``snakemake --cores N`` on :func:`tile_config` from an empty folder: wall seconds, jobs, and
    each step's seconds and sampled peak RSS (MiB) from its benchmark table."""
    import yaml

    from bench.workflow import jobs_done, snakemake, step_times

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / "config.yaml").write_text(yaml.safe_dump(tile_config(tile), sort_keys=False))
    seconds, output = snakemake(work, "--configfile", str(work / "config.yaml"), cores=str(cores))
    steps = step_times(work / "results" / "benchmarks")
    return {
        "seconds": round(seconds, 1),
        "jobs": jobs_done(output),
        "steps": {k: {**v, "seconds": round(v["seconds"], 1)} for k, v in steps.items()},
        "cones": count_features(work / "results" / "cones" / "tile.gpkg"),
    }


def count_features(path: Path) -> int:
    """Features in a vector file's first layer."""
    import pyogrio

    return int(pyogrio.read_info(path)["features"])


def compare_runs(whole: Path, tiled: Path, region: str = "tile") -> dict[str, Any]:
    """How the tiled run's region products match the whole run's: the probability maps (largest and
    mean absolute difference, pixel IoU at 0.5) and the cones (one-to-one matches at IoU >= 0.5)."""
    import geopandas as gpd

    from cinderseg.core.raster import iter_windows, valid_pixels

    results = Path("results")
    a_path, b_path = (
        whole / results / "predictions" / f"{region}.tif",
        tiled / results / "predictions" / f"{region}.tif",
    )
    largest = total = n = inter = union = 0.0
    with rasterio.open(a_path) as a, rasterio.open(b_path) as b:
        assert (a.transform, a.shape) == (b.transform, b.shape), "the mosaic is not on the region's grid"
        for win in iter_windows(a.height, a.width, 2048):
            pa, pb = a.read(1, window=win), b.read(1, window=win)
            ok = valid_pixels(pa, a.nodata) & valid_pixels(pb, b.nodata)
            d = np.abs(pa[ok] - pb[ok])
            largest, total, n = (
                max(largest, float(d.max(initial=0))),
                total + float(d.sum()),
                n + int(ok.sum()),
            )
            inter += float(((pa >= 0.5) & (pb >= 0.5) & ok).sum())
            union += float((((pa >= 0.5) | (pb >= 0.5)) & ok).sum())
    ca = gpd.read_file(whole / results / "cones" / f"{region}.gpkg")
    cb = gpd.read_file(tiled / results / "cones" / f"{region}.gpkg")
    matched, ious = 0, []
    taken: set[int] = set()
    for geom in ca.geometry:
        best, best_iou = None, 0.5
        for j in cb.sindex.query(geom, predicate="intersects"):
            if j in taken:
                continue
            iou = geom.intersection(cb.geometry.iloc[j]).area / geom.union(cb.geometry.iloc[j]).area
            if iou >= best_iou:
                best, best_iou = int(j), iou
        if best is not None:
            taken.add(best)
            matched += 1
            ious.append(best_iou)
    return {
        "probability_max_abs_diff": round(largest, 4),
        "probability_mean_abs_diff": round(total / max(n, 1), 6),
        "pixel_iou_at_0_5": round(inter / max(union, 1.0), 4),
        "cones_whole": len(ca),
        "cones_tiled": len(cb),
        "cones_matched_iou_0_5": matched,
        "matched_mean_iou": round(float(np.mean(ious)), 4) if ious else None,
    }


def bench_tiled_workflow(tile: Path, work: Path, cores: int, size_km: float, whole: Path) -> dict[str, Any]:
    """The workflow on :func:`tile_config` with ``tiles: {size_km}``: wall seconds, each step's jobs and
    seconds, a cluster's critical path (the longest job of each step in turn, with one node per tile),
    and :func:`compare_runs` against the whole run in ``whole``."""
    import yaml

    from bench.workflow import jobs_done, snakemake

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    cfg = tile_config(tile)
    cfg["regions"]["tile"]["tiles"] = {"size_km": size_km}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    seconds, output = snakemake(work, "--configfile", str(work / "config.yaml"), cores=str(cores))
    steps: dict[str, dict[str, float]] = {}
    for tsv in sorted((work / "results" / "benchmarks").glob("**/*.tsv")):
        step = tsv.relative_to(work / "results" / "benchmarks").parts[0]
        with tsv.open(newline="") as fh:
            row = list(csv.DictReader(fh, delimiter="\t"))[-1]
        s = steps.setdefault(step, {"jobs": 0, "seconds": 0.0, "longest_s": 0.0, "max_rss_mb": 0.0})
        s["jobs"] += 1
        s["seconds"] = round(s["seconds"] + float(row["s"]), 1)
        s["longest_s"] = max(s["longest_s"], round(float(row["s"]), 1))
        if row.get("max_rss") not in ("NA", "", None):
            s["max_rss_mb"] = max(s["max_rss_mb"], float(row["max_rss"]))
    chain = ("dem", "features", "predict", "vectorize")
    critical = sum(steps[s]["longest_s"] for s in chain if s in steps)
    critical += max(
        steps.get("mosaic_dem", {}).get("longest_s", 0),
        steps.get("mosaic_probability", {}).get("longest_s", 0),
    )
    critical += steps.get("mosaic_cones", {}).get("longest_s", 0)
    return {
        "size_km": size_km,
        "seconds": round(seconds, 1),
        "jobs": jobs_done(output),
        "steps": steps,
        "cluster_critical_path_s": round(critical, 1),
        "against_whole": compare_runs(whole, work),
    }


MEASUREMENTS = ("steps", "cli", "workflow", "tiled")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The measurements named by ``args.only`` on the (quick or whole) tile; the results dict."""
    from bench.gis_memory import machine_facts

    degrees = 0.25 if args.quick else 1.0
    tile = args.work / ("n19w156_quarter.tif" if args.quick else "n19w156.tif")
    result: dict[str, Any] = {"benchmark": "whole_tile", "date": time.strftime("%Y-%m-%d"), "tile": str(tile)}
    if not tile.exists():
        result["tile_facts"] = write_srtm_tile(tile, degrees=degrees)
    result["machine"] = machine_facts(args.threads)
    for name in args.only:
        load = [round(x, 2) for x in os.getloadavg()]
        print(f"{name} (load {load[0]}):", flush=True)
        if name == "steps":
            result[name] = bench_steps(tile, args.work / "steps", args.threads)
        elif name == "cli":
            result[name] = bench_cli(tile, args.work / "cli", args.threads)
        elif name == "workflow":
            result[name] = bench_workflow(tile, args.work / "wf", args.threads)
        else:
            if not (args.work / "wf" / "results" / "cones" / "tile.gpkg").exists():
                result["workflow"] = bench_workflow(tile, args.work / "wf", args.threads)
            size = args.size_km * degrees
            result[name] = bench_tiled_workflow(
                tile, args.work / "tiled", args.threads, size, args.work / "wf"
            )
        result[name]["load_average_before"] = load
        print(json.dumps(result[name], indent=1), flush=True)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter-degree tile (901 px): a smoke test")
    parser.add_argument("--only", nargs="+", choices=MEASUREMENTS, default=list(MEASUREMENTS))
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow threads and Snakemake cores")
    parser.add_argument(
        "--size-km", type=float, default=60.0, help="tiles' size of the tiled run (whole tile)"
    )
    parser.add_argument("--work", type=Path, default=WORK, help="scratch folder (the tile is reused)")
    parser.add_argument("--output", type=Path, help="JSON results (default: WORK/result.json)")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    result = run(args)
    out = args.output or args.work / "result.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {out}")
    return result


if __name__ == "__main__":
    main()
