"""The network in ONNX: exported beside the Keras model, and run by ONNX Runtime without TensorFlow.

Why. Importing TensorFlow costs about 6 s and 660 MiB of resident memory before the first window
(measured: ``import tensorflow``, 2 cores); ONNX Runtime imports in 0.2 s and 5 MiB, loads a model
in 0.1 s instead of rebuilding it in Keras (4 s), and on the U-Net's 3 x 3 convolutions runs about
as fast as TensorFlow's oneDNN kernels (within 15 %, bench/README.md S2 and S3) in a third of the
memory. So the predict step (and ``cinderseg predict``) runs the ONNX copy of a model when there
is one, and then never imports TensorFlow.

Export (:func:`export_onnx`; the train rule and ``make pretrained`` call it): the trained ``.keras``
model, made to take windows of any size where it can (a cinderseg U-Net without size-dependent
padding layers, :func:`cinderseg.nn.model.reshape_model`, or a model that already does), is
converted by tf2onnx through Keras' own ``model.export(format="onnx")`` (batch norm folded into the
convolutions by the converter). Its input keeps the name ``features`` with dimensions
``batch, height, width, channels``; its metadata record the SHA-256 of the ``.keras`` file it came
from (``cinderseg_keras_sha256``), whether it takes any window size (``cinderseg_any_size``) and the
fixed input size otherwise. Written atomically as ``model.onnx`` beside ``model.keras``.

Prediction (:class:`OnnxPredictor`, :func:`load_onnx_predictor`): the ``.onnx`` beside a ``.keras``
model is used only if it was exported from that very file (same SHA-256; a retrained or replaced
``.keras`` makes it stale) and takes the window size asked for; otherwise prediction falls back to
Keras, saying why in one log line. ONNX Runtime runs on ``threads`` intra-op threads that sleep
rather than spin when idle (spinning costs 10 % on a shared 2-core machine). Probabilities equal
Keras' within 1e-5 (float32 both; tests/test_predict.py checks 1e-4).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cinderseg.core.errors import InputError
from cinderseg.core.raster import atomic_write, file_digest
from cinderseg.nn.calibrate import apply_temperature

if TYPE_CHECKING:
    import keras
    import onnxruntime

log = logging.getLogger("cinderseg")

INPUT_NAME = "features"
DIMENSIONS = ("batch", "height", "width")
META_SHA256 = "cinderseg_keras_sha256"
META_ANY_SIZE = "cinderseg_any_size"
META_INPUT = "cinderseg_input_shape"
SIZE_MULTIPLE = 32
"""Window sides an any-size U-Net takes: multiples of its total downsampling (2^5)."""


def onnx_path(model_path: str | os.PathLike[str]) -> Path:
    """The ONNX file beside a ``.keras`` model (same folder and stem)."""
    return Path(model_path).with_suffix(".onnx")


# --------------------------------------------------------------------------- export


def _exportable(model: keras.Model, has_card: bool) -> tuple[keras.Model, bool]:
    """The network to export and whether it takes any window size: the model itself if its input has
    no fixed size; a copy taking any size for a cinderseg U-Net (with a card) without size-dependent
    padding or cropping layers; else the model at its own size."""
    import keras

    from cinderseg.nn.model import reshape_model

    height, width = tuple(model.inputs[0].shape)[1:3]
    if height is None and width is None:
        return model, True
    fixed_layers = (keras.layers.ZeroPadding2D, keras.layers.Cropping2D)
    if has_card and not any(isinstance(layer, fixed_layers) for layer in _all_layers(model)):
        try:
            return reshape_model(model, None, None), True
        except ValueError as err:
            log.info("ONNX export: %s keeps its %d px input (%s)", model.name, height, err)
    return model, False


def _all_layers(model: Any) -> list[Any]:
    found = []
    for layer in model.layers:
        found.append(layer)
        if hasattr(layer, "layers"):
            found.extend(_all_layers(layer))
    return found


def export_onnx(
    model_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    *,
    probe_px: int | None = None,
) -> Path:
    """Export a trained ``.keras`` model to ONNX (default: ``model.onnx`` beside it); returns the path.

    See the module doc. ``probe_px``: the window side of the one call that traces the network (default:
    the card's tile size, else 224 px; any multiple of 32 the encoder takes). InputError naming the
    model if it cannot be converted. Needs TensorFlow, Keras, tf2onnx and onnx.
    """
    import onnx
    import tensorflow as tf

    from cinderseg.core.modelcard import read_model_card
    from cinderseg.nn.model import load_model, model_io
    from cinderseg.nn.runtime import filtered_stderr

    path = Path(model_path)
    out = Path(out_path) if out_path is not None else onnx_path(path)
    model = load_model(path, compile=False)
    height, width, channels = model_io(model, str(path))
    card = read_model_card(path, required=False)
    net, any_size = _exportable(model, card is not None)
    probe = int(probe_px or (card or {}).get("tile_size") or 224)
    shape = (None, None) if any_size else (height, width)
    net(np.zeros((1, shape[0] or probe, shape[1] or probe, channels), np.float32), training=False)
    spec = tf.TensorSpec((None, *shape, channels), tf.float32, name=INPUT_NAME)
    with atomic_write(out) as tmp:
        try:
            _quiet_tf2onnx()
            with warnings.catch_warnings(), filtered_stderr():  # Grappler's INFO lines dropped
                warnings.simplefilter("ignore", FutureWarning)  # Keras' numpy-2 patch probes np.object
                net.export(str(tmp), format="onnx", verbose=False, input_signature=[spec])
        except Exception as err:
            reason = " ".join(str(err).split())[:200]
            raise InputError(f"{path}: cannot export to ONNX ({type(err).__name__}: {reason})") from err
        probe_x = np.random.default_rng(0).random((1, shape[0] or probe, shape[1] or probe, channels))
        proto, changes = simplify_graph(onnx.load(str(tmp)), probe_x.astype(np.float32), any_size)
        for value in (*proto.graph.input, *proto.graph.output):
            for dim, name in zip(value.type.tensor_type.shape.dim, DIMENSIONS, strict=False):
                if any_size or name == "batch":
                    dim.dim_param = name
        meta = {
            META_SHA256: file_digest(path),
            META_ANY_SIZE: "1" if any_size else "0",
            META_INPUT: ",".join(str(d) if d is not None else "?" for d in (height, width, channels)),
        }
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = f"cinderseg ({proto.producer_name} {proto.producer_version})"
        onnx.save(proto, str(tmp))
    log.info("exported %s -> %s (%s window sizes, %s)", path, out, "any" if any_size else "fixed", changes)
    return out


# --------------------------------------------------------------------------- graph simplification


def _attribute(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _prune(graph: Any) -> None:
    """Drop nodes whose outputs nothing uses, and unused initializers."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        keep = [n for n in graph.node if any(o in used for o in n.output)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input}
    initializers = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def _exact_upsampling(node: Any) -> bool:
    """A ConvTranspose whose kernel equals its stride, without padding or dilation: its output is
    exactly stride x its input, as Keras' Conv2DTranspose(padding='same') asks."""
    kernel, strides = _attribute(node, "kernel_shape"), _attribute(node, "strides")
    return (
        node.op_type == "ConvTranspose"
        and kernel is not None
        and list(kernel) == list(strides or [])
        and not any(_attribute(node, "pads", []))
        and not any(_attribute(node, "output_padding", []))
        and all(d == 1 for d in _attribute(node, "dilations", [1]))
        and _attribute(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
    )


def _bypass_upsampling_crops(graph: Any) -> int:
    """Remove the Slice and Pad nodes tf2onnx puts after an exact upsampling (:func:`_exact_upsampling`)
    to reach TensorFlow's output size with any input size: they copy a tensor to its own size.
    Returns how many were removed."""
    producer = {o: n for n in graph.node for o in n.output}
    count = 0
    for node in list(graph.node):
        if node.op_type not in ("Slice", "Pad") or node.input[0] not in producer:
            continue
        source = producer[node.input[0]]
        while source.op_type in ("Slice", "Pad") and source.input[0] in producer:
            source = producer[source.input[0]]
        if _exact_upsampling(source):
            for other in graph.node:
                for k, name in enumerate(other.input):
                    if name == node.output[0]:
                        other.input[k] = node.input[0]
            count += 1
    _prune(graph)
    return count


def _split_concatenations(graph: Any) -> int:
    """Replace each channel concatenation feeding only a convolution by one convolution per part (the
    kernel split along its input channels) summed: the same result without the concatenated copy,
    and ONNX Runtime fuses the sum into the blocked convolution. Returns how many were split."""
    import collections

    from onnx import helper, numpy_helper

    initializers = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers = collections.defaultdict(list)
    for n in graph.node:
        for name in n.input:
            consumers[name].append(n)

    def channels(tensor: str) -> int | None:
        node = producer.get(tensor)
        while node is not None and node.op_type in ("Relu", "Identity", "Sigmoid", "Clip"):
            node = producer.get(node.input[0])
        if node is None or len(node.input) < 2 or node.input[1] not in initializers:
            return None
        dims = initializers[node.input[1]].dims
        if node.op_type == "Conv":
            return int(dims[0])
        return int(dims[1]) * _attribute(node, "group", 1) if node.op_type == "ConvTranspose" else None

    nodes, count = [], 0
    for node in graph.node:
        users = consumers[node.output[0]] if node.op_type == "Concat" else []
        conv = users[0] if len(users) == 1 and users[0].op_type == "Conv" else None
        sizes = [channels(name) for name in node.input] if conv is not None else []
        if (
            conv is None
            or _attribute(node, "axis") != 1
            or conv.input[1] not in initializers
            or _attribute(conv, "group", 1) != 1
            or None in sizes
            or sum(sizes) != initializers[conv.input[1]].dims[1]  # type: ignore[arg-type]
        ):
            nodes.append(node)
            continue
        kernel = numpy_helper.to_array(initializers[conv.input[1]])
        parts = np.split(kernel, np.cumsum(sizes)[:-1], axis=1)
        attributes = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        total = None
        for k, (name, part) in enumerate(zip(node.input, parts, strict=True)):
            weight = f"{conv.input[1]}__part{k}"
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(part), weight))
            out = f"{conv.output[0]}__part{k}"
            inputs = [name, weight, *(conv.input[2:3] if k == 0 else [])]
            nodes.append(helper.make_node("Conv", inputs, [out], name=f"{conv.name}__part{k}", **attributes))
            if total is not None:
                summed = conv.output[0] if k == len(parts) - 1 else f"{conv.output[0]}__sum{k}"
                nodes.append(helper.make_node("Add", [total, out], [summed], name=f"{conv.name}__add{k}"))
                out = summed
            total = out
        conv.output[0] += "__replaced"  # the old convolution is pruned
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    _prune(graph)
    return count


