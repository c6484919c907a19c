"""The dem step: mosaic, clip and reproject source DEMs onto a region's metric grid; fill small voids.

Any GDAL-readable DEM is accepted (GeoTIFF, SRTM ``.hgt``, ...), in any CRS, geographic included.
The output is a float32 GeoTIFF, north-up, with square pixels of ``resolution_m`` metres in a
projected CRS in metres, its corners on whole multiples of ``resolution_m``, and nodata
``NODATA_FLOAT``. Everything is done by windows so memory does not grow with the raster size.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.fill import fillnodata
from rasterio.io import MemoryFile
from rasterio.transform import from_origin
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from scipy import ndimage

from cinderseg.core.errors import InputError
from cinderseg.core.grid import check_metric_crs
from cinderseg.core.grid import what as grid_what
from cinderseg.core.raster import (
    NODATA_FLOAT,
    atomic_write,
    geotiff_profile,
    iter_windows,
    open_raster,
    padded_window,
    utm_crs_for_lonlat,
)

log = logging.getLogger(__name__)

LONLAT = CRS.from_epsg(4326)
#: GDAL block cache in bytes while the step runs (GDAL's default, 5% of RAM, would let RSS grow);
#: given in bytes because small integers (MB to GDAL) are taken as bytes by rasterio.Env.
GDAL_CACHE_BYTES = 256 * 1024 * 1024
_DENSIFY = 21
#: Largest output grid in pixels (40 GB of float32); anything bigger is a mistaken resolution or bbox.
MAX_GRID_PX = 10_000_000_000


@dataclass(frozen=True)
class _Source:
    """What is needed of one source DEM to mosaic and warp it (the file itself is reopened by GDAL)."""

    path: Path
    crs: CRS
    transform: Affine
    width: int
    height: int
    nodata: float | None
    is_float: bool
    bounds: tuple[float, float, float, float]
    lonlat: tuple[float, float, float, float]


def _region_prefix(region: str) -> str:
    return f"region '{region}'" if region else "dem"


def check_bbox(bbox: Sequence[float], region: str) -> tuple[float, float, float, float]:
    """``bbox`` as (west, south, east, north) in degrees; InputError naming the region unless valid."""
    vals = [float(v) for v in bbox]
    ok = len(vals) == 4 and all(math.isfinite(v) for v in vals)
    if ok:
        w, s, e, n = vals
        ok = -180.0 <= w < e <= 180.0 and -90.0 <= s < n <= 90.0
    if not ok:
        raise InputError(
            f"{_region_prefix(region)}: bbox {list(bbox)} must be [west, south, east, north] in degrees "
            "(EPSG:4326) with west < east and south < north"
        )
    return vals[0], vals[1], vals[2], vals[3]


def _inspect(path: Path, nodata: float | None, region: str) -> _Source:
    what = grid_what("DEM", region)
    with open_raster(path, what=what) as ds:
        if ds.count < 1:
            raise InputError(f"{what}: raster has no band: {path}")
        src_nodata = ds.nodata if nodata is None else float(nodata)
        bounds = tuple(ds.bounds)
        try:
            lonlat = transform_bounds(ds.crs, LONLAT, *bounds, densify_pts=_DENSIFY)
        except Exception as err:  # PROJ errors come in many types
            raise InputError(f"{what}: cannot place {path} on the globe ({err})") from err
        if not all(math.isfinite(v) for v in lonlat):
            raise InputError(f"{what}: extent of {path} cannot be transformed to lon/lat")
        return _Source(
            path=Path(os.path.abspath(path)),
            crs=ds.crs,
            transform=ds.transform,
            width=ds.width,
            height=ds.height,
            nodata=None if src_nodata is None else float(src_nodata),
            is_float=np.dtype(ds.dtypes[0]).kind == "f",
            bounds=bounds,  # type: ignore[arg-type]
            lonlat=tuple(lonlat),  # type: ignore[arg-type]
        )


def _north_up(t: Affine) -> bool:
    return t.b == 0.0 and t.d == 0.0 and t.a > 0.0 and t.e < 0.0


def _group_sources(sources: list[_Source]) -> list[list[_Source]]:
    """Group sources that can share one mosaic VRT: same CRS and pixel size, north-up."""
    groups: list[list[_Source]] = []
    for src in sources:
        for group in groups:
            ref = group[0]
            if (
                _north_up(src.transform)
                and _north_up(ref.transform)
                and src.crs == ref.crs
                and math.isclose(src.transform.a, ref.transform.a, rel_tol=1e-7)
                and math.isclose(src.transform.e, ref.transform.e, rel_tol=1e-7)
            ):
                group.append(src)
                break
        else:
            groups.append([src])
    return groups


def _fmt(v: float) -> str:
    return "nan" if math.isnan(v) else repr(float(v))


def _snap(v: float) -> float:
    """``v`` rounded to a whole number when within 1e-6 of one (pixel offsets of a mosaic)."""
    r = round(v)
    return float(r) if abs(v - r) < 1e-6 else v


def _mosaic_vrt_xml(group: list[_Source]) -> str:
    """A float32 VRT mosaic of ``group`` in its own CRS and grid; every kind of nodata becomes NaN.

    Sources are drawn last to first so that, where they overlap, the first listed wins (its nodata
    pixels, or its NaN pixels when it has no nodata value, let the next source show through).
    """
    ref = group[0]
    t = ref.transform
    if len(group) == 1:
        width, height, gt = ref.width, ref.height, t
    else:
        left = min(s.bounds[0] for s in group)
        top = max(s.bounds[3] for s in group)
        right = max(s.bounds[2] for s in group)
        bottom = min(s.bounds[1] for s in group)
        width = max(1, math.ceil(round((right - left) / t.a, 6)))
        height = max(1, math.ceil(round((top - bottom) / -t.e, 6)))
        gt = Affine(t.a, 0.0, left, 0.0, t.e, top)
    parts = [
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
        f"<SRS>{escape(ref.crs.to_wkt())}</SRS>",
        f"<GeoTransform>{', '.join(_fmt(v) for v in gt.to_gdal())}</GeoTransform>",
        '<VRTRasterBand dataType="Float32" band="1">',
        "<NoDataValue>nan</NoDataValue>",
    ]
    for src in reversed(group):
        if len(group) == 1:
            xoff, yoff, xsize, ysize = 0.0, 0.0, float(src.width), float(src.height)
        else:
            # whole pixels where rounding errors left them a hair off: GDAL resamples a fractional
            # DstRect, and differently for each window read (a tile's pixels would differ from the region's)
            xoff = _snap((src.bounds[0] - gt.c) / gt.a)
            yoff = _snap((src.bounds[3] - gt.f) / gt.e)
            xsize = _snap(src.width * src.transform.a / gt.a)
            ysize = _snap(src.height * src.transform.e / gt.e)
        parts += [
            "<ComplexSource>",
            f'<SourceFilename relativeToVRT="0">{escape(str(src.path))}</SourceFilename>',
            "<SourceBand>1</SourceBand>",
            f'<SrcRect xOff="0" yOff="0" xSize="{src.width}" ySize="{src.height}"/>',
            f'<DstRect xOff="{_fmt(xoff)}" yOff="{_fmt(yoff)}" xSize="{_fmt(xsize)}" ySize="{_fmt(ysize)}"/>',
        ]
        if src.nodata is not None or src.is_float:  # NaN pixels must not cover an earlier source
            parts.append(f"<NODATA>{_fmt(src.nodata if src.nodata is not None else math.nan)}</NODATA>")
        parts.append("</ComplexSource>")
    parts += ["</VRTRasterBand>", "</VRTDataset>"]
    return "\n".join(parts)


def _intersect(
    a: tuple[float, float, float, float], b: tuple[float, float, float, float]
) -> tuple[float, float, float, float] | None:
    w, s, e, n = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (w, s, e, n) if w < e and s < n else None


def _union(rects: Sequence[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    return (
        min(r[0] for r in rects),
        min(r[1] for r in rects),
        max(r[2] for r in rects),
        max(r[3] for r in rects),
    )


def _names(sources: Sequence[_Source | Path]) -> str:
    paths = [s.path if isinstance(s, _Source) else Path(s) for s in sources]
    shown = ", ".join(str(p) for p in paths[:4])
    return shown + (f" (+{len(paths) - 4} more)" if len(paths) > 4 else "")


def target_grid(bounds: tuple[float, float, float, float], resolution_m: float) -> tuple[Affine, int, int]:
    """North-up grid of ``resolution_m`` px covering ``bounds`` (target CRS units), corners on multiples."""
    eps = 1e-6
    x0 = math.floor(bounds[0] / resolution_m + eps) * resolution_m
    y0 = math.floor(bounds[1] / resolution_m + eps) * resolution_m
    x1 = math.ceil(bounds[2] / resolution_m - eps) * resolution_m
    y1 = math.ceil(bounds[3] / resolution_m - eps) * resolution_m
    width = round((x1 - x0) / resolution_m)
    height = round((y1 - y0) / resolution_m)
    return from_origin(x0, y1, resolution_m, resolution_m), width, height


def fill_small_voids(data: np.ndarray, max_void_px: int) -> tuple[np.ndarray, int]:
    """Fill voids (NaN) at most ``max_void_px`` across by inverse-distance interpolation, in place.

    A void is an 8-connected group of NaN pixels; it is filled when its bounding box is at most
    ``max_void_px`` on both sides and it does not touch the edge of ``data`` (a void touching the
    edge is either outside the data or of unknown size). Larger voids stay NaN. Returns the array
    and the number of pixels filled.
    """
    if max_void_px <= 0:
        return data, 0
    void = np.isnan(data)
    if not void.any():
        return data, 0
    labels, n = ndimage.label(void, structure=np.ones((3, 3), dtype=bool))
    h, w = data.shape
    fillable = np.zeros(n + 1, dtype=bool)
    rows: list[int] = []
    cols: list[int] = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        r, c = sl
        if r.start == 0 or c.start == 0 or r.stop == h or c.stop == w:
            continue
        if r.stop - r.start <= max_void_px and c.stop - c.start <= max_void_px:
            fillable[i] = True
            rows += [r.start, r.stop]
            cols += [c.start, c.stop]
    if not rows:
        return data, 0
    # interpolate only in the box around the fillable voids, with room for the search
    reach = max_void_px + 2
    r0, r1 = max(0, min(rows) - reach), min(h, max(rows) + reach)
    c0, c1 = max(0, min(cols) - reach), min(w, max(cols) + reach)
    sub = data[r0:r1, c0:c1]
    sub_void = void[r0:r1, c0:c1]
    target = fillable[labels[r0:r1, c0:c1]]
    filled = fillnodata(
        np.where(sub_void, 0.0, sub).astype(np.float32),
        mask=(~sub_void).astype(np.uint8),
        max_search_distance=float(max_void_px + 1),
        smoothing_iterations=0,
    )
    target &= np.isfinite(filled)
    sub[target] = filled[target]
    return data, int(target.sum())


def _read_mosaic(warped: list[WarpedVRT], window: Window) -> np.ndarray:
    """Read ``window`` of the warped sources, first valid value wins; nodata as NaN (float32)."""
    out = np.full((int(window.height), int(window.width)), np.nan, dtype=np.float32)
    for vrt in warped:
        arr = vrt.read(1, window=window, out_dtype="float32")
        arr[arr == NODATA_FLOAT] = np.nan
        take = np.isnan(out) & ~np.isnan(arr)
        out[take] = arr[take]
    return out


@dataclass(frozen=True)
class DemGrid:
    """The output grid: a projected CRS in metres, a north-up transform and its size in pixels."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def resolution_m(self) -> float:
        """Pixel size in metres (square pixels)."""
        return float(self.transform.a)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in the grid's CRS, metres."""
        t = self.transform
        return t.c, t.f + self.height * t.e, t.c + self.width * t.a, t.f


