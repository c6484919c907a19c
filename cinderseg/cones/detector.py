"""The classical cinder-cone detector (LoG blobs outlined by radial profiles), which needs no training.

Cones are found as blobs of a scale-normalised Laplacian of Gaussian (LoG) of the DEM and outlined from
radial relief profiles. Everything is in the DEM's metric CRS: lengths in metres, slopes in degrees.

1. Scale space. ``n_scales`` scales ``sigma = SIGMA_PER_RADIUS * r`` with basal radii ``r`` spaced
   geometrically from ``min_diameter_m / 2`` (at least :data:`MIN_RADIUS_PX` pixels) to
   ``max_diameter_m / 2``. The DEM is smoothed by a locally linear Gaussian fit (first-order normalised
   convolution: at each pixel, the value of the plane fitted by Gaussian-weighted least squares to the
   valid elevations around it). On a full neighbourhood that is the Gaussian mean; next to voids and the
   raster edge it is exact for planes, so voids, edges and regional slopes make no blobs. The response
   at a scale is the difference of neighbouring smoothings (difference of Gaussians) scaled to
   ``-2 sigma^2 LoG(z)`` in metres: about the height of a Gaussian hill of matching width (a cone of
   height h scores about 0.8-1.3 h; pits, valleys and planes score <= 0).
2. Candidates: maxima of the response over 3 x 3 pixels at each scale, at least ``min_response_m``,
   at valid pixels. Scales are not compared with each other: a cone on a larger hill (a summit
   dome) keeps its own maximum.
3. Outline (:mod:`cinderseg.cones.outline`): from the candidate's centre, radial relief profiles are
   followed outward to the toe (relief back to zero, the foot of the flank, a saddle with a
   neighbour, or nodata); the outline is the star polygon of these basal radii.
4. Filters: basal diameter ``2 sqrt(area / pi)`` within ``min_diameter_m .. max_diameter_m``; height
   above the base plane at least ``min_relief_m``; roundness (minor / major axis of the outline's
   inertia ellipse) at least ``min_roundness``; mean flank slope ``atan(2 height / diameter)`` (the
   slope of a plain cone of that height and base; resolution-robust, unlike pixel slopes) within
   ``min_flank_slope_deg .. max_flank_slope_deg``; at least half of the outline on valid pixels.
   Of overlapping detections (intersection above ``max_overlap`` of the smaller one) the stronger
   response is kept.

Computation is windowed: blocks of ``block_px`` with a halo (:func:`halo_px`, more than
``max_diameter_m``) covering the largest smoothing kernel and the largest candidate window, so memory
does not grow with the raster. A candidate belongs to the block whose core holds its centre pixel, and
the overlap suppression runs once over the detections of all blocks (a list of polygons), so the
result does not depend on ``block_px``. Peak memory is about 15 float64 arrays of a padded block:
1.1 GB with 2048 px blocks at 10 m (measured on a 10000 x 10000 DEM), less at coarser resolution.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import scipy.fft
import shapely
from scipy import ndimage

from cinderseg.cones.outline import (
    WINDOW_REACH,
    outlines_at,
    read_padded,
    star_vertices,
    suppress_overlaps,
)
from cinderseg.core.errors import ConfigError, InputError
from cinderseg.core.grid import check_metric_grid, what
from cinderseg.core.parallel import fork_map
from cinderseg.core.raster import iter_windows, open_raster
from cinderseg.core.schema import section_default, validate_section

log = logging.getLogger(__name__)

__all__ = ["DETECTION_COLUMNS", "BaselineSettings", "detect_cones", "halo_px"]

SIGMA_PER_RADIUS = 0.5
"""LoG scale matched to a cone of basal radius r: sigma = 0.5 r. Measured on synthetic cones (straight
flanks, with and without craters, 10-90 m pixels): their response peaks near sigma = 0.5 r, below the
r / sqrt(2) of a Gaussian blob."""
MIN_RADIUS_PX = 1.5
"""Smallest basal radius (pixels) the scale space looks for: smaller cones are not resolved by the DEM."""
KERNEL_TRUNCATE = 3.0
"""Smoothing kernels are cut at this many standard deviations."""
MIN_WEIGHT = 0.3
"""A smoothed value needs at least this fraction of its Gaussian weight on valid pixels."""
GDAL_CACHE_BYTES = 64 * 1024 * 1024
"""GDAL block cache while the step runs (bytes), as in cinderseg.data.mask."""

#: Columns of :func:`detect_cones` besides the geometry.
DETECTION_COLUMNS: tuple[str, ...] = ("score", "scale_radius_m", "relief_m", "roundness", "flank_slope_deg")


@dataclass(frozen=True)
class BaselineSettings:
    """The config's ``baseline`` section (meaning of each key: the schema).

    Lengths in metres, slopes in degrees, the response in metres of relief.
    """

    min_diameter_m: float = section_default("baseline", "min_diameter_m")
    max_diameter_m: float = section_default("baseline", "max_diameter_m")
    n_scales: int = section_default("baseline", "n_scales")
    min_response_m: float = section_default("baseline", "min_response_m")
    min_relief_m: float = section_default("baseline", "min_relief_m")
    min_roundness: float = section_default("baseline", "min_roundness")
    min_flank_slope_deg: float = section_default("baseline", "min_flank_slope_deg")
    max_flank_slope_deg: float = section_default("baseline", "max_flank_slope_deg")
    max_overlap: float = section_default("baseline", "max_overlap")
    block_px: int = section_default("baseline", "block_px")

    def __post_init__(self) -> None:
        validate_section("baseline", asdict(self))
        for low, high in (
            ("min_diameter_m", "max_diameter_m"),
            ("min_flank_slope_deg", "max_flank_slope_deg"),
        ):
            if getattr(self, high) <= getattr(self, low):
                raise ConfigError(
                    f"baseline.{high}: must be larger than baseline.{low} ({getattr(self, low)!r}), "
                    f"got {getattr(self, high)!r}"
                )

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> BaselineSettings:
        """Settings from the config's ``baseline`` section (missing keys take the schema's defaults)."""
        return cls(**validate_section("baseline", section))


# --------------------------------------------------------------------------- scale space


@dataclass(frozen=True)
class _Scales:
    """Response scales ``sigma`` (n, pixels), smoothing scales ``smooth`` (n + 1, pixels) between
    and around them, and their ratio."""

    sigma: np.ndarray
    smooth: np.ndarray
    ratio: float


def _scales(settings: BaselineSettings, res: float) -> _Scales:
    r_min = max(settings.min_diameter_m / 2.0 / res, MIN_RADIUS_PX)
    r_max = max(settings.max_diameter_m / 2.0 / res, 1.5 * r_min)
    n = settings.n_scales
    ratio = (r_max / r_min) ** (1.0 / (n - 1))
    sigma = SIGMA_PER_RADIUS * r_min * ratio ** np.arange(n)
    smooth = SIGMA_PER_RADIUS * r_min * ratio ** (np.arange(n + 1) - 0.5)
    return _Scales(sigma=sigma, smooth=smooth, ratio=ratio)


def halo_px(settings: BaselineSettings, resolution_m: float) -> int:
    """Halo (pixels) around each block: the largest smoothing kernel and the largest candidate window
    (2.6 times the largest basal radius, so more than ``max_diameter_m``)."""
    sc = _scales(settings, resolution_m)
    kernel = math.ceil(KERNEL_TRUNCATE * float(sc.smooth[-1])) + 2
    window = math.ceil(WINDOW_REACH * float(sc.sigma[-1]) / SIGMA_PER_RADIUS) + 3
    return max(kernel, window)


def _kernel_spectra(sigma: float, n: int, *, real: bool) -> list[np.ndarray]:
    """1-D spectra of the Gaussian times offset^a (a = 0, 1, 2), placed circularly on ``n`` samples.

    The Gaussian is sampled to +-KERNEL_TRUNCATE sigma and normalised to sum 1; ``real``: rfft spectra.
    """
    half = max(1, math.ceil(KERNEL_TRUNCATE * sigma))
    d = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-0.5 * (d / sigma) ** 2)
    g /= g.sum()
    out = []
    for a in range(3):
        k = np.zeros(n)
        np.add.at(k, d.astype(np.int64) % n, g * (-d) ** a)
        out.append(scipy.fft.rfft(k) if real else scipy.fft.fft(k))
    return out


class _Smoother:
    """Locally linear Gaussian smoothing of one padded block at any scale (FFT convolutions).

    The block is larger than twice the kernel radius plus the core, so circular convolution equals
    linear convolution with nothing outside the block on every pixel the caller uses. The transforms
    run on the block zero-padded to sizes of small prime factors (``next_fast_len``: 2-4x faster
    than, e.g., 2272 = 32 x 71 px), which changes nothing the caller uses.
    """

    def __init__(self, z: np.ndarray, valid: np.ndarray) -> None:
        self.shape = z.shape
        self.fft_shape = (scipy.fft.next_fast_len(z.shape[0]), scipy.fft.next_fast_len(z.shape[1], real=True))
        self.full = bool(valid.all())
        ref = float(np.median(z[valid])) if valid.any() else 0.0
        self.fz = scipy.fft.rfft2(np.where(valid, z - ref, 0.0), s=self.fft_shape)
        self.fv = None if self.full else scipy.fft.rfft2(valid.astype(np.float64), s=self.fft_shape)

    def smooth(self, sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """The smoothed block (metres, offset by a constant) and where at least ``MIN_WEIGHT`` of the
        Gaussian weight lies on valid pixels."""
        h, w = self.shape
        kr = _kernel_spectra(sigma, self.fft_shape[0], real=False)
        kc = _kernel_spectra(sigma, self.fft_shape[1], real=True)

        def conv(spec: np.ndarray, a: int, b: int) -> np.ndarray:
            """Sum over valid q of f(q) g(q - p) u^a v^b, (u, v) = q - p in (columns, rows)."""
            return scipy.fft.irfft2(spec * kr[b][:, None] * kc[a][None, :], s=self.fft_shape)[:h, :w]

        t00 = conv(self.fz, 0, 0)
        if self.full:
            return t00, np.ones(self.shape, dtype=bool)
        assert self.fv is not None
        # plane a + b u + c v by weighted least squares; its value at the pixel is a (Cramer's rule),
        # computed in an order that keeps few block-sized arrays alive
        s00, s10, s01, s11 = (conv(self.fv, a, b) for a, b in ((0, 0), (1, 0), (0, 1), (1, 1)))
        s02 = conv(self.fv, 0, 2)
        c1 = s10 * s02 - s11 * s01
        s20 = conv(self.fv, 2, 0)
        c0 = s20 * s02 - s11 * s11
        del s02
        c2 = s10 * s11 - s20 * s01
        del s20, s11
        det = s00 * c0 - s10 * c1 + s01 * c2
        del s10, s01
        ok = det > 1e-3 * np.maximum(s00, 1e-12) * np.maximum(c0, 0.0) + 1e-300
        num = t00 * c0
        del c0
        num -= conv(self.fz, 1, 0) * c1
        del c1
        num += conv(self.fz, 0, 1) * c2
        del c2
        value = np.where(ok, num / np.where(ok, det, 1.0), t00 / np.maximum(s00, 1e-12))
        return value, s00 >= MIN_WEIGHT


@dataclass(frozen=True)
class _Candidate:
    row: int  # in the padded block
    col: int
    scale: int
    score: float


def _candidates(
    z: np.ndarray, valid: np.ndarray, halo: int, scales: _Scales, min_response: float
) -> list[_Candidate]:
    """Maxima (3 x 3 px, per scale) of the response above ``min_response`` in the block's core."""
    h, w = z.shape
    core = np.zeros((h, w), dtype=bool)
    core[halo : h - halo, halo : w - halo] = True
    core &= valid
    if not core.any():
        return []
    smoother = _Smoother(z, valid)
    k = scales.ratio
    norm = 2.0 * k / (k - 1.0)  # DoG of neighbouring scales to -2 sigma^2 LoG
    found: list[_Candidate] = []
    prev, prev_w = smoother.smooth(float(scales.smooth[0]))
    for i in range(len(scales.sigma)):
        cur, cur_w = smoother.smooth(float(scales.smooth[i + 1]))
        resp = (norm * (prev - cur)).astype(np.float32)
        resp[~(valid & prev_w & cur_w)] = -np.inf
        peak = core & (resp >= min_response)
        peak &= resp >= ndimage.maximum_filter(resp, size=3, mode="constant", cval=-np.inf)
        rows, cols = np.nonzero(peak)
        found.extend(
            _Candidate(int(a), int(b), i, float(resp[a, b])) for a, b in zip(rows, cols, strict=True)
        )
        prev, prev_w = cur, cur_w
    return found


