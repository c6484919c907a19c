"""Whole-region prediction: our blended sliding windows against the tutorial's tile-by-tile approach.

``python -m bench.predict_speed [--quick] [--threads 2] [--repeats N] [--variants ...] [--output PATH]
[--work DIR] [--model PATH] [--raster WIDTH HEIGHT]`` (entry point :func:`main`, which returns the
result dict; :func:`bench_predict_speed` does the work without printing).

The same trained model and the same features raster go through four predictors, each in its own
process (peak RSS is that process's ``VmHWM``, as in :mod:`bench.gis_memory`; GDAL's cache capped
as the workflow caps it):

- ``ours``: :func:`cinderseg.nn.predict.predict_probability` with the default settings (512 px windows
  with the trained 224 px weights, 128 px overlap with raised-cosine blending, 16 px crop, no TTA,
  ``runtime: auto``: ONNX Runtime on the ``model.onnx`` exported beside the model, TensorFlow never
  imported), reading window by window and writing block by block (with overviews) in an I/O thread;
- ``ours_keras``: the same with ``predict.runtime: keras`` (TensorFlow runs the network);
- ``tutorial``: the tutorial's prediction: 224 px tiles every 112 px over the whole raster (the last
  row and column of tiles flush with the edges), every tile read and predicted on its own (one
  ``predict_on_batch`` call per tile), no blending: a later tile overwrites the earlier ones where
  they overlap; the whole output in memory, written at the end;
- ``tutorial_in_memory``: the tutorial's in-memory variant: the whole raster read, zero-padded to
  a whole number of steps, cut with ``skimage.util.view_as_windows`` into all 224 px tiles at step 112
  held in memory at once, ``model.predict`` on them all (batch 32, Keras' default), the predictions
  put back in tile order (later tiles overwrite) and written at the end.

Each is scored against the true cone mask by pixel IoU, precision and recall at threshold 0.5. The
data are synthetic (:mod:`cinderseg.terrain.synthetic`): the model is a unet_small trained for a few
minutes on a 1024 x 1024 px training region (cached under ``--work``), predicted on a separate
6500 x 4000 px region (30 m pixels, the tutorial's crop size) with the same cone density
(``--quick``: 1600 x 1000 px and a shorter training). Throughput counts the prediction call
itself (model loading included, interpreter start and imports excluded): km2/s and tiles/s, tiles
of 224 px covering the raster once (a raster of N 224 px tiles predicted in t seconds: N/t); also its
CPU time (all threads), which other load on a shared machine disturbs less than wall time. With
``--repeats`` the variants run in turn that many times and the fastest run of each counts. Seams are
measured as the mean jump between neighbouring pixels across the tutorial's 112 px tile grid divided
by the mean jump elsewhere (1: seamless). Exits with an error if our peak RSS exceeds 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "predict_speed"
LIMIT_MB = 2048
TILE = 224
STEP = 112
GDAL_CACHEMAX_MB = "256"  # as cinderseg.core.step.run_step sets it for the workflow's steps
VARIANTS = ("ours", "ours_keras", "tutorial", "tutorial_in_memory")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# --------------------------------------------------------------------------- data and model


def _scaled(width: int, height: int, seed: int) -> Any:
    """Synthetic parameters with the default training region's density of cones and distractors."""
    from cinderseg.terrain.synthetic import SyntheticParams

    f = width * height / 1024**2
    return SyntheticParams(
        seed=seed,
        width_px=width,
        height_px=height,
        n_cones=round(60 * f),
        n_lava_flows=round(12 * f),
        n_gullies=round(20 * f),
        n_pit_craters=round(6 * f),
        n_knobs=round(10 * f),
    )


