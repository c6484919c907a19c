"""Regions mapped in tiles: the tile plan of each such region, the steps of one tile, and the merge of
the tiles' cone layers.

A region with a ``tiles`` block (``size_km``, ``margin_m``; see :mod:`cinderseg.terrain.maptiles`) is
planned at the workflow's start-up from its sources' headers (``source: file``; no pixel is read) or
its bbox (``source: usgs3dep``, before any download): the grid the dem step would write for the whole
region, cut into tiles. The rules (``rules/maptiles.smk``) run dem, features, predict and vectorize on
every tile, then mosaic the region's DEM and probability map from the tiles' cores
(:func:`cinderseg.terrain.maptiles.mosaic_cores`) and merge its cones (:func:`merge_tile_cones`). A
tile without any valid elevation gets empty outputs (:func:`tile_features`, :func:`tile_vectorize`,
:func:`tile_baseline`).

Seams: a tile keeps the cones whose centroid lies in its core (cores partition the grid, so each cone
has one owner); a cone found by two tiles whose centroids fall on either side of a seam (outlines a
fraction of a pixel apart) is then kept once, as two outlines overlapping by more than
:data:`SEAM_MAX_OVERLAP` of the smaller one's area are one cone (the vectorize step's rule).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from cinderseg.cones.baseline import EXTRA_COLUMNS, BaselineSettings, run_baseline
from cinderseg.cones.morphometry import empty_cone_layer, summarize_cones, write_cone_layer
from cinderseg.cones.network import DEM_OUTLINE_MAX_OVERLAP
from cinderseg.cones.outline import suppress_overlaps
from cinderseg.cones.vectorize import VectorizeSettings, vectorize_cones
from cinderseg.core.errors import ConfigError, InputError
from cinderseg.core.raster import atomic_write
from cinderseg.terrain.dem import DemGrid, plan_dem_grid
from cinderseg.terrain.features import FeatureSettings, compute_features
from cinderseg.terrain.maptiles import MapTile, bbox_grid, has_data, plan_map_tiles, write_empty_raster

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]

#: Two cones of neighbouring tiles overlapping by more than this fraction of the smaller are one.
SEAM_MAX_OVERLAP = DEM_OUTLINE_MAX_OVERLAP


@dataclass(frozen=True)
class RegionTiles:
    """A tiled region's grid (the whole region's, :class:`cinderseg.terrain.dem.DemGrid`) and its tiles."""

    grid: DemGrid
    tiles: tuple[MapTile, ...]

    def tile(self, name: str) -> MapTile:
        """The tile called ``name`` (KeyError if none)."""
        for tile in self.tiles:
            if tile.name == name:
                return tile
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        """The tiles' names, row-major."""
        return [t.name for t in self.tiles]

    def lonlat(self, tile: MapTile) -> tuple[float, float, float, float]:
        """The tile's window in degrees, [west, south, east, north] (EPSG:4326)."""
        return tuple(transform_bounds(self.grid.crs, "EPSG:4326", *tile.bounds(self.grid), densify_pts=21))

    def as_params(self) -> dict[str, Any]:
        """The plan as plain data (a rule's params: a new plan reruns the mosaics)."""
        return {
            "crs": self.grid.crs.to_string(),
            "transform": list(self.grid.transform)[:6],
            "width": self.grid.width,
            "height": self.grid.height,
            "tiles": [asdict(t) for t in self.tiles],
        }

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> RegionTiles:
        """The plan from :meth:`as_params` (in a job's script)."""
        grid = DemGrid(
            CRS.from_user_input(params["crs"]),
            Affine(*params["transform"]),
            params["width"],
            params["height"],
        )
        tiles = tuple(
            MapTile(t["name"], t["row"], t["col"], tuple(t["core"]), tuple(t["window"]))
            for t in params["tiles"]
        )
        return cls(grid, tiles)


