"""Choose the training defaults by measurement: encoders, freezing, channels at equal training time.

For each dataset (the default synthetic pair; optionally a real DEM with labels, e.g. the Mauna Kea
development data) the workflow makes the tiles (up to the tiles step) for each channel set; then
every candidate trains for the same wall-clock budget (``train.max_minutes``) with the same threads,
and is scored by pixel IoU, precision and recall (threshold 0.5) on the spatially held-out
validation tiles and, for the synthetic pair, on the test region's tiles (a volcano never seen in
training, with smaller cones).

    python -m bench.train_compare [--minutes 2] [--real-dem DEM --real-labels LABELS]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "work" / "train_compare"

TUTORIAL = ["elevation", "sobel", "clahe"]
TERRAIN = ["local_relief", "slope", "hillshade"]

# name -> (channels, model section, train section)
CANDIDATES: dict[str, tuple[list[str], dict[str, Any], dict[str, Any]]] = {
    "unet_small": (TUTORIAL, {"encoder": "unet_small"}, {}),
    "hed_frozen": (TUTORIAL, {"encoder": "hed_vgg16"}, {"fine_tune": "none"}),
    "hed_frozen_then_top2": (TUTORIAL, {"encoder": "hed_vgg16"}, {"frozen_epochs": 2, "fine_tune": "top"}),
    "hed_all": (TUTORIAL, {"encoder": "hed_vgg16"}, {"frozen_epochs": 0, "fine_tune": "all"}),
    "unet_small_terrain": (TERRAIN, {"encoder": "unet_small"}, {}),
    "hed_frozen_then_top2_terrain": (
        TERRAIN,
        {"encoder": "hed_vgg16"},
        {"frozen_epochs": 2, "fine_tune": "top"},
    ),
}


def synthetic_config() -> dict[str, Any]:
    """The default run's regions (config.yaml)."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    return {"regions": cfg["regions"]}


def real_config(dem: Path, labels: Path, resolution_m: float) -> dict[str, Any]:
    region = {
        "source": "file",
        "dem": str(dem),
        "labels": str(labels),
        "role": "train",
        "resolution_m": resolution_m,
    }
    return {"regions": {"real": region}}


def make_tiles(work: Path, cfg: dict[str, Any], channels: list[str], tile: int) -> dict[str, Path]:
    """Run the workflow up to the tiles of every labelled region; return region -> tiles path."""
    work.mkdir(parents=True, exist_ok=True)
    full = dict(cfg)
    full["features"] = {"channels": channels}
    full["tiling"] = {"size": tile, "step": tile // 2, "split_block_px": 3 * tile}
    (work / "config.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    targets = [f"results/tiles/{name}.npz" for name in full["regions"]]
    cmd = [sys.executable, "-m", "snakemake", *targets, "-s", str(REPO / "Snakefile"), "-d", str(work)]
    cmd += ["--workflow-profile", str(REPO / "profiles" / "default"), "--configfile", "config.yaml"]
    cmd += ["--cores", "2"]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench: the workflow failed in {work}:\n{proc.stderr[-3000:]}")
    return {name: work / "results" / "tiles" / f"{name}.npz" for name in full["regions"]}


def pixel_scores(model: Any, x: np.ndarray, y: np.ndarray, batch: int = 8) -> dict[str, float]:
    """Pixel IoU, precision, recall at 0.5 of a model over tiles (x float16, y uint8)."""
    tp = fp = fn = 0
    for start in range(0, x.shape[0], batch):
        prob = model.predict(np.asarray(x[start : start + batch], dtype="float32"), verbose=0)
        pred = prob[..., 0] >= 0.5
        true = y[start : start + batch, ..., 0] == 1
        tp += int((pred & true).sum())
        fp += int((pred & ~true).sum())
        fn += int((~pred & true).sum())
    return {
        "iou": tp / max(tp + fp + fn, 1),
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1),
    }


def split_tiles(tiles: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    from cinderseg.data.tiles import load_tiles, read_manifest

    x, y, _ = load_tiles(tiles, mmap=True)
    idx = np.flatnonzero(read_manifest(tiles.with_suffix(".csv"))["split"].to_numpy() == split)
    return x[idx], y[idx]


def run_candidate(
    name: str, tiles: dict[str, Path], train_region: str, test_region: str | None, minutes: float, tile: int
) -> dict[str, Any]:
    from cinderseg.nn.model import load_model
    from cinderseg.nn.settings import TrainingRun
    from cinderseg.nn.train import TrainOutputs, train_model

    channels, model_cfg, train_cfg = CANDIDATES[name]
    out = tiles[train_region].parent.parent / "compare" / name
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    card = train_model(
        [tiles[train_region]],
        [tiles[train_region].with_suffix(".csv")],
        TrainOutputs(
            model=out / "model.keras",
            history=out / "history.csv",
            curves=out / "curves.png",
            card=out / "card.json",
        ),
        TrainingRun.from_config(
            {"name": name, **model_cfg},
            {"epochs": 1000, "max_minutes": minutes, **train_cfg},
            regions=[train_region],
            tile_size=tile,
            threads=2,
        ),
    )
    seconds = time.perf_counter() - started
    model = load_model(out / "model.keras", compile=False)
    result = {
        "candidate": name,
        "channels": channels,
        "epochs": card.get("epochs_run"),
        "train_seconds": round(seconds, 1),
        "val": pixel_scores(model, *split_tiles(tiles[train_region], "val")),
    }
    if test_region is not None:
        result["test"] = pixel_scores(model, *split_tiles(tiles[test_region], "test"))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget of each candidate")
    parser.add_argument("--tile", type=int, default=224, help="tile size in pixels")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--real-dem", type=Path, help="a real DEM (e.g. ../shared/data/mauna_kea/...tif)")
    parser.add_argument("--real-labels", type=Path, help="labels of the real DEM")
    parser.add_argument("--real-resolution", type=float, default=30.0, help="resolution_m of the real region")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--output", type=Path, default=HERE / "train_compare.json")
    args = parser.parse_args(argv)

    datasets: list[tuple[str, dict[str, Any], str, str | None]] = []
    if not args.skip_synthetic:
        datasets.append(("synthetic", synthetic_config(), "synth_train", "synth_test"))
    if args.real_dem and args.real_labels:
        cfg = real_config(args.real_dem.resolve(), args.real_labels.resolve(), args.real_resolution)
        datasets.append(("real", cfg, "real", None))
    results = []
    for dataset, cfg, train_region, test_region in datasets:
        for name in args.candidates:
            channels = CANDIDATES[name][0]
            work = WORK / f"{dataset}_{'-'.join(channels)}_{args.tile}"
            tiles = make_tiles(work, cfg, channels, args.tile)
            row = {
                "dataset": dataset,
                **run_candidate(name, tiles, train_region, test_region, args.minutes, args.tile),
            }
            results.append(row)
            test = f"  test IoU {row['test']['iou']:.3f}" if "test" in row else ""
            print(
                f"{dataset:<10} {name:<30} epochs {row['epochs']!s:>3}  val IoU {row['val']['iou']:.3f} "
                f"P {row['val']['precision']:.2f} R {row['val']['recall']:.2f}{test}",
                flush=True,
            )
            args.output.write_text(
                json.dumps({"minutes": args.minutes, "tile": args.tile, "results": results}, indent=2)
            )


if __name__ == "__main__":
    main()
