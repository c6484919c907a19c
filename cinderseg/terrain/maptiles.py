"""Map tiles: a large region's grid cut into square tiles that are mapped independently, then mosaicked.

A region with ``tiles: {size_km, margin_m}`` (docs/user-guide.md, "Mapping a large area in tiles") is
not prepared as one DEM: its grid (:class:`cinderseg.terrain.dem.DemGrid`, the one the dem step would
write for the whole region) is cut into a rows x columns array of **cores**, near-equal rectangles of
about ``size_km`` that partition the grid exactly, and each core grown by ``margin_m`` on every side
(clipped to the grid) is one **tile**: the dem, features, predict and vectorize steps run on each tile
alone, on the region's own grid (same CRS, pixel corners on the same multiples of the resolution), so
the tiles' pixels coincide with the whole region's. The margin gives the steps the context they need
at the core's edge (the features' neighbourhoods, the network's receptive field, whole cones and their
DEM outlines): what a tile computes inside its core matches a single run over the region, up to the
placement of the prediction windows (bench/README.md, S12).

The region's rasters are then mosaicked from the cores (:func:`mosaic_cores`: each pixel from the one
tile whose core holds it, block by block, flat memory), and its cones merged from the tiles
(:func:`cinderseg.workflow.maptiles.merge_tile_cones`). Pixel windows here are (row0, row1, col0, col1),
half-open, in the region grid's pixels.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from cinderseg.core.errors import InputError
from cinderseg.core.grid import check_metric_crs
from cinderseg.core.raster import (
    NODATA_FLOAT,
    atomic_write,
    geotiff_profile,
    iter_windows,
    open_raster,
    utm_crs_for_lonlat,
    valid_pixels,
)
from cinderseg.terrain.dem import LONLAT, DemGrid, check_bbox, target_grid

log = logging.getLogger(__name__)

#: GDAL block cache in bytes while mosaicking (bytes: small integers would be megabytes to GDAL).
GDAL_CACHE_BYTES = 128 * 1024 * 1024
#: The smallest tile size in pixels: cores are then at least half of it on each side (or the grid).
MIN_TILE_PX = 64

#: The tag of the rasters :func:`write_empty_raster` writes.
EMPTY_TAG = "empty"

PxWindow = tuple[int, int, int, int]


@dataclass(frozen=True)
class MapTile:
    """One tile of a region: its name (``r<row>c<col>``), its core (the pixels it answers for) and its
    window (the core grown by the margin, clipped to the grid), both (row0, row1, col0, col1)."""

    name: str
    row: int
    col: int
    core: PxWindow
    window: PxWindow

    def bounds(self, grid: DemGrid) -> tuple[float, float, float, float]:
        """The tile's window as (xmin, ymin, xmax, ymax) in the grid's CRS (metres)."""
        return _rect(self.window, grid)

    def core_bounds(self, grid: DemGrid) -> tuple[float, float, float, float]:
        """The core as (xmin, ymin, xmax, ymax) in the grid's CRS (metres)."""
        return _rect(self.core, grid)

    def core_in_tile(self) -> Window:
        """The core as a rasterio window of the tile's own raster."""
        r0, r1, c0, c1 = self.core
        return Window(c0 - self.window[2], r0 - self.window[0], c1 - c0, r1 - r0)


def _rect(window: PxWindow, grid: DemGrid) -> tuple[float, float, float, float]:
    r0, r1, c0, c1 = window
    t = grid.transform
    return t.c + c0 * t.a, t.f + r1 * t.e, t.c + c1 * t.a, t.f + r0 * t.e


def bbox_grid(
    bbox_lonlat: Sequence[float], *, resolution_m: float, crs: str | None = None, region: str = ""
) -> DemGrid:
    """The grid :func:`cinderseg.terrain.dem.prepare_dem` writes for sources covering all of
    ``bbox_lonlat`` (degrees, [west, south, east, north]) clipped to it: ``crs`` (default the UTM zone
    of the bbox's centre), square pixels of ``resolution_m`` covering the bbox. Needs no source (USGS
    3DEP before download)."""
    west, south, east, north = check_bbox(bbox_lonlat, region)
    if crs is not None:
        dst_crs = check_metric_crs(crs, f"region '{region}'" if region else "dem")
    else:
        dst_crs = utm_crs_for_lonlat((west + east) / 2, (south + north) / 2)
    rect = transform_bounds(LONLAT, dst_crs, west, south, east, north, densify_pts=21)
    transform, width, height = target_grid(rect, float(resolution_m))
    return DemGrid(dst_crs, transform, width, height)


