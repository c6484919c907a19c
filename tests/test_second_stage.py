"""The learned second stage: candidates, their features, the JSON verifier, and where cones are lost."""

from __future__ import annotations

import json
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from shapely.geometry import Point, box

from cinderseg.assess.matching import match_cones
from cinderseg.assess.misses import loss_stages, loss_table
from cinderseg.assess.settings import EvaluateSettings
from cinderseg.cones.candidates import (
    FEATURES,
    candidate_features,
    context_features,
    drop_duplicates,
    propose,
    verified_cones,
)
from cinderseg.cones.detector import BaselineSettings, chosen, detect_cones
from cinderseg.cones.verifier import MISSING, average_verifiers, fit_verifier, load_verifier
from cinderseg.core.errors import InputError
from cinderseg.core.modelcard import verifier_path
from cinderseg.core.raster import NODATA_FLOAT, geotiff_profile

RES = 30.0
UTM = "EPSG:32605"
X0, Y0 = 500000.0, 2200000.0
SHAPE = (240, 240)


def _cone(row, col, radius_px, height):
    rows, cols = np.indices(SHAPE)
    r = np.hypot(rows - row, cols - col) / radius_px
    return height * np.clip((1.0 - r) / 0.6, 0.0, 1.0)


CONES = [(60, 60, 9, 90), (60, 170, 12, 120), (170, 80, 7, 60), (180, 180, 10, 100)]


