"""``python -m bench [--quick] [--only NAME ...]``: the benchmark suite; one table, bench/results.json.

Seven measurements, each a ratio of figures measured side by side in this one run, with the absolute
figures beside (see bench/README.md for what each does and the latest numbers):

1. ``end_to_end``: the default demo, ``snakemake --cores all`` from an empty ``results/``, and each
   step's share (:mod:`bench.workflow`);
2. ``prediction``: our predictor against the tutorial's (every 224 px tile at step 112, one by one),
   km2/s, tiles/s, IoU, on a 3200 x 2000 px synthetic region (:mod:`bench.predict_speed`);
3. ``compute``: peak float32 matmul rate against the effective FLOP rate of inference, and our
   predictor's time by phase (:mod:`bench.compute`);
4. ``memory``: peak RSS of dem, mask, features, tiles and predict, and of the tutorial's in-memory
   tiling, on regions of 1x, 4x and 16x the area (:mod:`bench.gis_memory`);
5. ``training``: training tiles/s of each encoder (``--encoders``; default unet_small and
   hed_vgg16: the keras.applications encoders' training graphs take 10-110 s each to build here),
   frozen and fine-tuned (:mod:`bench.model_speed`);
6. ``dry_run``: Snakemake's dry run with everything up to date, 1, 10 and 50 regions;
7. ``incremental``: reruns after changing a threshold, a hyperparameter, adding a region.

The model of 2-4 is the one the end-to-end run trained (the default config's); without that run
(``--only``, ``--quick``) ``--model`` names one, else a small one is trained first. ``--quick`` is
the smoke test's variant: small rasters, unet_small only, and no workflow runs (1 and 7 skipped, the
dry run with 1 region), about 1.5 minutes. Every TensorFlow measurement runs in its own process with
``--threads`` threads (with ``--quick`` some run in this one, saving TensorFlow start-ups). Results
are written after each measurement (a partial file survives a failure).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
WORK = HERE / "work"
MEASUREMENTS = ("end_to_end", "incremental", "dry_run", "prediction", "compute", "memory", "training")
NUMBER = {
    name: i
    for i, name in enumerate(
        ("end_to_end", "prediction", "compute", "memory", "training", "dry_run", "incremental"), start=1
    )
}
DEFAULT_ENCODERS = ["unet_small", "hed_vgg16"]


def run_json(code: str) -> dict[str, Any]:
    """Run Python ``code`` that prints ``RESULT <json>`` in a fresh interpreter; the parsed result.
    SystemExit with the error's tail if it fails."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=HERE.parent, capture_output=True, text=True, check=False, env=env
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench: failed ({proc.returncode}):\n{code}\n{proc.stderr[-3000:]}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def call(module: str, function: str, *args: Any, in_process: bool = False, **kwargs: Any) -> dict[str, Any]:
    """``module.function(*args, **kwargs)`` in its own process (arguments as Python literals), or in
    this one with ``in_process`` (--quick: fewer TensorFlow start-ups)."""
    if in_process:
        import importlib

        result = getattr(importlib.import_module(module), function)(*args, **kwargs)
        return json.loads(json.dumps(result, default=str))
    arguments = ", ".join([*(repr(a) for a in args), *(f"{k}={v!r}" for k, v in kwargs.items())])
    return run_json(
        "import json\nfrom pathlib import Path, PosixPath\n"
        f"from {module} import {function}\n"
        f"print('RESULT', json.dumps({function}({arguments}), default=str))\n"
    )


# --------------------------------------------------------------------------- the table


def _row(n: str, what: str, value: str, against: str = "", ratio: str = "") -> dict[str, str]:
    return {"measurement": n, "what": what, "value": value, "against": against, "ratio": ratio}


def rows_end_to_end(r: dict[str, Any]) -> list[dict[str, str]]:
    wall = r["wall_seconds"]
    rows = [
        _row("1 end-to-end", "default demo from empty results/ (wall)", f"{wall:.0f} s", f"{r['jobs']} jobs")
    ]
    for step, s in r["steps"].items():
        rows.append(
            _row(
                "",
                f"  step {step} ({s['jobs']:.0f} jobs)",
                f"{s['seconds']:.1f} s",
                f"{wall:.0f} s wall",
                f"{s['share_of_wall']:.1%}",
            )
        )
    return rows


