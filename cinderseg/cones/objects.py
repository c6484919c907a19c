"""Cone objects from a thresholded probability map: objects, holes, touching cones split, outlines.

Pixel arrays here are boolean crops of one block of the probability raster (rows down, columns
right); the vectorize step (:mod:`cinderseg.cones.vectorize`) thresholds the raster, forms the
objects and calls these functions on each.

- **Objects** are 4-connected components of the cone pixels (:func:`label_objects`); the holes of an
  object are the background pixels not 8-connected to the outside (:func:`holes_filled`).
- **Splitting** (:func:`split_cones`): markers are the regional maxima of the Euclidean distance
  transform of the object, in metres; a watershed of the negated distance transform grows one region
  per marker; then, from the highest saddle down, two neighbouring regions are merged unless the
  saddle (the widest pass between them) is lower than ``saddle_ratio`` times the lower of their two
  peaks (the inscribed radii), their peaks are at least ``min_distance_m`` apart, and both hold at
  least ``min_area_px``. Two touching discs have a waist far below their radii and come out as two
  cones; an ellipse has a single maximum and stays one.
- **Polygons** (:func:`cone_polygon`): each cone's pixels are polygonized
  (``rasterio.features.shapes``, 4-connected) in pixel coordinates; the staircase outline (perimeter
  4/pi too long on a circle, circularity pi^2/16 = 0.62 for a disc) is replaced by the ring through
  the midpoints of its unit pixel edges, smoothed by a Gaussian of 1 px along the outline and
  rescaled to the area of the pixels minus half a pixel (circularity 0.99 for a disc). Rasterizing
  the outline with the pixel-centre rule gives back the cone's pixels (at most 2 % differ, else the
  unsmoothed midpoint ring, which gives them back exactly, is kept). Coordinates are the raster's
  CRS (metres).
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from affine import Affine
from rasterio.features import rasterize, shapes
from scipy import ndimage
from shapely import affinity
from shapely.geometry import Polygon, shape
from skimage.segmentation import watershed

# Outline smoothing (see cone_polygon).
SMOOTH_SIGMA_PX = 1.0
SMOOTH_MIN_LENGTH_PX = 8.0
SMOOTH_MAX_CHANGED = 0.02
_F64 = np.float64
_CROSS = ndimage.generate_binary_structure(2, 1)
_SQUARE = np.ones((3, 3), dtype=bool)


def label_objects(mask: np.ndarray) -> np.ndarray:
    """Labels (1..n, 0 background) of the 4-connected objects of a boolean array."""
    labels, _ = ndimage.label(mask, structure=_CROSS)
    return labels


def disc(radius: int) -> np.ndarray:
    """A disc of ``radius`` pixels (structuring element of the binary opening)."""
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius


def holes_filled(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its holes filled: background not 8-connected to the outside (4-connected objects)."""
    return ndimage.binary_fill_holes(mask, structure=_SQUARE)


def first_pixel(mask: np.ndarray) -> tuple[int, int]:
    """(row, col) of the first True pixel in raster order."""
    flat = int(np.argmax(mask.ravel()))
    return divmod(flat, mask.shape[1])


def split_cones(
    mask: np.ndarray, res: tuple[float, float], min_distance_m: float, saddle_ratio: float, min_area_px: float
) -> np.ndarray:
    """Labels (int32, 0 outside) of the cones of one object ``mask`` (see the module docstring);
    ``res``: pixel size (x, y) in metres."""
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


def cone_polygon(piece: np.ndarray, transform: Affine) -> Polygon | None:
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