def _check_arguments(
    resolution_m: float, fill_max_void_px: int, block_px: int, nodata: float | None, region: str
) -> None:
    where = _region_prefix(region)
    if not (isinstance(resolution_m, numbers.Real) and math.isfinite(resolution_m) and resolution_m > 0):
        raise InputError(f"{where}: resolution_m must be > 0 metres, got {resolution_m}")
    if fill_max_void_px < 0:
        raise InputError(f"{where}: fill_max_void_px must be >= 0, got {fill_max_void_px}")
    if block_px < 16:
        raise InputError(f"{where}: block_px must be >= 16, got {block_px}")
    if nodata is not None and not isinstance(nodata, numbers.Real):
        raise InputError(f"{where}: nodata must be a number, got {nodata!r}")


def _plan(
    srcs: list[_Source],
    resolution_m: float,
    crs: CRS | None,
    bbox: tuple[float, float, float, float] | None,
    what: str,
    bounds: tuple[float, float, float, float] | None = None,
    allow_empty: bool = False,
) -> tuple[list[_Source], DemGrid]:
    """The sources that meet ``bbox`` and the output grid: ``crs`` (default the UTM zone of the centre),
    square pixels of ``resolution_m`` covering the sources' extent clipped to ``bbox``; with ``bounds``
    (in ``crs``), the grid covering exactly them and the sources that meet them (maybe none)."""
    if bounds is not None and crs is not None:
        return _plan_bounds(srcs, resolution_m, crs, bounds, what, allow_empty)
    extent_ll = _union([s.lonlat for s in srcs])
    if bbox is not None:
        kept = [s for s in srcs if _intersect(s.lonlat, bbox) is not None]
        clipped = _intersect(extent_ll, bbox)
        if not kept or clipped is None:
            raise InputError(
                f"{what}: bbox {list(bbox)} does not intersect {_names(srcs)} "
                f"(data extent in lon/lat: {[round(v, 5) for v in extent_ll]})"
            )
        srcs, extent_ll = kept, clipped
    if crs is None:
        crs = utm_crs_for_lonlat((extent_ll[0] + extent_ll[2]) / 2, (extent_ll[1] + extent_ll[3]) / 2)
    rect = _union([transform_bounds(s.crs, crs, *s.bounds, densify_pts=_DENSIFY) for s in srcs])
    if bbox is not None:
        clip = _intersect(rect, transform_bounds(LONLAT, crs, *bbox, densify_pts=_DENSIFY))
        if clip is None:
            raise InputError(f"{what}: bbox {list(bbox)} does not intersect {_names(srcs)}")
        rect = clip
    transform, width, height = target_grid(rect, float(resolution_m))
    if width < 2 or height < 2:
        raise InputError(
            f"{what}: the grid would be {width} x {height} px at resolution_m={resolution_m} "
            f"(at least 2 x 2 needed) for {_names(srcs)}; use a larger bbox or a finer resolution"
        )
    if width * height > MAX_GRID_PX:
        raise InputError(
            f"{what}: the grid would be {width} x {height} px at resolution_m={resolution_m} "
            f"for {_names(srcs)}; check resolution_m and bbox"
        )
    return srcs, DemGrid(crs, transform, width, height)


