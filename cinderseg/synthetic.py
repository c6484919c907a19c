"""Synthetic volcanic regions: a basaltic shield flank with a cinder-cone field, built offline.

The terrain imitates the upper flanks of Mauna Kea (Hawaii) at DEM scale:

- a broad shield whose summit lies outside (or at the edge of) the region, so that the region is a
  flank with a regional slope of a few degrees, plus multi-scale fractal roughness (spectral synthesis,
  elongated downslope like flow-banded lava surfaces);
- distractors that are *not* labelled: lava-flow lobes with levees and channels, erosional gullies,
  pit craters (depressions without a cone) and knobs (elongated hills and cracked tumuli);
- cinder cones calibrated to the morphometry of Mauna Kea cones (Porter 1972; Wood 1980): height about
  ``height_ratio`` (0.18) x basal diameter, crater (rim-to-rim) diameter about 0.40 x basal diameter, flank
  slopes near 25-33 degrees, log-normal basal diameters. Some craters are breached (horseshoe, open
  downslope), some cones overlap a neighbour (coalesced; heights combine by maximum) and the others do not
  overlap at all. Cone height is measured above the local base surface: each cone sits on the sloping flank
  and buries the flows, gullies and roughness under it (the base under a cone is the plane fitted to the
  ring around it).

Everything is drawn from ``numpy.random.Generator`` streams spawned from the seed, one per component, so the
same parameters give a bit-identical DEM and cone table, and switching one distractor family off leaves the
rest of the terrain unchanged. Arrays are float32; the peak memory is a few full-size float32 arrays (a
4096 x 4096 region needs well under 1 GB).

Coordinates: the DEM is north-up with square pixels of ``resolution_m`` metres, upper-left corner at
(``origin_x``, ``origin_y``) in the projected CRS ``crs`` (metres). Internally positions are kept as local
(east, north) metres from the upper-left corner: pixel (row, col) has its centre at
east = (col + 0.5) * res, north = -(row + 0.5) * res.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import affine
import geopandas as gpd
import numpy as np
import rasterio
import scipy.fft
from rasterio.crs import CRS
from rasterio.errors import CRSError
from scipy import ndimage, special
from scipy.spatial import cKDTree
from shapely.geometry import Point

from cinderseg.errors import ConfigError
from cinderseg.raster import NODATA_FLOAT, atomic_write, geotiff_profile
from cinderseg.settings import known_keys_only

__all__ = [
    "CONE_COLUMNS",
    "SyntheticParams",
    "SyntheticRegion",
    "generate_synthetic_region",
    "write_synthetic_region",
]

#: Attribute columns of the cone table, in order (the geometry column comes last).
CONE_COLUMNS: tuple[str, ...] = (
    "cone_id",
    "x",
    "y",
    "radius_m",
    "basal_diameter_m",
    "height_m",
    "crater",
    "crater_diameter_m",
    "breached",
    "coalesced",
)

# Morphometry of Mauna Kea cinder cones (Porter 1972; Wood 1980).
CRATER_RATIO = 0.40  # crater (rim-to-rim) diameter / basal diameter
HEIGHT_SCATTER = 0.10  # relative standard deviation of height / basal diameter around height_ratio
CRATER_SCATTER = 0.06  # relative standard deviation of the crater ratio
MIN_FLANK_SLOPE_DEG = 24.0  # flank slopes of the default cones are kept in this band (Wood 1980: 25-33 deg)
MAX_FLANK_SLOPE_DEG = 34.0
MAX_INNER_SLOPE_DEG = 35.0  # crater walls are not steeper than the angle of repose (at the rim)

_F32 = np.float32


def _fmt(value: Any) -> str:
    """A value as it should appear in a one-line config message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return repr(value)
    return f"{float(value):g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class SyntheticParams:
    """Parameters of a synthetic region: the ``synthetic:`` block of a region, plus its pixel size.

    Field names and defaults are those of ``schemas/config.schema.yaml`` (definitions.region.synthetic).
    Lengths are metres; ``crs`` must be a projected CRS in metres. Construction validates every field and
    raises :class:`ConfigError` with a one-line message naming the key.
    """

    seed: int = 1
    width_px: int = 1024
    height_px: int = 1024
    crs: str = "EPSG:32605"
    origin_x: float = 200000.0
    origin_y: float = 2200000.0
    n_cones: int = 60
    diameter_median_m: float = 600.0
    diameter_sigma: float = 0.45
    diameter_min_m: float = 200.0
    diameter_max_m: float = 1700.0
    height_ratio: float = 0.18
    crater_fraction: float = 0.7
    breached_fraction: float = 0.25
    coalesced_fraction: float = 0.15
    shield_height_m: float = 4000.0
    n_lava_flows: int = 12
    n_gullies: int = 20
    n_pit_craters: int = 6
    n_knobs: int = 10
    resolution_m: float = 30.0

    def __post_init__(self) -> None:
        self._validate()

    @classmethod
    def from_config(cls, synthetic: Mapping[str, Any] | None, resolution_m: float) -> SyntheticParams:
        """Build from a region's ``synthetic:`` mapping (missing keys take defaults) and its ``resolution_m``.

        Unknown keys, wrong types and impossible values raise :class:`ConfigError`.
        """
        known = (f.name for f in dataclasses.fields(cls) if f.name != "resolution_m")
        return cls(**known_keys_only("synthetic", synthetic, known), resolution_m=resolution_m)

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        def key(name: str) -> str:
            return "resolution_m" if name == "resolution_m" else f"synthetic.{name}"

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "crs":
                if not isinstance(value, str) or not value.strip():
                    raise ConfigError(
                        f"{key(f.name)} ({_fmt(value)}) must be a CRS string such as 'EPSG:32605'"
                    )
            elif f.type in ("int", int):
                if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                    raise ConfigError(f"{key(f.name)} ({_fmt(value)}) must be an integer")
            else:
                if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                    raise ConfigError(f"{key(f.name)} ({_fmt(value)}) must be a finite number")

        for name in ("width_px", "height_px"):
            if getattr(self, name) < 32:
                raise ConfigError(f"{key(name)} ({getattr(self, name)}) must be at least 32")
        for name in ("n_cones", "n_lava_flows", "n_gullies", "n_pit_craters", "n_knobs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{key(name)} ({getattr(self, name)}) must be >= 0")
        for name in ("diameter_median_m", "diameter_min_m", "diameter_max_m", "height_ratio", "resolution_m"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{key(name)} ({_fmt(getattr(self, name))}) must be > 0")
        for name in ("diameter_sigma", "shield_height_m"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{key(name)} ({_fmt(getattr(self, name))}) must be >= 0")
        for name in ("crater_fraction", "breached_fraction", "coalesced_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{key(name)} ({_fmt(getattr(self, name))}) must be between 0 and 1")
        if self.diameter_min_m > self.diameter_max_m:
            raise ConfigError(
                f"synthetic.diameter_min_m ({_fmt(self.diameter_min_m)}) is larger than "
                f"synthetic.diameter_max_m ({_fmt(self.diameter_max_m)})"
            )
        if self.height_ratio >= 1.0:
            raise ConfigError(
                f"synthetic.height_ratio ({_fmt(self.height_ratio)}) must be below 1 "
                "(cinder cones are about 0.18 x their basal diameter high)"
            )
        crs = self.crs_object()
        if not crs.is_projected or (crs.linear_units or "").lower() not in ("metre", "meter", "m"):
            raise ConfigError(
                f"synthetic.crs ({self.crs!r}) must be a projected CRS in metres (e.g. a UTM zone)"
            )

    def crs_object(self) -> CRS:
        """The CRS as a rasterio object (ConfigError if it cannot be parsed)."""
        try:
            return CRS.from_user_input(self.crs)
        except CRSError as err:
            raise ConfigError(f"synthetic.crs ({self.crs!r}) is not a valid CRS: {err}") from err

    @property
    def transform(self) -> affine.Affine:
        """North-up affine transform of the generated grid (CRS units = metres)."""
        return affine.Affine(
            float(self.resolution_m),
            0.0,
            float(self.origin_x),
            0.0,
            -float(self.resolution_m),
            float(self.origin_y),
        )


@dataclass
class SyntheticRegion:
    """A generated region: DEM (float32 metres, no nodata), its georeferencing, and the true cones.

    ``cones`` has one row per cone with the columns of :data:`CONE_COLUMNS` (centre ``x``/``y`` in CRS
    units, lengths in metres, ``coalesced`` True for every cone that overlaps another one) and a circle
    polygon of the basal outline as geometry.
    """

    dem: np.ndarray
    transform: affine.Affine
    crs: CRS
    cones: gpd.GeoDataFrame


# ====================================================================== small helpers
def _smoothstep(t: np.ndarray) -> np.ndarray:
    """Cubic smoothstep of ``t`` clipped to [0, 1] (keeps float32)."""
    t = np.clip(t, 0, 1)
    return t * t * (3 - 2 * t)


def _wrap(angle: np.ndarray | float) -> Any:
    """Angle wrapped to (-pi, pi]."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


@dataclass(frozen=True)
class _Grid:
    """The pixel grid in local metres: east of the left edge, north of the top edge (negative inside)."""

    height: int
    width: int
    res: float

    @property
    def extent_e(self) -> float:
        return self.width * self.res

    @property
    def extent_n(self) -> float:
        return self.height * self.res

    def window(self, ce: float, cn: float, half: float) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
        """Pixel slices and float32 local coordinates (relative to the centre) of a square of half-side
        ``half`` metres around (ce, cn); None when it misses the grid."""
        c0 = max(0, math.floor((ce - half) / self.res))
        c1 = min(self.width, math.ceil((ce + half) / self.res) + 1)
        r0 = max(0, math.floor((-cn - half) / self.res))
        r1 = min(self.height, math.ceil((-cn + half) / self.res) + 1)
        if c0 >= c1 or r0 >= r1:
            return None
        de = ((np.arange(c0, c1) + 0.5) * self.res - ce).astype(_F32)
        dn = (-(np.arange(r0, r1) + 0.5) * self.res - cn).astype(_F32)
        return slice(r0, r1), slice(c0, c1), de[None, :], dn[:, None]


def _downslope(summit: tuple[float, float], e: float, n: float) -> float:
    """Azimuth (radians, counter-clockwise from east) pointing away from the shield summit."""
    return math.atan2(n - summit[1], e - summit[0])


# ====================================================================== shield and roughness
def _shield(
    p: SyntheticParams, grid: _Grid, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[float, float]]:
    """Shield flank surface (float32 metres) and the summit position (local metres, outside or on the edge).

    Profile: z = H (1 - rho)^1.4 with rho the distance from the summit over the shield radius (concave-up
    lower flank, rounded summit); the radius is at least H / tan(5 deg) and reaches past the far corner of
    the region, so the regional slope is a few degrees.
    """
    half_e, half_n = grid.extent_e / 2, grid.extent_n / 2
    theta = rng.uniform(0.0, 2 * math.pi)
    ce, cn = half_e, -half_n
    to_edge = min(
        half_e / max(abs(math.cos(theta)), 1e-9),
        half_n / max(abs(math.sin(theta)), 1e-9),
    )
    dist = to_edge * rng.uniform(1.0, 1.5)
    summit = (ce + dist * math.cos(theta), cn + dist * math.sin(theta))
    corners = [(0.0, 0.0), (grid.extent_e, 0.0), (0.0, -grid.extent_n), (grid.extent_e, -grid.extent_n)]
    far = max(math.hypot(x - summit[0], y - summit[1]) for x, y in corners)
    radius = max(p.shield_height_m / math.tan(math.radians(5.0)), 1.1 * far, 1.0)

    de = (((np.arange(grid.width) + 0.5) * grid.res - summit[0]) / radius).astype(_F32)
    dn = ((-(np.arange(grid.height) + 0.5) * grid.res - summit[1]) / radius).astype(_F32)
    rho = np.hypot(de[None, :], dn[:, None])
    rho0 = _F32(0.08)
    rho = np.sqrt(rho * rho + rho0 * rho0) - rho0  # rounded summit instead of an apex
    np.clip(_F32(1.0) - rho, 0, 1, out=rho)
    z = np.power(rho, _F32(1.4), out=rho)
    z *= _F32(p.shield_height_m)
    return z, summit


def _roughness(grid: _Grid, rng: np.random.Generator, downslope_az: float) -> np.ndarray:
    """Multi-scale fractal roughness (float32 metres) by spectral synthesis of white noise.

    Two power-law components: long undulations (std ~8 m, spectral exponent 3.4, corner 8 km) and
    flow-banded texture (std ~1.2 m, exponent 2.6, corner 1.5 km), both elongated downslope.
    """
    h, w = grid.height, grid.width
    noise = rng.standard_normal((h, w), dtype=_F32)
    spec = scipy.fft.rfft2(noise)
    del noise
    ky = scipy.fft.fftfreq(h, d=grid.res).astype(_F32)[:, None]  # rows run south
    kx = scipy.fft.rfftfreq(w, d=grid.res).astype(_F32)[None, :]
    ca, sa = _F32(math.cos(downslope_az)), _F32(math.sin(downslope_az))
    k_par = kx * ca - ky * sa  # wavenumber along the downslope direction (map north = -row)
    k_perp = kx * sa + ky * ca
    # weight of each rfft column in the full spectrum (Parseval): 2 except DC and Nyquist columns
    weight = np.full(kx.shape, 2.0, dtype=_F32)
    weight[0, 0] = 1.0
    if w % 2 == 0:
        weight[0, -1] = 1.0

    filt = np.zeros(spec.shape, dtype=_F32)
    for std_m, beta, corner_m, aniso in ((8.0, 3.4, 8000.0, 1.3), (1.2, 2.6, 1500.0, 2.0)):
        k2 = (aniso * k_par) ** 2 + k_perp**2 + _F32(1.0 / corner_m) ** 2
        comp = np.power(k2, _F32(-beta / 4.0))
        comp[0, 0] = 0.0
        norm = math.sqrt(float(np.sum(comp.astype(np.float64) ** 2 * weight)) / (h * w))
        filt += comp * _F32(std_m / max(norm, 1e-30))
        del k2, comp
    spec *= filt
    del filt, k_par, k_perp
    return scipy.fft.irfft2(spec, s=(h, w)).astype(_F32, copy=False)


# ====================================================================== linear features (flows, gullies)
def _walk(
    rng: np.random.Generator,
    grid: _Grid,
    summit: tuple[float, float],
    start: tuple[float, float],
    length: float,
    step: float,
    meander: float,
) -> np.ndarray:
    """Centreline (N x 2 local metres) of a feature running downslope with some meander."""
    n_steps = max(2, int(length / step))
    heading = _downslope(summit, *start) + rng.normal(0.0, 0.25)
    turns = rng.normal(0.0, meander, size=n_steps)
    pts = np.empty((n_steps, 2), dtype=np.float64)
    e, n = start
    margin = 0.25 * max(grid.extent_e, grid.extent_n)
    count = 0
    entered = False
    for i in range(n_steps):
        pts[i] = (e, n)
        count = i + 1
        heading += 0.05 * float(_wrap(_downslope(summit, e, n) - heading)) + turns[i]
        e += step * math.cos(heading)
        n += step * math.sin(heading)
        near = -margin < e < grid.extent_e + margin and -grid.extent_n - margin < n < margin
        if entered and not near:
            break
        entered = entered or near
    return pts[:count]


def _render_line(
    layer: np.ndarray,
    grid: _Grid,
    pts: np.ndarray,
    half_width: np.ndarray,
    profile: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> None:
    """Combine (by maximum) a feature along a centreline into ``layer``.

    ``profile(u, s)`` gives the feature's value from u = distance to the centreline / local half-width and
    s = fraction of the length (0 at the head, 1 at the end) of the nearest centreline point; it must be 0
    for u >= 1.1. The end points give rounded heads and snouts.
    """
    if len(pts) < 2:
        return
    reach = float(half_width.max()) * 1.15
    e0, e1 = pts[:, 0].min() - reach, pts[:, 0].max() + reach
    n0, n1 = pts[:, 1].min() - reach, pts[:, 1].max() + reach
    c0, c1 = max(0, math.floor(e0 / grid.res)), min(grid.width, math.ceil(e1 / grid.res) + 1)
    r0, r1 = max(0, math.floor(-n1 / grid.res)), min(grid.height, math.ceil(-n0 / grid.res) + 1)
    if c0 >= c1 or r0 >= r1:
        return
    # pre-selection of pixels near the centreline by a distance transform on the window grown by the reach
    # (centreline points just off the grid still count), then exact distances by k-d tree
    pad = math.ceil(reach / grid.res) + 2
    cols = np.floor(pts[:, 0] / grid.res).astype(np.int64) - (c0 - pad)
    rows = np.floor(-pts[:, 1] / grid.res).astype(np.int64) - (r0 - pad)
    shape = (r1 - r0 + 2 * pad, c1 - c0 + 2 * pad)
    inside = (cols >= 0) & (cols < shape[1]) & (rows >= 0) & (rows < shape[0])
    if not inside.any():
        return
    free = np.ones(shape, dtype=bool)
    free[rows[inside], cols[inside]] = False
    near = ndimage.distance_transform_edt(free)[pad:-pad, pad:-pad] <= reach / grid.res + 1.5
    rr, cc = np.nonzero(near)
    if rr.size == 0:
        return
    q = np.column_stack(((cc + c0 + 0.5) * grid.res, -(rr + r0 + 0.5) * grid.res))
    dist, idx = cKDTree(pts).query(q, distance_upper_bound=reach)
    ok = np.isfinite(dist)
    if not ok.any():
        return
    rr, cc, dist, idx = rr[ok], cc[ok], dist[ok], idx[ok]
    s = (idx / max(len(pts) - 1, 1)).astype(_F32)
    u = (dist / half_width[idx]).astype(_F32)
    value = profile(u, s).astype(_F32, copy=False)
    sub = layer[r0:r1, c0:c1]
    sub[rr, cc] = np.maximum(sub[rr, cc], value)


def _lava_flows(
    p: SyntheticParams, grid: _Grid, rng: np.random.Generator, summit: tuple[float, float]
) -> np.ndarray:
    """Thickness (float32 metres) of lava-flow lobes: channel between raised levees, rounded lobate snout."""
    layer = np.zeros((grid.height, grid.width), dtype=_F32)
    for _ in range(p.n_lava_flows):
        # a point of the region the flow passes through, backed up the slope so that flows cross the region
        length = rng.uniform(3000.0, 14000.0)
        via_e, via_n = rng.uniform(0.0, 1.0) * grid.extent_e, -rng.uniform(0.0, 1.0) * grid.extent_n
        back = rng.uniform(0.2, 0.9) * length
        up = _downslope(summit, via_e, via_n) + math.pi
        start = (via_e + back * math.cos(up), via_n + back * math.sin(up))
        width0 = rng.uniform(90.0, 380.0)  # half-width at the head, metres
        thick = _F32(rng.uniform(5.0, 18.0))
        levee = _F32(rng.uniform(0.2, 0.45))
        channel = _F32(rng.uniform(0.15, 0.4))
        step = min(grid.res, width0 / 3)
        pts = _walk(rng, grid, summit, start, length, step, meander=0.04 * math.sqrt(step / 30.0))
        frac = np.linspace(0.0, 1.0, len(pts))
        # lobes widen toward the front and pinch and swell along the way
        swell = ndimage.gaussian_filter1d(rng.standard_normal(len(pts)), 600.0 / step, mode="nearest")
        swell *= 0.25 / max(float(np.abs(swell).max()), 1e-9)
        half_width = width0 * (1.0 + 0.8 * frac**1.5) * (1.0 + swell)
        fade = _F32(len(frac) * step / 400.0)  # fade-in over the first 400 m

        def profile(
            u: np.ndarray,
            s: np.ndarray,
            thick=thick,
            levee=levee,
            channel=channel,
            fade=fade,
        ) -> np.ndarray:
            body = np.where(
                u <= 0.7, _F32(1.0), _F32(0.5) * (1 + np.cos(np.pi * np.clip((u - 0.7) / 0.35, 0, 1)))
            )
            chan = _F32(1.0) - _smoothstep((s - _F32(0.65)) / _F32(0.25))  # no channel near the snout
            shape = body + chan * (
                levee * np.exp(-(((u - 0.78) / 0.12) ** 2)) - channel * np.exp(-((u / 0.4) ** 2))
            )
            fade_in = _smoothstep(s * fade)
            return thick * (_F32(0.7) + _F32(0.3) * s) * fade_in * np.maximum(shape, 0)

        _render_line(layer, grid, pts, half_width, profile)
    return layer


def _gullies(
    p: SyntheticParams, grid: _Grid, rng: np.random.Generator, summit: tuple[float, float]
) -> np.ndarray:
    """Depth (float32 metres, positive) of V-shaped erosional gullies deepening downslope."""
    layer = np.zeros((grid.height, grid.width), dtype=_F32)
    for _ in range(p.n_gullies):
        start = (rng.uniform(0.0, 1.0) * grid.extent_e, -rng.uniform(0.0, 1.0) * grid.extent_n)
        length = rng.uniform(1500.0, 9000.0)
        width0 = rng.uniform(40.0, 110.0)
        depth = _F32(rng.uniform(4.0, 22.0))
        step = min(grid.res, width0 / 2)
        pts = _walk(rng, grid, summit, start, length, step, meander=0.02 * math.sqrt(step / 30.0))
        frac = np.linspace(0.0, 1.0, len(pts))
        half_width = width0 * (0.6 + 0.8 * frac)

        def profile(u: np.ndarray, s: np.ndarray, depth=depth) -> np.ndarray:
            along = (
                (_F32(0.4) + _F32(0.6) * s)
                * _smoothstep(s / _F32(0.25))
                * (1 - _smoothstep((s - 0.92) / 0.08))
            )
            return depth * along * np.clip(1 - u, 0, 1) ** _F32(1.6)

        _render_line(layer, grid, pts, half_width, profile)
    return layer


# ====================================================================== cones
@dataclass
class _Cone:
    e: float  # local metres
    n: float
    radius: float
    height: float
    crater: bool
    crater_ratio: float  # rim-to-rim / basal diameter (also rim radius / basal radius)
    depth_frac: float  # crater depth below the rim / cone height
    top_ratio: float  # flat-top radius / basal radius (cones without crater)
    breached: bool
    breach_width: float  # half-width of the breach / crater rim radius
    breach_dir: float  # radians, counter-clockwise from east
    breach_level: float  # how far (fraction) the breach floor at the centre lies below the crater floor
    shape: tuple[tuple[int, float, float], ...]  # (order, amplitude, phase) of the outline perturbation
    rills: tuple[tuple[int, float, float], ...]  # (order, relative amplitude, phase) of flank rills
    coalesced: bool = False


def _diameters(p: SyntheticParams, rng: np.random.Generator, count: int) -> np.ndarray:
    """Basal diameters (m): log-normal (median, sigma) truncated to [min, max] by inverse-CDF sampling."""
    lo, hi = math.log(p.diameter_min_m), math.log(p.diameter_max_m)
    mu = math.log(p.diameter_median_m)
    u = rng.uniform(0.0, 1.0, size=count)
    if p.diameter_sigma > 0:
        a, b = special.ndtr((lo - mu) / p.diameter_sigma), special.ndtr((hi - mu) / p.diameter_sigma)
        if b - a > 1e-12:
            z = special.ndtri(a + u * (b - a))
            return np.clip(np.exp(mu + p.diameter_sigma * z), p.diameter_min_m, p.diameter_max_m)
    return np.full(count, min(max(p.diameter_median_m, p.diameter_min_m), p.diameter_max_m))


def _cone_attributes(p: SyntheticParams, rng: np.random.Generator, diameters: np.ndarray) -> list[_Cone]:
    """Morphometry of each cone (position filled in later)."""
    count = len(diameters)
    n_crater = round(p.crater_fraction * count)
    crater = np.zeros(count, dtype=bool)
    crater[rng.permutation(count)[:n_crater]] = True
    n_breached = round(p.breached_fraction * n_crater)
    breached = np.zeros(count, dtype=bool)
    breached[rng.permutation(np.flatnonzero(crater))[:n_breached]] = True
    # nominal flank slope of the mean cone and the band the flank slopes are kept in (25-33 deg for Mauna Kea)
    mean_slope = math.degrees(math.atan(2 * p.height_ratio / (1 - CRATER_RATIO)))
    slope_lo = math.radians(min(MIN_FLANK_SLOPE_DEG, mean_slope - 3.0))
    slope_hi = math.radians(max(MAX_FLANK_SLOPE_DEG, mean_slope + 3.0))
    cones = []
    for i, d in enumerate(diameters):
        ratio = p.height_ratio * float(np.clip(1 + HEIGHT_SCATTER * rng.standard_normal(), 0.75, 1.25))
        radius = d / 2
        crater_ratio = CRATER_RATIO * float(np.clip(1 + CRATER_SCATTER * rng.standard_normal(), 0.8, 1.2))
        top_ratio = rng.uniform(0.25, 0.4)
        run = radius * (1 - (crater_ratio if crater[i] else top_ratio))  # horizontal extent of the flank
        height = min(max(ratio * d, math.tan(slope_lo) * run), math.tan(slope_hi) * run)
        # crater wall at the rim (parabolic bowl): slope = 2 * depth / rim radius <= tan(35 deg)
        max_depth = math.tan(math.radians(MAX_INNER_SLOPE_DEG)) * crater_ratio * radius / (2 * height)
        depth_frac = min(rng.uniform(0.25, 0.5), max_depth, 0.8)
        shape = tuple(
            (order, float(rng.uniform(0.0, amp)), float(rng.uniform(0.0, 2 * math.pi)))
            for order, amp in ((2, 0.05), (3, 0.02), (4, 0.02))
        )
        rills = tuple(
            (k, float(rng.uniform(0.0, 0.12 / k)), float(rng.uniform(0.0, 2 * math.pi)))
            for k in (int(rng.integers(7, 19)) for _ in range(3))
        )
        cones.append(
            _Cone(
                e=0.0,
                n=0.0,
                radius=radius,
                height=height,
                crater=bool(crater[i]),
                crater_ratio=crater_ratio,
                depth_frac=depth_frac,
                top_ratio=top_ratio,
                breached=bool(breached[i]),
                breach_width=float(rng.uniform(0.45, 0.85)),
                breach_dir=float(rng.normal(0.0, 0.3)),  # offset from downslope, set on placement
                breach_level=float(rng.uniform(0.0, 0.12)),
                shape=shape,
                rills=rills,
            )
        )
    return cones


def _rift_sampler(
    rng: np.random.Generator, grid: _Grid, summit: tuple[float, float], margin: float
) -> Callable[[], tuple[float, float]]:
    """Sampler of cone positions: 60 % clustered along one or two rift zones radiating from the summit,
    40 % uniform; only positions at least ``margin`` inside the region are returned."""
    centre = (grid.extent_e / 2, -grid.extent_n / 2)
    base_az = math.atan2(centre[1] - summit[1], centre[0] - summit[0])
    rifts = [base_az + rng.uniform(-0.5, 0.5) for _ in range(int(rng.integers(1, 3)))]
    spread = 0.08 * math.hypot(grid.extent_e, grid.extent_n)
    d_c = math.hypot(centre[0] - summit[0], centre[1] - summit[1])
    half_diag = 0.5 * math.hypot(grid.extent_e, grid.extent_n)

    def sample() -> tuple[float, float]:
        for _ in range(100):
            if rng.uniform() < 0.6:
                az = rifts[int(rng.integers(len(rifts)))]
                t = rng.uniform(max(0.0, d_c - half_diag), d_c + half_diag)
                off = rng.normal(0.0, spread)
                e = summit[0] + t * math.cos(az) - off * math.sin(az)
                n = summit[1] + t * math.sin(az) + off * math.cos(az)
            else:
                e = rng.uniform(0.0, grid.extent_e)
                n = -rng.uniform(0.0, grid.extent_n)
            if margin <= e <= grid.extent_e - margin and margin <= -n <= grid.extent_n - margin:
                return e, n
        return rng.uniform(margin, grid.extent_e - margin), -rng.uniform(margin, grid.extent_n - margin)

    return sample


def _nominal_relief(cone: _Cone, dist: float) -> float:
    """Height (m) of a cone's unsmoothed flank at ``dist`` metres from its centre (top height inside)."""
    top = cone.crater_ratio if cone.crater else cone.top_ratio
    return cone.height * min(max((1.0 - dist / cone.radius) / (1.0 - top), 0.0), 1.0)


def _place_cones(
    p: SyntheticParams, grid: _Grid, rng: np.random.Generator, summit: tuple[float, float]
) -> list[_Cone]:
    """Draw and place the cones: whole basal circles inside the region; non-coalesced cones do not overlap
    any other cone; each coalesced cone overlaps one already placed cone (both are flagged coalesced)."""
    count = p.n_cones
    if count == 0:
        return []
    cones = _cone_attributes(p, rng, _diameters(p, rng, count))
    fits = (
        f"synthetic.n_cones ({count}): cannot place that many cones with basal diameters up to "
        f"{_fmt(p.diameter_max_m)} m in a {p.width_px}x{p.height_px} px region at {_fmt(p.resolution_m)} m"
    )
    area = grid.extent_e * grid.extent_n
    if sum(math.pi * (1.1 * c.radius) ** 2 for c in cones) > 0.4 * area:
        raise ConfigError(fits + " (cones would cover too much of it); lower n_cones or the diameters")
    n_coal = min(round(p.coalesced_fraction * count), count - 1)
    chosen = rng.permutation(count)
    coal = [int(i) for i in chosen[:n_coal]]
    rest = chosen[n_coal:]
    indep = [int(i) for i in rest[np.argsort([-cones[i].radius for i in rest], kind="stable")]]  # big first
    placed: list[_Cone] = []
    pe, pn, pr = np.empty(count), np.empty(count), np.empty(count)

    def free(e: float, n: float, r: float, skip: int = -1) -> bool:
        k = len(placed)
        if k == 0:
            return True
        d = np.hypot(pe[:k] - e, pn[:k] - n)
        gap = d - 1.08 * (pr[:k] + r)
        if 0 <= skip < k:
            gap[skip] = 1.0
        return bool(np.all(gap > 0))

    def put(cone: _Cone, e: float, n: float) -> None:
        cone.e, cone.n = e, n
        cone.breach_dir = _downslope(summit, e, n) + cone.breach_dir
        pe[len(placed)], pn[len(placed)], pr[len(placed)] = e, n, cone.radius
        placed.append(cone)

    for i in indep:
        cone = cones[i]
        if 2 * cone.radius * 1.02 >= min(grid.extent_e, grid.extent_n):
            raise ConfigError(
                fits + f" (a {_fmt(round(2 * cone.radius))} m cone does not fit); enlarge the region"
            )
        sample = _rift_sampler(rng, grid, summit, cone.radius * 1.02)
        for _ in range(2000):
            e, n = sample()
            if free(e, n, cone.radius):
                put(cone, e, n)
                break
        else:
            raise ConfigError(
                fits + " without overlaps; lower n_cones or the diameters, or enlarge the region"
            )
    for i in coal:
        cone = cones[i]
        margin = cone.radius * 1.02
        for _ in range(2000):
            j = int(rng.integers(len(placed)))
            az = rng.uniform(0.0, 2 * math.pi)
            dist = rng.uniform(0.55, 0.85) * (cone.radius + placed[j].radius)
            # both summits stay distinct (heights combine by maximum): neither cone's flank reaches more than
            # a third of the other's height at the other's centre
            visible = (
                _nominal_relief(placed[j], dist) <= 0.33 * cone.height
                and _nominal_relief(cone, dist) <= 0.33 * placed[j].height
            )
            e, n = placed[j].e + dist * math.cos(az), placed[j].n + dist * math.sin(az)
            inside = margin <= e <= grid.extent_e - margin and margin <= -n <= grid.extent_n - margin
            if visible and inside and free(e, n, cone.radius, skip=j):
                placed[j].coalesced = True
                cone.coalesced = True
                put(cone, e, n)
                break
        else:
            raise ConfigError(
                fits + " with the requested coalesced_fraction; lower n_cones or coalesced_fraction"
            )
    return placed


_RHO = ((np.arange(640) + 0.5) * (1.6 / 640)).astype(np.float64)  # radial grid of the 1-D profiles


def _cone_profile(cone: _Cone) -> np.ndarray:
    """Radial profile (height / cone height, on ``_RHO`` = distance / basal radius), max exactly 1.

    Cratered: parabolic bowl inside the rim (rim radius = crater_ratio), straight flank from the rim to the
    base. Uncratered: slightly domed flat top, straight flank. Both smoothed (Gaussian in rho) so the rim,
    top and toe are rounded.
    """
    rho = _RHO
    if cone.crater:
        rim = cone.crater_ratio
        inner = 1.0 - cone.depth_frac * (1.0 - (rho / rim) ** 2)
        prof = np.where(rho < rim, inner, (1.0 - rho) / (1.0 - rim))
        sigma = 0.035
    else:
        top = cone.top_ratio
        prof = np.where(rho < top, 1.0 + 0.08 * (1.0 - (rho / top) ** 2), (1.0 - rho) / (1.0 - top))
        sigma = 0.07
    prof = np.maximum(prof, 0.0)
    prof = ndimage.gaussian_filter1d(prof, sigma / (rho[1] - rho[0]), mode="reflect")
    return prof / prof.max()


def _cone_relief(grid: _Grid, cone: _Cone) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
    """One cone's relief above its base (float32 metres) on a window around it.

    Returns the window's row and column slices, the relief and the distance from the centre in basal radii
    (float32, without the outline perturbation); None if the window misses the grid.
    """
    win = grid.window(cone.e, cone.n, cone.radius * 1.5)
    if win is None:
        return None
    rs, cs, de, dn = win
    r = np.hypot(de, dn)
    az = np.arctan2(dn, de)
    outline = np.ones_like(r)
    for order, amp, phase in cone.shape:
        outline += _F32(amp) * np.cos(order * az + _F32(phase))
    rho = r / (_F32(cone.radius) * outline)
    prof = _cone_profile(cone)
    z = np.interp(rho, _RHO, prof, right=0.0).astype(_F32)
    # shallow radial rills on the flank (zero at the rim/top and at the toe)
    top = cone.crater_ratio if cone.crater else cone.top_ratio
    on_flank = np.sin(_F32(math.pi) * np.clip((rho - _F32(top)) / _F32(1.0 - top), 0, 1))
    rill = np.zeros_like(z)
    for order, amp, phase in cone.rills:
        rill += _F32(amp) * np.cos(order * az + _F32(phase))
    z *= _F32(1.0) + rill * on_flank
    if cone.breached:
        # horseshoe: a U-shaped gap through the rim facing downslope, about as wide as the crater, whose floor
        # falls from the crater floor at the centre to the base
        rim = _F32(cone.crater_ratio * cone.radius)
        cb, sb = _F32(math.cos(cone.breach_dir)), _F32(math.sin(cone.breach_dir))
        along = de * cb + dn * sb  # metres from the centre toward the breach
        across = np.abs(dn * cb - de * sb)
        w = _F32(1.0) - _smoothstep((across - _F32(cone.breach_width) * rim) / (_F32(0.7) * rim))
        w *= _smoothstep((along + _F32(0.3) * rim) / (_F32(0.3) * rim))
        level = float(prof[0]) * (1.0 - cone.breach_level)
        cut = _F32(level) * np.clip(_F32(1.0) - along / _F32(1.05 * cone.radius), 0, 1)
        z = z - w * np.maximum(z - cut, 0)
    z *= _F32(cone.height)
    return rs, cs, z, r / _F32(cone.radius)


def _bury_base(dem: np.ndarray, rs: slice, cs: slice, z: np.ndarray, rho: np.ndarray, cone: _Cone) -> None:
    """Replace the base under a cone by a plane fitted to the ring 1.05-1.4 radii around it, where the cone is
    thick: a cone buries the flows, gullies and roughness it was built on, and sits on the regional slope."""
    sub = dem[rs, cs]
    ring = (rho >= 1.05) & (rho <= 1.4)
    if ring.sum() < 8:
        return
    rr, cc = np.nonzero(ring)
    design = np.column_stack([np.ones(rr.size), rr, cc]).astype(np.float64)
    coef = np.linalg.lstsq(design, sub[ring].astype(np.float64), rcond=None)[0]
    rows = np.arange(sub.shape[0], dtype=_F32)[:, None]
    cols = np.arange(sub.shape[1], dtype=_F32)[None, :]
    plane = _F32(coef[0]) + _F32(coef[1]) * rows + _F32(coef[2]) * cols
    w = _smoothstep(z / _F32(min(15.0, 0.3 * cone.height)))
    sub += w * (plane - sub)


# ====================================================================== point distractors
def _free_spot(
    rng: np.random.Generator, grid: _Grid, obstacles: list[tuple[float, float, float]], size: float
) -> tuple[float, float] | None:
    """A random position (local metres), ``size`` inside the region and more than ``size`` beyond the reach
    of every obstacle (east, north, reach in metres); None when none is found."""
    obs = np.array(obstacles, dtype=np.float64).reshape(-1, 3)
    margin = min(size, 0.45 * min(grid.extent_e, grid.extent_n))
    for _ in range(300):
        e = rng.uniform(margin, grid.extent_e - margin)
        n = -rng.uniform(margin, grid.extent_n - margin)
        if np.all(np.hypot(obs[:, 0] - e, obs[:, 1] - n) > obs[:, 2] + size):
            return e, n
    return None


def _cone_obstacles(cones: list[_Cone]) -> list[tuple[float, float, float]]:
    """Cones as obstacles for distractors: centre and 1.25 basal radii (the toe and a little more)."""
    return [(c.e, c.n, 1.25 * c.radius) for c in cones]


def _pit_craters(p: SyntheticParams, grid: _Grid, rng: np.random.Generator, cones: list[_Cone]) -> np.ndarray:
    """Depth (float32 metres, negative) of pit craters: steep-walled, flat-floored depressions with at most a
    metre-scale rim and no cone around them."""
    layer = np.zeros((grid.height, grid.width), dtype=_F32)
    obstacles = _cone_obstacles(cones)
    for _ in range(p.n_pit_craters):
        radius = rng.uniform(60.0, 320.0)
        depth = rng.uniform(0.1, 0.25) * 2 * radius
        floor = rng.uniform(0.3, 0.65)
        rim = rng.uniform(0.0, 0.04) * depth
        spot = _free_spot(rng, grid, obstacles, 1.3 * radius)
        if spot is None:
            continue
        obstacles.append((spot[0], spot[1], 1.3 * radius))
        win = grid.window(spot[0], spot[1], 1.6 * radius)
        if win is None:
            continue
        rs, cs, de, dn = win
        rho = np.hypot(de, dn) / _F32(radius)
        z = -_F32(depth) * (_F32(1.0) - _smoothstep((rho - _F32(floor)) / _F32(1.0 - floor)))
        z += _F32(rim) * np.exp(-(((rho - _F32(1.05)) / _F32(0.15)) ** 2))
        layer[rs, cs] += z
    return layer


def _knobs(p: SyntheticParams, grid: _Grid, rng: np.random.Generator, cones: list[_Cone]) -> np.ndarray:
    """Height (float32 metres) of knobs that are not cones: elongated irregular hills and tumuli (some with an
    axial crack), lower-sloped than cones and without craters."""
    layer = np.zeros((grid.height, grid.width), dtype=_F32)
    obstacles = _cone_obstacles(cones)
    for _ in range(p.n_knobs):
        length = rng.uniform(150.0, 900.0)  # half-length, metres
        aspect = rng.uniform(1.4, 3.5)
        width = length / aspect
        height = rng.uniform(0.06, 0.16) * width * 2  # gentler than a cone of that width
        orient = rng.uniform(0.0, math.pi)
        cracked = rng.uniform() < 0.4
        shape = [(k, rng.uniform(0.0, 0.12), rng.uniform(0.0, 2 * math.pi)) for k in (2, 3, 5)]
        spot = _free_spot(rng, grid, obstacles, 1.3 * length)
        if spot is None:
            continue
        obstacles.append((spot[0], spot[1], 1.3 * length))
        win = grid.window(spot[0], spot[1], 1.6 * length)
        if win is None:
            continue
        rs, cs, de, dn = win
        co, so = _F32(math.cos(orient)), _F32(math.sin(orient))
        xa = de * co + dn * so
        ya = -de * so + dn * co
        az = np.arctan2(ya, xa)
        outline = np.ones_like(az)
        for k, amp, phase in shape:
            outline += _F32(amp) * np.cos(k * az + _F32(phase))
        q = np.hypot(xa / _F32(length), ya / _F32(width)) / outline
        z = _F32(height) * np.exp(-_F32(2.3) * q**3)
        if cracked:
            crack = np.exp(-((ya / _F32(0.1 * width)) ** 2)) * (_F32(1.0) - _smoothstep(q / _F32(0.8)))
            z *= _F32(1.0) - _F32(0.5) * crack
        layer[rs, cs] += z
    return layer


# ====================================================================== public API
def _cones_frame(cones: list[_Cone], p: SyntheticParams, crs: CRS) -> gpd.GeoDataFrame:
    """The cone table in CRS coordinates, with circle polygons of the basal outline."""
    x = np.array([p.origin_x + c.e for c in cones], dtype=np.float64)
    y = np.array([p.origin_y + c.n for c in cones], dtype=np.float64)
    radius = np.array([c.radius for c in cones], dtype=np.float64)
    crater = np.array([c.crater for c in cones], dtype=bool)
    data = {
        "cone_id": np.arange(1, len(cones) + 1, dtype=np.int64),
        "x": x,
        "y": y,
        "radius_m": radius,
        "basal_diameter_m": 2 * radius,
        "height_m": np.array([c.height for c in cones], dtype=np.float64),
        "crater": crater,
        "crater_diameter_m": np.array(
            [2 * c.radius * c.crater_ratio if c.crater else 0.0 for c in cones], dtype=np.float64
        ),
        "breached": np.array([c.breached for c in cones], dtype=bool),
        "coalesced": np.array([c.coalesced for c in cones], dtype=bool),
    }
    geoms = gpd.GeoSeries(
        [Point(a, b).buffer(r, quad_segs=16) for a, b, r in zip(x, y, radius, strict=True)], crs=crs
    )
    return gpd.GeoDataFrame(data, geometry=geoms, crs=crs)


def generate_synthetic_region(params: SyntheticParams) -> SyntheticRegion:
    """Generate a synthetic shield-flank DEM with a cinder-cone field and distractors (deterministic).

    Returns the float32 DEM (metres, no nodata), its north-up transform and CRS, and the true cones.
    """
    p = params
    crs = p.crs_object()
    grid = _Grid(p.height_px, p.width_px, float(p.resolution_m))
    streams = np.random.SeedSequence(int(p.seed) % 2**64).spawn(7)
    rng_shield, rng_rough, rng_flow, rng_gully, rng_cone, rng_pit, rng_knob = (
        np.random.default_rng(s) for s in streams
    )
    dem, summit = _shield(p, grid, rng_shield)
    centre_az = _downslope(summit, grid.extent_e / 2, -grid.extent_n / 2)
    dem += _roughness(grid, rng_rough, centre_az)
    if p.n_lava_flows:
        dem += _lava_flows(p, grid, rng_flow, summit)
    if p.n_gullies:
        dem -= _gullies(p, grid, rng_gully, summit)
    cones = _place_cones(p, grid, rng_cone, summit)
    if p.n_pit_craters:
        dem += _pit_craters(p, grid, rng_pit, cones)
    if p.n_knobs:
        dem += _knobs(p, grid, rng_knob, cones)
    if cones:
        relief = np.zeros_like(dem)
        for cone in cones:
            rendered = _cone_relief(grid, cone)
            if rendered is None:
                continue
            rs, cs, z, rho = rendered
            _bury_base(dem, rs, cs, z, rho, cone)
            np.maximum(relief[rs, cs], z, out=relief[rs, cs])  # coalesced cones: heights combine by maximum
        dem += relief
        del relief
    return SyntheticRegion(
        dem=dem.astype(_F32, copy=False), transform=p.transform, crs=crs, cones=_cones_frame(cones, p, crs)
    )


def write_synthetic_region(params: SyntheticParams, dem_path: Path, cones_path: Path) -> None:
    """Generate a region and write its DEM (float32 GeoTIFF, nodata NODATA_FLOAT) and its cones
    (GeoPackage, layer "cones"; an empty but valid layer when there are none), both atomically."""
    region = generate_synthetic_region(params)
    height, width = region.dem.shape
    profile = geotiff_profile(
        width=width,
        height=height,
        count=1,
        dtype="float32",
        crs=region.crs,
        transform=region.transform,
        nodata=NODATA_FLOAT,
    )
    with atomic_write(dem_path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(region.dem, 1)
    with atomic_write(cones_path) as tmp:
        region.cones.to_file(tmp, layer="cones", driver="GPKG", engine="pyogrio", geometry_type="Polygon")
