"""Cone outlines from radial relief profiles of a DEM: the classical detector's outlining step
(:mod:`cinderseg.baseline`), and the DEM outline of the network's cones (``vectorize.outline: dem``).

From a cone's centre, :data:`N_AZIMUTHS` relief profiles (elevation minus a base surface: a quadric
fitted to a ring 1.5-2.4 scale radii around, then a plane fitted to a ring 1.1-1.6 times the first
outline) are followed outward to the toe: where the relief reaches zero, or, below half height,
where the descent slows to a quarter of the flank's steepest descent, or the low point before a
saddle with a neighbour, or nodata. The outline is the star polygon of these basal radii (median of 3
neighbouring azimuths, then a [1, 2, 1] / 4 smoothing). Lengths in pixels of the DEM unless named
``_m`` (metres, the DEM's metric CRS); heights in metres.

Candidates of one scale radius share their window's geometry, so :func:`outlines_at` outlines them
together: their windows stacked, the robust surface fits of all of them solved as one matrix product of
their normal equations, the profiles read with bilinear weights computed once per scale. The classical
detector's loose candidate search outlines tens of thousands of maxima per Mpx this way.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.windows import Window

__all__ = [
    "AZIMUTHS",
    "N_AZIMUTHS",
    "WINDOW_REACH",
    "Outline",
    "Outlines",
    "dem_outline",
    "outline_at",
    "outline_polygon",
    "outlines_at",
    "read_padded",
    "star_vertices",
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


def _masked_median(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The median of each row of ``x`` over its ``mask`` (at least one True per row), as ``np.median``."""
    n = mask.sum(axis=1)
    width = int(n.max())
    if 2 * width < x.shape[1]:  # sort only the masked values, packed to the left of each row
        packed = np.full((x.shape[0], width), np.inf)
        rows, _ = np.nonzero(mask)
        packed[rows, (np.cumsum(mask, axis=1) - 1)[mask]] = x[mask]
    else:
        packed = np.where(mask, x, np.inf)
    s = np.sort(packed, axis=1)  # whole rows: numpy's vectorised sort beats partitions
    k = n // 2
    rows = np.arange(x.shape[0])
    hi = s[rows, k]
    lo = s[rows, np.maximum(k - 1, 0)]
    return np.where(n % 2 == 1, hi, (lo + hi) / 2.0)