def make_region(folder: Path, width: int, height: int, seed: int) -> dict[str, Path]:
    """DEM, true cones, mask and features (default channels) of a synthetic region, cached."""
    from cinderseg.data.mask import rasterize_labels
    from cinderseg.terrain.features import FeatureSettings, compute_features
    from cinderseg.terrain.synthetic import write_synthetic_region

    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.tif" for name in ("dem", "mask", "features")}
    paths["cones"] = folder / "cones.gpkg"
    if not paths["dem"].exists():
        write_synthetic_region(_scaled(width, height, seed), paths["dem"], paths["cones"])
    if not paths["mask"].exists():
        rasterize_labels(paths["cones"], paths["dem"], paths["mask"])
    if not paths["features"].exists():
        compute_features(paths["dem"], paths["features"], FeatureSettings())
    return paths


def train_bench_model(
    folder: Path, minutes: float, threads: int, region_px: int = 1024, epochs: int | None = None
) -> Path:
    """A unet_small (schema defaults) trained for ``minutes`` (or ``epochs``) on a ``region_px``
    square synthetic region, cached, with its ONNX copy beside it (as the train rule exports it)."""
    from cinderseg.data.tiles import TilingSettings, make_tiles
    from cinderseg.nn.onnx import export_onnx, onnx_path
    from cinderseg.nn.settings import TrainingRun
    from cinderseg.nn.train import TrainOutputs, train_model

    model = folder / "model" / "model.keras"
    if model.exists():
        if not onnx_path(model).exists():
            export_onnx(model)
        return model
    region = make_region(folder / "train_region", region_px, region_px, seed=1)
    tiles, manifest = folder / "tiles.npz", folder / "tiles.csv"
    tiling = TilingSettings() if region_px >= 1024 else TilingSettings(split_block_px=TILE)  # a small region
    make_tiles(region["features"], region["mask"], tiles, manifest, tiling, role="train")
    train_model(
        [tiles],
        [manifest],
        TrainOutputs(
            model=model,
            history=model.with_name("history.csv"),
            curves=model.with_name("training_curves.png"),
            card=model.with_name("model_card.json"),
        ),
        TrainingRun.from_config(
            {"encoder": "unet_small"},
            {"max_minutes": minutes, **({"epochs": epochs} if epochs else {})},
            tile_size=TILE,
            threads=threads,
        ),
    )
    export_onnx(model)
    return model