def _plan_bounds(
    srcs: list[_Source],
    resolution_m: float,
    crs: CRS,
    bounds: tuple[float, float, float, float],
    what: str,
    allow_empty: bool,
) -> tuple[list[_Source], DemGrid]:
    """The grid of ``resolution_m`` covering ``bounds`` (metres in ``crs``) and the sources meeting it."""
    kept = [
        s for s in srcs if _intersect(transform_bounds(s.crs, crs, *s.bounds, densify_pts=_DENSIFY), bounds)
    ]
    if not kept and not allow_empty:
        raise InputError(f"{what}: no source meets the grid {[round(v, 1) for v in bounds]}: {_names(srcs)}")
    transform, width, height = target_grid(bounds, float(resolution_m))
    if width < 2 or height < 2:
        raise InputError(f"{what}: the grid {[round(v, 1) for v in bounds]} is under 2 x 2 px")
    return kept, DemGrid(crs, transform, width, height)


def plan_dem_grid(
    sources: Sequence[Path],
    *,
    resolution_m: float,
    crs: str | None = None,
    bbox_lonlat: Sequence[float] | None = None,
    nodata: float | None = None,
    region: str = "",
) -> tuple[DemGrid, list[tuple[float, float, float, float]]]:
    """The grid :func:`prepare_dem` writes for these arguments, from the sources' headers alone (no
    pixel is read), and each kept source's bounding rectangle in the grid's CRS (metres)."""
    what = grid_what("DEM", region)
    _check_arguments(resolution_m, 0, 16, nodata, region)
    dst_crs = check_metric_crs(crs, _region_prefix(region)) if crs is not None else None
    bbox = check_bbox(bbox_lonlat, region) if bbox_lonlat is not None else None
    srcs, grid = _plan(
        [_inspect(Path(p), nodata, region) for p in sources], resolution_m, dst_crs, bbox, what
    )
    rects = [transform_bounds(s.crs, grid.crs, *s.bounds, densify_pts=_DENSIFY) for s in srcs]
    return grid, rects


