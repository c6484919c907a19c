"""The vectorize step: cone polygons from the probability map, and the morphometry of each cone.

Pipeline (:func:`vectorize_cones`), on the probability raster's grid (the DEM's grid, metric CRS):

1. **Threshold**: a pixel is cone where ``probability >= threshold`` (nodata and NaN are not cone).
2. **Opening** (optional): binary opening with a disc of ``opening_px`` pixels radius removes specks
   and thin bridges between cones.
3. **Objects**: 4-connected components of the cone pixels. An object whose bounding box is wider or
   taller than ``max_diameter_m`` is not a cone and is dropped (with a log line). With ``fill_holes``,
   the holes of each object (background not 8-connected to the outside) are filled, and an object lying
   inside another one's hole becomes part of it. Objects smaller than ``min_area_m2`` are dropped.
4. **Splitting** (``split_touching``): touching cones are split at the waists of their distance
   transform, as set by ``split_min_distance_m`` and ``split_saddle_ratio``
   (:func:`cinderseg.cones.objects.split_cones`).
5. **Polygons**: each cone's pixels become a smoothed outline that gives back its pixels
   (:func:`cinderseg.cones.objects.cone_polygon`); objects less round than ``min_circularity`` are
   dropped. Coordinates are the raster's CRS (metres).
6. **DEM outline** (``outline: dem``, :func:`dem_outlines`): each object is outlined again from the
   DEM's radial relief profiles (:mod:`cinderseg.cones.outline`, as the classical baseline outlines its
   candidates), from its centroid at the scale of its equivalent radius; outlines overlapping by more
   than :data:`DEM_OUTLINE_MAX_OVERLAP` become one cone.
7. **Morphometry**: :func:`cinderseg.cones.morphometry.cone_attributes` (also used by the classical
   baseline); then objects lower than ``min_height_m`` or flatter than ``min_height_to_diameter`` are
   dropped (:func:`drop_low_cones`).

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window
from scipy import ndimage
from shapely.geometry import Polygon

from cinderseg.cones import figures
from cinderseg.cones.morphometry import (
    cone_attributes,
    empty_cone_layer,
    summarize_cones,
    write_cone_layer,
)
from cinderseg.cones.objects import (
    cone_polygon,
    disc,
    first_pixel,
    holes_filled,
    label_objects,
    split_cones,
)
from cinderseg.cones.outline import dem_outline, suppress_overlaps
from cinderseg.core.errors import ConfigError
from cinderseg.core.grid import check_metric_grid, check_same_grid, what
from cinderseg.core.raster import atomic_write, iter_windows, open_raster, padded_window, valid_pixels
from cinderseg.core.schema import section_default, validate_section

log = logging.getLogger(__name__)

__all__ = ["VectorizeSettings", "vectorize_cones", "write_cone_products"]

#: GDAL block cache in bytes while the step runs (as cinderseg.data.mask: bytes, not megabytes).
GDAL_CACHE_BYTES = 64 * 1024 * 1024
#: Two DEM outlines overlapping by more than this fraction of the smaller one's area are one cone
#: (the baseline's max_overlap default).
DEM_OUTLINE_MAX_OVERLAP = 0.3


@dataclass(frozen=True)
class VectorizeSettings:
    """The config's ``vectorize`` section (meaning of each key: the schema).

    Lengths in metres, areas in square metres, ``*_px`` in pixels of the probability raster.
    """

    threshold: float = section_default("vectorize", "threshold")
    min_area_m2: float = section_default("vectorize", "min_area_m2")
    max_diameter_m: float = section_default("vectorize", "max_diameter_m")
    fill_holes: bool = section_default("vectorize", "fill_holes")
    opening_px: int = section_default("vectorize", "opening_px")
    split_touching: bool = section_default("vectorize", "split_touching")
    split_min_distance_m: float = section_default("vectorize", "split_min_distance_m")
    split_saddle_ratio: float = section_default("vectorize", "split_saddle_ratio")
    ring_width_px: int = section_default("vectorize", "ring_width_px")
    block_px: int = section_default("vectorize", "block_px")
    min_circularity: float = section_default("vectorize", "min_circularity")
    outline: str = section_default("vectorize", "outline")
    min_height_m: float = section_default("vectorize", "min_height_m")
    min_height_to_diameter: float = section_default("vectorize", "min_height_to_diameter")

    def __post_init__(self) -> None:
        validate_section("vectorize", asdict(self))
        disc_m2 = math.pi / 4 * self.max_diameter_m**2
        if self.min_area_m2 >= disc_m2:
            raise ConfigError(
                f"vectorize.min_area_m2 ({self.min_area_m2:g}) leaves no room below vectorize.max_diameter_m "
                f"({self.max_diameter_m:g} m, a disc of {disc_m2:.0f} m2)"
            )

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> VectorizeSettings:
        """Settings from the config's ``vectorize`` section (missing keys take the schema's defaults)."""
        return cls(**validate_section("vectorize", section))


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


def _round_enough(polys: gpd.GeoSeries, min_circularity: float, label: str) -> gpd.GeoSeries:
    """The polygons whose circularity 4 pi area / perimeter^2 is at least ``min_circularity``: cinder
    cones are round in plan, elongated or ragged objects (flows, ridges, merged debris) go."""
    round_enough = (4 * math.pi * polys.area / polys.length**2).to_numpy() >= min_circularity
    log.info(
        "%s: %d objects below min_circularity=%g dropped",
        label,
        int((~round_enough).sum()),
        min_circularity,
    )
    return polys[round_enough].reset_index(drop=True)


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
    found, counts, crs = _find_objects(probability_path, dem_path, settings, region)
    polys = gpd.GeoSeries([item[2] for item in found], crs=crs)
    label = f"region '{region}'" if region else os.fspath(probability_path)
    if len(polys) and settings.min_circularity > 0:
        polys = _round_enough(polys, settings.min_circularity, label)
    if len(polys) and settings.outline == "dem":
        polys = dem_outlines(polys, dem_path, region=region)
    _log_counts(counts, settings, label, len(found))
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
    figures.plot_size_frequency(cones, Path(size_frequency_path), title=f"{name}: cone size-frequency")
    figures.plot_height_vs_diameter(
        cones, Path(height_vs_diameter_path), title=f"{name}: cone height vs diameter"
    )
    figures.plot_cone_outlines(Path(dem_path), cones, Path(cone_map_path), title=f"{name}: mapped cones")
    return cones
