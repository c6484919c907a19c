"""The channel stack computed from a DEM: the network's input.

Every channel is a float32 band of a multi-band GeoTIFF on the DEM's grid (same CRS and
transform), with nodata ``NODATA_FLOAT`` in every band wherever the DEM is nodata. Channels
(see :data:`CHANNELS`; units are those of the metric CRS, i.e. metres):

``elevation``
    ``(z - p1) / (p99 - p1)`` clipped to 0..1, with p1/p99 the 1st/99th percentiles of the
    region's valid elevations (global, not per block).
``sobel``
    Gradient magnitude ``|grad z|`` in m/m (Horn's 3x3 Sobel kernel divided by 8 x pixel size),
    i.e. ``tan(slope)``, divided by ``tan(45 deg) = 1`` and clipped to 0..1. Resolution-independent.
``clahe``
    Contrast-limited adaptive histogram equalisation of the ``elevation`` channel: skimage's
    algorithm (contextual regions of ``clahe_kernel_px`` px, ``clahe_clip_limit``) on a grid
    anchored at the raster's upper-left corner, so that block-wise computation reproduces the
    whole-raster result exactly (:mod:`cinderseg.terrain.clahe`). Output levels / 16383, 0..1,
    without skimage's final min-max stretch (which depends on the image extent).
``slope``
    Slope in degrees / 90 (0..1), from the same Horn gradient.
``hillshade``
    Lambertian hillshade ``max(0, n . s)`` (0..1) of the unit surface normal ``n`` and the unit
    sun vector ``s`` (azimuth clockwise from north, altitude above the horizon, from settings).
``curvature``
    Minus the Laplacian ``-(d2z/dx2 + d2z/dy2)`` in 1/m (5-point stencil), divided by
    :data:`CURVATURE_SCALE_PER_M` (0.02 1/m) and clipped to -1..1: positive on convex crests
    (crater rims, cone tops), negative in concave floors and at cone bases.
``local_relief``
    ``(z - plane) / (2 * max(rms, 10 m))`` clipped to -1..1, where plane (at the pixel) and rms
    (residual) come from the least-squares plane through the valid elevations in a square of
    half-width ``local_relief_radius_m`` (rounded to pixels) centred on the pixel. On a full
    square the plane's value is the local mean; near raster edges and voids the plane avoids the
    bias of a one-sided mean on slopes. +-1 is two residual RMS above/below the local surface.

Computation is windowed and needs memory independent of the raster size: pass 1 reads the DEM
block by block for global statistics (min/max, then a 65536-bin histogram giving p1, median and
p99); pass 2 computes each block of ``block_px`` with a halo (:func:`channel_halo_px`) large
enough for every neighbourhood operation and writes the cropped block. Every channel is computed
from the same per-pixel inputs whatever the block, so the output does not depend on ``block_px``.

Nodata handling: statistics ignore nodata. For the 3x3 derivatives, the ring of nodata pixels
next to data (the only nodata pixels a valid pixel's kernel touches) is filled by local linear
extrapolation, exact for planes, and the rest by the global median. CLAHE sees nodata as the
global median. The local_relief plane fit ignores nodata pixels. Pixels outside the raster are
treated as nodata.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from cinderseg.core.errors import InputError
from cinderseg.core.grid import check_metric_grid
from cinderseg.core.grid import what as grid_what
from cinderseg.core.raster import NODATA_FLOAT, atomic_write, geotiff_profile, iter_windows, open_raster
from cinderseg.core.schema import section_default, section_schema, validate_section
from cinderseg.terrain.clahe import CLAHE_LEVELS, clahe_window
from cinderseg.terrain.hillshade import hillshade

CHANNELS: tuple[str, ...] = tuple(section_schema("features")["properties"]["channels"]["items"]["enum"])
"""Names of all available channels, in the schema's order."""

DERIVATIVE_CHANNELS = frozenset({"sobel", "slope", "hillshade", "curvature"})
CURVATURE_SCALE_PER_M = 0.02
"""Laplacian (1/m) mapped to +-1 by the curvature channel."""
RELIEF_RMS_FLOOR_M = 10.0
"""Smallest residual RMS (m) used as relief scale: on smooth ground +1 is 20 m above the local plane,
so that DEM noise and metre-scale roughness stay faint while cones (tens of metres) stand out."""

HIST_BINS = 65536
RELIEF_STRIP_ROWS = 256
FILL_RINGS = 1  # a valid pixel's 3x3 neighbours are all next to data: one ring suffices


