"""The U-Net: a pluggable encoder (:mod:`cinderseg.nn.encoders`) and a generic decoder; freezing and
loading.

Architecture (input ``(tile_size, tile_size, n_channels)`` float32 feature channels, roughly 0..1 or
-1..1; output ``(tile_size, tile_size, 1)`` float32 sigmoid probability of "cone"):

- Pretrained encoders take 3 channels: with ``n_channels == 3`` the features are the R, G, B planes
  as they are; otherwise a learned 1x1 convolution ``channel_adapter`` maps them to 3 (initialised
  to pass the first three channels through), then the encoder's own preprocessing layer.
- Decoder block (one per level, deepest first, ``decoder_filters`` filters): Conv2DTranspose 2x2
  stride 2, the skip centre-padded or centre-cropped to the decoder's exact size (for the odd sizes
  of 'valid' paddings, e.g. InceptionResNetV2), concatenation, (3x3 conv + batch norm + ReLU) x 2,
  dropout. Encoders without a stride-1 feature (the keras.applications ones) get the raw input
  features as the full-resolution skip. A 1x1 sigmoid convolution gives the output.
- unet_small: a plain U-Net from scratch whose decoder mirrors its encoder (``decoder_filters`` is
  not used).
- Every batch-norm layer (decoder, unet_small, and the encoders' own) uses ``batchnorm_momentum``.

Freezing: :func:`set_encoder_trainable` with "frozen" / "all" / "top" (the deepest blocks, a block
being the layers between two consecutive skips). Frozen batch-norm layers run in inference mode
(Keras 3 semantics of ``trainable = False``). Recompile the model after changing trainability.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
from keras import layers

import cinderseg.nn.losses  # noqa: F401  (registers the losses so that compiled models load)
from cinderseg.core.errors import ConfigError, InputError
from cinderseg.core.settings import is_int
from cinderseg.nn.encoders import (
    DOWNSAMPLING,
    ENCODER_NAME,
    ENCODER_SPECS,
    EncoderPreprocess,
    conv_bn_relu,
    pretrained_encoder,
    small_encoder,
)

if TYPE_CHECKING:
    from cinderseg.nn.settings import ModelSettings

TRAINABLE_MODES: tuple[str, ...] = ("frozen", "all", "top")


# --------------------------------------------------------------------------- inputs


def _check_inputs(settings: ModelSettings, tile_size: int, n_channels: int) -> None:
    if not is_int(tile_size) or tile_size < DOWNSAMPLING or tile_size % DOWNSAMPLING:
        raise ConfigError(
            f"tiling.size: {tile_size!r} is not a multiple of {DOWNSAMPLING} "
            "(the U-Net halves the tile 5 times)"
        )
    spec = ENCODER_SPECS.get(settings.encoder)
    if spec is not None and tile_size < spec.min_tile:
        raise ConfigError(
            f"tiling.size: {tile_size} is too small for encoder {settings.encoder} "
            f"(needs at least {spec.min_tile} px)"
        )
    if not is_int(n_channels) or n_channels < 1:
        raise ConfigError(f"features.channels: the model needs at least one channel, got {n_channels!r}")


# --------------------------------------------------------------------------- decoder


def _match_size(x: Any, target: int, name: str) -> Any:
    """Centre-pad with zeros or centre-crop ``x`` (B, h, w, C) to (B, target, target, C)."""
    h, w = x.shape[1], x.shape[2]
    if (h, w) == (target, target):
        return x
    pad = [(max(0, d) // 2, max(0, d) - max(0, d) // 2) for d in (target - h, target - w)]
    crop = [(max(0, -d) // 2, max(0, -d) - max(0, -d) // 2) for d in (target - h, target - w)]
    if any(sum(p) for p in pad):
        x = layers.ZeroPadding2D(tuple(pad), name=f"{name}_pad")(x)
    if any(sum(c) for c in crop):
        x = layers.Cropping2D(tuple(crop), name=f"{name}_crop")(x)
    return x


def _decoder(
    bottleneck: Any, skips: list[Any], filters: list[int], tile_size: int, settings: ModelSettings
) -> Any:
    """Decoder blocks from the bottleneck up; ``skips`` deepest first, the last at full resolution."""
    n = len(skips)
    x = _match_size(bottleneck, tile_size // 2**n, "bottleneck")
    for i, (skip, f) in enumerate(zip(skips, filters, strict=True)):
        prefix = f"dec{n - 1 - i}"
        target = tile_size // 2 ** (n - 1 - i)
        x = layers.Conv2DTranspose(f, 2, strides=2, padding="same", name=f"{prefix}_up")(x)
        skip = _match_size(skip, target, f"{prefix}_skip")
        x = layers.Concatenate(name=f"{prefix}_concat")([x, skip])
        x = conv_bn_relu(x, f, prefix, settings.batchnorm_momentum)
        if settings.dropout > 0:
            x = layers.Dropout(settings.dropout, name=f"{prefix}_dropout")(x)
    return x


def build_unet(settings: ModelSettings, *, tile_size: int, n_channels: int) -> keras.Model:
    """Build the U-Net of ``settings`` for ``tile_size`` x ``tile_size`` tiles of ``n_channels`` features.

    Input float32 ``(tile_size, tile_size, n_channels)`` feature channels; output float32
    ``(tile_size, tile_size, 1)`` sigmoid probabilities. Raises ConfigError for an unknown encoder or
    a tile size that is not a multiple of 32, InputError for a missing or unfitting weights file and
    for ImageNet weights that cannot be downloaded (offline). The model is not compiled.
    """
    _check_inputs(settings, tile_size, n_channels)
    inputs = keras.Input((tile_size, tile_size, n_channels), name="features", dtype="float32")
    if settings.encoder == "unet_small":
        encoder = small_encoder(settings, tile_size, n_channels)
        feats = encoder(inputs)
        f = settings.base_filters
        x = _decoder(feats[-1], feats[-2::-1], [f * 8, f * 4, f * 2, f], tile_size, settings)
    else:
        encoder, full_res = pretrained_encoder(settings, tile_size)
        spec = ENCODER_SPECS[settings.encoder]
        x = inputs
        adapter = None
        if n_channels != 3:
            adapter = layers.Conv2D(3, 1, name="channel_adapter")
            x = adapter(x)
        x = EncoderPreprocess(spec.scale, spec.mean, spec.reverse_channels, name="preprocess")(x)
        feats = encoder(x)
        skips = list(feats[-2::-1])
        if not full_res:
            skips.append(inputs)
        x = _decoder(feats[-1], skips, list(settings.decoder_filters), tile_size, settings)
        if adapter is not None:
            kernel = np.zeros((1, 1, n_channels, 3), dtype="float32")
            for j in range(3):
                kernel[0, 0, j % n_channels, j] = 1.0
            adapter.set_weights([kernel, np.zeros(3, dtype="float32")])
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="probability")(x)
    return keras.Model(inputs, outputs, name=f"unet_{settings.encoder}")


# --------------------------------------------------------------------------- freezing


def _encoder(model: keras.Model) -> keras.Model:
    try:
        encoder = model.get_layer(ENCODER_NAME)
    except ValueError as err:
        raise InputError(
            f"model {model.name}: no '{ENCODER_NAME}' sub-model (not a cinderseg U-Net)"
        ) from err
    return encoder


def encoder_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers of the U-Net's encoder (topological order, input layer excluded)."""
    return [layer for layer in _encoder(model).layers if not isinstance(layer, keras.layers.InputLayer)]


