"""Cone candidates for the learned second stage, and what describes each of them.

Candidates come from two high-recall proposers: the network's objects at a loose probability
threshold (outlined from the DEM, :func:`cinderseg.cones.network.network_objects`) and the classical
detector's outlines at loose thresholds (:func:`cinderseg.cones.detector.detect_cones` with
:data:`LOOSE_BASELINE`). Outlines of the two that cover the same cone (overlap above
:data:`SAME_CONE_OVERLAP` of the smaller) are one candidate, outlined by the detector's radial profiles.

Each candidate is described by :data:`FEATURES`: its morphometry (:mod:`cinderseg.cones.morphometry`),
the network's probability over it, the detector's response, and its setting read from the DEM around
it (:func:`context_features`): how the ground falls away on every side, how rough and how high the
terrain around it is compared with its own height, the slope of its base. Lengths in metres, slopes in
degrees, on the DEM's metric grid.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from rasterio.windows import Window
from scipy import ndimage

from cinderseg.cones.detector import BaselineSettings, chosen, detect_cones
from cinderseg.cones.morphometry import cone_attributes
from cinderseg.cones.outline import box_overlap, read_padded, suppress_overlaps
from cinderseg.cones.verifier import Verifier
from cinderseg.core.grid import what
from cinderseg.core.memory import release_free_heap
from cinderseg.core.parallel import chunks, fork_map
from cinderseg.core.raster import open_raster

log = logging.getLogger(__name__)

#: The classical detector at loose thresholds: nearly every bump of 8 m is proposed, at every scale
#: (no overlap suppression: a cone's outline lies inside the larger hill's; only near-duplicates go).
LOOSE_BASELINE = {
    "min_response_m": 4.0,
    "min_relief_m": 8.0,
    "min_roundness": 0.4,
    "min_flank_slope_deg": 2.0,
    "max_flank_slope_deg": 60.0,
    "max_overlap": 1.0,
    "block_px": 1024,  # a quarter of the detector's default block: the second stage's workers share it
}
#: Two outlines overlapping by more than this fraction of the smaller one are one candidate.
SAME_CONE_OVERLAP = 0.5
#: Of two detector outlines with an intersection over union above this, the weaker response goes.
DUPLICATE_IOU = 0.7
#: The features of a candidate, in the order the second stage reads them.
FEATURES: tuple[str, ...] = (
    "height_m",
    "basal_diameter_m",
    "height_to_diameter",
    "circularity",
    "flank_slope_mean_deg",
    "crater",
    "crater_depth_ratio",
    "probability_mean",
    "probability_max",
    "probability_centre",
    "log_score_ratio",
    "from_network",
    "from_detector",
    "closure",
    "steep_side_ratio",
    "surround_rough_ratio",
    "surround_high_ratio",
    "base_slope_deg",
    "radius_px",
    "resolution_m",
    "n_overlapping",
    "height_over_best",
    "diameter_over_largest",
    "diameter_over_smallest",
    "baseline_choice",
    "outline_roundness",
    "outline_relief_m",
    "outline_flank_deg",
)
#: The features :func:`context_features` reads from the DEM around a candidate.
CONTEXT_FEATURES = (
    "closure",
    "steep_side_ratio",
    "surround_rough_ratio",
    "surround_high_ratio",
    "base_slope_deg",
)
N_RAYS = 32
#: Context rings, in basal radii from the centre: the base ring (plane fit) and the surroundings.
BASE_RING = (1.15, 1.6)
SURROUND_RING = (1.6, 3.0)
#: Candidates whose setting is read in one piece of work when several processes share them.
MIN_PIECE = 200


def drop_duplicates(geoms: list[shapely.Geometry], score: np.ndarray) -> np.ndarray:
    """Which outlines to keep: of two with an intersection over union above :data:`DUPLICATE_IOU`
    (one cone found at neighbouring scales or pixels) the one with the lower ``score`` goes."""
    keep = np.ones(len(geoms), dtype=bool)
    if len(geoms) < 2:
        return keep
    arr = np.asarray(geoms, dtype=object)
    area = shapely.area(arr)
    a, b = shapely.STRtree(arr).query(arr, predicate="intersects")
    a, b = a[a < b], b[a < b]
    # an intersection over union is at most the ratio of the two areas: only close sizes can exceed it
    close = np.minimum(area[a], area[b]) > (DUPLICATE_IOU - 1e-9) * np.maximum(area[a], area[b])
    a, b = a[close], b[close]
    inter = shapely.area(shapely.intersection(arr[a], arr[b]))
    iou = inter / (area[a] + area[b] - inter)
    a, b = a[iou > DUPLICATE_IOU], b[iou > DUPLICATE_IOU]
    rank = np.empty(len(geoms), dtype=np.int64)
    rank[np.argsort(-score, kind="stable")] = np.arange(len(geoms))
    strong = np.where(rank[a] < rank[b], a, b)
    weak = np.where(rank[a] < rank[b], b, a)
    for i in np.argsort(rank[strong], kind="stable"):  # strongest pairs first, as greedy suppression
        if keep[strong[i]]:
            keep[weak[i]] = False
    return keep


def _pool(network: gpd.GeoSeries, detector: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """One row per candidate: the detector's outlines (with their response) and the network's
    objects that no detector outline covers; ``from_network`` / ``from_detector`` say who proposed it."""
    det_geoms = list(detector.geometry)
    net_geoms = list(network)
    from_network = np.zeros(len(det_geoms), dtype=bool)
    extra = []
    tree = shapely.STRtree(det_geoms) if det_geoms else None
    for geom in net_geoms:
        same = False
        if tree is not None:
            for j in tree.query(geom):
                inter = geom.intersection(det_geoms[j]).area
                if inter > SAME_CONE_OVERLAP * min(geom.area, det_geoms[j].area):
                    from_network[j] = same = True
        if not same:
            extra.append(geom)
    n_det = len(det_geoms)
    return gpd.GeoDataFrame(
        {
            "from_network": np.concatenate([from_network, np.ones(len(extra), dtype=bool)]),
            "from_detector": np.concatenate([np.ones(n_det, dtype=bool), np.zeros(len(extra), dtype=bool)]),
            "log_score_m": np.concatenate([detector["score"].to_numpy(dtype=float), np.zeros(len(extra))]),
            **{
                name: np.concatenate([detector[column].to_numpy(dtype=float), np.full(len(extra), fill)])
                for name, column, fill in (
                    ("baseline_choice", "baseline_choice", 0.0),
                    ("outline_roundness", "roundness", np.nan),
                    ("outline_relief_m", "relief_m", np.nan),
                    ("outline_flank_deg", "flank_slope_deg", np.nan),
                )
            },
        },
        geometry=gpd.GeoSeries(det_geoms + extra, crs=detector.crs if n_det else network.crs),
    )


def propose(
    dem_path: str | os.PathLike[str], network: gpd.GeoSeries, *, region: str = "", workers: int = 1
) -> gpd.GeoDataFrame:
    """The candidates of a DEM: the classical detector's loose outlines pooled with ``network``, the
    network's objects (:func:`cinderseg.cones.network.network_objects`, the DEM's CRS). Polygons in
    the DEM's CRS with ``from_network``, ``from_detector`` and the detector's ``log_score_m``."""
    detector = detect_cones(
        dem_path, BaselineSettings.from_config(LOOSE_BASELINE), region=region, workers=workers
    )
    detector["baseline_choice"] = chosen(detector, BaselineSettings()).astype(float)
    # the classical detector's own choice outranks any duplicate of it
    rank = detector["score"].to_numpy() + 1e6 * detector["baseline_choice"].to_numpy()
    detector = detector[drop_duplicates(list(detector.geometry), rank)]
    cands = _pool(network, detector.reset_index(drop=True))
    log.info(
        "%s: %d candidates (%d from the detector, %d of them also from the network; %d from the network "
        "only)",
        what("DEM", region),
        len(cands),
        len(detector),
        int((cands["from_network"] & cands["from_detector"]).sum()),
        int((cands["from_network"] & ~cands["from_detector"]).sum()),
    )
    return cands


def _plane(dy: np.ndarray, dx: np.ndarray, z: np.ndarray) -> np.ndarray | None:
    """Least-squares plane coefficients (z0, d/dx, d/dy) through the points, None if too few."""
    ok = np.isfinite(z)
    if ok.sum() < 6:
        return None
    design = np.column_stack([np.ones(ok.sum()), dx[ok], dy[ok]])
    coef, *_ = np.linalg.lstsq(design, z[ok], rcond=None)
    return coef


def context_features(
    z: np.ndarray, row: float, col: float, radius_px: float, height: float, res: float
) -> dict[str, float]:
    """The setting of a candidate centred at (row, col) of the window ``z`` (metres, NaN = nodata)
    with basal radius ``radius_px`` (pixels) and ``height`` (m):

    - ``closure``: fraction of :data:`N_RAYS` azimuths along which the ground, detrended by the plane
      of the base ring, falls below a third of the height within 1.6 radii (a cone falls away on every
      side; a hillslope, a ridge or a sea-cliff edge does not);
    - ``steep_side_ratio``: the highest detrended ground on the base ring over the height (a slope
      or cliff rising behind the candidate);
    - ``surround_rough_ratio`` / ``surround_high_ratio``: standard deviation and 95th percentile of
      the detrended ground 1.6-3 radii out, over the height (hill country around it);
    - ``base_slope_deg``: slope of the base ring's plane.
    """
    out = dict.fromkeys(CONTEXT_FEATURES, math.nan)
    yy, xx = np.indices(z.shape, dtype=np.float64)
    dy, dx = yy - row, xx - col
    rho = np.hypot(dy, dx) / max(radius_px, 1e-6)
    ring = (rho >= BASE_RING[0]) & (rho <= BASE_RING[1])
    coef = _plane(dy[ring], dx[ring], z[ring])
    if coef is None or not height > 0:
        return out
    rel = z - (coef[0] + coef[1] * dx + coef[2] * dy)
    out["base_slope_deg"] = math.degrees(math.atan(math.hypot(coef[1], coef[2]) / res))
    radii = np.linspace(0.0, BASE_RING[1], max(8, int(BASE_RING[1] * radius_px * 2)))
    az = np.linspace(0.0, 2 * math.pi, N_RAYS, endpoint=False)
    rr = row + np.outer(np.sin(az), radii) * radius_px
    cc = col + np.outer(np.cos(az), radii) * radius_px
    prof = ndimage.map_coordinates(np.nan_to_num(rel, nan=np.inf), [rr, cc], order=1, cval=np.inf)
    outer = radii >= 0.8
    falls = np.any(prof[:, outer] < height / 3.0, axis=1)
    out["closure"] = float(falls.mean())
    ring_rel = rel[ring]
    ring_rel = ring_rel[np.isfinite(ring_rel)]
    if ring_rel.size:
        out["steep_side_ratio"] = float(ring_rel.max() / height)
    sur = rel[(rho >= SURROUND_RING[0]) & (rho <= SURROUND_RING[1])]
    sur = sur[np.isfinite(sur)]
    if sur.size >= 8:
        out["surround_rough_ratio"] = float(sur.std() / height)
        out["surround_high_ratio"] = float(np.percentile(sur, 95) / height)
    return out


def overlap_features(geoms: list[shapely.Geometry], height: np.ndarray) -> dict[str, np.ndarray]:
    """How a candidate stands among the candidates that overlap it (by more than 30 % of the smaller):
    their number, its height over the highest of them, its diameter over the largest and the smallest
    (a cone's summit, the whole cone and the hill under it are candidates of one place)."""
    n = len(geoms)
    count = np.zeros(n)
    best = np.ones(n)
    largest = np.ones(n)
    smallest = np.ones(n)
    if not n:
        return {
            "n_overlapping": count,
            "height_over_best": best,
            "diameter_over_largest": largest,
            "diameter_over_smallest": smallest,
        }
    area = np.array([g.area for g in geoms])
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    other = left != right
    left, right = left[other], right[other]
    box_inter = box_overlap(shapely.bounds(np.asarray(geoms, dtype=object)), left, right)
    maybe = box_inter * (1.0 + 1e-9) > 0.3 * np.minimum(area[left], area[right])  # most pairs end here
    left, right = left[maybe], right[maybe]
    inter = shapely.area(
        shapely.intersection(np.asarray(geoms, dtype=object)[left], np.asarray(geoms, dtype=object)[right])
    )
    ok = inter > 0.3 * np.minimum(area[left], area[right])
    left, right = left[ok], right[ok]
    h = np.where(np.isfinite(height), height, 0.0)
    np.add.at(count, left, 1)
    top = h.copy()
    np.maximum.at(top, left, h[right])
    big = area.copy()
    np.maximum.at(big, left, area[right])
    small = area.copy()
    np.minimum.at(small, left, area[right])
    with np.errstate(invalid="ignore", divide="ignore"):
        best = np.where(top > 0, h / top, 1.0)
    return {
        "n_overlapping": count,
        "height_over_best": best,
        "diameter_over_largest": np.sqrt(area / big),
        "diameter_over_smallest": np.sqrt(area / small),
    }


def _setting_features(
    geoms: list[shapely.Geometry],
    height: np.ndarray,
    indices: range,
    dem_path: str | os.PathLike[str],
    probability_path: str | os.PathLike[str] | None,
    region: str,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, float]:
    """:data:`CONTEXT_FEATURES`, radius (pixels) and the probability near the centre of the candidates
    ``indices`` (arrays in their order), and the DEM's pixel size (m)."""
    n = len(indices)
    ctx = {name: np.full(n, np.nan) for name in CONTEXT_FEATURES}
    radius_px = np.full(n, np.nan)
    centre = np.full(n, np.nan)
    with contextlib.ExitStack() as stack:
        dem = stack.enter_context(open_raster(dem_path, what=what("DEM", region)))
        prob_ds = (
            stack.enter_context(open_raster(probability_path, what=what("probability raster", region)))
            if probability_path
            else None
        )
        res = abs(dem.transform.a)
        inv = ~dem.transform
        for k, i in enumerate(indices):
            geom = geoms[i]
            radius_px[k] = math.sqrt(geom.area / math.pi) / res
            cx, cy = geom.centroid.x, geom.centroid.y
            col_f, row_f = inv @ (cx, cy)
            reach = math.ceil(SURROUND_RING[1] * radius_px[k]) + 2
            win = Window(int(col_f), int(row_f), 1, 1)
            z, valid, top, left = read_padded(dem, win, reach)
            z = np.where(valid, z, np.nan)
            got = context_features(z, row_f - top - 0.5, col_f - left - 0.5, radius_px[k], height[i], res)
            for key, value in got.items():
                ctx[key][k] = value
            if prob_ds is not None:
                half = max(1, round(radius_px[k] / 2))
                p, pv, _, _ = read_padded(prob_ds, win, half)
                p = np.where(pv & (p >= 0), p, np.nan)
                centre[k] = float(np.nanmax(p)) if np.isfinite(p).any() else 0.0
    return ctx, radius_px, centre, res


def candidate_features(
    cands: gpd.GeoDataFrame,
    dem_path: str | os.PathLike[str],
    probability_path: str | os.PathLike[str] | None,
    *,
    region: str = "",
    workers: int = 1,
) -> tuple[gpd.GeoDataFrame, pd.DataFrame]:
    """The candidates' morphometry (the cone layer's columns) and their :data:`FEATURES`, row by row,
    measured in up to ``workers`` processes."""
    cones = cone_attributes(
        cands.geometry, dem_path, probability_path=probability_path, region=region, workers=workers
    )
    feats = pd.DataFrame(index=range(len(cones)), columns=list(FEATURES), dtype=float)
    if not len(cones):
        return cones, feats
    height = cones["height_m"].to_numpy(dtype=float)
    feats["height_m"] = height
    for name in ("basal_diameter_m", "height_to_diameter", "circularity", "flank_slope_mean_deg"):
        feats[name] = cones[name].to_numpy(dtype=float)
    feats["crater"] = cones["crater"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        feats["crater_depth_ratio"] = cones["crater_depth_m"].to_numpy(dtype=float) / height
        feats["log_score_ratio"] = cands["log_score_m"].to_numpy(dtype=float) / height
    feats["probability_mean"] = cones["probability_mean"].to_numpy(dtype=float)
    feats["probability_max"] = cones["probability_max"].to_numpy(dtype=float)
    feats["from_network"] = cands["from_network"].to_numpy(dtype=float)
    feats["from_detector"] = cands["from_detector"].to_numpy(dtype=float)
    for name in ("baseline_choice", "outline_roundness", "outline_relief_m", "outline_flank_deg"):
        feats[name] = cands[name].to_numpy(dtype=float)
    geoms = list(cones.geometry)
    parts = fork_map(
        lambda indices: _setting_features(geoms, height, indices, dem_path, probability_path, region),
        chunks(len(geoms), workers, min_size=MIN_PIECE),
        workers,
    )
    for key in CONTEXT_FEATURES:
        feats[key] = np.concatenate([part[0][key] for part in parts])
    feats["radius_px"] = np.concatenate([part[1] for part in parts])
    feats["resolution_m"] = parts[0][3]
    feats["probability_centre"] = np.concatenate([part[2] for part in parts])
    for key, value in overlap_features(geoms, height).items():
        feats[key] = value
    for name in ("probability_mean", "probability_max", "probability_centre"):
        feats[name] = feats[name].fillna(0.0)
    return cones, feats


#: The network's objects become candidates from this probability up.
CANDIDATE_THRESHOLD = 0.3
#: Kept cones may overlap by at most this fraction of the smaller one (highest score kept first).
MAX_OVERLAP = 0.3
#: Rejected candidates scoring at least this are kept in the rejected layer (for the loss table).
REJECTED_MIN_SCORE = 0.01


def verified_cones(
    dem_path: str | os.PathLike[str],
    probability_path: str | os.PathLike[str],
    network: gpd.GeoSeries,
    verifier: Verifier,
    *,
    region: str = "",
    workers: int = 1,
) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """The second stage: candidates (``network``'s objects and the detector's outlines) scored by
    ``verifier``; those at its threshold or above are cones unless a higher-scoring cone overlaps them
    by more than :data:`MAX_OVERLAP`. Returns the cone layer (the morphometry columns and
    ``second_stage_score``, highest first, ``cone_id`` 1..n) and the rejected candidates scoring at least
    :data:`REJECTED_MIN_SCORE` (``reason``: 'scored below threshold' or 'overlaps a higher-scoring cone')."""
    cands = propose(dem_path, network, region=region, workers=workers)
    release_free_heap()  # what the search freed, before the measurements' peak
    cones, feats = candidate_features(cands, dem_path, probability_path, region=region, workers=workers)
    score = verifier.probability(feats) if len(cones) else np.zeros(0)
    order = np.argsort(-score, kind="stable")
    above = order[score[order] >= verifier.threshold]
    taken = suppress_overlaps([cones.geometry.iloc[i] for i in above], range(len(above)), MAX_OVERLAP)
    kept_idx = above[taken]
    reason = np.full(len(cones), "scored below threshold", dtype=object)
    reason[above[~taken]] = "overlaps a higher-scoring cone"
    rejected = np.ones(len(cones), dtype=bool)
    rejected[kept_idx] = False
    rejected &= score >= REJECTED_MIN_SCORE
    kept = cones.iloc[kept_idx].reset_index(drop=True)
    kept["cone_id"] = np.arange(1, len(kept) + 1, dtype=np.int64)
    kept["second_stage_score"] = score[kept_idx]
    out = gpd.GeoDataFrame(
        {"reason": reason[rejected], "score": score[rejected]},
        geometry=cones.geometry[rejected].values,
        crs=cones.crs,
    )
    log.info(
        "%s: %d of %d candidates scored %g or more, %d cones after overlap suppression",
        what("DEM", region),
        len(above),
        len(cones),
        verifier.threshold,
        len(kept),
    )
    return kept, out.reset_index(drop=True)
