"""The cinder cones of a synthetic region: sizes, placement and shape, on the ground of
:mod:`cinderseg.terrain.landforms`.

Cones are calibrated to the morphometry of Mauna Kea cones (Porter 1972; Wood 1980): height about
``height_ratio`` (0.18) x basal diameter, crater (rim-to-rim) diameter about 0.40 x basal diameter, flank
slopes near 25-33 degrees, log-normal basal diameters. Some craters are breached (horseshoe, open
downslope), some cones overlap a neighbour (coalesced; heights combine by maximum) and the others do not
overlap at all. Cone height is measured above the local base surface: each cone sits on the sloping flank
and buries the flows, gullies and roughness under it (the base under a cone is the plane fitted to the
ring around it). Lengths in metres, positions in local (east, north) metres (:class:`Grid`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from scipy import ndimage, special

from cinderseg.core.errors import ConfigError
from cinderseg.terrain.landforms import F32, Grid, downslope, smoothstep

# Morphometry of Mauna Kea cinder cones (Porter 1972; Wood 1980).
CRATER_RATIO = 0.40  # crater (rim-to-rim) diameter / basal diameter
HEIGHT_SCATTER = 0.10  # relative standard deviation of height / basal diameter around height_ratio
CRATER_SCATTER = 0.06  # relative standard deviation of the crater ratio
MIN_FLANK_SLOPE_DEG = 24.0  # flank slopes of the default cones are kept in this band (Wood 1980: 25-33 deg)
MAX_FLANK_SLOPE_DEG = 34.0
MAX_INNER_SLOPE_DEG = 35.0  # crater walls are not steeper than the angle of repose (at the rim)


class ConeSettings(Protocol):
    """What the cones need of :class:`cinderseg.terrain.synthetic.SyntheticParams`."""

    @property
    def n_cones(self) -> int: ...
    @property
    def diameter_median_m(self) -> float: ...
    @property
    def diameter_sigma(self) -> float: ...
    @property
    def diameter_min_m(self) -> float: ...
    @property
    def diameter_max_m(self) -> float: ...
    @property
    def height_ratio(self) -> float: ...
    @property
    def crater_fraction(self) -> float: ...
    @property
    def breached_fraction(self) -> float: ...
    @property
    def coalesced_fraction(self) -> float: ...
    @property
    def width_px(self) -> int: ...
    @property
    def height_px(self) -> int: ...
    @property
    def resolution_m(self) -> float: ...


def _fmt(value: Any) -> str:
    """A value as it should appear in a one-line config message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return repr(value)
    return f"{float(value):g}" if isinstance(value, float) else str(value)


@dataclass
class Cone:
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


def diameters(p: ConeSettings, rng: np.random.Generator, count: int) -> np.ndarray:
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


