"""Compute efficiency of inference: the machine's float32 matmul peak against the FLOP rate prediction
achieves, and where the rest of the time goes.

``python -m bench.compute [--model PATH] [--threads 2] [--quick]`` prints the peak and the model's
FLOPs per pixel (the suite, ``python -m bench``, combines them with the prediction benchmark's
phases).

- Peak: ``tf.linalg.matmul`` of square float32 matrices (2048 and 4096 px; 512 and 1024 with
  ``--quick``) with the same number of TensorFlow threads as the predictor, 2 n^3 FLOPs a product,
  the best of a few repeats after one warm-up.
- Model FLOPs per pixel: counted from the layers' input and output shapes at the model's tile size
  (:func:`layer_flops`: a multiply-add is 2 FLOPs; convolutions, transposed convolutions, dense
  layers, bias, batch normalisation at inference (2 per element), activations (1), pooling), divided
  by the tile's pixels; cross-checked with TensorFlow's graph profiler on the frozen inference graph.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def matmul_peak_gflops(
    threads: int, sizes: tuple[int, ...] = (2048, 4096), repeats: int = 3
) -> dict[str, Any]:
    """Measured float32 matmul rate (GFLOP/s) of TensorFlow with ``threads`` threads: the best over
    ``sizes`` (square n x n products) of the best of ``repeats`` timed products."""
    from cinderseg.nn.runtime import configure_threads

    configure_threads(threads)
    import tensorflow as tf

    rates = {}
    for n in sizes:
        a = tf.random.normal((n, n), dtype=tf.float32)
        b = tf.random.normal((n, n), dtype=tf.float32)
        tf.linalg.matmul(a, b).numpy()  # warm-up
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            tf.linalg.matmul(a, b).numpy()
            best = min(best, time.perf_counter() - t0)
        rates[n] = 2 * n**3 / best / 1e9
    return {
        "threads": threads,
        "gflops_by_size": {str(n): round(r, 1) for n, r in rates.items()},
        "peak_gflops": round(max(rates.values()), 1),
    }


def _shape(tensor: Any) -> tuple[int, ...]:
    return tuple(int(d) if d is not None else 1 for d in tensor.shape[1:])


def layer_flops(layer: Any) -> float:
    """FLOPs of one layer for one input (batch 1) from its input/output shapes (0 for layers that
    only move data: concatenation, padding, cropping, dropout at inference)."""
    import keras

    layers = keras.layers
    out = _shape(layer.output)
    n_out = math.prod(out)
    if isinstance(layer, (layers.Conv2DTranspose,)):
        kh, kw = layer.kernel_size
        cin = _shape(layer.input)[-1]
        h_in, w_in = _shape(layer.input)[:2]
        flops = 2 * kh * kw * cin * layer.filters * h_in * w_in
        return flops + (n_out if layer.use_bias else 0)
    if isinstance(layer, layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        return 2 * kh * kw * n_out + (n_out if layer.use_bias else 0)
    if isinstance(layer, layers.SeparableConv2D):
        kh, kw = layer.kernel_size
        cin = _shape(layer.input)[-1]
        h, w = out[:2]
        depthwise = 2 * kh * kw * cin * layer.depth_multiplier * h * w
        return depthwise + 2 * cin * layer.depth_multiplier * n_out + (n_out if layer.use_bias else 0)
    if isinstance(layer, layers.Conv2D):
        kh, kw = layer.kernel_size
        cin = _shape(layer.input)[-1] // layer.groups
        flops = 2 * kh * kw * cin * n_out
        act = 0 if layer.activation in (None, keras.activations.linear) else n_out
        return flops + (n_out if layer.use_bias else 0) + act
    if isinstance(layer, layers.Dense):
        cin = _shape(layer.input)[-1]
        return 2 * cin * n_out + (n_out if layer.use_bias else 0)
    if isinstance(layer, layers.BatchNormalization):
        return 2 * n_out
    if isinstance(layer, (layers.Activation, layers.ReLU)):
        return n_out
    if isinstance(layer, (layers.MaxPooling2D, layers.AveragePooling2D)):
        kh, kw = layer.pool_size
        return kh * kw * n_out
    if isinstance(layer, (layers.Add, layers.Multiply)):
        return (len(layer.input) - 1) * n_out
    return 0.0


def model_flops(model: Any) -> dict[str, Any]:
    """FLOPs of one forward pass (batch 1) of a Keras model at its input size, nested models included:
    total, the share of convolutions/dense layers (the matmul-like work), and per input pixel."""
    import keras

    def walk(m: Any) -> list[Any]:
        found = []
        for layer in m.layers:
            found.extend(walk(layer) if isinstance(layer, keras.Model) else [layer])
        return found

    per_layer = [(layer, layer_flops(layer)) for layer in walk(model)]
    total = sum(f for _, f in per_layer)
    conv = (keras.layers.Conv2D, keras.layers.Conv2DTranspose, keras.layers.Dense)
    matmul = sum(f for layer, f in per_layer if isinstance(layer, conv))
    h, w = _shape(model.inputs[0])[:2]
    return {
        "input_px": [h, w],
        "flops": total,
        "matmul_share": round(matmul / total, 4) if total else None,
        "flops_per_pixel": total / (h * w),
    }


def profiler_flops(model: Any) -> float | None:
    """Float operations of the model's frozen inference graph (batch 1) by TensorFlow's profiler,
    or None where that internal API is unavailable."""
    try:
        import tensorflow as tf
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
        from tensorflow.python.profiler.model_analyzer import profile
        from tensorflow.python.profiler.option_builder import ProfileOptionBuilder
    except ImportError:
        return None
    spec = tf.TensorSpec([1, *model.inputs[0].shape[1:]], tf.float32)
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    graph = convert_variables_to_constants_v2(concrete).graph
    options = ProfileOptionBuilder(ProfileOptionBuilder.float_operation()).with_empty_output().build()
    try:
        return float(profile(graph, options=options).total_float_ops)
    except Exception:  # internal API: a failure costs the cross-check only
        return None


def flops_of_model_file(model_path: Path | str) -> dict[str, Any]:
    """:func:`model_flops` and the profiler's count of a trained model (rebuilt at its card's tile size)."""
    import logging

    from cinderseg.core.modelcard import read_model_card
    from cinderseg.nn.predict import load_predictor

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    card = read_model_card(model_path, required=False) or {}
    tile = int(card.get("tile_size") or 224)
    predictor = load_predictor(model_path, tile)
    counted = model_flops(predictor.model)
    profiled = profiler_flops(predictor.model)
    counted["profiler_flops_per_pixel"] = profiled / (tile * tile) if profiled else None
    counted["encoder"] = card.get("encoder")
    counted["params"] = int(predictor.model.count_params())
    return counted


def compute_facts(model_path: Path | str, threads: int, quick: bool = False) -> dict[str, Any]:
    """Peak matmul rate and the model's FLOPs (run in its own process by the suite)."""
    sizes = (512, 1024) if quick else (2048, 4096)
    return {"matmul": matmul_peak_gflops(threads, sizes), "model": flops_of_model_file(model_path)}


