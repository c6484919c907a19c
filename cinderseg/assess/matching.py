"""Object metrics of the evaluate step: predicted cones matched one to one with the true cones.

A cone is reduced to its geometry only: its centre is the polygon centroid and its radius the
equivalent radius ``sqrt(area / pi)`` (metres, in a metric CRS), so label circles and predicted
outlines are treated alike. A true cone and a prediction may be paired (DeepMoon-style criteria,
with ``r_min = min(r_true, r_pred)``) when

    centre distance <= center_tolerance * r_min   and   |r_true - r_pred| <= radius_tolerance * r_min.

Among the admissible pairs the Hungarian algorithm (scipy's ``linear_sum_assignment``) chooses the
one-to-one assignment with the most pairs and, among those, the smallest total cost, where the cost
of a pair is ``distance / r_min + |r_true - r_pred| / r_min``. A second matching pairs cones whose
polygon intersection-over-union is at least ``iou_threshold`` (cost ``1 - IoU``).

:func:`object_metrics` scores a matching (precision, recall, F1 overall, per diameter class and for
big cones); undefined ratios are ``None`` as in :mod:`cinderseg.assess.pixels`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cinderseg.assess.pixels import polygonal, scores
from cinderseg.assess.settings import EvaluateSettings
from cinderseg.core.errors import InputError
from cinderseg.core.settings import is_number


def cone_circles(gdf: gpd.GeoDataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroid x, y and equivalent radius ``sqrt(area / pi)`` of each geometry (CRS units, m).

    Empty or missing geometries get NaN centres and radius 0 (they never match).
    """
    geoms = polygonal(gdf.geometry.to_numpy())
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
    true_geoms = polygonal(true_gdf.geometry.to_numpy())
    pred_geoms = polygonal(pred_gdf.geometry.to_numpy())
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
    true_geoms = polygonal(true_gdf.geometry.to_numpy())
    pred_geoms = polygonal(pred_gdf.geometry.to_numpy())
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
