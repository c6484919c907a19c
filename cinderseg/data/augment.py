"""Shape augmentation of training tiles: vertical exaggeration and resolution (zoom). NumPy only.

The network should recognise a cone by its shape, not by its absolute height or its size in
pixels. Two augmentations act on the precomputed channels of a tile (see :mod:`cinderseg.terrain.features`
for their definitions) so that the result is what the features step would have computed from a
transformed DEM:

Vertical exaggeration ``z -> f * z`` (``train.relief_exaggeration``). Per channel:

``elevation``, ``clahe``
    Unchanged, exactly: the elevation is normalised by the region's 1st/99th percentiles, which
    scale with ``z``; CLAHE equalises that normalised elevation.
``slope``
    Exact: ``tan s' = f tan s``.
``sobel``
    ``clip(f |grad z|, 0, 1)``. Exact where the slope channel is present (``|grad z| = tan s`` is
    taken from it, also where sobel was clipped at 1) and wherever sobel < 1 or f >= 1; without a
    slope channel and with f < 1, pixels clipped at 1 (slopes of 45 deg or more) become ``f``, a
    lower bound of the true value.
``hillshade``
    ``cos(alt) sin(s) A + sin(alt) cos(s)`` with ``A = cos(azimuth - aspect)``-like term of the
    downslope direction, which exaggeration does not change: ``A`` is solved from the old
    hillshade and slope, then the formula is re-evaluated at ``s'``. The slope angle comes from the
    slope channel (exact) or else from sobel (exact where sobel < 1; where it is clipped,
    ``tan s = 1`` is a lower bound, approximate). Where the hillshade was clipped to 0 (in shadow)
    only a bound ``A <= -tan(alt) / tan(s)`` is known: with f >= 1 the pixel stays in shadow
    (exact); with f < 1 ``A`` is taken in the middle of its feasible interval ``[-1, bound]``
    (approximate, consistent with the old value). Shadowed pixels without a feasible ``A`` (only
    the zero fill of nodata pixels) stay 0. Without a slope or sobel channel the slope angle is
    unknown and the hillshade is left unchanged (logged at train start as not transformed).
``curvature``
    ``clip(f * curvature, -1, 1)`` (the Laplacian scales with ``z``). Exact except, with f < 1, at
    pixels clipped at +-1, which become +-f (a lower bound of the magnitude).
``local_relief``
    Unchanged: height above the local plane over twice the residual RMS, both scaling with ``z``.
    Exact where the RMS of the neighbourhood is at least ``RELIEF_RMS_FLOOR_M`` (10 m) times
    ``max(1, 1/f)``. Where the floor binds (smooth ground) the true value is the old one times a
    factor between 1 and ``f``; the tiles do not hold the RMS, so it is left unchanged
    (approximate there, with an error of at most ``|f - 1|`` times the value).

Resolution (zoom) ``s`` (``train.resolution_scale``): the tile is resampled so that cones appear
``s`` times larger in pixels, about its centre, as if the DEM had pixels ``s`` times smaller (s > 1:
the centre is cropped and upsampled; s < 1: the tile is downsampled and the border filled by mirror
reflection of the tile). Channels are interpolated bilinearly, the mask takes the nearest pixel at
the same coordinates, so tile and mask stay aligned. All channels are in resolution-independent units
(slope and gradient in m/m, curvature in 1/m, local_relief with a radius in metres), so resampling
approximates recomputation at the other pixel size (up to the smoothing of interpolation); the
CLAHE contextual regions are a fixed number of pixels, so clahe after zoom corresponds to regions
``s`` times larger (approximate).

The draws (:func:`shape_draws`) are a pure function of ``(seed, epoch)``, like the tile draws of
:func:`cinderseg.nn.pipeline.epoch_draws`, so a resumed training sees the same tiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cinderseg.terrain.features import RELIEF_RMS_FLOOR_M

EXACT, APPROXIMATE, NOT_TRANSFORMED = "exact", "approximate", "not transformed"
MAX_SLOPE_FRACTION = 0.9999
"""Largest slope channel value used (89.99 deg): keeps tan s finite for float16 values near 1."""
SHAPE_STREAM = 7
"""Extra seed word of the shape draws: a random stream apart from the tile draws of each epoch."""


# --------------------------------------------------------------------------- vertical exaggeration


def tan_slope_from_slope(slope: np.ndarray) -> np.ndarray:
    """``tan s`` (m/m) from the slope channel (degrees / 90)."""
    return np.tan(np.clip(np.asarray(slope, dtype=np.float64), 0.0, MAX_SLOPE_FRACTION) * (math.pi / 2))


def exaggerate_slope(slope: np.ndarray, f: float) -> np.ndarray:
    """Slope channel (degrees / 90) of the DEM ``f * z``: ``tan s' = f tan s``."""
    return np.degrees(np.arctan(f * tan_slope_from_slope(slope))) / 90.0


