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
- Memory bandwidth: ``threads`` threads copying a 256 MiB float32 array (bytes read + written).
- Roofline (:func:`roofline`): every layer of the network at the prediction window (1024 px) with its
  FLOPs and the bytes it must move at least (inputs, output, weights; batch norm and ReLU fused into
  the convolution as ONNX Runtime runs them), its arithmetic intensity against the ridge point
  (peak / bandwidth), and the least time of the whole network at that peak and bandwidth: the rate no
  implementation can beat on this machine.
"""

from __future__ import annotations

import argparse
import itertools
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
    ``sizes`` (square n x n products) of the best of ``repeats`` timed products; also by CPU time
    (FLOPs per CPU second of all threads x ``threads``: the rate of an otherwise idle machine, which
    other jobs on a shared one disturb less than the wall-clock rate)."""
    from cinderseg.nn.runtime import configure_threads

    configure_threads(threads)
    import resource

    import tensorflow as tf

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    rates, cpu_rates = {}, {}
    for n in sizes:
        a = tf.random.normal((n, n), dtype=tf.float32)
        b = tf.random.normal((n, n), dtype=tf.float32)
        tf.linalg.matmul(a, b).numpy()  # warm-up
        best = best_cpu = math.inf
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), cpu()
            tf.linalg.matmul(a, b).numpy()
            best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, cpu() - c0)
        rates[n] = 2 * n**3 / best / 1e9
        cpu_rates[n] = 2 * n**3 / best_cpu / 1e9 * threads
    return {
        "threads": threads,
        "gflops_by_size": {str(n): round(r, 1) for n, r in rates.items()},
        "peak_gflops": round(max(rates.values()), 1),
        "peak_gflops_cpu_time": round(max(cpu_rates.values()), 1),
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


def memory_bandwidth_gbs(threads: int, mib: int = 256, repeats: int = 5) -> float:
    """Measured memory bandwidth, GB/s: ``threads`` threads each copying its share of a ``mib`` MiB
    float32 array into another (numpy releases Python's lock), bytes read + written over the best of
    ``repeats`` copies."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    n = mib * 2**20 // 4
    src, dst = np.ones(n, np.float32), np.zeros(n, np.float32)
    bounds = np.linspace(0, n, threads + 1).astype(int)
    parts = list(itertools.pairwise(bounds))
    best = math.inf
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats + 1):  # the first copy touches the pages
            t0 = time.perf_counter()
            list(pool.map(lambda ab: np.copyto(dst[ab[0] : ab[1]], src[ab[0] : ab[1]]), parts))
            best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9


FUSED = ("BatchNormalization", "Activation", "ReLU", "Dropout")
"""Layers that ONNX Runtime (batch norm folded at export, ReLU fused into the convolution) and oneDNN
run inside the preceding convolution: their FLOPs count, their bytes do not."""


FOLDED = ("Concatenate",)
"""Layers that the ONNX export folds into the next convolution (each part convolved and summed), whose
inputs that convolution reads."""


def layer_bytes(layer: Any) -> float:
    """Bytes one forward pass (batch 1) of a layer moves at least, float32: its inputs read once, its
    output written once, its weights read once; 0 for layers fused into the previous one or folded
    into the next."""
    if type(layer).__name__ in (*FUSED, *FOLDED, "InputLayer"):
        return 0.0
    inputs = layer.input if isinstance(layer.input, list) else [layer.input]
    elements = sum(math.prod(_shape(t)) for t in inputs) + math.prod(_shape(layer.output))
    weights = sum(math.prod(w.shape) for w in layer.weights)
    return 4.0 * (elements + weights)


def roofline(model: Any, peak_gflops: float, bandwidth_gbs: float) -> dict[str, Any]:
    """The roofline of a Keras model at its input size: per layer FLOPs, bytes (:func:`layer_bytes`),
    arithmetic intensity (FLOP/byte) and the least time at ``peak_gflops`` and ``bandwidth_gbs``
    (max of FLOPs/peak and bytes/bandwidth); the whole network's bound rate (its FLOPs over the sum of
    those times), the ridge point (peak / bandwidth) and the memory-bound layers' share of the bound."""
    import keras

    def walk(m: Any) -> list[Any]:
        found = []
        for layer in m.layers:
            found.extend(walk(layer) if isinstance(layer, keras.Model) else [layer])
        return found

    h, w = _shape(model.inputs[0])[:2]
    rows: list[dict[str, Any]] = []
    total_f, total_t, memory_t = 0.0, 0.0, 0.0
    for layer in walk(model):
        f, b = layer_flops(layer), layer_bytes(layer)
        if rows and type(layer).__name__ in FUSED:  # run inside the previous layer
            rows[-1]["flops"] += f
        elif f or b:
            rows.append({"layer": layer.name, "kind": type(layer).__name__, "flops": f, "bytes": b})
    for row in rows:
        f, b = row.pop("flops"), row.pop("bytes")
        t_compute, t_memory = f / (peak_gflops * 1e9), b / (bandwidth_gbs * 1e9)
        total_f, total_t = total_f + f, total_t + max(t_compute, t_memory)
        memory_t += t_memory if t_memory > t_compute else 0.0
        row.update(
            flops_per_pixel=round(f / (h * w), 1),
            bytes_per_pixel=round(b / (h * w), 1),
            flop_per_byte=round(f / b, 2) if b else None,
            bound="memory" if t_memory > t_compute else "compute",
        )
    return {
        "input_px": [h, w],
        "peak_gflops": peak_gflops,
        "bandwidth_gbs": round(bandwidth_gbs, 1),
        "ridge_flop_per_byte": round(peak_gflops / bandwidth_gbs, 2),
        "bound_gflops": round(total_f / total_t / 1e9, 1),
        "bound_fraction_of_peak": round(total_f / total_t / 1e9 / peak_gflops, 4),
        "memory_bound_share_of_time": round(memory_t / total_t, 4),
        "layers": rows,
    }