@dataclass(frozen=True)
class FeatureSettings:
    """The config's ``features`` section (meaning of each key: the schema)."""

    channels: tuple[str, ...] = section_default("features", "channels")
    block_px: int = section_default("features", "block_px")
    clahe_kernel_px: int = section_default("features", "clahe_kernel_px")
    clahe_clip_limit: float = section_default("features", "clahe_clip_limit")
    local_relief_radius_m: float = section_default("features", "local_relief_radius_m")
    hillshade_azimuth_deg: float = section_default("features", "hillshade_azimuth_deg")
    hillshade_altitude_deg: float = section_default("features", "hillshade_altitude_deg")

    def __post_init__(self) -> None:
        validate_section("features", asdict(self))

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> FeatureSettings:
        """Settings from the config's ``features`` section; missing keys take the schema's defaults."""
        values = validate_section("features", section)
        return cls(**{key: tuple(v) if isinstance(v, list) else v for key, v in values.items()})


def relief_radius_px(settings: FeatureSettings, resolution_m: float) -> int:
    """Half-width in pixels of the local_relief square (at least 1)."""
    return max(1, round(settings.local_relief_radius_m / resolution_m))


def channel_halo_px(settings: FeatureSettings, resolution_m: float) -> int:
    """Halo in pixels around each block that makes block-wise results equal whole-raster ones.

    3 px for the 3x3 derivatives (1 for the kernel, 2 for the extrapolating nodata fill), the relief
    radius for local_relief, and twice the CLAHE kernel for clahe (its contextual regions are
    aligned to a raster-wide grid).
    """
    halo = 0
    chans = set(settings.channels)
    if chans & DERIVATIVE_CHANNELS:
        halo = max(halo, 1 + 2 * FILL_RINGS)
    if "local_relief" in chans:
        halo = max(halo, relief_radius_px(settings, resolution_m))
    if "clahe" in chans:
        halo = max(halo, 2 * settings.clahe_kernel_px)
    return halo


@dataclass(frozen=True)
class _Stats:
    p1: float
    median: float
    p99: float

    @property
    def scale(self) -> float:
        span = self.p99 - self.p1
        return span if span > 0 else 1.0

    def normalise(self, z: np.ndarray) -> np.ndarray:
        """Elevation (m) to 0..1 with the global percentiles (float64)."""
        return np.clip((z - self.p1) / self.scale, 0.0, 1.0)


def _valid(z: np.ndarray, nodata: float | None) -> np.ndarray:
    valid = np.isfinite(z)
    if nodata is not None and not math.isnan(nodata):
        valid &= z != nodata
    return valid


def _global_stats(ds: rasterio.DatasetReader, block: int, what: str, path: Any) -> _Stats:
    """1st percentile, median and 99th percentile of valid elevations, read block by block.

    Exact min/max first, then a histogram of ``HIST_BINS`` bins between them; percentiles are
    interpolated within their bin (error below (max - min) / 65536). Independent of ``block``.
    """
    nodata = ds.nodata
    zmin, zmax, count = math.inf, -math.inf, 0
    for win in iter_windows(ds.height, ds.width, block):
        z = ds.read(1, window=win)
        v = z[_valid(z, nodata)]
        if v.size:
            zmin = min(zmin, float(v.min()))
            zmax = max(zmax, float(v.max()))
            count += v.size
    if count == 0:
        raise InputError(f"{what}: all pixels are nodata: {path}")
    span = zmax - zmin
    hist = np.zeros(HIST_BINS, dtype=np.int64)
    if span > 0:
        for win in iter_windows(ds.height, ds.width, block):
            z = ds.read(1, window=win)
            v = z[_valid(z, nodata)].astype(np.float64)
            idx = np.minimum(((v - zmin) * (HIST_BINS / span)).astype(np.int64), HIST_BINS - 1)
            hist += np.bincount(idx, minlength=HIST_BINS)
    else:
        hist[0] = count
    cum = np.cumsum(hist)
    width = span / HIST_BINS

    def percentile(q: float) -> float:
        rank = q / 100.0 * (count - 1)
        b = int(np.searchsorted(cum, rank, side="right"))
        b = min(b, HIST_BINS - 1)
        before = int(cum[b - 1]) if b > 0 else 0
        inside = (rank - before + 0.5) / max(int(hist[b]), 1)
        return min(zmax, max(zmin, zmin + (b + min(inside, 1.0)) * width))

    return _Stats(p1=percentile(1.0), median=percentile(50.0), p99=percentile(99.0))


# --------------------------------------------------------------------------- local operators


