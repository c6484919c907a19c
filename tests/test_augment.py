"""Tests of cinderseg.data.augment: a cone stays a cone under vertical exaggeration and zoom.

The reference is always the features step itself (cinderseg.terrain.features.compute_features) run on the
transformed DEM: an exaggerated copy ``f * z`` for the exaggeration, the same analytic terrain
sampled at ``res / s`` for the zoom.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from cinderseg.data.augment import (
    APPROXIMATE,
    EXACT,
    NOT_TRANSFORMED,
    augment_tile,
    exaggerate_channels,
    exaggeration_report,
    shape_draws,
    zoom_pair,
)
from cinderseg.terrain.features import CHANNELS, FeatureSettings, compute_features

N, RES = 96, 30.0
ALTITUDE = 30.0  # a low sun, so that the steep flank facing away from it is in shadow (clipped to 0)
SETTINGS = FeatureSettings(channels=CHANNELS, local_relief_radius_m=600.0, hillshade_altitude_deg=ALTITUDE)
SUMMIT = (40.0, 52.0)  # row, col of the cone's summit in the 96 px tile
RANGES = {name: (-1.0, 1.0) if name in ("curvature", "local_relief") else (0.0, 1.0) for name in CHANNELS}


def cone_dem(n: int = N, res: float = RES, *, f: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth cone (basal radius 600 m, 270 m high, flanks up to 35 deg) on a tilted plane, sampled
    on ``n`` px of ``res`` m centred on the 96 px tile's centre, heights above 1200 m times ``f``;
    and its footprint (the mask)."""
    c0, c = (N - 1) / 2, (n - 1) / 2
    rows, cols = np.mgrid[0:n, 0:n].astype(np.float64)
    north, east = (rows - c) * res, (cols - c) * res
    r = np.hypot(north - (SUMMIT[0] - c0) * RES, east - (SUMMIT[1] - c0) * RES) / 600.0
    z = 0.05 * east - 0.02 * north + 270.0 * np.clip(1 - r * r, 0, None) ** 2
    return 1200.0 + f * z, r < 1


def channels_of(tmp_path: Path, z: np.ndarray, res: float = RES) -> np.ndarray:
    """The features step's channels (H, W, C) of DEM ``z``."""
    dem, out = tmp_path / f"dem{len(list(tmp_path.iterdir()))}.tif", tmp_path / "features.tif"
    profile = {"driver": "GTiff", "width": z.shape[1], "height": z.shape[0], "count": 1,
               "dtype": "float32", "crs": "EPSG:32605", "nodata": -9999.0,
               "transform": Affine(res, 0, 2e5, 0, -res, 2.2e6)}  # fmt: skip
    with rasterio.open(dem, "w", **profile) as ds:
        ds.write(z.astype(np.float32), 1)
    compute_features(dem, out, SETTINGS)
    with rasterio.open(out) as ds:
        return ds.read().transpose(1, 2, 0)


