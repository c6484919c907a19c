"""Do the training cones look like real ones? Morphometry of the labelled Mauna Kea cones against the
cones pasted into the composite scenes and those of the synthetic regions, measured alike.

Every labelled cone (its label circle) is measured on its own DEM by
:func:`cinderseg.cones.morphometry.cone_attributes`: basal diameter, height above the base ring's plane,
height / diameter and mean flank slope, so the three sources are compared on the same footing. Run
on a finished run of ``config/pretrain.yaml`` (or a fold of ``bench.recipe_folds``)::

    python -m bench.morphometry_check --run bench/work/recipe_folds/seed42/fold1 --out bench/morphometry.png

Prints the quartiles of each quantity per source and draws their distributions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import geopandas as gpd
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import rasterio
import yaml

from cinderseg.cones.morphometry import cone_attributes
from cinderseg.data.mask import load_labels

QUANTITIES = {
    "basal_diameter_m": "basal diameter (m)",
    "height_m": "height (m)",
    "height_to_diameter": "height / diameter",
    "flank_slope_mean_deg": "mean flank slope (°)",
}


def measured(run: Path, config: dict) -> pd.DataFrame:
    """One row per labelled cone of every training region: its source, resolution and morphometry."""
    rows = []
    for name, region in config["regions"].items():
        if region.get("role") != "train":
            continue
        dem = run / f"results/dem/{name}.tif"
        with rasterio.open(dem) as ds:
            crs = ds.crs
        if region.get("labels") == "synthetic":
            labels = gpd.read_file(run / f"results/synthetic/{name}_cones.gpkg").to_crs(crs)
        else:
            labels = load_labels(
                run / region["labels"]
                if not Path(region["labels"]).is_absolute()
                else Path(region["labels"]),
                target_crs=crs,
                radius_field=region.get("radius_field", "radius_m"),
            )
        cones = cone_attributes(labels.geometry, dem)
        source = {"scene": "pasted in scenes", "synthetic": "synthetic regions"}.get(
            region["source"], "real (Mauna Kea)"
        )
        rows.append(cones[list(QUANTITIES)].assign(source=source, resolution_m=region["resolution_m"]))
    return pd.concat(rows, ignore_index=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run's folder (with config.yaml)")
    parser.add_argument("--config", type=Path, help="its config (default: <run>/config.yaml)")
    parser.add_argument("--out", type=Path, default=Path("bench/morphometry.png"))
    args = parser.parse_args(argv)
    config = yaml.safe_load((args.config or args.run / "config.yaml").read_text())
    table = measured(args.run, config)
    for quantity in QUANTITIES:
        q = table.groupby("source")[quantity].quantile([0.1, 0.25, 0.5, 0.75, 0.9]).unstack().round(3)
        print(f"\n{quantity} (quantiles 10/25/50/75/90 %)\n{q.to_string()}")
    fig, axes = plt.subplots(1, len(QUANTITIES), figsize=(16, 3.6), dpi=110)
    for ax, (quantity, label) in zip(axes, QUANTITIES.items(), strict=True):
        values = table[quantity].replace([np.inf, -np.inf], np.nan).dropna()
        lo, hi = np.nanpercentile(values, [1, 99])
        for source, part in table.groupby("source"):
            v = part[quantity].replace([np.inf, -np.inf], np.nan).dropna().clip(lo, hi)
            ax.hist(
                v,
                bins=30,
                range=(lo, hi),
                density=True,
                histtype="step",
                linewidth=1.5,
                label=f"{source} ({len(v)})",
            )
        ax.set_xlabel(label)
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=7)
    fig.suptitle(
        "Cone morphometry, measured alike on each cone's own DEM: real labels against training cones"
    )
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"\n-> {args.out}")


if __name__ == "__main__":
    main()
