"""The vectorize step: cone polygons from the probability map, and the morphometry of each cone.

Pipeline (:func:`vectorize_cones`), on the probability raster's grid (the DEM's grid, metric CRS):

1. **Threshold**: a pixel is cone where ``probability >= threshold`` (nodata and NaN are not cone).
2. **Opening** (optional): binary opening with a disc of ``opening_px`` pixels radius removes specks
   and thin bridges between cones.
3. **Objects**: 4-connected components of the cone pixels. An object whose bounding box is wider or
   taller than ``max_diameter_m`` is not a cone and is dropped (with a log line). With ``fill_holes``,
   the holes of each object (background not 8-connected to the outside) are filled, and an object lying
   inside another one's hole becomes part of it. Objects smaller than ``min_area_m2`` are dropped.
4. **Splitting** (``split_touching``): markers are the regional maxima of the Euclidean distance
   transform of the (filled) object, in metres; a watershed of the negated distance transform grows
   one region per marker; then, from the highest saddle down, two neighbouring regions are merged
   unless the saddle (the widest pass between them) is lower than ``split_saddle_ratio`` times the
   lower of their two peaks (the inscribed radii), their peaks are at least ``split_min_distance_m``
   apart, and both hold at least ``min_area_m2``. Two touching discs have a waist far below their
   radii and come out as two cones; an ellipse has a single maximum and stays one.
5. **Polygons**: each cone's pixels are polygonized (``rasterio.features.shapes``, 4-connected) in
   pixel coordinates; the staircase outline (perimeter 4/pi too long on a circle, circularity
   pi^2/16 = 0.62 for a disc) is replaced by the ring through the midpoints of its unit pixel edges,
   smoothed by a Gaussian of 1 px along the outline and rescaled to the area of the pixels minus
   half a pixel (circularity 0.99 for a disc). Rasterizing the outline with the pixel-centre rule
   gives back the cone's pixels (at most 2 % differ, else the unsmoothed midpoint ring, which gives
   them back exactly, is kept). Coordinates are the raster's CRS (metres).
6. **DEM outline** (``outline: dem``, :func:`dem_outlines`): each object is outlined again from the
   DEM's radial relief profiles (:mod:`cinderseg.outline`, as the classical baseline outlines its
   candidates), from its centroid at the scale of its equivalent radius; outlines overlapping by more
   than :data:`DEM_OUTLINE_MAX_OVERLAP` become one cone.
7. **Morphometry**: :func:`cone_attributes` (public, also used by the classical baseline); then
   objects lower than ``min_height_m`` or flatter than ``min_height_to_diameter`` are dropped
   (:func:`drop_low_cones`).

Memory does not grow with the raster: the probability is read in blocks of ``block_px`` with a halo
of ``max_diameter_m`` (plus twice ``opening_px``). An object belongs to the block whose core holds its
first pixel in raster order (smallest row, then smallest column); an object of at most
``max_diameter_m`` whose first pixel is in the core lies wholly inside the halo, so every object is
seen complete exactly once and the result does not depend on ``block_px``. Objects are numbered
(``cone_id`` 1..n) in the raster order of their first pixel.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize, shapes
from rasterio.windows import Window
from scipy import ndimage
from shapely import affinity
from shapely.geometry import Polygon, shape
from shapely.geometry.base import BaseGeometry
from skimage.segmentation import watershed

from cinderseg import plots
from cinderseg.errors import ConfigError, InputError
from cinderseg.outline import dem_outline, suppress_overlaps
from cinderseg.raster import atomic_write, iter_windows, open_raster, padded_window
from cinderseg.settings import is_int, is_number, known_keys_only

log = logging.getLogger(__name__)

__all__ = [
    "CONE_COLUMNS",
    "CONE_DTYPES",
    "SUMMARY_COLUMNS",
    "VectorizeSettings",
    "cone_attributes",
    "empty_cone_layer",
    "summarize_cones",
    "vectorize_cones",
    "write_cone_layer",
    "write_cone_products",
]

#: Attribute columns of a cone layer, in order (the geometry column comes last); the shared data contract.
CONE_COLUMNS: tuple[str, ...] = (
    "cone_id",
    "region",
    "lon",
    "lat",
    "centroid_x",
    "centroid_y",
    "circle_x",
    "circle_y",
    "circle_radius_m",
    "area_m2",
    "perimeter_m",
    "basal_diameter_m",
    "basal_diameter_fit_m",
    "circularity",
    "summit_elevation_m",
    "base_elevation_m",
    "height_m",
    "height_to_diameter",
    "volume_m3",
    "flank_slope_mean_deg",
    "probability_mean",
    "probability_max",
    "crater",
    "crater_depth_m",
    "touches_edge",
)
#: numpy dtype of each column of :data:`CONE_COLUMNS`.
CONE_DTYPES: dict[str, str] = {name: "float64" for name in CONE_COLUMNS} | {
    "cone_id": "int64",
    "region": "object",
    "crater": "bool",
    "touches_edge": "bool",
}
#: Columns of the per-region summary table written by :func:`vectorize_cones`.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "region",
    "n_cones",
    "n_touching_edge",
    "n_crater",
    "basal_diameter_median_m",
    "basal_diameter_mean_m",
    "basal_diameter_min_m",
    "basal_diameter_max_m",
    "height_median_m",
    "height_mean_m",
    "height_to_diameter_median",
    "flank_slope_median_deg",
    "area_total_m2",
    "volume_total_m3",
)
LAYER = "cones"
#: GDAL block cache in bytes while the step runs (as cinderseg.mask: bytes, not megabytes).
GDAL_CACHE_BYTES = 64 * 1024 * 1024

# Crater detection (see cone_attributes).
CRATER_ZONE_FRACTION = 0.5  # the crater floor is sought within this fraction of the basal radius
CRATER_CANDIDATES = 16  # lowest candidate floors tried
CRATER_MIN_DEPTH_M = 1.0  # a summit depression must be deeper than max(this, fraction x height)
CRATER_MIN_DEPTH_FRACTION = 0.1
CRATER_ENCLOSURE = 0.6  # fraction of rays from the floor that must climb the rim (breached craters pass)
CRATER_RAYS = 32
# Outline smoothing (see _polygon).
SMOOTH_SIGMA_PX = 1.0
SMOOTH_MIN_LENGTH_PX = 8.0
SMOOTH_MAX_CHANGED = 0.02
_F64 = np.float64


#: Values of ``vectorize.outline``: the network's own object outline, or the DEM outline
#: (:mod:`cinderseg.outline`) drawn around each network object.
OUTLINES = ("network", "dem")
#: Two DEM outlines overlapping by more than this fraction of the smaller one's area are one cone
#: (the baseline's max_overlap default).
DEM_OUTLINE_MAX_OVERLAP = 0.3


# =========================================================================== settings
@dataclass(frozen=True)
class VectorizeSettings:
    """Settings of the vectorize step; one field per key of the schema's ``vectorize`` section.

    Lengths in metres, areas in square metres, ``*_px`` in pixels of the probability raster.
    """

    threshold: float = 0.5
    min_area_m2: float = 7500.0
    max_diameter_m: float = 5000.0
    fill_holes: bool = True
    opening_px: int = 0
    split_touching: bool = True
    split_min_distance_m: float = 150.0
    split_saddle_ratio: float = 0.85
    ring_width_px: int = 2
    block_px: int = 2048
    min_circularity: float = 0.7
    outline: str = "dem"
    min_height_m: float = 20.0
    min_height_to_diameter: float = 0.05

    def __post_init__(self) -> None:
        if self.outline not in OUTLINES:
            raise ConfigError(
                f"vectorize.outline: expected one of {', '.join(OUTLINES)}, got {self.outline!r}"
            )
        if not is_number(self.min_height_m) or self.min_height_m < 0:
            raise ConfigError(f"vectorize.min_height_m: expected a number >= 0, got {self.min_height_m!r}")
        if not is_number(self.min_height_to_diameter) or not 0 <= self.min_height_to_diameter < 1:
            raise ConfigError(
                "vectorize.min_height_to_diameter: expected a number >= 0 and < 1, "
                f"got {self.min_height_to_diameter!r}"
            )
        if not is_number(self.min_circularity) or not 0 <= self.min_circularity <= 1:
            raise ConfigError(
                f"vectorize.min_circularity: expected a number >= 0 and <= 1, got {self.min_circularity!r}"
            )
        if not is_number(self.threshold) or not 0 < self.threshold < 1:
            raise ConfigError(f"vectorize.threshold: expected a number > 0 and < 1, got {self.threshold!r}")
        if not is_number(self.min_area_m2) or self.min_area_m2 < 0:
            raise ConfigError(f"vectorize.min_area_m2: expected a number >= 0, got {self.min_area_m2!r}")
        if not is_number(self.max_diameter_m) or self.max_diameter_m <= 0:
            raise ConfigError(f"vectorize.max_diameter_m: expected a number > 0, got {self.max_diameter_m!r}")
        for key in ("fill_holes", "split_touching"):
            if not isinstance(getattr(self, key), (bool, np.bool_)):
                raise ConfigError(f"vectorize.{key}: expected true or false, got {getattr(self, key)!r}")
        if not is_int(self.opening_px) or self.opening_px < 0:
            raise ConfigError(f"vectorize.opening_px: expected an integer >= 0, got {self.opening_px!r}")
        if not is_number(self.split_min_distance_m) or self.split_min_distance_m < 0:
            raise ConfigError(
                f"vectorize.split_min_distance_m: expected a number >= 0, got {self.split_min_distance_m!r}"
            )
        if not is_number(self.split_saddle_ratio) or not 0 < self.split_saddle_ratio <= 1:
            raise ConfigError(
                "vectorize.split_saddle_ratio: expected a number > 0 and <= 1, "
                f"got {self.split_saddle_ratio!r}"
            )
        if not is_int(self.ring_width_px) or self.ring_width_px < 1:
            raise ConfigError(
                f"vectorize.ring_width_px: expected an integer >= 1, got {self.ring_width_px!r}"
            )
        if not is_int(self.block_px) or self.block_px < 64:
            raise ConfigError(f"vectorize.block_px: expected an integer >= 64, got {self.block_px!r}")
        if self.min_area_m2 >= math.pi / 4 * self.max_diameter_m**2:
            raise ConfigError(
                f"vectorize.min_area_m2 ({self.min_area_m2:g}) leaves no room below vectorize.max_diameter_m "
                f"({self.max_diameter_m:g} m, a disc of {math.pi / 4 * self.max_diameter_m**2:.0f} m2)"
            )

    @classmethod
    def from_config(cls, vectorize: Mapping[str, Any] | None) -> VectorizeSettings:
        """Settings from the config's ``vectorize`` section (missing keys take the defaults)."""
        return cls(**known_keys_only("vectorize", vectorize, (f.name for f in fields(cls))))