def _warped_sources(stack: contextlib.ExitStack, srcs: list[_Source], target: DemGrid) -> list[WarpedVRT]:
    """One bilinear warp onto ``target`` per group of sources sharing a mosaic (closed with ``stack``)."""
    warped = []
    for group in _group_sources(srcs):
        memfile = stack.enter_context(MemoryFile(_mosaic_vrt_xml(group).encode(), ext=".vrt"))
        mosaic = stack.enter_context(memfile.open())
        xscale, yscale = _resampling_scales(group[0], target)
        vrt = WarpedVRT(
            mosaic,
            crs=target.crs,
            transform=target.transform,
            width=target.width,
            height=target.height,
            resampling=Resampling.bilinear,
            src_nodata=float("nan"),
            nodata=NODATA_FLOAT,
            dtype="float32",
            tolerance=0.01,
            XSCALE=xscale,
            YSCALE=yscale,
        )
        warped.append(stack.enter_context(vrt))
    return warped


def _resampling_scales(src: _Source, target: DemGrid) -> tuple[float, float]:
    """Target pixels per source pixel along x and y (below 1: the bilinear kernel widens to average).

    GDAL computes them for each chunk it warps, so a pixel's value would depend on the window read (a
    tile's pixels would differ from the whole region's); one ratio per source, as GDAL advises."""
    west, south, east, north = transform_bounds(src.crs, target.crs, *src.bounds, densify_pts=_DENSIFY)
    res = target.resolution_m
    return float((east - west) / src.width / res), float((north - south) / src.height / res)