def rows_prediction(r: dict[str, Any]) -> list[dict[str, str]]:
    width, height = r["raster_px"]
    base = next(x for x in r["rows"] if x["variant"] == "tutorial")
    rows = []
    for x in r["rows"]:
        label = "tutorial tile loop (reference)" if x["variant"] == "tutorial" else x["variant"]
        rows.append(
            _row(
                "2 prediction" if not rows else "",
                f"{label}: {width}x{height} px",
                f"{x['seconds']:.1f} s, {x['km2_per_s']:.0f} km2/s, {x['tiles_per_s']:.1f} tiles/s",
                f"tutorial {base['seconds']:.1f} s",
                f"{x['speedup_vs_tutorial']:.2f}x",
            )
        )
    for x in r["rows"]:
        rows.append(
            _row(
                "",
                f"  {x['variant']}: IoU / CPU s / peak RSS",
                f"{x['iou']:.3f} / {x['cpu_seconds']:.0f} s / {x['peak_rss_mb']:.0f} MiB",
                f"tutorial IoU {base['iou']:.3f}",
                f"{x['iou'] - base['iou']:+.3f} IoU",
            )
        )
    return rows


def rows_compute(r: dict[str, Any]) -> list[dict[str, str]]:
    peak = r["peak_matmul_gflops"]
    prof = r["profiler_flops_per_pixel"]
    rows = [
        _row("3 compute", "peak float32 matmul (TensorFlow, same threads)", f"{peak:.1f} GFLOP/s"),
        _row(
            "",
            "model FLOPs per pixel (layer shapes)",
            f"{r['flops_per_pixel'] / 1e3:.1f} kFLOP",
            f"TF profiler {prof / 1e3:.1f} kFLOP" if prof else "",
            f"{r['matmul_share_of_flops']:.1%} in convolutions",
        ),
    ]
    for variant, x in r["predictors"].items():
        rows.append(
            _row(
                "",
                f"{variant}: effective rate (FLOPs/px x raster px/s)",
                f"{x['effective_gflops']:.1f} GFLOP/s",
                f"peak {peak:.0f}",
                f"{x['fraction_of_peak']:.1%}",
            )
        )
    rows.append(
        _row(
            "",
            "ours: network calls alone (window px incl. overlap)",
            f"{r['ours_network_only_gflops']:.1f} GFLOP/s",
            f"peak {peak:.0f}",
            f"{r['ours_network_only_fraction_of_peak']:.1%}",
        )
    )
    total = sum(r["ours_phases_seconds"].values())
    for phase, seconds in sorted(r["ours_phases_seconds"].items(), key=lambda kv: -kv[1]):
        rows.append(
            _row(
                "",
                f"  ours, phase: {phase}",
                f"{seconds:.2f} s",
                f"{total:.1f} s total",
                f"{r['ours_phases_share'][phase]:.1%}",
            )
        )
    return rows


def rows_memory(r: dict[str, Any]) -> list[dict[str, str]]:
    runs = r["runs"]
    sizes = " / ".join(f"{run['area_factor']:g}x" for run in runs)
    px = " / ".join(f"{run['dem_px'][0]}x{run['dem_px'][1]}" for run in runs)
    rows = [
        _row("4 memory", f"regions {sizes} area (DEM px)", px),
        _row("", "  a process importing the GIS modules", f"{r['import_only_peak_rss_mb']:.0f} MiB"),
    ]
    for step in runs[0]["steps"]:
        peaks = " / ".join(f"{run['steps'][step]['peak_rss_mb']:.0f}" for run in runs)
        label = "tutorial in-memory tiling" if step == "tutorial_tiling" else step
        rows.append(
            _row(
                "",
                f"  {label}: peak RSS MiB {sizes}",
                peaks,
                f"{runs[0]['steps'][step]['peak_rss_mb']:.0f} MiB at 1x",
                f"{r['peak_growth_largest_vs_smallest'][step]:.2f}x",
            )
        )
    return rows


