"""The vectorize step: cone polygons from the probability map, and the morphometry of each cone.

Pipeline (:func:`vectorize_cones`), on the probability raster's grid (the DEM's grid, metric CRS):

1. **Threshold**: a pixel is cone where ``probability >= threshold`` (nodata and NaN are not cone).
2. **Opening** (optional): binary opening with a disc of ``opening_px`` pixels radius removes specks
   and thin bridges between cones.
3. **Objects**: 4-connected components of the cone pixels. An object whose bounding box is wider or
   taller than ``max_diameter_m`` is not a cone and is dropped (with a log line). With ``fill_holes``,
   the holes of each object (background not 8-connected to the outside) are filled, and an object lying
   inside another one's hole becomes part of it. Objects smaller than ``min_area_m2`` are dropped.
4. **Splitting** (``split_touching``): touching cones are split at the waists of their distance
   transform, as set by ``split_min_distance_m`` and ``split_saddle_ratio``
   (:func:`cinderseg.cones.objects.split_cones`).
5. **Polygons**: each cone's pixels become a smoothed outline that gives back its pixels
   (:func:`cinderseg.cones.objects.cone_polygon`); objects less round than ``min_circularity`` are
   dropped. Coordinates are the raster's CRS (metres).
6. **DEM outline** (``outline: dem``, :func:`cinderseg.cones.network.dem_outlines`): each object is
   outlined again from the DEM's radial relief profiles (:mod:`cinderseg.cones.outline`, as the
   classical detector outlines its candidates), from its centroid at the scale of its equivalent
   radius; outlines overlapping by more than :data:`cinderseg.cones.network.DEM_OUTLINE_MAX_OVERLAP`
   become one cone.
7. **Morphometry**: :func:`cinderseg.cones.morphometry.cone_attributes` (also used by the classical
   baseline); then objects lower than ``min_height_m`` or flatter than ``min_height_to_diameter`` are
   dropped (:func:`drop_low_cones`).

Memory does not grow with the raster: the probability is read in blocks of ``block_px`` with a halo
of ``max_diameter_m`` (plus twice ``opening_px``). An object belongs to the block whose core holds its
first pixel in raster order (smallest row, then smallest column); an object of at most
``max_diameter_m`` whose first pixel is in the core lies wholly inside the halo, so every object is
seen complete exactly once and the result does not depend on ``block_px``. Objects are numbered
(``cone_id`` 1..n) in the raster order of their first pixel.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from cinderseg.cones import figures
from cinderseg.cones.candidates import CANDIDATE_THRESHOLD, verified_cones
from cinderseg.cones.morphometry import (
    cone_attributes,
    empty_cone_layer,
    summarize_cones,
    write_cone_layer,
)
from cinderseg.cones.network import network_objects
from cinderseg.cones.settings import VectorizeSettings
from cinderseg.cones.verifier import load_verifier
from cinderseg.core.modelcard import verifier_path
from cinderseg.core.raster import atomic_write

log = logging.getLogger(__name__)

__all__ = ["VectorizeSettings", "vectorize_cones", "write_cone_products"]


def drop_low_cones(
    cones: gpd.GeoDataFrame, settings: VectorizeSettings, label: str = ""
) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """Drop the objects too low to be cones: ``height_m`` under ``settings.min_height_m`` (m) or
    ``height_to_diameter`` under ``settings.min_height_to_diameter`` (lava-flow mounds, tumuli, low
    swells, flat pit-crater rims; 0 disables each). Objects whose height is unknown (no valid DEM
    pixel) are kept. The survivors are renumbered ``cone_id`` 1..n in their order; the dropped ones
    come second, with a ``reason`` ('too low' or 'too flat')."""
    height = cones["height_m"].to_numpy(dtype=float)
    ratio = cones["height_to_diameter"].to_numpy(dtype=float)
    reason = np.full(len(cones), "", dtype=object)
    with np.errstate(invalid="ignore"):  # NaN compares False: unknown heights are kept
        if settings.min_height_to_diameter > 0:
            reason[ratio < settings.min_height_to_diameter] = "too flat"
        if settings.min_height_m > 0:
            reason[height < settings.min_height_m] = "too low"
    too_low = reason != ""
    dropped = gpd.GeoDataFrame(
        {"reason": reason[too_low], "score": np.full(int(too_low.sum()), np.nan)},
        geometry=cones.geometry[too_low].values,
        crs=cones.crs,
    )
    if too_low.any():
        log.info(
            "%s: %d objects lower than min_height_m=%g m or min_height_to_diameter=%g dropped",
            label,
            int(too_low.sum()),
            settings.min_height_m,
            settings.min_height_to_diameter,
        )
    kept = cones[~too_low].reset_index(drop=True)
    kept["cone_id"] = np.arange(1, len(kept) + 1, dtype=np.int64)
    return kept, dropped


def _network_cones(
    probability_path: str | os.PathLike[str],
    dem_path: str | os.PathLike[str],
    settings: VectorizeSettings,
    region: str,
) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """The network's objects measured and filtered by height (no second stage), and the rejected
    ones: not round enough, too low, too flat."""
    polys, not_round = network_objects(probability_path, dem_path, settings, region=region)
    label = f"region '{region}'" if region else os.fspath(probability_path)
    rejected = gpd.GeoDataFrame(
        {"reason": ["not round"] * len(not_round), "score": np.full(len(not_round), np.nan)},
        geometry=not_round.values,
        crs=polys.crs,
    )
    if not len(polys):
        return empty_cone_layer(polys.crs), rejected
    cones = cone_attributes(
        polys,
        dem_path,
        probability_path=probability_path,
        region=region,
        ring_width_px=settings.ring_width_px,
    )
    cones, too_low = drop_low_cones(cones, settings, label)
    return cones, pd.concat([rejected, too_low], ignore_index=True)


def vectorize_cones(
    probability_path: str | os.PathLike[str],
    dem_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    settings: VectorizeSettings,
    *,
    region: str = "",
    summary_path: str | os.PathLike[str] | None = None,
    workers: int = 1,
) -> gpd.GeoDataFrame:
    """Cone polygons with morphometry from a probability raster; written to ``out_path``.

    ``probability_path``: float raster (0..1) on exactly the DEM's grid; ``dem_path``: the DEM (metric
    CRS, metres). Writes a GeoPackage (layer "cones", DEM CRS, columns :data:`CONE_COLUMNS`, an empty
    layer when nothing is found) and, if ``summary_path`` is given, a one-row CSV
    (:func:`summarize_cones`), both atomically. Returns the cone layer. See the module docstring for
    the steps; raises InputError (one line naming the file) for unusable rasters. ``workers``: processes
    of the second stage (the result does not depend on it).
    """
    verifier_file = verifier_path(settings.second_stage)
    if verifier_file is not None:
        verifier = load_verifier(verifier_file)
        candidate_settings = replace(settings, threshold=CANDIDATE_THRESHOLD)
        network, _ = network_objects(probability_path, dem_path, candidate_settings, region=region)
        cones, rejected = verified_cones(
            dem_path, probability_path, network, verifier, region=region, workers=workers
        )
    else:
        cones, rejected = _network_cones(probability_path, dem_path, settings, region)
    write_cone_layer(cones, out_path, rejected)
    if summary_path is not None:
        with atomic_write(summary_path) as tmp:
            summarize_cones(cones, region).to_csv(tmp, index=False)
    return cones


def write_cone_products(
    probability_path: str | os.PathLike[str],
    dem_path: str | os.PathLike[str],
    settings: VectorizeSettings,
    *,
    cones_path: str | os.PathLike[str],
    summary_path: str | os.PathLike[str],
    size_frequency_path: str | os.PathLike[str],
    height_vs_diameter_path: str | os.PathLike[str],
    cone_map_path: str | os.PathLike[str],
    region: str = "",
    workers: int = 1,
) -> gpd.GeoDataFrame:
    """The vectorize step's products: cone layer, summary CSV and the three cone figures."""
    cones = vectorize_cones(
        probability_path,
        dem_path,
        cones_path,
        settings,
        region=region,
        summary_path=summary_path,
        workers=workers,
    )
    name = region or Path(cones_path).stem
    figures.plot_size_frequency(cones, Path(size_frequency_path), title=f"{name}: cone size-frequency")
    figures.plot_height_vs_diameter(
        cones, Path(height_vs_diameter_path), title=f"{name}: cone height vs diameter"
    )
    figures.plot_cone_outlines(Path(dem_path), cones, Path(cone_map_path), title=f"{name}: mapped cones")
    return cones