def _edges(n_px: int, n_parts: int) -> list[int]:
    """``n_parts + 1`` near-equal cut positions of ``n_px`` pixels (0 first, ``n_px`` last)."""
    return [round(i * n_px / n_parts) for i in range(n_parts + 1)]


def plan_map_tiles(
    grid: DemGrid,
    size_km: float,
    margin_m: float,
    *,
    coverage: Sequence[tuple[float, float, float, float]] | None = None,
    what: str = "tiles",
) -> list[MapTile]:
    """The tiles of ``grid``: cores of about ``size_km`` (near-equal, partitioning the grid), each
    grown by ``margin_m`` (rounded up to whole pixels), in row-major order. With ``coverage``
    (rectangles in the grid's CRS where the sources have data), tiles whose window meets none are
    left out (their cores stay nodata in the mosaic). InputError (naming ``what``) when ``size_km`` is
    under :data:`MIN_TILE_PX` pixels or no tile meets the coverage.
    """
    res = grid.resolution_m
    size_px = round(size_km * 1000.0 / res)
    if size_px < MIN_TILE_PX:
        raise InputError(f"{what}: size_km {size_km:g} is under {MIN_TILE_PX} px of {res:g} m")
    rows = _edges(grid.height, max(1, math.ceil(grid.height / size_px)))
    cols = _edges(grid.width, max(1, math.ceil(grid.width / size_px)))
    margin = math.ceil(margin_m / res - 1e-9)
    digits = max(2, len(str(max(len(rows), len(cols)) - 2)))
    tiles = []
    for i in range(len(rows) - 1):
        for j in range(len(cols) - 1):
            core = (rows[i], rows[i + 1], cols[j], cols[j + 1])
            window = (
                max(0, core[0] - margin),
                min(grid.height, core[1] + margin),
                max(0, core[2] - margin),
                min(grid.width, core[3] + margin),
            )
            tile = MapTile(f"r{i:0{digits}d}c{j:0{digits}d}", i, j, core, window)
            if coverage is None or any(_meets(tile.bounds(grid), rect) for rect in coverage):
                tiles.append(tile)
    if not tiles:
        raise InputError(f"{what}: no tile meets the DEM's data")
    return tiles