def simplify_graph(proto: Any, probe: np.ndarray, any_size: bool) -> tuple[Any, dict[str, int]]:
    """The converted graph without tf2onnx's no-op crops after upsamplings and with concatenations
    folded into the convolutions that follow them (measured on the default unet_small at 1024 px:
    peak memory 515 -> 450 MiB, 8 % less CPU time), checked on ``probe`` (and a wider window where
    it takes any size): kept only where ONNX Runtime gives the same output within 1e-5, else the
    graph as converted. Returns the graph and what was changed."""
    import onnx

    simplified = onnx.ModelProto()
    simplified.CopyFrom(proto)
    changes = {
        "crops_removed": _bypass_upsampling_crops(simplified.graph),
        "concatenations_split": _split_concatenations(simplified.graph),
    }
    if not any(changes.values()):
        return proto, changes
    probes = [probe]
    if any_size:
        probes.append(np.concatenate([probe, probe[:, :, :SIZE_MULTIPLE]], axis=2))
    try:
        onnx.checker.check_model(simplified)
        before, after = (_session(p.SerializeToString()) for p in (proto, simplified))
        for x in probes:
            a, b = (s.run(None, {INPUT_NAME: x})[0] for s in (before, after))
            if a.shape != b.shape or not np.allclose(a, b, rtol=0, atol=1e-5):
                raise ValueError(
                    f"outputs differ by {np.abs(a - b).max() if a.shape == b.shape else a.shape}"
                )
    except Exception as err:
        log.warning("ONNX export: graph left as converted (simplified graph failed its check: %s)", err)
        return proto, {k: 0 for k in changes}
    return simplified, changes