def _roundness(xy: np.ndarray) -> np.ndarray:
    """Minor / major axis ratio of the inertia ellipse of simple polygons (vertices (polygon, vertex,
    x / y), any units); 0 for a degenerate one."""
    x = xy[:, :, 0] - xy[:, :, 0].mean(axis=1, keepdims=True)
    y = xy[:, :, 1] - xy[:, :, 1].mean(axis=1, keepdims=True)
    xn, yn = np.roll(x, -1, axis=1), np.roll(y, -1, axis=1)
    cross = x * yn - xn * y
    area = cross.sum(axis=1) / 2.0
    flat = area == 0
    area = np.where(flat, 1.0, area)
    cx = ((x + xn) * cross).sum(axis=1) / (6.0 * area)
    cy = ((y + yn) * cross).sum(axis=1) / (6.0 * area)
    ixx = ((x * x + x * xn + xn * xn) * cross).sum(axis=1) / 12.0 / area - cx * cx
    iyy = ((y * y + y * yn + yn * yn) * cross).sum(axis=1) / 12.0 / area - cy * cy
    ixy = ((x * yn + 2 * x * y + 2 * xn * yn + xn * y) * cross).sum(axis=1) / 24.0 / area - cx * cy
    ev = np.linalg.eigvalsh(np.stack([np.stack([ixx, ixy], -1), np.stack([ixy, iyy], -1)], -2))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.sqrt(np.maximum(ev[:, 0], 0.0) / ev[:, 1])
    return np.where(flat | ~(ev[:, 1] > 0), 0.0, ratio)


