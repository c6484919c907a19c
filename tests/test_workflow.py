"""End to end on config/tiny.yaml: outputs, and reruns of only what a config change touches."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml

from cinderseg.core.step import job_cpu_seconds
from cinderseg.data.tiles import load_tiles
from cinderseg.nn.model import load_model
from cinderseg.workflow import paths
from tests.workflow_helpers import (
    REPO,
    benchmark_file,
    log_file,
    output,
    planned_jobs,
    snakemake,
    write_config,
)

pytestmark = pytest.mark.workflow
TINY = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
STEPS = {"synthetic_dem", "mask", "features", "tiles", "overview"}
MAP_STEPS = {"predict", "vectorize", "baseline", "evaluate"}


@pytest.fixture(scope="module")
def tiny_copy(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny run (results and Snakemake's metadata, modification times kept) for the tests
    that run snakemake in it: a dry run locks its directory for a moment and the report is written into
    it, while other workers read or copy the shared run."""
    work = tmp_path_factory.mktemp("tiny_copy")
    shutil.copytree(tiny_run, work, symlinks=True, dirs_exist_ok=True)
    return work


def test_outputs_share_one_grid_and_tiles_match_manifest(tiny_run: Path) -> None:
    for region in TINY["regions"]:
        with (
            rasterio.open(output(tiny_run, paths.DEM, region=region)) as dem,
            rasterio.open(output(tiny_run, paths.MASK, region=region)) as mask,
            rasterio.open(output(tiny_run, paths.FEATURES, region=region)) as feat,
        ):
            assert dem.crs is not None and dem.crs.is_projected
            assert dem.transform == mask.transform == feat.transform
            assert dem.shape == mask.shape == feat.shape
            assert feat.count == 3 and feat.descriptions == ("local_relief", "slope", "hillshade")
            cones = mask.read(1)
            assert 0.005 < (cones == 1).mean() < 0.5, "synthetic cones should cover part of the region"
        x, y, channels = load_tiles(output(tiny_run, paths.TILES, region=region))
        manifest = pd.read_csv(output(tiny_run, paths.MANIFEST, region=region))
        assert list(channels) == ["local_relief", "slope", "hillshade"]
        assert x.shape[0] == y.shape[0] == len(manifest) > 0
        assert x.shape[1:] == (128, 128, 3) and y.shape[1:] == (128, 128, 1)
        assert np.isfinite(np.asarray(x, dtype="float32")).all()
        expected = {"train", "val"} if TINY["regions"][region]["role"] == "train" else {"test"}
        assert set(manifest["split"]) == expected
        assert output(tiny_run, paths.OVERVIEW, region=region).stat().st_size > 10_000
        assert log_file(tiny_run, "dem", region).exists()
        assert benchmark_file(tiny_run, "tiles", region).exists()


def test_the_model_is_trained_on_the_training_regions(tiny_run: Path) -> None:
    models = output(tiny_run, paths.MODEL_DIR, model=TINY["model"].get("name", "unet"))
    card = json.loads((models / "model_card.json").read_text())
    assert card["encoder"] == "unet_small" and card["training_regions"] == ["tiny_train"]
    assert card["epochs_run"] == len(pd.read_csv(models / "history.csv")) == TINY["train"]["epochs"]
    assert (models / "training_curves.png").stat().st_size > 10_000
    assert load_model(models / "model.keras").output_shape == (None, 128, 128, 1)
    assert log_file(tiny_run, "train", models.name).exists()
    assert not models.with_name(f"{models.name}.state").exists()


def test_nothing_reruns_when_nothing_changed(tiny_copy: Path) -> None:
    assert planned_jobs(tiny_copy, "tiny.yaml") == set()


def test_changing_one_region_reruns_only_that_region(tiny_copy: Path) -> None:
    cfg = copy.deepcopy(TINY)
    cfg["regions"]["tiny_test"]["synthetic"]["seed"] = 99
    jobs = planned_jobs(tiny_copy, write_config(tiny_copy, "one_region.yaml", cfg))
    assert {region for _, region in jobs} - {""} == {"tiny_test"}
    assert {rule for rule, _ in jobs} >= STEPS | MAP_STEPS
    assert "train" not in {rule for rule, _ in jobs}, "a test region does not feed training"


def test_changing_tiling_reruns_tiles_not_dem_mask_features(tiny_copy: Path) -> None:
    cfg = copy.deepcopy(TINY)
    cfg["tiling"]["step"] = 96
    jobs = planned_jobs(tiny_copy, write_config(tiny_copy, "tiling.yaml", cfg))
    rules = {rule for rule, _ in jobs}
    assert {"tiles", "train"} <= rules
    assert rules.isdisjoint({"synthetic_dem", "mask", "features"})
    assert {region for rule, region in jobs if rule == "tiles"} == set(TINY["regions"])


def test_changing_features_keeps_dem_and_mask(tiny_copy: Path) -> None:
    cfg = copy.deepcopy(TINY)
    cfg["features"] = {"channels": ["elevation", "slope", "local_relief"]}
    rules = {rule for rule, _ in planned_jobs(tiny_copy, write_config(tiny_copy, "features.yaml", cfg))}
    assert {"features", "tiles"} <= rules
    assert rules.isdisjoint({"synthetic_dem", "mask"})


def test_adding_a_region_runs_only_the_new_region(tiny_copy: Path) -> None:
    cfg = copy.deepcopy(TINY)
    cfg["regions"]["tiny_extra"] = copy.deepcopy(cfg["regions"]["tiny_test"])
    cfg["regions"]["tiny_extra"]["synthetic"]["seed"] = 13
    jobs = planned_jobs(tiny_copy, write_config(tiny_copy, "added.yaml", cfg))
    assert {region for _, region in jobs} - {""} == {"tiny_extra"}