def _write(
    srcs: list[_Source],
    out_path: Path,
    target: DemGrid,
    fill_max_void_px: int,
    block_px: int,
    what: str,
    allow_empty: bool = False,
) -> tuple[int, int]:
    """Warp, fill and write the DEM block by block; (valid pixels, filled void pixels). InputError if
    no pixel is valid, unless ``allow_empty``."""
    halo = 2 * fill_max_void_px + 2 if fill_max_void_px > 0 else 0
    height, width = target.height, target.width
    profile = geotiff_profile(
        width=width,
        height=height,
        count=1,
        dtype="float32",
        crs=target.crs,
        transform=target.transform,
        nodata=NODATA_FLOAT,
    )
    n_valid = n_filled = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES))
        warped = _warped_sources(stack, srcs, target)
        with atomic_write(out_path) as tmp:
            try:
                with rasterio.open(tmp, "w", **profile) as dst:
                    for window in iter_windows(height, width, block_px):
                        padded, inner = padded_window(window, halo, height, width)
                        data = _read_mosaic(warped, padded)
                        void_before = np.isnan(data[inner])
                        data, _ = fill_small_voids(data, fill_max_void_px)
                        block = data[inner]
                        valid = ~np.isnan(block)
                        n_valid += int(valid.sum())
                        n_filled += int((valid & void_before).sum())
                        dst.write(np.where(valid, block, NODATA_FLOAT).astype(np.float32), 1, window=window)
            except RasterioIOError as err:
                raise InputError(
                    f"{what}: reading {_names(srcs)} failed ({str(err).splitlines()[0]})"
                ) from err
            if n_valid == 0 and not allow_empty:
                raise InputError(
                    f"{what}: no valid elevation in {_names(srcs)} within the target grid "
                    "(all nodata; check the nodata value and bbox)"
                )
    return n_valid, n_filled


