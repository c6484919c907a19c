"""Cone outlines from radial relief profiles of a DEM: the classical detector's outlining step
(:mod:`cinderseg.baseline`), and the DEM outline of the network's cones (``vectorize.outline: dem``).

From a cone's centre, :data:`N_AZIMUTHS` relief profiles (elevation minus a base surface: a quadric
fitted to a ring 1.5-2.4 scale radii around, then a plane fitted to a ring 1.1-1.6 times the first
outline) are followed outward to the toe: where the relief reaches zero, or, below half height,
where the descent slows to a quarter of the flank's steepest descent, or the low point before a
saddle with a neighbour, or nodata. The outline is the star polygon of these basal radii (median of 3
neighbouring azimuths, then a [1, 2, 1] / 4 smoothing). Lengths in pixels of the DEM unless named
``_m`` (metres, the DEM's metric CRS); heights in metres.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.windows import Window
from scipy import ndimage

__all__ = [
    "AZIMUTHS",
    "N_AZIMUTHS",
    "WINDOW_REACH",
    "Outline",
    "dem_outline",
    "outline_at",
    "outline_polygon",
    "read_padded",
    "suppress_overlaps",
]

N_AZIMUTHS = 32
"""Radial profiles per candidate."""
RAY_REACH = 2.0
"""Profiles run to this many scale radii from the centre; an outline cannot reach further."""
WINDOW_REACH = 2.6
"""Half-width of the analysis window around a candidate, in scale radii (profiles and base rings)."""
TOE_BREAK = 0.25
"""Below half height, a profile reaches the toe where its descent slows to this fraction of the flank's
steepest descent."""
SADDLE_RISE = 0.1
"""A profile stops at a saddle where its relief rises again by this fraction of the cone height."""
MIN_HEIGHT_M = 1.0
""":func:`dem_outline` gives no outline where nothing rises this high (m) above the base surface: the
vertical precision of a good DEM; below it the profiles follow noise."""
MAX_RING_POINTS = 4000
"""Base rings are subsampled on a regular grid to at most about this many pixels."""


def read_padded(
    ds: rasterio.DatasetReader, win: Window, halo: int
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``win`` grown by ``halo`` as float64 (NaN outside the raster), its validity and its top-left pixel."""
    r0, c0 = int(win.row_off) - halo, int(win.col_off) - halo
    h, w = int(win.height) + 2 * halo, int(win.width) + 2 * halo
    rr0, cc0 = max(r0, 0), max(c0, 0)
    rr1, cc1 = min(r0 + h, ds.height), min(c0 + w, ds.width)
    z = np.full((h, w), np.nan)
    z[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = ds.read(1, window=Window(cc0, rr0, cc1 - cc0, rr1 - rr0))
    valid = np.isfinite(z)
    if ds.nodata is not None and not math.isnan(ds.nodata):
        valid &= z != ds.nodata
    return z, valid, r0, c0


def _design(dx: np.ndarray, dy: np.ndarray, order: int) -> np.ndarray:
    """Polynomial terms (1, dx, dy[, dx^2, dx dy, dy^2]) stacked on the last axis."""
    terms = [np.ones_like(dx), dx, dy]
    if order == 2:
        terms += [dx * dx, dx * dy, dy * dy]
    return np.stack(terms, axis=-1)


def _median(x: np.ndarray) -> float:
    """The median of a 1-D array of finite values, as ``np.median`` (without its per-call overhead)."""
    n = x.size
    k = n // 2
    if n % 2:
        return float(np.partition(x, k)[k])
    part = np.partition(x, (k - 1, k))
    return float((part[k - 1] + part[k]) / 2.0)


def _fit_surface(dx: np.ndarray, dy: np.ndarray, z: np.ndarray, order: int) -> np.ndarray | None:
    """Robust least-squares surface of ``order`` 1 (plane) or 2 (quadric); points beyond 2.5 MAD of
    the residuals are dropped and the fit repeated, twice. None with too few points."""
    design = _design(dx, dy, order)
    keep = np.ones(z.size, dtype=bool)
    coef = None
    for _ in range(3):
        if keep.sum() < 4 * design.shape[1]:
            return coef
        a = design[keep]
        try:
            coef = np.linalg.solve(a.T @ a, a.T @ z[keep])  # normal equations: small and fast
        except np.linalg.LinAlgError:
            coef = np.linalg.lstsq(a, z[keep], rcond=None)[0]
        res = z - design @ coef
        kept = res[keep]
        med = _median(kept)
        mad = 1.4826 * _median(np.abs(kept - med)) + 1e-6
        keep = np.abs(res - med) <= 2.5 * mad
    return coef


AZIMUTHS = np.arange(N_AZIMUTHS) * (2.0 * math.pi / N_AZIMUTHS)  # counter-clockwise from east


def _first(mask: np.ndarray, default: np.ndarray) -> np.ndarray:
    """Index of the first True along the last axis of each row, ``default`` where there is none."""
    return np.where(mask.any(axis=1), np.argmax(mask, axis=1), default)


def _toes(p: np.ndarray, d: np.ndarray, inner: np.ndarray, height: float, rise: float) -> np.ndarray:
    """Sample index of the toe of each radial relief profile (rows of ``p``; descent ``d``, m per pixel).

    The first sample beyond the profile's top (its maximum within ``inner``) where the relief reaches
    zero; or, below half height, where the descent has slowed to ``TOE_BREAK`` of the flank's steepest
    descent (the foot of the flank on curved ground); or the low point before a rise of ``rise``
    metres (a saddle with a neighbour); or the last valid sample before nodata; or the last sample.
    """
    n = p.shape[1]
    idx = np.arange(n)[None, :]
    finite = np.isfinite(p)
    top = np.argmax(np.where(inner[None, :] & finite, p, -np.inf), axis=1)[:, None]
    after = idx > top
    last = np.full(p.shape[0], n - 1)
    end = _first(after & ~finite, last + 1) - 1
    pf = np.where(finite, p, np.inf)
    end = np.minimum(end, _first(after & (pf <= 0.0), last))[:, None]
    flank = after & (idx <= end) & np.isfinite(d)
    dd = np.where(flank, d, -np.inf)
    steep = np.argmax(dd, axis=1)[:, None]
    d_steep = np.take_along_axis(dd, steep, axis=1)
    slow = flank & (idx > steep) & (pf < 0.5 * height) & (d < TOE_BREAK * d_steep)
    end = np.minimum(end[:, 0], _first(slow, last))[:, None]
    span = (idx >= top) & (idx <= end)
    seg = np.where(span, pf, np.inf)
    low = np.minimum.accumulate(seg, axis=1)
    up = _first(span & (seg > low + rise), last + 1)[:, None]
    saddle = np.argmin(np.where(idx < up, seg, np.inf), axis=1)
    end = np.where(up[:, 0] <= n - 1, saddle, end[:, 0])
    return np.maximum(end, 1)


def _ray_radii(relief: np.ndarray, cy: int, cx: int, r0: float) -> tuple[np.ndarray, float] | None:
    """Basal radius (pixels) along each azimuth and the cone height (m) from a relief window."""
    step = 0.5
    t = np.arange(0.0, RAY_REACH * r0 + step, step)
    ys = cy - np.sin(AZIMUTHS)[:, None] * t[None, :]  # rows run south
    xs = cx + np.cos(AZIMUTHS)[:, None] * t[None, :]
    prof = ndimage.map_coordinates(relief, [ys.ravel(), xs.ravel()], order=1, mode="constant", cval=np.nan)
    prof = prof.reshape(ys.shape)
    inner = t <= max(0.7 * r0, 1.0)
    top = prof[:, inner]
    if not np.isfinite(top[:, 0]).all():
        return None
    height = float(np.nanmax(top))
    if height <= 0:
        return None
    descent = np.full(prof.shape, np.nan)
    descent[:, 1:-1] = (prof[:, :-2] - prof[:, 2:]) / (2.0 * step)
    # the toe sample lies about half a pixel past the foot (bilinear interpolation blurs the break)
    radii = np.maximum(_toes(prof, descent, inner, height, SADDLE_RISE * height) * step - 0.5, step)
    ring = np.concatenate([radii[-1:], radii, radii[:1]])  # circular: neighbours before and after
    before, after = ring[:-2], ring[2:]
    med = np.maximum(np.minimum(before, radii), np.minimum(np.maximum(before, radii), after))  # median of 3
    ring = np.concatenate([med[-1:], med, med[:1]])
    return 0.25 * ring[:-2] + 0.5 * med + 0.25 * ring[2:], height  # then a light smoothing


@dataclass(frozen=True)
class Outline:
    """A cone outline from radial relief profiles."""

    radii: np.ndarray  # basal radius (pixels) per azimuth of AZIMUTHS
    height: float  # metres above the base plane
    valid_fraction: float  # of the pixels inside the outline


def outline_at(z: np.ndarray, valid: np.ndarray, row: int, col: int, r0: float) -> Outline | None:
    """Outline of the cone around pixel (row, col) of an elevation array (``z``, m; ``valid``: not
    nodata), or None where no base surface can be fitted or nothing rises above it; ``r0``: scale
    radius (pixels): base rings at 1.5-2.4 ``r0``, profiles out to ``RAY_REACH`` ``r0``. The array
    must reach ``WINDOW_REACH`` ``r0`` around the centre (NaN / invalid beyond the raster)."""
    reach = math.ceil(WINDOW_REACH * r0) + 1
    r0w, c0w = max(0, row - reach), max(0, col - reach)
    zw = z[r0w : row + reach + 1, c0w : col + reach + 1]
    vw = valid[r0w : row + reach + 1, c0w : col + reach + 1]
    cy, cx = row - r0w, col - c0w
    dyi = np.arange(zw.shape[0])[:, None] - cy
    dxi = np.arange(zw.shape[1])[None, :] - cx
    dy = np.broadcast_to(dyi / r0, zw.shape)  # in scale radii: a well-conditioned fit at every scale
    dx = np.broadcast_to(dxi / r0, zw.shape)
    dist = np.hypot(dx, dy) * r0
    az = np.mod(np.arctan2(-dy, dx), 2.0 * math.pi)
    stride = max(1, math.ceil(math.sqrt(math.pi * (2.4**2 - 1.5**2) * r0 * r0 / MAX_RING_POINTS)))
    sub = (dyi % stride == 0) & (dxi % stride == 0)  # anchored on the centre: independent of the block

    ring = vw & sub & (dist >= 1.5 * r0) & (dist <= 2.4 * r0)
    got = None
    rho = dist
    for order in (2, 1):  # a quadric on the wide ring follows curved ground; then a plane just outside
        coef = _fit_surface(dx[ring], dy[ring], zw[ring], order)
        if coef is None:
            return None
        relief = np.where(vw, zw - _design(dx, dy, order) @ coef, np.nan)
        got = _ray_radii(relief, cy, cx, r0)
        if got is None:
            return None
        radii = got[0]
        rho = dist / np.interp(az, np.append(AZIMUTHS, 2.0 * math.pi), np.append(radii, radii[0]))
        ring = vw & sub & (rho >= 1.1) & (rho <= 1.6)
    assert got is not None
    inside = rho <= 1.0
    n_in = int(inside.sum())
    valid_fraction = float((inside & vw).sum()) / n_in if n_in else 0.0
    return Outline(radii=got[0], height=got[1], valid_fraction=valid_fraction)


def outline_polygon(outline: Outline, row: int, col: int, transform: Affine) -> shapely.Polygon:
    """The star polygon of ``outline`` centred on pixel (row, col) of a raster, in map coordinates of
    its ``transform`` (possibly invalid where radii zigzag; callers check)."""
    cols = col + 0.5 + np.cos(AZIMUTHS) * outline.radii
    rows = row + 0.5 - np.sin(AZIMUTHS) * outline.radii
    t = transform
    return shapely.Polygon(np.column_stack([t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f]))


def dem_outline(
    ds: rasterio.DatasetReader, x: float, y: float, radius_m: float, *, min_valid_fraction: float = 0.5
) -> tuple[shapely.Polygon, Outline] | None:
    """The outline of the cone centred near map point (x, y) of a DEM (metric CRS), with ``radius_m``
    its approximate basal radius (the profiles' scale, at least 1.5 pixels), read from a window of
    :data:`WINDOW_REACH` radii around it. None where there is no outline (the point is off the raster,
    no base surface fits, nothing rises above it, or under ``min_valid_fraction`` of the outline is on
    valid pixels, or nothing rises :data:`MIN_HEIGHT_M` above the base) or the polygon is not a valid area."""
    res = abs(ds.transform.a)
    col_f, row_f = ~ds.transform @ (x, y)
    row, col = math.floor(row_f), math.floor(col_f)
    if not (0 <= row < ds.height and 0 <= col < ds.width) or not math.isfinite(radius_m):
        return None
    r0 = max(radius_m / res, 1.5)
    reach = math.ceil(WINDOW_REACH * r0) + 1
    z, valid, top, left = read_padded(ds, Window(col, row, 1, 1), reach)
    if not valid[row - top, col - left]:
        return None
    out = outline_at(z, valid, row - top, col - left, r0)
    if out is None or out.valid_fraction < min_valid_fraction or out.height < MIN_HEIGHT_M:
        return None
    poly = outline_polygon(out, row, col, ds.transform)
    if not poly.is_valid:
        poly = shapely.make_valid(poly).buffer(0)
        if poly.geom_type == "MultiPolygon":
            poly = max(poly.geoms, key=lambda g: g.area)
    if poly.is_empty or poly.geom_type != "Polygon" or poly.area <= 0:
        return None
    return poly, out


def suppress_overlaps(
    polygons: Sequence[shapely.Polygon], order: Iterable[int], max_overlap: float
) -> np.ndarray:
    """Greedy suppression of overlapping outlines, taken in ``order`` (the preferred first): an outline
    overlapping an already kept one by more than ``max_overlap`` of the smaller one's area is dropped.
    Returns which outlines are kept."""
    kept = np.zeros(len(polygons), dtype=bool)
    if not len(polygons):
        return kept
    tree = shapely.STRtree(polygons)
    for i in order:
        a = polygons[i]
        kept[i] = not any(
            kept[j] and a.intersection(polygons[j]).area > max_overlap * min(a.area, polygons[j].area)
            for j in tree.query(a, predicate="intersects")
        )
    return kept