def _fit_surfaces(design: np.ndarray, z: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Robust least-squares surfaces, one per row of ``z`` (points of ``design``: columns of
    :func:`_design`) over its ``ok`` points; points beyond 2.5 MAD of the residuals are dropped and the
    fit repeated, twice, while at least 4 points per coefficient remain. Returns the coefficients and
    which rows got a fit (none with too few points)."""
    n, m = z.shape[0], design.shape[1]
    coef = np.full((n, m), np.nan)
    fitted = np.zeros(n, dtype=bool)
    active = np.ones(n, dtype=bool)
    keep = ok.copy()
    z0 = np.where(ok, z, 0.0)
    outer = (design[:, :, None] * design[:, None, :]).reshape(design.shape[0], m * m)
    for _ in range(3):
        active &= keep.sum(axis=1) >= 4 * m
        rows = np.flatnonzero(active)
        if not rows.size:
            break
        w = keep[rows].astype(np.float64)
        normal = (w @ outer).reshape(-1, m, m)  # normal equations of every row in one product
        rhs = (w * z0[rows]) @ design
        try:
            c = np.linalg.solve(normal, rhs[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            c = np.empty((rows.size, m))
            for j, r in enumerate(rows):
                try:
                    c[j] = np.linalg.solve(normal[j], rhs[j])
                except np.linalg.LinAlgError:
                    c[j] = np.linalg.lstsq(design[keep[r]], z[r, keep[r]], rcond=None)[0]
        coef[rows] = c
        fitted[rows] = True
        res = z[rows] - c @ design.T
        kept = keep[rows]
        med = _masked_median(res, kept)
        dev = np.abs(res - med[:, None])
        mad = 1.4826 * _masked_median(dev, kept) + 1e-6
        keep[rows] = ok[rows] & (dev <= 2.5 * mad[:, None])
    return coef, fitted


AZIMUTHS = np.arange(N_AZIMUTHS) * (2.0 * math.pi / N_AZIMUTHS)  # counter-clockwise from east
RAY_STEP = 0.5
"""Sample spacing of the radial profiles (pixels)."""


@dataclass(frozen=True)
class _WindowGeometry:
    """What all candidate windows of one scale radius ``r0`` share (pixels flattened row by row)."""

    reach: int  # window half-width (pixels)
    dist: np.ndarray  # from the centre (pixels)
    az: np.ndarray  # azimuth (radians, counter-clockwise from east)
    quadric: np.ndarray  # _design(dx, dy, 2) of every pixel, offsets in scale radii
    plane: np.ndarray  # _design(dx, dy, 1)
    sub: np.ndarray  # base-ring pixels: a regular grid anchored on the centre
    wide_ring: np.ndarray  # the subsampled pixels 1.5-2.4 r0 from the centre (the quadric's ring)
    t: np.ndarray  # profile samples (pixels from the centre)
    inner: np.ndarray  # samples within max(0.7 r0, 1) of the centre
    corners: np.ndarray  # flat pixel index of the 4 bilinear neighbours of each profile sample
    weights: np.ndarray  # their bilinear weights
    az_bin: np.ndarray  # np.interp over AZIMUTHS closed at 2 pi: left knot of each pixel's azimuth
    az_offset: np.ndarray  # azimuth minus that knot
    az_width: np.ndarray  # width of that knot's interval


@functools.lru_cache(maxsize=64)
def _window_geometry(r0: float) -> _WindowGeometry:
    reach = math.ceil(WINDOW_REACH * r0) + 1
    offs = np.arange(2 * reach + 1) - reach
    dyi, dxi = offs[:, None], offs[None, :]
    shape = (offs.size, offs.size)
    dy = np.broadcast_to(dyi / r0, shape)  # in scale radii: a well-conditioned fit at every scale
    dx = np.broadcast_to(dxi / r0, shape)
    dist = np.hypot(dx, dy) * r0
    az = np.mod(np.arctan2(-dy, dx), 2.0 * math.pi)
    stride = max(1, math.ceil(math.sqrt(math.pi * (2.4**2 - 1.5**2) * r0 * r0 / MAX_RING_POINTS)))
    sub = (dyi % stride == 0) & (dxi % stride == 0)  # anchored on the centre: independent of the block
    t = np.arange(0.0, RAY_REACH * r0 + RAY_STEP, RAY_STEP)
    ys = reach - np.sin(AZIMUTHS)[:, None] * t[None, :]  # rows run south
    xs = reach + np.cos(AZIMUTHS)[:, None] * t[None, :]
    y0, x0 = np.floor(ys), np.floor(xs)
    fy, fx = ys - y0, xs - x0
    base = (y0 * offs.size + x0).astype(np.int64)
    corners = np.stack([base, base + 1, base + offs.size, base + offs.size + 1])
    weights = np.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx])
    knots = np.append(AZIMUTHS, 2.0 * math.pi)
    flat_az = az.ravel()
    az_bin = np.clip(np.searchsorted(knots, flat_az, side="right") - 1, 0, N_AZIMUTHS - 1)
    return _WindowGeometry(
        reach=reach,
        dist=dist.ravel(),
        az=flat_az,
        quadric=_design(dx.ravel(), dy.ravel(), 2),
        plane=_design(dx.ravel(), dy.ravel(), 1),
        sub=sub.ravel(),
        wide_ring=np.flatnonzero(sub & (dist >= 1.5 * r0) & (dist <= 2.4 * r0)),
        t=t,
        inner=t <= max(0.7 * r0, 1.0),
        corners=corners,
        weights=weights,
        az_bin=az_bin,
        az_offset=flat_az - knots[az_bin],
        az_width=knots[az_bin + 1] - knots[az_bin],
    )


def _first(mask: np.ndarray, default: np.ndarray) -> np.ndarray:
    """Index of the first True along the last axis of each row, ``default`` where there is none."""
    return np.where(mask.any(axis=1), np.argmax(mask, axis=1), default)


def _toes(
    p: np.ndarray, d: np.ndarray, inner: np.ndarray, height: np.ndarray, rise: np.ndarray
) -> np.ndarray:
    """Sample index of the toe of each radial relief profile (rows of ``p``; descent ``d``, m per
    pixel; ``height`` and ``rise``, m, one per row).

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
    slow = flank & (idx > steep) & (pf < 0.5 * height[:, None]) & (d < TOE_BREAK * d_steep)
    end = np.minimum(end[:, 0], _first(slow, last))[:, None]
    span = (idx >= top) & (idx <= end)
    seg = np.where(span, pf, np.inf)
    low = np.minimum.accumulate(seg, axis=1)
    up = _first(span & (seg > low + rise[:, None]), last + 1)[:, None]
    saddle = np.argmin(np.where(idx < up, seg, np.inf), axis=1)
    end = np.where(up[:, 0] <= n - 1, saddle, end[:, 0])
    return np.maximum(end, 1)


def _ray_radii(relief: np.ndarray, geom: _WindowGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Basal radius (pixels) along each azimuth, the cone height (m) and which candidates have both,
    from relief windows (one flattened window per row, NaN = nodata)."""
    k = relief.shape[0]
    w = geom.weights
    c = geom.corners
    prof = w[0] * relief[:, c[0]] + w[1] * relief[:, c[1]] + w[2] * relief[:, c[2]] + w[3] * relief[:, c[3]]
    top = prof[:, :, geom.inner]  # (candidate, azimuth, sample)
    ok = np.isfinite(top[:, :, 0]).all(axis=1)
    height = np.where(np.isfinite(top), top, -np.inf).reshape(k, -1).max(axis=1)
    ok &= height > 0
    descent = np.full(prof.shape, np.nan)
    descent[:, :, 1:-1] = (prof[:, :, :-2] - prof[:, :, 2:]) / (2.0 * RAY_STEP)
    rows_h = np.repeat(np.where(ok, height, 1.0), N_AZIMUTHS)
    n_t = prof.shape[2]
    toes = _toes(prof.reshape(-1, n_t), descent.reshape(-1, n_t), geom.inner, rows_h, SADDLE_RISE * rows_h)
    # the toe sample lies about half a pixel past the foot (bilinear interpolation blurs the break)
    radii = np.maximum(toes.reshape(k, N_AZIMUTHS) * RAY_STEP - 0.5, RAY_STEP)
    before, after = np.roll(radii, 1, axis=1), np.roll(radii, -1, axis=1)  # circular neighbours
    med = np.maximum(np.minimum(before, radii), np.minimum(np.maximum(before, radii), after))  # median of 3
    smooth = 0.25 * np.roll(med, 1, axis=1) + 0.5 * med + 0.25 * np.roll(med, -1, axis=1)  # light smoothing
    return smooth, height, ok


def _basal_radius_at(radii: np.ndarray, geom: _WindowGeometry) -> np.ndarray:
    """The outline's radius (pixels) at the azimuth of every window pixel: ``np.interp`` over
    :data:`AZIMUTHS` closed at 2 pi, per candidate (rows of ``radii``)."""
    closed = np.concatenate([radii, radii[:, :1]], axis=1)
    j = geom.az_bin
    slope = (closed[:, j + 1] - closed[:, j]) / geom.az_width
    return slope * geom.az_offset + closed[:, j]


@dataclass(frozen=True)
class Outline:
    """A cone outline from radial relief profiles."""

    radii: np.ndarray  # basal radius (pixels) per azimuth of AZIMUTHS
    height: float  # metres above the base plane
    valid_fraction: float  # of the pixels inside the outline


@dataclass(frozen=True)
class Outlines:
    """Outlines of many candidates of one scale radius (rows); where ``found`` is False there is none."""

    found: np.ndarray  # bool
    radii: np.ndarray  # (candidate, azimuth): basal radius (pixels) per azimuth of AZIMUTHS
    height: np.ndarray  # metres above the base surface
    valid_fraction: np.ndarray  # of the pixels inside the outline

    def __getitem__(self, i: int) -> Outline | None:
        if not self.found[i]:
            return None
        return Outline(
            radii=self.radii[i], height=float(self.height[i]), valid_fraction=float(self.valid_fraction[i])
        )


#: Candidates outlined together hold at most about this many window pixels or profile samples
#: (about 20 float64 arrays of this size are alive at once).
BATCH_PIXELS = 1 << 19


def outlines_at(z: np.ndarray, valid: np.ndarray, rows: np.ndarray, cols: np.ndarray, r0: float) -> Outlines:
    """Outlines of the cones around pixels (``rows``, ``cols``) of an elevation array (``z``, m;
    ``valid``: not nodata), all at scale radius ``r0`` (pixels): base rings at 1.5-2.4 ``r0``, profiles
    out to ``RAY_REACH`` ``r0``; none where no base surface can be fitted or nothing rises above it.
    Windows of ``WINDOW_REACH`` ``r0`` around the centres beyond the array count as nodata."""
    geom = _window_geometry(float(r0))
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    n = rows.size
    out = Outlines(
        found=np.zeros(n, dtype=bool),
        radii=np.zeros((n, N_AZIMUTHS)),
        height=np.zeros(n),
        valid_fraction=np.zeros(n),
    )
    if not n:
        return out
    reach = geom.reach
    pad = max(0, reach - int(rows.min()), reach - int(cols.min()))
    pad = max(pad, int(rows.max()) + reach + 1 - z.shape[0], int(cols.max()) + reach + 1 - z.shape[1])
    if pad:
        z = np.pad(z, pad, constant_values=np.nan)
        valid = np.pad(valid, pad, constant_values=False)
    windows_z = np.lib.stride_tricks.sliding_window_view(z, (2 * reach + 1, 2 * reach + 1))
    windows_v = np.lib.stride_tricks.sliding_window_view(valid, (2 * reach + 1, 2 * reach + 1))
    size = (2 * reach + 1) ** 2
    chunk = max(1, BATCH_PIXELS // max(size, N_AZIMUTHS * geom.t.size))
    for start in range(0, n, chunk):
        sel = slice(start, start + chunk)
        r, c = rows[sel] + pad - reach, cols[sel] + pad - reach
        zw = windows_z[r, c].reshape(-1, size)
        vw = windows_v[r, c].reshape(-1, size)
        found, radii, height, frac = _outline_windows(np.where(vw, zw, np.nan), vw, geom)
        out.found[sel], out.radii[sel], out.height[sel], out.valid_fraction[sel] = found, radii, height, frac
    return out


def _outline_windows(
    zw: np.ndarray, vw: np.ndarray, geom: _WindowGeometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`outlines_at` on candidate windows (one flattened window per row; NaN where not ``vw``)."""
    n = zw.shape[0]
    found = np.zeros(n, dtype=bool)
    radii = np.zeros((n, N_AZIMUTHS))
    height = np.zeros(n)
    frac = np.zeros(n)
    # a quadric on the wide ring follows curved ground
    ring = geom.wide_ring
    coef, ok = _fit_surfaces(geom.quadric[ring], zw[:, ring], vw[:, ring])
    live = np.flatnonzero(ok)
    if not live.size:
        return found, radii, height, frac
    relief = zw[live] - coef[live] @ geom.quadric.T
    r1, _, ok = _ray_radii(relief, geom)
    live, r1 = live[ok], r1[ok]
    if not live.size:
        return found, radii, height, frac
    # then a plane on a ring just outside the first outline
    rho = geom.dist[None, :] / _basal_radius_at(r1, geom)
    sub = geom.sub
    ring_ok = vw[live][:, sub] & (rho[:, sub] >= 1.1) & (rho[:, sub] <= 1.6)
    coef, ok = _fit_surfaces(geom.plane[sub], zw[live][:, sub], ring_ok)
    live, coef = live[ok], coef[ok]
    if not live.size:
        return found, radii, height, frac
    relief = zw[live] - coef @ geom.plane.T
    r2, h2, ok = _ray_radii(relief, geom)
    live, r2, h2 = live[ok], r2[ok], h2[ok]
    if not live.size:
        return found, radii, height, frac
    inside = geom.dist[None, :] / _basal_radius_at(r2, geom) <= 1.0
    n_in = inside.sum(axis=1)
    n_valid = (inside & vw[live]).sum(axis=1)
    found[live] = True
    radii[live] = r2
    height[live] = h2
    frac[live] = np.where(n_in > 0, n_valid / np.maximum(n_in, 1), 0.0)
    return found, radii, height, frac


def outline_at(z: np.ndarray, valid: np.ndarray, row: int, col: int, r0: float) -> Outline | None:
    """:func:`outlines_at` of one candidate."""
    return outlines_at(z, valid, np.array([row]), np.array([col]), r0)[0]


def star_vertices(radii: np.ndarray, rows: np.ndarray, cols: np.ndarray, transform: Affine) -> np.ndarray:
    """Vertices (candidate, azimuth, x / y) in map coordinates of ``transform`` of the star polygons
    with basal ``radii`` (pixels; one row per candidate) centred on pixels (``rows``, ``cols``)."""
    c = np.asarray(cols, dtype=np.float64)[:, None] + 0.5 + np.cos(AZIMUTHS) * radii
    r = np.asarray(rows, dtype=np.float64)[:, None] + 0.5 - np.sin(AZIMUTHS) * radii
    t = transform
    return np.stack([t.a * c + t.b * r + t.c, t.d * c + t.e * r + t.f], axis=-1)


def outline_polygon(outline: Outline, row: int, col: int, transform: Affine) -> shapely.Polygon:
    """The star polygon of ``outline`` centred on pixel (row, col) of a raster, in map coordinates of
    its ``transform`` (possibly invalid where radii zigzag; callers check)."""
    return shapely.Polygon(
        star_vertices(outline.radii[None, :], np.array([row]), np.array([col]), transform)[0]
    )


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


def box_overlap(bounds: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Area of the intersection of the bounding boxes (``shapely.bounds`` rows) of the pairs ``a``, ``b``:
    an upper bound of the pair's own intersection, so pairs that cannot overlap enough end here."""
    width = np.minimum(bounds[a, 2], bounds[b, 2]) - np.maximum(bounds[a, 0], bounds[b, 0])
    height = np.minimum(bounds[a, 3], bounds[b, 3]) - np.maximum(bounds[a, 1], bounds[b, 1])
    return np.clip(width, 0, None) * np.clip(height, 0, None)


def suppress_overlaps(
    polygons: Sequence[shapely.Polygon], order: Iterable[int], max_overlap: float
) -> np.ndarray:
    """Greedy suppression of overlapping outlines, taken in ``order`` (the preferred first): an outline
    overlapping an already kept one by more than ``max_overlap`` of the smaller one's area is dropped.
    Returns which outlines are kept."""
    n = len(polygons)
    kept = np.zeros(n, dtype=bool)
    order = np.fromiter(order, dtype=np.int64)
    if not n or not order.size:
        return kept
    arr = np.empty(n, dtype=object)
    arr[:] = list(polygons)
    rank = np.full(n, n, dtype=np.int64)
    rank[order] = np.arange(order.size)
    later, earlier = shapely.STRtree(arr).query(arr, predicate="intersects")
    pair = rank[earlier] < rank[later]  # each outline is only tested against those taken before it
    later, earlier = later[pair], earlier[pair]
    area = shapely.area(arr)
    limit = max_overlap * np.minimum(area[later], area[earlier])
    maybe = box_overlap(shapely.bounds(arr), later, earlier) * (1.0 + 1e-9) > limit  # bounds the outlines'
    later, earlier, limit = later[maybe], earlier[maybe], limit[maybe]
    clash = shapely.area(shapely.intersection(arr[later], arr[earlier])) > limit
    later, earlier = later[clash], earlier[clash]
    by_later = np.argsort(later, kind="stable")
    later, earlier = later[by_later], earlier[by_later]
    start = np.searchsorted(later, np.arange(n + 1))
    for i in order:
        kept[i] = not kept[earlier[start[i] : start[i + 1]]].any()
    return kept
