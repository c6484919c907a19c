"""The evaluate step: pixel and object accuracy of predicted cones against the labels.

Pixel metrics compare a prediction (a probability raster cut at a threshold, a uint8 mask, or
polygons rasterized onto the mask grid) with the uint8 label mask, block by block, so memory does
not grow with the raster. Pixels that are nodata in either raster are ignored.

Object metrics match cones one to one. A cone is reduced to its geometry only: its centre is the
polygon centroid and its radius the equivalent radius ``sqrt(area / pi)`` (metres, in the CRS of
the mask, which must be metric), so label circles and predicted outlines are treated alike. A true
cone and a prediction may be paired (DeepMoon-style criteria, with ``r_min = min(r_true, r_pred)``)
when

    centre distance <= center_tolerance * r_min   and   |r_true - r_pred| <= radius_tolerance * r_min.

Among the admissible pairs the Hungarian algorithm (scipy's ``linear_sum_assignment``) chooses the
one-to-one assignment with the most pairs and, among those, the smallest total cost, where the cost
of a pair is ``distance / r_min + |r_true - r_pred| / r_min``. A second matching pairs cones whose
polygon intersection-over-union is at least ``iou_threshold`` (cost ``1 - IoU``).

Undefined ratios (0/0: precision without predictions, recall without true cones, IoU and F1 when
neither has any) are ``None`` (JSON null), never 0 or 1, so that empty regions do not silently
raise or lower averages; JSON files never hold NaN.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cinderseg.errors import ConfigError, InputError
from cinderseg.folds import points_in_block
from cinderseg.raster import (
    MASK_NODATA,
    NODATA_FLOAT,
    atomic_write,
    check_input_file,
    iter_windows,
    open_raster,
)
from cinderseg.settings import is_int, is_number, known_keys_only

log = logging.getLogger(__name__)

#: GDAL block cache in bytes while the step runs (as in the mask step: keeps RSS flat).
GDAL_CACHE_BYTES = 64 * 1024 * 1024
#: Layer of the cone GeoPackages written by the vectorize and baseline steps.
CONES_LAYER = "cones"
METHODS = ("network", "baseline")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class EvaluateSettings:
    """Settings of the evaluate step; one field per key of the schema's ``evaluate`` section."""

    center_tolerance: float = 1.0
    radius_tolerance: float = 0.5
    iou_threshold: float = 0.5
    diameter_classes_m: tuple[float, ...] = (0.0, 300.0, 600.0, 1000.0)
    min_diameter_m: float = 300.0
    block_px: int = 2048

    def __post_init__(self) -> None:
        for key in ("center_tolerance", "radius_tolerance"):
            value = getattr(self, key)
            if not is_number(value) or value <= 0:
                raise ConfigError(f"evaluate.{key}: expected a number > 0, got {value!r}")
        if not is_number(self.iou_threshold) or not 0 < self.iou_threshold <= 1:
            raise ConfigError(
                f"evaluate.iou_threshold: expected a number > 0 and <= 1, got {self.iou_threshold!r}"
            )
        classes = self.diameter_classes_m
        if isinstance(classes, str) or not isinstance(classes, (list, tuple)) or not classes:
            raise ConfigError(
                f"evaluate.diameter_classes_m: expected a non-empty list of class lower bounds in m, "
                f"got {classes!r}"
            )
        if not all(is_number(v) and v >= 0 for v in classes):
            raise ConfigError(f"evaluate.diameter_classes_m: expected numbers >= 0, got {list(classes)!r}")
        if any(b <= a for a, b in itertools.pairwise(classes)):
            raise ConfigError(
                f"evaluate.diameter_classes_m: expected increasing bounds, got {list(classes)!r}"
            )
        object.__setattr__(self, "diameter_classes_m", tuple(float(v) for v in classes))
        if not is_number(self.min_diameter_m) or self.min_diameter_m < 0:
            raise ConfigError(f"evaluate.min_diameter_m: expected a number >= 0, got {self.min_diameter_m!r}")
        if not is_int(self.block_px) or self.block_px < 64:
            raise ConfigError(f"evaluate.block_px: expected an integer >= 64, got {self.block_px!r}")

    @classmethod
    def from_config(cls, evaluate: Mapping[str, Any] | None) -> EvaluateSettings:
        """Settings from the config's ``evaluate`` section (missing keys take the defaults)."""
        values = known_keys_only("evaluate", evaluate, (f.name for f in fields(cls)))
        if isinstance(values.get("diameter_classes_m"), list):
            values["diameter_classes_m"] = tuple(values["diameter_classes_m"])
        return cls(**values)


