"""The mask step: cone labels (polygons, or points with a basal radius) rasterized onto a DEM grid.

The mask is uint8 on exactly the DEM's grid (CRS, transform, shape): 1 inside a cone, 0 outside,
``MASK_NODATA`` (255) where the DEM is nodata. Rasterization is nearest (pixel centres,
``all_touched=False``) and done by windows, so memory does not grow with the grid size.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.windows import bounds as window_bounds
from shapely.geometry import MultiPoint, MultiPolygon
from shapely.geometry.base import BaseGeometry

from cinderseg.core.errors import InputError
from cinderseg.core.grid import check_metric_crs
from cinderseg.core.grid import what as grid_what
from cinderseg.core.raster import (
    MASK_NODATA,
    atomic_write,
    check_input_file,
    geotiff_profile,
    iter_windows,
    open_raster,
)

log = logging.getLogger(__name__)

#: GDAL block cache in bytes while the step runs (GDAL's default, 5% of RAM, would let RSS grow);
#: given in bytes because small integers (MB to GDAL) are taken as bytes by rasterio.Env.
GDAL_CACHE_BYTES = 64 * 1024 * 1024
#: Segments per quarter circle of a buffered point label (the circle's area is 0.16% short of pi r^2).
QUAD_SEGS = 16
_POLYGONAL = ("Polygon", "MultiPolygon")
_PUNCTUAL = ("Point", "MultiPoint")


def _usable_part(geom: BaseGeometry | None) -> BaseGeometry | None:
    """The polygonal part of ``geom`` (or its points if it has no area); None if neither."""
    if geom is None or geom.is_empty:
        return None
    if geom.geom_type in _POLYGONAL or geom.geom_type in _PUNCTUAL:
        return geom
    parts = list(getattr(geom, "geoms", []))
    polys = [
        p for g in parts for p in getattr(g, "geoms", [g]) if p.geom_type == "Polygon" and not p.is_empty
    ]
    if polys:
        return polys[0] if len(polys) == 1 else MultiPolygon(polys)
    points = [p for g in parts for p in getattr(g, "geoms", [g]) if p.geom_type == "Point" and not p.is_empty]
    if points:
        return points[0] if len(points) == 1 else MultiPoint(points)
    return None


def _repair(geoms: gpd.GeoSeries) -> gpd.GeoSeries:
    """Make invalid geometries valid (shapely make_valid) and keep their polygon or point parts."""
    invalid = ~geoms.is_valid
    if invalid.any():
        geoms = geoms.copy()
        geoms[invalid] = shapely.make_valid(geoms[invalid].values)
    return gpd.GeoSeries([_usable_part(g) for g in geoms], index=geoms.index, crs=geoms.crs)


def load_labels(
    path: Path,
    *,
    target_crs: CRS | str | Any,
    radius_field: str = "radius_m",
    region: str = "",
) -> gpd.GeoDataFrame:
    """Read cone labels and return them as polygons in ``target_crs``.

    ``path`` is any OGR vector file (GeoPackage, GeoJSON, Shapefile, ...) of polygons and/or points;
    a point is a cone centre whose basal radius in metres is the attribute ``radius_field``: points
    are buffered into circles after reprojection to ``target_crs`` (which must then be metric).
    Invalid geometries are repaired, empty ones dropped. Raises InputError naming the file.
    """
    what = grid_what("labels", region)
    p = check_input_file(path, what=what)
    try:
        gdf = gpd.read_file(p)
    except Exception as err:  # pyogrio/GDAL raise many types
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{what}: not a readable vector file: {p} ({first})") from err
    if len(gdf) == 0:
        raise InputError(f"{what}: no features in {p}")
    if gdf.crs is None:
        raise InputError(
            f"{what}: {p} has no CRS; assign one (e.g. ogr2ogr -a_srs EPSG:4326 out.gpkg {p.name})"
        )
    raw = gdf.geometry
    present = ~(raw.isna() | raw.is_empty)
    if not present.any():
        raise InputError(f"{what}: no usable geometry in {p} (all {len(gdf)} features are empty or missing)")
    gdf = gdf[present].copy()
    types_found = sorted(set(gdf.geometry.geom_type))
    gdf = gdf.set_geometry(_repair(gdf.geometry))
    gdf = gdf[gdf.geometry.notna()].copy()
    if len(gdf) == 0:
        raise InputError(
            f"{what}: no usable geometry in {p}: need polygons or points, found {', '.join(types_found)}"
        )

    is_point = gdf.geometry.geom_type.isin(_PUNCTUAL).to_numpy()
    radius = None
    if is_point.any():
        if radius_field not in gdf.columns:
            cols = [c for c in gdf.columns if c != gdf.geometry.name]
            raise InputError(
                f"{what}: point labels need the attribute '{radius_field}' (basal radius in metres) "
                f"but {p} has {', '.join(cols) if cols else 'no attribute columns'}; "
                "set radius_field in the region's config"
            )
        radius = pd.to_numeric(gdf[radius_field], errors="coerce").to_numpy(dtype=float)
        bad = is_point & ~(radius > 0)
        if bad.any():
            raise InputError(
                f"{what}: {int(bad.sum())} of {int(is_point.sum())} point labels in {p} have a zero, "
                f"negative or missing '{radius_field}' (basal radius in metres, must be > 0)"
            )
        check_metric_crs(target_crs, f"{what}: cannot buffer the point labels of {p} by metres")

    gdf = gdf.to_crs(target_crs)
    geoms = gdf.geometry.copy()
    if radius is not None:
        geoms[is_point] = shapely.buffer(geoms[is_point].values, radius[is_point], quad_segs=QUAD_SEGS)
    geoms = _repair(geoms)  # reprojection may rarely invalidate a polygon
    gdf = gdf.set_geometry(geoms)
    gdf = gdf[gdf.geometry.notna()].reset_index(drop=True)
    log.info("%s: %d labels from %s (%d points buffered)", what, len(gdf), p, int(is_point.sum()))
    return gdf


def rasterize_labels(
    labels_path: Path,
    dem_path: Path,
    out_path: Path,
    *,
    radius_field: str = "radius_m",
    region: str = "",
    block_px: int = 2048,
) -> int:
    """Rasterize the labels onto the DEM's grid and write the uint8 mask to ``out_path``.

    1 = cone, 0 = background, ``MASK_NODATA`` where the DEM is nodata. Returns the number of
    labels (cones) that intersect the DEM's extent.
    """
    what = grid_what("labels", region)
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
        open_raster(dem_path, what=grid_what("DEM", region)) as dem,
    ):
        labels = load_labels(labels_path, target_crs=dem.crs, radius_field=radius_field, region=region)
        geoms = labels.geometry.to_numpy()
        hits = shapely.intersects(geoms, shapely.box(*dem.bounds))
        if not hits.any():
            lb = [round(float(v), 1) for v in labels.total_bounds]
            db = [round(float(v), 1) for v in dem.bounds]
            raise InputError(
                f"{what}: all {len(geoms)} labels of {Path(labels_path)} lie outside the DEM "
                f"{Path(dem_path)} "
                f"(labels extent {lb}, DEM extent {db} in {dem.crs.to_string()})"
            )
        geoms = geoms[hits]
        tree = shapely.STRtree(geoms)
        nodata = dem.nodata
        profile = geotiff_profile(
            width=dem.width,
            height=dem.height,
            count=1,
            dtype="uint8",
            crs=dem.crs,
            transform=dem.transform,
            nodata=MASK_NODATA,
        )
        n_cone = n_nodata = 0
        with atomic_write(out_path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            for window in iter_windows(dem.height, dem.width, block_px):
                shape = (int(window.height), int(window.width))
                idx = tree.query(shapely.box(*window_bounds(window, dem.transform)), predicate="intersects")
                if len(idx):
                    out = rasterize(
                        ((g, 1) for g in geoms[idx]),
                        out_shape=shape,
                        transform=dem.window_transform(window),
                        fill=0,
                        all_touched=False,
                        dtype="uint8",
                    )
                else:
                    out = np.zeros(shape, dtype=np.uint8)
                elev = dem.read(1, window=window)
                void = ~np.isfinite(elev) if elev.dtype.kind == "f" else np.zeros(shape, dtype=bool)
                if nodata is not None and not math.isnan(nodata):
                    void |= elev == nodata
                out[void] = MASK_NODATA
                n_cone += int((out == 1).sum())
                n_nodata += int(void.sum())
                dst.write(out, 1, window=window)
    log.info(
        "%s: %d cones rasterized to %s (%d cone px, %d nodata px)",
        what,
        int(hits.sum()),
        os.fspath(out_path),
        n_cone,
        n_nodata,
    )
    return int(hits.sum())
