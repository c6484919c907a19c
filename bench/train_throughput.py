"""Training throughput: the train step (``cinderseg.nn.train.train_model``) against a plain Keras ``fit``.

``python -m bench.train_throughput [--batches 40] [--repeats 2] [--threads 2] [--quick]``

Both train the same network (the default ``model`` section: unet_small, 16 base filters; the same
seed, Adam, Tversky loss and metrics) on the same tiles: the training tiles of the default demo's
training region (``config.yaml``'s synth_train, 1024 x 1024 px at 30 m, 224 px tiles at step 112),
made here by the package's own steps. Each run is a fresh process with ``--threads`` TensorFlow
threads; runs alternate, in reverse order every other round (A B C, C B A, ...), so that on a shared
machine every variant sees the same load on average.

- **train step**: ``train_model`` as the workflow runs it (memory-mapped tiles read through the
  tf.data pipeline, positive oversampling, one of the 8 symmetries per tile, its callbacks and
  progress), one epoch of ``--batches`` + warm-up batches of 8 tiles; ``--plain-settings`` also
  times it without augmentation and oversampling (what the plain fit does).
- **plain fit**: the train tiles loaded into memory as float32 arrays, ``model.fit(x, y,
  batch_size=8, shuffle=True)`` for as many batches, nothing else.

Tiles/s count the batches after the first ``WARMUP`` (graph tracing), from the end of the last
warm-up batch to the end of the last batch, input waits included; validation is not counted. Tiles
per CPU second (the process's, all threads) over the same batches are the steadier figure on a
shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "train_throughput"
WARMUP = 3
BATCH = 8

# A Keras callback recording the end time of every training batch (pasted into both runs).
TIMER = """
import time
import keras
class BatchTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ends, self.cpu = [], []
    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())
        self.cpu.append(time.process_time())
def rates(timer, warmup, batch):
    ends, cpu = timer.ends[warmup - 1:], timer.cpu[warmup - 1:]
    tiles = (len(ends) - 1) * batch
    return {'tiles_per_s': tiles / (ends[-1] - ends[0]), 'tiles_per_cpu_s': tiles / (cpu[-1] - cpu[0]),
            'batches': len(timer.ends)}