def _ring_fill(z: np.ndarray, valid: np.ndarray, rings: int) -> np.ndarray:
    """Fill ``rings`` rings of nodata around data by local linear extrapolation (float64).

    A nodata pixel p next to data takes the mean over the 8 directions d with q = p + d and
    q2 = p + 2d both valid of ``2 z(q) - z(q2)`` (exact for planes, so gradients next to voids
    keep the terrain's slope); without such a pair, the mean of its valid 8-neighbours. Each
    ring looks 2 px away in a fixed summation order, so the result at a pixel depends only on
    pixels within ``2 * rings`` px. Pixels left unfilled are 0.
    """
    z = np.where(valid, z, 0.0)
    valid = valid.copy()
    h, w = z.shape
    dirs = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc]
    for _ in range(rings):
        zp = np.pad(z, 2)
        vp = np.pad(valid, 2)
        lin_sum, lin_n = np.zeros((h, w)), np.zeros((h, w))
        nb_sum, nb_n = np.zeros((h, w)), np.zeros((h, w))
        for dr, dc in dirs:
            q = (slice(2 + dr, 2 + dr + h), slice(2 + dc, 2 + dc + w))
            q2 = (slice(2 + 2 * dr, 2 + 2 * dr + h), slice(2 + 2 * dc, 2 + 2 * dc + w))
            vq = vp[q]
            pair = vq & vp[q2]
            lin_sum += np.where(pair, 2.0 * zp[q] - zp[q2], 0.0)
            lin_n += pair
            nb_sum += zp[q]  # zero where invalid
            nb_n += vq
        new = ~valid & (nb_n > 0)
        if not new.any():
            break
        use_lin = new & (lin_n > 0)
        use_nb = new & ~use_lin
        z[use_lin] = lin_sum[use_lin] / lin_n[use_lin]
        z[use_nb] = nb_sum[use_nb] / nb_n[use_nb]
        valid |= new
    return z


def _horn_gradient(z: np.ndarray, res_x: float, res_y: float) -> tuple[np.ndarray, np.ndarray]:
    """dz/dx (east) and dz/dy (north) in m/m of the interior of ``z`` (shape - 2), Horn's kernel."""
    a, b, c = z[:-2, :-2], z[:-2, 1:-1], z[:-2, 2:]
    d, f = z[1:-1, :-2], z[1:-1, 2:]
    g, h, i = z[2:, :-2], z[2:, 1:-1], z[2:, 2:]
    dzdx = ((c + 2.0 * f + i) - (a + 2.0 * d + g)) / (8.0 * res_x)
    dzdy = ((a + 2.0 * b + c) - (g + 2.0 * h + i)) / (8.0 * res_y)  # rows run south: north is up
    return dzdx, dzdy


def _laplacian(z: np.ndarray, res_x: float, res_y: float) -> np.ndarray:
    """d2z/dx2 + d2z/dy2 in 1/m of the interior of ``z`` (5-point stencil)."""
    centre = z[1:-1, 1:-1]
    d2x = (z[1:-1, :-2] + z[1:-1, 2:] - 2.0 * centre) / (res_x * res_x)
    d2y = (z[:-2, 1:-1] + z[2:, 1:-1] - 2.0 * centre) / (res_y * res_y)
    return d2x + d2y


def _box_sum(a: np.ndarray, r: int) -> np.ndarray:
    """Sum over (2r+1)^2 squares of an int64 array; output shape is the input shape - 2r.

    Integer cumulative sums make the result exact (wrap-around in the running sums cancels),
    so it does not depend on where the array starts.
    """
    c = np.zeros((a.shape[0] + 1, a.shape[1] + 1), dtype=np.int64)
    np.cumsum(a, axis=0, out=c[1:, 1:])
    np.cumsum(c[1:, 1:], axis=1, out=c[1:, 1:])
    n = 2 * r + 1
    return c[n:, n:] - c[:-n, n:] - c[n:, :-n] + c[:-n, :-n]