def rows_training(r: dict[str, Any]) -> list[dict[str, str]]:
    base = next((x for x in r["rows"] if x["encoder"] == "unet_small"), r["rows"][0])
    rows = []
    for x in r["rows"]:
        mode = {
            "frozen": "encoder frozen",
            "all": "fine-tuned" if x["encoder"] != "unet_small" else "trained",
        }[x["mode"]]
        rows.append(
            _row(
                "5 training" if not rows else "",
                f"{x['encoder']} {mode} "
                f"({x['params_trainable'] / 1e6:.2f} of {x['params_total'] / 1e6:.2f} M trained)",
                f"{x['train_tiles_per_s']:.1f} tiles/s (first batch {x['first_batch_s']:.0f} s)",
                f"{base['encoder']} {base['train_tiles_per_s']:.1f}",
                f"{x['train_tiles_per_s'] / base['train_tiles_per_s']:.2f}x",
            )
        )
    return rows


def rows_dry_run(r: dict[str, Any]) -> list[dict[str, str]]:
    first = r["rows"][0]
    return [
        _row(
            "6 dry run" if i == 0 else "",
            f"up to date, {x['regions']} region(s), "
            + (f"{x['outputs']} outputs" if x["outputs"] else "the end-to-end run's folder after the reruns"),
            f"{x['dry_run_seconds']:.1f} s",
            f"{first['regions']} region: {first['dry_run_seconds']:.1f} s",
            f"{x['ratio_to_first']:.2f}x",
        )
        for i, x in enumerate(r["rows"])
    ]


def rows_incremental(r: dict[str, Any]) -> list[dict[str, str]]:
    return [
        _row(
            "7 reruns" if i == 0 else "",
            f"after {x['change']}",
            f"{x['wall_seconds']:.0f} s ({x['jobs']} jobs)",
            f"full run {r['full_run_seconds']:.0f} s",
            f"{x['ratio_to_full_run']:.1%}",
        )
        for i, x in enumerate(r["reruns"])
    ]


ROWS = {
    "end_to_end": rows_end_to_end,
    "prediction": rows_prediction,
    "compute": rows_compute,
    "memory": rows_memory,
    "training": rows_training,
    "dry_run": rows_dry_run,
    "incremental": rows_incremental,
}


def table_rows(measurements: dict[str, Any]) -> list[dict[str, str]]:
    """The table's rows, measurements in the issue's order (1-7), those not run left out."""
    rows = []
    for name in sorted(measurements, key=NUMBER.__getitem__):
        if not measurements[name].get("skipped"):
            rows.extend(ROWS[name](measurements[name]))
    return rows