# --------------------------------------------------------------------------- detection


def passes(settings: BaselineSettings, diameter_m: float, roundness: float, flank_deg: float) -> bool:
    """The detector's shape filters: basal diameter, roundness and mean flank slope in range."""
    return (
        settings.min_diameter_m <= diameter_m <= settings.max_diameter_m
        and roundness >= settings.min_roundness
        and settings.min_flank_slope_deg <= flank_deg <= settings.max_flank_slope_deg
    )


def _rejection(
    settings: BaselineSettings, relief_m: float, diameter_m: float, roundness: float, flank_deg: float
) -> str:
    """Why the filters reject an outline ('' when they keep it)."""
    if relief_m < settings.min_relief_m:
        return "too low"
    if not settings.min_diameter_m <= diameter_m <= settings.max_diameter_m:
        return "diameter out of range"
    if roundness < settings.min_roundness:
        return "not round"
    if not settings.min_flank_slope_deg <= flank_deg <= settings.max_flank_slope_deg:
        return "flank slope out of range"
    return ""


def chosen(detections: gpd.GeoDataFrame, settings: BaselineSettings) -> np.ndarray:
    """Which of a looser detection's outlines (:func:`detect_cones` columns) ``settings`` would keep:
    its response, relief and shape filters, then its overlap suppression (strongest first)."""
    ok = np.array(
        [
            score >= settings.min_response_m
            and relief >= settings.min_relief_m
            and passes(settings, 2.0 * math.sqrt(geom.area / math.pi), roundness, flank)
            for geom, score, relief, roundness, flank in zip(
                detections.geometry,
                detections["score"],
                detections["relief_m"],
                detections["roundness"],
                detections["flank_slope_deg"],
                strict=True,
            )
        ],
        dtype=bool,
    )
    order = [i for i in np.argsort(-detections["score"].to_numpy(), kind="stable") if ok[i]]
    taken = suppress_overlaps(
        [detections.geometry.iloc[i] for i in order], range(len(order)), settings.max_overlap
    )
    out = np.zeros(len(detections), dtype=bool)
    out[np.asarray(order, dtype=np.int64)[taken]] = True
    return out


