"""The held-out quarters of Mauna Kea as a DEM interpolated from contour lines would show them.

Many DEMs of volcanic fields (national grids of the 1990s-2000s, city surveys) were gridded from
digitised contours: the ground between two lines is a ramp, and a summit above its last line is flat.
For each fold k of ``python -m bench.recipe_folds``, the held-out block of its 30 m Mauna Kea grid
(plus a margin) is rebuilt from its contours at each interval (:func:`from_contours`); the fold's
network with its own verifier (``python -m bench.second_stage --fold-verifiers DIR``) and the
classical detector map each version, and the labelled cones centred in the block are scored.

    python -m bench.contour_dem --workdir bench/work/recipe_folds --seed 42 --verifiers DIR

``--intervals`` sets the contour intervals in metres (default 10 and 20).

Prints a line per fold and version, then the totals (found, false, F1 as in bench/second_stage.py:
a match is a centre within the smaller radius, radii within half of it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window
from scipy import ndimage

from bench.recipe_folds import LABELS, REPO
from bench.second_stage import positives
from cinderseg.assess.matching import cone_circles
from cinderseg.cones.baseline import run_baseline
from cinderseg.cones.detector import BaselineSettings
from cinderseg.cones.vectorize import VectorizeSettings, vectorize_cones
from cinderseg.core.grid import points_in_block
from cinderseg.core.modelcard import read_model_card
from cinderseg.data.folds import block_grid
from cinderseg.data.mask import load_labels
from cinderseg.nn.predict import predict_probability
from cinderseg.nn.settings import PredictSettings
from cinderseg.terrain.features import FeatureSettings, compute_features

#: Ground kept around the held-out block (metres): the features' and the candidates' context.
MARGIN_M = 3000.0


def from_contours(z: np.ndarray, interval: float) -> np.ndarray:
    """``z`` (metres, NaN = nodata) as gridded from its contour lines every ``interval`` metres: each
    pixel lies between the lines of the levels below and above it and takes the level below plus
    ``interval`` times its distance to that line over its distances to both (a ramp between lines, as
    contour-to-grid interpolation makes); where no line of the level above is near (a summit above
    its last line), the level below: a flat top. A line of level L is the pixels at or above L that
    touch a pixel below it."""
    valid = np.isfinite(z)
    filled = np.where(valid, z, -np.inf)
    lower = np.floor(np.where(valid, z, 0.0) / interval) * interval
    d_lower = np.full(z.shape, np.inf)
    d_upper = np.full(z.shape, np.inf)
    levels = np.unique(lower[valid])
    for level in np.append(levels, levels.max() + interval) if levels.size else []:
        above = filled >= level
        line = above & ~ndimage.binary_erosion(above, border_value=1) & valid
        band = valid & ((lower == level) | (lower == level - interval))
        if not line.any() or not band.any():
            continue
        rows, cols = np.nonzero(band | line)
        box = np.s_[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        distance = ndimage.distance_transform_edt(~line[box])
        below_it = band[box] & (lower[box] == level)
        above_it = band[box] & (lower[box] == level - interval)
        d_lower[box][below_it] = distance[below_it]
        d_upper[box][above_it] = distance[above_it]
    with np.errstate(invalid="ignore"):
        ramp = np.where(np.isfinite(d_upper) & np.isfinite(d_lower), d_lower / (d_lower + d_upper), 0.0)
    return np.where(valid, lower + interval * np.nan_to_num(ramp), np.nan)


def _score(cones, truth) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Labelled cones found, and mapped cones that match none."""
    return int(positives(truth, cones).sum()), int((~positives(cones, truth)).sum())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "work" / "recipe_folds")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--verifiers", type=Path, required=True, help="the folds' verifiers (second_stage --fold-verifiers)"
    )
    parser.add_argument("--intervals", type=float, nargs="+", default=(10.0, 20.0))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "work" / "contour_dem")
    args = parser.parse_args(argv)
    root = args.workdir.resolve() / f"seed{args.seed}"
    folds = sorted(int(p.name[4:]) for p in root.glob("fold*") if (p / "results" / "models").exists())
    totals: dict[tuple[float, str], list[int]] = {}
    for k in folds:
        fold_dir = root / f"fold{k}"
        model = fold_dir / "results/models/pretrained/model.keras"
        card = read_model_card(model)
        with rasterio.open(fold_dir / "results/dem/mk_test_30.tif") as ds:
            block = block_grid(ds.height, ds.width, 2, 2)[k - 1]
            m = int(MARGIN_M / ds.res[0])
            r0, c0 = max(block.row_off - m, 0), max(block.col_off - m, 0)
            r1 = min(block.row_off + block.height + m, ds.height)
            c1 = min(block.col_off + block.width + m, ds.width)
            window = Window(c0, r0, c1 - c0, r1 - r0)
            z = ds.read(1, window=window, masked=True).astype(np.float64).filled(np.nan)
            profile = ds.profile | {
                "width": window.width,
                "height": window.height,
                "transform": ds.window_transform(window),
                "dtype": "float32",
                "nodata": np.nan,
            }
            truth = load_labels(LABELS, target_crs=ds.crs, radius_field="radius_m")
            tx, ty, _ = cone_circles(truth)
            truth = truth[points_in_block(tx, ty, ds.transform, block)]
            transform = ds.transform
        for interval in (0.0, *args.intervals):
            work = args.out / f"seed{args.seed}" / f"fold{k}_contours{interval:g}"
            work.mkdir(parents=True, exist_ok=True)
            with rasterio.open(work / "dem.tif", "w", **profile) as dst:
                dst.write((z if interval == 0 else from_contours(z, interval)).astype(np.float32), 1)
            compute_features(
                work / "dem.tif",
                work / "features.tif",
                FeatureSettings.from_config(card.get("features") or {}),
            )
            predict_probability(
                work / "features.tif",
                model,
                work / "probability.tif",
                PredictSettings(),
                expected_channels=card["channels"],
                threads=2,
                progress=False,
            )
            settings = VectorizeSettings.from_config({"second_stage": str(args.verifiers / f"fold{k}.json")})
            mapped = {
                "second stage": vectorize_cones(
                    work / "probability.tif", work / "dem.tif", work / "cones.gpkg", settings, workers=2
                ),
                "baseline": run_baseline(work / "dem.tif", work / "baseline.gpkg", BaselineSettings()),
            }
            row = {"fold": k, "contours_m": interval, "cones": len(truth)}
            for method, cones in mapped.items():
                x, y, _ = cone_circles(cones)
                found, false = _score(cones[points_in_block(x, y, transform, block)], truth)
                row[method] = {"found": found, "false": false}
                total = totals.setdefault((interval, method), [0, 0, 0])
                total[0] += found
                total[1] += false
                total[2] += len(truth)
            print(json.dumps(row), flush=True)
    for (interval, method), (found, false, n) in sorted(totals.items()):
        precision, recall = found / max(found + false, 1), found / max(n, 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-9)
        label = "as is" if interval == 0 else f"from {interval:g} m contours"
        print(f"{label:22s} {method:13s} found {found}/{n}, false {false}, F1 {f1:.3f}")


if __name__ == "__main__":
    main()