def _dem(tmp_path: Path) -> tuple[Path, gpd.GeoDataFrame]:
    """Four cones and a long ridge (not a cone) on a gently tilted, slightly rough plane."""
    rows, cols = np.indices(SHAPE)
    z = 500.0 + 0.02 * RES * cols + np.random.default_rng(0).normal(0.0, 0.5, SHAPE)
    z += 70.0 * np.exp(-(((cols - 120) / 4.0) ** 2)) * ((rows > 20) & (rows < 220))
    for cone in CONES:
        z += _cone(*cone)
    path = tmp_path / "dem.tif"
    profile = geotiff_profile(
        width=SHAPE[1],
        height=SHAPE[0],
        count=1,
        dtype="float32",
        crs=UTM,
        transform=rasterio.transform.from_origin(X0, Y0, RES, RES),
        nodata=NODATA_FLOAT,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(z.astype("float32"), 1)
    truth = gpd.GeoDataFrame(
        geometry=[
            Point(X0 + (c + 0.5) * RES, Y0 - (r + 0.5) * RES).buffer(rad * RES) for r, c, rad, _ in CONES
        ],
        crs=UTM,
    )
    return path, truth


def test_the_detectors_choice_among_loose_outlines_is_the_default_detector(tmp_path):
    dem, _ = _dem(tmp_path)
    loose = detect_cones(
        dem,
        BaselineSettings(
            min_response_m=4,
            min_relief_m=8,
            min_roundness=0.4,
            min_flank_slope_deg=2,
            max_flank_slope_deg=60,
            max_overlap=1.0,
        ),
    )
    default = detect_cones(dem, BaselineSettings())
    picked = loose[chosen(loose, BaselineSettings())]
    assert len(picked) == len(default) >= 4
    assert sorted(round(g.area) for g in picked.geometry) == sorted(round(g.area) for g in default.geometry)


def test_candidates_cover_every_cone_and_describe_them(tmp_path):
    dem, truth = _dem(tmp_path)
    cands = propose(dem, gpd.GeoSeries([], crs=UTM))
    cones, feats = candidate_features(cands, dem, None)
    assert list(feats.columns) == list(FEATURES) and len(feats) == len(cands)
    for geom in truth.geometry:
        r = math.sqrt(geom.area / math.pi)
        d = cands.geometry.centroid.distance(geom.centroid)
        ratio = np.sqrt(cands.geometry.area / math.pi) / r
        assert ((d < 0.5 * r) & (ratio > 0.67) & (ratio < 1.5)).any()
    best = feats.loc[cones.geometry.centroid.distance(truth.geometry.iloc[1].centroid).idxmin()]
    assert best["closure"] == pytest.approx(1.0) and best["height_m"] == pytest.approx(120, rel=0.15)
    assert feats["probability_max"].eq(0).all()  # no probability map: zero, not missing


def test_context_tells_a_lone_cone_from_a_bump_at_a_cliff_foot():
    rows, cols = np.indices((81, 81), dtype=float)
    cone = 50.0 * np.clip(1.0 - np.hypot(rows - 40, cols - 40) / 10.0, 0.0, 1.0)
    got = context_features(cone, 40.0, 40.0, 10.0, 50.0, RES)
    assert got["closure"] == 1.0 and got["base_slope_deg"] < 1 and got["steep_side_ratio"] < 0.1
    edge = np.where(cols < 40, 50.0, 0.0) + np.where(np.hypot(rows - 40, cols - 40) < 6, 5.0, 0.0)
    got = context_features(edge, 40.0, 40.0, 10.0, 50.0, RES)
    assert got["steep_side_ratio"] > 0.4 and got["surround_rough_ratio"] > 0.3 and got["base_slope_deg"] > 3


def test_near_duplicate_outlines_keep_the_strongest():
    geoms = [box(0, 0, 10, 10), box(0.5, 0, 10.5, 10), box(0, 0, 4, 4)]
    keep = drop_duplicates(geoms, np.array([1.0, 2.0, 0.5]))
    assert keep.tolist() == [False, True, True]


def _table(n=400, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    x[rng.random((n, 3)) < 0.1] = np.nan
    y = (np.nan_to_num(x[:, 0]) + 0.7 * np.nan_to_num(x[:, 1]) ** 2 + rng.normal(0, 0.4, n)) > 0.6
    return pd.DataFrame(x, columns=["a", "b", "c"]), y


def test_the_json_verifier_scores_as_scikit_learn_and_round_trips(tmp_path):
    from sklearn.ensemble import GradientBoostingClassifier

    table, y = _table()
    verifier = fit_verifier(table, y, ["a", "b", "c"], seed=3, n_trees=60)
    model = GradientBoostingClassifier(
        n_estimators=60, max_depth=3, learning_rate=0.05, subsample=0.8, random_state=3
    ).fit(np.where(np.isfinite(table), table, MISSING), y)
    expected = model.predict_proba(np.where(np.isfinite(table), table, MISSING))[:, 1]
    np.testing.assert_allclose(verifier.probability(table), expected, atol=1e-9)
    verifier.to_json(tmp_path / "v.json")
    back = load_verifier(tmp_path / "v.json")
    np.testing.assert_allclose(back.probability(table), expected, atol=1e-6)
    assert back.features == ("a", "b", "c") and back.meta["n_cones"] == int(y.sum())


def test_an_averaged_verifier_scores_the_mean_log_odds_of_its_members(tmp_path):
    table, y = _table()
    a = fit_verifier(table, y, ["a", "b", "c"], seed=1, n_trees=40)
    b = fit_verifier(table, ~y, ["a", "b", "c"], seed=2, n_trees=30, learning_rate=0.1)
    pa, pb = a.probability(table), b.probability(table)
    expected = 1 / (1 + np.exp(-(np.log(pa / (1 - pa)) + np.log(pb / (1 - pb))) / 2))
    mean = average_verifiers([a, b], meta={"members": 2})
    np.testing.assert_allclose(mean.probability(table), expected, atol=1e-9)
    mean.to_json(tmp_path / "mean.json")
    np.testing.assert_allclose(load_verifier(tmp_path / "mean.json").probability(table), expected, atol=1e-6)
    with pytest.raises(InputError, match="different features"):
        average_verifiers([a, fit_verifier(table, y, ["b", "a", "c"], n_trees=5)])


def test_bad_verifier_files_are_one_line_errors(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"format": "other"}))
    for path, match in (
        (tmp_path / "x.json", "not a cinderseg verifier"),
        (tmp_path / "no.json", "not found"),
    ):
        with pytest.raises(InputError, match=match) as err:
            load_verifier(path)
        assert "\n" not in str(err.value)
    table, y = _table()
    with pytest.raises(InputError, match="candidate features missing: c"):
        fit_verifier(table, y, ["a", "b", "c"], n_trees=5).probability(table.drop(columns="c").assign(d=1))
    with pytest.raises(InputError, match="both cones and non-cones"):
        fit_verifier(table, np.ones(len(table), dtype=bool), ["a"])


