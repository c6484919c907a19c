"""Figures of assessment: a region's overview (hillshade, labelled cones, tiles by split) and the
error map of found, false and missed cones (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import rasterio
from matplotlib.patches import Patch, Rectangle
from rasterio.enums import Resampling

from cinderseg.cones.figures import hillshade_with_extent, read_decimated, save_figure
from cinderseg.core.raster import MASK_NODATA
from cinderseg.terrain.hillshade import hillshade

if TYPE_CHECKING:
    import geopandas as gpd

    from cinderseg.assess.matching import MatchResult

SPLIT_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}


def plot_region_overview(
    dem_path: Path,
    out_png: Path,
    *,
    region: str,
    mask_path: Path | None = None,
    manifest_path: Path | None = None,
    max_px: int = 1200,
) -> None:
    """Hillshade of the region's DEM with labelled cones outlined and training tiles coloured by split."""
    dem, sy, sx = read_decimated(Path(dem_path), max_px, Resampling.bilinear)
    with rasterio.open(dem_path) as ds:
        res = abs(ds.transform.a) * sx
        crs = ds.crs
        width_km, height_km = ds.width * abs(ds.transform.a) / 1000, ds.height * abs(ds.transform.e) / 1000
    z = dem.astype("float64").filled(np.nan)
    dzdy_south, dzdx = np.gradient(np.where(np.isnan(z), np.nanmedian(z), z), res)
    shade = hillshade(dzdx, -dzdy_south, azimuth_deg=315.0, altitude_deg=45.0)
    shade[np.isnan(z)] = np.nan
    fig, ax = plt.subplots(figsize=(7, 7 * z.shape[0] / max(z.shape[1], 1) + 0.6), dpi=110)
    ax.imshow(shade, cmap="gray", interpolation="nearest")
    handles = []
    if mask_path is not None:
        mask, _, _ = read_decimated(Path(mask_path), max_px, Resampling.nearest)
        cones = np.where(mask.filled(MASK_NODATA) == 1, 1.0, 0.0)
        if cones.any():
            ax.contour(cones, levels=[0.5], colors="#d62728", linewidths=1.0)
            handles.append(Patch(edgecolor="#d62728", facecolor="none", label="labelled cones"))
    if manifest_path is not None:
        tiles = pd.read_csv(manifest_path)
        for tile in tiles.itertuples():
            colour = SPLIT_COLOURS.get(str(tile.split), "#7f7f7f")
            ax.add_patch(
                Rectangle(
                    (tile.col_off / sx - 0.5, tile.row_off / sy - 0.5),
                    tile.size / sx,
                    tile.size / sy,
                    fill=False,
                    edgecolor=colour,
                    linewidth=0.6,
                    alpha=0.6,
                )
            )
        for split in sorted(set(tiles["split"].astype(str))):
            handles.append(
                Patch(edgecolor=SPLIT_COLOURS.get(split, "#7f7f7f"), facecolor="none", label=f"{split} tiles")
            )
    if handles:
        ax.legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.85)
    ax.set_title(f"{region}: {width_km:.1f} x {height_km:.1f} km, {crs}", fontsize=10)
    ax.set_axis_off()
    save_figure(fig, Path(out_png))


# --------------------------------------------------------------------------- evaluation error map

#: Colours of the error map (colour-blind safe, Dark2): found cones, false detections, missed cones.
ERROR_COLOURS = {"tp": "#1b9e77", "fp": "#d95f02", "fn": "#e7298a"}


def plot_error_map(
    dem_path: Path,
    true_gdf: gpd.GeoDataFrame,
    pred_gdf: gpd.GeoDataFrame,
    match: MatchResult,
    out_png: Path,
    *,
    title: str = "",
    max_px: int = 1200,
    area_bounds: tuple[float, float, float, float] | None = None,
) -> None:
    """Outlines of found cones (matched predictions), false detections and missed true cones on a hillshade.

    ``true_gdf`` and ``pred_gdf`` are in the DEM's CRS; ``match`` indexes them by position
    (cinderseg.assess.matching.match_cones). ``area_bounds`` (minx, miny, maxx, maxy in the DEM's CRS), if
    given, is outlined as the scored area (a cross-validation fold's held-out block).
    """
    shade, extent = hillshade_with_extent(Path(dem_path), max_px)
    height = 7 * shade.shape[0] / max(shade.shape[1], 1) + 0.6
    fig, ax = plt.subplots(figsize=(7, height), dpi=110)
    ax.imshow(shade, cmap="gray", interpolation="nearest", extent=extent)
    layers = (
        ("tp", pred_gdf.iloc[match.pred_idx], "found"),
        ("fp", pred_gdf.iloc[match.unmatched_pred], "false detections"),
        ("fn", true_gdf.iloc[match.unmatched_true], "missed"),
    )
    handles = []
    for key, gdf, label in layers:
        if len(gdf):
            gdf.geometry.boundary.plot(ax=ax, color=ERROR_COLOURS[key], linewidth=1.0)
        handles.append(Patch(edgecolor=ERROR_COLOURS[key], facecolor="none", label=f"{label} ({len(gdf)})"))
    if area_bounds is not None:
        x0, y0, x1, y1 = area_bounds
        ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], color="black", linestyle="--", linewidth=1.2)
        handles.append(Patch(edgecolor="black", facecolor="none", linestyle="--", label="scored area"))
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.85)
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    save_figure(fig, Path(out_png))
