"""``python -m cinderseg predict``: a trained model applied to a user's DEM, the workflow's code path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from cinderseg.data.examples import write_srtm_like_example
from cinderseg.terrain.synthetic import SyntheticParams
from tests.workflow_helpers import REPO

pytestmark = pytest.mark.workflow


def cinderseg_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cinderseg", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.fixture(scope="module")
def model(tiny_run: Path) -> Path:
    return tiny_run / "results" / "models" / "unet" / "model.keras"


@pytest.fixture(scope="module")
def srtm_like(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A user's DEM: SRTM-like, EPSG:4326 int16 with voids, two files, plus the true cones (lon/lat)."""
    params = SyntheticParams(seed=12, width_px=256, height_px=256, n_cones=8, diameter_median_m=420)
    return write_srtm_like_example(tmp_path_factory.mktemp("srtm"), params=params)


def test_predict_maps_a_geographic_two_file_dem_with_the_models_settings(
    model: Path, srtm_like: dict[str, Path], tmp_path: Path
) -> None:
    dems = sorted(str(p) for p in srtm_like.values() if p.suffix == ".tif")
    assert len(dems) == 2
    out, prob = tmp_path / "out" / "cones.gpkg", tmp_path / "out" / "probability.tif"
    proc = cinderseg_cli(
        "predict", "--model", str(model), "--dem", *dems, "--out", str(out), "--probability", str(prob),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cinderseg: predict: " in proc.stderr and " windows (100%)" in proc.stderr, "progress lines"
    card = json.loads(model.with_name("model_card.json").read_text())
    with rasterio.open(prob) as ds:
        assert ds.crs.is_projected and ds.crs.to_epsg() == 32605
        assert abs(ds.transform.a) == pytest.approx(card["resolution_m"]["tiny_train"])
        assert ds.descriptions == ("probability",)
    cones = gpd.read_file(out, layer="cones")
    assert cones.crs.to_epsg() == 32605
    assert "basal_diameter_m" in cones.columns and "height_m" in cones.columns
    assert f"{len(cones)} cone(s) -> {out}" in proc.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["cones.gpkg", "probability.tif"], (
        "no scratch left"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--threshold", "1.5"], "threshold"),
        (["--dem", "missing.tif"], "missing.tif"),
        (["--window", "100"], "window_px"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_output(
    model: Path, srtm_like: dict[str, Path], tmp_path: Path, args: list[str], expected: str
) -> None:
    dem = str(next(p for p in srtm_like.values() if p.suffix == ".tif"))
    base = {"--model": str(model), "--dem": dem, "--out": str(tmp_path / "cones.gpkg")}
    for key, value in zip(args[::2], args[1::2], strict=True):
        base[key] = value
    proc = cinderseg_cli("predict", *[x for kv in base.items() for x in kv], cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cinderseg: error: ") and expected in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_model_without_its_card_is_refused(model: Path, srtm_like: dict[str, Path], tmp_path: Path) -> None:
    lone = tmp_path / "lone" / "model.keras"
    lone.parent.mkdir()
    shutil.copy(model, lone)
    dem = str(next(p for p in srtm_like.values() if p.suffix == ".tif"))
    proc = cinderseg_cli("predict", "--model", str(lone), "--dem", dem, "--out", "c.gpkg", cwd=tmp_path)
    assert proc.returncode == 1 and "model_card.json" in proc.stderr and "model card not found" in proc.stderr
    assert not (tmp_path / "c.gpkg").exists()


def test_the_train_rules_onnx_copy_maps_like_keras(
    model: Path, srtm_like: dict[str, Path], tmp_path: Path
) -> None:
    """The workflow's train rule wrote model.onnx beside the model; the command runs it (ONNX Runtime,
    the default) and its map equals the Keras one within 1e-4."""
    from cinderseg.nn.onnx import onnx_session

    assert onnx_session(model, 1024, n_channels=3, threads=1)[0] is not None  # exported from this model
    dem = str(next(p for p in srtm_like.values() if p.suffix == ".tif"))
    maps = {}
    for runtime in ("auto", "keras"):
        out, prob = tmp_path / runtime / "cones.gpkg", tmp_path / runtime / "p.tif"
        proc = cinderseg_cli(
            "predict", "--model", str(model), "--dem", dem, "--out", str(out), "--probability", str(prob),
            "--runtime", runtime, "--quiet", cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        with rasterio.open(prob) as ds:
            maps[runtime] = ds.read(1)
    assert maps["auto"].shape == maps["keras"].shape
    assert np.abs(maps["auto"] - maps["keras"]).max() < 1e-4


def test_help_names_the_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cinderseg", "predict", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0 and "--probability" in proc.stdout and "--runtime" in proc.stdout
