"""The ground of a synthetic region: shield flank, roughness and the distractors that are not cones.

- a broad shield whose summit lies outside (or at the edge of) the region, so that the region is a
  flank with a regional slope of a few degrees, plus multi-scale fractal roughness (spectral synthesis,
  elongated downslope like flow-banded lava surfaces);
- distractors that are *not* labelled: lava-flow lobes with levees and channels, erosional gullies,
  pit craters (depressions without a cone) and knobs (elongated hills and cracked tumuli).

Positions are local (east, north) metres from the region's upper-left corner (:class:`Grid`); every
layer is a float32 array in metres on the region's grid. See :mod:`cinderseg.terrain.synthetic`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft
from scipy import ndimage
from scipy.spatial import cKDTree

F32 = np.float32


def smoothstep(t: np.ndarray) -> np.ndarray:
    """Cubic smoothstep of ``t`` clipped to [0, 1] (keeps float32)."""
    t = np.clip(t, 0, 1)
    return t * t * (3 - 2 * t)


def wrap(angle: np.ndarray | float) -> Any:
    """Angle wrapped to (-pi, pi]."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


@dataclass(frozen=True)
class Grid:
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
        de = ((np.arange(c0, c1) + 0.5) * self.res - ce).astype(F32)
        dn = (-(np.arange(r0, r1) + 0.5) * self.res - cn).astype(F32)
        return slice(r0, r1), slice(c0, c1), de[None, :], dn[:, None]


def downslope(summit: tuple[float, float], e: float, n: float) -> float:
    """Azimuth (radians, counter-clockwise from east) pointing away from the shield summit."""
    return math.atan2(n - summit[1], e - summit[0])


def shield(grid: Grid, rng: np.random.Generator, height_m: float) -> tuple[np.ndarray, tuple[float, float]]:
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
    radius = max(height_m / math.tan(math.radians(5.0)), 1.1 * far, 1.0)

    de = (((np.arange(grid.width) + 0.5) * grid.res - summit[0]) / radius).astype(F32)
    dn = ((-(np.arange(grid.height) + 0.5) * grid.res - summit[1]) / radius).astype(F32)
    rho = np.hypot(de[None, :], dn[:, None])
    rho0 = F32(0.08)
    rho = np.sqrt(rho * rho + rho0 * rho0) - rho0  # rounded summit instead of an apex
    np.clip(F32(1.0) - rho, 0, 1, out=rho)
    z = np.power(rho, F32(1.4), out=rho)
    z *= F32(height_m)
    return z, summit


def roughness(grid: Grid, rng: np.random.Generator, downslope_az: float) -> np.ndarray:
    """Multi-scale fractal roughness (float32 metres) by spectral synthesis of white noise.

    Two power-law components: long undulations (std ~8 m, spectral exponent 3.4, corner 8 km) and
    flow-banded texture (std ~1.2 m, exponent 2.6, corner 1.5 km), both elongated downslope.
    """
    h, w = grid.height, grid.width
    noise = rng.standard_normal((h, w), dtype=F32)
    spec = scipy.fft.rfft2(noise)
    del noise
    ky = scipy.fft.fftfreq(h, d=grid.res).astype(F32)[:, None]  # rows run south
    kx = scipy.fft.rfftfreq(w, d=grid.res).astype(F32)[None, :]
    ca, sa = F32(math.cos(downslope_az)), F32(math.sin(downslope_az))
    k_par = kx * ca - ky * sa  # wavenumber along the downslope direction (map north = -row)
    k_perp = kx * sa + ky * ca
    # weight of each rfft column in the full spectrum (Parseval): 2 except DC and Nyquist columns
    weight = np.full(kx.shape, 2.0, dtype=F32)
    weight[0, 0] = 1.0
    if w % 2 == 0:
        weight[0, -1] = 1.0

    filt = np.zeros(spec.shape, dtype=F32)
    for std_m, beta, corner_m, aniso in ((8.0, 3.4, 8000.0, 1.3), (1.2, 2.6, 1500.0, 2.0)):
        k2 = (aniso * k_par) ** 2 + k_perp**2 + F32(1.0 / corner_m) ** 2
        comp = np.power(k2, F32(-beta / 4.0))
        comp[0, 0] = 0.0
        norm = math.sqrt(float(np.sum(comp.astype(np.float64) ** 2 * weight)) / (h * w))
        filt += comp * F32(std_m / max(norm, 1e-30))
        del k2, comp
    spec *= filt
    del filt, k_par, k_perp
    return scipy.fft.irfft2(spec, s=(h, w)).astype(F32, copy=False)


