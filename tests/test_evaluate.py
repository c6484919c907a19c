"""Tests of the evaluate step (cinderseg.assess: settings, pixels, matching, evaluate): pixel metrics,
one-to-one cone matching, object metrics, region JSON."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import geopandas as gpd
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin
from rasterio.windows import Window
from shapely.geometry import Point, box

from cinderseg.assess.evaluate import (
    evaluate_objects,
    evaluate_region,
    read_cones,
    summarize_metrics,
    valid_at,
    write_json,
)
from cinderseg.assess.matching import match_by_iou, match_cones, object_metrics
from cinderseg.assess.pixels import pixel_metrics, pixel_metrics_from_polygons
from cinderseg.assess.settings import EvaluateSettings
from cinderseg.core.errors import ConfigError, InputError
from cinderseg.core.raster import MASK_NODATA, NODATA_FLOAT
from cinderseg.workflow.config import validate_config

UTM = "EPSG:32605"
X0, Y0 = 200_000.0, 2_200_000.0  # upper-left corner of the test rasters
RES = 10.0
S = EvaluateSettings()


def circle(x: float, y: float, r: float) -> shapely.Polygon:
    """A circle polygon; its equivalent radius sqrt(A/pi) is within 0.02% of r."""
    return Point(x, y).buffer(r, quad_segs=64)


def cones(*circles: tuple[float, float, float]) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(geometry=[circle(*c) for c in circles], crs=UTM)


def empty() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(geometry=[], crs=UTM)


def pairs_of(match) -> list[tuple[int, int]]:
    return sorted(zip(match.true_idx.tolist(), match.pred_idx.tolist(), strict=True))


def write_raster(
    path: Path, data: np.ndarray, *, nodata: float | int, x0: float = X0, crs: str = UTM
) -> Path:
    profile = {
        "driver": "GTiff",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": str(data.dtype),
        "crs": crs,
        "transform": from_origin(x0, Y0, RES, RES),
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data, 1)
    return path


def no_nan_json(path: Path) -> dict:
    """Parse JSON strictly: NaN / Infinity are rejected."""

    def reject(name: str) -> None:
        raise AssertionError(f"{path} holds {name}")

    return json.loads(path.read_text(), parse_constant=reject)


# --- settings -----------------------------------------------------------------------------------------


def test_settings_defaults_match_schema() -> None:
    cfg = validate_config({"regions": {"a": {"source": "synthetic"}}})
    assert EvaluateSettings.from_config(cfg["evaluate"]) == EvaluateSettings()
    assert S.diameter_classes_m == (0.0, 300.0, 600.0, 1000.0)
    assert (S.center_tolerance, S.radius_tolerance, S.iou_threshold, S.min_diameter_m, S.block_px) == (
        1.0,
        0.5,
        0.5,
        300.0,
        2048,
    )


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"center_tolerance": 0}, "evaluate.center_tolerance:"),
        ({"radius_tolerance": -1}, "evaluate.radius_tolerance:"),
        ({"iou_threshold": 1.5}, "evaluate.iou_threshold:"),
        ({"diameter_classes_m": [0, 600, 300]}, "evaluate.diameter_classes_m:"),
        ({"diameter_classes_m": []}, "evaluate.diameter_classes_m:"),
        ({"min_diameter_m": "big"}, "evaluate.min_diameter_m:"),
        ({"block_px": 10}, "evaluate.block_px:"),
        ({"colour": 1}, "evaluate: unknown key 'colour'"),
    ],
)
def test_settings_errors_are_one_line(values: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        EvaluateSettings.from_config(values)
    assert str(err.value).startswith(key)
    assert "\n" not in str(err.value)


def test_schema_rejects_bad_evaluate_values() -> None:
    with pytest.raises(ConfigError, match=r"evaluate.iou_threshold: 0 must be > 0"):
        validate_config({"regions": {"a": {"source": "synthetic"}}, "evaluate": {"iou_threshold": 0}})


# --- matching by centre and radius ----------------------------------------------------------------------


def test_exact_match() -> None:
    t = cones((0, 0, 100), (1000, 0, 200))
    m = match_cones(t, cones((1000, 0, 200), (0, 0, 100)), S)
    assert pairs_of(m) == [(0, 1), (1, 0)]
    assert m.pairs["cost"].max() < 1e-6
    assert m.pairs["iou"].min() > 0.999
    assert len(m.unmatched_true) == 0 and len(m.unmatched_pred) == 0
    o = object_metrics(t, cones((1000, 0, 200), (0, 0, 100)), m, S)
    assert (o["precision"], o["recall"], o["f1"], o["n_matched"]) == (1.0, 1.0, 1.0, 2)
    assert o["median_relative_diameter_error"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(("dx", "matched"), [(90.0, True), (99.0, True), (110.0, False), (300.0, False)])
def test_centre_offset_tolerance(dx: float, matched: bool) -> None:
    m = match_cones(cones((0, 0, 100)), cones((dx, 0, 100)), S)
    assert len(m.pairs) == int(matched)
    if matched:
        assert m.pairs["center_distance_m"].iloc[0] == pytest.approx(dx, abs=0.01)
        assert m.pairs["cost"].iloc[0] == pytest.approx(dx / 100, abs=1e-3)


def test_centre_tolerance_is_relative_to_the_smaller_radius() -> None:
    # 90 m apart: within 1 x r_true (100) but not within 1 x r_pred (80), the smaller radius.
    assert len(match_cones(cones((0, 0, 100)), cones((90, 0, 80)), S).pairs) == 0
    assert len(match_cones(cones((0, 0, 100)), cones((70, 0, 80)), S).pairs) == 1
    wide = EvaluateSettings(center_tolerance=1.2)
    assert len(match_cones(cones((0, 0, 100)), cones((90, 0, 80)), wide).pairs) == 1


@pytest.mark.parametrize(("r_pred", "matched"), [(140.0, True), (160.0, False), (70.0, True), (60.0, False)])
def test_radius_mismatch(r_pred: float, matched: bool) -> None:
    # |r1 - r2| <= 0.5 * min(r1, r2): 140 (40 <= 50) yes, 160 (60 > 50) no, 70 (30 <= 35) yes, 60 (40 > 30) no
    m = match_cones(cones((0, 0, 100)), cones((0, 0, r_pred)), S)
    assert len(m.pairs) == int(matched)


def test_two_predictions_near_one_truth_match_once_the_better() -> None:
    t = cones((0, 0, 100))
    p = cones((50, 0, 100), (10, 0, 100))
    m = match_cones(t, p, S)
    assert pairs_of(m) == [(0, 1)]
    assert m.unmatched_pred.tolist() == [0]
    o = object_metrics(t, p, m, S)
    assert (o["n_true"], o["n_pred"], o["n_matched"]) == (1, 2, 1)
    assert (o["precision"], o["recall"]) == (0.5, 1.0)
    assert o["f1"] == pytest.approx(2 / 3)


def test_crossing_assignment_hungarian_beats_greedy() -> None:
    # T0 (0,0) and T1 (150,0); P0 (70,0) is admissible for both, P1 (-80,0) only for T0.
    # Greedy by cost takes T0-P0 (0.70) first and then finds nothing for T1: one match.
    t = cones((0, 0, 100), (150, 0, 100))
    p = cones((70, 0, 100), (-80, 0, 100))
    m = match_cones(t, p, S)
    assert pairs_of(m) == [(0, 1), (1, 0)]
    assert m.pairs["cost"].sum() == pytest.approx(0.8 + 0.8, abs=1e-3)
    o = object_metrics(t, p, m, S)
    assert (o["precision"], o["recall"], o["f1"]) == (1.0, 1.0, 1.0)


def test_hungarian_minimises_cost_among_full_matchings() -> None:
    # Both assignments pair everything; the one with the smaller summed cost wins.
    t = cones((0, 0, 100), (100, 0, 100))
    p = cones((10, 0, 100), (90, 0, 100))
    m = match_cones(t, p, S)
    assert pairs_of(m) == [(0, 0), (1, 1)]
    assert m.pairs["cost"].sum() == pytest.approx(0.2, abs=1e-3)


def test_empty_sets_have_defined_metrics(tmp_path: Path) -> None:
    p = cones((0, 0, 100), (500, 0, 100))
    only_pred = object_metrics(empty(), p, match_cones(empty(), p, S), S)
    assert (only_pred["precision"], only_pred["recall"], only_pred["f1"]) == (0.0, None, 0.0)
    only_true = object_metrics(p, empty(), match_cones(p, empty(), S), S)
    assert (only_true["precision"], only_true["recall"], only_true["f1"]) == (None, 0.0, 0.0)
    neither = object_metrics(empty(), empty(), match_cones(empty(), empty(), S), S)
    assert (neither["precision"], neither["recall"], neither["f1"]) == (None, None, None)
    assert neither["median_relative_diameter_error"] is None
    out = tmp_path / "m.json"
    write_json({"a": neither, "b": float("nan"), "c": np.float32(np.inf)}, out)
    data = no_nan_json(out)
    assert data["b"] is None and data["c"] is None
    assert data["a"]["by_diameter"][0]["precision"] is None


def test_many_cones_match_fast() -> None:
    rng = np.random.default_rng(1)
    n = 3000
    xy = rng.uniform(0, 100_000, (n, 2))
    r = rng.uniform(50, 400, n)
    t = gpd.GeoDataFrame(geometry=shapely.buffer(shapely.points(xy), r), crs=UTM)
    shift = rng.uniform(-0.3, 0.3, (n, 2)) * r[:, None] / math.sqrt(2)
    p = gpd.GeoDataFrame(geometry=shapely.buffer(shapely.points(xy + shift), r * 1.2), crs=UTM)
    start = time.perf_counter()
    m = match_cones(t, p.iloc[::-1].reset_index(drop=True), S)
    assert time.perf_counter() - start < 5.0
    assert len(m.pairs) == n
    assert (m.pred_idx == n - 1 - m.true_idx).mean() > 0.99  # overlapping cones may swap partners


def test_predictions_in_another_crs_are_reprojected() -> None:
    t = cones((X0 + 500, Y0 - 500, 150))
    p = cones((X0 + 520, Y0 - 500, 150)).to_crs("EPSG:32604")
    m = match_cones(t, p, S)
    assert len(m.pairs) == 1
    assert m.pairs["center_distance_m"].iloc[0] == pytest.approx(20, abs=0.5)


def test_geographic_crs_is_refused() -> None:
    t = cones((X0, Y0, 100)).to_crs("EPSG:4326")
    with pytest.raises(InputError, match="geographic"):
        match_cones(t, t, S)


# --- matching by IoU -------------------------------------------------------------------------------------


def test_iou_matching() -> None:
    t = cones((0, 0, 100))
    # 90 m apart: admissible by centre (<= 1 x r) but IoU of two r=100 circles 90 m apart is ~0.29.
    far = cones((90, 0, 100))
    assert len(match_cones(t, far, S).pairs) == 1
    assert len(match_by_iou(t, far, 0.5).pairs) == 0
    assert len(match_by_iou(t, far, 0.25).pairs) == 1
    m = match_by_iou(t, cones((40, 0, 100), (20, 0, 100)), 0.5)
    assert pairs_of(m) == [(0, 1)]
    d, r = 20.0, 100.0
    lens = 2 * r * r * math.acos(d / (2 * r)) - (d / 2) * math.sqrt(4 * r * r - d * d)
    assert m.pairs["iou"].iloc[0] == pytest.approx(lens / (2 * math.pi * r * r - lens), rel=1e-3)
    assert m.pairs["cost"].iloc[0] == pytest.approx(1 - m.pairs["iou"].iloc[0])
    assert len(match_by_iou(empty(), t, 0.5).pairs) == 0
    with pytest.raises(ValueError):
        match_by_iou(t, t, 0.0)


# --- object metrics per diameter class ----------------------------------------------------------------


def test_per_class_counting_and_min_diameter_subset() -> None:
    t = cones((0, 0, 100), (2000, 0, 250), (4000, 0, 400), (6000, 0, 600))  # D 200, 500, 800, 1200
    p = cones(
        (0, 0, 120),  # D 240 matches D 200
        (2000, 0, 320),  # D 640 matches D 500: counted in its partner's class [300, 600)
        (8000, 0, 350),  # D 700 unmatched: false positive in its own class [600, 1000)
        (6000, 0, 600),  # D 1200 matches D 1200; D 800 is missed
    )
    m = match_cones(t, p, S)
    assert pairs_of(m) == [(0, 0), (1, 1), (3, 3)]
    o = object_metrics(t, p, m, S)
    assert (o["n_true"], o["n_pred"], o["n_matched"]) == (4, 4, 3)
    assert o["median_relative_diameter_error"] == pytest.approx(0.2, abs=1e-3)  # 0.2, 0.28, 0
    got = {tuple(c["class_m"]): (c["n_true"], c["n_pred"], c["n_matched"]) for c in o["by_diameter"]}
    assert got == {
        (0.0, 300.0): (1, 1, 1),
        (300.0, 600.0): (1, 1, 1),
        (600.0, 1000.0): (1, 1, 0),
        (1000.0, None): (1, 1, 1),
    }
    cls = o["by_diameter"][2]
    assert (cls["precision"], cls["recall"], cls["f1"]) == (0.0, 0.0, 0.0)
    big = o["at_least_min_diameter"]
    assert big["min_diameter_m"] == 300.0
    assert (big["n_true"], big["n_pred"], big["n_matched"]) == (3, 3, 2)
    assert big["precision"] == pytest.approx(2 / 3) and big["recall"] == pytest.approx(2 / 3)


def test_min_diameter_subset_follows_the_true_partner() -> None:
    t = cones((0, 0, 140))  # D 280 < 300
    p = cones((0, 0, 160), (3000, 0, 160))  # D 320: one matched (class of its partner), one false
    m = match_cones(t, p, S)
    assert pairs_of(m) == [(0, 0)]
    big = object_metrics(t, p, m, S)["at_least_min_diameter"]
    assert (big["n_true"], big["n_pred"], big["n_matched"]) == (0, 1, 0)
    assert (big["precision"], big["recall"], big["f1"]) == (0.0, None, 0.0)
    only_match = object_metrics(t, p.iloc[:1], match_cones(t, p.iloc[:1], S), S)["at_least_min_diameter"]
    assert (only_match["n_true"], only_match["n_pred"]) == (0, 0)
    assert only_match["f1"] is None
    custom = EvaluateSettings(min_diameter_m=250, diameter_classes_m=[100, 300])
    o = object_metrics(t, p, m, custom)
    assert (o["at_least_min_diameter"]["n_true"], o["at_least_min_diameter"]["n_matched"]) == (1, 1)
    assert [c["class_m"] for c in o["by_diameter"]] == [[100.0, 300.0], [300.0, None]]
    assert [(c["n_true"], c["n_pred"]) for c in o["by_diameter"]] == [(1, 1), (0, 1)]


# --- pixel metrics ------------------------------------------------------------------------------------

TRUTH = np.array(
    [
        [1, 1, 0, 0, 255],
        [1, 1, 0, 0, 255],
        [0, 0, 0, 1, 1],
        [0, 0, 0, 1, 1],
    ],
    dtype=np.uint8,
)
PROB = np.array(
    [
        [0.9, 0.4, 0.6, 0.1, 0.9],
        [0.8, NODATA_FLOAT, 0.2, 0.1, 0.9],
        [0.1, 0.1, 0.7, 0.5, 0.3],
        [0.0, 0.2, 0.1, 0.95, 0.6],
    ],
    dtype=np.float32,
)


def check_hand_counts(m: dict) -> None:
    # valid: 20 px - 2 mask nodata - 1 prediction nodata = 17; cone by p >= 0.5 (0.5 itself counts)
    assert (m["tp"], m["fp"], m["fn"], m["tn"], m["n_valid_px"]) == (5, 2, 2, 8, 17)
    assert m["iou"] == pytest.approx(5 / 9)
    assert m["f1"] == pytest.approx(10 / 14)
    assert m["precision"] == pytest.approx(5 / 7) and m["recall"] == pytest.approx(5 / 7)


def test_pixel_metrics_probability_with_nodata(tmp_path: Path) -> None:
    mask = write_raster(tmp_path / "mask.tif", TRUTH, nodata=MASK_NODATA)
    prob = write_raster(tmp_path / "prob.tif", PROB, nodata=NODATA_FLOAT)
    m = pixel_metrics(prob, mask, threshold=0.5)
    check_hand_counts(m)
    assert m["threshold"] == 0.5
    check_hand_counts(pixel_metrics(prob, mask, threshold=0.5, block_px=3))


def test_pixel_metrics_uint8_prediction(tmp_path: Path) -> None:
    mask = write_raster(tmp_path / "mask.tif", TRUTH, nodata=MASK_NODATA)
    pred = np.where(PROB >= 0.5, 1, 0).astype(np.uint8)
    pred[PROB == NODATA_FLOAT] = MASK_NODATA
    check_hand_counts(pixel_metrics(write_raster(tmp_path / "pred.tif", pred, nodata=MASK_NODATA), mask))


def test_pixel_metrics_without_positives_is_null_not_nan(tmp_path: Path) -> None:
    mask = write_raster(tmp_path / "mask.tif", np.zeros((4, 4), np.uint8), nodata=MASK_NODATA)
    prob = write_raster(tmp_path / "prob.tif", np.full((4, 4), 0.1, np.float32), nodata=NODATA_FLOAT)
    m = pixel_metrics(prob, mask, threshold=0.5)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (0, 0, 0, 16)
    assert m["iou"] is None and m["f1"] is None and m["precision"] is None and m["recall"] is None


def test_pixel_metrics_need_the_right_kind_of_raster(tmp_path: Path) -> None:
    mask = write_raster(tmp_path / "mask.tif", TRUTH, nodata=MASK_NODATA)
    prob = write_raster(tmp_path / "prob.tif", PROB, nodata=NODATA_FLOAT)
    with pytest.raises(InputError, match="give a threshold"):
        pixel_metrics(prob, mask)
    with pytest.raises(InputError, match="expected a float probability raster"):
        pixel_metrics(mask, mask, threshold=0.5)


def test_pixel_metrics_block_size_invariance(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    h, w = 301, 257
    truth = (rng.random((h, w)) < 0.2).astype(np.uint8)
    truth[rng.random((h, w)) < 0.05] = MASK_NODATA
    prob = rng.random((h, w)).astype(np.float32)
    prob[rng.random((h, w)) < 0.05] = NODATA_FLOAT
    mask = write_raster(tmp_path / "mask.tif", truth, nodata=MASK_NODATA)
    path = write_raster(tmp_path / "prob.tif", prob, nodata=NODATA_FLOAT)
    results = [pixel_metrics(path, mask, threshold=0.7, block_px=b) for b in (7, 64, 100, 2048)]
    assert all(r == results[0] for r in results[1:])
    valid = (truth != MASK_NODATA) & (prob != NODATA_FLOAT)
    p, t = (prob >= 0.7) & valid, (truth == 1) & valid
    assert results[0]["tp"] == int((p & t).sum()) and results[0]["fp"] == int((p & ~t).sum())
    assert results[0]["fn"] == int((~p & t).sum()) and results[0]["n_valid_px"] == int(valid.sum())


def test_pixel_metrics_from_polygons(tmp_path: Path) -> None:
    truth = np.zeros((20, 20), np.uint8)
    truth[5:10, 5:10] = 1
    truth[:, 18:] = MASK_NODATA
    mask = write_raster(tmp_path / "mask.tif", truth, nodata=MASK_NODATA)
    # rows 7-11, cols 5-9 (pixel centres inside); a second square falls on the nodata columns only
    square = box(X0 + 5 * RES, Y0 - 12 * RES, X0 + 10 * RES, Y0 - 7 * RES)
    on_nodata = box(X0 + 18 * RES, Y0 - 4 * RES, X0 + 20 * RES, Y0)
    polys = gpd.GeoDataFrame(geometry=[square, on_nodata], crs=UTM)
    results = [pixel_metrics_from_polygons(polys, mask, block_px=b) for b in (3, 8, 2048)]
    assert all(r == results[0] for r in results[1:])
    m = results[0]
    assert (m["tp"], m["fp"], m["fn"], m["n_valid_px"]) == (15, 10, 10, 360)
    assert m["iou"] == pytest.approx(15 / 35)
    none = pixel_metrics_from_polygons(empty(), mask)
    assert (none["tp"], none["fp"], none["fn"], none["precision"], none["recall"]) == (0, 0, 25, None, 0.0)


def test_grid_mismatch_is_one_line_naming_both_files(tmp_path: Path) -> None:
    mask = write_raster(tmp_path / "mask.tif", TRUTH, nodata=MASK_NODATA)
    shifted = write_raster(tmp_path / "shifted.tif", PROB, nodata=NODATA_FLOAT, x0=X0 + RES)
    smaller = write_raster(tmp_path / "smaller.tif", PROB[:3], nodata=NODATA_FLOAT)
    other_crs = write_raster(tmp_path / "crs.tif", PROB, nodata=NODATA_FLOAT, crs="EPSG:32606")
    for pred in (shifted, smaller, other_crs):
        with pytest.raises(InputError) as err:
            pixel_metrics(pred, mask, threshold=0.5, region="mk")
        msg = str(err.value)
        assert "\n" not in msg and str(pred) in msg and str(mask) in msg and "region 'mk'" in msg


def test_missing_rasters_are_input_errors(tmp_path: Path) -> None:
    mask = write_raster(tmp_path / "mask.tif", TRUTH, nodata=MASK_NODATA)
    with pytest.raises(InputError, match=r"prediction of region 'mk'.*not found"):
        pixel_metrics(tmp_path / "nope.tif", mask, threshold=0.5, region="mk")


# --- validity, region JSON, error map, summary ----------------------------------------------------------


def test_only_cones_centred_on_valid_pixels_count(tmp_path: Path) -> None:
    truth = np.zeros((100, 100), np.uint8)
    truth[:, 50:] = MASK_NODATA  # the east half is nodata
    mask = write_raster(tmp_path / "mask.tif", truth, nodata=MASK_NODATA)
    assert valid_at(mask, [X0 + 5, X0 + 505, X0 - 5, np.nan], [Y0 - 5] * 4, block_px=64).tolist() == [
        True,
        False,
        False,
        False,
    ]
    c = (X0 + 250, Y0 - 500)
    t = cones(
        (c[0], c[1], 100),  # valid, matched
        (X0 + 750, Y0 - 200, 100),  # on nodata, missed: not counted
        (X0 + 470, Y0 - 800, 100),  # valid; its match's centroid is on nodata: the pair counts
    )
    p = cones(
        (c[0] + 10, c[1], 100),
        (X0 + 530, Y0 - 800, 100),  # on nodata, matched to a valid true cone
        (X0 + 800, Y0 - 600, 100),  # on nodata, unmatched: not counted
        (X0 + 200, Y0 - 200, 100),  # valid, unmatched: a false positive
    )
    objects, match = evaluate_objects(t, p, mask, S)
    assert len(match.pairs) == 2
    assert (objects["n_true"], objects["n_pred"], objects["n_matched"]) == (2, 3, 2)
    assert (objects["n_true_outside_valid"], objects["n_pred_outside_valid"]) == (1, 2)
    assert objects["recall"] == 1.0 and objects["precision"] == pytest.approx(2 / 3)
    assert objects["iou50"]["n_matched"] == 1  # the 60 m offset pair has IoU ~0.45 < 0.5


def make_region(tmp_path: Path) -> dict:
    """A 200 x 200 px (2 km) region with three labelled cones, a probability raster and cone layers."""
    h = w = 200
    rows, cols = np.mgrid[0:h, 0:w]
    xs, ys = X0 + (cols + 0.5) * RES, Y0 - (rows + 0.5) * RES
    labels = cones((X0 + 400, Y0 - 400, 160), (X0 + 1400, Y0 - 600, 200), (X0 + 1000, Y0 - 1500, 100))
    z = np.full((h, w), 1000.0)
    truth = np.zeros((h, w), np.uint8)
    for g in labels.geometry:
        cx, cy, r = g.centroid.x, g.centroid.y, math.sqrt(g.area / math.pi)
        d = np.hypot(xs - cx, ys - cy)
        z += np.clip(1 - d / r, 0, None) * 0.3 * r
        truth[d <= r] = 1
    z[:, :10] = NODATA_FLOAT
    truth[:, :10] = MASK_NODATA
    prob = np.where(truth == 1, 0.9, 0.1).astype(np.float32)
    prob[:, :10] = NODATA_FLOAT
    net = cones((X0 + 420, Y0 - 400, 140), (X0 + 1400, Y0 - 600, 210), (X0 + 300, Y0 - 1700, 80))
    net["cone_id"] = [1, 2, 3]
    base = cones((X0 + 400, Y0 - 400, 160))
    paths = {
        "dem": write_raster(tmp_path / "dem.tif", z.astype(np.float32), nodata=NODATA_FLOAT),
        "mask": write_raster(tmp_path / "mask.tif", truth, nodata=MASK_NODATA),
        "prob": write_raster(tmp_path / "prob.tif", prob, nodata=NODATA_FLOAT),
        "cones": tmp_path / "cones.gpkg",
        "baseline": tmp_path / "baseline.gpkg",
    }
    net.to_file(paths["cones"], layer="cones")
    base.to_file(paths["baseline"], layer="cones")
    return {"labels": labels, **paths}


def test_evaluate_region_json_error_map_and_summary(tmp_path: Path) -> None:
    r = make_region(tmp_path)
    out = tmp_path / "metrics" / "demo.json"
    png = tmp_path / "figures" / "errors.png"
    result = evaluate_region(
        region="demo",
        mask_path=r["mask"],
        labels=r["labels"],
        cones_path=r["cones"],
        probability_path=r["prob"],
        threshold=0.5,
        baseline_path=r["baseline"],
        dem_path=r["dem"],
        out_json=out,
        error_map_path=png,
        settings=S,
    )
    data = no_nan_json(out)
    assert data == result
    assert {
        "region",
        "threshold",
        "settings",
        "pixel",
        "objects",
        "baseline",
        "network_minus_baseline_f1",
    } <= set(data)
    assert data["region"] == "demo" and data["threshold"] == 0.5
    assert {"iou", "f1", "precision", "recall", "tp", "fp", "fn", "n_valid_px"} <= set(data["pixel"])
    assert data["pixel"]["iou"] == 1.0 and data["pixel"]["n_valid_px"] == 200 * 190
    o = data["objects"]
    assert {
        "precision",
        "recall",
        "f1",
        "n_true",
        "n_pred",
        "n_matched",
        "median_relative_diameter_error",
    } <= set(o)
    assert (o["n_true"], o["n_pred"], o["n_matched"]) == (3, 3, 2)
    assert [c["class_m"] for c in o["by_diameter"]] == [[0, 300], [300, 600], [600, 1000], [1000, None]]
    assert {"n_true", "n_pred", "precision", "recall", "f1"} <= set(o["by_diameter"][0])
    assert o["at_least_min_diameter"]["n_true"] == 2 and o["at_least_min_diameter"]["recall"] == 1.0
    assert {"precision", "recall", "f1", "n_matched"} <= set(o["iou50"])
    b = data["baseline"]
    assert (b["objects"]["n_true"], b["objects"]["n_pred"], b["objects"]["n_matched"]) == (3, 1, 1)
    assert 0 < b["pixel"]["recall"] < 1
    assert data["network_minus_baseline_f1"]["objects"] == pytest.approx(o["f1"] - b["objects"]["f1"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = plt.imread(png)  # a real picture, not a blank stub
    assert image.shape[0] > 300 and image.shape[1] > 300 and image[..., :3].std() > 0.05

    table = summarize_metrics([out], tmp_path / "summary.csv")
    csv = pd.read_csv(tmp_path / "summary.csv")
    assert list(csv["method"]) == ["network", "baseline"] and len(table) == 2
    assert csv.loc[0, "object_f1"] == pytest.approx(o["f1"], abs=1e-4)
    assert csv.loc[1, "n_pred"] == 1 and math.isnan(csv.loc[1, "threshold"])


def test_evaluate_region_scores_only_the_given_area(tmp_path: Path) -> None:
    """Two halves of the region (cross-validation blocks): every method is scored on the cones
    centred in the half and its pixels; a cone centred on the dividing line belongs to the east half."""
    r = make_region(tmp_path)
    west, east = Window(0, 0, 100, 200), Window(100, 0, 100, 200)
    results = {}
    for name, area in (("west", west), ("east", east)):
        results[name] = evaluate_region(
            region="demo",
            mask_path=r["mask"],
            labels=r["labels"],
            cones_path=r["cones"],
            probability_path=r["prob"],
            threshold=0.5,
            baseline_path=r["baseline"],
            dem_path=r["dem"],
            out_json=tmp_path / f"{name}.json",
            error_map_path=tmp_path / f"{name}.png",
            settings=S,
            area=area,
            fold={"name": f"demo-{name}"},
        )
    w, e = results["west"], results["east"]
    assert w["area"] == {"row_off": 0, "col_off": 0, "height": 200, "width": 100,
                         "bounds": [X0, Y0 - 2000, X0 + 1000, Y0]}  # fmt: skip
    assert w["fold"] == {"name": "demo-west"} and no_nan_json(tmp_path / "west.json") == w
    net = {k: (w["objects"][k], e["objects"][k]) for k in ("n_true", "n_pred", "n_matched")}
    assert net == {"n_true": (1, 2), "n_pred": (2, 1), "n_matched": (1, 1)}
    assert (w["objects"]["n_true_outside_area"], w["objects"]["n_pred_outside_area"]) == (2, 1)
    base = {k: (w["baseline"]["objects"][k], e["baseline"]["objects"][k]) for k in ("n_true", "n_pred")}
    assert base == {"n_true": (1, 2), "n_pred": (1, 0)}
    # pixel metrics over the half only (the 10 westmost columns are nodata)
    assert (w["pixel"]["n_valid_px"], e["pixel"]["n_valid_px"]) == (200 * 90, 200 * 100)
    assert w["baseline"]["pixel"]["n_valid_px"] == 200 * 90
    whole = evaluate_region(
        region="demo", mask_path=r["mask"], labels=r["labels"], cones_path=r["cones"],
        probability_path=r["prob"], threshold=0.5, baseline_path=r["baseline"], dem_path=r["dem"],
        out_json=tmp_path / "whole.json", settings=S,
    )  # fmt: skip
    for key in ("tp", "fp", "fn", "tn"):
        assert w["pixel"][key] + e["pixel"][key] == whole["pixel"][key]
    assert "area" not in whole and "n_true_outside_area" not in whole["objects"]
    with pytest.raises(InputError, match="does not lie within the raster"):
        pixel_metrics(r["prob"], r["mask"], threshold=0.5, area=Window(150, 0, 100, 200))


def test_evaluate_region_with_no_predicted_cones(tmp_path: Path) -> None:
    r = make_region(tmp_path)
    none = tmp_path / "none.gpkg"
    empty().to_file(none, layer="cones")
    assert len(read_cones(none)) == 0
    out = tmp_path / "m.json"
    evaluate_region(
        region="demo",
        mask_path=r["mask"],
        labels=r["labels"],
        cones_path=none,
        probability_path=None,  # pixel metrics from the (absent) polygons
        threshold=None,
        dem_path=r["dem"],
        out_json=out,
        error_map_path=tmp_path / "e.png",
    )
    data = no_nan_json(out)
    assert data["objects"]["precision"] is None and data["objects"]["recall"] == 0.0
    assert data["pixel"]["precision"] is None and data["pixel"]["tp"] == 0
    assert "baseline" not in data
    assert (tmp_path / "e.png").stat().st_size > 0


def test_unreadable_inputs_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gpkg"
    bad.write_text("not a geopackage")
    with pytest.raises(InputError, match=r"network cones of region 'x': not a readable vector file"):
        read_cones(bad, what="network cones of region 'x'")
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    with pytest.raises(InputError, match="not an evaluate metrics file"):
        summarize_metrics([broken], tmp_path / "s.csv")
    assert not (tmp_path / "s.csv").exists()
