"""End to end on config/tiny.yaml: outputs, and reruns of only what a config change touches."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml

from cinderseg.model import load_model
from cinderseg.tiles import load_tiles
from tests.workflow_helpers import REPO, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.workflow
TINY = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
STEPS = {"synthetic_dem", "mask", "features", "tiles", "overview"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed run of the tiny config in a scratch directory."""
    work = tmp_path_factory.mktemp("tiny")
    shutil.copy(REPO / "config" / "tiny.yaml", work / "tiny.yaml")
    snakemake(work, "--configfile", "tiny.yaml")
    return work


def test_outputs_share_one_grid_and_tiles_match_manifest(tiny_run: Path) -> None:
    for region in TINY["regions"]:
        paths = {step: tiny_run / "results" / step / f"{region}.tif" for step in ("dem", "masks", "features")}
        with (
            rasterio.open(paths["dem"]) as dem,
            rasterio.open(paths["masks"]) as mask,
            rasterio.open(paths["features"]) as feat,
        ):
            assert dem.crs is not None and dem.crs.is_projected
            assert dem.transform == mask.transform == feat.transform
            assert dem.shape == mask.shape == feat.shape
            assert feat.count == 3 and feat.descriptions == ("local_relief", "slope", "hillshade")
            cones = mask.read(1)
            assert 0.005 < (cones == 1).mean() < 0.5, "synthetic cones should cover part of the region"
        x, y, channels = load_tiles(tiny_run / "results" / "tiles" / f"{region}.npz")
        manifest = pd.read_csv(tiny_run / "results" / "tiles" / f"{region}.csv")
        assert list(channels) == ["local_relief", "slope", "hillshade"]
        assert x.shape[0] == y.shape[0] == len(manifest) > 0
        assert x.shape[1:] == (128, 128, 3) and y.shape[1:] == (128, 128, 1)
        assert np.isfinite(np.asarray(x, dtype="float32")).all()
        expected = {"train", "val"} if TINY["regions"][region]["role"] == "train" else {"test"}
        assert set(manifest["split"]) == expected
        assert (tiny_run / "results" / "overview" / f"{region}.png").stat().st_size > 10_000
        assert (tiny_run / "results" / "logs" / "dem" / f"{region}.log").exists()
        assert (tiny_run / "results" / "benchmarks" / "tiles" / f"{region}.tsv").exists()


def test_the_model_is_trained_on_the_training_regions(tiny_run: Path) -> None:
    models = tiny_run / "results" / "models" / TINY["model"].get("name", "unet")
    card = json.loads((models / "model_card.json").read_text())
    assert card["encoder"] == "unet_small" and card["training_regions"] == ["tiny_train"]
    assert card["epochs_run"] == len(pd.read_csv(models / "history.csv")) == TINY["train"]["epochs"]
    assert (models / "training_curves.png").stat().st_size > 10_000
    assert load_model(models / "model.keras").output_shape == (None, 128, 128, 1)
    assert (tiny_run / "results" / "logs" / "train" / f"{models.name}.log").exists()
    assert not models.with_name(f"{models.name}.state").exists()


def test_nothing_reruns_when_nothing_changed(tiny_run: Path) -> None:
    assert planned_jobs(tiny_run, "tiny.yaml") == set()


def test_changing_one_region_reruns_only_that_region(tiny_run: Path) -> None:
    cfg = copy.deepcopy(TINY)
    cfg["regions"]["tiny_test"]["synthetic"]["seed"] = 99
    jobs = planned_jobs(tiny_run, write_config(tiny_run, "one_region.yaml", cfg))
    assert {region for _, region in jobs} - {""} == {"tiny_test"}
    assert {rule for rule, _ in jobs} >= STEPS
    assert "train" not in {rule for rule, _ in jobs}, "a test region does not feed training"


def test_changing_tiling_reruns_tiles_not_dem_mask_features(tiny_run: Path) -> None:
    cfg = copy.deepcopy(TINY)
    cfg["tiling"]["step"] = 96
    jobs = planned_jobs(tiny_run, write_config(tiny_run, "tiling.yaml", cfg))
    rules = {rule for rule, _ in jobs}
    assert {"tiles", "train"} <= rules
    assert rules.isdisjoint({"synthetic_dem", "mask", "features"})
    assert {region for rule, region in jobs if rule == "tiles"} == set(TINY["regions"])


def test_changing_features_keeps_dem_and_mask(tiny_run: Path) -> None:
    cfg = copy.deepcopy(TINY)
    cfg["features"] = {"channels": ["elevation", "slope", "local_relief"]}
    rules = {rule for rule, _ in planned_jobs(tiny_run, write_config(tiny_run, "features.yaml", cfg))}
    assert {"features", "tiles"} <= rules
    assert rules.isdisjoint({"synthetic_dem", "mask"})


def test_adding_a_region_runs_only_the_new_region(tiny_run: Path) -> None:
    cfg = copy.deepcopy(TINY)
    cfg["regions"]["tiny_extra"] = copy.deepcopy(cfg["regions"]["tiny_test"])
    cfg["regions"]["tiny_extra"]["synthetic"]["seed"] = 13
    jobs = planned_jobs(tiny_run, write_config(tiny_run, "added.yaml", cfg))
    assert {region for _, region in jobs} - {""} == {"tiny_extra"}
