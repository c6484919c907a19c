"""Tests of cinderseg.nn.calibrate: the temperature of an over- or under-confident predictor, F1 table."""

from __future__ import annotations

import numpy as np
import pytest

from cinderseg.nn.calibrate import (
    THRESHOLDS,
    LogitHistogram,
    apply_temperature,
    calibration_report,
    fit_temperature,
    logit,
    sigmoid,
)


def toy_validation(sharpness: float, n: int = 200_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pixels whose true cone probability is q (labels drawn from it) and a predictor that says
    sigmoid(sharpness x logit(q)): overconfident for sharpness > 1, timid below 1."""
    rng = np.random.default_rng(seed)
    q = sigmoid(rng.normal(-1.5, 2.0, n))
    labels = (rng.random(n) < q).astype(np.uint8)
    return sigmoid(sharpness * logit(q)).astype(np.float32), labels


def direct_bce(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p.astype(np.float64), 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


@pytest.mark.parametrize(("sharpness", "lo", "hi"), [(3.0, 2.7, 3.3), (0.5, 0.45, 0.55)])
def test_temperature_undoes_over_and_under_confidence(sharpness: float, lo: float, hi: float) -> None:
    p, y = toy_validation(sharpness)
    hist = LogitHistogram()
    hist.add(p[:100_000], y[:100_000])
    hist.add(p[100_000:], y[100_000:])  # accumulates
    assert hist.pixels == p.size
    assert hist.bce(1.0) == pytest.approx(direct_bce(p, y), rel=1e-3)
    t = fit_temperature(hist)
    assert lo < t < hi and (t > 1) == (sharpness > 1)
    calibrated = apply_temperature(p, t)
    assert direct_bce(calibrated, y) < direct_bce(p, y) - 0.01
    assert hist.bce(t) == pytest.approx(direct_bce(calibrated, y), rel=1e-3)
    # no temperature does better (the search found the minimum)
    for other in (0.8 * t, 1.25 * t):
        assert hist.bce(other) > hist.bce(t)


def test_temperature_one_is_the_identity_and_the_report() -> None:
    p, y = toy_validation(3.0, n=50_000)
    assert apply_temperature(p, 1.0) is p
    hist = LogitHistogram()
    hist.add(p, y)
    report = calibration_report(hist)
    assert report["temperature"] > 1 and report["val_bce"] < report["val_bce_uncalibrated"]
    assert [r["threshold"] for r in report["threshold_scores"]] == list(THRESHOLDS)
    # pixel scores at each threshold equal those counted directly on the calibrated probabilities
    calibrated = apply_temperature(p, report["temperature"])
    for row in report["threshold_scores"]:
        pred = calibrated >= row["threshold"]
        tp, fp, fn = (pred & (y == 1)).sum(), (pred & (y == 0)).sum(), (~pred & (y == 1)).sum()
        assert row["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=2e-3)
    best = max(r["f1"] for r in report["threshold_scores"])
    assert report["best_f1"] == best and report["best_threshold_at_edge"] == (
        report["best_threshold"] in (0.1, 0.9)
    )
    # the 0.5 decision does not depend on T; without fitting, T = 1
    plain = calibration_report(hist, fit=False)
    assert plain["temperature"] == 1.0 and plain["val_bce"] == plain["val_bce_uncalibrated"]
    assert plain["threshold_scores"][4]["f1"] == report["threshold_scores"][4]["f1"]
    # one class only: nothing to fit
    only_background = LogitHistogram()
    only_background.add(p, np.zeros_like(y))
    assert fit_temperature(only_background) == 1.0


@pytest.mark.parametrize("temperature", [0.5, 1.89, 3.0])
def test_the_float32_temperature_equals_the_logit_formula(temperature: float) -> None:
    """What every window goes through equals sigmoid(logit(p) / T) in float64, but at saturated pixels."""
    rng = np.random.default_rng(1)
    p = np.concatenate([rng.random(100_000), rng.random(1000) ** 20, 1 - rng.random(1000) ** 20, [0.0, 1.0]])
    p = p.astype(np.float32)
    got = apply_temperature(p, temperature)
    expected = sigmoid(logit(p) / temperature)
    assert got.dtype == np.float32 and got.shape == p.shape
    saturated = p > np.float32(1 - 1e-6)
    np.testing.assert_allclose(got[~saturated], expected[~saturated], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[saturated], expected[saturated], rtol=0, atol=1e-4)
    assert np.all(np.diff(apply_temperature(np.sort(p), temperature)) >= 0), "monotone"