def cone_attributes(p: ConeSettings, rng: np.random.Generator, diameters: np.ndarray) -> list[Cone]:
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
            Cone(
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


def rift_sampler(
    rng: np.random.Generator, grid: Grid, summit: tuple[float, float], margin: float
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


def nominal_relief(cone: Cone, dist: float) -> float:
    """Height (m) of a cone's unsmoothed flank at ``dist`` metres from its centre (top height inside)."""
    top = cone.crater_ratio if cone.crater else cone.top_ratio
    return cone.height * min(max((1.0 - dist / cone.radius) / (1.0 - top), 0.0), 1.0)


@dataclass
class _Layout:
    """The cones placed so far, with their centres and radii as arrays for the overlap test."""

    summit: tuple[float, float]
    capacity: int
    placed: list[Cone] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pe, self.pn, self.pr = np.empty(self.capacity), np.empty(self.capacity), np.empty(self.capacity)

    def free(self, e: float, n: float, r: float, skip: int = -1) -> bool:
        """Whether a cone of radius ``r`` at (e, n) keeps clear of every placed cone but ``skip``."""
        k = len(self.placed)
        if k == 0:
            return True
        d = np.hypot(self.pe[:k] - e, self.pn[:k] - n)
        gap = d - 1.08 * (self.pr[:k] + r)
        if 0 <= skip < k:
            gap[skip] = 1.0
        return bool(np.all(gap > 0))

    def put(self, cone: Cone, e: float, n: float) -> None:
        cone.e, cone.n = e, n
        cone.breach_dir = downslope(self.summit, e, n) + cone.breach_dir
        k = len(self.placed)
        self.pe[k], self.pn[k], self.pr[k] = e, n, cone.radius
        self.placed.append(cone)


def _place_alone(layout: _Layout, cone: Cone, grid: Grid, rng: np.random.Generator, fits: str) -> None:
    """Place a cone clear of every other (positions from :func:`rift_sampler`)."""
    if 2 * cone.radius * 1.02 >= min(grid.extent_e, grid.extent_n):
        raise ConfigError(
            fits + f" (a {_fmt(round(2 * cone.radius))} m cone does not fit); enlarge the region"
        )
    sample = rift_sampler(rng, grid, layout.summit, cone.radius * 1.02)
    for _ in range(2000):
        e, n = sample()
        if layout.free(e, n, cone.radius):
            layout.put(cone, e, n)
            return
    raise ConfigError(fits + " without overlaps; lower n_cones or the diameters, or enlarge the region")


def _place_against(layout: _Layout, cone: Cone, grid: Grid, rng: np.random.Generator, fits: str) -> None:
    """Place a cone overlapping one placed cone (both are flagged coalesced) and clear of the others."""
    placed, margin = layout.placed, cone.radius * 1.02
    for _ in range(2000):
        j = int(rng.integers(len(placed)))
        az = rng.uniform(0.0, 2 * math.pi)
        dist = rng.uniform(0.55, 0.85) * (cone.radius + placed[j].radius)
        # both summits stay distinct (heights combine by maximum): neither cone's flank reaches more than
        # a third of the other's height at the other's centre
        visible = (
            nominal_relief(placed[j], dist) <= 0.33 * cone.height
            and nominal_relief(cone, dist) <= 0.33 * placed[j].height
        )
        e, n = placed[j].e + dist * math.cos(az), placed[j].n + dist * math.sin(az)
        inside = margin <= e <= grid.extent_e - margin and margin <= -n <= grid.extent_n - margin
        if visible and inside and layout.free(e, n, cone.radius, skip=j):
            placed[j].coalesced = True
            cone.coalesced = True
            layout.put(cone, e, n)
            return
    raise ConfigError(fits + " with the requested coalesced_fraction; lower n_cones or coalesced_fraction")


def place_cones(
    p: ConeSettings, grid: Grid, rng: np.random.Generator, summit: tuple[float, float]
) -> list[Cone]:
    """Draw and place the cones: whole basal circles inside the region; non-coalesced cones do not overlap
    any other cone; each coalesced cone overlaps one already placed cone (both are flagged coalesced)."""
    count = p.n_cones
    if count == 0:
        return []
    cones = cone_attributes(p, rng, diameters(p, rng, count))
    fits = (
        f"synthetic.n_cones ({count}): cannot place that many cones with basal diameters up to "
        f"{_fmt(p.diameter_max_m)} m in a {p.width_px}x{p.height_px} px region at {_fmt(p.resolution_m)} m"
    )
    area = grid.extent_e * grid.extent_n
    if sum(math.pi * (1.1 * c.radius) ** 2 for c in cones) > 0.4 * area:
        raise ConfigError(fits + " (cones would cover too much of it); lower n_cones or the diameters")
    n_coal = min(round(p.coalesced_fraction * count), count - 1)
    chosen = rng.permutation(count)
    rest = chosen[n_coal:]
    layout = _Layout(summit, count)
    for i in rest[np.argsort([-cones[i].radius for i in rest], kind="stable")]:  # big cones first
        _place_alone(layout, cones[int(i)], grid, rng, fits)
    for i in chosen[:n_coal]:
        _place_against(layout, cones[int(i)], grid, rng, fits)
    return layout.placed


_RHO = ((np.arange(640) + 0.5) * (1.6 / 640)).astype(np.float64)  # radial grid of the 1-D profiles


def cone_profile(cone: Cone) -> np.ndarray:
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


def cone_relief(grid: Grid, cone: Cone) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
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
        outline += F32(amp) * np.cos(order * az + F32(phase))
    rho = r / (F32(cone.radius) * outline)
    prof = cone_profile(cone)
    z = np.interp(rho, _RHO, prof, right=0.0).astype(F32)
    # shallow radial rills on the flank (zero at the rim/top and at the toe)
    top = cone.crater_ratio if cone.crater else cone.top_ratio
    on_flank = np.sin(F32(math.pi) * np.clip((rho - F32(top)) / F32(1.0 - top), 0, 1))
    rill = np.zeros_like(z)
    for order, amp, phase in cone.rills:
        rill += F32(amp) * np.cos(order * az + F32(phase))
    z *= F32(1.0) + rill * on_flank
    if cone.breached:
        # horseshoe: a U-shaped gap through the rim facing downslope, about as wide as the crater, whose floor
        # falls from the crater floor at the centre to the base
        rim = F32(cone.crater_ratio * cone.radius)
        cb, sb = F32(math.cos(cone.breach_dir)), F32(math.sin(cone.breach_dir))
        along = de * cb + dn * sb  # metres from the centre toward the breach
        across = np.abs(dn * cb - de * sb)
        w = F32(1.0) - smoothstep((across - F32(cone.breach_width) * rim) / (F32(0.7) * rim))
        w *= smoothstep((along + F32(0.3) * rim) / (F32(0.3) * rim))
        level = float(prof[0]) * (1.0 - cone.breach_level)
        cut = F32(level) * np.clip(F32(1.0) - along / F32(1.05 * cone.radius), 0, 1)
        z = z - w * np.maximum(z - cut, 0)
    z *= F32(cone.height)
    return rs, cs, z, r / F32(cone.radius)


def bury_base(dem: np.ndarray, rs: slice, cs: slice, z: np.ndarray, rho: np.ndarray, cone: Cone) -> None:
    """Replace the base under a cone by a plane fitted to the ring 1.05-1.4 radii around it, where the cone is
    thick: a cone buries the flows, gullies and roughness it was built on, and sits on the regional slope."""
    sub = dem[rs, cs]
    ring = (rho >= 1.05) & (rho <= 1.4)
    if ring.sum() < 8:
        return
    rr, cc = np.nonzero(ring)
    design = np.column_stack([np.ones(rr.size), rr, cc]).astype(np.float64)
    coef = np.linalg.lstsq(design, sub[ring].astype(np.float64), rcond=None)[0]
    rows = np.arange(sub.shape[0], dtype=F32)[:, None]
    cols = np.arange(sub.shape[1], dtype=F32)[None, :]
    plane = F32(coef[0]) + F32(coef[1]) * rows + F32(coef[2]) * cols
    w = smoothstep(z / F32(min(15.0, 0.3 * cone.height)))
    sub += w * (plane - sub)


def cone_obstacles(cones: list[Cone]) -> list[tuple[float, float, float]]:
    """Cones as obstacles for distractors: centre and 1.25 basal radii (the toe and a little more)."""
    return [(c.e, c.n, 1.25 * c.radius) for c in cones]
