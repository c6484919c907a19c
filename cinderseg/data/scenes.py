"""Composite training scenes: real and synthetic cone shapes pasted onto real and synthetic ground,
then degraded as SRTM degrades a DEM.

Few real cones are labelled (Mauna Kea: 128), so training terrain is composed from them, the way
DeepMoon and copy-paste augmentation get their data volume:

- **Real cone shapes** (:func:`cone_library`): each labelled cone of a donor DEM, as its relief above
  the plane fitted to the ring 1.25-1.6 radii around it (robust to outliers), tapered to zero just
  outside its base, with the other labelled cones nearby cut out.
- **Synthetic cone shapes** (:func:`synthetic_cone`): straight flanks, craters of 30-50 % of the base
  and 10-60 % of the height deep, some breached, flat or domed tops.
- **Ground** (:func:`background`): a donor DEM with its labelled cones removed (each filled from its
  surroundings, :func:`cones_removed`), a lava plain or shield flank with flow lobes, scarps and
  maars, hill country, or a coast with sea cliffs (:mod:`cinderseg.terrain.negatives`: landforms
  a blob detector takes for cones).
- **Pasting** (:func:`compose_scene`): shapes resized to a basal diameter and a height drawn from the
  configured ranges (log-uniform; low cones of 15-50 m included), made elliptical and rotated, added to
  the ground (a cone builds on the ground it erupts on) at random places on land, few overlapping.
- **Degrading** (:func:`degrade`): the scene is built at half the region's pixel size, then averaged
  to it with a Gaussian footprint (as SRTM's), with noise, row stripes and voids.

The scene's labels are the pasted cones (circles of their basal radius), written like a synthetic
region's (:data:`cinderseg.terrain.synthetic.CONE_COLUMNS`). Lengths in metres; the scene is north-up
in its projected CRS with square pixels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import affine
import geopandas as gpd
import numpy as np
import rasterio
from rasterio.crs import CRS
from scipy import ndimage
from shapely.geometry import Point
from skimage.restoration import inpaint_biharmonic

from cinderseg.core.errors import ConfigError, InputError
from cinderseg.core.raster import NODATA_FLOAT, atomic_write, geotiff_profile, open_raster
from cinderseg.core.schema import section_default, validate_section
from cinderseg.terrain import negatives

F32 = np.float32
#: Base ring of a donor cone (basal radii): the plane under the cone is fitted here.
RING = (1.25, 1.6)
#: A donor cone's relief is kept out to this many basal radii, tapered to zero from 1 radius.
TAPER_END = 1.35
#: Labelled cones are removed out to this many basal radii when a donor DEM becomes ground.
REMOVE_RADII = 1.3
#: Kinds of ground besides a donor DEM.
GROUNDS = ("plain", "hills", "coast")


@dataclass(frozen=True)
class ConeShape:
    """A cone's relief (m above its base plane) on a square patch centred on the cone, whose basal
    radius is ``radius_px`` pixels of the patch."""

    relief: np.ndarray
    radius_px: float
    source: str


@dataclass(frozen=True)
class SceneParams:
    """A region's ``scene`` section (meaning of each key: the schema) and its ``resolution_m``."""

    resolution_m: float
    seed: int = section_default("region.scene", "seed")
    width_px: int = section_default("region.scene", "width_px")
    height_px: int = section_default("region.scene", "height_px")
    ground: str = section_default("region.scene", "ground")
    donors: tuple[str, ...] = section_default("region.scene", "donors")
    synthetic_fraction: float = section_default("region.scene", "synthetic_fraction")
    n_cones: int = section_default("region.scene", "n_cones")
    diameter_m: tuple[float, float] = section_default("region.scene", "diameter_m")
    height_to_diameter: tuple[float, float] = section_default("region.scene", "height_to_diameter")
    min_height_m: float = section_default("region.scene", "min_height_m")
    noise_m: float = section_default("region.scene", "noise_m")
    void_fraction: float = section_default("region.scene", "void_fraction")
    crs: str = section_default("region.scene", "crs")
    origin_x: float = section_default("region.scene", "origin_x")
    origin_y: float = section_default("region.scene", "origin_y")

    def __post_init__(self) -> None:
        values = asdict(self)
        validate_section("region.scene", {k: v for k, v in values.items() if k != "resolution_m"})
        for key in ("diameter_m", "height_to_diameter"):
            lo, hi = getattr(self, key)
            if lo > hi:
                raise ConfigError(f"scene.{key}: expected [lo, hi] with lo <= hi, got {[lo, hi]}")
            object.__setattr__(self, key, (float(lo), float(hi)))
        object.__setattr__(self, "donors", tuple(self.donors))
        if self.ground == "donor" and not self.donors:
            raise ConfigError("scene.ground: 'donor' needs scene.donors (the DEM the ground is cut from)")

    @classmethod
    def from_config(cls, scene: Mapping[str, Any] | None, resolution_m: float) -> SceneParams:
        """Parameters from a region's ``scene`` section and its ``resolution_m``."""
        return cls(resolution_m=float(resolution_m), **validate_section("region.scene", scene))

    @property
    def transform(self) -> affine.Affine:
        """North-up transform of the scene's grid (its upper-left corner at the origin)."""
        return affine.Affine(self.resolution_m, 0.0, self.origin_x, 0.0, -self.resolution_m, self.origin_y)


