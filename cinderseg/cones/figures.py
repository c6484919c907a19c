"""Figures of the vectorize step: cone size-frequency, height against diameter, the cone map; and
the hillshade backdrop every map figure shares (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import rasterio
from matplotlib.patches import Patch
from rasterio.enums import Resampling

from cinderseg.core.raster import atomic_write
from cinderseg.terrain.hillshade import hillshade

if TYPE_CHECKING:
    import geopandas as gpd


def read_decimated(path: Path, max_px: int, resampling: Resampling) -> tuple[np.ndarray, float, float]:
    """First band read at most ``max_px`` on its long side (memory flat); returns array and scale factors."""
    with rasterio.open(path) as ds:
        scale = max(1.0, max(ds.width, ds.height) / max_px)
        shape = (max(1, round(ds.height / scale)), max(1, round(ds.width / scale)))
        data = ds.read(1, out_shape=shape, resampling=resampling, masked=True)
        return data, ds.height / shape[0], ds.width / shape[1]


def hillshade_with_extent(
    dem_path: Path, max_px: int
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Hillshade of the DEM read at most ``max_px`` on its long side; its extent (l, r, b, t), CRS units."""
    dem, _, sx = read_decimated(Path(dem_path), max_px, Resampling.bilinear)
    with rasterio.open(dem_path) as ds:
        res = abs(ds.transform.a) * sx
        left, bottom, right, top = ds.bounds
    z = dem.astype("float64").filled(np.nan)
    fill = np.nanmedian(z) if np.isfinite(z).any() else 0.0
    dzdy_south, dzdx = np.gradient(np.where(np.isnan(z), fill, z), res)
    shade = hillshade(dzdx, -dzdy_south, azimuth_deg=315.0, altitude_deg=45.0)
    shade[np.isnan(z)] = np.nan
    return shade, (left, right, bottom, top)


#: Height / basal diameter of fresh cinder cones (Porter 1972).
PORTER_H_W = 0.18
CONE_COLOUR = "#d62728"


def _no_cones(ax: plt.Axes) -> None:
    ax.text(0.5, 0.5, "no cones found", ha="center", va="center", fontsize=12, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig: plt.Figure, out_png: Path) -> None:
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
    save_figure(fig, Path(out_path))


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
    save_figure(fig, Path(out_path))


def plot_cone_outlines(
    dem_path: Path, cones_gdf: gpd.GeoDataFrame, out_path: Path, *, title: str, max_px: int = 1200
) -> None:
    """Cone outlines (in the DEM's CRS) on a hillshade of the DEM read at most ``max_px`` on its long side."""
    shade, extent = hillshade_with_extent(Path(dem_path), max_px)
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
    save_figure(fig, Path(out_path))
