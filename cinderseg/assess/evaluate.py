"""The evaluate step: pixel and object accuracy of predicted cones in a labelled region.

:func:`evaluate_region` scores the network's cones (and the classical baseline's) against the labels:
pixel metrics (:mod:`cinderseg.assess.pixels`) and one-to-one cone matching
(:mod:`cinderseg.assess.matching`) over the valid part of the label mask, or over a fold's held-out
area, and writes the metrics JSON (and the error map). :func:`summarize_metrics` tabulates the JSON
files of every region. Undefined ratios are ``None`` (JSON null), never 0 or 1; JSON files never hold
NaN.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import rasterio
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds

from cinderseg.assess.matching import MatchResult, cone_circles, match_by_iou, match_cones, object_metrics
from cinderseg.assess.misses import loss_stages, loss_table, read_rejected
from cinderseg.assess.pixels import (
    GDAL_CACHE_BYTES,
    in_crs,
    pixel_metrics,
    pixel_metrics_from_polygons,
)
from cinderseg.assess.settings import EvaluateSettings
from cinderseg.cones.morphometry import LAYER
from cinderseg.core.errors import InputError
from cinderseg.core.grid import points_in_block, what, window_dict
from cinderseg.core.raster import MASK_NODATA, atomic_write, check_input_file, open_raster

log = logging.getLogger(__name__)

#: Keys of ``evaluate.objects`` copied into its ``iou50`` block (the counts after IoU matching).
IOU50_KEYS = ("precision", "recall", "f1", "n_true", "n_pred", "n_matched", "median_relative_diameter_error")


def _jsonable(value: Any) -> Any:
    """``value`` with numpy scalars, tuples and paths made plain, and NaN/inf replaced by None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_json(data: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``data`` as indented JSON, atomically; NaN and infinities become null."""
    text = json.dumps(_jsonable(data), indent=2, allow_nan=False)
    with atomic_write(path) as tmp:
        Path(tmp).write_text(text + "\n", encoding="utf-8")


def read_cones(path: str | os.PathLike[str], *, what: str = "cones") -> gpd.GeoDataFrame:
    """Read a cone GeoPackage (layer ``cones`` if present, else the first layer); may be empty.

    Raises InputError naming the file when it is missing, unreadable, or has features but no CRS.
    """
    p = check_input_file(path, what=what)
    try:
        layers = [str(name) for name in pyogrio.list_layers(p)[:, 0]]
        layer = LAYER if LAYER in layers else None
        gdf = gpd.read_file(p, layer=layer)
    except Exception as err:  # pyogrio/GDAL raise many types
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{what}: not a readable vector file: {p} ({first})") from err
    if not isinstance(gdf, gpd.GeoDataFrame):
        raise InputError(f"{what}: no geometry column in {p}")
    if gdf.crs is None and len(gdf):
        raise InputError(f"{what}: {p} has no CRS")
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty] if len(gdf) else gdf
    return gdf.reset_index(drop=True)


# --------------------------------------------------------------------------- objects in the valid area


def valid_at(
    mask_path: str | os.PathLike[str],
    xs: np.ndarray,
    ys: np.ndarray,
    *,
    region: str = "",
    block_px: int = 2048,
) -> np.ndarray:
    """True where the point (x, y) (mask CRS) falls on a valid (not nodata) pixel of the mask.

    Points outside the raster, or NaN, are not valid. The mask is read only in the ``block_px``
    blocks that hold points.
    """
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    out = np.zeros(len(xs), dtype=bool)
    if not len(xs):
        return out
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
        open_raster(mask_path, what=what("mask", region)) as mask,
    ):
        inv = ~mask.transform
        cols_f = inv.a * xs + inv.b * ys + inv.c
        rows_f = inv.d * xs + inv.e * ys + inv.f
        inside = np.isfinite(cols_f) & np.isfinite(rows_f)
        inside &= (cols_f >= 0) & (cols_f < mask.width) & (rows_f >= 0) & (rows_f < mask.height)
        idx = np.flatnonzero(inside)
        rows = np.floor(rows_f[idx]).astype(np.int64)
        cols = np.floor(cols_f[idx]).astype(np.int64)
        nodata = MASK_NODATA if mask.nodata is None else mask.nodata
        block = (rows // block_px) * (mask.width // block_px + 1) + cols // block_px
        for key in np.unique(block):
            sel = block == key
            r0 = int(rows[sel][0] // block_px) * block_px
            c0 = int(cols[sel][0] // block_px) * block_px
            window = Window(c0, r0, min(block_px, mask.width - c0), min(block_px, mask.height - r0))
            data = mask.read(1, window=window)
            out[idx[sel]] = data[rows[sel] - r0, cols[sel] - c0] != nodata
    return out


def counted(
    gdf: gpd.GeoDataFrame,
    mask_path: str | os.PathLike[str],
    transform: Any,
    settings: EvaluateSettings,
    *,
    region: str = "",
    area: Window | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Which cones (in the mask's CRS) have their centre on a valid mask pixel, and which of those
    are scored: in ``area`` too when one is given."""
    x, y, _ = cone_circles(gdf)
    valid = valid_at(mask_path, x, y, region=region, block_px=settings.block_px)
    scored = valid & points_in_block(x, y, transform, area) if area is not None else valid
    return valid, scored


def evaluate_objects(
    true_gdf: gpd.GeoDataFrame,
    pred_gdf: gpd.GeoDataFrame,
    mask_path: str | os.PathLike[str],
    settings: EvaluateSettings,
    *,
    region: str = "",
    area: Window | None = None,
) -> tuple[dict[str, Any], MatchResult]:
    """Match and score predicted cones against true ones within the valid part of the mask.

    Both sets are brought to the mask's CRS; a cone is evaluated when its centroid lies on a valid
    (not nodata) mask pixel (a matched pair when its true cone's does) and, with ``area`` (a pixel
    window of the mask's grid), in that window. Matching uses all cones, so a true cone inside the
    area found by a prediction centred just outside it is a hit. Returns the ``objects`` block
    (:func:`object_metrics` plus ``iou50``: the same counts after IoU matching with
    ``iou_threshold``, ``n_true_outside_valid`` / ``n_pred_outside_valid`` and, with an area,
    ``n_true_outside_area`` / ``n_pred_outside_area`` (valid but not in the area)) and the
    centre-radius matching (for the error map).
    """
    with open_raster(mask_path, what=what("mask", region)) as mask:
        crs, transform = mask.crs, mask.transform
    true_gdf = in_crs(true_gdf, crs, what("labels", region)).reset_index(drop=True)
    pred_gdf = in_crs(pred_gdf, crs, what("predicted cones", region)).reset_index(drop=True)
    t_valid, t_cnt = counted(true_gdf, mask_path, transform, settings, region=region, area=area)
    p_valid, p_cnt = counted(pred_gdf, mask_path, transform, settings, region=region, area=area)
    match = match_cones(true_gdf, pred_gdf, settings)
    objects = object_metrics(true_gdf, pred_gdf, match, settings, true_counted=t_cnt, pred_counted=p_cnt)
    by_iou = match_by_iou(true_gdf, pred_gdf, settings.iou_threshold)
    iou_objects = object_metrics(true_gdf, pred_gdf, by_iou, settings, true_counted=t_cnt, pred_counted=p_cnt)
    objects["iou50"] = {
        "iou_threshold": float(settings.iou_threshold),
        **{k: iou_objects[k] for k in IOU50_KEYS},
    }
    objects["n_true_outside_valid"] = int((~t_valid).sum())
    objects["n_pred_outside_valid"] = int((~p_valid).sum())
    if area is not None:
        objects["n_true_outside_area"] = int((t_valid & ~t_cnt).sum())
        objects["n_pred_outside_area"] = int((p_valid & ~p_cnt).sum())
    return objects, match


# --------------------------------------------------------------------------- the region


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _header(
    region: str,
    role: str,
    threshold: float | None,
    settings: EvaluateSettings,
    labels: gpd.GeoDataFrame,
    mask_path: str | os.PathLike[str],
    area: Window | None,
    fold: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The metrics JSON's first keys: what was scored, with which settings, over which area."""
    result: dict[str, Any] = {
        "region": region,
        "role": role,
        "threshold": threshold,
        "settings": asdict(settings),
        "n_labels": len(labels),
    }
    if fold is not None:
        result["fold"] = dict(fold)
    if area is not None:
        with open_raster(mask_path, what=what("mask", region)) as mask:
            result["area"] = {**window_dict(area), "bounds": list(window_bounds(area, mask.transform))}
    return result


def _misses(
    labels: gpd.GeoDataFrame,
    cones_path: str | os.PathLike[str],
    match: MatchResult,
    mask_path: str | os.PathLike[str],
    settings: EvaluateSettings,
    *,
    region: str,
    area: Window | None,
    probability_path: str | os.PathLike[str] | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """The ``misses`` block of a method: how many missed cones each stage lost
    (:mod:`cinderseg.assess.misses`) and, per missed cone, its label index, centre and stage."""
    with open_raster(mask_path, what=what("mask", region)) as mask:
        crs, transform = mask.crs, mask.transform
    truth = in_crs(labels, crs, what("labels", region)).reset_index(drop=True)
    cones = in_crs(read_cones(cones_path, what=what("cones", region)), crs, what("cones", region))
    _, scored = counted(truth, mask_path, transform, settings, region=region, area=area)
    stages = loss_stages(
        truth,
        cones,
        read_rejected(cones_path, crs),
        match,
        scored,
        probability_path=probability_path,
        threshold=threshold,
    )
    x, y, r = cone_circles(truth)
    return {
        "by_stage": loss_table(stages),
        "cones": [
            {"label": i, "x": float(x[i]), "y": float(y[i]), "radius_m": float(r[i]), "stage": stage}
            for i, stage in enumerate(stages)
            if stage is not None
        ],
    }


def _baseline_blocks(
    network: Mapping[str, Any],
    labels: gpd.GeoDataFrame,
    baseline_path: str | os.PathLike[str],
    mask_path: str | os.PathLike[str],
    settings: EvaluateSettings,
    *,
    region: str,
    area: Window | None,
) -> dict[str, Any]:
    """The ``baseline`` block ({pixel, objects} of the baseline's cones, scored like the network's)
    and ``network_minus_baseline_f1`` ({pixel, objects, at_least_min_diameter})."""
    base = read_cones(baseline_path, what=what("baseline cones", region))
    base_objects, match = evaluate_objects(labels, base, mask_path, settings, region=region, area=area)
    pixel = pixel_metrics_from_polygons(base, mask_path, region=region, block_px=settings.block_px, area=area)
    misses = _misses(labels, baseline_path, match, mask_path, settings, region=region, area=area)
    ref = {"pixel": pixel, "objects": base_objects, "misses": misses}
    return {
        "baseline": ref,
        "network_minus_baseline_f1": {
            "pixel": _diff(network["pixel"]["f1"], ref["pixel"]["f1"]),
            "objects": _diff(network["objects"]["f1"], ref["objects"]["f1"]),
            "at_least_min_diameter": _diff(
                network["objects"]["at_least_min_diameter"]["f1"],
                ref["objects"]["at_least_min_diameter"]["f1"],
            ),
        },
    }


def _error_map(
    result: Mapping[str, Any],
    labels: gpd.GeoDataFrame,
    cones: gpd.GeoDataFrame,
    match: MatchResult,
    *,
    mask_path: str | os.PathLike[str],
    dem_path: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
) -> None:
    """The error map PNG of the network's cones (found, false, missed; the scored area outlined)."""
    from cinderseg.assess.figures import plot_error_map  # matplotlib only when a figure is asked for

    region = result["region"]
    with open_raster(mask_path, what=what("mask", region)) as mask:
        crs = mask.crs
    o = result["objects"]
    area = result.get("area")
    plot_error_map(
        Path(dem_path),
        in_crs(labels, crs, what("labels", region)).reset_index(drop=True),
        in_crs(cones, crs, what("network cones", region)),
        match,
        Path(out_png),
        title=(
            f"{region}{' (scored area)' if area is not None else ''}: {o['n_matched']} found, "
            f"{o['n_pred'] - o['n_matched']} false, {o['n_true'] - o['n_matched']} missed "
            f"(object F1 {_fmt(o['f1'])})"
        ),
        area_bounds=tuple(area["bounds"]) if area is not None else None,
    )


def evaluate_region(
    *,
    region: str,
    mask_path: str | os.PathLike[str],
    labels: gpd.GeoDataFrame,
    cones_path: str | os.PathLike[str],
    probability_path: str | os.PathLike[str] | None,
    threshold: float | None,
    dem_path: str | os.PathLike[str],
    out_json: str | os.PathLike[str],
    baseline_path: str | os.PathLike[str] | None = None,
    error_map_path: str | os.PathLike[str] | None = None,
    settings: EvaluateSettings | None = None,
    role: str = "",
    area: Window | None = None,
    fold: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the network's (and optionally the baseline's) cones of one labelled region.

    ``role`` (train / test) is recorded: metrics of a training region are in-sample.
    ``area`` (a pixel window of the mask's grid, e.g. the held-out block of a cross-validation
    fold) restricts every method's scores to it: pixel metrics over its pixels, object metrics
    over the cones whose centre lies in it (:func:`evaluate_objects`); it is recorded as ``area``
    (row_off, col_off, height, width in px; bounds [minx, miny, maxx, maxy] in the mask's CRS).
    ``fold`` (cinderseg.data.folds.Fold.as_params) is recorded as ``fold``.

    ``labels`` are the true cones as polygons (cinderseg.data.mask.load_labels, DEM CRS). Pixel metrics
    of the network come from the probability raster cut at ``threshold`` (or from the cone polygons
    when ``probability_path`` is None), those of the baseline from its polygons rasterized. Writes
    the metrics JSON atomically and, if asked, the error map PNG of the network's cones. Returns
    the JSON's content:

    ``region``, ``threshold``, ``settings`` (this section), ``n_labels``; ``pixel`` (iou, f1,
    precision, recall, tp, fp, fn, tn, n_valid_px); ``objects`` (:func:`evaluate_objects`: precision,
    recall, f1, n_true, n_pred, n_matched, median_relative_diameter_error, median_center_distance_m,
    by_diameter [{class_m: [lo, hi or null], n_true, n_pred, n_matched, precision, recall, f1}],
    at_least_min_diameter {min_diameter_m, ...}, iou50 {iou_threshold, precision, recall, f1, ...},
    n_true_outside_valid, n_pred_outside_valid); with a baseline also ``baseline`` {pixel, objects}
    and ``network_minus_baseline_f1`` {pixel, objects, at_least_min_diameter}. Null = undefined.
    """
    settings = settings or EvaluateSettings()
    cones = read_cones(cones_path, what=what("network cones", region))
    result = _header(region, role, threshold, settings, labels, mask_path, area, fold)
    where = {"region": region, "block_px": settings.block_px, "area": area}
    if probability_path is not None:
        result["pixel"] = pixel_metrics(probability_path, mask_path, threshold=threshold, **where)
    else:
        result["pixel"] = pixel_metrics_from_polygons(cones, mask_path, **where)
    result["objects"], match = evaluate_objects(labels, cones, mask_path, settings, region=region, area=area)
    result["misses"] = _misses(
        labels,
        cones_path,
        match,
        mask_path,
        settings,
        region=region,
        area=area,
        probability_path=probability_path,
        threshold=threshold,
    )
    if baseline_path is not None:
        result.update(
            _baseline_blocks(result, labels, baseline_path, mask_path, settings, region=region, area=area)
        )
    result = _jsonable(result)
    write_json(result, out_json)
    if error_map_path is not None:
        _error_map(
            result, labels, cones, match, mask_path=mask_path, dem_path=dem_path, out_png=error_map_path
        )
    o = result["objects"]
    log.info(
        "region '%s': pixel IoU %s, object P/R/F1 %s/%s/%s (%d true, %d predicted cones)",
        region,
        _fmt(result["pixel"]["iou"]),
        _fmt(o["precision"]),
        _fmt(o["recall"]),
        _fmt(o["f1"]),
        o["n_true"],
        o["n_pred"],
    )
    return result


# --------------------------------------------------------------------------- the summary table


SUMMARY_COLUMNS = (
    "region",
    "role",
    "method",
    "threshold",
    "pixel_iou",
    "pixel_f1",
    "pixel_precision",
    "pixel_recall",
    "object_precision",
    "object_recall",
    "object_f1",
    "n_true",
    "n_pred",
    "n_matched",
    "median_relative_diameter_error",
    "min_diameter_m",
    "object_precision_min_diameter",
    "object_recall_min_diameter",
    "object_f1_min_diameter",
    "iou50_f1",
)


def _summary_row(region: str, method: str, threshold: Any, block: Mapping[str, Any]) -> dict[str, Any]:
    px, ob = block["pixel"], block["objects"]
    big = ob["at_least_min_diameter"]
    return {
        "region": region,
        "method": method,
        "threshold": threshold,
        "pixel_iou": px["iou"],
        "pixel_f1": px["f1"],
        "pixel_precision": px["precision"],
        "pixel_recall": px["recall"],
        "object_precision": ob["precision"],
        "object_recall": ob["recall"],
        "object_f1": ob["f1"],
        "n_true": ob["n_true"],
        "n_pred": ob["n_pred"],
        "n_matched": ob["n_matched"],
        "median_relative_diameter_error": ob["median_relative_diameter_error"],
        "min_diameter_m": big["min_diameter_m"],
        "object_precision_min_diameter": big["precision"],
        "object_recall_min_diameter": big["recall"],
        "object_f1_min_diameter": big["f1"],
        "iou50_f1": ob["iou50"]["f1"],
    }


def summarize_metrics(
    json_paths: Iterable[str | os.PathLike[str]], out_csv: str | os.PathLike[str]
) -> pd.DataFrame:
    """One CSV row per region and method (network, baseline) from the evaluate JSON files.

    Undefined metrics are empty cells. Written atomically; returns the table.
    """
    rows = []
    for path in json_paths:
        p = check_input_file(path, what="metrics")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            role = data.get("role", "")
            rows.append(
                {"role": role, **_summary_row(data["region"], "network", data.get("threshold"), data)}
            )
            if "baseline" in data:
                rows.append(
                    {"role": role, **_summary_row(data["region"], "baseline", None, data["baseline"])}
                )
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(
                f"metrics: {p} is not an evaluate metrics file ({type(err).__name__}: {err})"
            ) from err
    table = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    with atomic_write(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    return table


MISSES_COLUMNS = ("region", "role", "method", "stage", "n_cones")


def summarize_misses(
    json_paths: Iterable[str | os.PathLike[str]], out_csv: str | os.PathLike[str]
) -> pd.DataFrame:
    """One CSV row per region, method and stage: how many missed labelled cones that stage lost
    (the ``misses`` blocks of the evaluate JSON files). Written atomically; returns the table."""
    rows = []
    for path in json_paths:
        p = check_input_file(path, what="metrics")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            for method, block in (("network", data), ("baseline", data.get("baseline") or {})):
                for stage, n in ((block.get("misses") or {}).get("by_stage") or {}).items():
                    rows.append(
                        {
                            "region": data["region"],
                            "role": data.get("role", ""),
                            "method": method,
                            "stage": stage,
                            "n_cones": int(n),
                        }
                    )
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(
                f"metrics: {p} is not an evaluate metrics file ({type(err).__name__}: {err})"
            ) from err
    table = pd.DataFrame(rows, columns=list(MISSES_COLUMNS))
    with atomic_write(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table