def test_every_region_is_predicted_on_the_dem_grid_and_mapped(tiny_run: Path) -> None:
    for region in TINY["regions"]:
        with (
            rasterio.open(output(tiny_run, paths.DEM, region=region)) as dem,
            rasterio.open(output(tiny_run, paths.PROBABILITY, region=region)) as prob,
        ):
            assert (prob.crs, prob.transform, prob.shape) == (dem.crs, dem.transform, dem.shape)
            assert prob.dtypes == ("float32",) and prob.nodata == -9999
            p = prob.read(1, masked=True)
            assert 0.0 <= p.min() and p.max() <= 1.0
        cones = gpd.read_file(output(tiny_run, paths.CONES, region=region), layer="cones")
        assert cones.crs == dem.crs
        for column in ("basal_diameter_m", "height_m", "height_to_diameter", "volume_m3", "lon", "lat"):
            assert column in cones.columns
        summary = pd.read_csv(output(tiny_run, paths.CONE_SUMMARY, region=region))
        assert len(summary) == 1 and summary["n_cones"].iloc[0] == len(cones)
        for figure in paths.CONE_FIGURES:
            assert output(tiny_run, paths.FIGURE, region=region, figure=figure).stat().st_size > 5_000


def test_labelled_regions_are_evaluated_against_the_labels_and_the_baseline(tiny_run: Path) -> None:
    for region, settings in TINY["regions"].items():
        metrics = json.loads(output(tiny_run, paths.METRICS, region=region).read_text())
        assert metrics["region"] == region and metrics["role"] == settings["role"]
        for key in ("iou", "f1", "precision", "recall"):
            assert metrics["pixel"][key] is None or 0.0 <= metrics["pixel"][key] <= 1.0
        assert metrics["objects"]["n_true"] == len(
            gpd.read_file(output(tiny_run, paths.SYNTHETIC_CONES, region=region))
        )
        assert metrics["objects"]["n_pred"] >= 0 and "f1" in metrics["objects"]
        assert "objects" in metrics["baseline"]
        assert output(tiny_run, paths.FIGURE, region=region, figure="errors").stat().st_size > 5_000
    table = pd.read_csv(tiny_run / paths.METRICS_SUMMARY)
    assert set(table["region"]) == set(TINY["regions"]) and set(table["method"]) == {"network", "baseline"}


def test_changing_the_threshold_reruns_vectorize_and_evaluate_not_predict(tiny_copy: Path) -> None:
    cfg = copy.deepcopy(TINY)
    cfg["vectorize"] = {"threshold": 0.6}
    rules = {rule for rule, _ in planned_jobs(tiny_copy, write_config(tiny_copy, "threshold.yaml", cfg))}
    assert rules - {"all"} == {"vectorize", "evaluate", "metrics_summary"}


def test_the_report_gathers_figures_and_metrics(tiny_copy: Path) -> None:
    snakemake(tiny_copy, "--configfile", "tiny.yaml", "--report", paths.REPORT)
    html = (tiny_copy / paths.REPORT).read_text(errors="replace")
    assert len(html) > 100_000
    for name in ("training_curves.png", "cone_map.png", "errors.png", "summary.csv"):
        assert name in html, name


def test_config_values_on_the_command_line_are_typed_by_the_schema(tmp_path: Path) -> None:
    """Snakemake passes nested --config values as strings; they are read as the schema's types and
    merged into the config file's sections (the regions' other keys stay)."""
    proc = snakemake(
        tmp_path, "--dry-run", "--configfile", write_config(tmp_path, "c.yaml", TINY), "--config",
        "train={max_minutes: 1, epochs: 2, calibrate: false, relief_exaggeration: [0.8, 1.25]}",
        "regions={tiny_test: {resolution_m: 20, synthetic: {seed: 5}}}",
        "crossval={spatial_folds: {tiny_test: {rows: 1, cols: 2}}}",
    )  # fmt: skip
    train = re.search(r"^rule train:\n((?:    .*\n)+)", proc.stdout, re.MULTILINE)
    assert train, proc.stdout[-3000:]
    assert re.search(r"\bruntime=31\b", train.group(1)), "int(1 min x 1.25) + 30: max_minutes is a number"
    assert len(re.findall(r"^rule crossval_train:$", proc.stdout, re.MULTILINE)) == 2
    assert "cinderseg: error" not in proc.stderr
    bad = snakemake(
        tmp_path, "--dry-run", "--configfile", "c.yaml", "--config", "train={epochs: two}", check=False
    )
    lines = [line for line in bad.stderr.splitlines() if line.startswith("cinderseg: error:")]
    assert bad.returncode != 0 and len(lines) == 1
    assert lines[0].endswith("c.yaml, --config: train.epochs: 'two' is not of type integer")


def test_benchmarks_count_all_the_cpu_time_each_step_logged(tiny_run: Path) -> None:
    """cpu_time is at least what each step measured of itself at its end (all its threads and ended
    child processes; cinderseg.workflow.benchmark), or what Snakemake's sampling saw if more (the
    shell around the job, and the interpreter's exit after the step's last log line)."""
    for step, name in [("train", "unet"), ("predict", "tiny_train"), ("features", "tiny_test")]:
        table = pd.read_csv(benchmark_file(tiny_run, step, name), sep="\t")
        logged = job_cpu_seconds(log_file(tiny_run, step, name))
        assert logged is not None and table["cpu_time"].iloc[0] >= logged - 0.01, step