def flops_of_model_file(model_path: Path | str, window_px: int = 1024) -> dict[str, Any]:
    """:func:`model_flops` and the profiler's count of a trained model (rebuilt at its card's tile size),
    and the network rebuilt at ``window_px`` (for :func:`roofline`)."""
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
    """Peak matmul rate, memory bandwidth, the model's FLOPs and its roofline at 1024 px windows (the
    default; 256 with ``quick``), run in its own process by the suite."""
    from cinderseg.nn.predict import load_predictor

    sizes = (512, 1024) if quick else (2048, 4096)
    matmul = matmul_peak_gflops(threads, sizes)
    bandwidth = memory_bandwidth_gbs(threads, 64 if quick else 256)
    window = 256 if quick else 1024
    network = load_predictor(model_path, window).model
    return {
        "matmul": matmul,
        "bandwidth_gbs": round(bandwidth, 1),
        "model": flops_of_model_file(model_path),
        "roofline": roofline(network, matmul["peak_gflops"], bandwidth),
    }


def efficiency(facts: dict[str, Any], prediction: dict[str, Any]) -> dict[str, Any]:
    """Combine the peak, bandwidth, FLOPs and roofline (``facts``) with the prediction benchmark's
    result: effective FLOP rate (model FLOPs per pixel x raster pixels per second) of each predictor as
    fractions of the peak and of the roofline bound; also by CPU time (FLOPs over the CPU seconds of
    all threads, x threads) against the matmul's rate by CPU time; our network calls alone; our time
    by phase (main thread; the I/O thread's overlapping phases apart)."""
    peak = facts["matmul"]["peak_gflops"]
    peak_cpu = facts["matmul"].get("peak_gflops_cpu_time") or peak
    threads = facts["matmul"]["threads"]
    bound = facts["roofline"]["bound_gflops"]
    fpp = facts["model"]["flops_per_pixel"]
    width, height = prediction["raster_px"]
    pixels = width * height
    rows = {}
    for r in prediction["rows"]:
        gflops = fpp * pixels / r["seconds"] / 1e9
        per_cpu = fpp * pixels / r["cpu_seconds"] / 1e9 * threads
        network_px = r.get("network_pixels") or (r.get("tiles_predicted") or 0) * 224**2
        rows[r["variant"]] = {
            "seconds": r["seconds"],
            "effective_gflops": round(gflops, 2),
            "fraction_of_peak": round(gflops / peak, 4),
            "fraction_of_roofline_bound": round(gflops / bound, 4),
            "cpu_time_gflops": round(per_cpu, 2),
            "cpu_time_fraction_of_cpu_time_peak": round(per_cpu / peak_cpu, 4),
            "network_pixels_per_raster_pixel": round(network_px / pixels, 3),
        }
    ours = next(r for r in prediction["rows"] if r["variant"] == "ours")
    phases = {k: v for k, v in ours["phases_seconds"].items() if not k.startswith("I/O thread")}
    io_phases = {k: v for k, v in ours["phases_seconds"].items() if k.startswith("I/O thread")}
    network_s = phases["network"]
    network_gflops = fpp * ours["network_pixels"] / network_s / 1e9
    return {
        "peak_matmul_gflops": peak,
        "peak_matmul_gflops_cpu_time": peak_cpu,
        "bandwidth_gbs": facts["bandwidth_gbs"],
        "roofline_bound_gflops": bound,
        "roofline_bound_fraction_of_peak": facts["roofline"]["bound_fraction_of_peak"],
        "roofline_memory_bound_share": facts["roofline"]["memory_bound_share_of_time"],
        "flops_per_pixel": round(fpp, 1),
        "profiler_flops_per_pixel": facts["model"]["profiler_flops_per_pixel"],
        "matmul_share_of_flops": facts["model"]["matmul_share"],
        "predictors": rows,
        "ours_runtime": ours.get("runtime"),
        "ours_network_only_gflops": round(network_gflops, 2),
        "ours_network_only_fraction_of_peak": round(network_gflops / peak, 4),
        "ours_phases_seconds": phases,
        "ours_phases_share": {k: round(v / ours["seconds"], 4) for k, v in phases.items()},
        "ours_io_thread_seconds": io_phases,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a trained .keras model with its card")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    result = compute_facts(args.model, args.threads, args.quick)
    print(json.dumps({k: v for k, v in result.items() if k != "roofline"}, indent=2))
    r = result["roofline"]
    print(
        f"roofline at {r['input_px'][0]} px: peak {r['peak_gflops']} GFLOP/s, bandwidth {r['bandwidth_gbs']}"
        f" GB/s, ridge {r['ridge_flop_per_byte']} FLOP/byte; bound {r['bound_gflops']} GFLOP/s"
        f" ({r['bound_fraction_of_peak']:.0%} of peak), memory-bound layers"
        f" {r['memory_bound_share_of_time']:.0%} of the bound's time"
    )
    print(f"{'layer':<22}{'kind':<18}{'FLOP/px':>10}{'byte/px':>10}{'FLOP/byte':>11}  bound")
    for row in r["layers"]:
        fb = f"{row['flop_per_byte']:.1f}" if row["flop_per_byte"] is not None else "-"
        print(
            f"{row['layer']:<22}{row['kind']:<18}{row['flops_per_pixel']:>10.0f}"
            f"{row['bytes_per_pixel']:>10.1f}{fb:>11}  {row['bound']}"
        )
    return result


if __name__ == "__main__":
    main()