# --------------------------------------------------------------------------- donor DEMs


def _read_dem(path: str | os.PathLike[str], what: str) -> tuple[np.ndarray, affine.Affine, CRS]:
    """A DEM as float64 with NaN for nodata, its transform and CRS (metric, north-up)."""
    with open_raster(path, what=what) as ds:
        z = ds.read(1).astype(np.float64)
        if ds.nodata is not None:
            z[z == ds.nodata] = np.nan
        if ds.crs is None or not ds.crs.is_projected:
            raise InputError(f"{what}: a projected CRS in metres is needed: {path}")
        return z, ds.transform, ds.crs


def _label_pixels(labels: gpd.GeoDataFrame, transform: affine.Affine, crs: CRS) -> np.ndarray:
    """(row, col, radius_px) of each labelled cone: the centroid and equivalent radius of its outline."""
    geoms = labels.to_crs(crs).geometry
    res = abs(transform.a)
    inv = ~transform
    cols, rows = inv @ (geoms.centroid.x.to_numpy(), geoms.centroid.y.to_numpy())
    radius = np.sqrt(geoms.area.to_numpy() / math.pi) / res
    return np.column_stack([np.asarray(rows) - 0.5, np.asarray(cols) - 0.5, radius])


def _robust_plane(dy: np.ndarray, dx: np.ndarray, z: np.ndarray) -> np.ndarray | None:
    """Plane (z0, dz/dy, dz/dx) through the points, refitted twice without outliers (> 3 MAD)."""
    keep = np.isfinite(z)
    coef = None
    for _ in range(3):
        if keep.sum() < 6:
            return coef
        design = np.column_stack([np.ones(keep.sum()), dy[keep], dx[keep]])
        coef, *_ = np.linalg.lstsq(design, z[keep], rcond=None)
        resid = z - (coef[0] + coef[1] * dy + coef[2] * dx)
        spread = 1.4826 * float(np.nanmedian(np.abs(resid[keep]))) + 1e-6
        keep = np.isfinite(z) & (np.abs(resid) <= 3.0 * spread)
    return coef


def cone_library(
    dem_path: str | os.PathLike[str], labels: gpd.GeoDataFrame, *, source: str = "donor"
) -> list[ConeShape]:
    """The labelled cones of a DEM as shapes: relief above the base ring's plane, the neighbours cut
    out, tapered to zero between 1 and :data:`TAPER_END` radii. Cones lower than 2 m, or with too few
    valid ring pixels, are skipped."""
    z, transform, crs = _read_dem(dem_path, f"donor DEM {source}")
    cones = _label_pixels(labels, transform, crs)
    shapes = []
    for i, (row, col, radius) in enumerate(cones):
        reach = math.ceil(RING[1] * radius) + 1
        r0, c0 = math.floor(row) - reach, math.floor(col) - reach
        n = 2 * reach + 1
        if r0 < 0 or c0 < 0 or r0 + n > z.shape[0] or c0 + n > z.shape[1]:
            continue
        patch = z[r0 : r0 + n, c0 : c0 + n]
        dy, dx = np.indices(patch.shape, dtype=np.float64)
        dy -= row - r0
        dx -= col - c0
        rho = np.hypot(dy, dx) / radius
        others = np.zeros(patch.shape, dtype=bool)
        for j, (orow, ocol, orad) in enumerate(cones):
            if j != i and abs(orow - row) < reach + orad and abs(ocol - col) < reach + orad:
                others |= np.hypot(dy + row - orow, dx + col - ocol) < 1.15 * orad
        ring = (rho >= RING[0]) & (rho <= RING[1]) & ~others
        coef = _robust_plane(dy[ring], dx[ring], patch[ring])
        if coef is None:
            continue
        relief = patch - (coef[0] + coef[1] * dy + coef[2] * dx)
        taper = np.clip((TAPER_END - rho) / (TAPER_END - 1.0), 0.0, 1.0)
        relief = np.where(others | ~np.isfinite(relief), 0.0, relief) * taper
        top = float(np.max(relief[rho <= 1.0]))
        if not top >= 2.0:
            continue
        relief = np.maximum(relief, -0.5 * top)  # a crater floor may lie a little below the base
        shapes.append(ConeShape(relief.astype(F32), float(radius), source))
    return shapes