def format_table(rows: list[dict[str, str]]) -> str:
    """The rows as a Markdown table (columns padded for the terminal)."""
    keys = ["measurement", "what", "value", "against", "ratio"]
    header = {k: k for k in keys}
    widths = {k: max(len(r[k]) for r in [header, *rows]) for k in keys}
    lines = []
    for r in [header, {k: "-" * widths[k] for k in keys}, *rows]:
        cells = [r[k].rjust(widths[k]) if k == "ratio" else r[k].ljust(widths[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the runs


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Write the results JSON atomically (temp name, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    tmp.replace(path)


def bench_model(args: argparse.Namespace, measurements: dict[str, Any]) -> Path:
    """The model of the prediction, compute and memory benchmarks: --model, else the end-to-end
    run's (copied out of its results/ before the reruns retrain it), else a small one trained here."""
    if args.model is not None:
        return args.model
    copied = args.work / "e2e_model" / "model.keras"
    if "end_to_end" in measurements and copied.exists():
        return copied
    quick = args.quick
    folder = str(args.work / ("quick_model" if quick else "small_model"))
    return Path(
        call("bench.suite", "train_small_model", folder, args.threads, quick, in_process=quick)["model"]
    )


def train_small_model(folder: str, threads: int, quick: bool) -> dict[str, str]:
    """A unet_small trained on a synthetic region: 1 epoch on 448 px (quick), else 3 minutes on 1024 px."""
    from bench.predict_speed import train_bench_model

    if quick:
        model = train_bench_model(Path(folder), 0.0, threads, region_px=448, epochs=1)
    else:
        model = train_bench_model(Path(folder), 3.0, threads)
    return {"model": str(model)}


def run_suite(args: argparse.Namespace) -> dict[str, Any]:
    from bench.gis_memory import machine_facts

    selected = [m for m in MEASUREMENTS if m in args.only]
    if "compute" in selected and "prediction" not in selected:
        selected.insert(selected.index("compute"), "prediction")  # compute uses its phases
    if "incremental" in selected and "end_to_end" not in selected:
        selected.insert(0, "end_to_end")
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "quick": args.quick,
        "machine": machine_facts(args.threads),
        "measurements": {},
    }
    m = results["measurements"]
    e2e_dir = args.work / "e2e"
    for name in selected:
        t0 = time.perf_counter()
        print(
            f"bench: {name} ({time.perf_counter() - started:.0f} s so far) ...", file=sys.stderr, flush=True
        )
        if name in ("end_to_end", "incremental") and args.quick:
            m[name] = {"skipped": "--quick runs no workflow"}
            continue
        if name == "end_to_end":
            from bench.workflow import bench_end_to_end

            m[name] = bench_end_to_end(e2e_dir)
            model_dir = e2e_dir / "results" / "models" / "unet"
            shutil.copytree(model_dir, args.work / "e2e_model", dirs_exist_ok=True)
        elif name == "incremental":
            from bench.workflow import bench_incremental

            m[name] = bench_incremental(e2e_dir, m["end_to_end"]["wall_seconds"])
        elif name == "dry_run":
            from bench.workflow import bench_dry_run_overhead

            completed = None
            if "incremental" in m and not m["incremental"].get("skipped"):
                completed = (e2e_dir, m["incremental"]["reruns"][-1]["configfile"])
            m[name] = bench_dry_run_overhead(
                args.work,
                (1,) if args.quick else (1, 10, 50),
                repeats=1 if args.quick else 3,
                completed=completed,
            )
        elif name == "prediction":
            model = bench_model(args, m)
            m[name] = call(
                "bench.predict_speed",
                "bench_predict_speed",
                quick=args.quick,
                threads=args.threads,
                work=args.work / "predict_speed",
                model=model,
                raster_px=(640, 448) if args.quick else (3200, 2000),
                variants=("ours", "tutorial"),
                in_process=args.quick,
            )
        elif name == "compute":
            from bench.compute import efficiency

            facts = call(
                "bench.compute",
                "compute_facts",
                str(bench_model(args, m)),
                args.threads,
                args.quick,
                in_process=args.quick,
            )
            m[name] = {"benchmark": "compute", **efficiency(facts, m["prediction"]), "facts": facts}
        elif name == "memory":
            sizes = [256] if args.quick else [800, 1600, 3200]
            m[name] = call(
                "bench.gis_memory",
                "bench_memory_scaling",
                sizes,
                str(bench_model(args, m)),
                args.work / "memory",
                args.threads,
                in_process=args.quick,
            )
        elif name == "training":
            encoders = ["unet_small"] if args.quick else args.encoders
            m[name] = call(
                "bench.model_speed",
                "bench_training",
                encoders,
                threads=args.threads,
                steps=1 if args.quick else 2,
                in_process=args.quick,
            )
        m[name]["bench_seconds"] = round(time.perf_counter() - t0, 1)
        results["total_seconds"] = round(time.perf_counter() - started, 1)
        results["table"] = table_rows(m)
        write_results(args.output, results)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    results["table"] = table_rows(m)
    write_results(args.output, results)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="cinderseg benchmark suite: one table, bench/results.json")
    parser.add_argument(
        "--quick", action="store_true", help="the small variant of the smoke test (about 1.5 minutes)"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=MEASUREMENTS,
        default=list(MEASUREMENTS),
        help="run these measurements only",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    parser.add_argument("--work", type=Path, default=WORK, help="scratch folder")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="TensorFlow threads")
    parser.add_argument("--model", type=Path, help="trained model of the prediction/compute/memory runs")
    parser.add_argument(
        "--encoders",
        nargs="+",
        default=DEFAULT_ENCODERS,
        help="encoders of the training benchmark (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    results = run_suite(args)
    machine = results["machine"]
    print(
        f"cinderseg benchmarks, {results['date']}, {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['threads']} TF threads, TensorFlow {machine['tensorflow']}, load average "
        f"{machine['load_average_1_5_15_min'][0]:.1f} at start, "
        f"{machine['load_average_at_end'][0]:.1f} at end, "
        f"{results['total_seconds']:.0f} s" + (" (--quick)" if args.quick else "")
    )
    print(format_table(results["table"]))
    print(f"(written to {args.output})")
    return results


if __name__ == "__main__":
    main()