def _local_relief(zc: np.ndarray, valid: np.ndarray, r: int, origin: tuple[int, int]) -> np.ndarray:
    """local_relief of the interior (shape - 2r) of median-centred elevations ``zc`` (m).

    Per pixel, the least-squares plane through the valid elevations of its (2r+1)^2 square is
    fitted; the relief is the pixel's height above the plane divided by twice the RMS residual
    (at least ``RELIEF_RMS_FLOOR_M``), clipped to -1..1. For a full square the plane's value at
    the centre is the local mean; for squares cut by the raster edge or by voids, the plane
    removes the bias a one-sided mean would have on slopes. Moments are integer box sums
    (centimetres, raster-wide pixel coordinates: ``origin`` is the raster row/col of
    ``zc[0, 0]``), so the result does not depend on the block.
    """
    h, w = zc.shape
    zi = np.where(valid, np.rint(zc * 100.0), 0.0).astype(np.int64)  # centimetres
    v = valid.astype(np.int64)
    rows = np.arange(origin[0], origin[0] + h, dtype=np.int64)[:, None]
    cols = np.arange(origin[1], origin[1] + w, dtype=np.int64)[None, :]
    vi, vj = v * rows, v * cols
    n = _box_sum(v, r)
    s_i, s_j = _box_sum(vi, r), _box_sum(vj, r)
    s_ii, s_jj, s_ij = _box_sum(vi * rows, r), _box_sum(vj * cols, r), _box_sum(vi * cols, r)
    s_z, s_iz, s_jz = _box_sum(zi, r), _box_sum(zi * rows, r), _box_sum(zi * cols, r)
    s_zz = _box_sum(zi * zi, r)
    i0, j0 = rows[r : h - r], cols[:, r : w - r]
    # moments about the output pixel, exact in (wrapping) int64 arithmetic
    su, sw = s_j - j0 * n, s_i - i0 * n
    suu = s_jj - 2 * j0 * s_j + j0 * j0 * n
    sww = s_ii - 2 * i0 * s_i + i0 * i0 * n
    suw = s_ij - i0 * s_j - j0 * s_i + i0 * j0 * n
    suz, swz = s_jz - j0 * s_z, s_iz - i0 * s_z
    nf = np.maximum(n, 1).astype(np.float64)
    mu, mw, mz = su / nf, sw / nf, s_z / nf
    cuu, cww, cuw = suu - su * mu, sww - sw * mw, suw - su * mw
    cuz, cwz = suz - su * mz, swz - sw * mz
    czz = s_zz - s_z * mz
    det = cuu * cww - cuw * cuw
    ok = det > 1e-9 * cuu * cww + 1e-12
    det = np.where(ok, det, 1.0)
    b = np.where(ok, (cuz * cww - cwz * cuw) / det, 0.0)  # cm per column
    c = np.where(ok, (cwz * cuu - cuz * cuw) / det, 0.0)  # cm per row
    at_centre = mz - b * mu - c * mw
    rms_m = np.sqrt(np.maximum(czz - b * cuz - c * cwz, 0.0) / nf) / 100.0
    height_m = (zi[r : h - r, r : w - r] - at_centre) / 100.0
    return np.clip(height_m / (2.0 * np.maximum(rms_m, RELIEF_RMS_FLOOR_M)), -1.0, 1.0)


# --------------------------------------------------------------------------- block computation


