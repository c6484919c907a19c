"""Recall on the low cones (relief under 50 m) of the recipe folds' held-out Mauna Kea quarters.

Run after ``python -m bench.recipe_folds`` and ``python -m bench.second_stage`` (same ``--workdir``
and ``--seed``). A cone's relief is its summit (highest pixel within 0.6 r) above the median of a ring
at 1-1.3 r on the fold's DEM; a cone counts as found when a cone of the method matches it as the
second stage's labels do (centre within the smaller radius, radii within half of it).

    python -m bench.low_relief_recall --workdir bench/work/recipe_folds --seed 42
"""

from __future__ import annotations

import argparse
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio

from bench.recipe_folds import LABELS, REPO
from bench.second_stage import positives
from cinderseg.assess.matching import cone_circles
from cinderseg.core.grid import points_in_block
from cinderseg.data.folds import block_grid
from cinderseg.data.mask import load_labels

LOW_RELIEF_M = 50.0
METHODS = {
    "network": "results/cones/{name}.gpkg",
    "baseline": "results/baseline/{name}.gpkg",
    "second stage": "second_stage/{name}.gpkg",
}


def relief_m(ds: rasterio.DatasetReader, z: np.ndarray, x: float, y: float, r: float) -> float:
    """Summit above the median of the ring at 1-1.3 r (metres); NaN where either is all nodata."""
    row, col = ds.index(x, y)
    reach = int(np.ceil(1.4 * r / ds.res[0]))
    r0, c0 = max(row - reach, 0), max(col - reach, 0)
    sub = z[r0 : row + reach + 1, c0 : col + reach + 1]
    yy, xx = np.mgrid[: sub.shape[0], : sub.shape[1]]
    d = np.hypot(yy - (row - r0), xx - (col - c0)) * ds.res[0]
    ring, top = sub[(d >= r) & (d <= 1.3 * r)], sub[d <= 0.6 * r]
    if not (np.isfinite(ring).any() and np.isfinite(top).any()):
        return float("nan")
    return float(np.nanmax(top) - np.nanmedian(ring))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "work" / "recipe_folds")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    root = args.workdir.resolve() / f"seed{args.seed}"
    folds = sorted(int(p.name[4:]) for p in root.glob("fold*") if (p / "second_stage").exists())
    for res in (30, 90):
        name = f"mk_test_{res}"
        found = dict.fromkeys(METHODS, 0)
        n_low = 0
        for k in folds:
            fold_dir = root / f"fold{k}"
            with rasterio.open(fold_dir / f"results/dem/{name}.tif") as ds:
                truth = load_labels(LABELS, target_crs=ds.crs, radius_field="radius_m")
                tx, ty, tr = cone_circles(truth)
                inside = points_in_block(tx, ty, ds.transform, block_grid(ds.height, ds.width, 2, 2)[k - 1])
                z = ds.read(1, masked=True).astype(float).filled(np.nan)
                relief = np.array([relief_m(ds, z, x, y, r) for x, y, r in zip(tx, ty, tr, strict=True)])
            low = inside & (relief < LOW_RELIEF_M)
            n_low += int(low.sum())
            for method, path in METHODS.items():
                cones = gpd.read_file(fold_dir / path.format(name=name), layer="cones").to_crs(truth.crs)
                found[method] += int((positives(truth, cones) & low).sum())
        recall = ", ".join(f"{m} {found[m] / max(n_low, 1):.3f}" for m in METHODS)
        print(f"{res} m: {n_low} cones under {LOW_RELIEF_M:g} m in the held-out quarters; recall: {recall}")


if __name__ == "__main__":
    main()
