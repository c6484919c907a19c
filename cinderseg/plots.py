"""Figures of the workflow's intermediate products (matplotlib, Agg backend, no display needed)."""

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

from cinderseg.features import hillshade
from cinderseg.raster import MASK_NODATA, atomic_write

if TYPE_CHECKING:
    import geopandas as gpd

    from cinderseg.evaluate import MatchResult

SPLIT_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}


def _read_decimated(path: Path, max_px: int, resampling: Resampling) -> tuple[np.ndarray, float, float]:
    """First band read at most ``max_px`` on its long side (memory flat); returns array and scale factors."""
    with rasterio.open(path) as ds:
        scale = max(1.0, max(ds.width, ds.height) / max_px)
        shape = (max(1, round(ds.height / scale)), max(1, round(ds.width / scale)))
        data = ds.read(1, out_shape=shape, resampling=resampling, masked=True)
        return data, ds.height / shape[0], ds.width / shape[1]


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
    dem, sy, sx = _read_decimated(Path(dem_path), max_px, Resampling.bilinear)
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
        mask, _, _ = _read_decimated(Path(mask_path), max_px, Resampling.nearest)
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
    fig.tight_layout()
    with atomic_write(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------- evaluation error map

#: Colours of the error map (colour-blind safe, Dark2): found cones, false detections, missed cones.
ERROR_COLOURS = {"tp": "#1b9e77", "fp": "#d95f02", "fn": "#e7298a"}


def _hillshade_with_extent(
    dem_path: Path, max_px: int
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Hillshade of the DEM read at most ``max_px`` on its long side; its extent (l, r, b, t), CRS units."""
    dem, _, sx = _read_decimated(Path(dem_path), max_px, Resampling.bilinear)
    with rasterio.open(dem_path) as ds:
        res = abs(ds.transform.a) * sx
        left, bottom, right, top = ds.bounds
    z = dem.astype("float64").filled(np.nan)
    fill = np.nanmedian(z) if np.isfinite(z).any() else 0.0
    dzdy_south, dzdx = np.gradient(np.where(np.isnan(z), fill, z), res)
    shade = hillshade(dzdx, -dzdy_south, azimuth_deg=315.0, altitude_deg=45.0)
    shade[np.isnan(z)] = np.nan
    return shade, (left, right, bottom, top)


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
    (cinderseg.evaluate.match_cones). ``area_bounds`` (minx, miny, maxx, maxy in the DEM's CRS), if
    given, is outlined as the scored area (a cross-validation fold's held-out block).
    """
    shade, extent = _hillshade_with_extent(Path(dem_path), max_px)
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
    fig.tight_layout()
    with atomic_write(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------- cone figures (vectorize step)

#: Height / basal diameter of fresh cinder cones (Porter 1972).
PORTER_H_W = 0.18
CONE_COLOUR = "#d62728"


def _no_cones(ax: plt.Axes) -> None:
    ax.text(0.5, 0.5, "no cones found", ha="center", va="center", fontsize=12, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: plt.Figure, out_png: Path) -> None:
    fig.tight_layout()
    with atomic_write(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _plain_log_ticks(axis: matplotlib.axis.Axis) -> None:
    """Ticks at 1, 2, 3, 5 x 10^k labelled as plain numbers on a log axis."""
    axis.set_major_locator(matplotlib.ticker.LogLocator(base=10.0, subs=(1.0, 2.0, 3.0, 5.0)))
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def plot_size_frequency(cones_gdf: gpd.GeoDataFrame, out_path: Path, *, title: str) -> None:
    """Histogram (log-spaced bins) and cumulative number N(>= D) of the cones' basal diameters (m)."""
    d = pd.to_numeric(cones_gdf["basal_diameter_m"], errors="coerce").to_numpy(dtype=float)
    d = np.sort(d[np.isfinite(d) & (d > 0)])
    fig, (ax_h, ax_c) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    if d.size == 0:
        _no_cones(ax_h)
        _no_cones(ax_c)
    else:
        lo, hi = d[0] / 1.1, d[-1] * 1.1
        bins = np.geomspace(lo, hi, max(5, min(30, int(np.sqrt(d.size)) + 4)))
        ax_h.hist(d, bins=bins, color=CONE_COLOUR, edgecolor="white", alpha=0.85)
        ax_h.set_xscale("log")
        _plain_log_ticks(ax_h.xaxis)
        ax_h.set_xlabel("basal diameter (m)")
        ax_h.set_ylabel("number of cones")
        ax_h.axvline(float(np.median(d)), color="k", linestyle="--", linewidth=1)
        label = f"n = {d.size}\nmedian {np.median(d):.0f} m"
        ax_h.text(0.98, 0.95, label, ha="right", va="top", transform=ax_h.transAxes)
        n_ge = np.arange(d.size, 0, -1)
        ax_c.step(d, n_ge, where="post", color=CONE_COLOUR)
        ax_c.plot(d, n_ge, ".", color=CONE_COLOUR, markersize=3)
        ax_c.set_xscale("log")
        ax_c.set_yscale("log")
        _plain_log_ticks(ax_c.xaxis)
        _plain_log_ticks(ax_c.yaxis)
        ax_c.set_xlabel("basal diameter D (m)")
        ax_c.set_ylabel("cumulative number N(>= D)")
        ax_c.grid(True, which="both", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    _save(fig, Path(out_path))


def plot_height_vs_diameter(cones_gdf: gpd.GeoDataFrame, out_path: Path, *, title: str) -> None:
    """Height against basal diameter (m) with Porter's H/W = 0.18 line; edge-truncated cones in grey."""
    fig, ax = plt.subplots(figsize=(6, 5), dpi=110)
    d = pd.to_numeric(cones_gdf["basal_diameter_m"], errors="coerce").to_numpy(dtype=float)
    h = pd.to_numeric(cones_gdf["height_m"], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(d) & np.isfinite(h) & (d > 0)
    if not ok.any():
        _no_cones(ax)
    else:
        crater = np.asarray(cones_gdf["crater"], dtype=bool) & ok
        edge = np.asarray(cones_gdf["touches_edge"], dtype=bool) & ok
        inner = ok & ~edge
        ax.scatter(d[inner & crater], h[inner & crater], s=18, color=CONE_COLOUR, label="with crater")
        plain = inner & ~crater
        ax.scatter(d[plain], h[plain], s=18, facecolor="none", edgecolor=CONE_COLOUR, label="no crater")
        if edge.any():
            ax.scatter(d[edge], h[edge], s=14, color="#999999", marker="x", label="touches edge")
        x = np.array([0.0, float(d[ok].max()) * 1.05])
        ax.plot(x, PORTER_H_W * x, color="k", linewidth=1, label=f"Porter (1972): H/W = {PORTER_H_W}")
        ratio = float(np.median(h[ok] / d[ok]))
        ax.plot(x, ratio * x, color="k", linestyle="--", linewidth=1, label=f"median here: H/W = {ratio:.3f}")
        ax.set_xlim(0, x[1])
        ax.set_ylim(0, max(float(np.nanmax(h[ok])), PORTER_H_W * x[1]) * 1.05)
        ax.set_xlabel("basal diameter W (m)")
        ax.set_ylabel("height H (m)")
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    _save(fig, Path(out_path))


def plot_cone_outlines(
    dem_path: Path, cones_gdf: gpd.GeoDataFrame, out_path: Path, *, title: str, max_px: int = 1200
) -> None:
    """Cone outlines (in the DEM's CRS) on a hillshade of the DEM read at most ``max_px`` on its long side."""
    shade, extent = _hillshade_with_extent(Path(dem_path), max_px)
    fig, ax = plt.subplots(figsize=(7, 7 * shade.shape[0] / max(shade.shape[1], 1) + 0.6), dpi=110)
    ax.imshow(shade, cmap="gray", interpolation="nearest", extent=extent)
    if len(cones_gdf):
        cones_gdf.geometry.boundary.plot(ax=ax, color=CONE_COLOUR, linewidth=0.8)
        ax.legend(
            handles=[Patch(edgecolor=CONE_COLOUR, facecolor="none", label=f"cones ({len(cones_gdf)})")],
            loc="lower left",
            fontsize=8,
            framealpha=0.85,
        )
    else:
        box = {"facecolor": "white", "alpha": 0.8}
        ax.text(0.5, 0.5, "no cones found", ha="center", va="center", transform=ax.transAxes, bbox=box)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    _save(fig, Path(out_path))