def _compute_block(
    zp: np.ndarray,
    validp: np.ndarray,
    halo: int,
    core_off: tuple[int, int],
    raster_shape: tuple[int, int],
    stats: _Stats,
    settings: FeatureSettings,
    res: tuple[float, float],
) -> np.ndarray:
    """Channels (C, h, w) of the core of a halo-padded block (``zp`` float64, NaN outside)."""
    hh, ww = zp.shape[0] - 2 * halo, zp.shape[1] - 2 * halo
    core = (slice(halo, halo + hh), slice(halo, halo + ww))
    z = zp[core]
    valid = validp[core]
    zc_all = np.where(validp, zp - stats.median, 0.0)
    out: dict[str, np.ndarray] = {}
    chans = settings.channels

    if "elevation" in chans:
        out["elevation"] = stats.normalise(z)

    if set(chans) & DERIVATIVE_CHANNELS:
        m = 1 + 2 * FILL_RINGS
        sub = (slice(halo - m, halo + hh + m), slice(halo - m, halo + ww + m))
        zf = _ring_fill(zc_all[sub], validp[sub], FILL_RINGS)[m - 1 : 1 - m, m - 1 : 1 - m]  # 1 px margin
        dzdx, dzdy = _horn_gradient(zf, *res)
        tan_slope = np.hypot(dzdx, dzdy)
        if "sobel" in chans:
            out["sobel"] = np.clip(tan_slope, 0.0, 1.0)
        if "slope" in chans:
            out["slope"] = np.degrees(np.arctan(tan_slope)) / 90.0
        if "hillshade" in chans:
            out["hillshade"] = hillshade(
                dzdx, dzdy, settings.hillshade_azimuth_deg, settings.hillshade_altitude_deg
            )
        if "curvature" in chans:
            out["curvature"] = np.clip(-_laplacian(zf, *res) / CURVATURE_SCALE_PER_M, -1.0, 1.0)

    if "local_relief" in chans:
        r = relief_radius_px(settings, 0.5 * (res[0] + res[1]))
        relief = np.empty((hh, ww))
        for s0 in range(0, hh, RELIEF_STRIP_ROWS):  # strips bound the many moment arrays
            s1 = min(hh, s0 + RELIEF_STRIP_ROWS)
            sub = (slice(halo - r + s0, halo + s1 + r), slice(halo - r, halo + ww + r))
            top_left = (core_off[0] + s0 - r, core_off[1] - r)
            relief[s0:s1] = _local_relief(zc_all[sub], validp[sub], r, top_left)
        out["local_relief"] = relief

    if "clahe" in chans:
        k = settings.clahe_kernel_px
        height, width = raster_shape
        r0, c0 = core_off
        # window aligned on the raster-wide k grid, covering every region the core uses
        wr0 = max(0, (r0 - k) // k * k)
        wc0 = max(0, (c0 - k) // k * k)
        wr1 = min(height, -(-(r0 + hh + k) // k) * k)
        wc1 = min(width, -(-(c0 + ww + k) // k) * k)
        top, left = r0 - halo, c0 - halo  # raster position of zp[0, 0]
        win = (slice(wr0 - top, wr1 - top), slice(wc0 - left, wc1 - left))
        norm = stats.normalise(np.where(validp[win], zp[win], stats.median))
        levels = clahe_window(
            norm,
            k,
            settings.clahe_clip_limit,
            at_end=(wr1 == height, wc1 == width),
            core=(slice(r0 - wr0, r0 - wr0 + hh), slice(c0 - wc0, c0 - wc0 + ww)),
        )
        out["clahe"] = levels / np.float32(CLAHE_LEVELS - 1)

    stack = np.stack([np.asarray(out[name], dtype=np.float32) for name in chans])
    stack[:, ~valid] = NODATA_FLOAT
    return stack


def compute_features(
    dem_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    settings: FeatureSettings,
    *,
    region: str = "",
) -> None:
    """Write the channel stack of a DEM (metric CRS, metres) as a float32 multi-band GeoTIFF.

    Same grid as the DEM; bands in ``settings.channels`` order, named by band description;
    nodata ``NODATA_FLOAT`` in every band where the DEM is nodata. Tags record the global
    statistics (``elevation_p1``, ``elevation_median``, ``elevation_p99``, metres).
    """
    what = grid_what("DEM", region)
    with open_raster(dem_path, what=what) as ds:
        check_metric_grid(ds, what, dem_path)
        res_x, res_y = abs(ds.transform.a), abs(ds.transform.e)
        height, width = ds.height, ds.width
        stats = _global_stats(ds, settings.block_px, what, dem_path)
        halo = channel_halo_px(settings, 0.5 * (res_x + res_y))
        nodata = ds.nodata
        profile = geotiff_profile(
            width=width,
            height=height,
            count=len(settings.channels),
            dtype="float32",
            crs=ds.crs,
            transform=ds.transform,
            nodata=NODATA_FLOAT,
        )
        with atomic_write(out_path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            dst.descriptions = tuple(settings.channels)
            dst.update_tags(
                channels=",".join(settings.channels),
                elevation_p1=repr(stats.p1),
                elevation_median=repr(stats.median),
                elevation_p99=repr(stats.p99),
            )
            for win in iter_windows(height, width, settings.block_px):
                zp, validp = _read_padded(ds, win, halo, nodata)
                block = _compute_block(
                    zp,
                    validp,
                    halo,
                    (int(win.row_off), int(win.col_off)),
                    (height, width),
                    stats,
                    settings,
                    (res_x, res_y),
                )
                dst.write(block, window=win)


def _read_padded(
    ds: rasterio.DatasetReader, win: Window, halo: int, nodata: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``win`` grown by ``halo`` on every side as float64; pixels outside the raster are invalid."""
    r0, c0 = int(win.row_off) - halo, int(win.col_off) - halo
    h, w = int(win.height) + 2 * halo, int(win.width) + 2 * halo
    rr0, cc0 = max(r0, 0), max(c0, 0)
    rr1, cc1 = min(r0 + h, ds.height), min(c0 + w, ds.width)
    zp = np.full((h, w), np.nan)
    data = ds.read(1, window=Window(cc0, rr0, cc1 - cc0, rr1 - rr0))
    zp[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = data
    validp = _valid(zp, nodata)
    return zp, validp