def exaggerate_sobel(sobel: np.ndarray, f: float, tan_slope: np.ndarray | None = None) -> np.ndarray:
    """Sobel channel (``|grad z|`` clipped to 0..1) of ``f * z``; ``tan_slope`` (m/m, from the slope
    channel) replaces the clipped sobel values when given."""
    grad = np.asarray(sobel, dtype=np.float64) if tan_slope is None else tan_slope
    return np.clip(f * grad, 0.0, 1.0)


def exaggerate_curvature(curvature: np.ndarray, f: float) -> np.ndarray:
    """Curvature channel (minus the Laplacian, scaled and clipped to -1..1) of ``f * z``."""
    return np.clip(f * np.asarray(curvature, dtype=np.float64), -1.0, 1.0)


def exaggerate_hillshade(
    hillshade: np.ndarray, tan_slope: np.ndarray, f: float, altitude_deg: float
) -> np.ndarray:
    """Hillshade channel (0..1) of ``f * z`` from the hillshade and ``tan s`` (m/m) of ``z``.

    ``hillshade = cos(alt) sin(s) A + sin(alt) cos(s)`` (clipped at 0) where ``A`` in -1..1 depends
    only on the downslope direction and the sun's azimuth; see the module docstring for shadowed
    (clipped) pixels.
    """
    hs = np.asarray(hillshade, dtype=np.float64)
    t = np.maximum(np.asarray(tan_slope, dtype=np.float64), 0.0)
    alt = math.radians(altitude_deg)
    sin_alt, cos_alt = math.sin(alt), math.cos(alt)
    sec_old, sec_new = np.sqrt(1.0 + t * t), np.sqrt(1.0 + (f * t) ** 2)  # 1 / cos s, 1 / cos s'
    lit = hs > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        # A = (hs - cos s sin alt) / (sin s cos alt), with sin s = t cos s
        a_lit = np.where(t > 1e-9, (hs * sec_old - sin_alt) / (t * cos_alt), 0.0)
        bound = np.where(t > 1e-12, -math.tan(alt) / t, -np.inf)  # A <= bound in shadow
    feasible_dark = ~lit & (bound >= -1.0)
    a = np.where(lit, np.clip(a_lit, -1.0, 1.0), 0.5 * (np.maximum(bound, -1.0) - 1.0))
    out = np.clip((f * t * cos_alt * a + sin_alt) / sec_new, 0.0, 1.0)
    return np.where(lit | feasible_dark, out, 0.0)


def exaggeration_report(channels: Sequence[str]) -> dict[str, tuple[str, str]]:
    """How each channel is transformed by vertical exaggeration with these channels available:
    ``{channel: (exact | approximate | not transformed, why)}`` (see the module docstring)."""
    chans = set(channels)
    floor = f"{RELIEF_RMS_FLOOR_M:g} m"
    report: dict[str, tuple[str, str]] = {}
    for name in channels:
        if name in ("elevation", "clahe"):
            report[name] = (EXACT, "unchanged (normalised by percentiles that scale with z)")
        elif name == "slope":
            report[name] = (EXACT, "tan s' = f tan s")
        elif name == "sobel":
            report[name] = (
                (EXACT, "f |grad z| from the slope channel, clipped")
                if "slope" in chans
                else (
                    APPROXIMATE,
                    "f x sobel; with f < 1, pixels clipped at 1 (>= 45 deg) become f, a lower bound",
                )
            )
        elif name == "hillshade":
            if "slope" in chans:
                report[name] = (
                    APPROXIMATE,
                    "re-evaluated at the new slope (exact where lit; in shadow with f < 1 the aspect term "
                    "is taken mid-way in its feasible interval)",
                )
            elif "sobel" in chans:
                report[name] = (
                    APPROXIMATE,
                    "re-evaluated at the new slope from sobel (exact where lit and sobel < 1; tan s = 1 "
                    "where sobel is clipped; shadowed pixels as with slope)",
                )
            else:
                report[name] = (
                    NOT_TRANSFORMED,
                    "left unchanged: the slope angle is needed and there is no slope or sobel channel",
                )
        elif name == "curvature":
            report[name] = (
                APPROXIMATE,
                "f x curvature, clipped; with f < 1 pixels clipped at +-1 become +-f",
            )
        elif name == "local_relief":
            report[name] = (
                APPROXIMATE,
                f"unchanged; exact where the neighbourhood RMS >= {floor} x max(1, 1/f), otherwise the "
                "true value is the old one times a factor between 1 and f",
            )
        else:
            report[name] = (NOT_TRANSFORMED, "unknown channel: left unchanged")
    return report