@dataclass(frozen=True)
class _Detection:
    polygon: shapely.Polygon
    key: tuple[float, int, int]  # (-score, raster row, raster col): strongest first, then raster order
    values: tuple[float, ...]  # DETECTION_COLUMNS


#: Candidates of one scale outlined as one piece of work (a worker's share is a few of them).
PIECE_CANDIDATES = 2000


def _outline_piece(
    z: np.ndarray,
    valid: np.ndarray,
    members: list[_Candidate],
    r0: float,
    origin: tuple[int, int],
    transform: rasterio.Affine,
    settings: BaselineSettings,
) -> tuple[list[_Detection], list[tuple[shapely.Polygon, str, float]]]:
    """Outlines of candidates of one scale (radius ``r0``, pixels) filtered: the detections, and the
    outlines the filters reject (polygon, reason, response), both in the candidates' order."""
    res = abs(transform.a)
    rows = np.array([c.row for c in members])
    cols = np.array([c.col for c in members])
    got = outlines_at(z, valid, rows, cols, r0)
    idx = np.flatnonzero(got.found & (got.valid_fraction >= 0.5))
    xy = star_vertices(got.radii[idx], origin[0] + rows[idx], origin[1] + cols[idx], transform)
    polys = shapely.polygons(xy)
    area = shapely.area(polys)
    good = shapely.is_valid(polys) & (area > 0)
    idx, xy, polys, area = idx[good], xy[good], polys[good], area[good]
    diameter = 2.0 * np.sqrt(area / math.pi)
    roundness = _roundness(xy)
    height = got.height[idx]
    flank = np.degrees(np.arctan(2.0 * height / diameter))
    found: list[_Detection] = []
    rejected: list[tuple[shapely.Polygon, str, float]] = []
    for j, i in enumerate(idx):
        cand = members[i]
        reason = _rejection(settings, height[j], diameter[j], roundness[j], flank[j])
        if reason:
            rejected.append((polys[j], reason, cand.score))
            continue
        row, col = origin[0] + cand.row, origin[1] + cand.col
        values = (cand.score, r0 * res, float(height[j]), float(roundness[j]), float(flank[j]))
        found.append(_Detection(polys[j], (-cand.score, row, col), values))
    return found, rejected


