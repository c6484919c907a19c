"""The model shipped in cinderseg/pretrained/: what it was trained on, and that it maps unseen terrain."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pytest
import yaml

from cinderseg.assess.matching import match_cones, object_metrics
from cinderseg.assess.settings import EvaluateSettings
from cinderseg.core.modelcard import MODEL_CARD, PRETRAINED_MODEL
from cinderseg.terrain.synthetic import SyntheticParams, write_synthetic_region
from cinderseg.workflow.config import load_config
from tests.workflow_helpers import REPO

CARD = json.loads(PRETRAINED_MODEL.with_name(MODEL_CARD).read_text())
PRETRAIN_CONFIG = REPO / "config" / "synthetic_pretrain.yaml"


def test_the_shipped_model_is_small_and_made_by_the_pretrain_config() -> None:
    assert PRETRAINED_MODEL.stat().st_size < 5 * 1024 * 1024, "a few MB"
    assert CARD["encoder"] == "unet_small" and CARD["initial_model"] is None
    assert CARD["encoder_start"] == "random initialisation (unet_small has no pretrained weights)"
    assert CARD["settings"]["model"]["encoder_weights"] == "none", "unet_small has no encoder weights"
    cfg = load_config(PRETRAIN_CONFIG)
    assert CARD["training_regions"] == list(cfg["regions"])
    assert all(r["source"] == "synthetic" for r in cfg["regions"].values()), "synthetic terrain only"
    raw = yaml.safe_load(PRETRAIN_CONFIG.read_text())
    for section in ("model", "train"):  # the card holds the validated sections, defaults filled in
        assert {k: CARD["config"][section][k] for k in raw[section]} == raw[section]
    assert CARD["channels"] == cfg["features"]["channels"]
    assert CARD["tile_size"] == cfg["tiling"]["size"]
    assert CARD["resolution_m"] == {name: float(r["resolution_m"]) for name, r in cfg["regions"].items()}
    makefile = (REPO / "Makefile").read_text()
    assert "\npretrained: " in makefile and "--configfile config/synthetic_pretrain.yaml" in makefile


@pytest.mark.workflow
def test_predict_without_a_model_maps_cones_of_an_unseen_volcano(tmp_path: Path) -> None:
    """A seed, size and cone population none of the training regions has; no labels given."""
    params = SyntheticParams(
        seed=977, width_px=320, height_px=320, n_cones=12, diameter_median_m=520, height_ratio=0.12
    )
    dem, truth_path = tmp_path / "dem.tif", tmp_path / "cones.gpkg"
    write_synthetic_region(params, dem, truth_path)
    out = tmp_path / "found.gpkg"
    proc = subprocess.run(
        [sys.executable, "-m", "cinderseg", "predict", "--dem", str(dem), "--out", str(out), "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = gpd.read_file(out, layer="cones")
    truth = gpd.read_file(truth_path)
    settings = EvaluateSettings()
    scores = object_metrics(truth, found, match_cones(truth, found, settings), settings)
    assert scores["f1"] is not None and scores["f1"] >= 0.6, scores


def test_the_transfer_regions_are_not_training_regions_of_the_shipped_model() -> None:
    """config/transfer_synthetic.yaml scores terrain the shipped model never saw, and no shipped config
    reuses a region name of the pretraining (results/ of both may share a folder)."""
    pretrain = load_config(PRETRAIN_CONFIG)["regions"]
    seeds = {r["synthetic"]["seed"] for r in pretrain.values()}
    transfer = load_config(REPO / "config" / "transfer_synthetic.yaml")
    assert transfer["predict"]["model"] == "pretrained"
    assert {r["synthetic"]["seed"] for r in transfer["regions"].values()}.isdisjoint(seeds)
    assert all(r["role"] == "test" for r in transfer["regions"].values())
    for path in [*sorted((REPO / "config").glob("*.yaml")), REPO / "config.yaml"]:
        if path != PRETRAIN_CONFIG:
            assert set(load_config(path)["regions"]).isdisjoint(pretrain), path.name
