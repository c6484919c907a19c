"""``train.initial_model`` (fine-tuning from a trained model) and the ``pretrained`` keyword."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cinderseg.core.modelcard as modelcard_module
from cinderseg.core.errors import ConfigError, InputError
from cinderseg.core.modelcard import MODEL_CARD, model_path
from cinderseg.nn.settings import TrainingRun, TrainSettings
from cinderseg.nn.train import TrainOutputs, initialise_from, train_model
from cinderseg.workflow.config import check_input_files, validate_config
from tests.test_train import TINY_MODEL, cone_tiles, write_tiles

CHANNELS = ("elevation", "sobel", "clahe")


@pytest.fixture(scope="module")
def volcano(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One training region of 32 tiles of 32 px: 24 train, 8 val."""
    d = tmp_path_factory.mktemp("volcano")
    x, y = cone_tiles(32, seed=3)
    tiles, manifest = write_tiles(d, "volcano", x, y, ["train"] * 24 + ["val"] * 8, channels=CHANNELS)
    return {"tiles": [tiles], "manifests": [manifest], "regions": ["volcano"], "dir": d}


def _train(data: dict[str, Any], out: Path, **train: Any) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    return train_model(
        data["tiles"],
        data["manifests"],
        TrainOutputs(
            model=out / "model.keras",
            history=out / "history.csv",
            curves=out / "curves.png",
            card=out / MODEL_CARD,
        ),
        TrainingRun.from_config(
            TINY_MODEL,
            {"epochs": 1, "batch_size": 8, "calibrate": False, **train},
            regions=data["regions"],
        ),
    )


@pytest.fixture(scope="module")
def first(volcano: dict[str, Any]) -> Path:
    """A model trained one epoch from scratch, with its card."""
    out = volcano["dir"] / "first"
    _train(volcano, out)
    return out / "model.keras"


def test_training_starts_from_the_initial_models_weights(
    volcano: dict[str, Any], first: Path, tmp_path: Path
) -> None:
    from cinderseg.nn.model import build_unet, load_model
    from cinderseg.nn.settings import ModelSettings

    fresh = build_unet(ModelSettings.from_config(TINY_MODEL), tile_size=32, n_channels=3)
    before = [w.copy() for w in fresh.get_weights()]
    info = initialise_from(fresh, str(first), CHANNELS)
    trained = load_model(first, compile=False).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), trained, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(before, trained, strict=True))
    assert info["training_regions"] == ["volcano"]

    card = _train(volcano, tmp_path / "second", initial_model=str(first))
    assert card["initial_model"]["path"] == str(first)
    assert card["initial_model"]["training_regions"] == ["volcano"]
    assert card["settings"]["train"]["initial_model"] == str(first)
    assert card["encoder_start"] == f"initial model {first} (train.initial_model)"


def test_an_initial_model_of_other_channels_or_architecture_is_refused(first: Path) -> None:
    from cinderseg.nn.model import build_unet
    from cinderseg.nn.settings import ModelSettings

    same = build_unet(ModelSettings.from_config(TINY_MODEL), tile_size=32, n_channels=3)
    with pytest.raises(InputError, match=r"train.initial_model: .* channels \[elevation, sobel, clahe\]"):
        initialise_from(same, str(first), ("local_relief", "slope", "hillshade"))
    wider_settings = ModelSettings.from_config({**TINY_MODEL, "base_filters": 16})
    wider = build_unet(wider_settings, tile_size=32, n_channels=3)
    with pytest.raises(InputError, match=r"train\.initial_model: .* another architecture"):
        initialise_from(wider, str(first), CHANNELS)
    with pytest.raises(InputError, match=r"train\.initial_model: model file not found"):
        initialise_from(same, str(first.with_name("missing.keras")), CHANNELS)


def test_initial_model_must_be_a_string() -> None:
    with pytest.raises(ConfigError, match=r"train\.initial_model"):
        TrainSettings(initial_model=3)  # type: ignore[arg-type]


def test_pretrained_names_the_shipped_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert model_path("results/models/unet/model.keras") == Path("results/models/unet/model.keras")
    shipped = tmp_path / "pretrained" / "model.keras"
    monkeypatch.setattr(modelcard_module, "PRETRAINED_MODEL", shipped)
    missing = r"predict\.model: the shipped pretrained model is missing .*make pretrained"
    with pytest.raises(ConfigError, match=missing):
        model_path("pretrained", key="predict.model")
    shipped.parent.mkdir()
    shipped.write_bytes(b"x")
    shipped.with_name(MODEL_CARD).write_text(json.dumps({"channels": ["slope"]}))
    assert model_path("pretrained") == shipped
    assert model_path(" Pretrained ") == shipped


def test_config_keys_naming_a_missing_model_fail_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(modelcard_module, "PRETRAINED_MODEL", tmp_path / "nowhere" / "model.keras")
    regions = {"r": {"source": "synthetic", "role": "train", "labels": "synthetic", "resolution_m": 30}}
    for section, key in (("predict", "model"), ("train", "initial_model")):
        cfg = validate_config({"regions": regions, section: {key: "pretrained"}}, source="c.yaml")
        missing = rf"^c\.yaml: {section}\.{key}: the shipped pretrained model is missing"
        with pytest.raises(ConfigError, match=missing):
            check_input_files(cfg, source="c.yaml", base=tmp_path)
        cfg = validate_config({"regions": regions, section: {key: "models/m.keras"}}, source="c.yaml")
        not_found = rf"^c\.yaml: {section}\.{key}: model file not found: models/m\.keras"
        with pytest.raises(ConfigError, match=not_found):
            check_input_files(cfg, source="c.yaml", base=tmp_path)
