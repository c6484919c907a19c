"""Parameter counts and rough CPU throughput (tiles/s) of the U-Net encoders.

``python -m bench.model_speed [--tile 224] [--batch 8] [--steps 3] [--threads 2] [--encoders ...]``
times ``train_on_batch`` (Adam, Tversky loss) and ``predict_on_batch`` on random features after one
warm-up batch, for each encoder frozen (pretrained encoders) and fully trainable. Rough numbers:
a few batches only, random inputs, no tf.data pipeline. Writes JSON to ``--out`` if given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def measure(
    encoder: str,
    mode: str,
    *,
    tile: int,
    batch: int,
    steps: int,
    channels: int,
    base_filters: int = 16,
    jit: bool | str = "auto",
    seed: int = 0,
) -> dict[str, Any]:
    """Time training and inference batches of one configuration; returns a result row."""
    import keras
    import numpy as np

    from cinderseg.nn.losses import make_metrics, tversky_loss
    from cinderseg.nn.model import build_unet, count_params, set_encoder_trainable
    from cinderseg.nn.settings import ModelSettings

    keras.utils.set_random_seed(seed)
    weights = "pretrained" if encoder == "hed_vgg16" else "none"
    settings = ModelSettings(encoder=encoder, encoder_weights=weights, base_filters=base_filters)
    model = build_unet(settings, tile_size=tile, n_channels=channels)
    set_encoder_trainable(model, mode)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=tversky_loss(),
        metrics=make_metrics(),
        jit_compile=jit,
    )
    rng = np.random.default_rng(seed)
    x = rng.random((batch, tile, tile, channels), dtype=np.float32)
    y = (rng.random((batch, tile, tile, 1)) > 0.9).astype(np.float32)
    t0 = time.perf_counter()
    model.train_on_batch(x, y)  # warm-up: tracing
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    train_s = time.perf_counter() - t0
    model.predict_on_batch(x)
    t0 = time.perf_counter()
    for _ in range(steps):
        model.predict_on_batch(x)
    infer_s = time.perf_counter() - t0
    params = count_params(model)
    return {
        "encoder": encoder,
        "mode": mode,
        "base_filters": base_filters if encoder == "unet_small" else None,
        "jit_compile": jit,
        "first_batch_s": round(warmup_s, 1),
        "tile": tile,
        "batch": batch,
        "params_total": params["total"],
        "params_trainable": params["trainable"],
        "train_tiles_per_s": round(steps * batch / train_s, 2),
        "infer_tiles_per_s": round(steps * batch / infer_s, 2),
    }


def bench_training(
    encoders: list[str], *, threads: int, tile: int = 224, batch: int = 8, steps: int = 2, channels: int = 3
) -> dict[str, Any]:
    """Training (and inference) tiles/s of each encoder at ``tile`` px: pretrained encoders frozen and
    fully fine-tuned, unet_small (no pretrained encoder) fully trained, with ``threads`` TensorFlow
    threads as the train step sets them (:func:`cinderseg.nn.runtime.configure_threads`)."""
    from cinderseg.nn.runtime import configure_threads

    configure_threads(threads)
    rows = []
    for encoder in encoders:
        for mode in ["all"] if encoder == "unet_small" else ["frozen", "all"]:
            rows.append(measure(encoder, mode, tile=tile, batch=batch, steps=steps, channels=channels))
    return {
        "benchmark": "training",
        "threads": threads,
        "tile": tile,
        "batch": batch,
        "steps": steps,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--encoders", nargs="+", default=["hed_vgg16", "unet_small"])
    parser.add_argument("--base-filters", type=int, nargs="+", default=[16], help="unet_small widths")
    parser.add_argument("--modes", nargs="+", default=["frozen", "all"], help="pretrained encoders")
    parser.add_argument(
        "--jit", choices=["auto", "on", "off"], default="auto", help="Keras jit_compile (XLA)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    rows = []
    jit = {"auto": "auto", "on": True, "off": False}[args.jit]
    for encoder in args.encoders:
        variants = (
            [("all", b) for b in args.base_filters]
            if encoder == "unet_small"
            else [(m, 16) for m in args.modes]
        )
        for mode, base in variants:
            row = measure(
                encoder,
                mode,
                tile=args.tile,
                batch=args.batch,
                steps=args.steps,
                channels=args.channels,
                base_filters=base,
                jit=jit,
            )
            rows.append(row)
            label = f"{encoder}" + (f" (base {base})" if encoder == "unet_small" else "")
            print(
                f"{label:22s} {mode:6s} {args.tile} px params {row['params_total'] / 1e6:6.2f} M "
                f"(trainable {row['params_trainable'] / 1e6:6.2f} M)  train {row['train_tiles_per_s']:6.2f} "
                f"tiles/s  inference {row['infer_tiles_per_s']:6.2f} tiles/s  first batch "
                f"{row['first_batch_s']} s",
                flush=True,
            )
    if args.out:
        meta = {
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
        }
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    return rows


if __name__ == "__main__":
    main()
