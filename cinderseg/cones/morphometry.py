"""Cone morphometry: basal diameter, height, H/W ratio, volume, flank slope and crater of each cone
polygon, measured on the DEM (metric CRS, metres); the cone layer's columns and its writer.

Shared by the vectorize step (the network's cones) and the classical baseline.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.windows import Window
from scipy import ndimage
from shapely.geometry import Polygon, mapping
from shapely.geometry.base import BaseGeometry

from cinderseg.core.grid import check_metric_grid, check_same_grid, what
from cinderseg.core.parallel import chunks, fork_map
from cinderseg.core.raster import atomic_write, open_raster, valid_pixels

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
#: Layer of the cone GeoPackages written by the vectorize and baseline steps.
LAYER = "cones"
#: GDAL block cache in bytes while measuring (as cinderseg.data.mask: bytes, not megabytes).
GDAL_CACHE_BYTES = 64 * 1024 * 1024

# Crater detection (see cone_attributes).
CRATER_ZONE_FRACTION = 0.5  # the crater floor is sought within this fraction of the basal radius
CRATER_CANDIDATES = 16  # lowest candidate floors tried
CRATER_MIN_DEPTH_M = 1.0  # a summit depression must be deeper than max(this, fraction x height)
CRATER_MIN_DEPTH_FRACTION = 0.1
CRATER_ENCLOSURE = 0.6  # fraction of rays from the floor that must climb the rim (breached craters pass)
CRATER_RAYS = 32
#: Polygons measured in one piece of work when several processes share the list.
MIN_PIECE = 200
_F64 = np.float64
_SQUARE = np.ones((3, 3), dtype=bool)


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


def _plan_attributes(geom: BaseGeometry, step: float) -> dict[str, float]:
    """Centroid, area, perimeter, basal diameter, circularity and the fitted circle of a polygon
    (CRS units, m); the circle through points every ``step`` m along the exterior."""
    area = float(geom.area)
    perimeter = float(geom.length)
    centroid = geom.centroid
    cx, cy, cr = _fit_circle(_outline_points(geom, step))
    return {
        "centroid_x": float(centroid.x),
        "centroid_y": float(centroid.y),
        "area_m2": area,
        "perimeter_m": perimeter,
        "basal_diameter_m": 2 * math.sqrt(area / math.pi),
        "circularity": 4 * math.pi * area / perimeter**2 if perimeter > 0 else math.nan,
        "circle_x": cx,
        "circle_y": cy,
        "circle_radius_m": cr,
        "basal_diameter_fit_m": 2 * cr,
    }


def _pixel_window(geom: BaseGeometry, dem: rasterio.DatasetReader, margin: int) -> Window | None:
    """The DEM window of the polygon's bounds plus ``margin`` pixels, clipped to the raster; None if
    nothing is left."""
    inv = ~dem.transform
    minx, miny, maxx, maxy = geom.bounds
    cols, rows = zip(*(inv @ (x, y) for x, y in ((minx, maxy), (maxx, miny))), strict=True)
    c0, c1 = math.floor(min(cols)) - margin, math.ceil(max(cols)) + margin
    r0, r1 = math.floor(min(rows)) - margin, math.ceil(max(rows)) + margin
    c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, dem.width), min(r1, dem.height)
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def _polygon_pixels(
    geom: BaseGeometry, others: list[Any], shape: tuple[int, int], wt: rasterio.Affine
) -> tuple[np.ndarray, np.ndarray] | None:
    """The polygon's pixels (centre inside) in a window of ``shape`` with transform ``wt`` (for a
    polygon smaller than a pixel, the pixel holding a point on its surface), and the pixels outside it
    covered by ``others`` (GeoJSON-like polygons); None if the polygon is outside the window. One
    rasterization: ``others`` burn 2, then the polygon burns 1 over them."""
    burnt = rasterize([(o, 2) for o in others] + [(geom, 1)], out_shape=shape, transform=wt, dtype="uint8")
    inside = burnt == 1
    if not inside.any():
        pt = geom.representative_point()
        pc, pr = (~wt) @ (pt.x, pt.y)
        pr, pc = math.floor(pr), math.floor(pc)
        if not (0 <= pr < shape[0] and 0 <= pc < shape[1]):
            return None
        inside[pr, pc] = True
    return inside, burnt == 2


def _touches_edge(inside: np.ndarray, valid: np.ndarray, window: Window, dem: rasterio.DatasetReader) -> bool:
    """True if the polygon's pixels reach the raster's first/last row or column, or the polygon or
    its 1-pixel neighbourhood holds DEM nodata."""
    r0, c0 = int(window.row_off), int(window.col_off)
    r1, c1 = r0 + int(window.height), c0 + int(window.width)
    rows_i, cols_i = np.nonzero(inside)
    grown = ndimage.binary_dilation(inside, structure=_SQUARE)
    edge = (
        (r0 == 0 and rows_i.min() == 0)
        or (c0 == 0 and cols_i.min() == 0)
        or (r1 == dem.height and rows_i.max() == inside.shape[0] - 1)
        or (c1 == dem.width and cols_i.max() == inside.shape[1] - 1)
    )
    return bool(edge or (grown & ~valid).any())


def _relief(
    row: dict[str, Any],
    z: np.ndarray,
    valid: np.ndarray,
    inside: np.ndarray,
    ring: np.ndarray,
    res: tuple[float, float],
) -> np.ndarray:
    """Base elevation, height, H/W ratio, volume and crater of one polygon, set in ``row``, from the
    DEM window ``z`` (m, NaN = nodata) and the base ``ring`` pixels; returns the crater interior."""
    zr = z[ring]
    row["base_elevation_m"] = float(np.median(zr))
    plane = _base_plane(ring, zr, res[0], res[1])
    rel = np.where(valid, z - plane, np.nan)
    rel_in = rel[inside & valid]
    height = float(rel_in.max())
    row["height_m"] = height
    row["height_to_diameter"] = height / row["basal_diameter_m"] if row["basal_diameter_m"] > 0 else math.nan
    row["volume_m3"] = float(np.clip(rel_in, 0, None).sum() * res[0] * res[1])
    rows_i, cols_i = np.nonzero(inside)
    centre_rc = (float(rows_i.mean()), float(cols_i.mean()))
    radius_px = math.sqrt(inside.sum() / math.pi)
    crater, depth, interior = _crater(np.where(inside, rel, np.nan), inside, centre_rc, radius_px, height)
    row["crater"] = bool(crater)
    row["crater_depth_m"] = float(depth)
    return interior


def _measure(
    geom: BaseGeometry,
    others: list[Any],
    dem: rasterio.DatasetReader,
    prob: rasterio.DatasetReader | None,
    ring_width_px: int,
) -> dict[str, Any]:
    """Attributes of one polygon (DEM CRS) from windows of the DEM and probability rasters;
    ``others``: the other cone polygons near it, GeoJSON-like (kept out of its base ring)."""
    row = _nan_row()
    res_x, res_y = abs(dem.transform.a), abs(dem.transform.e)
    row.update(_plan_attributes(geom, 0.5 * min(res_x, res_y)))
    # pixel window of the polygon plus the ring and one pixel for the slope kernel, clipped to the raster
    window = _pixel_window(geom, dem, ring_width_px + 2)
    if window is None:
        return row
    wt = dem.window_transform(window)
    shape_ = (int(window.height), int(window.width))
    pixels = _polygon_pixels(geom, others, shape_, wt)
    if pixels is None:
        return row
    inside, covered = pixels
    z = dem.read(1, window=window).astype(_F64)
    valid = valid_pixels(z, dem.nodata)
    z[~valid] = np.nan
    row["touches_edge"] = _touches_edge(inside, valid, window, dem)
    if prob is not None:
        p = prob.read(1, window=window).astype(_F64)
        pv = valid_pixels(p, prob.nodata) & inside
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
        free = ring & ~covered
        if free.sum() >= 3:
            ring = free
    interior = _relief(row, z, valid, inside, ring, (res_x, res_y)) if ring.any() else np.zeros(shape_, bool)
    slope = _slope_deg(np.where(valid, z, 0.0), valid, res_x, res_y)
    flank = inside & ~interior & np.isfinite(slope)
    if flank.any():
        row["flank_slope_mean_deg"] = float(slope[flank].mean())
    return row


def _measure_all(
    geoms: gpd.GeoSeries,
    dem: rasterio.DatasetReader,
    prob: rasterio.DatasetReader | None,
    ring_width_px: int,
    workers: int = 1,
) -> list[dict[str, Any]]:
    """The attributes of every polygon (DEM CRS; invalid ones repaired with buffer(0)), in order; each
    base ring leaves out the pixels of the other polygons within reach of it. With ``workers`` > 1,
    pieces of the list are measured in forked processes, each reading the rasters anew."""
    shapes_ = [None if g is None or g.is_empty else (g if g.is_valid else g.buffer(0)) for g in geoms]
    tree = shapely.STRtree([g if g is not None else Polygon() for g in shapes_])
    reach = (ring_width_px + 2) * max(abs(dem.transform.a), abs(dem.transform.e))

    def measure(
        indices: range, dem_ds: rasterio.DatasetReader, prob_ds: rasterio.DatasetReader | None
    ) -> list:
        # each neighbour converted to GeoJSON once per piece, in the process measuring it: built in
        # the parent, these Python objects would be copied page by page into every worker that
        # touches them (reference counts), about 300 MiB on a whole SRTM tile (bench/README.md S11)
        mapped: dict[int, Any] = {}
        rows = []
        for i in indices:
            geom = shapes_[i]
            if geom is None or geom.is_empty:
                rows.append(_nan_row())
                continue
            near = tree.query(shapely.box(*geom.bounds).buffer(reach, join_style="mitre"))
            others = []
            for j in sorted(int(k) for k in near):
                if j != i and shapes_[j] is not None:
                    if j not in mapped:
                        mapped[j] = mapping(shapes_[j])
                    others.append(mapped[j])
            rows.append(_measure(geom, others, dem_ds, prob_ds, ring_width_px))
        return rows

    if workers <= 1:
        return measure(range(len(shapes_)), dem, prob)

    def piece(indices: range) -> list:
        with (
            rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
            rasterio.open(dem.name) as dem_ds,
            rasterio.open(prob.name) if prob is not None else contextlib.nullcontext() as prob_ds,
        ):
            return measure(indices, dem_ds, prob_ds)

    parts = fork_map(piece, chunks(len(shapes_), workers, min_size=MIN_PIECE), workers)
    return [row for part in parts for row in part]


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
    workers: int = 1,
) -> gpd.GeoDataFrame:
    """Morphometry of cone polygons from the DEM (and the probability raster, if given), measured in
    up to ``workers`` processes.

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
    what_dem = what("DEM", region)
    geoms = polygons.geometry if isinstance(polygons, gpd.GeoDataFrame) else gpd.GeoSeries(polygons)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), open_raster(dem_path, what=what_dem) as dem:
        check_metric_grid(dem, what_dem, dem_path)
        if geoms.crs is not None and geoms.crs != pyproj.CRS.from_user_input(dem.crs.to_wkt()):
            geoms = geoms.to_crs(dem.crs)
        geoms = gpd.GeoSeries(list(geoms.values), crs=dem.crs)
        if len(geoms) == 0:
            return empty_cone_layer(dem.crs)
        prob_ctx = None
        if probability_path is not None:
            what_p = what("probability raster", region)
            prob_ctx = open_raster(probability_path, what=what_p)
        try:
            if prob_ctx is not None:
                check_same_grid(prob_ctx, dem, what_p, probability_path, dem_path)
            rows = _measure_all(geoms, dem, prob_ctx, int(ring_width_px), workers)
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


#: The layer of the objects a step considered and rejected, with a ``reason`` (and a ``score``).
REJECTED_LAYER = "rejected"


def write_cone_layer(
    cones: gpd.GeoDataFrame, out_path: str | os.PathLike[str], rejected: gpd.GeoDataFrame | None = None
) -> None:
    """Write a cone layer (GeoPackage, layer "cones", Polygon geometry type) atomically, with the
    ``rejected`` objects (columns ``reason``, ``score``) as a second layer "rejected" when given."""
    with atomic_write(out_path) as tmp:
        cones.to_file(tmp, layer=LAYER, driver="GPKG", engine="pyogrio", geometry_type="Polygon")
        if rejected is not None:
            rejected.to_file(
                tmp, layer=REJECTED_LAYER, driver="GPKG", engine="pyogrio", geometry_type="Polygon"
            )


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