# --------------------------------------------------------------------------- the tutorial's predictors


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads), seconds."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _write_probability(ref_path: Path, out_path: Path, prob: np.ndarray) -> None:
    import rasterio

    from cinderseg.core.raster import NODATA_FLOAT, atomic_write, geotiff_profile

    with rasterio.open(ref_path) as ref:
        profile = geotiff_profile(
            width=ref.width,
            height=ref.height,
            count=1,
            dtype="float32",
            crs=ref.crs,
            transform=ref.transform,
            nodata=NODATA_FLOAT,
        )
    with atomic_write(out_path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(prob, 1)


def _nodata_to_zero(x: np.ndarray, nodata: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(x with nodata as 0, invalid mask over the last two axes) for x of shape (C, h, w)."""
    bad = ~np.isfinite(x)
    if nodata is not None:
        bad |= x == nodata
    bad = bad.any(axis=0)
    x = np.where(bad[None], 0.0, x).astype("float32")
    return x, bad


def predict_tutorial(features: Path, model_path: Path, out_path: Path, threads: int) -> dict[str, Any]:
    """The tutorial's prediction: every 224 px tile (step 112) read and predicted on its own,
    later tiles overwriting earlier ones; the output held in memory and written at the end."""
    import rasterio

    from cinderseg.core.raster import NODATA_FLOAT
    from cinderseg.data.tiles import tile_windows
    from cinderseg.nn.model import load_model
    from cinderseg.nn.runtime import configure_threads

    started, cpu = time.perf_counter(), _cpu_seconds()
    configure_threads(threads)
    model = load_model(model_path, compile=False)
    with rasterio.open(features) as ds:
        prob = np.full((ds.height, ds.width), NODATA_FLOAT, dtype="float32")
        windows = tile_windows(ds.height, ds.width, TILE, STEP)
        for win in windows:
            x, bad = _nodata_to_zero(ds.read(window=win), ds.nodata)
            p = np.asarray(model.predict_on_batch(x.transpose(1, 2, 0)[None]))[0, ..., 0]
            r, c = int(win.row_off), int(win.col_off)
            prob[r : r + TILE, c : c + TILE] = np.where(bad, NODATA_FLOAT, p)  # overwrite, no blending
    _write_probability(features, out_path, prob)
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": _cpu_seconds() - cpu,
        "tiles_predicted": len(windows),
    }


def predict_tutorial_in_memory(
    features: Path, model_path: Path, out_path: Path, threads: int
) -> dict[str, Any]:
    """The tutorial's in-memory variant: whole raster read, all 224 px tiles (step 112) cut with
    view_as_windows and held at once, predicted with model.predict, put back in order (overwriting)."""
    import rasterio

    from bench.gis_memory import tutorial_tile_array
    from cinderseg.core.raster import NODATA_FLOAT
    from cinderseg.nn.model import load_model
    from cinderseg.nn.runtime import configure_threads

    started, cpu = time.perf_counter(), _cpu_seconds()
    configure_threads(threads)
    model = load_model(model_path, compile=False)
    with rasterio.open(features) as ds:
        x, bad = _nodata_to_zero(ds.read(), ds.nodata)
    _, height, width = x.shape
    tiles, n_rows, n_cols = tutorial_tile_array(x, TILE, STEP)
    del x
    pred = model.predict(tiles, batch_size=32, verbose=0)
    out = np.zeros(((n_rows - 1) * STEP + TILE, (n_cols - 1) * STEP + TILE), dtype="float32")
    for k in range(pred.shape[0]):
        r, c = (k // n_cols) * STEP, (k % n_cols) * STEP
        out[r : r + TILE, c : c + TILE] = pred[k, ..., 0]
    prob = np.where(bad, NODATA_FLOAT, out[:height, :width]).astype("float32")
    _write_probability(features, out_path, prob)
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": _cpu_seconds() - cpu,
        "tiles_predicted": int(pred.shape[0]),
    }


class PhaseTimer:
    """Seconds spent in each phase of :func:`cinderseg.nn.predict.predict_probability`, measured by
    wrapping the functions it calls (in this process only), per thread: in the main thread the network
    (``predict_windows``), blending (weighted sums and their normalisation), overviews and closing the
    output (which flushes and compresses the blocks); in the I/O thread, overlapped with those,
    reading the features (GDAL read and decompression), preparing windows (nodata mask, channels-last
    copy) and writing (copying into GDAL's cache)."""

    IO = "I/O thread: "

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.network_pixels = 0
        self._undo: list[tuple[Any, str, Any]] = []

    def _wrap(self, owner: Any, name: str, phase: str, count: Callable[..., None] | None = None) -> None:
        import threading

        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                main = threading.current_thread() is threading.main_thread()
                key = phase if main else self.IO + phase
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0
                if count is not None:
                    count(*args)

        self._undo.append((owner, name, original))
        setattr(owner, name, timed)

    def __enter__(self) -> PhaseTimer:
        import rasterio.io

        import cinderseg.nn.windows as windows
        from cinderseg.nn.windows import StripWriter

        def pixels(_predictor: Any, x: np.ndarray, *rest: Any) -> None:
            self.network_pixels += int(x.shape[0] * x.shape[1] * x.shape[2])

        self._wrap(rasterio.io.DatasetReader, "read", "read features")
        self._wrap(windows, "read_window", "prepare windows")
        self._wrap(windows, "predict_windows", "network", pixels)
        self._wrap(StripWriter, "add", "blend")
        self._wrap(StripWriter, "flush", "blend")
        self._wrap(rasterio.io.DatasetWriter, "write", "write")
        self._wrap(rasterio.io.DatasetWriter, "build_overviews", "overviews")
        self._wrap(rasterio.io.DatasetWriter, "close", "close (flush, compress)")
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)

    def phases(self, total_s: float, load_s: float) -> dict[str, float]:
        """Exclusive seconds per phase of the main thread (nested calls subtracted), model loading,
        and the rest of ``total_s`` (the Python loop, waiting for reads, window grid, atomic rename);
        they sum to ``total_s``. Then the I/O thread's phases, which overlap the main thread's."""
        s = {k: v for k, v in self.seconds.items() if not k.startswith(self.IO)}
        io = {k: v for k, v in self.seconds.items() if k.startswith(self.IO)}
        if "read features" in s:  # reads in the main thread (no I/O thread)
            s["prepare windows"] = s.get("prepare windows", 0.0) - s["read features"]
        key = self.IO + "prepare windows"
        if key in io:
            io[key] -= io.get(self.IO + "read features", 0.0)
        s = {"load model": load_s, **s}
        s["other (Python loop, waiting for reads, setup)"] = total_s - sum(s.values())
        return {k: round(v, 3) for k, v in {**s, **io}.items()}


def predict_ours(
    features: Path, model_path: Path, out_path: Path, threads: int, runtime: str = "auto"
) -> dict[str, Any]:
    """cinderseg.nn.predict with the default settings (``runtime``), its phases timed
    (:class:`PhaseTimer`)."""
    import sys

    from cinderseg.nn.predict import predict_probability
    from cinderseg.nn.settings import PredictSettings

    cpu = _cpu_seconds()
    with PhaseTimer() as timer:
        stats = predict_probability(
            features, model_path, out_path, PredictSettings(runtime=runtime), threads=threads
        )
    return {
        "seconds": stats["seconds"],
        "cpu_seconds": _cpu_seconds() - cpu,
        "runtime": stats["runtime"],
        "tensorflow_imported": "tensorflow" in sys.modules,
        "tiles_predicted": None,
        "windows": stats["windows"],
        "window_shapes": stats["window_shapes"],
        "coverage": stats["coverage"],
        "network_pixels": timer.network_pixels,
        "phases_seconds": timer.phases(stats["seconds"], stats["load_seconds"]),
    }


def predict_ours_keras(features: Path, model_path: Path, out_path: Path, threads: int) -> dict[str, Any]:
    """:func:`predict_ours` with ``predict.runtime: keras`` (TensorFlow runs the network)."""
    return predict_ours(features, model_path, out_path, threads, runtime="keras")


PREDICTORS = {
    "ours": "predict_ours",
    "ours_keras": "predict_ours_keras",
    "tutorial": "predict_tutorial",
    "tutorial_in_memory": "predict_tutorial_in_memory",
}


def run_variant(variant: str, features: Path, model: Path, out: Path, threads: int) -> dict[str, Any]:
    """Run one predictor in a fresh interpreter; its result plus wall time and peak RSS (MiB)."""
    from bench.gis_memory import PEAK_RSS

    code = (
        "import json, os\n"
        f"os.environ.setdefault('GDAL_CACHEMAX', {GDAL_CACHEMAX_MB!r})\n"
        f"from bench.predict_speed import {PREDICTORS[variant]} as f\n"
        f"r = f({str(features)!r}, {str(model)!r}, {str(out)!r}, {threads})\n"
        "print('RESULT', json.dumps(r))\n" + PEAK_RSS
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=HERE.parent, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"bench: {variant} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = proc.stdout.splitlines()
    result = json.loads(next(line[7:] for line in lines if line.startswith("RESULT ")))
    peak_kb = next(int(line.split()[1]) for line in lines if line.startswith("PEAK_KB"))
    result.update(process_seconds=wall, peak_rss_mb=peak_kb / 1024.0)
    return result


# --------------------------------------------------------------------------- scoring


def pixel_scores(prob_path: Path, mask_path: Path, threshold: float = 0.5) -> dict[str, float]:
    """Pixel IoU, precision and recall of ``prob >= threshold`` against the mask: the evaluate step's
    own block-wise count (nodata in either raster ignored)."""
    from cinderseg.assess.pixels import pixel_metrics

    metrics = pixel_metrics(prob_path, mask_path, threshold=threshold)
    return {key: metrics[key] or 0.0 for key in ("iou", "precision", "recall")}


def seam_ratio(prob_path: Path, period: int = STEP) -> float:
    """Mean absolute jump between neighbouring pixels across the tutorial's tile boundaries (every
    ``period`` px, both axes) divided by the mean jump elsewhere: about 1 for a seamless map, above 1
    where tiles meet unblended. Read in strips of 1024 rows."""
    import rasterio
    from rasterio.windows import Window

    sums, counts = np.zeros(2), np.zeros(2)
    with rasterio.open(prob_path) as ds:
        for row in range(0, ds.height, 1024):
            n = min(1024, ds.height - row)
            p = ds.read(1, window=Window(0, row, ds.width, min(n + 1, ds.height - row)))
            jumps = (
                (np.abs(np.diff(p[:n], axis=1)), (np.arange(1, ds.width) % period == 0)[None, :]),
                (np.abs(np.diff(p, axis=0)), ((np.arange(p.shape[0] - 1) + row + 1) % period == 0)[:, None]),
            )
            for diff, at_seam in jumps:
                ok = diff < 1.5  # no jump to or from nodata (-9999)
                seam = np.broadcast_to(at_seam, diff.shape)
                sums += [diff[seam & ok].sum(), diff[~seam & ok].sum()]
                counts += [(seam & ok).sum(), (~seam & ok).sum()]
    return float((sums[0] / max(counts[0], 1)) / (sums[1] / max(counts[1], 1)))


def bench_predict_speed(
    *,
    quick: bool = False,
    threads: int = 2,
    work: Path = WORK,
    train_minutes: float | None = None,
    repeats: int = 1,
    variants: tuple[str, ...] = VARIANTS,
    model: Path | None = None,
    raster_px: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Prepare (or reuse) the model and region, run every variant ``repeats`` times (interleaved; the
    fastest run of each counts, which evens out other load on the machine), score it; returns the
    result dict. ``variants`` must include ``tutorial`` (the reference of the ratios). ``model``: a
    trained model (with its card) to use instead of training one; ``raster_px``: (width, height) of
    the predicted region instead of the default size."""
    import rasterio

    width, height = raster_px or ((1600, 1000) if quick else (6500, 4000))
    minutes = train_minutes if train_minutes is not None else (0.5 if quick else 3.0)
    work.mkdir(parents=True, exist_ok=True)
    if model is None:
        model = train_bench_model(work / f"train_{minutes:g}min", minutes, threads)
    region = make_region(work / f"region_{width}x{height}", width, height, seed=7)
    with rasterio.open(region["features"]) as ds:
        pixel_km2 = abs(ds.transform.a * ds.transform.e) / 1e6
        km2 = pixel_km2 * ds.width * ds.height
        in_memory_mb = ds.width * ds.height * ds.count * 4 / 2**20
    card = json.loads(model.with_name("model_card.json").read_text())
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    for _ in range(max(1, repeats)):
        for variant in variants:
            out = region["features"].with_name(f"probability_{variant}.tif")
            runs[variant].append(run_variant(variant, region["features"], model, out, threads))
    rows = []
    for variant in variants:
        r = min(runs[variant], key=lambda run: run["seconds"])
        r["runs_seconds"] = [round(run["seconds"], 1) for run in runs[variant]]
        r["peak_rss_mb"] = max(run["peak_rss_mb"] for run in runs[variant])
        out = region["features"].with_name(f"probability_{variant}.tif")
        r.update(pixel_scores(out, region["mask"]), seam_ratio=seam_ratio(out))
        r["variant"] = variant
        r["km2_per_s"] = km2 / r["seconds"]
        r["tiles_per_s"] = width * height / TILE**2 / r["seconds"]
        rows.append(r)
    base = next(r for r in rows if r["variant"] == "tutorial")
    for r in rows:
        r["speedup_vs_tutorial"] = base["seconds"] / r["seconds"]
        r["cpu_ratio_vs_tutorial"] = base["cpu_seconds"] / r["cpu_seconds"]
    return {
        "benchmark": "predict_speed",
        "raster_px": [width, height],
        "km2": round(km2, 1),
        "features_float32_in_memory_mb": round(in_memory_mb, 1),
        "threads": threads,
        "repeats": max(1, repeats),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "limit_mb": LIMIT_MB,
        "model": {
            "path": str(model),
            "encoder": card.get("encoder"),
            "channels": card.get("channels"),
            "tile_size": card.get("tile_size"),
            "training_minutes": card.get("config", {}).get("train", {}).get("max_minutes", minutes),
            "best_val_iou": card.get("best_value"),
            "epochs": card.get("epochs_run"),
        },
        "rows": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
    }


def print_table(result: dict[str, Any]) -> None:
    width, height = result["raster_px"]
    m = result["model"]
    print(
        f"Prediction of a {width} x {height} px raster ({result['km2']:.0f} km2), {m['encoder']} trained "
        f"{m['training_minutes']:g} min ({m['epochs']} epochs, val IoU {m['best_val_iou']:.3f}), "
        f"{result['threads']} threads, best of {result['repeats']} run(s), load average "
        f"{result['load_average_before']:.1f} -> {result['load_average_after']:.1f}"
    )
    print(
        f"{'variant':<20}{'seconds':>9}{'CPU s':>8}{'km2/s':>8}{'tiles/s':>9}{'speed-up':>10}"
        f"{'CPU ratio':>10}{'IoU':>7}{'prec.':>7}{'recall':>7}{'seams':>7}{'peak RSS MiB':>14}"
    )
    for r in result["rows"]:
        print(
            f"{r['variant']:<20}{r['seconds']:>9.1f}{r['cpu_seconds']:>8.1f}{r['km2_per_s']:>8.0f}"
            f"{r['tiles_per_s']:>9.1f}{r['speedup_vs_tutorial']:>9.2f}x{r['cpu_ratio_vs_tutorial']:>9.2f}x"
            f"{r['iou']:>7.3f}{r['precision']:>7.3f}{r['recall']:>7.3f}{r['seam_ratio']:>7.2f}"
            f"{r['peak_rss_mb']:>14.0f}"
        )
    print(
        "(seconds: the prediction call, model loading included; tiles/s: 224 px tiles covering the raster\n"
        "once; speed-up and CPU ratio relative to the tutorial; seams: mean jump between neighbouring\n"
        f"pixels across the tutorial's 112 px tile grid / elsewhere; peak RSS limit {result['limit_mb']} MiB)"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small raster (1600 x 1000 px), short training")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow threads of every variant")
    parser.add_argument("--train-minutes", type=float, help="training budget of the cached model")
    parser.add_argument("--output", type=Path, help="write the JSON result here")
    parser.add_argument("--work", type=Path, default=WORK, help="scratch folder (model and data reused)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant (the fastest counts)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--model", type=Path, help="a trained model (card beside it) instead of training one")
    parser.add_argument("--raster", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"), help="region size, px")
    args = parser.parse_args(argv)
    from bench.gis_memory import machine_facts  # here: the variants' processes need not import it

    result = bench_predict_speed(
        quick=args.quick,
        threads=args.threads,
        work=args.work,
        train_minutes=args.train_minutes,
        repeats=args.repeats,
        variants=tuple(v for v in VARIANTS if v in {"tutorial", *args.variants}),
        model=args.model,
        raster_px=tuple(args.raster) if args.raster else None,
    )
    result["machine"] = machine_facts()
    result["date"] = time.strftime("%Y-%m-%d")
    print_table(result)
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    ours = next(r for r in result["rows"] if r["variant"] == "ours")
    if ours["peak_rss_mb"] > LIMIT_MB:
        raise SystemExit(f"bench: peak RSS of our predictor {ours['peak_rss_mb']:.0f} MiB > {LIMIT_MB} MiB")
    return result


if __name__ == "__main__":
    main()
