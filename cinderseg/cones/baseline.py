"""The baseline step: the classical detector's cones (:mod:`cinderseg.cones.detector`) measured like
the network's, so that every report compares the two side by side."""

from __future__ import annotations

import logging
import os
from typing import Any

import geopandas as gpd
import numpy as np

from cinderseg.cones.detector import BaselineSettings, detect_cones
from cinderseg.cones.morphometry import cone_attributes, write_cone_layer
from cinderseg.core.grid import what

log = logging.getLogger(__name__)

#: Detector columns kept in the baseline's cone layer after the contract's columns.
EXTRA_COLUMNS: tuple[str, ...] = ("score", "scale_radius_m", "roundness")


def baseline_cones(
    dem_path: str | os.PathLike[str],
    settings: BaselineSettings,
    *,
    region: str = "",
    ring_width_px: int = 2,
    rejected: list[tuple[Any, str, float]] | None = None,
) -> gpd.GeoDataFrame:
    """The baseline's cone layer: the data contract's columns (cinderseg.cones.morphometry.CONE_COLUMNS,
    measured by :func:`cinderseg.cones.morphometry.cone_attributes`; probabilities NaN) followed by
    ``score``, ``scale_radius_m`` and ``roundness`` of the detector; ``cone_id`` 1..n, strongest first.
    ``rejected``: see :func:`cinderseg.cones.detector.detect_cones`."""
    detections = detect_cones(dem_path, settings, region=region, rejected=rejected)
    cones = cone_attributes(detections.geometry, dem_path, region=region, ring_width_px=ring_width_px)
    if len(cones) != len(detections):
        raise RuntimeError(f"cone_attributes returned {len(cones)} rows for {len(detections)} polygons")
    cones = cones.reset_index(drop=True)
    geometry = cones.geometry.name
    for name in EXTRA_COLUMNS:
        cones[name] = detections[name].to_numpy(dtype=np.float64)
    columns = [c for c in cones.columns if c != geometry] + [geometry]
    return cones[columns]


def run_baseline(
    dem_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    settings: BaselineSettings,
    *,
    region: str = "",
    ring_width_px: int = 2,
) -> gpd.GeoDataFrame:
    """The baseline step: detect cones in the DEM and write them (GeoPackage, layer "cones", the DEM's
    CRS, the data contract's columns; an empty layer with every column when none is found), and the
    outlines its filters rejected (layer "rejected": ``reason``, ``score`` = response), atomically."""
    found: list[tuple[Any, str, float]] = []
    cones = baseline_cones(dem_path, settings, region=region, ring_width_px=ring_width_px, rejected=found)
    rejected = gpd.GeoDataFrame(
        {"reason": [r for _, r, _ in found], "score": np.array([v for _, _, v in found], dtype=float)},
        geometry=gpd.GeoSeries([g for g, _, _ in found], crs=cones.crs),
        crs=cones.crs,
    )
    write_cone_layer(cones, out_path, rejected)
    log.info("%s: %d baseline cones written to %s", what("DEM", region), len(cones), os.fspath(out_path))
    return cones