def exaggerate_channels(x: np.ndarray, channels: Sequence[str], f: float, altitude_deg: float) -> np.ndarray:
    """The channels ``x`` (H, W, C) of a tile as computed from the DEM ``f * z``, float32.

    ``channels`` names the bands of ``x``; ``altitude_deg`` is the sun altitude of the hillshade
    (``features.hillshade_altitude_deg``). ``f == 1`` returns ``x`` unchanged.
    """
    x = np.asarray(x, dtype=np.float32)
    if f == 1.0:
        return x
    channels = list(channels)
    index = {name: i for i, name in enumerate(channels)}
    tan_slope = None
    if "slope" in index:
        tan_slope = tan_slope_from_slope(x[..., index["slope"]])
    elif "sobel" in index:
        tan_slope = np.asarray(x[..., index["sobel"]], dtype=np.float64)  # tan s, a lower bound where 1
    out = x.copy()
    for name, i in index.items():
        band = x[..., i]
        if name == "slope":
            out[..., i] = exaggerate_slope(band, f)
        elif name == "sobel":
            out[..., i] = exaggerate_sobel(band, f, tan_slope if "slope" in index else None)
        elif name == "curvature":
            out[..., i] = exaggerate_curvature(band, f)
        elif name == "hillshade" and tan_slope is not None:
            out[..., i] = exaggerate_hillshade(band, tan_slope, f, altitude_deg)
    return out


# --------------------------------------------------------------------------- resolution (zoom)


def zoom_coordinates(n: int, s: float) -> np.ndarray:
    """Source pixel coordinates (float) of the ``n`` output pixels along one axis for zoom ``s``.

    Output pixel ``i`` samples ``c + (i - c) / s`` with ``c = (n - 1) / 2``; coordinates beyond the
    tile are mirrored about its edges (symmetric reflection about -0.5 and ``n - 0.5``).
    """
    c = (n - 1) / 2.0
    u = c + (np.arange(n, dtype=np.float64) - c) / s
    v = np.mod(u + 0.5, 2.0 * n)
    v = np.where(v > n, 2.0 * n - v, v) - 0.5
    return np.clip(v, 0.0, n - 1.0)


def _bilinear(a: np.ndarray, u: np.ndarray, axis: int) -> np.ndarray:
    n = a.shape[axis]
    i0 = np.minimum(np.floor(u).astype(np.int64), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (u - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    return np.take(a, i0, axis=axis) * (1.0 - w) + np.take(a, i1, axis=axis) * w


def zoom_pair(x: np.ndarray, y: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Tile ``x`` (H, W, C) and mask ``y`` (H, W, ...) resampled so that features appear ``s`` times
    larger in pixels (about the tile's centre; mirror-filled border for s < 1): bilinear for ``x``
    (float32), nearest for ``y`` (same dtype), at the same coordinates. ``s == 1`` is the identity."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    if s == 1.0:
        return x, y
    rows, cols = zoom_coordinates(x.shape[0], s), zoom_coordinates(x.shape[1], s)
    xz = _bilinear(_bilinear(x, rows, 0), cols, 1).astype(np.float32)
    ri = np.minimum(np.floor(rows + 0.5).astype(np.int64), y.shape[0] - 1)
    ci = np.minimum(np.floor(cols + 0.5).astype(np.int64), y.shape[1] - 1)
    return xz, y[ri][:, ci]


# --------------------------------------------------------------------------- draws and the whole tile


def log_uniform(rng: np.random.Generator, bounds: Sequence[float] | None, n: int) -> np.ndarray:
    """``n`` factors drawn log-uniformly within ``bounds`` ([lo, hi]); ones without bounds.

    The generator advances by ``n`` draws either way, so switching one augmentation on or off does
    not change the draws of the other.
    """
    u = rng.random(n)
    if bounds is None:
        return np.ones(n)
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    return np.exp(lo + (hi - lo) * u)


def shape_draws(
    n: int,
    epoch: int,
    *,
    seed: int,
    relief_exaggeration: Sequence[float] | None,
    resolution_scale: Sequence[float] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exaggeration factors ``f`` and zooms ``s`` of the ``n`` tiles of one epoch (ones where off).

    A pure function of ``(seed, epoch)``, from a random stream apart from the tile draws.
    """
    rng = np.random.default_rng([seed % 2**32, epoch, SHAPE_STREAM])
    f = log_uniform(rng, relief_exaggeration, n)
    s = log_uniform(rng, resolution_scale, n)
    return f, s


def augment_tile(
    x: np.ndarray,
    y: np.ndarray,
    channels: Sequence[str],
    *,
    exaggeration: float = 1.0,
    scale: float = 1.0,
    altitude_deg: float = 45.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Tile ``x`` (H, W, C) and mask ``y`` after vertical exaggeration, then zoom (float32 ``x``)."""
    x = exaggerate_channels(x, channels, exaggeration, altitude_deg)
    return zoom_pair(x, y, scale)
