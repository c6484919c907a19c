"""The network's cone objects: probability map -> thresholded, split, polygonized objects, outlined
from the DEM (steps 1-6 of :mod:`cinderseg.cones.vectorize`), block by block with memory flat."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window
from scipy import ndimage
from shapely.geometry import Polygon

from cinderseg.cones.objects import (
    cone_polygon,
    disc,
    first_pixel,
    holes_filled,
    label_objects,
    split_cones,
)
from cinderseg.cones.outline import dem_outline, suppress_overlaps
from cinderseg.cones.settings import VectorizeSettings
from cinderseg.core.grid import check_metric_grid, check_same_grid, what
from cinderseg.core.raster import iter_windows, open_raster, padded_window, valid_pixels

log = logging.getLogger(__name__)

#: GDAL block cache in bytes while objects are found (as cinderseg.data.mask: bytes, not megabytes).
GDAL_CACHE_BYTES = 64 * 1024 * 1024
#: Two DEM outlines overlapping by more than this fraction of the smaller one's area are one cone
#: (the baseline's max_overlap default).
DEM_OUTLINE_MAX_OVERLAP = 0.3


# =========================================================================== objects of one block


@dataclass
class _Counts:
    objects: int = 0
    too_large: int = 0
    too_small: int = 0
    swallowed: int = 0
    split: int = 0
    largest_m: float = 0.0


@dataclass(frozen=True)
class _Block:
    """The labelled objects of one block: ``labels`` covers the core window and its halo, from the
    raster pixel (``row0``, ``col0``); ``core`` is the core's (first row, end row, first column, end
    column) in ``labels``; ``cut`` says which edges of ``labels`` (top, left, bottom, right) are not
    the raster's; ``max_px`` is ``max_diameter_m`` in pixels (rows, columns)."""

    labels: np.ndarray
    row0: int
    col0: int
    core: tuple[int, int, int, int]
    cut: tuple[bool, bool, bool, bool]
    max_px: tuple[int, int]

    def complete_and_small(self, sl: tuple[slice, slice]) -> bool:
        """Wholly inside the window (not cut by a non-raster window edge) and within max_diameter_m."""
        h, w = self.labels.shape
        top, left, bottom, right = self.cut
        cut = (
            (top and sl[0].start == 0)
            or (left and sl[1].start == 0)
            or (bottom and sl[0].stop == h)
            or (right and sl[1].stop == w)
        )
        rows, cols = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        return not cut and rows <= self.max_px[0] and cols <= self.max_px[1]

    def owns(self, sl: tuple[slice, slice], comp: np.ndarray) -> bool:
        """True if the object (bounding box ``sl``, pixels ``comp``) has its first pixel in the core."""
        r0, r1, c0, c1 = self.core
        if not r0 <= sl[0].start < r1:
            return False
        _, fc = first_pixel(comp)
        return c0 <= sl[1].start + fc < c1


def _read_block(prob: rasterio.DatasetReader, core: Window, settings: VectorizeSettings) -> _Block | None:
    """Threshold (and open) the probability around ``core`` and label its objects; None if no cone
    pixel. The halo holds any object of at most ``max_diameter_m`` whose first pixel is in the core."""
    height, width = prob.height, prob.width
    res_x, res_y = abs(prob.transform.a), abs(prob.transform.e)
    max_px_x = math.floor(settings.max_diameter_m / res_x + 1e-9)
    max_px_y = math.floor(settings.max_diameter_m / res_y + 1e-9)
    halo = max(max_px_x, max_px_y) + 1
    r_open = int(settings.opening_px)
    mid, _ = padded_window(core, halo, height, width)
    outer, _ = padded_window(core, halo + 2 * r_open, height, width)
    p = prob.read(1, window=outer)
    fg = valid_pixels(p, prob.nodata) & (p >= settings.threshold)
    del p
    if r_open:
        fg = ndimage.binary_opening(fg, structure=disc(r_open))
    m_r0, m_c0 = int(mid.row_off), int(mid.col_off)
    o_r0, o_c0 = int(outer.row_off), int(outer.col_off)
    fg = fg[m_r0 - o_r0 : m_r0 - o_r0 + int(mid.height), m_c0 - o_c0 : m_c0 - o_c0 + int(mid.width)]
    if not fg.any():
        return None
    labels = label_objects(fg)
    h, w = labels.shape
    c_r0, c_c0 = int(core.row_off) - m_r0, int(core.col_off) - m_c0
    return _Block(
        labels=labels,
        row0=m_r0,
        col0=m_c0,
        core=(c_r0, c_r0 + int(core.height), c_c0, c_c0 + int(core.width)),
        cut=(m_r0 > 0, m_c0 > 0, m_r0 + h < height, m_c0 + w < width),
        max_px=(max_px_y, max_px_x),
    )