# =========================================================================== raster checks
def _what(kind: str, region: str) -> str:
    return f"{kind} of region '{region}'" if region else kind


def _valid(a: np.ndarray, nodata: float | None) -> np.ndarray:
    valid = np.isfinite(a) if a.dtype.kind == "f" else np.ones(a.shape, dtype=bool)
    if nodata is not None and not math.isnan(nodata):
        valid &= a != nodata
    return valid


def _check_metric(ds: rasterio.DatasetReader, what: str, path: Any) -> None:
    if not ds.crs.is_projected:
        raise InputError(f"{what}: CRS {ds.crs} is not projected; a metric CRS is needed: {path}")
    if ds.transform.b != 0 or ds.transform.d != 0:
        raise InputError(f"{what}: rotated grids are not supported: {path}")


def _check_same_grid(
    ds: rasterio.DatasetReader, ref: rasterio.DatasetReader, what: str, path: Any, ref_path: Any
) -> None:
    """InputError unless ``ds`` has exactly the grid (CRS, transform, shape) of ``ref``."""
    problems = []
    if (ds.height, ds.width) != (ref.height, ref.width):
        problems.append(f"{ds.height}x{ds.width} px vs {ref.height}x{ref.width}")
    if ds.crs != ref.crs:
        problems.append(f"CRS {ds.crs} vs {ref.crs}")
    tol = 1e-6 * max(abs(ref.transform.a), abs(ref.transform.e))
    if any(abs(a - b) > tol for a, b in zip(tuple(ds.transform)[:6], tuple(ref.transform)[:6], strict=True)):
        problems.append(f"transform {tuple(ds.transform)[:6]} vs {tuple(ref.transform)[:6]}")
    if problems:
        raise InputError(f"{what}: {path} is not on the grid of the DEM {ref_path}: {'; '.join(problems)}")


# =========================================================================== objects from the probability
_CROSS = ndimage.generate_binary_structure(2, 1)
_SQUARE = np.ones((3, 3), dtype=bool)