def _session(model: bytes) -> onnxruntime.InferenceSession:
    import onnxruntime as ort

    return ort.InferenceSession(model, session_options(1), providers=["CPUExecutionProvider"])


def _quiet_tf2onnx() -> None:
    """tf2onnx logs every conversion step at INFO on the root logger's handlers: keep its warnings."""
    for name in ("tf2onnx", "tensorflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


# --------------------------------------------------------------------------- prediction


@dataclass(frozen=True)
class OnnxPredictor:
    """An ONNX Runtime session of a cinderseg network, ready for windows of ``window_px`` (and the
    smaller edge windows where it takes any size); the same interface as
    :class:`cinderseg.nn.predict.Predictor`."""

    session: onnxruntime.InferenceSession
    window_px: int
    n_channels: int
    channels: tuple[str, ...] | None
    tile_size: int | None
    path: Path
    temperature: float
    any_size: bool
    runtime: str = "onnxruntime"

    @property
    def name(self) -> str:
        """How the model is named in messages and tags (the ``.keras`` file it was exported from)."""
        return str(self.path)

    @property
    def reshapable(self) -> bool:
        """Whether windows of other shapes than ``window_px`` squared may be predicted."""
        return self.any_size

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The output's (rows, columns) for a window of that size; ValueError if it takes no such window."""
        if self.any_size and height % SIZE_MULTIPLE == 0 and width % SIZE_MULTIPLE == 0:
            return height, width
        if (height, width) == (self.window_px, self.window_px):
            return height, width
        raise ValueError(f"the ONNX network takes no {height} x {width} px windows")

    def run(self, x: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (B, h, w) float32 of windows ``x`` (B, h, w, C) float32."""
        y = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]
        return apply_temperature(np.asarray(y)[..., 0], self.temperature)


def session_options(threads: int) -> onnxruntime.SessionOptions:
    """ONNX Runtime options: ``threads`` intra-op threads that do not spin, all graph optimisations
    (blocked NCHWc convolutions; 30 % more CPU time without them), and ONNX Runtime's memory arena
    without its memory pattern (bench S4).

    The arena keeps the memory of one window's activations from call to call, so that no call maps
    and faults in fresh pages; the memory pattern would plan each window shape's activations into
    one block, larger than what is live at once. Measured with the shipped model, 1024 px windows, on
    a 3200² px raster: no arena 6.4 s / 462 MiB, arena with the pattern 4.9 s / 783 MiB, arena
    without it 5.0 s / 539 MiB."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # NCHWc: 30 % faster
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = False
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    return options


def onnx_session(
    model_path: str | os.PathLike[str], window_px: int, *, n_channels: int, threads: int
) -> tuple[onnxruntime.InferenceSession | None, str]:
    """An ONNX Runtime session of the ONNX file beside a ``.keras`` model, or None where there is none
    fit for ``window_px`` windows of ``n_channels`` channels exported from that very file; and why
    (for the log)."""
    import onnxruntime as ort

    path = onnx_path(model_path)
    if not path.is_file():
        return None, f"no {path.name} beside it"
    try:
        session = ort.InferenceSession(
            str(path), session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # a broken file: Keras is used instead
        return None, f"{path.name} is not readable by ONNX Runtime ({type(err).__name__})"
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if META_SHA256 not in meta:
        return None, f"{path.name} is not a cinderseg export"
    if meta[META_SHA256] != file_digest(model_path):
        return None, f"{path.name} was exported from another {Path(model_path).name} (stale)"
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or inputs[0].shape[-1] != n_channels:
        return None, f"{path.name} does not take one '{INPUT_NAME}' input of {n_channels} channel(s)"
    if meta.get(META_ANY_SIZE) != "1":
        size = meta.get(META_INPUT, "?").split(",")[:2]
        if size != [str(window_px)] * 2:
            return None, f"{path.name} takes only {' x '.join(size)} px windows, not {window_px}"
    return session, f"{path.name} beside it"


def onnx_predictor(
    session: onnxruntime.InferenceSession,
    model_path: str | os.PathLike[str],
    window_px: int,
    *,
    n_channels: int,
    channels: tuple[str, ...] | None,
    tile_size: int | None,
    temperature: float,
) -> OnnxPredictor:
    """The :class:`OnnxPredictor` of a session from :func:`onnx_session`."""
    any_size = session.get_modelmeta().custom_metadata_map.get(META_ANY_SIZE) == "1"
    return OnnxPredictor(
        session, int(window_px), n_channels, channels, tile_size, Path(model_path), temperature, any_size
    )


def runtime_line(threads: int) -> str:
    """The log line naming where ONNX Runtime runs."""
    import onnxruntime as ort

    return f"ONNX Runtime {ort.__version__}: CPU, {threads} thread{'s' if threads != 1 else ''}"


def main(argv: list[str] | None = None) -> int:
    """``python -m cinderseg.nn.onnx MODEL.keras [...]``: export each model to ONNX beside it."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cinderseg.nn.onnx", description=main.__doc__)
    parser.add_argument("models", nargs="+", help=".keras models (model_card.json beside them)")
    args = parser.parse_args(argv)
    for model in args.models:
        print(export_onnx(model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
