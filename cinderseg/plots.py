"""Figures of the workflow's intermediate products (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path

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