def _disc(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius


def _fill(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its holes filled: background not 8-connected to the outside (4-connected objects)."""
    return ndimage.binary_fill_holes(mask, structure=_SQUARE)


def _first_pixel(mask: np.ndarray) -> tuple[int, int]:
    """(row, col) of the first True pixel in raster order."""
    flat = int(np.argmax(mask.ravel()))
    return divmod(flat, mask.shape[1])


def _split(
    mask: np.ndarray, res: tuple[float, float], min_distance_m: float, saddle_ratio: float, min_area_px: float
) -> np.ndarray:
    """Labels (int32, 0 outside) of the cones of one object (see the module docstring, step 4)."""
    res_x, res_y = res
    edt = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=(res_y, res_x))[1:-1, 1:-1]
    peaks = (edt == ndimage.maximum_filter(edt, size=3, mode="constant", cval=0.0)) & mask
    markers, n = ndimage.label(peaks, structure=_SQUARE)
    if n <= 1:
        return mask.astype(np.int32)
    regions = watershed(-edt, markers, mask=mask, connectivity=1).astype(np.int32)
    idx = np.arange(1, n + 1)
    peak = np.asarray(ndimage.maximum(edt, regions, idx), dtype=_F64)
    pos = np.asarray(ndimage.maximum_position(edt, regions, idx), dtype=_F64)  # first maximum, raster order
    area = np.bincount(regions.ravel(), minlength=n + 1)[1:].astype(_F64)
    # saddle between two neighbouring regions: the highest pass min(edt_a, edt_b) over their 4-adjacencies
    keys, passes = [], []
    for a, b, ea, eb in (
        (regions[:, :-1], regions[:, 1:], edt[:, :-1], edt[:, 1:]),
        (regions[:-1, :], regions[1:, :], edt[:-1, :], edt[1:, :]),
    ):
        sel = (a != b) & (a > 0) & (b > 0)
        lo, hi = np.minimum(a[sel], b[sel]).astype(np.int64), np.maximum(a[sel], b[sel]).astype(np.int64)
        keys.append(lo * (n + 1) + hi)
        passes.append(np.minimum(ea[sel], eb[sel]))
    key = np.concatenate(keys)
    if key.size == 0:
        return regions
    sad = np.concatenate(passes)
    order = np.lexsort((-sad, key))
    key, sad = key[order], sad[order]
    first = np.r_[True, key[1:] != key[:-1]]
    edges = sorted(
        zip(
            (-sad[first]).tolist(),
            (key[first] // (n + 1)).tolist(),
            (key[first] % (n + 1)).tolist(),
            strict=True,
        )
    )
    parent = list(range(n + 1))

    def find(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    g_peak = np.r_[0.0, peak]
    g_pos = np.vstack([[0.0, 0.0], pos])
    g_area = np.r_[0.0, area]
    for neg_saddle, a, b in edges:
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        dy = (g_pos[ra, 0] - g_pos[rb, 0]) * res_y
        dx = (g_pos[ra, 1] - g_pos[rb, 1]) * res_x
        separate = (
            -neg_saddle < saddle_ratio * min(g_peak[ra], g_peak[rb])
            and math.hypot(dx, dy) >= min_distance_m
            and min(g_area[ra], g_area[rb]) >= min_area_px
        )
        if separate:
            continue
        keep, drop = (ra, rb) if (g_peak[ra], -ra) >= (g_peak[rb], -rb) else (rb, ra)
        parent[drop] = keep
        g_area[keep] += g_area[drop]
    roots = np.array([find(k) for k in range(n + 1)], dtype=np.int32)
    roots[0] = 0
    return roots[regions]


def _midpoint_ring(coords: np.ndarray) -> np.ndarray:
    """Ring through the midpoints of the unit edges of an axis-parallel ring in pixel coordinates."""
    delta = np.diff(coords, axis=0)
    steps = np.rint(np.abs(delta).sum(axis=1)).astype(np.int64)
    edge = np.repeat(np.arange(len(delta)), steps)
    k = np.arange(int(steps.sum())) - np.repeat(np.cumsum(steps) - steps, steps)
    mid = coords[edge] + ((k + 0.5) / steps[edge])[:, None] * delta[edge]
    return np.vstack([mid, mid[:1]])


def _gaussian_ring(ring: np.ndarray) -> np.ndarray:
    """A closed ring (pixel coordinates) resampled every half pixel and smoothed by a Gaussian of
    ``SMOOTH_SIGMA_PX`` along its length (rings shorter than ``SMOOTH_MIN_LENGTH_PX`` are kept)."""
    seg = np.hypot(*np.diff(ring, axis=0).T)
    length = float(seg.sum())
    if length < SMOOTH_MIN_LENGTH_PX:
        return ring
    n = math.ceil(length / 0.5)
    along = np.r_[0.0, np.cumsum(seg)]
    t = np.arange(n) * (length / n)
    sigma = SMOOTH_SIGMA_PX / (length / n)
    xy = [ndimage.gaussian_filter1d(np.interp(t, along, ring[:, k]), sigma, mode="wrap") for k in (0, 1)]
    out = np.column_stack(xy)
    return np.vstack([out, out[:1]])


def _outline(rings: list[np.ndarray], smooth: bool) -> Polygon:
    """Polygon of midpoint rings (exterior first), Gaussian-smoothed when ``smooth``."""
    if not smooth:
        return Polygon(rings[0], rings[1:])
    poly = shapely.simplify(Polygon(_gaussian_ring(rings[0]), [_gaussian_ring(r) for r in rings[1:]]), 0.05)
    target = Polygon(rings[0], rings[1:]).area
    if poly.area > 0:
        factor = math.sqrt(target / poly.area)
        poly = affinity.scale(poly, factor, factor, origin=poly.centroid)
    return poly


def _polygon(piece: np.ndarray, transform: Affine) -> Polygon | None:
    """Outline of one cone's pixels (``piece``, bool crop) as a map polygon; ``transform`` maps the crop.

    The staircase outline of the pixels (``rasterio.features.shapes``, pixel coordinates) becomes the
    ring through the midpoints of its unit edges (which holds exactly the same pixel centres), smoothed
    by a Gaussian of ``SMOOTH_SIGMA_PX`` along the outline and rescaled to the midpoint polygon's area
    (pixel count - 0.5 px). The smoothed outline is used when valid and when its pixel centres differ
    from the object's in at most ``SMOOTH_MAX_CHANGED`` of them; else the midpoint one; else the
    staircase (made valid with buffer(0)).
    """
    polys = [
        shape(geom)
        for geom, _ in shapes(piece.astype(np.uint8), mask=piece, connectivity=4, transform=Affine.identity())
    ]
    if not polys:
        return None
    raw = max(polys, key=lambda p: p.area)  # one part unless a watershed region was pinched (rare)
    if len(polys) > 1:
        piece = rasterize([raw], out_shape=piece.shape, dtype="uint8").astype(bool)
    rings = [_midpoint_ring(np.asarray(raw.exterior.coords))]
    rings += [_midpoint_ring(np.asarray(r.coords)) for r in raw.interiors]
    poly = raw
    for smooth in (True, False):
        candidate = _outline(rings, smooth)
        if not candidate.is_valid or candidate.is_empty or candidate.geom_type != "Polygon":
            continue
        back = rasterize([candidate], out_shape=piece.shape, dtype="uint8").astype(bool)
        allowed = math.floor(SMOOTH_MAX_CHANGED * piece.sum()) if smooth else 0
        if int((back != piece).sum()) <= allowed:
            poly = candidate
            break
    if not poly.is_valid:
        poly = poly.buffer(0)
        if poly.geom_type != "Polygon":
            poly = max(getattr(poly, "geoms", [poly]), key=lambda p: p.area)
    t = transform
    return affinity.affine_transform(poly, [t.a, t.b, t.d, t.e, t.c, t.f])


@dataclass
class _Counts:
    objects: int = 0
    too_large: int = 0
    too_small: int = 0
    swallowed: int = 0
    split: int = 0
    largest_m: float = 0.0


def _block_objects(
    prob: rasterio.DatasetReader,
    core: Window,
    settings: VectorizeSettings,
    counts: _Counts,
) -> list[tuple[int, int, Polygon]]:
    """Cones whose first pixel lies in ``core``: (row, col of the first pixel, polygon)."""
    height, width = prob.height, prob.width
    res_x, res_y = abs(prob.transform.a), abs(prob.transform.e)
    max_px_x = math.floor(settings.max_diameter_m / res_x + 1e-9)
    max_px_y = math.floor(settings.max_diameter_m / res_y + 1e-9)
    halo = max(max_px_x, max_px_y) + 1
    r_open = int(settings.opening_px)
    mid, _ = padded_window(core, halo, height, width)
    outer, _ = padded_window(core, halo + 2 * r_open, height, width)
    p = prob.read(1, window=outer)
    fg = _valid(p, prob.nodata) & (p >= settings.threshold)
    del p
    if r_open:
        fg = ndimage.binary_opening(fg, structure=_disc(r_open))
    m_r0, m_c0 = int(mid.row_off), int(mid.col_off)
    o_r0, o_c0 = int(outer.row_off), int(outer.col_off)
    fg = fg[m_r0 - o_r0 : m_r0 - o_r0 + int(mid.height), m_c0 - o_c0 : m_c0 - o_c0 + int(mid.width)]
    if not fg.any():
        return []
    labels, _ = ndimage.label(fg, structure=_CROSS)
    del fg
    h, w = labels.shape
    # core and raster-edge flags in mid-window coordinates
    c_r0, c_c0 = int(core.row_off) - m_r0, int(core.col_off) - m_c0
    c_r1, c_c1 = c_r0 + int(core.height), c_c0 + int(core.width)
    open_top, open_left = m_r0 > 0, m_c0 > 0
    open_bottom, open_right = m_r0 + h < height, m_c0 + w < width
    pixel_area = res_x * res_y
    min_area_px = settings.min_area_m2 / pixel_area
    objects = ndimage.find_objects(labels)

    def complete_and_small(sl: tuple[slice, slice]) -> bool:
        """Wholly inside the window (not cut by a non-raster window edge) and within max_diameter_m."""
        cut = (
            (open_top and sl[0].start == 0)
            or (open_left and sl[1].start == 0)
            or (open_bottom and sl[0].stop == h)
            or (open_right and sl[1].stop == w)
        )
        return not cut and sl[0].stop - sl[0].start <= max_px_y and sl[1].stop - sl[1].start <= max_px_x

    # objects in the holes of another (complete, small enough) object are part of it
    swallowed: set[int] = set()
    if settings.fill_holes:
        for k, sl in enumerate(objects, start=1):
            if sl is None or sl[0].stop - sl[0].start < 3 or sl[1].stop - sl[1].start < 3:
                continue
            if not complete_and_small(sl):
                continue
            comp = labels[sl] == k
            holes = _fill(comp) & ~comp
            if holes.any():
                inner = np.unique(labels[sl][holes])
                swallowed.update(int(v) for v in inner if v != 0 and v != k)

    found: list[tuple[int, int, Polygon]] = []
    for k, sl in enumerate(objects, start=1):
        if sl is None or not c_r0 <= sl[0].start < c_r1:
            continue
        comp = labels[sl] == k
        _, fc = _first_pixel(comp)
        if not c_c0 <= sl[1].start + fc < c_c1:
            continue
        counts.objects += 1
        if k in swallowed:
            counts.swallowed += 1
            continue
        if not complete_and_small(sl):
            counts.too_large += 1
            ext = max((sl[0].stop - sl[0].start) * res_y, (sl[1].stop - sl[1].start) * res_x)
            counts.largest_m = max(counts.largest_m, ext)
            continue
        filled = _fill(comp)
        if settings.fill_holes:
            comp = filled
        if comp.sum() < min_area_px:
            counts.too_small += 1
            continue
        if settings.split_touching:
            pieces = _split(
                filled,
                (res_x, res_y),
                settings.split_min_distance_m,
                settings.split_saddle_ratio,
                min_area_px,
            )
            if not settings.fill_holes:
                pieces = np.where(comp, pieces, 0)
        else:
            pieces = comp.astype(np.int32)
        ids = [int(v) for v in np.unique(pieces) if v != 0]
        counts.split += len(ids) - 1 if len(ids) > 1 else 0
        row0, col0 = m_r0 + sl[0].start, m_c0 + sl[1].start
        transform = prob.transform @ Affine.translation(col0, row0)
        for v in ids:
            piece = pieces == v
            poly = _polygon(piece, transform)
            if poly is None or poly.is_empty:
                continue
            pr, pc = _first_pixel(piece)
            found.append((row0 + pr, col0 + pc, poly))
    return found


# =========================================================================== morphometry
def _fit_circle(xy: np.ndarray) -> tuple[float, float, float]:
    """Algebraic (Kasa) least-squares circle through points (n, 2): centre x, y and radius."""
    if len(xy) < 3:
        return math.nan, math.nan, math.nan
    mean = xy.mean(axis=0)
    u = xy - mean
    design = np.column_stack([u[:, 0], u[:, 1], np.ones(len(u))])
    rhs = -(u[:, 0] ** 2 + u[:, 1] ** 2)
    (d, e, f), *_ = np.linalg.lstsq(design, rhs, rcond=None)
    cx, cy = -d / 2, -e / 2
    r2 = cx * cx + cy * cy - f
    if not r2 > 0:
        return math.nan, math.nan, math.nan
    return float(cx + mean[0]), float(cy + mean[1]), float(math.sqrt(r2))


def _outline_points(geom: BaseGeometry, step: float) -> np.ndarray:
    """Points every ``step`` (or closer) along the exterior of the largest polygon of ``geom``."""
    polys = [g for g in getattr(geom, "geoms", [geom]) if g.geom_type == "Polygon" and not g.is_empty]
    if not polys:
        return np.empty((0, 2))
    ring = shapely.segmentize(max(polys, key=lambda p: p.area).exterior, step)
    return np.asarray(ring.coords)[:-1, :2]


def _slope_deg(z: np.ndarray, valid: np.ndarray, res_x: float, res_y: float) -> np.ndarray:
    """Horn slope in degrees; NaN where a 3x3 neighbour is nodata or outside the array."""
    out = np.full(z.shape, np.nan)
    if z.shape[0] < 3 or z.shape[1] < 3:
        return out
    zz = np.where(valid, z, 0.0)
    a, b, c = zz[:-2, :-2], zz[:-2, 1:-1], zz[:-2, 2:]
    d, f = zz[1:-1, :-2], zz[1:-1, 2:]
    g, hh, i = zz[2:, :-2], zz[2:, 1:-1], zz[2:, 2:]
    dzdx = ((c + 2 * f + i) - (a + 2 * d + g)) / (8 * res_x)
    dzdy = ((a + 2 * b + c) - (g + 2 * hh + i)) / (8 * res_y)
    ok = ndimage.minimum_filter(valid.astype(np.uint8), size=3, mode="constant", cval=0)[1:-1, 1:-1] > 0
    out[1:-1, 1:-1] = np.where(ok, np.degrees(np.arctan(np.hypot(dzdx, dzdy))), np.nan)
    return out


def _enclosure(rel: np.ndarray, inside: np.ndarray, r0: int, c0: int, need: float, reach: float) -> float:
    """Fraction of ``CRATER_RAYS`` rays from pixel (r0, c0) along which the detrended elevation ``rel``
    climbs more than ``need`` metres above it before the ray leaves ``inside``."""
    az = np.arange(CRATER_RAYS) * (2 * math.pi / CRATER_RAYS)
    t = np.arange(0.5, reach, 0.5)
    rr = np.rint(r0 + np.sin(az)[:, None] * t[None, :]).astype(np.int64)
    cc = np.rint(c0 + np.cos(az)[:, None] * t[None, :]).astype(np.int64)
    inb = (rr >= 0) & (rr < inside.shape[0]) & (cc >= 0) & (cc < inside.shape[1])
    rr, cc = np.clip(rr, 0, inside.shape[0] - 1), np.clip(cc, 0, inside.shape[1] - 1)
    within = np.logical_and.accumulate(inb & inside[rr, cc], axis=1)
    vals = np.where(within & np.isfinite(rel[rr, cc]), rel[rr, cc], -np.inf)
    return float(np.mean(vals.max(axis=1) - rel[r0, c0] > need))


def _crater(
    rel: np.ndarray, inside: np.ndarray, centre_rc: tuple[float, float], radius_px: float, height: float
) -> tuple[bool, float, np.ndarray]:
    """Summit depression test on detrended elevations ``rel`` (m, NaN = nodata) of one cone.

    Candidate floors: the local minima (3x3) of ``rel`` within ``CRATER_ZONE_FRACTION`` of the basal
    radius of the centre, and the lowest pixel of that zone (the floor of a breached crater slopes
    out through the breach and need not be a local minimum), lowest first, at most
    ``CRATER_CANDIDATES``. The first candidate from which more than ``CRATER_ENCLOSURE`` of
    ``CRATER_RAYS`` rays climb more than max(``CRATER_MIN_DEPTH_M``, ``CRATER_MIN_DEPTH_FRACTION`` x
    height) before leaving the cone is the crater floor. A pointed or flat-topped cone has none: from
    the lowest point of its central zone the ground rises only inward (about 30 % of the rays).
    Returns (crater, depth = highest minus floor elevation in m, crater-interior pixel mask).
    """
    none = (False, 0.0, np.zeros(inside.shape, dtype=bool))
    if not math.isfinite(height) or radius_px <= 0:
        return none
    rows, cols = np.indices(inside.shape)
    dist = np.hypot(rows - centre_rc[0], cols - centre_rc[1])
    known = inside & np.isfinite(rel)
    zone = known & (dist <= max(1.0, CRATER_ZONE_FRACTION * radius_px))
    if not zone.any():
        return none
    z = np.where(known, rel, np.inf)
    local_min = zone & (z == ndimage.minimum_filter(z, size=3, mode="constant", cval=np.inf))
    lowest = np.zeros_like(zone)
    lowest.flat[int(np.argmin(np.where(zone, z, np.inf)))] = True
    cand_r, cand_c = np.nonzero(local_min | lowest)
    order = np.lexsort((cand_c, cand_r, z[cand_r, cand_c]))[:CRATER_CANDIDATES]
    top = float(np.max(z, where=known, initial=-np.inf))
    need = max(CRATER_MIN_DEPTH_M, CRATER_MIN_DEPTH_FRACTION * height)
    for k in order:
        r0, c0 = int(cand_r[k]), int(cand_c[k])
        floor = float(z[r0, c0])
        if top - floor <= need:
            break  # candidates are sorted: the others are shallower
        if _enclosure(rel, inside, r0, c0, need, 2.0 * radius_px + 2.0) >= CRATER_ENCLOSURE:
            depth = top - floor
            near = np.hypot(rows - r0, cols - c0) <= 0.5 * radius_px
            return True, depth, known & near & (rel < floor + 0.5 * depth)
    return none


def _nan_row() -> dict[str, Any]:
    """Attributes of a polygon that cannot be measured (no pixel in the raster)."""
    row: dict[str, Any] = {name: math.nan for name in CONE_COLUMNS[2:]}
    row.update(crater=False, crater_depth_m=0.0, touches_edge=True)
    return row


def _base_plane(ring: np.ndarray, zr: np.ndarray, res_x: float, res_y: float) -> np.ndarray:
    """Least-squares plane (m) on the window through elevations ``zr`` of the ``ring`` pixels; their
    median where fewer than 3 pixels or a degenerate (collinear) ring."""
    yy, xx = np.indices(ring.shape, dtype=_F64)
    xm, ym = xx * res_x, -yy * res_y  # metres east / north of the window's first pixel centre
    if zr.size >= 3:
        x0, y0 = xm[ring].mean(), ym[ring].mean()
        design = np.column_stack([np.ones(zr.size), xm[ring] - x0, ym[ring] - y0])
        coef, _, rank, _ = np.linalg.lstsq(design, zr, rcond=None)
        if rank == 3:
            return coef[0] + coef[1] * (xm - x0) + coef[2] * (ym - y0)
    return np.full(ring.shape, float(np.median(zr)))


def _measure(
    geom: BaseGeometry,
    others: list[BaseGeometry],
    dem: rasterio.DatasetReader,
    prob: rasterio.DatasetReader | None,
    ring_width_px: int,
) -> dict[str, Any]:
    """Attributes of one polygon (DEM CRS) from windows of the DEM and probability rasters;
    ``others``: the other cone polygons near it (kept out of its base ring)."""
    row = _nan_row()
    res_x, res_y = abs(dem.transform.a), abs(dem.transform.e)
    area = float(geom.area)
    perimeter = float(geom.length)
    centroid = geom.centroid
    row.update(
        centroid_x=float(centroid.x),
        centroid_y=float(centroid.y),
        area_m2=area,
        perimeter_m=perimeter,
        basal_diameter_m=2 * math.sqrt(area / math.pi),
        circularity=4 * math.pi * area / perimeter**2 if perimeter > 0 else math.nan,
    )
    cx, cy, cr = _fit_circle(_outline_points(geom, 0.5 * min(res_x, res_y)))
    row.update(circle_x=cx, circle_y=cy, circle_radius_m=cr, basal_diameter_fit_m=2 * cr)

    # pixel window of the polygon plus the ring and one pixel for the slope kernel, clipped to the raster
    inv = ~dem.transform
    minx, miny, maxx, maxy = geom.bounds
    cols, rows = zip(*(inv @ (x, y) for x, y in ((minx, maxy), (maxx, miny))), strict=True)
    margin = ring_width_px + 2
    c0, c1 = math.floor(min(cols)) - margin, math.ceil(max(cols)) + margin
    r0, r1 = math.floor(min(rows)) - margin, math.ceil(max(rows)) + margin
    c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, dem.width), min(r1, dem.height)
    if c1 <= c0 or r1 <= r0:
        return row
    window = Window(c0, r0, c1 - c0, r1 - r0)
    wt = dem.window_transform(window)
    shape_ = (r1 - r0, c1 - c0)
    inside = rasterize([geom], out_shape=shape_, transform=wt, dtype="uint8").astype(bool)
    if not inside.any():  # smaller than a pixel: the pixel holding a point on the surface
        pt = geom.representative_point()
        pc, pr = (~wt) @ (pt.x, pt.y)
        pr, pc = math.floor(pr), math.floor(pc)
        if not (0 <= pr < shape_[0] and 0 <= pc < shape_[1]):
            return row
        inside[pr, pc] = True
    z = dem.read(1, window=window).astype(_F64)
    valid = _valid(z, dem.nodata)
    z[~valid] = np.nan
    rows_i, cols_i = np.nonzero(inside)
    # touches the raster edge (the polygon's pixels reach the first/last row or column) or nodata
    grown = ndimage.binary_dilation(inside, structure=_SQUARE)
    edge = (
        (r0 == 0 and rows_i.min() == 0)
        or (c0 == 0 and cols_i.min() == 0)
        or (r1 == dem.height and rows_i.max() == shape_[0] - 1)
        or (c1 == dem.width and cols_i.max() == shape_[1] - 1)
    )
    row["touches_edge"] = bool(edge or (grown & ~valid).any())

    if prob is not None:
        p = prob.read(1, window=window).astype(_F64)
        pv = _valid(p, prob.nodata) & inside
        if pv.any():
            row["probability_mean"] = float(p[pv].mean())
            row["probability_max"] = float(p[pv].max())

    zin = inside & valid
    if not zin.any():
        return row
    row["summit_elevation_m"] = float(np.nanmax(np.where(zin, z, np.nan)))
    # base: plane through the valid DEM pixels of a ring ring_width_px wide just outside the polygon,
    # without the pixels of other cones (touching neighbours) unless fewer than 3 pixels would remain
    dist_out = ndimage.distance_transform_edt(~inside)
    ring = (dist_out > 0) & (dist_out <= ring_width_px) & valid
    if others:
        free = ring & ~rasterize(others, out_shape=shape_, transform=wt, dtype="uint8").astype(bool)
        if free.sum() >= 3:
            ring = free
    if ring.any():
        zr = z[ring]
        row["base_elevation_m"] = float(np.median(zr))
        plane = _base_plane(ring, zr, res_x, res_y)
        rel = np.where(valid, z - plane, np.nan)
        rel_in = rel[zin]
        height = float(rel_in.max())
        row["height_m"] = height
        row["height_to_diameter"] = (
            height / row["basal_diameter_m"] if row["basal_diameter_m"] > 0 else math.nan
        )
        row["volume_m3"] = float(np.clip(rel_in, 0, None).sum() * res_x * res_y)
        centre_rc = (float(rows_i.mean()), float(cols_i.mean()))
        radius_px = math.sqrt(inside.sum() / math.pi)
        crater, depth, interior = _crater(np.where(inside, rel, np.nan), inside, centre_rc, radius_px, height)
        row["crater"] = bool(crater)
        row["crater_depth_m"] = float(depth)
    else:
        interior = np.zeros(shape_, dtype=bool)
    slope = _slope_deg(np.where(valid, z, 0.0), valid, res_x, res_y)
    flank = inside & ~interior & np.isfinite(slope)
    if flank.any():
        row["flank_slope_mean_deg"] = float(slope[flank].mean())
    return row


def empty_cone_layer(crs: Any) -> gpd.GeoDataFrame:
    """A cone layer without rows but with every column of the contract, typed."""
    data = {name: pd.Series([], dtype=CONE_DTYPES[name]) for name in CONE_COLUMNS}
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def cone_attributes(
    polygons: gpd.GeoSeries | gpd.GeoDataFrame,
    dem_path: str | os.PathLike[str],
    *,
    probability_path: str | os.PathLike[str] | None = None,
    region: str = "",
    ring_width_px: int = 2,
) -> gpd.GeoDataFrame:
    """Morphometry of cone polygons from the DEM (and the probability raster, if given).

    ``polygons`` are reprojected to the DEM's CRS (assumed in it when they have none); the DEM must
    have a projected CRS in metres; ``probability_path``, if given, must be on the DEM's grid. Only a
    window around each polygon is read. Returns a GeoDataFrame in the DEM's CRS with the columns of
    :data:`CONE_COLUMNS` (``cone_id`` 1..n in input order) and the polygons as geometry.

    Definitions (metres, square/cubic metres, degrees; pixels are those of the DEM, a polygon's pixels
    are those whose centre lies inside it):

    - ``lon``, ``lat``: the polygon centroid in EPSG:4326 (degrees); ``centroid_x/y`` in the DEM CRS.
    - ``circle_x/y``, ``circle_radius_m``: algebraic (Kasa) least-squares circle through points every
      half pixel along the exterior; ``basal_diameter_fit_m`` = 2 x radius.
    - ``area_m2``, ``perimeter_m``: of the polygon; ``basal_diameter_m`` = 2 sqrt(area / pi);
      ``circularity`` = 4 pi area / perimeter^2 (1 for a circle).
    - base surface: least-squares plane z = a + b x + c y through the valid DEM pixels of the ring of
      pixels within ``ring_width_px`` (Euclidean) outside the polygon (a constant when the ring has
      fewer than 3 pixels or is degenerate); ``base_elevation_m`` = median DEM elevation of the ring.
    - ``summit_elevation_m`` = max DEM elevation in the polygon; ``height_m`` = max(z - plane) in the
      polygon; ``height_to_diameter`` = height_m / basal_diameter_m;
      ``volume_m3`` = sum over the polygon of max(0, z - plane) x pixel area.
    - ``crater``: a summit depression (see :func:`_crater`): a low point within half the basal radius
      (equivalent radius) of the centroid (a local minimum, or the lowest point there) from which the
      ground, detrended by the base plane, climbs more than max(1 m, 10 % of height_m) in at least 60 %
      of 32 directions before the outline (closed and breached craters pass; pointed and flat-topped
      cones do not); ``crater_depth_m`` = highest point minus crater floor, both above the base plane
      (0 without crater).
    - ``flank_slope_mean_deg``: mean Horn slope over the polygon's pixels, without the crater interior
      (pixels within half a radius of the floor and below half the crater depth), skipping pixels with a
      nodata neighbour.
    - ``probability_mean/max`` over the polygon's valid probability pixels (NaN without a raster).
    - ``touches_edge``: the polygon's pixels reach the raster's first/last row/column, or the polygon or
      its 1-pixel neighbourhood holds DEM nodata (the cone may be truncated).

    Elevation attributes are NaN when the polygon has no valid DEM pixel (height, volume also without a
    ring).
    """
    what_dem = _what("DEM", region)
    geoms = polygons.geometry if isinstance(polygons, gpd.GeoDataFrame) else gpd.GeoSeries(polygons)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), open_raster(dem_path, what=what_dem) as dem:
        _check_metric(dem, what_dem, dem_path)
        if geoms.crs is not None and geoms.crs != pyproj.CRS.from_user_input(dem.crs.to_wkt()):
            geoms = geoms.to_crs(dem.crs)
        geoms = gpd.GeoSeries(list(geoms.values), crs=dem.crs)
        if len(geoms) == 0:
            return empty_cone_layer(dem.crs)
        prob_ctx = None
        if probability_path is not None:
            what_p = _what("probability raster", region)
            prob_ctx = open_raster(probability_path, what=what_p)
        try:
            if prob_ctx is not None:
                _check_same_grid(prob_ctx, dem, what_p, probability_path, dem_path)
            shapes_ = [None if g is None or g.is_empty else (g if g.is_valid else g.buffer(0)) for g in geoms]
            tree = shapely.STRtree([g if g is not None else Polygon() for g in shapes_])
            reach = (int(ring_width_px) + 2) * max(abs(dem.transform.a), abs(dem.transform.e))
            rows = []
            for i, geom in enumerate(shapes_):
                if geom is None or geom.is_empty:
                    rows.append(_nan_row())
                    continue
                near = tree.query(shapely.box(*geom.bounds).buffer(reach, join_style="mitre"))
                others = [
                    shapes_[j] for j in sorted(int(k) for k in near) if j != i and shapes_[j] is not None
                ]
                rows.append(_measure(geom, others, dem, prob_ctx, int(ring_width_px)))
        finally:
            if prob_ctx is not None:
                prob_ctx.close()
        crs = dem.crs
    table = pd.DataFrame(rows)
    to_wgs84 = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = to_wgs84.transform(table["centroid_x"].to_numpy(), table["centroid_y"].to_numpy())
    table["lon"], table["lat"] = np.asarray(lon, dtype=_F64), np.asarray(lat, dtype=_F64)
    table["cone_id"] = np.arange(1, len(table) + 1, dtype=np.int64)
    table["region"] = str(region)
    table = table[list(CONE_COLUMNS)].astype(CONE_DTYPES)
    return gpd.GeoDataFrame(table, geometry=geoms.values, crs=crs)


# =========================================================================== outputs
def dem_outlines(
    polys: gpd.GeoSeries, dem_path: str | os.PathLike[str], *, region: str = ""
) -> gpd.GeoSeries:
    """The network's objects re-outlined from the DEM (metric CRS, the polygons' CRS).

    Each object's outline is replaced by the one the DEM's radial relief profiles give around its
    centroid, at the scale of its equivalent radius ``sqrt(area / pi)`` (:func:`cinderseg.outline.
    dem_outline`, the baseline's outlining): the network says where a cone is, the DEM where its
    foot is. An object the DEM gives no outline for (no relief, mostly nodata) keeps its own. Of
    outlines overlapping by more than :data:`DEM_OUTLINE_MAX_OVERLAP` of the smaller one's area
    (parts of one cone) the one from the larger object is kept. Order is kept.
    """
    with open_raster(dem_path, what=_what("DEM", region)) as dem:
        got = [dem_outline(dem, g.centroid.x, g.centroid.y, math.sqrt(g.area / math.pi)) for g in polys]
    outlines = [item[0] if item is not None else g for item, g in zip(got, polys, strict=True)]
    largest_first = np.argsort(-polys.area.to_numpy(), kind="stable")
    kept = suppress_overlaps(outlines, largest_first, DEM_OUTLINE_MAX_OVERLAP)
    log.info(
        "%s: %d of %d objects re-outlined from the DEM, %d merged into an overlapping outline",
        f"region '{region}'" if region else os.fspath(dem_path),
        sum(item is not None for item in got),
        len(polys),
        int((~kept).sum()),
    )
    return gpd.GeoSeries([o for o, k in zip(outlines, kept, strict=True) if k], crs=polys.crs)


def drop_low_cones(cones: gpd.GeoDataFrame, settings: VectorizeSettings, label: str = "") -> gpd.GeoDataFrame:
    """Drop the objects too low to be cones: ``height_m`` under ``settings.min_height_m`` (m) or
    ``height_to_diameter`` under ``settings.min_height_to_diameter`` (lava-flow mounds, tumuli, low
    swells, flat pit-crater rims; 0 disables each). Objects whose height is unknown (no valid DEM
    pixel) are kept. The survivors are renumbered ``cone_id`` 1..n in their order.
    """
    height = cones["height_m"].to_numpy(dtype=float)
    ratio = cones["height_to_diameter"].to_numpy(dtype=float)
    too_low = np.zeros(len(cones), dtype=bool)
    with np.errstate(invalid="ignore"):  # NaN compares False: unknown heights are kept
        if settings.min_height_m > 0:
            too_low |= height < settings.min_height_m
        if settings.min_height_to_diameter > 0:
            too_low |= ratio < settings.min_height_to_diameter
    if not too_low.any():
        return cones
    log.info(
        "%s: %d objects lower than min_height_m=%g m or min_height_to_diameter=%g dropped",
        label,
        int(too_low.sum()),
        settings.min_height_m,
        settings.min_height_to_diameter,
    )
    kept = cones[~too_low].reset_index(drop=True)
    kept["cone_id"] = np.arange(1, len(kept) + 1, dtype=np.int64)
    return kept


def write_cone_layer(cones: gpd.GeoDataFrame, out_path: str | os.PathLike[str]) -> None:
    """Write a cone layer (GeoPackage, layer "cones", Polygon geometry type) atomically."""
    with atomic_write(out_path) as tmp:
        cones.to_file(tmp, layer=LAYER, driver="GPKG", engine="pyogrio", geometry_type="Polygon")


def summarize_cones(cones: gpd.GeoDataFrame | pd.DataFrame, region: str = "") -> pd.DataFrame:
    """One-row table of a region's cones (:data:`SUMMARY_COLUMNS`; NaN statistics when none)."""

    def stat(col: str, how: str) -> float:
        v = pd.to_numeric(cones[col], errors="coerce").dropna() if len(cones) else pd.Series([], dtype=float)
        return float(getattr(v, how)()) if len(v) else math.nan

    row = {
        "region": region,
        "n_cones": len(cones),
        "n_touching_edge": int(np.asarray(cones["touches_edge"], dtype=bool).sum()) if len(cones) else 0,
        "n_crater": int(np.asarray(cones["crater"], dtype=bool).sum()) if len(cones) else 0,
        "basal_diameter_median_m": stat("basal_diameter_m", "median"),
        "basal_diameter_mean_m": stat("basal_diameter_m", "mean"),
        "basal_diameter_min_m": stat("basal_diameter_m", "min"),
        "basal_diameter_max_m": stat("basal_diameter_m", "max"),
        "height_median_m": stat("height_m", "median"),
        "height_mean_m": stat("height_m", "mean"),
        "height_to_diameter_median": stat("height_to_diameter", "median"),
        "flank_slope_median_deg": stat("flank_slope_mean_deg", "median"),
        "area_total_m2": float(pd.to_numeric(cones["area_m2"]).sum()) if len(cones) else 0.0,
        "volume_total_m3": float(pd.to_numeric(cones["volume_m3"]).fillna(0).sum()) if len(cones) else 0.0,
    }
    return pd.DataFrame([row], columns=list(SUMMARY_COLUMNS))


def vectorize_cones(
    probability_path: str | os.PathLike[str],
    dem_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    settings: VectorizeSettings,
    *,
    region: str = "",
    summary_path: str | os.PathLike[str] | None = None,
) -> gpd.GeoDataFrame:
    """Cone polygons with morphometry from a probability raster; written to ``out_path``.

    ``probability_path``: float raster (0..1) on exactly the DEM's grid; ``dem_path``: the DEM (metric
    CRS, metres). Writes a GeoPackage (layer "cones", DEM CRS, columns :data:`CONE_COLUMNS`, an empty
    layer when nothing is found) and, if ``summary_path`` is given, a one-row CSV
    (:func:`summarize_cones`), both atomically. Returns the cone layer. See the module docstring for
    the steps; raises InputError (one line naming the file) for unusable rasters.
    """
    what_p = _what("probability raster", region)
    what_d = _what("DEM", region)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), open_raster(dem_path, what=what_d) as dem:
        _check_metric(dem, what_d, dem_path)
        with open_raster(probability_path, what=what_p) as prob:
            _check_same_grid(prob, dem, what_p, probability_path, dem_path)
            counts = _Counts()
            found: list[tuple[int, int, Polygon]] = []
            for core in iter_windows(prob.height, prob.width, settings.block_px):
                found.extend(_block_objects(prob, core, settings, counts))
        crs = dem.crs
    found.sort(key=lambda item: (item[0], item[1]))
    polys = gpd.GeoSeries([item[2] for item in found], crs=crs)
    label = f"region '{region}'" if region else os.fspath(probability_path)
    if len(polys) and settings.min_circularity > 0:
        # cinder cones are round in plan: elongated or ragged objects (flows, ridges, merged debris) go
        round_enough = (4 * math.pi * polys.area / polys.length**2).to_numpy() >= settings.min_circularity
        log.info(
            "%s: %d objects below min_circularity=%g dropped",
            label,
            int((~round_enough).sum()),
            settings.min_circularity,
        )
        polys = polys[round_enough].reset_index(drop=True)
    if len(polys) and settings.outline == "dem":
        polys = dem_outlines(polys, dem_path, region=region)
    if counts.too_large:
        log.info(
            "%s: %d objects wider than max_diameter_m=%g m dropped as not cones (largest extent >= %.0f m)",
            label,
            counts.too_large,
            settings.max_diameter_m,
            counts.largest_m,
        )
    log.info(
        "%s: %d objects above threshold %g: %d below min_area_m2=%g, %d inside another's hole, "
        "%d extra cones by splitting -> %d cones",
        label,
        counts.objects,
        settings.threshold,
        counts.too_small,
        settings.min_area_m2,
        counts.swallowed,
        counts.split,
        len(found),
    )
    if len(polys):
        cones = cone_attributes(
            polys,
            dem_path,
            probability_path=probability_path,
            region=region,
            ring_width_px=settings.ring_width_px,
        )
        cones = drop_low_cones(cones, settings, label)
    else:
        cones = empty_cone_layer(crs)
    write_cone_layer(cones, out_path)
    if summary_path is not None:
        with atomic_write(summary_path) as tmp:
            summarize_cones(cones, region).to_csv(tmp, index=False)
    return cones


def write_cone_products(
    probability_path: str | os.PathLike[str],
    dem_path: str | os.PathLike[str],
    settings: VectorizeSettings,
    *,
    cones_path: str | os.PathLike[str],
    summary_path: str | os.PathLike[str],
    size_frequency_path: str | os.PathLike[str],
    height_vs_diameter_path: str | os.PathLike[str],
    cone_map_path: str | os.PathLike[str],
    region: str = "",
) -> gpd.GeoDataFrame:
    """The vectorize step's products: cone layer, summary CSV and the three cone figures."""
    cones = vectorize_cones(
        probability_path, dem_path, cones_path, settings, region=region, summary_path=summary_path
    )
    name = region or Path(cones_path).stem
    plots.plot_size_frequency(cones, Path(size_frequency_path), title=f"{name}: cone size-frequency")
    plots.plot_height_vs_diameter(
        cones, Path(height_vs_diameter_path), title=f"{name}: cone height vs diameter"
    )
    plots.plot_cone_outlines(Path(dem_path), cones, Path(cone_map_path), title=f"{name}: mapped cones")
    return cones