def tiled_regions(cfg: Mapping[str, Any], *, base: str | os.PathLike[str] = ".") -> dict[str, RegionTiles]:
    """The plan of every region with a ``tiles`` block, by name, in config order (a validated config;
    paths relative to ``base``). ConfigError (one line naming the region's key) when a region's DEM
    cannot be planned or cut."""
    plans = {}
    for name, region in cfg["regions"].items():
        if region.get("tiles"):
            try:
                plans[name] = region_tiles(name, region, base=base)
            except InputError as err:
                raise ConfigError(f"regions.{name}.tiles: {err}") from err
    return plans


def region_tiles(name: str, region: Mapping[str, Any], *, base: str | os.PathLike[str] = ".") -> RegionTiles:
    """The grid and tiles of one region (``source`` file or usgs3dep, a ``tiles`` block)."""
    settings = region["tiles"]
    if region["source"] == "usgs3dep":
        grid = bbox_grid(
            region["bbox"], resolution_m=region["resolution_m"], crs=region.get("crs"), region=name
        )
        coverage = None
    else:
        dem = region["dem"]
        sources = [Path(base) / p for p in ([dem] if isinstance(dem, str) else dem)]
        grid, coverage = plan_dem_grid(
            sources,
            resolution_m=region["resolution_m"],
            crs=region.get("crs"),
            bbox_lonlat=region.get("bbox"),
            nodata=region.get("nodata"),
            region=name,
        )
    tiles = plan_map_tiles(
        grid, settings["size_km"], settings["margin_m"], coverage=coverage, what=f"region '{name}'"
    )
    return RegionTiles(grid, tuple(tiles))


def merge_tile_cones(
    cone_paths: Sequence[str | os.PathLike[str]],
    tiles: Sequence[MapTile],
    grid: DemGrid,
    out_path: str | os.PathLike[str],
    *,
    region: str = "",
    max_overlap: float = SEAM_MAX_OVERLAP,
    by_score: bool = False,
) -> gpd.GeoDataFrame:
    """The region's cone layer from its tiles' (GeoPackages on the region's grid): each tile's cones
    whose centroid lies in its core, then cones overlapping by more than ``max_overlap`` of the smaller
    kept once (a cone on a seam). Kept and numbered ``cone_id`` 1..n: the larger first and north to
    south, then west to east (the network's cones); with ``by_score`` (the baseline's) the stronger
    ``score`` first, both times. Written to ``out_path`` (layer "cones") atomically."""
    if len(cone_paths) != len(tiles):
        raise ValueError("merge_tile_cones: one cone layer per tile expected")
    parts = []
    for path, tile in zip(cone_paths, tiles, strict=True):
        cones = gpd.read_file(path, layer="cones", engine="pyogrio")
        if len(cones):
            parts.append(_owned(cones, tile, grid))
    label = f"region '{region}'" if region else os.fspath(out_path)
    found = pd.concat(parts, ignore_index=True) if parts else None
    if found is None or not len(found):
        merged = empty_cone_layer(grid.crs)
        log.info("%s: no cones in %d tiles", label, len(tiles))
    else:
        merged = _once_across_seams(gpd.GeoDataFrame(found, crs=grid.crs), max_overlap, by_score)
        log.info("%s: %d cones in the tiles' cores, %d once across seams", label, len(found), len(merged))
    write_cone_layer(merged, out_path)
    return merged


def _owned(cones: gpd.GeoDataFrame, tile: MapTile, grid: DemGrid) -> gpd.GeoDataFrame:
    """The cones whose centroid lies in the tile's core: x in [xmin, xmax), y in (ymin, ymax]."""
    xmin, ymin, xmax, ymax = tile.core_bounds(grid)
    centre = cones.geometry.centroid
    inside = (centre.x >= xmin) & (centre.x < xmax) & (centre.y > ymin) & (centre.y <= ymax)
    return cones[inside.to_numpy()]