def _swallowed(block: _Block, objects: list[tuple[slice, slice] | None]) -> set[int]:
    """Labels of the objects lying in a hole of another (complete, small enough) object."""
    swallowed: set[int] = set()
    for k, sl in enumerate(objects, start=1):
        if sl is None or sl[0].stop - sl[0].start < 3 or sl[1].stop - sl[1].start < 3:
            continue
        if not block.complete_and_small(sl):
            continue
        comp = block.labels[sl] == k
        holes = holes_filled(comp) & ~comp
        if holes.any():
            inner = np.unique(block.labels[sl][holes])
            swallowed.update(int(v) for v in inner if v != 0 and v != k)
    return swallowed


def _pieces(
    comp: np.ndarray, settings: VectorizeSettings, res: tuple[float, float], counts: _Counts
) -> np.ndarray | None:
    """Labels (int32, 0 outside) of the cones of one complete object (``comp``, its bool crop): holes
    filled with ``fill_holes``, split with ``split_touching``; None if smaller than ``min_area_m2``."""
    min_area_px = settings.min_area_m2 / (res[0] * res[1])
    filled = holes_filled(comp)
    if settings.fill_holes:
        comp = filled
    if comp.sum() < min_area_px:
        counts.too_small += 1
        return None
    if not settings.split_touching:
        return comp.astype(np.int32)
    pieces = split_cones(filled, res, settings.split_min_distance_m, settings.split_saddle_ratio, min_area_px)
    return pieces if settings.fill_holes else np.where(comp, pieces, 0)


def _block_objects(
    prob: rasterio.DatasetReader,
    core: Window,
    settings: VectorizeSettings,
    counts: _Counts,
) -> list[tuple[int, int, Polygon]]:
    """Cones whose first pixel lies in ``core``: (row, col of the first pixel, polygon)."""
    block = _read_block(prob, core, settings)
    if block is None:
        return []
    res = (abs(prob.transform.a), abs(prob.transform.e))
    objects = ndimage.find_objects(block.labels)
    swallowed = _swallowed(block, objects) if settings.fill_holes else set()
    found: list[tuple[int, int, Polygon]] = []
    for k, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        comp = block.labels[sl] == k
        if not block.owns(sl, comp):
            continue
        counts.objects += 1
        if k in swallowed:
            counts.swallowed += 1
            continue
        if not block.complete_and_small(sl):
            counts.too_large += 1
            ext = max((sl[0].stop - sl[0].start) * res[1], (sl[1].stop - sl[1].start) * res[0])
            counts.largest_m = max(counts.largest_m, ext)
            continue
        pieces = _pieces(comp, settings, res, counts)
        if pieces is None:
            continue
        ids = [int(v) for v in np.unique(pieces) if v != 0]
        counts.split += len(ids) - 1 if len(ids) > 1 else 0
        row0, col0 = block.row0 + sl[0].start, block.col0 + sl[1].start
        transform = prob.transform @ Affine.translation(col0, row0)
        for v in ids:
            piece = pieces == v
            poly = cone_polygon(piece, transform)
            if poly is None or poly.is_empty:
                continue
            pr, pc = first_pixel(piece)
            found.append((row0 + pr, col0 + pc, poly))
    return found