def encoder_blocks(model: keras.Model) -> list[list[keras.layers.Layer]]:
    """The encoder's layers split into blocks that end at each skip output (shallowest first).

    Blocks without weights (e.g. hed_vgg16's final pooling) are merged into the previous block.
    """
    encoder = _encoder(model)
    layer_list = list(encoder.layers)
    index = {id(layer): i for i, layer in enumerate(layer_list)}
    ends = sorted(index[id(t._keras_history.operation)] for t in keras.tree.flatten(encoder.outputs))
    blocks: list[list[keras.layers.Layer]] = []
    start = 0
    for end in ends:
        block = [
            layer for layer in layer_list[start : end + 1] if not isinstance(layer, keras.layers.InputLayer)
        ]
        start = end + 1
        if blocks and not any(layer.weights for layer in block):
            blocks[-1].extend(block)
        elif block:
            blocks.append(block)
    return blocks


def set_encoder_trainable(model: keras.Model, mode: str, top_blocks: int = 2) -> None:
    """Freeze or unfreeze the encoder: ``frozen`` (all frozen), ``all`` (all trainable) or ``top``
    (only the deepest ``top_blocks`` blocks trainable, see :func:`encoder_blocks`).

    The decoder and the channel adapter always stay trainable. Frozen batch-norm layers run in
    inference mode. Compile the model again afterwards.
    """
    if mode not in TRAINABLE_MODES:
        raise ConfigError(f"train.fine_tune: {mode!r} is not one of: {', '.join(TRAINABLE_MODES)}")
    encoder = _encoder(model)
    encoder.trainable = True
    keep: set[int] = set()
    if mode == "all":
        keep = {id(layer) for layer in encoder.layers}
    elif mode == "top":
        if not is_int(top_blocks) or top_blocks < 1:
            raise ConfigError(f"train.fine_tune_blocks: expected an integer >= 1, got {top_blocks!r}")
        keep = {id(layer) for block in encoder_blocks(model)[-top_blocks:] for layer in block}
    for layer in encoder.layers:  # set explicitly: the container's setter does not reach every layer
        layer.trainable = id(layer) in keep


