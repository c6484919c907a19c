"""Cross-region evaluation: the folds of the ``crossval`` config section and their tiles.

Two kinds of fold:

- **spatial** (``<region>-b<i>``): the region's raster is cut into ``rows`` x ``cols`` near-equal
  pixel blocks (:func:`block_grid`, row-major, i = 1 .. rows x cols); the fold holds out block i
  and trains on the rest of the same region. Tiles overlapping the held-out block grown by
  ``gap_px = ceil(gap_m / pixel size)`` on every side are not used (a cone straddling the block's
  edge, or the network's receptive field, would otherwise leak the held-out terrain into
  training); the remaining tiles get the spatially blocked train/validation split of
  :func:`cinderseg.data.tiles.assign_splits`, so training and validation tiles never overlap either.
  Evaluation counts only the cones whose centre lies in the held-out block
  (:func:`points_in_block`) and pixels of the block.
- **leave one region out** (``loro-<region>``): the model trains on the other listed regions,
  each cut as a role ``train`` region (train/validation split) whatever its role, and is scored on
  the whole held-out region.

Pixel windows are rasterio ``Window`` objects on the region's DEM grid (rows down, columns
right); map coordinates are in the region's metric CRS (metres), as the DEM.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from cinderseg.core.errors import ConfigError, InputError
from cinderseg.core.grid import window_dict
from cinderseg.core.raster import open_raster
from cinderseg.core.settings import ROLES_WITH_LABELS
from cinderseg.data.tiles import TilingSettings, assign_splits, make_tiles, windows_clear_of

KINDS = ("spatial", "loro")


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold.

    ``block`` (1-based, row-major in a ``rows`` x ``cols`` grid) and ``gap_m`` (metres) are those of
    a spatial fold; a leave-one-region-out fold has ``block`` None and scores its whole region.
    """

    name: str
    kind: str
    held_out_region: str
    training_regions: tuple[str, ...]
    block: int | None = None
    rows: int = 1
    cols: int = 1
    gap_m: float = 0.0

    def as_params(self) -> dict[str, Any]:
        """The fold as plain data (a Snakemake ``params`` value, recorded in the metrics JSON)."""
        data = asdict(self)
        data["training_regions"] = list(self.training_regions)
        return data

    @classmethod
    def from_params(cls, data: Mapping[str, Any]) -> Fold:
        """The fold from :meth:`as_params`' data."""
        return cls(**{**data, "training_regions": tuple(data["training_regions"])})


def spatial_fold_name(region: str, block: int) -> str:
    """Name of the spatial fold holding out block ``block`` (1-based) of ``region``."""
    return f"{region}-b{block}"


def loro_fold_name(region: str) -> str:
    """Name of the leave-one-region-out fold holding out ``region``."""
    return f"loro-{region}"


def folds_from_config(cfg: Mapping[str, Any]) -> dict[str, Fold]:
    """The folds of a validated config's ``crossval`` section by name, spatial folds first.

    Raises ConfigError naming the ``crossval`` key when a region is unknown or unlabelled, a
    leave-one-region-out list has fewer than 2 regions, a block grid fewer than 2 blocks, or two
    folds would get the same name.
    """
    crossval = cfg.get("crossval") or {}
    regions = cfg["regions"]

    def check_region(key: str, name: str) -> None:
        if name not in regions:
            known = ", ".join(regions)
            raise ConfigError(f"{key}: unknown region '{name}' (configured: {known})")
        role = regions[name]["role"]
        if role not in ROLES_WITH_LABELS:
            raise ConfigError(
                f"{key}: region '{name}' has role '{role}' and no labels; cross-validation needs "
                "labelled regions (role train or test)"
            )

    folds: dict[str, Fold] = {}

    def add(fold: Fold, key: str) -> None:
        if fold.name in folds:
            raise ConfigError(f"{key}: fold name '{fold.name}' is used twice; rename a region")
        folds[fold.name] = fold

    for region, grid in (crossval.get("spatial_folds") or {}).items():
        key = f"crossval.spatial_folds.{region}"
        check_region(key, region)
        rows, cols, gap_m = grid.get("rows", 2), grid.get("cols", 2), grid.get("gap_m", 2000)
        if rows * cols < 2:
            raise ConfigError(f"{key}: rows x cols is {rows} x {cols}; at least 2 blocks are needed")
        for block in range(1, rows * cols + 1):
            fold = Fold(
                spatial_fold_name(region, block), "spatial", region, (region,), block, rows, cols, gap_m
            )
            add(fold, key)
    loro = list(crossval.get("leave_one_region_out") or [])
    key = "crossval.leave_one_region_out"
    if loro and len(loro) < 2:
        raise ConfigError(f"{key}: {loro} lists one region; at least 2 are needed (one is held out)")
    for region in loro:
        check_region(key, region)
    for region in loro:
        add(Fold(loro_fold_name(region), "loro", region, tuple(r for r in loro if r != region)), key)
    return folds


