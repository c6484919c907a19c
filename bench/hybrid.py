"""Hybrid detector, measured and not adopted: classical candidates verified by the network.

The classical baseline's cones (``results/baseline/{region}.gpkg``) are kept where the network's mean
probability inside the cone (``results/predictions/{region}.tif``) reaches a threshold; the kept cones
are scored like the others (one-to-one matching with the labels, cinderseg.assess.matching) over the whole
region and over the blocks of a rows x cols grid (as spatial folds score them). Run it on a finished
workflow run with labels, e.g. the Mauna Kea region of a run with ``predict.model: pretrained``::

    python -m bench.hybrid --workdir . --region mauna_kea --radius-field radius_m --grid 2 2

Prints one row per method (network, baseline, hybrid at each threshold): object F1 per block, their
mean, and the whole-region precision / recall / F1. Results: bench/README.md, "Cross-region
generalization".
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
from rasterio.features import rasterize

from cinderseg.assess.evaluate import read_cones
from cinderseg.assess.matching import cone_circles, match_cones, object_metrics
from cinderseg.assess.settings import EvaluateSettings
from cinderseg.core.grid import points_in_block
from cinderseg.core.raster import open_raster
from cinderseg.data.folds import block_grid
from cinderseg.data.mask import load_labels

THRESHOLDS = (0.1, 0.2, 0.3, 0.5, 0.7)


def mean_probability(cones, probability: np.ndarray, transform: rasterio.Affine) -> np.ndarray:
    """Mean probability inside each cone polygon (0 where a cone covers no pixel centre)."""
    out = np.zeros(len(cones))
    for i, geom in enumerate(cones.geometry):
        inside = rasterize([(geom, 1)], out_shape=probability.shape, transform=transform, dtype="uint8") > 0
        out[i] = float(np.nanmean(probability[inside])) if inside.any() else 0.0
    return out


def scores(truth, pred, transform, blocks) -> tuple[list[float], dict[str, float]]:
    """Object F1 in each block (cones centred in it count) and whole-region precision/recall/F1."""
    settings = EvaluateSettings()
    match = match_cones(truth, pred, settings)
    tx, ty, _ = cone_circles(truth)
    px, py, _ = cone_circles(pred)
    per_block = []
    for block in blocks:
        o = object_metrics(
            truth,
            pred,
            match,
            settings,
            true_counted=points_in_block(tx, ty, transform, block),
            pred_counted=points_in_block(px, py, transform, block),
        )
        per_block.append(o["f1"] or 0.0)
    whole = object_metrics(truth, pred, match, settings)
    return per_block, {k: whole[k] or 0.0 for k in ("precision", "recall", "f1")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("."))
    parser.add_argument("--region", required=True)
    parser.add_argument("--labels", help="labels file (default: the synthetic region's true cones)")
    parser.add_argument("--radius-field", default=None)
    parser.add_argument("--grid", type=int, nargs=2, default=(2, 2), metavar=("ROWS", "COLS"))
    args = parser.parse_args(argv)
    res = args.workdir / "results"
    with open_raster(res / "predictions" / f"{args.region}.tif", what="probability") as ds:
        probability = ds.read(1, masked=True).filled(0.0)
        transform, crs = ds.transform, ds.crs
    labels = args.labels or res / "synthetic" / f"{args.region}_cones.gpkg"
    truth = load_labels(labels, target_crs=crs, radius_field=args.radius_field, region=args.region)
    network = read_cones(res / "cones" / f"{args.region}.gpkg")
    baseline = read_cones(res / "baseline" / f"{args.region}.gpkg").reset_index(drop=True)
    blocks = block_grid(*probability.shape, *args.grid)
    verified = mean_probability(baseline, probability, transform)
    rows = [("network", network), ("baseline", baseline)]
    rows += [(f"hybrid p >= {t}", baseline[verified >= t]) for t in THRESHOLDS]
    print(f"{'method':16s} {'F1 per block':28s} {'mean':>6s}   whole region P / R / F1")
    for name, cones in rows:
        per_block, whole = scores(truth, cones, transform, blocks)
        print(
            f"{name:16s} {' '.join(f'{f:.3f}' for f in per_block):28s} {np.mean(per_block):6.3f}   "
            f"{whole['precision']:.2f} / {whole['recall']:.2f} / {whole['f1']:.3f}"
        )


if __name__ == "__main__":
    main()