# --------------------------------------------------------------------------- small helpers


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


def _what(role: str, region: str) -> str:
    return f"{role} of region '{region}'" if region else role


# --------------------------------------------------------------------------- pixel metrics


def _describe_grid(ds: rasterio.DatasetReader) -> str:
    t = ds.transform
    return f"{ds.height}x{ds.width} px, origin ({t.c:.3f}, {t.f:.3f}), pixel {t.a:g} x {t.e:g}, {ds.crs}"


def _check_same_grid(
    pred: rasterio.DatasetReader, mask: rasterio.DatasetReader, pred_path: Path, mask_path: Path, region: str
) -> None:
    """InputError (one line naming both files) unless the two rasters share shape, transform and CRS."""
    same = (
        pred.shape == mask.shape
        and pred.crs == mask.crs
        and pred.transform.almost_equals(mask.transform, precision=1e-6 * max(abs(mask.transform.a), 1e-9))
    )
    if not same:
        where = f" of region '{region}'" if region else ""
        raise InputError(
            f"pixel metrics{where}: grids differ: {pred_path} is {_describe_grid(pred)} but the mask "
            f"{mask_path} is {_describe_grid(mask)}; the prediction must be on the mask's grid"
        )


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
        raise InputError(f"{_what('pixel metrics', region)}: threshold must be a number, got {threshold!r}")
    counts = _Counts()
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
        open_raster(pred_path, what=_what("prediction", region)) as pred,
        open_raster(mask_path, what=_what("mask", region)) as mask,
    ):
        _check_same_grid(pred, mask, pred_path, mask_path, region)
        is_float = np.dtype(pred.dtypes[0]).kind == "f"
        if threshold is not None and not is_float:
            raise InputError(
                f"{_what('prediction', region)}: {pred_path} is {pred.dtypes[0]}, expected a float "
                "probability raster for a threshold"
            )
        if threshold is None and is_float:
            raise InputError(
                f"{_what('prediction', region)}: {pred_path} is a float raster (probabilities?); "
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


def _in_crs(gdf: gpd.GeoDataFrame, crs: Any, what: str) -> gpd.GeoDataFrame:
    """``gdf`` in ``crs`` (reprojected if needed); InputError if it has features but no CRS."""
    if gdf.crs is None:
        if len(gdf):
            raise InputError(f"{what}: no CRS (expected {crs})")
        return gdf.set_crs(crs, allow_override=True)
    return gdf if gdf.crs == crs else gdf.to_crs(crs)


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
        open_raster(mask_path, what=_what("mask", region)) as mask,
    ):
        polygons = _in_crs(polygons, mask.crs, _what("predicted cones", region))
        geoms = np.asarray(_polygonal(polygons.geometry.to_numpy()), dtype=object)
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


# --------------------------------------------------------------------------- object matching


def _polygonal(geoms: np.ndarray) -> np.ndarray:
    """Geometries with None replaced by empty polygons and invalid ones repaired (make_valid)."""
    geoms = np.array([shapely.Polygon() if g is None else g for g in geoms], dtype=object)
    if len(geoms):
        bad = ~shapely.is_valid(geoms)
        if bad.any():
            geoms[bad] = shapely.make_valid(geoms[bad])
    return geoms