# --------------------------------------------------------------------------- blocks and tiles


def block_grid(height: int, width: int, rows: int, cols: int) -> list[Window]:
    """``rows`` x ``cols`` pixel windows partitioning a ``height`` x ``width`` px raster, row-major.

    Block edges are at ``floor(i * height / rows)`` and ``floor(j * width / cols)``, so the sizes
    of the blocks in a row (column) differ by at most one pixel.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"rows and cols must be >= 1, got {rows} x {cols}")
    if rows > height or cols > width:
        raise InputError(f"a {rows} x {cols} block grid does not fit a raster of {width} x {height} px")
    r_edges = [i * height // rows for i in range(rows + 1)]
    c_edges = [j * width // cols for j in range(cols + 1)]
    return [
        Window(c_edges[j], r_edges[i], c_edges[j + 1] - c_edges[j], r_edges[i + 1] - r_edges[i])
        for i in range(rows)
        for j in range(cols)
    ]


def held_out_block(height: int, width: int, fold: Fold) -> Window:
    """The pixel window a spatial fold holds out of its region's ``height`` x ``width`` px grid."""
    if fold.kind != "spatial" or fold.block is None:
        raise ValueError(f"fold '{fold.name}' is not a spatial fold; it holds out a whole region")
    return block_grid(height, width, fold.rows, fold.cols)[fold.block - 1]


def gap_pixels(gap_m: float, transform: rasterio.Affine) -> int:
    """``gap_m`` metres in whole pixels of a grid (rounded up, by the smaller pixel side; metric CRS)."""
    pixel_m = min(abs(transform.a), abs(transform.e))
    return max(0, math.ceil(gap_m / pixel_m - 1e-9))


def held_out_area(raster_path: str | os.PathLike[str], fold: Fold) -> Window | None:
    """The pixel window a fold scores on the grid of ``raster_path`` (the held-out region's mask or
    DEM): its held-out block for a spatial fold, None (the whole region) for the others."""
    if fold.kind != "spatial":
        return None
    with open_raster(raster_path, what=f"grid of region '{fold.held_out_region}'") as ds:
        return held_out_block(ds.height, ds.width, fold)


def fold_tile_splits(
    windows: Sequence[Window],
    height: int,
    width: int,
    held_out: Window,
    gap_px: int,
    *,
    block_px: int,
    val_fraction: float,
    seed: int,
    positive: Sequence[bool] | np.ndarray | None = None,
) -> list[str]:
    """Split of a spatial fold's tile windows: ``"held_out"`` for windows within ``gap_px`` px of
    the held-out block (not used), else ``"train"``, ``"val"`` or ``"drop"`` from
    :func:`cinderseg.data.tiles.assign_splits` over the remaining windows (``positive``: cone flags)."""
    clear = windows_clear_of(windows, held_out, gap_px)
    idx = np.flatnonzero(clear)
    pos = None if positive is None else np.asarray(positive, dtype=bool)[idx]
    rest = assign_splits(
        [windows[i] for i in idx],
        height,
        width,
        block_px=block_px,
        val_fraction=val_fraction,
        seed=seed,
        positive=pos,
    )
    splits = ["held_out"] * len(windows)
    for i, split in zip(idx, rest, strict=True):
        splits[i] = split
    return splits


def cut_fold_tiles(
    features_path: str | os.PathLike[str],
    mask_path: str | os.PathLike[str],
    tiles_path: str | os.PathLike[str],
    manifest_path: str | os.PathLike[str],
    settings: TilingSettings,
    fold: Fold,
) -> dict[str, Any]:
    """The training/validation tiles of a spatial fold (:func:`cinderseg.data.tiles.make_tiles` as for a
    role 'train' region, without the tiles within ``gap_m`` of the held-out block). Returns
    make_tiles' summary plus ``held_out_block`` (row_off, col_off, height, width in px) and ``gap_px``."""
    with open_raster(features_path, what=f"features of region '{fold.held_out_region}'") as ds:
        block = held_out_block(ds.height, ds.width, fold)
        gap_px = gap_pixels(fold.gap_m, ds.transform)
    summary = make_tiles(
        features_path,
        mask_path,
        tiles_path,
        manifest_path,
        settings,
        role="train",
        region=fold.held_out_region,
        exclude=block,
        exclude_gap_px=gap_px,
    )
    summary["held_out_block"] = window_dict(block)
    summary["gap_px"] = gap_px
    return summary