def _meets(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def mosaic_cores(
    tile_paths: Sequence[str | os.PathLike[str]],
    tiles: Sequence[MapTile],
    grid: DemGrid,
    out_path: str | os.PathLike[str],
    *,
    block_px: int = 2048,
    what: str = "mosaic",
) -> dict[str, int]:
    """Write the region's raster ``out_path`` (GeoTIFF on ``grid``) from the cores of the tiles' rasters.

    Each pixel comes from the one tile whose core holds it; pixels of no tile are nodata. Bands, data
    type, nodata, band descriptions, tags and overviews are the first tile's that has data
    (:func:`write_empty_raster` tags the others). Written block by block (memory does not grow with
    the region) and atomically. InputError (naming ``what`` and the file) when a tile is not on the grid.
    """
    if len(tile_paths) != len(tiles) or not tiles:
        raise ValueError("mosaic_cores: one raster per tile expected")
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
        sources = [
            open_raster(p, what=f"{what}: tile {t.name}") for p, t in zip(tile_paths, tiles, strict=True)
        ]
        try:
            for ds, tile in zip(sources, tiles, strict=True):
                _check_on_grid(ds, tile, grid, what)
            first = next((ds for ds in sources if EMPTY_TAG not in ds.tags()), sources[0])
            profile = geotiff_profile(
                width=grid.width,
                height=grid.height,
                count=first.count,
                dtype=first.dtypes[0],
                crs=grid.crs,
                transform=grid.transform,
                nodata=first.nodata,
            )
            with atomic_write(out_path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
                dst.descriptions = first.descriptions
                dst.update_tags(**first.tags())
                for block in iter_windows(grid.height, grid.width, block_px):
                    dst.write(_assemble(block, sources, tiles, first), window=block)
                factors = first.overviews(1)
                if factors:
                    dst.build_overviews(factors, rasterio.enums.Resampling.average)
                    dst.update_tags(ns="rio_overview", resampling="average")
        finally:
            for ds in sources:
                ds.close()
    log.info(
        "%s: %d tiles -> %s (%d x %d px)", what, len(tiles), os.fspath(out_path), grid.width, grid.height
    )
    return {"tiles": len(tiles), "width": grid.width, "height": grid.height}


def _assemble(
    block: Window,
    sources: Sequence[rasterio.DatasetReader],
    tiles: Sequence[MapTile],
    first: rasterio.DatasetReader,
) -> np.ndarray:
    """The pixels of ``block`` (region grid) from the cores that meet it; nodata elsewhere."""
    r0, c0 = int(block.row_off), int(block.col_off)
    r1, c1 = r0 + int(block.height), c0 + int(block.width)
    fill = first.nodata if first.nodata is not None else 0
    out = np.full((first.count, r1 - r0, c1 - c0), fill, dtype=first.dtypes[0])
    for ds, tile in zip(sources, tiles, strict=True):
        cr0, cr1, cc0, cc1 = tile.core
        ir0, ir1, ic0, ic1 = max(r0, cr0), min(r1, cr1), max(c0, cc0), min(c1, cc1)
        if ir0 >= ir1 or ic0 >= ic1:
            continue
        win = Window(ic0 - tile.window[2], ir0 - tile.window[0], ic1 - ic0, ir1 - ir0)
        out[:, ir0 - r0 : ir1 - r0, ic0 - c0 : ic1 - c0] = ds.read(window=win)
    return out


def _check_on_grid(ds: rasterio.DatasetReader, tile: MapTile, grid: DemGrid, what: str) -> None:
    """InputError unless the tile's raster covers exactly its window of the grid."""
    r0, r1, c0, c1 = tile.window
    t = grid.transform
    same = (
        ds.crs == grid.crs
        and (ds.height, ds.width) == (r1 - r0, c1 - c0)
        and math.isclose(ds.transform.a, t.a, rel_tol=1e-9)
        and abs(ds.transform.c - (t.c + c0 * t.a)) < 1e-3 * t.a
        and abs(ds.transform.f - (t.f + r0 * t.e)) < 1e-3 * t.a
    )
    if not same:
        raise InputError(
            f"{what}: tile {tile.name} is not on the region's grid ({ds.width} x {ds.height} px at "
            f"({ds.transform.c:.1f}, {ds.transform.f:.1f})): {ds.name}; rerun its jobs"
        )


def has_data(path: str | os.PathLike[str], *, what: str = "raster") -> bool:
    """True if the raster's first band holds a valid pixel (read block by block, stopping at the first)."""
    with open_raster(path, what=what) as ds:
        for win in iter_windows(ds.height, ds.width, 2048):
            if valid_pixels(ds.read(1, window=win), ds.nodata).any():
                return True
    return False


def write_empty_raster(
    template: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    bands: Sequence[str | None],
    **tags: str,
) -> None:
    """A float32 raster of nodata (``NODATA_FLOAT``) on ``template``'s grid, one band per item of
    ``bands`` (the band descriptions), tagged :data:`EMPTY_TAG` and ``tags``: the features or
    probability map of a tile without data."""
    with open_raster(template) as ds:
        profile = geotiff_profile(
            width=ds.width,
            height=ds.height,
            count=len(bands),
            dtype="float32",
            crs=ds.crs,
            transform=ds.transform,
            nodata=NODATA_FLOAT,
        )
    with atomic_write(out_path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.descriptions = tuple(bands)
        dst.update_tags(**tags, **{EMPTY_TAG: "no valid pixel in this tile"})
        for win in iter_windows(profile["height"], profile["width"], 2048):
            dst.write(
                np.full((len(bands), int(win.height), int(win.width)), NODATA_FLOAT, np.float32), window=win
            )
    log.info("%s: no valid pixel; wrote an empty raster", os.fspath(out_path))