# --------------------------------------------------------------------------- other input sizes


def reshape_model(model: keras.Model, height: int | None, width: int | None) -> keras.Model:
    """A copy of a functional model (nested ones included) taking ``height`` x ``width`` px inputs
    (None: any size).

    The input layers' shapes in the model's config are replaced and the weights copied; fully
    convolutional networks give the same per-pixel results. ValueError if the output does not
    come out as (batch, height, width, 1).
    """
    config = model.get_config()

    def resize(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class_name") == "InputLayer" and "batch_shape" in node.get("config", {}):
                shape = list(node["config"]["batch_shape"])
                node["config"]["batch_shape"] = [shape[0], height, width, *shape[3:]]
            for value in node.values():
                resize(value)
        elif isinstance(node, list):
            for value in node:
                resize(value)

    resize(config)
    reshaped = model.__class__.from_config(config)
    if tuple(reshaped.outputs[0].shape)[1:] != (height, width, 1):
        raise ValueError(f"reshaped to {height} x {width} px, the model gives {reshaped.outputs[0].shape}")
    reshaped.set_weights(model.get_weights())
    return reshaped


def model_io(model: keras.Model, name: str) -> tuple[int | None, int | None, int]:
    """(height, width, channels) of the model's input; InputError unless it maps (B,h,w,C) to (B,h,w,1)."""
    shape_in = tuple(model.inputs[0].shape) if model.inputs else ()
    shape_out = tuple(keras.tree.flatten(model.outputs)[0].shape) if model.outputs else ()
    if len(shape_in) != 4 or shape_in[3] is None or len(shape_out) != 4 or shape_out[3] != 1:
        raise InputError(
            f"model {name}: expected an input (batch, height, width, channels) and one output "
            f"probability (batch, height, width, 1), got {shape_in} -> {shape_out}"
        )
    if shape_in[1:3] != shape_out[1:3]:
        raise InputError(f"model {name}: output size {shape_out[1:3]} is not its input size {shape_in[1:3]}")
    return shape_in[1], shape_in[2], int(shape_in[3])


# --------------------------------------------------------------------------- loading


def load_model(path: str | Path, *, compile: bool = True) -> keras.Model:
    """Load a saved ``.keras`` U-Net with ``safe_mode=True`` (cinderseg's custom objects registered).

    Raises InputError with one line for a missing, empty or unreadable file.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: model file not found")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: model file is empty")
    try:
        return keras.saving.load_model(p, compile=compile, safe_mode=True)
    except Exception as err:
        reason = " ".join(str(err).split())[:200]
        raise InputError(f"{p}: not a readable Keras model ({type(err).__name__}: {reason})") from err


def count_params(model: keras.Model) -> dict[str, int]:
    """Parameter counts: total, trainable, and of the encoder."""
    return {
        "total": int(model.count_params()),
        "trainable": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "encoder": int(_encoder(model).count_params()),
    }