def cones_removed(dem_path: str | os.PathLike[str], labels: gpd.GeoDataFrame, seed: int = 0) -> np.ndarray:
    """The DEM (float32 m, NaN for nodata) with its labelled cones removed: each disc of
    :data:`REMOVE_RADII` radii filled by biharmonic inpainting from its surroundings, plus the
    ground's own fine texture (its high-pass, taken from elsewhere in the DEM), so the filled
    places look like the ground around them."""
    z, transform, crs = _read_dem(dem_path, "donor DEM")
    valid = np.isfinite(z)
    if not valid.any():
        raise InputError(f"donor DEM: all pixels are nodata: {dem_path}")
    yy, xx = np.indices(z.shape)
    hole = np.zeros(z.shape, dtype=bool)
    for row, col, radius in _label_pixels(labels, transform, crs):
        reach = math.ceil(REMOVE_RADII * radius) + 1
        r0, r1 = max(0, math.floor(row) - reach), min(z.shape[0], math.floor(row) + reach + 1)
        c0, c1 = max(0, math.floor(col) - reach), min(z.shape[1], math.floor(col) + reach + 1)
        hole[r0:r1, c0:c1] |= np.hypot(yy[r0:r1, c0:c1] - row, xx[r0:r1, c0:c1] - col) < REMOVE_RADII * radius
    filled_in = np.where(valid, z, float(np.nanmedian(z)))
    filled = inpaint_biharmonic(filled_in, hole & valid)
    texture = filled_in - ndimage.gaussian_filter(filled_in, 2.0)
    texture = np.where(valid & ~hole, texture, 0.0)
    rng = np.random.default_rng(seed)
    shift = (
        int(rng.integers(z.shape[0] // 4, z.shape[0] // 2)),
        int(rng.integers(z.shape[1] // 4, z.shape[1] // 2)),
    )
    filled = np.where(hole, filled + np.roll(texture, shift, axis=(0, 1)), filled)
    return np.where(valid, filled, np.nan).astype(F32)


# --------------------------------------------------------------------------- shapes


def synthetic_cone(rng: np.random.Generator, radius_px: float = 20.0) -> ConeShape:
    """A synthetic cone of basal radius ``radius_px`` and unit height: straight to slightly curved
    flanks; 70 % with a crater of 30-50 % of the base, 10-60 % of the height deep (30 % of them
    breached: a gap in the rim down to the floor), the others with a flat or domed top."""
    n = math.ceil(radius_px * 1.4) * 2 + 1
    yy, xx = np.indices((n, n), dtype=np.float64) - n // 2
    rho = np.hypot(yy, xx) / radius_px
    crater = rng.random() < 0.7
    k = rng.uniform(0.3, 0.5) if crater else rng.uniform(0.05, 0.3)
    z = np.clip((1.0 - rho) / (1.0 - k), 0.0, 1.0) ** rng.uniform(0.8, 1.3)
    if crater:
        depth = rng.uniform(0.1, 0.6)
        z = np.where(rho < k, 1.0 - depth * (1.0 - (rho / k) ** 2), z)
        if rng.random() < 0.3:
            gap = np.cos(np.arctan2(yy, xx) - rng.uniform(-math.pi, math.pi)) > math.cos(
                rng.uniform(0.3, 0.8)
            )
            floor = (1.0 - depth) * np.clip(rho / k, 0.0, 1.8)
            z = np.where(gap & (rho < 1.0), np.minimum(z, np.maximum(floor, 0.35 * z)), z)
    z = ndimage.gaussian_filter(z, 0.6)
    return ConeShape((z / z.max()).astype(F32), float(radius_px), "synthetic")


def resample_shape(
    shape: ConeShape, radius_px: float, height_m: float, ellipticity: float, rotation: float
) -> np.ndarray:
    """The shape's relief resized to basal radius ``radius_px`` (major axis; the minor axis times
    ``ellipticity`` <= 1), rotated by ``rotation`` radians and scaled to ``height_m`` at its top."""
    src = shape.relief.astype(np.float64)
    top = float(src.max())
    scale = radius_px / shape.radius_px
    n = math.ceil(src.shape[0] * scale / 2) * 2 + 1
    yy, xx = np.indices((n, n), dtype=np.float64) - n // 2
    ca, sa = math.cos(rotation), math.sin(rotation)
    u = (xx * ca + yy * sa) / scale
    v = (-xx * sa + yy * ca) / (scale * ellipticity)
    centre = (src.shape[0] - 1) / 2
    rows, cols = centre - u * sa + v * ca, centre + u * ca + v * sa
    out = ndimage.map_coordinates(src, [rows, cols], order=3, mode="constant", cval=0.0)
    return (out * (height_m / max(float(out.max()), 1e-6 * top))).astype(F32)


def paste(z: np.ndarray, relief: np.ndarray, row: float, col: float) -> None:
    """Add ``relief`` (a patch centred on its middle pixel) to ``z`` at (row, col), in place."""
    n = relief.shape[0]
    r0, c0 = round(row) - n // 2, round(col) - n // 2
    a0, b0 = max(r0, 0), max(c0, 0)
    a1, b1 = min(r0 + n, z.shape[0]), min(c0 + n, z.shape[1])
    if a1 > a0 and b1 > b0:
        z[a0:a1, b0:b1] += relief[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0]


# --------------------------------------------------------------------------- ground


def _donor_ground(
    donor: np.ndarray, donor_res: float, shape: tuple[int, int], res: float, rng: np.random.Generator
) -> np.ndarray:
    """A random crop of a donor ground (cones removed) resampled to ``res``, flipped and turned at
    random; the crop with the fewest voids of a few tries, voids filled by inpainting."""
    zoom = donor_res / res
    need = (math.ceil(shape[0] / zoom) + 2, math.ceil(shape[1] / zoom) + 2)
    reps = (math.ceil(need[0] / donor.shape[0]) + 1, math.ceil(need[1] / donor.shape[1]) + 1)
    if reps != (1, 1):  # a donor smaller than the scene is mirrored out to its size
        donor = np.pad(
            donor, ((0, donor.shape[0] * (reps[0] - 1)), (0, donor.shape[1] * (reps[1] - 1))), "symmetric"
        )
    best = None
    for _ in range(8):
        r = int(rng.integers(0, donor.shape[0] - need[0] + 1))
        c = int(rng.integers(0, donor.shape[1] - need[1] + 1))
        crop = donor[r : r + need[0], c : c + need[1]]
        gaps = float(np.isnan(crop).mean())
        if best is None or gaps < best[0]:
            best = (gaps, crop)
    assert best is not None
    crop = best[1].astype(np.float64)
    if np.isnan(crop).all():
        raise InputError("scene: the donor ground has no valid pixels")
    if np.isnan(crop).any():
        crop = inpaint_biharmonic(np.where(np.isnan(crop), np.nanmedian(crop), crop), np.isnan(crop))
    crop = np.rot90(crop, int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    rows = (np.arange(shape[0]) + 0.5) / zoom - 0.5 + 1
    cols = (np.arange(shape[1]) + 0.5) / zoom - 0.5 + 1
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(crop, [rr, cc], order=3, mode="nearest").astype(F32)


def background(
    kind: str, shape: tuple[int, int], res: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic ground of ``kind`` (:data:`GROUNDS`) on a grid of ``res`` m: (z in m, True over sea).

    Every kind gets a tilted base with long undulations and fine roughness, and 0-2 maars; a plain
    gets lava-flow lobes and scarps, hills hill country, a coast sea cliffs."""
    h, w = shape
    sea = np.zeros(shape, dtype=bool)
    yy, xx = np.indices(shape, dtype=F32)
    tilt, az = rng.uniform(0.0, 0.08), rng.uniform(0.0, 2 * math.pi)
    z = tilt * res * (xx * math.sin(az) - yy * math.cos(az))
    z += negatives.fbm(shape, res, rng, std_m=rng.uniform(3.0, 20.0), beta=3.6, corner_m=8000.0)
    z += negatives.fbm(shape, res, rng, std_m=rng.uniform(0.5, 2.0), beta=2.6, corner_m=800.0)
    if kind == "hills":
        z += negatives.hill_country(shape, res, rng)
    elif kind == "coast":
        land, sea = negatives.coast(shape, res, rng)
        z = np.where(sea, 0.0, land + z - z.min())
    else:
        z += negatives.lava_lobes(shape, res, rng, int(rng.integers(0, 10)))
        for _ in range(int(rng.integers(0, 3))):
            z += negatives.scarp(shape, res, rng)
    for _ in range(int(rng.integers(0, 3))):
        centre = (rng.uniform(0, h), rng.uniform(0, w))
        maar = negatives.maar(
            shape, res, centre, rng.uniform(400.0, 1500.0), rng.uniform(20.0, 150.0), rng.uniform(3.0, 30.0)
        )
        z = np.where(sea, z, z + maar)
    return z.astype(F32), sea


def degrade(
    z: np.ndarray, factor: int, rng: np.random.Generator, *, noise_m: float, void_fraction: float
) -> np.ndarray:
    """A fine DEM ``factor`` times coarser, averaged with a Gaussian footprint as SRTM's, plus white
    noise of ``noise_m``, row stripes of a quarter of that, and about ``void_fraction`` of voids (NaN)."""
    coarse = ndimage.gaussian_filter(z.astype(np.float64), 0.5 * factor)
    h, w = z.shape[0] // factor, z.shape[1] // factor
    coarse = coarse[factor // 2 :: factor, factor // 2 :: factor][:h, :w]
    coarse = coarse + rng.normal(0.0, noise_m, coarse.shape) + rng.normal(0.0, noise_m / 4, (h, 1))
    if void_fraction > 0:
        field = ndimage.gaussian_filter(rng.random(coarse.shape), 2.0)
        coarse = np.where(field > np.quantile(field, 1.0 - void_fraction), np.nan, coarse)
    return coarse.astype(F32)


# --------------------------------------------------------------------------- the scene


def _draw_cone(
    p: SceneParams, rng: np.random.Generator, shapes: Sequence[ConeShape], res: float
) -> tuple[np.ndarray, float, float]:
    """One cone to paste: its relief patch on the fine grid, its basal radius (m) and height (m)."""
    lo, hi = p.diameter_m
    diameter = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    height = max(p.min_height_m, diameter * rng.uniform(*p.height_to_diameter))
    if rng.random() < 0.3:  # low cones are the hard ones: a third are 15-50 m high
        height = max(p.min_height_m, min(height, rng.uniform(p.min_height_m, 50.0)))
    if shapes and rng.random() >= p.synthetic_fraction:
        shape = shapes[int(rng.integers(len(shapes)))]
    else:
        shape = synthetic_cone(rng)
    relief = resample_shape(shape, diameter / 2 / res, height, rng.uniform(0.7, 1.0), rng.uniform(0, math.pi))
    return relief, diameter / 2, height


def compose_scene(
    p: SceneParams, shapes: Sequence[ConeShape], donor_ground: tuple[np.ndarray, float] | None = None
) -> tuple[np.ndarray, gpd.GeoDataFrame]:
    """The scene's DEM (float32 m at ``p.resolution_m``, NaN voids) and its pasted cones (circles of
    their basal radius with the columns of a synthetic region's cones), deterministic in ``p.seed``.

    ``shapes``: real cone shapes (:func:`cone_library`; none: synthetic shapes only);
    ``donor_ground``: (ground with cones removed, its pixel size in m) for ``ground: donor``."""
    rng = np.random.default_rng(p.seed)
    fine = p.resolution_m / 2
    shape = (p.height_px * 2, p.width_px * 2)
    if p.ground == "donor":
        if donor_ground is None:
            raise InputError("scene: ground 'donor' needs the donor's DEM")
        z = _donor_ground(donor_ground[0], donor_ground[1], shape, fine, rng)
        sea = np.zeros(shape, dtype=bool)
    else:
        z, sea = background(p.ground, shape, fine, rng)
    placed: list[tuple[float, float, float, float]] = []
    for _ in range(p.n_cones * 20):
        if len(placed) >= p.n_cones:
            break
        relief, radius_m, height = _draw_cone(p, rng, shapes, fine)
        radius = radius_m / fine
        row, col = rng.uniform(radius, shape[0] - radius), rng.uniform(radius, shape[1] - radius)
        if sea[int(row), int(col)]:
            continue
        near = [q for q in placed if math.hypot(q[0] - row, q[1] - col) < (q[2] + radius) * 0.9]
        if near and (len(near) > 1 or rng.random() > 0.15):  # a few cones overlap a neighbour
            continue
        paste(z, relief, row, col)
        placed.append((row, col, radius, height))
    dem = degrade(z, 2, rng, noise_m=p.noise_m, void_fraction=p.void_fraction)
    dem = np.where(ndimage.zoom(sea, 0.5, order=0)[: dem.shape[0], : dem.shape[1]], 0.0, dem).astype(F32)
    return dem, _cone_table(placed, p, fine)


def _cone_table(
    placed: Sequence[tuple[float, float, float, float]], p: SceneParams, fine: float
) -> gpd.GeoDataFrame:
    """The pasted cones as a synthetic region's cone table (circles of the basal radius, CRS metres)."""
    x = np.array([p.origin_x + (c + 0.5) * fine for _, c, _, _ in placed], dtype=np.float64)
    y = np.array([p.origin_y - (r + 0.5) * fine for r, _, _, _ in placed], dtype=np.float64)
    radius = np.array([rad * fine for _, _, rad, _ in placed], dtype=np.float64)
    n = len(placed)
    data = {
        "cone_id": np.arange(1, n + 1, dtype=np.int64),
        "x": x,
        "y": y,
        "radius_m": radius,
        "basal_diameter_m": 2 * radius,
        "height_m": np.array([h for _, _, _, h in placed], dtype=np.float64),
        "crater": np.zeros(n, dtype=bool),
        "crater_diameter_m": np.zeros(n),
        "breached": np.zeros(n, dtype=bool),
        "coalesced": np.zeros(n, dtype=bool),
    }
    crs = CRS.from_user_input(p.crs)
    geoms = gpd.GeoSeries(
        [Point(a, b).buffer(r, quad_segs=16) for a, b, r in zip(x, y, radius, strict=True)], crs=crs
    )
    return gpd.GeoDataFrame(data, geometry=geoms, crs=crs)


def write_scene(
    p: SceneParams,
    dem_path: str | os.PathLike[str],
    cones_path: str | os.PathLike[str],
    donors: Sequence[tuple[str | os.PathLike[str], gpd.GeoDataFrame]] = (),
) -> gpd.GeoDataFrame:
    """Compose a scene from the ``donors`` (DEM path and its labels, in ``p.donors`` order) and write
    its DEM (float32 GeoTIFF, nodata NODATA_FLOAT) and cones (GeoPackage, layer "cones"), atomically."""
    shapes: list[ConeShape] = []
    for path, labels in donors:
        shapes += cone_library(path, labels, source=Path(path).stem)
    if donors and not shapes:
        raise InputError(f"scene: no usable labelled cone in the donors {', '.join(p.donors)}")
    ground = None
    if p.ground == "donor":
        with open_raster(donors[0][0], what="donor DEM") as ds:
            donor_res = abs(ds.transform.a)
        ground = (cones_removed(donors[0][0], donors[0][1], seed=p.seed), donor_res)
    dem, cones = compose_scene(p, shapes, ground)
    profile = geotiff_profile(
        width=dem.shape[1],
        height=dem.shape[0],
        count=1,
        dtype="float32",
        crs=CRS.from_user_input(p.crs),
        transform=p.transform,
        nodata=NODATA_FLOAT,
    )
    with atomic_write(dem_path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(np.where(np.isfinite(dem), dem, NODATA_FLOAT).astype(F32), 1)
    with atomic_write(cones_path) as tmp:
        cones.to_file(tmp, layer="cones", driver="GPKG", engine="pyogrio", geometry_type="Polygon")
    return cones
