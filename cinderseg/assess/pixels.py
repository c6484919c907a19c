"""Pixel metrics of the evaluate step: a prediction against the label mask, pixel by pixel.

A prediction is a probability raster cut at a threshold, a uint8 mask, or polygons rasterized onto
the mask's grid; the label mask is uint8 (1 cone, 0 background, 255 nodata). Rasters are read block
by block, so memory does not grow with the raster; pixels that are nodata in either raster are
ignored.

Undefined ratios (0/0: precision without predicted pixels, recall without true ones, IoU and F1 when
neither has any) are ``None`` (JSON null), never 0 or 1, so that empty regions do not silently raise
or lower averages. :func:`scores` is shared with the object metrics (:mod:`cinderseg.assess.matching`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds

from cinderseg.core.errors import InputError
from cinderseg.core.grid import check_same_grid, what
from cinderseg.core.raster import MASK_NODATA, NODATA_FLOAT, iter_windows, open_raster
from cinderseg.core.settings import is_number

#: GDAL block cache in bytes while the step runs (as in the mask step: keeps RSS flat).
GDAL_CACHE_BYTES = 64 * 1024 * 1024


def _ratio(num: float, den: float) -> float | None:
    """num / den, or None when den is 0 (an undefined ratio)."""
    return float(num) / float(den) if den else None


def scores(tp: int, n_pred: int, n_true: int) -> dict[str, float | None]:
    """Precision tp/n_pred, recall tp/n_true, F1 2tp/(n_pred+n_true), IoU tp/(n_pred+n_true-tp).

    Each is None where its denominator is 0 (see the module docstring).
    """
    return {
        "precision": _ratio(tp, n_pred),
        "recall": _ratio(tp, n_true),
        "f1": _ratio(2 * tp, n_pred + n_true),
        "iou": _ratio(tp, n_pred + n_true - tp),
    }


def _truth_block(mask: rasterio.DatasetReader, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """(cone, valid) boolean arrays of the label mask in ``window``."""
    data = mask.read(1, window=window)
    nodata = MASK_NODATA if mask.nodata is None else mask.nodata
    valid = data != nodata
    return (data == 1) & valid, valid


def _area_windows(height: int, width: int, block_px: int, area: Window | None) -> Iterable[Window]:
    """Windows of at most ``block_px`` px covering ``area`` (a pixel window; None: the whole raster)."""
    if area is None:
        yield from iter_windows(height, width, block_px)
        return
    r0, c0 = int(area.row_off), int(area.col_off)
    if r0 < 0 or c0 < 0 or r0 + int(area.height) > height or c0 + int(area.width) > width:
        raise InputError(f"evaluation area {area} does not lie within the raster of {width} x {height} px")
    for w in iter_windows(int(area.height), int(area.width), block_px):
        yield Window(int(w.col_off) + c0, int(w.row_off) + r0, w.width, w.height)


class _Counts:
    """Running pixel counts of a binary comparison."""

    def __init__(self) -> None:
        self.tp = self.fp = self.fn = self.tn = 0

    def add(self, pred: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> None:
        p = pred & valid
        t = truth & valid
        self.tp += int(np.count_nonzero(p & t))
        self.fp += int(np.count_nonzero(p & ~t))
        self.fn += int(np.count_nonzero(~p & t))
        self.tn += int(np.count_nonzero(valid)) - int(np.count_nonzero(p | t))

    def result(self) -> dict[str, Any]:
        s = scores(self.tp, self.tp + self.fp, self.tp + self.fn)
        return {
            "iou": s["iou"],
            "f1": s["f1"],
            "precision": s["precision"],
            "recall": s["recall"],
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
            "n_valid_px": self.tp + self.fp + self.fn + self.tn,
        }


def pixel_metrics(
    pred_path: str | os.PathLike[str],
    mask_path: str | os.PathLike[str],
    *,
    threshold: float | None = None,
    region: str = "",
    block_px: int = 2048,
    area: Window | None = None,
) -> dict[str, Any]:
    """Pixel accuracy of a prediction raster against the uint8 label mask (1 cone, 0, 255 nodata).

    ``pred_path`` is a float probability raster (``threshold`` given; a pixel is a cone where
    p >= threshold; nodata -9999, NaN or the file's nodata are ignored) or, with ``threshold=None``,
    a uint8 mask (cone where > 0; its nodata, 255 by default, ignored). Both rasters must share
    the same grid. Read by ``block_px`` windows; only pixels of ``area`` (a pixel window of the
    mask's grid, e.g. a cross-validation fold's held-out block) when given. Returns iou, f1,
    precision, recall (None when undefined), tp, fp, fn, tn and n_valid_px (pixels valid in both
    rasters).
    """
    pred_path, mask_path = Path(pred_path), Path(mask_path)
    if threshold is not None and not is_number(threshold):
        raise InputError(f"{what('pixel metrics', region)}: threshold must be a number, got {threshold!r}")
    counts = _Counts()
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
        open_raster(pred_path, what=what("prediction", region)) as pred,
        open_raster(mask_path, what=what("mask", region)) as mask,
    ):
        check_same_grid(pred, mask, what("prediction", region), pred_path, mask_path)
        is_float = np.dtype(pred.dtypes[0]).kind == "f"
        if threshold is not None and not is_float:
            raise InputError(
                f"{what('prediction', region)}: {pred_path} is {pred.dtypes[0]}, expected a float "
                "probability raster for a threshold"
            )
        if threshold is None and is_float:
            raise InputError(
                f"{what('prediction', region)}: {pred_path} is a float raster (probabilities?); "
                "give a threshold, or pass a uint8 mask"
            )
        if is_float:
            nodata = NODATA_FLOAT if pred.nodata is None else pred.nodata
        else:
            nodata = MASK_NODATA if pred.nodata is None else pred.nodata
        for window in _area_windows(mask.height, mask.width, block_px, area):
            truth, valid = _truth_block(mask, window)
            data = pred.read(1, window=window)
            if is_float:
                ok = np.isfinite(data)
                if not (isinstance(nodata, float) and math.isnan(nodata)):
                    ok &= data != nodata
                positive = ok & (data >= threshold)
            else:
                ok = data != nodata
                positive = ok & (data > 0)
            counts.add(positive, truth, valid & ok)
    result = counts.result()
    if threshold is not None:
        result["threshold"] = float(threshold)
    return result


def in_crs(gdf: gpd.GeoDataFrame, crs: Any, what: str) -> gpd.GeoDataFrame:
    """``gdf`` in ``crs`` (reprojected if needed); InputError if it has features but no CRS."""
    if gdf.crs is None:
        if len(gdf):
            raise InputError(f"{what}: no CRS (expected {crs})")
        return gdf.set_crs(crs, allow_override=True)
    return gdf if gdf.crs == crs else gdf.to_crs(crs)


def polygonal(geoms: np.ndarray) -> np.ndarray:
    """Geometries with None replaced by empty polygons and invalid ones repaired (make_valid)."""
    geoms = np.array([shapely.Polygon() if g is None else g for g in geoms], dtype=object)
    if len(geoms):
        bad = ~shapely.is_valid(geoms)
        if bad.any():
            geoms[bad] = shapely.make_valid(geoms[bad])
    return geoms


def pixel_metrics_from_polygons(
    polygons: gpd.GeoDataFrame,
    mask_path: str | os.PathLike[str],
    *,
    region: str = "",
    block_px: int = 2048,
    area: Window | None = None,
) -> dict[str, Any]:
    """Pixel accuracy of predicted polygons, rasterized (pixel centres, nearest) onto the mask's grid.

    Used for predictions without a probability raster (the classical baseline). Polygons are
    reprojected to the mask's CRS if needed; rasterization and counting go by ``block_px`` windows,
    only over ``area`` (a pixel window) when given. Returns the same keys as :func:`pixel_metrics`.
    """
    mask_path = Path(mask_path)
    counts = _Counts()
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
        open_raster(mask_path, what=what("mask", region)) as mask,
    ):
        polygons = in_crs(polygons, mask.crs, what("predicted cones", region))
        geoms = np.asarray(polygonal(polygons.geometry.to_numpy()), dtype=object)
        geoms = geoms[~shapely.is_empty(geoms)] if len(geoms) else geoms
        tree = shapely.STRtree(geoms)
        for window in _area_windows(mask.height, mask.width, block_px, area):
            truth, valid = _truth_block(mask, window)
            shape = (int(window.height), int(window.width))
            idx = tree.query(shapely.box(*window_bounds(window, mask.transform)), predicate="intersects")
            if len(idx):
                pred = rasterize(
                    ((g, 1) for g in geoms[np.sort(idx)]),
                    out_shape=shape,
                    transform=mask.window_transform(window),
                    fill=0,
                    all_touched=False,
                    dtype="uint8",
                ).astype(bool)
            else:
                pred = np.zeros(shape, dtype=bool)
            counts.add(pred, truth, valid)
    return counts.result()