def efficiency(facts: dict[str, Any], prediction: dict[str, Any]) -> dict[str, Any]:
    """Combine the peak and FLOPs (``facts``) with the prediction benchmark's result: effective FLOP
    rate (model FLOPs per pixel x raster pixels per second) of each predictor and of our network
    calls alone, as fractions of the peak; our time by phase."""
    peak = facts["matmul"]["peak_gflops"]
    fpp = facts["model"]["flops_per_pixel"]
    width, height = prediction["raster_px"]
    pixels = width * height
    rows = {}
    for r in prediction["rows"]:
        gflops = fpp * pixels / r["seconds"] / 1e9
        network_px = r.get("network_pixels") or (r.get("tiles_predicted") or 0) * 224**2
        rows[r["variant"]] = {
            "seconds": r["seconds"],
            "effective_gflops": round(gflops, 2),
            "fraction_of_peak": round(gflops / peak, 4),
            "network_pixels_per_raster_pixel": round(network_px / pixels, 3),
        }
    ours = next(r for r in prediction["rows"] if r["variant"] == "ours")
    phases = ours["phases_seconds"]
    network_s = phases["network"]
    network_gflops = fpp * ours["network_pixels"] / network_s / 1e9
    return {
        "peak_matmul_gflops": peak,
        "flops_per_pixel": round(fpp, 1),
        "profiler_flops_per_pixel": facts["model"]["profiler_flops_per_pixel"],
        "matmul_share_of_flops": facts["model"]["matmul_share"],
        "predictors": rows,
        "ours_network_only_gflops": round(network_gflops, 2),
        "ours_network_only_fraction_of_peak": round(network_gflops / peak, 4),
        "ours_phases_seconds": phases,
        "ours_phases_share": {k: round(v / ours["seconds"], 4) for k, v in phases.items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a trained .keras model with its card")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    result = compute_facts(args.model, args.threads, args.quick)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