def test_a_verifier_trained_on_one_field_keeps_the_cones_of_another(tmp_path):
    dem, truth = _dem(tmp_path)
    cands = propose(dem, gpd.GeoSeries([], crs=UTM))
    _, feats = candidate_features(cands, dem, None)
    d = np.array([cands.geometry.centroid.distance(g.centroid).min() for g in truth.geometry])
    assert (d < 100).all()
    dist = np.stack([cands.geometry.centroid.distance(g.centroid) for g in truth.geometry], axis=1)
    ratio = np.stack([np.sqrt(cands.geometry.area) / np.sqrt(g.area) for g in truth.geometry], axis=1)
    y = ((dist < 0.5 * np.sqrt(truth.area.to_numpy() / math.pi)) & (ratio > 0.7) & (ratio < 1.4)).any(axis=1)
    verifier = fit_verifier(feats, y, FEATURES, seed=0, n_trees=50)
    prob = tmp_path / "p.tif"
    with rasterio.open(dem) as ds:
        profile = ds.profile
    with rasterio.open(prob, "w", **profile) as dst:
        dst.write(np.zeros(SHAPE, dtype="float32"), 1)
    kept, rejected = verified_cones(dem, prob, gpd.GeoSeries([], crs=UTM), verifier)
    match = match_cones(truth, kept, EvaluateSettings())
    assert len(match.pairs) == 4 and len(kept) <= 5
    assert kept["second_stage_score"].is_monotonic_decreasing
    assert set(rejected["reason"]) <= {"scored below threshold", "overlaps a higher-scoring cone"}


def test_second_stage_in_worker_processes_equals_one_process(tmp_path, monkeypatch):
    """The outlines and the measurements cut into pieces over 2 forked workers give the same cones,
    scores and rejected candidates as one process."""
    monkeypatch.setattr("cinderseg.cones.detector.PIECE_CANDIDATES", 40)
    monkeypatch.setattr("cinderseg.cones.morphometry.MIN_PIECE", 5)
    monkeypatch.setattr("cinderseg.cones.candidates.MIN_PIECE", 5)
    dem, _ = _dem(tmp_path)
    prob = tmp_path / "p.tif"
    with rasterio.open(dem) as ds:
        profile = ds.profile
    with rasterio.open(prob, "w", **profile) as dst:
        dst.write(np.full(SHAPE, 0.2, dtype="float32"), 1)
    verifier = load_verifier(verifier_path("pretrained"))
    one = verified_cones(dem, prob, gpd.GeoSeries([], crs=UTM), verifier)
    two = verified_cones(dem, prob, gpd.GeoSeries([], crs=UTM), verifier, workers=2)
    assert len(one[0]) >= 4
    for a, b in zip(one, two, strict=True):
        assert len(a) == len(b)
        assert all(x.equals_exact(y, 0) for x, y in zip(a.geometry, b.geometry, strict=True))
        pd.testing.assert_frame_equal(a.drop(columns="geometry"), b.drop(columns="geometry"))


def test_every_missed_cone_gets_the_stage_that_lost_it(tmp_path):
    def disc(x, y, r):
        return Point(x, y).buffer(r)

    truth = gpd.GeoDataFrame(
        geometry=[
            disc(0, 0, 100),
            disc(1000, 0, 100),
            disc(2000, 0, 100),
            disc(2150, 0, 100),
            disc(3000, 0, 100),
            disc(4000, 0, 100),
            disc(5000, 0, 100),
        ],
        crs=UTM,
    )
    cones = gpd.GeoDataFrame(
        geometry=[
            disc(2075, 0, 260),  # holds the centres of cones 2 and 3: merged
            disc(3000, 40, 40),
            disc(3000, -40, 40),  # two halves of cone 4: split
            disc(4000, 0, 400),
        ],  # cone 5, four times too wide: outline off
        crs=UTM,
    )
    rejected = gpd.GeoDataFrame(
        {"reason": ["too low"], "score": [np.nan]}, geometry=[disc(1000, 10, 95)], crs=UTM
    )
    match = match_cones(truth, cones, EvaluateSettings())
    stages = loss_stages(truth, cones, rejected, match, np.ones(7, dtype=bool))
    assert stages == [
        "no object",
        "rejected: too low",
        "merged with a neighbour",
        "merged with a neighbour",
        "split",
        "outline too far off",
        "no object",
    ]
    assert loss_table(stages) == {
        "no object": 2,
        "merged with a neighbour": 2,
        "rejected: too low": 1,
        "split": 1,
        "outline too far off": 1,
    }
    assert loss_stages(truth, cones, rejected, match, np.zeros(7, dtype=bool)) == [None] * 7