@pytest.fixture(scope="module")
def cone(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    d = tmp_path_factory.mktemp("cone")
    z, mask = cone_dem()
    x = channels_of(d, z).astype(np.float16).astype(np.float32)  # as stored in the tiles
    truth = {f: channels_of(d, cone_dem(f=f)[0]) for f in (0.5, 1.6)}
    zoomed = {
        s: (channels_of(d, cone_dem(N, RES / s)[0], RES / s), cone_dem(N, RES / s)[1]) for s in (0.7, 1.4)
    }
    return {"x": x, "mask": mask[..., None].astype(np.uint8), "truth": truth, "zoomed": zoomed}


def band(x: np.ndarray, name: str) -> np.ndarray:
    return x[2:-2, 2:-2, CHANNELS.index(name)]  # away from the raster's edge (extrapolated derivatives)


@pytest.mark.parametrize("f", [0.5, 1.6])
def test_exaggeration_equals_the_features_of_the_exaggerated_dem(cone: dict, f: float) -> None:
    x, truth = cone["x"], cone["truth"][f]
    out = exaggerate_channels(x, CHANNELS, f, ALTITUDE)
    assert (band(x, "hillshade") == 0).sum() > 20, "the test cone must have shadowed (clipped) pixels"
    assert (band(truth, "sobel") == 1).any() or f < 1, "steeper than 45 deg: sobel clipped at 1"
    # exact up to the float16 storage of the tiles
    for name in ("slope", "sobel", "curvature", "elevation", "clahe"):
        assert np.abs(band(out, name) - band(truth, name)).max() < 5e-4, name
    hs, hs_true, hs_old = band(out, "hillshade"), band(truth, "hillshade"), band(x, "hillshade")
    lit = hs_old > 0
    assert np.abs(hs - hs_true)[lit].max() < 2e-3, "lit pixels: exact"
    if f > 1:
        assert np.array_equal(hs[~lit], hs_true[~lit]) and not hs[~lit].any(), "steeper: shadow stays"
    else:  # a lower sun-facing term is only bounded in shadow: the estimate and the truth share a bound
        s_old = np.radians(band(x, "slope") * 90.0)[~lit]
        s_new = np.radians(band(out, "slope") * 90.0)[~lit]
        most = math.sin(math.radians(ALTITUDE)) * np.sin(s_old - s_new) / np.sin(s_old)
        assert (hs[~lit] <= most + 1e-3).all() and (hs_true[~lit] <= most + 1e-3).all()
        assert np.abs(hs - hs_true)[~lit].max() < 0.05
    # local_relief is unchanged; the truth differs only where the RMS floor binds, by a factor in [1, f]
    relief, relief_true = band(out, "local_relief"), band(truth, "local_relief")
    assert np.array_equal(relief, band(x, "local_relief"))
    assert (np.abs(relief_true - relief) <= abs(f - 1) * np.abs(relief) + 2e-3).all()


def test_the_report_says_what_cannot_be_transformed() -> None:
    report = exaggeration_report(CHANNELS)
    assert report["slope"][0] == EXACT and report["elevation"][0] == EXACT and report["sobel"][0] == EXACT
    assert report["local_relief"][0] == APPROXIMATE and "10 m" in report["local_relief"][1]
    assert exaggeration_report(["sobel"])["sobel"][0] == APPROXIMATE
    assert exaggeration_report(["local_relief", "hillshade"])["hillshade"][0] == NOT_TRANSFORMED
    assert exaggeration_report(["sobel", "hillshade"])["hillshade"][0] == APPROXIMATE
    # without slope or sobel, the hillshade stays as it is (and is reported so)
    x = np.random.default_rng(0).random((8, 8, 2)).astype(np.float32)
    out = exaggerate_channels(x, ["local_relief", "hillshade"], 1.5, 45.0)
    assert np.array_equal(out, x)


@pytest.mark.parametrize("s", [0.7, 1.4])
def test_zoom_is_the_cone_at_a_finer_or_coarser_resolution(cone: dict, s: float) -> None:
    x, mask = cone["x"], cone["mask"]
    xz, yz = zoom_pair(x, mask, s)
    truth, truth_mask = cone["zoomed"][s]
    assert xz.shape == x.shape and yz.shape == mask.shape and yz.dtype == mask.dtype
    # the mask still covers the summit (moved away from the centre by s) and its area scales by s^2
    c = (N - 1) / 2
    summit = (round(c + s * (SUMMIT[0] - c)), round(c + s * (SUMMIT[1] - c)))
    assert yz[summit[0], summit[1], 0] == 1
    assert yz.sum() / mask.sum() == pytest.approx(s * s, rel=0.03)
    # where the zoomed tile comes from inside the old one (no mirrored border), it is the terrain at
    # res / s: the same mask, and the resolution-independent channels within interpolation error
    inside = np.abs(np.arange(N) - c) / s <= c - 3
    sel = np.ix_(inside, inside)
    assert (yz[..., 0][sel] == truth_mask[sel]).mean() > 0.99
    for name in ("slope", "sobel", "hillshade", "curvature"):
        k = CHANNELS.index(name)
        err = np.abs(xz[..., k] - truth[..., k])[sel]
        assert np.median(err) < 2e-3 and np.percentile(err, 95) < 0.02 and err.max() < 0.1, name


def test_zoom_out_fills_the_border_by_mirroring_tile_and_mask_alike() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((32, 32, 2)).astype(np.float32)
    y = (rng.random((32, 32, 1)) < 0.3).astype(np.uint8)
    x[..., 0] = y[..., 0]  # channel 0 is the mask: nearest and bilinear sampling must agree on it
    xz, yz = zoom_pair(x, y, 0.5)
    exact = np.isin(xz[..., 0], (0.0, 1.0))  # pixels sampled at whole source pixels
    assert exact.sum() > 200 and np.array_equal(xz[..., 0][exact], yz[..., 0][exact])
    assert yz[0].any() and yz[-1].any(), "the border is filled (by reflection), not left empty"


def test_identity_determinism_and_ranges(cone: dict) -> None:
    x, mask = cone["x"], cone["mask"]
    same, same_mask = augment_tile(x, mask, CHANNELS, exaggeration=1.0, scale=1.0, altitude_deg=ALTITUDE)
    assert np.array_equal(same, x) and np.array_equal(same_mask, mask)
    draws = {"seed": 5, "relief_exaggeration": [0.4, 1.6], "resolution_scale": [0.7, 1.4]}
    f, s = shape_draws(2000, 3, **draws)
    f2, s2 = shape_draws(2000, 3, **draws)
    other, _ = shape_draws(2000, 4, **draws)
    assert np.array_equal(f, f2) and np.array_equal(s, s2) and not np.array_equal(f, other)
    assert 0.4 <= f.min() and f.max() <= 1.6 and 0.7 <= s.min() and s.max() <= 1.4
    # log-uniform: as many draws below 1 as above for a range symmetric in log ([0.7, 1/0.7])
    _, s_sym = shape_draws(4000, 0, seed=1, relief_exaggeration=None, resolution_scale=[0.7, 1 / 0.7])
    assert (s_sym < 1).mean() == pytest.approx(0.5, abs=0.03)
    # switching one augmentation off leaves the other's draws as they were; off means factor 1
    f_only, s_off = shape_draws(2000, 3, seed=5, relief_exaggeration=[0.4, 1.6], resolution_scale=None)
    assert np.array_equal(f_only, f) and (s_off == 1).all()
    for fi, si in zip(f[:6], s[:6], strict=True):
        xa, ya = augment_tile(x, mask, CHANNELS, exaggeration=fi, scale=si, altitude_deg=ALTITUDE)
        assert set(np.unique(ya)) <= {0, 1} and np.isfinite(xa).all()
        for k, name in enumerate(CHANNELS):
            lo, hi = RANGES[name]
            assert lo <= xa[..., k].min() and xa[..., k].max() <= hi, name
    # the zero fill of nodata pixels stays zero
    zeros = np.zeros((8, 8, len(CHANNELS)), np.float32)
    assert not exaggerate_channels(zeros, CHANNELS, 0.5, ALTITUDE).any()
