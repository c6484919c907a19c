"""The configs of README "Map a new volcano with the shipped model" and docs/user-guide.md: the shipped
model without labels, or fine-tuned."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import keras
import numpy as np
import pytest

from cinderseg.core.modelcard import PRETRAINED_MODEL
from cinderseg.data.examples import write_srtm_like_example
from cinderseg.nn.model import build_unet, load_model
from cinderseg.nn.settings import ModelSettings
from cinderseg.terrain.synthetic import SyntheticParams
from tests.workflow_helpers import REPO, snakemake

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SRTM-like example where the configs expect it (resources/example), and the configs."""
    work = tmp_path_factory.mktemp("new_volcano")
    params = SyntheticParams(seed=31, width_px=320, height_px=320, n_cones=10, diameter_median_m=500)
    write_srtm_like_example(work / "resources" / "example", params=params)
    for name in ("new_volcano.yaml", "fine_tune.yaml"):
        shutil.copy(REPO / "config" / name, work / name)
    return work


def test_the_shipped_model_maps_a_volcano_without_labels(workdir: Path) -> None:
    snakemake(workdir, "--configfile", "new_volcano.yaml")
    cones = gpd.read_file(workdir / "results" / "cones" / "my_volcano.gpkg", layer="cones")
    assert len(cones) >= 3 and (cones["basal_diameter_m"] > 0).all()
    assert not (workdir / "results" / "models").exists(), "nothing trained: no labels"


def test_fine_tuning_starts_from_the_shipped_model(workdir: Path) -> None:
    # merged into fine_tune.yaml's sections: a short run on the small example region
    short = "train: {epochs: 1, steps_per_epoch: 2}\ntiling: {split_block_px: 128}\n"
    (workdir / "short.yaml").write_text(short)
    snakemake(workdir, "--configfile", "fine_tune.yaml", "short.yaml")
    out = workdir / "results" / "models" / "fine_tuned"
    card = json.loads((out / "model_card.json").read_text())
    assert card["initial_model"]["path"] == "pretrained"
    assert card["initial_model"]["training_regions"][0] == "mauna_kea_30"
    shipped = load_model(PRETRAINED_MODEL)
    fresh = build_unet(ModelSettings.from_config(card["config"]["model"]), tile_size=128, n_channels=3)

    def distance(model: keras.Model) -> float:
        pairs = zip(model.get_weights(), shipped.get_weights(), strict=True)
        return float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in pairs)))

    tuned = distance(load_model(out / "model.keras"))
    assert 0 < tuned < 0.2 * distance(fresh), "a few steps from the shipped weights, not from random ones"
    assert (workdir / "results" / "cones" / "labelled_part.gpkg").is_file()