def walk(
    rng: np.random.Generator,
    grid: Grid,
    summit: tuple[float, float],
    start: tuple[float, float],
    length: float,
    step: float,
    meander: float,
) -> np.ndarray:
    """Centreline (N x 2 local metres) of a feature running downslope with some meander."""
    n_steps = max(2, int(length / step))
    heading = downslope(summit, *start) + rng.normal(0.0, 0.25)
    turns = rng.normal(0.0, meander, size=n_steps)
    pts = np.empty((n_steps, 2), dtype=np.float64)
    e, n = start
    margin = 0.25 * max(grid.extent_e, grid.extent_n)
    count = 0
    entered = False
    for i in range(n_steps):
        pts[i] = (e, n)
        count = i + 1
        heading += 0.05 * float(wrap(downslope(summit, e, n) - heading)) + turns[i]
        e += step * math.cos(heading)
        n += step * math.sin(heading)
        near = -margin < e < grid.extent_e + margin and -grid.extent_n - margin < n < margin
        if entered and not near:
            break
        entered = entered or near
    return pts[:count]


def render_line(
    layer: np.ndarray,
    grid: Grid,
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
    s = (idx / max(len(pts) - 1, 1)).astype(F32)
    u = (dist / half_width[idx]).astype(F32)
    value = profile(u, s).astype(F32, copy=False)
    sub = layer[r0:r1, c0:c1]
    sub[rr, cc] = np.maximum(sub[rr, cc], value)


def lava_flows(grid: Grid, rng: np.random.Generator, summit: tuple[float, float], count: int) -> np.ndarray:
    """Thickness (float32 metres) of lava-flow lobes: channel between raised levees, rounded lobate snout."""
    layer = np.zeros((grid.height, grid.width), dtype=F32)
    for _ in range(count):
        # a point of the region the flow passes through, backed up the slope so that flows cross the region
        length = rng.uniform(3000.0, 14000.0)
        via_e, via_n = rng.uniform(0.0, 1.0) * grid.extent_e, -rng.uniform(0.0, 1.0) * grid.extent_n
        back = rng.uniform(0.2, 0.9) * length
        up = downslope(summit, via_e, via_n) + math.pi
        start = (via_e + back * math.cos(up), via_n + back * math.sin(up))
        width0 = rng.uniform(90.0, 380.0)  # half-width at the head, metres
        thick = F32(rng.uniform(5.0, 18.0))
        levee = F32(rng.uniform(0.2, 0.45))
        channel = F32(rng.uniform(0.15, 0.4))
        step = min(grid.res, width0 / 3)
        pts = walk(rng, grid, summit, start, length, step, meander=0.04 * math.sqrt(step / 30.0))
        frac = np.linspace(0.0, 1.0, len(pts))
        # lobes widen toward the front and pinch and swell along the way
        swell = ndimage.gaussian_filter1d(rng.standard_normal(len(pts)), 600.0 / step, mode="nearest")
        swell *= 0.25 / max(float(np.abs(swell).max()), 1e-9)
        half_width = width0 * (1.0 + 0.8 * frac**1.5) * (1.0 + swell)
        fade = F32(len(frac) * step / 400.0)  # fade-in over the first 400 m

        def profile(
            u: np.ndarray,
            s: np.ndarray,
            thick=thick,
            levee=levee,
            channel=channel,
            fade=fade,
        ) -> np.ndarray:
            body = np.where(
                u <= 0.7, F32(1.0), F32(0.5) * (1 + np.cos(np.pi * np.clip((u - 0.7) / 0.35, 0, 1)))
            )
            chan = F32(1.0) - smoothstep((s - F32(0.65)) / F32(0.25))  # no channel near the snout
            shape = body + chan * (
                levee * np.exp(-(((u - 0.78) / 0.12) ** 2)) - channel * np.exp(-((u / 0.4) ** 2))
            )
            fade_in = smoothstep(s * fade)
            return thick * (F32(0.7) + F32(0.3) * s) * fade_in * np.maximum(shape, 0)

        render_line(layer, grid, pts, half_width, profile)
    return layer


def gullies(grid: Grid, rng: np.random.Generator, summit: tuple[float, float], count: int) -> np.ndarray:
    """Depth (float32 metres, positive) of V-shaped erosional gullies deepening downslope."""
    layer = np.zeros((grid.height, grid.width), dtype=F32)
    for _ in range(count):
        start = (rng.uniform(0.0, 1.0) * grid.extent_e, -rng.uniform(0.0, 1.0) * grid.extent_n)
        length = rng.uniform(1500.0, 9000.0)
        width0 = rng.uniform(40.0, 110.0)
        depth = F32(rng.uniform(4.0, 22.0))
        step = min(grid.res, width0 / 2)
        pts = walk(rng, grid, summit, start, length, step, meander=0.02 * math.sqrt(step / 30.0))
        frac = np.linspace(0.0, 1.0, len(pts))
        half_width = width0 * (0.6 + 0.8 * frac)

        def profile(u: np.ndarray, s: np.ndarray, depth=depth) -> np.ndarray:
            along = (
                (F32(0.4) + F32(0.6) * s) * smoothstep(s / F32(0.25)) * (1 - smoothstep((s - 0.92) / 0.08))
            )
            return depth * along * np.clip(1 - u, 0, 1) ** F32(1.6)

        render_line(layer, grid, pts, half_width, profile)
    return layer


def free_spot(
    rng: np.random.Generator, grid: Grid, obstacles: list[tuple[float, float, float]], size: float
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


def pit_craters(
    grid: Grid, rng: np.random.Generator, obstacles: list[tuple[float, float, float]], count: int
) -> np.ndarray:
    """Depth (float32 metres, negative) of pit craters: steep-walled, flat-floored depressions with at most a
    metre-scale rim, clear of ``obstacles`` (east, north, reach in metres; each pit is added to them)."""
    layer = np.zeros((grid.height, grid.width), dtype=F32)
    for _ in range(count):
        radius = rng.uniform(60.0, 320.0)
        depth = rng.uniform(0.1, 0.25) * 2 * radius
        floor = rng.uniform(0.3, 0.65)
        rim = rng.uniform(0.0, 0.04) * depth
        spot = free_spot(rng, grid, obstacles, 1.3 * radius)
        if spot is None:
            continue
        obstacles.append((spot[0], spot[1], 1.3 * radius))
        win = grid.window(spot[0], spot[1], 1.6 * radius)
        if win is None:
            continue
        rs, cs, de, dn = win
        rho = np.hypot(de, dn) / F32(radius)
        z = -F32(depth) * (F32(1.0) - smoothstep((rho - F32(floor)) / F32(1.0 - floor)))
        z += F32(rim) * np.exp(-(((rho - F32(1.05)) / F32(0.15)) ** 2))
        layer[rs, cs] += z
    return layer


def knobs(
    grid: Grid, rng: np.random.Generator, obstacles: list[tuple[float, float, float]], count: int
) -> np.ndarray:
    """Height (float32 metres) of knobs that are not cones: elongated irregular hills and tumuli (some with an
    axial crack), lower-sloped than cones and without craters, clear of ``obstacles`` (as for
    :func:`pit_craters`)."""
    layer = np.zeros((grid.height, grid.width), dtype=F32)
    for _ in range(count):
        length = rng.uniform(150.0, 900.0)  # half-length, metres
        aspect = rng.uniform(1.4, 3.5)
        width = length / aspect
        height = rng.uniform(0.06, 0.16) * width * 2  # gentler than a cone of that width
        orient = rng.uniform(0.0, math.pi)
        cracked = rng.uniform() < 0.4
        shape = [(k, rng.uniform(0.0, 0.12), rng.uniform(0.0, 2 * math.pi)) for k in (2, 3, 5)]
        spot = free_spot(rng, grid, obstacles, 1.3 * length)
        if spot is None:
            continue
        obstacles.append((spot[0], spot[1], 1.3 * length))
        win = grid.window(spot[0], spot[1], 1.6 * length)
        if win is None:
            continue
        rs, cs, de, dn = win
        co, so = F32(math.cos(orient)), F32(math.sin(orient))
        xa = de * co + dn * so
        ya = -de * so + dn * co
        az = np.arctan2(ya, xa)
        outline = np.ones_like(az)
        for k, amp, phase in shape:
            outline += F32(amp) * np.cos(k * az + F32(phase))
        q = np.hypot(xa / F32(length), ya / F32(width)) / outline
        z = F32(height) * np.exp(-F32(2.3) * q**3)
        if cracked:
            crack = np.exp(-((ya / F32(0.1 * width)) ** 2)) * (F32(1.0) - smoothstep(q / F32(0.8)))
            z *= F32(1.0) - F32(0.5) * crack
        layer[rs, cs] += z
    return layer