"""


def prepare_tiles(work: Path, size_px: int = 1024) -> tuple[Path, Path]:
    """The training tiles of the demo's training region (``size_px`` square): synthetic DEM, default
    features, mask and 224 px tiles of role train; reused when present. (tiles .npz, manifest .csv)"""
    from cinderseg.data.mask import rasterize_labels
    from cinderseg.data.tiles import TilingSettings, make_tiles
    from cinderseg.terrain.features import FeatureSettings, compute_features
    from cinderseg.terrain.synthetic import SyntheticParams, write_synthetic_region

    tiles, manifest = work / "tiles.npz", work / "tiles.csv"
    if tiles.exists() and manifest.exists():
        return tiles, manifest
    work.mkdir(parents=True, exist_ok=True)
    params = SyntheticParams(seed=1, width_px=size_px, height_px=size_px, n_cones=60 * size_px**2 // 1024**2)
    write_synthetic_region(params, work / "dem.tif", work / "cones.gpkg")
    compute_features(work / "dem.tif", work / "features.tif", FeatureSettings())
    rasterize_labels(work / "cones.gpkg", work / "dem.tif", work / "mask.tif")
    make_tiles(work / "features.tif", work / "mask.tif", tiles, manifest, TilingSettings(), role="train")
    return tiles, manifest


def train_step_code(tiles: Path, manifest: Path, batches: int, threads: int, plain: bool) -> str:
    """Python source timing ``train_model`` for one epoch of ``batches`` + WARMUP batches."""
    train = {"epochs": 1, "steps_per_epoch": batches + WARMUP, "calibrate": False}
    if plain:
        train.update(augment=False, positive_oversampling=1)
    return TIMER + (
        "import json, tempfile\nfrom pathlib import Path\n"
        "from cinderseg.nn.settings import TrainingRun\n"
        "from cinderseg.nn.train import TrainOutputs, train_model\n"
        "timer = BatchTimer()\n"
        "out = Path(tempfile.mkdtemp())\n"
        "outputs = TrainOutputs(model=out / 'm' / 'model.keras', history=out / 'h.csv', curves=out / 'c.png',"
        " card=out / 'card.json')\n"
        f"run = TrainingRun.from_config({{}}, {train!r}, threads={threads}, tile_size=224)\n"
        f"train_model([{str(tiles)!r}], [{str(manifest)!r}], outputs, run, extra_callbacks=[timer])\n"
        f"print('RESULT', json.dumps(rates(timer, {WARMUP}, {BATCH})))\n"
    )


def plain_fit_code(tiles: Path, manifest: Path, batches: int, threads: int) -> str:
    """Python source timing a plain ``model.fit`` on the train tiles in memory, same model and seed."""
    return TIMER + (
        "import json\nimport numpy as np\n"
        "from cinderseg.data.tiles import load_tiles, read_manifest\n"
        "from cinderseg.nn.losses import iou_metric, make_loss, precision_metric, recall_metric\n"
        "from cinderseg.nn.model import build_unet\n"
        "from cinderseg.nn.runtime import configure_threads\n"
        "from cinderseg.nn.settings import ModelSettings, TrainSettings\n"
        f"configure_threads({threads})\n"
        f"x, y, _ = load_tiles({str(tiles)!r})\n"
        f"train = (read_manifest({str(manifest)!r})['split'] == 'train').to_numpy()\n"
        f"n = {(batches + WARMUP) * BATCH}\n"
        "idx = np.resize(np.flatnonzero(train), n)\n"
        "x, y = x[idx].astype(np.float32), y[idx].astype(np.float32)\n"
        "s = TrainSettings()\n"
        "keras.utils.set_random_seed(s.seed)\n"
        "model = build_unet(ModelSettings(), tile_size=224, n_channels=x.shape[-1])\n"
        "model.compile(optimizer=keras.optimizers.Adam(learning_rate=s.learning_rate),"
        " loss=make_loss(s.loss, tversky_alpha=s.tversky_alpha, tversky_beta=s.tversky_beta,"
        " focal_gamma=s.focal_gamma), metrics=[iou_metric(), precision_metric(), recall_metric()])\n"
        "timer = BatchTimer()\n"
        f"model.fit(x, y, batch_size={BATCH}, epochs=1, shuffle=True, verbose=0, callbacks=[timer])\n"
        f"print('RESULT', json.dumps(rates(timer, {WARMUP}, {BATCH})))\n"
    )


def run_code(code: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter (repository as working directory); its RESULT line."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=HERE.parent, capture_output=True, text=True, check=False, env=env
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench: training run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])


def bench_train_throughput(
    batches: int = 40, repeats: int = 2, threads: int = 2, work: Path = WORK, plain_settings: bool = True
) -> dict[str, Any]:
    """Tiles/s of the train step and of a plain ``fit``, ``repeats`` alternating runs each; the medians
    and their ratio (train step / plain fit: at least 1 means the train step is not slower)."""
    tiles, manifest = prepare_tiles(work)
    variants = {
        "train_step": lambda: train_step_code(tiles, manifest, batches, threads, plain=False),
        "plain_fit": lambda: plain_fit_code(tiles, manifest, batches, threads),
    }
    if plain_settings:
        variants["train_step_no_augmentation"] = lambda: train_step_code(
            tiles, manifest, batches, threads, plain=True
        )
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    loads = []
    for repeat in range(repeats):
        order = list(variants.items())
        for name, code in order if repeat % 2 == 0 else order[::-1]:  # ABC CBA ...: the same load on average
            loads.append(os.getloadavg()[0])
            runs[name].append({k: round(v, 3) for k, v in run_code(code()).items()})
            print(f"  {name}: {runs[name][-1]} (load {loads[-1]:.1f})", flush=True)
    median = {name: round(statistics.median(r["tiles_per_s"] for r in rs), 2) for name, rs in runs.items()}
    per_cpu = {
        name: round(statistics.median(r["tiles_per_cpu_s"] for r in rs), 3) for name, rs in runs.items()
    }
    return {
        "benchmark": "train_throughput",
        "batches": batches,
        "batch_size": BATCH,
        "threads": threads,
        "runs": runs,
        "median_tiles_per_s": median,
        "median_tiles_per_cpu_s": per_cpu,
        "train_step_over_plain_fit": round(median["train_step"] / median["plain_fit"], 3),
        "train_step_over_plain_fit_per_cpu_s": round(per_cpu["train_step"] / per_cpu["plain_fit"], 3),
        "load_average_1min": [round(x, 2) for x in loads],
        "date": time.strftime("%Y-%m-%d"),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40, help="timed batches per run (after 3 warm-up)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each variant")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow threads")
    parser.add_argument("--quick", action="store_true", help="6 batches, one run each (a smoke test)")
    parser.add_argument("--output", type=Path, default=WORK / "result.json", help="JSON results")
    args = parser.parse_args(argv)
    batches, repeats = (6, 1) if args.quick else (args.batches, args.repeats)
    result = bench_train_throughput(batches, repeats, args.threads, plain_settings=not args.quick)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    m = result["median_tiles_per_s"]
    c = result["median_tiles_per_cpu_s"]
    print(
        f"train step {m['train_step']} tiles/s ({c['train_step']} per CPU s), plain Keras fit "
        f"{m['plain_fit']} tiles/s ({c['plain_fit']} per CPU s): {result['train_step_over_plain_fit']}x "
        f"({result['train_step_over_plain_fit_per_cpu_s']}x per CPU s)"
    )
    return result


if __name__ == "__main__":
    main()