def _block_detections(
    z: np.ndarray,
    valid: np.ndarray,
    origin: tuple[int, int],
    halo: int,
    scales: _Scales,
    settings: BaselineSettings,
    transform: rasterio.Affine,
    rejected: list[tuple[shapely.Polygon, str, float]] | None = None,
    workers: int = 1,
) -> tuple[list[_Detection], int]:
    """Filtered detections whose centre lies in the block's core, and the number of candidates;
    outlines the filters reject go to ``rejected`` (polygon, reason, response) when it is a list.
    The candidates are outlined in pieces of one scale, in up to ``workers`` processes."""
    cands = _candidates(z, valid, halo, scales, settings.min_response_m)
    by_scale: dict[int, list[_Candidate]] = {}
    for cand in cands:  # in scale order
        by_scale.setdefault(cand.scale, []).append(cand)
    pieces = [
        (float(scales.sigma[scale]) / SIGMA_PER_RADIUS, members[start : start + PIECE_CANDIDATES])
        for scale, members in by_scale.items()
        for start in range(0, len(members), PIECE_CANDIDATES)
    ]
    done = fork_map(
        lambda piece: _outline_piece(z, valid, piece[1], piece[0], origin, transform, settings),
        pieces,
        workers,
    )
    found: list[_Detection] = []
    for piece_found, piece_rejected in done:
        found.extend(piece_found)
        if rejected is not None:
            rejected.extend(piece_rejected)
    return found, len(cands)