def prepare_dem(
    sources: Sequence[Path],
    out_path: Path,
    *,
    resolution_m: float,
    crs: str | None = None,
    bbox_lonlat: Sequence[float] | None = None,
    nodata: float | None = None,
    fill_max_void_px: int = 10,
    block_px: int = 2048,
    region: str = "",
    bounds: Sequence[float] | None = None,
    allow_empty: bool = False,
) -> None:
    """Mosaic ``sources``, reproject to a metric grid, clip, fill small voids and write ``out_path``.

    - ``resolution_m``: output pixel size in metres (square pixels, corners on its multiples).
    - ``crs``: target projected CRS in metres; default the UTM zone of the centre of the
      (clipped) source extent in lon/lat.
    - ``bbox_lonlat``: optional clip [west, south, east, north] in degrees (EPSG:4326); the output is
      the grid rectangle in the target CRS covering that box (as ``gdalwarp -te_srs``), within the data.
    - ``nodata``: source nodata override (e.g. -32768); source nodata, the override and NaN all
      become ``NODATA_FLOAT``. Elevation is resampled bilinearly from valid pixels only.
    - ``fill_max_void_px``: voids at most this many output pixels across are interpolated; 0: none.
    - ``block_px``: block size of the windowed warp and write.
    - ``bounds``: [xmin, ymin, xmax, ymax] in ``crs`` (metres, needs ``crs``): the output is exactly
      the grid covering them (one map tile of a larger region's grid, :mod:`cinderseg.terrain.maptiles`);
      ``bbox_lonlat`` is then not used, and sources that do not meet them are skipped.
    - ``allow_empty``: write a DEM without any valid pixel (a map tile over the sea) instead of failing.

    Raises InputError (one line naming the region and file) for unusable input.
    """
    what = grid_what("DEM", region)
    _check_arguments(resolution_m, fill_max_void_px, block_px, nodata, region)
    paths = [Path(p) for p in ([sources] if isinstance(sources, str | os.PathLike) else sources)]
    if not paths and not (allow_empty and bounds is not None):
        raise InputError(f"{what}: no source file given")
    dst_crs = check_metric_crs(crs, _region_prefix(region)) if crs is not None else None
    bbox = check_bbox(bbox_lonlat, region) if bbox_lonlat is not None else None
    if bounds is not None and dst_crs is None:
        raise InputError(f"{what}: bounds {list(bounds)} need a crs")
    rect = (*(float(v) for v in bounds),) if bounds is not None else None
    srcs = [_inspect(p, nodata, region) for p in paths]
    srcs, target = _plan(srcs, resolution_m, dst_crs, bbox, what, rect, allow_empty)  # type: ignore[arg-type]
    t = target.transform
    log.info(
        "%s: %d source(s) -> %s, %d x %d px of %s m, origin (%.1f, %.1f)",
        what,
        len(srcs),
        target.crs.to_string(),
        target.width,
        target.height,
        resolution_m,
        t.c,
        t.f,
    )
    n_valid, n_filled = _write(srcs, Path(out_path), target, fill_max_void_px, block_px, what, allow_empty)
    if n_valid == 0:
        log.warning("%s: no valid elevation within the grid; wrote an empty DEM: %s", what, out_path)
    log.info(
        "%s: wrote %s; %.1f%% valid, %d void px filled",
        what,
        out_path,
        100.0 * n_valid / (target.width * target.height),
        n_filled,
    )


def dem_summary(path: Path) -> dict[str, Any]:
    """Size, CRS, pixel size (m), valid fraction and elevation range (m) of a DEM, read by windows."""
    with open_raster(path, what="DEM") as ds:
        n_valid = 0
        lo, hi = math.inf, -math.inf
        for window in iter_windows(ds.height, ds.width, 2048):
            arr = ds.read(1, window=window)
            valid = np.isfinite(arr)
            if ds.nodata is not None and not math.isnan(ds.nodata):
                valid &= arr != ds.nodata
            count = int(valid.sum())
            if count:
                n_valid += count
                lo = min(lo, float(arr[valid].min()))
                hi = max(hi, float(arr[valid].max()))
        return {
            "path": str(path),
            "width": ds.width,
            "height": ds.height,
            "crs": ds.crs.to_string(),
            "resolution_m": float(ds.res[0]),
            "bounds": [float(v) for v in ds.bounds],
            "valid_fraction": n_valid / float(ds.width * ds.height),
            "min_elevation_m": lo if n_valid else None,
            "max_elevation_m": hi if n_valid else None,
        }