def _once_across_seams(cones: gpd.GeoDataFrame, max_overlap: float, by_score: bool) -> gpd.GeoDataFrame:
    """Overlapping cones kept once (the first in the order of :func:`merge_tile_cones`), renumbered."""
    centre = cones.geometry.centroid
    x, y = centre.x.to_numpy(), centre.y.to_numpy()
    first = -cones["score"].to_numpy(dtype=float) if by_score else -cones.geometry.area.to_numpy()
    kept = suppress_overlaps(list(cones.geometry), np.lexsort((x, -y, first)), max_overlap)
    order = np.lexsort((x, -y, first)) if by_score else np.lexsort((x, -y))
    merged = cones.iloc[[i for i in order if kept[i]]].reset_index(drop=True)
    merged["cone_id"] = np.arange(1, len(merged) + 1, dtype=np.int64)
    return merged


def write_merged_cone_products(
    cone_paths: Sequence[str | os.PathLike[str]],
    plan: RegionTiles,
    dem_path: str | os.PathLike[str],
    *,
    cones_path: str | os.PathLike[str],
    summary_path: str | os.PathLike[str],
    figure_paths: Mapping[str, str | os.PathLike[str]],
    region: str = "",
) -> gpd.GeoDataFrame:
    """The vectorize step's region products from the tiles: the merged cone layer, its summary CSV
    and the three cone figures (``figure_paths``: size_frequency, height_vs_diameter, cone_map; the
    cone map on the region's mosaicked DEM ``dem_path``)."""
    from cinderseg.cones import figures

    cones = merge_tile_cones(cone_paths, plan.tiles, plan.grid, cones_path, region=region)
    with atomic_write(summary_path) as tmp:
        summarize_cones(cones, region).to_csv(tmp, index=False)
    name = region or Path(cones_path).stem
    figures.plot_size_frequency(
        cones, Path(figure_paths["size_frequency"]), title=f"{name}: cone size-frequency"
    )
    figures.plot_height_vs_diameter(
        cones, Path(figure_paths["height_vs_diameter"]), title=f"{name}: cone height vs diameter"
    )
    figures.plot_cone_outlines(
        Path(dem_path), cones, Path(figure_paths["cone_map"]), title=f"{name}: mapped cones"
    )
    return cones


# --------------------------------------------------------------------------- the steps of one tile
# A tile without any valid elevation (the sea around an island, a void-only corner) gets empty outputs
# of the right shape and columns instead of the steps' "all pixels are nodata" errors. (The predict
# step's counterpart is in scripts/tile_step.py: this package never imports TensorFlow.)


def tile_features(dem: PathLike, out: PathLike, settings: FeatureSettings, *, label: str) -> None:
    """The features step of one tile (nodata bands for a tile without data)."""
    if has_data(dem, what=f"DEM of {label}"):
        compute_features(dem, out, settings, region=label)
    else:
        write_empty_raster(dem, out, settings.channels, channels=",".join(settings.channels))


def tile_vectorize(
    probability: PathLike, dem: PathLike, out: PathLike, settings: VectorizeSettings, *, label: str
) -> None:
    """The vectorize step of one tile, without figures (an empty layer for a tile without data)."""
    if has_data(dem, what=f"DEM of {label}"):
        vectorize_cones(probability, dem, out, settings, region=label)
    else:
        write_cone_layer(empty_cone_layer(_crs(dem)), out)


def tile_baseline(
    dem: PathLike, out: PathLike, settings: BaselineSettings, *, label: str, ring_width_px: int
) -> None:
    """The baseline step of one tile (an empty layer with the detector's columns for a tile without data)."""
    if has_data(dem, what=f"DEM of {label}"):
        run_baseline(dem, out, settings, region=label, ring_width_px=ring_width_px)
    else:
        empty = empty_cone_layer(_crs(dem))
        for name in EXTRA_COLUMNS:
            empty[name] = pd.Series([], dtype="float64")
        write_cone_layer(empty, out)


def _crs(path: PathLike) -> CRS:
    with rasterio.open(path) as ds:
        return ds.crs