def detect_cones(
    dem_path: str | os.PathLike[str],
    settings: BaselineSettings,
    *,
    region: str = "",
    rejected: list[tuple[shapely.Polygon, str, float]] | None = None,
    workers: int = 1,
) -> gpd.GeoDataFrame:
    """Cone outlines found by the classical detector in a DEM (projected CRS in metres).

    ``rejected``, when a list, receives (polygon, reason, response) of every outline the filters or
    the overlap suppression rejected. ``workers``: threads of the smoothing's transforms and
    processes of the outlining (the result does not depend on it).

    Returns polygons in the DEM's CRS, strongest first, with :data:`DETECTION_COLUMNS`: ``score``
    (LoG response, m), ``scale_radius_m`` (basal radius matched by the responding scale),
    ``relief_m`` (height above the base plane), ``roundness`` (0-1) and ``flank_slope_deg``
    (atan(2 relief / basal diameter)). Raises InputError (one line naming the region and file) for a
    DEM without a projected CRS, rotated, with non-square pixels or all nodata.
    """
    what_dem = what("DEM", region)
    found: list[_Detection] = []
    n_cand = n_valid = 0
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
        scipy.fft.set_workers(max(1, workers)),
        open_raster(dem_path, what=what_dem) as ds,
    ):
        check_metric_grid(ds, what_dem, dem_path)
        res_x, res_y = abs(ds.transform.a), abs(ds.transform.e)
        if not math.isclose(res_x, res_y, rel_tol=1e-3):
            raise InputError(f"{what_dem}: pixels must be square, got {res_x:g} x {res_y:g} m: {dem_path}")
        scales = _scales(settings, res_x)
        halo = halo_px(settings, res_x)
        for win in iter_windows(ds.height, ds.width, settings.block_px):
            z, valid, top, left = read_padded(ds, win, halo)
            n_core = int(valid[halo : halo + int(win.height), halo : halo + int(win.width)].sum())
            n_valid += n_core
            if n_core == 0:
                continue
            block, n = _block_detections(
                z, valid, (top, left), halo, scales, settings, ds.transform, rejected, workers
            )
            found.extend(block)
            n_cand += n
        if n_valid == 0:
            raise InputError(f"{what_dem}: all pixels are nodata: {dem_path}")
        crs = ds.crs
    order = sorted(range(len(found)), key=lambda i: found[i].key)  # strongest first
    taken = suppress_overlaps([d.polygon for d in found], order, settings.max_overlap)
    kept = [found[i] for i in order if taken[i]]
    if rejected is not None:
        rejected.extend(
            (found[i].polygon, "overlaps a stronger detection", -found[i].key[0])
            for i in order
            if not taken[i]
        )
    data = {
        name: np.array([d.values[i] for d in kept], dtype=np.float64)
        for i, name in enumerate(DETECTION_COLUMNS)
    }
    gdf = gpd.GeoDataFrame(data, geometry=gpd.GeoSeries([d.polygon for d in kept], crs=crs), crs=crs)
    log.info(
        "%s: %d candidates, %d outlines passed the filters, %d cones after overlap suppression",
        what_dem,
        n_cand,
        len(found),
        len(gdf),
    )
    return gdf