def cone_circles(gdf: gpd.GeoDataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroid x, y and equivalent radius ``sqrt(area / pi)`` of each geometry (CRS units, m).

    Empty or missing geometries get NaN centres and radius 0 (they never match).
    """
    geoms = _polygonal(gdf.geometry.to_numpy())
    if not len(geoms):
        empty = np.zeros(0, dtype=float)
        return empty, empty.copy(), empty.copy()
    cent = shapely.centroid(geoms)
    xs = shapely.get_x(cent)
    ys = shapely.get_y(cent)
    radius = np.sqrt(shapely.area(geoms) / math.pi)
    return xs, ys, radius


def _check_metric(gdf: gpd.GeoDataFrame, what: str) -> None:
    if gdf.crs is not None and not gdf.crs.is_projected:
        raise InputError(
            f"{what}: CRS {gdf.crs.to_string()} is geographic; matching needs metres (a UTM CRS)"
        )


def _aligned(true_gdf: gpd.GeoDataFrame, pred_gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """``pred_gdf`` in the CRS of ``true_gdf`` (reprojected when both have differing CRSs)."""
    _check_metric(true_gdf, "true cones")
    if true_gdf.crs is not None and pred_gdf.crs is not None and pred_gdf.crs != true_gdf.crs:
        return pred_gdf.to_crs(true_gdf.crs)
    _check_metric(pred_gdf, "predicted cones")
    return pred_gdf


@dataclass(frozen=True, eq=False)
class MatchResult:
    """A one-to-one matching of true cones to predictions.

    ``pairs`` has one row per matched pair: ``true_idx`` and ``pred_idx`` (row positions, iloc, in
    the two GeoDataFrames given), ``center_distance_m``, ``true_diameter_m``, ``pred_diameter_m``
    (equivalent diameters 2 sqrt(A/pi)), ``relative_diameter_error`` (|D_pred - D_true| / D_true),
    ``iou`` (polygon intersection over union) and ``cost`` (the minimised cost of the pair).
    """

    pairs: pd.DataFrame
    n_true: int
    n_pred: int
    method: str

    @property
    def true_idx(self) -> np.ndarray:
        """Positions of the matched true cones."""
        return self.pairs["true_idx"].to_numpy(dtype=np.int64)

    @property
    def pred_idx(self) -> np.ndarray:
        """Positions of their matched predictions."""
        return self.pairs["pred_idx"].to_numpy(dtype=np.int64)

    @property
    def unmatched_true(self) -> np.ndarray:
        """Positions of the true cones without a match (misses)."""
        return np.setdiff1d(np.arange(self.n_true), self.true_idx)

    @property
    def unmatched_pred(self) -> np.ndarray:
        """Positions of the predictions without a match (false positives)."""
        return np.setdiff1d(np.arange(self.n_pred), self.pred_idx)


def _assign(
    n_true: int, n_pred: int, ti: np.ndarray, pi: np.ndarray, cost: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one choice among admissible pairs (ti[k], pi[k]) with the most pairs, then least cost.

    The bipartite graph of admissible pairs is split into connected components, and each is solved
    by the Hungarian algorithm on a dense matrix in which inadmissible pairs cost more than any set
    of admissible ones, so memory stays small with thousands of cones. Returns the chosen edges.
    """
    empty = np.zeros(0, dtype=np.int64)
    if not len(ti):
        return empty, empty.copy(), np.zeros(0, dtype=float)
    n = n_true + n_pred
    graph = coo_matrix((np.ones(len(ti)), (ti, pi + n_true)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    comp = labels[ti]
    order = np.argsort(comp, kind="stable")
    bounds = np.flatnonzero(np.diff(comp[order])) + 1
    keep_t: list[np.ndarray] = []
    keep_p: list[np.ndarray] = []
    keep_c: list[np.ndarray] = []
    for edges in np.split(order, bounds):
        t, p, c = ti[edges], pi[edges], cost[edges]
        if len(edges) == 1:
            keep_t.append(t)
            keep_p.append(p)
            keep_c.append(c)
            continue
        ut, rt = np.unique(t, return_inverse=True)
        up, rp = np.unique(p, return_inverse=True)
        big = (min(len(ut), len(up)) + 1) * (float(c.max()) + 1.0)
        matrix = np.full((len(ut), len(up)), big)
        matrix[rt, rp] = c
        rows, cols = linear_sum_assignment(matrix)
        ok = matrix[rows, cols] < big
        keep_t.append(ut[rows[ok]])
        keep_p.append(up[cols[ok]])
        keep_c.append(matrix[rows[ok], cols[ok]])
    t_sel, p_sel, c_sel = np.concatenate(keep_t), np.concatenate(keep_p), np.concatenate(keep_c)
    order = np.argsort(t_sel, kind="stable")
    return t_sel[order].astype(np.int64), p_sel[order].astype(np.int64), c_sel[order]


def _pairs_frame(
    true_geoms: np.ndarray,
    pred_geoms: np.ndarray,
    true_c: tuple[np.ndarray, np.ndarray, np.ndarray],
    pred_c: tuple[np.ndarray, np.ndarray, np.ndarray],
    ti: np.ndarray,
    pi: np.ndarray,
    cost: np.ndarray,
) -> pd.DataFrame:
    dist = np.hypot(true_c[0][ti] - pred_c[0][pi], true_c[1][ti] - pred_c[1][pi])
    d_true = 2 * true_c[2][ti]
    d_pred = 2 * pred_c[2][pi]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(d_pred - d_true) / d_true
    return pd.DataFrame(
        {
            "true_idx": ti.astype(np.int64),
            "pred_idx": pi.astype(np.int64),
            "center_distance_m": dist,
            "true_diameter_m": d_true,
            "pred_diameter_m": d_pred,
            "relative_diameter_error": rel,
            "iou": _pair_iou(true_geoms[ti], pred_geoms[pi]),
            "cost": cost.astype(float),
        }
    )


def _pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Polygon intersection over union of the geometry pairs (a[k], b[k]); 0 where both are empty."""
    if not len(a):
        return np.zeros(0, dtype=float)
    inter = shapely.area(shapely.intersection(a, b))
    union = shapely.area(a) + shapely.area(b) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def match_cones(
    true_gdf: gpd.GeoDataFrame, pred_gdf: gpd.GeoDataFrame, settings: EvaluateSettings
) -> MatchResult:
    """Match predicted cones to true cones one to one by centre and radius (see the module docstring).

    A pair is admissible when the centroid distance is at most ``center_tolerance * r_min`` and the
    radius difference at most ``radius_tolerance * r_min`` (r = sqrt(area/pi), r_min the smaller of
    the pair); the Hungarian algorithm maximises the number of pairs, then minimises the summed cost
    ``distance / r_min + |r_true - r_pred| / r_min``. Candidates come from an STRtree query.
    Predictions are reprojected to the CRS of ``true_gdf`` if it differs; both must be metric.
    """
    pred_gdf = _aligned(true_gdf, pred_gdf)
    true_geoms = _polygonal(true_gdf.geometry.to_numpy())
    pred_geoms = _polygonal(pred_gdf.geometry.to_numpy())
    tc, pc = cone_circles(true_gdf), cone_circles(pred_gdf)
    ti = pi = np.zeros(0, dtype=np.int64)
    cost = np.zeros(0, dtype=float)
    t_ok = np.flatnonzero(tc[2] > 0)
    p_ok = np.flatnonzero(pc[2] > 0)
    if len(t_ok) and len(p_ok):
        tree = shapely.STRtree(shapely.points(pc[0][p_ok], pc[1][p_ok]))
        # d <= tol * min(r1, r2) <= tol * r_true: the query radius is a superset of the criterion.
        qi, qp = tree.query(
            shapely.points(tc[0][t_ok], tc[1][t_ok]),
            predicate="dwithin",
            distance=settings.center_tolerance * tc[2][t_ok],
        )
        ti, pi = t_ok[qi], p_ok[qp]
        r_min = np.minimum(tc[2][ti], pc[2][pi])
        dist = np.hypot(tc[0][ti] - pc[0][pi], tc[1][ti] - pc[1][pi])
        dr = np.abs(tc[2][ti] - pc[2][pi])
        ok = (dist <= settings.center_tolerance * r_min) & (dr <= settings.radius_tolerance * r_min)
        ti, pi = ti[ok], pi[ok]
        cost = (dist[ok] + dr[ok]) / r_min[ok]
    ti, pi, cost = _assign(len(true_gdf), len(pred_gdf), ti, pi, cost)
    pairs = _pairs_frame(true_geoms, pred_geoms, tc, pc, ti, pi, cost)
    return MatchResult(pairs=pairs, n_true=len(true_gdf), n_pred=len(pred_gdf), method="centre_radius")


def match_by_iou(true_gdf: gpd.GeoDataFrame, pred_gdf: gpd.GeoDataFrame, iou_threshold: float) -> MatchResult:
    """Match cones one to one by polygon IoU: pairs with IoU >= ``iou_threshold`` are admissible and
    the Hungarian algorithm maximises the number of pairs, then minimises the summed ``1 - IoU``."""
    if not is_number(iou_threshold) or not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold!r}")
    pred_gdf = _aligned(true_gdf, pred_gdf)
    true_geoms = _polygonal(true_gdf.geometry.to_numpy())
    pred_geoms = _polygonal(pred_gdf.geometry.to_numpy())
    ti = pi = np.zeros(0, dtype=np.int64)
    iou = np.zeros(0, dtype=float)
    if len(true_geoms) and len(pred_geoms):
        tree = shapely.STRtree(pred_geoms)
        ti, pi = tree.query(true_geoms, predicate="intersects")
        iou = _pair_iou(true_geoms[ti], pred_geoms[pi])
        ok = iou >= iou_threshold
        ti, pi, iou = ti[ok], pi[ok], iou[ok]
    ti, pi, cost = _assign(len(true_gdf), len(pred_gdf), ti, pi, 1.0 - iou)
    pairs = _pairs_frame(true_geoms, pred_geoms, cone_circles(true_gdf), cone_circles(pred_gdf), ti, pi, cost)
    return MatchResult(pairs=pairs, n_true=len(true_gdf), n_pred=len(pred_gdf), method="iou")


# --------------------------------------------------------------------------- object metrics


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
        open_raster(mask_path, what=_what("mask", region)) as mask,
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


def _class_bounds(lows: Sequence[float]) -> list[tuple[float, float | None]]:
    """[(lo, next lo), ..., (last lo, None)] from class lower bounds."""
    return [(lo, lows[i + 1] if i + 1 < len(lows) else None) for i, lo in enumerate(lows)]


def _in_class(d: np.ndarray, lo: float, hi: float | None) -> np.ndarray:
    return (d >= lo) & (d < hi) if hi is not None else d >= lo


def object_metrics(
    true_gdf: gpd.GeoDataFrame,
    pred_gdf: gpd.GeoDataFrame,
    match: MatchResult,
    settings: EvaluateSettings,
    *,
    true_counted: np.ndarray | None = None,
    pred_counted: np.ndarray | None = None,
) -> dict[str, Any]:
    """Object precision, recall and F1 of a matching, overall, per diameter class and for big cones.

    ``true_counted`` / ``pred_counted`` (boolean, default all True) say which cones are evaluated,
    e.g. those whose centroid lies on valid mask pixels (see :func:`evaluate_objects`). A pair counts
    when its true cone counts (whatever the prediction), an unmatched cone when it counts itself;
    so n_true = counted true cones, n_matched = counted pairs, n_pred = n_matched + counted
    unmatched predictions. Diameters are equivalent diameters 2 sqrt(A/pi) in m. Per class (lower
    bounds ``diameter_classes_m``): a true cone falls in the class of its diameter, a matched
    prediction in its true partner's class, an unmatched prediction in the class of its own
    diameter; ``at_least_min_diameter`` is the class [min_diameter_m, inf) defined the same way.
    """
    n_t, n_p = len(true_gdf), len(pred_gdf)
    t_cnt = np.ones(n_t, dtype=bool) if true_counted is None else np.asarray(true_counted, dtype=bool)
    p_cnt = np.ones(n_p, dtype=bool) if pred_counted is None else np.asarray(pred_counted, dtype=bool)
    if len(t_cnt) != n_t or len(p_cnt) != n_p:
        raise ValueError("true_counted / pred_counted must have one entry per cone")
    d_true = 2 * cone_circles(true_gdf)[2]
    d_pred = 2 * cone_circles(_aligned(true_gdf, pred_gdf))[2]
    pairs = match.pairs[t_cnt[match.true_idx]] if len(match.pairs) else match.pairs
    un_t = match.unmatched_true
    un_t = un_t[t_cnt[un_t]]
    un_p = match.unmatched_pred
    un_p = un_p[p_cnt[un_p]]
    # Diameter deciding the class: true cones their own; predictions their partner's, else their own.
    d_true_all = d_true[np.concatenate([pairs["true_idx"].to_numpy(dtype=np.int64), un_t])]
    d_pair = d_true[pairs["true_idx"].to_numpy(dtype=np.int64)]
    d_fp = d_pred[un_p]

    def block(lo: float, hi: float | None) -> dict[str, Any]:
        tp = int(_in_class(d_pair, lo, hi).sum())
        n_true = int(_in_class(d_true_all, lo, hi).sum())
        n_pred = tp + int(_in_class(d_fp, lo, hi).sum())
        s = scores(tp, n_pred, n_true)
        return {
            "n_true": n_true,
            "n_pred": n_pred,
            "n_matched": tp,
            "precision": s["precision"],
            "recall": s["recall"],
            "f1": s["f1"],
        }

    n_matched = len(pairs)
    s = scores(n_matched, n_matched + len(un_p), n_matched + len(un_t))
    rel = pairs["relative_diameter_error"].to_numpy(dtype=float)
    rel = rel[np.isfinite(rel)]
    dist = pairs["center_distance_m"].to_numpy(dtype=float)
    by_class = [
        {"class_m": [lo, hi], **block(lo, hi)} for lo, hi in _class_bounds(settings.diameter_classes_m)
    ]
    return {
        "precision": s["precision"],
        "recall": s["recall"],
        "f1": s["f1"],
        "n_true": n_matched + len(un_t),
        "n_pred": n_matched + len(un_p),
        "n_matched": n_matched,
        "median_relative_diameter_error": float(np.median(rel)) if len(rel) else None,
        "median_center_distance_m": float(np.median(dist)) if len(dist) else None,
        "by_diameter": by_class,
        "at_least_min_diameter": {
            "min_diameter_m": float(settings.min_diameter_m),
            **block(float(settings.min_diameter_m), None),
        },
    }


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
    with open_raster(mask_path, what=_what("mask", region)) as mask:
        crs, transform = mask.crs, mask.transform
    true_gdf = _in_crs(true_gdf, crs, _what("labels", region)).reset_index(drop=True)
    pred_gdf = _in_crs(pred_gdf, crs, _what("predicted cones", region)).reset_index(drop=True)
    tx, ty, _ = cone_circles(true_gdf)
    px, py, _ = cone_circles(pred_gdf)
    t_cnt = valid_at(mask_path, tx, ty, region=region, block_px=settings.block_px)
    p_cnt = valid_at(mask_path, px, py, region=region, block_px=settings.block_px)
    t_valid, p_valid = t_cnt, p_cnt
    if area is not None:
        t_cnt = t_cnt & points_in_block(tx, ty, transform, area)
        p_cnt = p_cnt & points_in_block(px, py, transform, area)
    match = match_cones(true_gdf, pred_gdf, settings)
    objects = object_metrics(true_gdf, pred_gdf, match, settings, true_counted=t_cnt, pred_counted=p_cnt)
    by_iou = match_by_iou(true_gdf, pred_gdf, settings.iou_threshold)
    iou_objects = object_metrics(true_gdf, pred_gdf, by_iou, settings, true_counted=t_cnt, pred_counted=p_cnt)
    objects["iou50"] = {
        "iou_threshold": float(settings.iou_threshold),
        **{
            k: iou_objects[k]
            for k in (
                "precision",
                "recall",
                "f1",
                "n_true",
                "n_pred",
                "n_matched",
                "median_relative_diameter_error",
            )
        },
    }
    objects["n_true_outside_valid"] = int((~t_valid).sum())
    objects["n_pred_outside_valid"] = int((~p_valid).sum())
    if area is not None:
        objects["n_true_outside_area"] = int((t_valid & ~t_cnt).sum())
        objects["n_pred_outside_area"] = int((p_valid & ~p_cnt).sum())
    return objects, match


# --------------------------------------------------------------------------- region and summary


def read_cones(path: str | os.PathLike[str], *, what: str = "cones") -> gpd.GeoDataFrame:
    """Read a cone GeoPackage (layer ``cones`` if present, else the first layer); may be empty.

    Raises InputError naming the file when it is missing, unreadable, or has features but no CRS.
    """
    p = check_input_file(path, what=what)
    try:
        layers = [str(name) for name in pyogrio.list_layers(p)[:, 0]]
        layer = CONES_LAYER if CONES_LAYER in layers else None
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


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


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
    ``fold`` (cinderseg.folds.Fold.as_params) is recorded as ``fold``.

    ``labels`` are the true cones as polygons (cinderseg.mask.load_labels, DEM CRS). Pixel metrics
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
    cones = read_cones(cones_path, what=_what("network cones", region))
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
        with open_raster(mask_path, what=_what("mask", region)) as mask:
            result["area"] = {
                "row_off": int(area.row_off),
                "col_off": int(area.col_off),
                "height": int(area.height),
                "width": int(area.width),
                "bounds": list(window_bounds(area, mask.transform)),
            }
    where = {"region": region, "block_px": settings.block_px, "area": area}
    if probability_path is not None:
        result["pixel"] = pixel_metrics(probability_path, mask_path, threshold=threshold, **where)
    else:
        result["pixel"] = pixel_metrics_from_polygons(cones, mask_path, **where)
    result["objects"], match = evaluate_objects(labels, cones, mask_path, settings, region=region, area=area)
    if baseline_path is not None:
        base = read_cones(baseline_path, what=_what("baseline cones", region))
        base_objects, _ = evaluate_objects(labels, base, mask_path, settings, region=region, area=area)
        result["baseline"] = {
            "pixel": pixel_metrics_from_polygons(base, mask_path, **where),
            "objects": base_objects,
        }
        net, ref = result, result["baseline"]
        result["network_minus_baseline_f1"] = {
            "pixel": _diff(net["pixel"]["f1"], ref["pixel"]["f1"]),
            "objects": _diff(net["objects"]["f1"], ref["objects"]["f1"]),
            "at_least_min_diameter": _diff(
                net["objects"]["at_least_min_diameter"]["f1"], ref["objects"]["at_least_min_diameter"]["f1"]
            ),
        }
    result = _jsonable(result)
    write_json(result, out_json)
    if error_map_path is not None:
        from cinderseg.plots import plot_error_map  # matplotlib only when a figure is asked for

        with open_raster(mask_path, what=_what("mask", region)) as mask:
            crs = mask.crs
        o = result["objects"]
        plot_error_map(
            Path(dem_path),
            _in_crs(labels, crs, _what("labels", region)).reset_index(drop=True),
            _in_crs(cones, crs, _what("network cones", region)),
            match,
            Path(error_map_path),
            title=(
                f"{region}{' (scored area)' if area is not None else ''}: {o['n_matched']} found, "
                f"{o['n_pred'] - o['n_matched']} false, {o['n_true'] - o['n_matched']} missed "
                f"(object F1 {_fmt(o['f1'])})"
            ),
            area_bounds=tuple(result["area"]["bounds"]) if area is not None else None,
        )
    log.info(
        "region '%s': pixel IoU %s, object P/R/F1 %s/%s/%s (%d true, %d predicted cones)",
        region,
        _fmt(result["pixel"]["iou"]),
        _fmt(result["objects"]["precision"]),
        _fmt(result["objects"]["recall"]),
        _fmt(result["objects"]["f1"]),
        result["objects"]["n_true"],
        result["objects"]["n_pred"],
    )
    return result


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


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
