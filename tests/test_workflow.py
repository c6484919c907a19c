"""End to end on config/tiny.yaml: outputs, and reruns of only what a config change touches."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import geopandas as gpd
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
MAP_STEPS = {"predict", "vectorize", "baseline", "evaluate"}


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
    assert {rule for rule, _ in jobs} >= STEPS | MAP_STEPS
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


def test_every_region_is_predicted_on_the_dem_grid_and_mapped(tiny_run: Path) -> None:
    results = tiny_run / "results"
    for region in TINY["regions"]:
        with (
            rasterio.open(results / "dem" / f"{region}.tif") as dem,
            rasterio.open(results / "predictions" / f"{region}.tif") as prob,
        ):
            assert (prob.crs, prob.transform, prob.shape) == (dem.crs, dem.transform, dem.shape)
            assert prob.dtypes == ("float32",) and prob.nodata == -9999
            p = prob.read(1, masked=True)
            assert 0.0 <= p.min() and p.max() <= 1.0
        cones = gpd.read_file(results / "cones" / f"{region}.gpkg", layer="cones")
        assert cones.crs == dem.crs
        for column in ("basal_diameter_m", "height_m", "height_to_diameter", "volume_m3", "lon", "lat"):
            assert column in cones.columns
        summary = pd.read_csv(results / "cones" / f"{region}_summary.csv")
        assert len(summary) == 1 and summary["n_cones"].iloc[0] == len(cones)
        for figure in ("size_frequency", "height_vs_diameter", "cone_map"):
            assert (results / "figures" / region / f"{figure}.png").stat().st_size > 5_000


def test_labelled_regions_are_evaluated_against_the_labels_and_the_baseline(tiny_run: Path) -> None:
    results = tiny_run / "results"
    for region, settings in TINY["regions"].items():
        metrics = json.loads((results / "metrics" / f"{region}.json").read_text())
        assert metrics["region"] == region and metrics["role"] == settings["role"]
        for key in ("iou", "f1", "precision", "recall"):
            assert metrics["pixel"][key] is None or 0.0 <= metrics["pixel"][key] <= 1.0
        assert metrics["objects"]["n_true"] == len(
            gpd.read_file(results / "synthetic" / f"{region}_cones.gpkg")
        )
        assert metrics["objects"]["n_pred"] >= 0 and "f1" in metrics["objects"]
        assert "objects" in metrics["baseline"]
        assert (results / "figures" / region / "errors.png").stat().st_size > 5_000
    table = pd.read_csv(results / "metrics" / "summary.csv")
    assert set(table["region"]) == set(TINY["regions"]) and set(table["method"]) == {"network", "baseline"}


def test_changing_the_threshold_reruns_vectorize_and_evaluate_not_predict(tiny_run: Path) -> None:
    cfg = copy.deepcopy(TINY)
    cfg["vectorize"] = {"threshold": 0.6}
    rules = {rule for rule, _ in planned_jobs(tiny_run, write_config(tiny_run, "threshold.yaml", cfg))}
    assert rules - {"all"} == {"vectorize", "evaluate", "metrics_summary"}


def test_the_report_gathers_figures_and_metrics(tiny_run: Path) -> None:
    snakemake(tiny_run, "--configfile", "tiny.yaml", "--report", "results/report.html")
    html = (tiny_run / "results" / "report.html").read_text(errors="replace")
    assert len(html) > 100_000
    for name in ("training_curves.png", "cone_map.png", "errors.png", "summary.csv"):
        assert name in html, name
