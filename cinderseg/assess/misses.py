"""Where cones are lost: the stage of the pipeline that lost each labelled cone a method missed.

For every counted true cone that the one-to-one matching left unmatched, the first of these that
holds names the stage (lengths in the mask's metric CRS; "admissible" is the matching's own
criterion: centre distance <= r_min and radius difference <= 0.5 r_min):

1. ``rejected: <reason>``: an object the step considered and rejected (the cone file's "rejected"
   layer: not round, too low, too flat, scored below threshold, overlaps a higher-scoring cone, ...)
   was admissible - the cone was found and then thrown away;
2. ``merged with a neighbour``: a kept cone overlapping it also holds another true cone's centre;
3. ``split``: two or more kept cones overlap it;
4. ``outline too far off``: one kept cone overlaps it but fails the matching (size or centre);
5. ``rejected, outline off: <reason>``: only a rejected object that is not admissible overlaps it;
6. ``never above threshold``: (with a probability map) the network's probability stays below the
   threshold everywhere on the cone;
7. ``no object``: the probability reached the threshold but no object came of it (too small, too
   large, swallowed) - or, without a probability map, nothing of the method came near the cone.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import shapely
from rasterio.features import geometry_mask
from rasterio.windows import Window, from_bounds

from cinderseg.assess.matching import MatchResult, cone_circles
from cinderseg.core.raster import open_raster

#: Stages in the order they are tried (``rejected`` ones carry the step's reason after a colon).
STAGES = (
    "rejected",
    "merged with a neighbour",
    "split",
    "outline too far off",
    "rejected, outline off",
    "never above threshold",
    "no object",
)
REJECTED_LAYER = "rejected"


def read_rejected(path: str | os.PathLike[str], crs: Any) -> gpd.GeoDataFrame:
    """The "rejected" layer of a cone file in ``crs`` (empty when the file has none)."""
    layers = [str(name) for name in pyogrio.list_layers(path)[:, 0]]
    if REJECTED_LAYER not in layers:
        return gpd.GeoDataFrame({"reason": [], "score": []}, geometry=gpd.GeoSeries([], crs=crs), crs=crs)
    gdf = gpd.read_file(path, layer=REJECTED_LAYER)
    return gdf.to_crs(crs) if gdf.crs is not None and gdf.crs != crs else gdf


def _admissible(tx: float, ty: float, tr: float, gdf: gpd.GeoDataFrame) -> np.ndarray:
    px, py, pr = cone_circles(gdf)
    rmin = np.minimum(pr, tr)
    return (np.hypot(px - tx, py - ty) <= rmin) & (np.abs(pr - tr) <= 0.5 * rmin) & (pr > 0)


def _max_probability(prob: Any, geom: shapely.Geometry) -> float:
    """The highest probability on the pixels whose centres fall inside ``geom`` (NaN if none)."""
    win = from_bounds(*geom.bounds, transform=prob.transform).round_offsets().round_lengths()
    win = win.intersection(Window(0, 0, prob.width, prob.height))
    if win.width < 1 or win.height < 1:
        return math.nan
    p = prob.read(1, window=win, masked=True)
    inside = ~geometry_mask([geom], out_shape=p.shape, transform=prob.window_transform(win))
    values = p[inside & ~np.ma.getmaskarray(p)]
    return float(values.max()) if values.size else math.nan


def loss_stages(
    truth: gpd.GeoDataFrame,
    cones: gpd.GeoDataFrame,
    rejected: gpd.GeoDataFrame,
    match: MatchResult,
    counted: np.ndarray,
    *,
    probability_path: str | os.PathLike[str] | None = None,
    threshold: float | None = None,
) -> list[str | None]:
    """The stage (see the module docstring) that lost each true cone; None for found or uncounted
    ones. ``truth``, ``cones`` and ``rejected`` share one metric CRS; ``match`` indexes them."""
    stages: list[str | None] = [None] * len(truth)
    missed = [i for i in match.unmatched_true if counted[i]]
    if not missed:
        return stages
    tx, ty, tr = cone_circles(truth)
    centres = shapely.points(tx, ty)
    kept = np.asarray(cones.geometry.values, dtype=object)
    prob = open_raster(probability_path, what="probability raster") if probability_path else None
    try:
        for i in missed:
            disc = truth.geometry.iloc[i]
            adm = _admissible(tx[i], ty[i], tr[i], rejected) if len(rejected) else np.zeros(0, dtype=bool)
            over = np.flatnonzero(shapely.intersects(kept, disc)) if len(kept) else np.zeros(0, dtype=int)
            if adm.any():
                best = rejected[adm].sort_values("score", ascending=False, na_position="last").iloc[0]
                stages[i] = f"rejected: {best['reason']}"
            elif len(over):
                others = np.delete(np.arange(len(truth)), i)
                merged = any(shapely.contains(kept[j], centres[others]).any() for j in over)
                stages[i] = (
                    "merged with a neighbour"
                    if merged
                    else "split"
                    if len(over) > 1
                    else "outline too far off"
                )
            elif len(rejected) and shapely.intersects(np.asarray(rejected.geometry.values), disc).any():
                near = rejected[shapely.intersects(np.asarray(rejected.geometry.values), disc)]
                stages[i] = f"rejected, outline off: {near.iloc[0]['reason']}"
            elif prob is not None and threshold is not None and not _max_probability(prob, disc) >= threshold:
                stages[i] = "never above threshold"
            else:
                stages[i] = "no object"
    finally:
        if prob is not None:
            prob.close()
    return stages


def loss_table(stages: list[str | None]) -> dict[str, int]:
    """How many cones each stage lost, most first."""
    return dict(Counter(s for s in stages if s is not None).most_common())