# =========================================================================== filters and outputs


def _find_objects(
    probability_path: str | os.PathLike[str],
    dem_path: str | os.PathLike[str],
    settings: VectorizeSettings,
    region: str,
) -> tuple[list[tuple[int, int, Polygon]], _Counts, Any]:
    """The cone objects of every block, in raster order of their first pixel, with the counts of
    what was dropped and the DEM's CRS; InputError unless both rasters are on one metric grid."""
    what_p = what("probability raster", region)
    what_d = what("DEM", region)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), open_raster(dem_path, what=what_d) as dem:
        check_metric_grid(dem, what_d, dem_path)
        with open_raster(probability_path, what=what_p) as prob:
            check_same_grid(prob, dem, what_p, probability_path, dem_path)
            counts = _Counts()
            found: list[tuple[int, int, Polygon]] = []
            for core in iter_windows(prob.height, prob.width, settings.block_px):
                found.extend(_block_objects(prob, core, settings, counts))
        crs = dem.crs
    found.sort(key=lambda item: (item[0], item[1]))
    return found, counts, crs


def _round_enough(
    polys: gpd.GeoSeries, min_circularity: float, label: str
) -> tuple[gpd.GeoSeries, gpd.GeoSeries]:
    """The polygons whose circularity 4 pi area / perimeter^2 is at least ``min_circularity`` (cinder
    cones are round in plan; elongated or ragged objects - flows, ridges, merged debris - go), and
    those that went."""
    round_enough = (4 * math.pi * polys.area / polys.length**2).to_numpy() >= min_circularity
    log.info(
        "%s: %d objects below min_circularity=%g dropped",
        label,
        int((~round_enough).sum()),
        min_circularity,
    )
    return polys[round_enough].reset_index(drop=True), polys[~round_enough].reset_index(drop=True)


def _log_counts(counts: _Counts, settings: VectorizeSettings, label: str, n_found: int) -> None:
    """Log what the objects' filters dropped and how many cones splitting added."""
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
        n_found,
    )


def dem_outlines(
    polys: gpd.GeoSeries, dem_path: str | os.PathLike[str], *, region: str = ""
) -> gpd.GeoSeries:
    """The network's objects re-outlined from the DEM (metric CRS, the polygons' CRS).

    Each object's outline is replaced by the one the DEM's radial relief profiles give around its
    centroid, at the scale of its equivalent radius ``sqrt(area / pi)`` (:func:`cinderseg.cones.outline.
    dem_outline`, the baseline's outlining): the network says where a cone is, the DEM where its
    foot is. An object the DEM gives no outline for (no relief, mostly nodata) keeps its own. Of
    outlines overlapping by more than :data:`DEM_OUTLINE_MAX_OVERLAP` of the smaller one's area
    (parts of one cone) the one from the larger object is kept. Order is kept.
    """
    with open_raster(dem_path, what=what("DEM", region)) as dem:
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


def network_objects(
    probability_path: str | os.PathLike[str],
    dem_path: str | os.PathLike[str],
    settings: VectorizeSettings,
    *,
    region: str = "",
) -> tuple[gpd.GeoSeries, gpd.GeoSeries]:
    """The network's cone objects as polygons (the DEM's CRS): thresholded, split, polygonized, round
    enough and, with ``outline: dem``, outlined from the DEM; before morphometry and height filters.
    Also the objects dropped as not round enough (their own outlines)."""
    found, counts, crs = _find_objects(probability_path, dem_path, settings, region)
    polys = gpd.GeoSeries([item[2] for item in found], crs=crs)
    not_round = gpd.GeoSeries([], crs=crs)
    label = f"region '{region}'" if region else os.fspath(probability_path)
    if len(polys) and settings.min_circularity > 0:
        polys, not_round = _round_enough(polys, settings.min_circularity, label)
    if len(polys) and settings.outline == "dem":
        polys = dem_outlines(polys, dem_path, region=region)
    _log_counts(counts, settings, label, len(found))
    return polys, not_round
