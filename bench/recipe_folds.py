"""The shipped model's recipe, left one Mauna Kea block out: what it scores on real terrain it never saw.

For each block k of a rows x cols grid over Mauna Kea's 30 m grid, the recipe of
``config/pretrain.yaml`` is run with Mauna Kea's DEM masked (nodata) over block k grown by ``gap_m``
and without the labels of the cones there: the Mauna Kea training regions, and the composite scenes
whose cones and ground are cut from it, never see block k. The model then maps the whole volcano
(``role: test`` regions at 30 m and at 90 m) and the network, the classical baseline and (with
``--second-stage``) the learned second stage are scored on the cones centred in block k, as the
crossval folds score them. The out-of-fold probability maps this leaves behind are also what the
shipped second stage is trained on (``bench/second_stage.py``).

    python -m bench.recipe_folds --workdir bench/work/recipe_folds --seed 42 [--folds 1 2] [--cores 2]

Prints a table (fold, resolution, method, F1, precision, recall) and writes ``results.json`` in the
work folder. Each fold is a Snakemake run in ``<workdir>/seed<seed>/fold<k>/`` (reruns reuse it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyproj
import rasterio
import yaml
from rasterio.features import rasterize
from rasterio.transform import rowcol
from rasterio.windows import Window

from cinderseg.assess.evaluate import evaluate_objects, read_cones
from cinderseg.assess.settings import EvaluateSettings
from cinderseg.core.grid import points_in_block
from cinderseg.data.folds import block_grid
from cinderseg.data.mask import load_labels

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "config" / "pretrain.yaml"
EXAMPLE = REPO / "examples" / "mauna_kea"
DEM = EXAMPLE / "mauna_kea_srtm3.tif"
LABELS = EXAMPLE / "mauna_kea_cones.geojson"
#: The Mauna Kea regions of the recipe, replaced by their masked copies in each fold.
RECIPE_MK = ("mauna_kea_30", "mauna_kea_90")
TEST = {"mk_test_30": 30, "mk_test_90": 90}
#: Scenes the network never trains on (role test), out-of-sample candidates for the second stage.
HELD_OUT_SCENES = {
    f"heldout_{ground}_{res}": (ground, res)
    for ground in ("donor", "plain", "hills", "coast")
    for res in (30, 90)
}
#: Cone-free ground: land (valid DEM above sea level) farther than this beyond every labelled cone's
#: basal circle; a cone mapped there is a false alarm whatever the matching says.
CONE_FREE_MARGIN_M = 1000.0
#: False alarms on cone-free ground are counted per this many km² (issue 20's target: at most 1).
PER_KM2 = 200.0


def grid_of(resolution_m: float, workdir: Path) -> tuple[rasterio.Affine, Any, int, int]:
    """Transform, CRS and shape of Mauna Kea's grid at ``resolution_m`` (the dem step's own grid)."""
    from cinderseg.terrain.dem import prepare_dem

    out = workdir / f"mk_grid_{int(resolution_m)}.tif"
    if not out.exists():
        prepare_dem([DEM], out, resolution_m=resolution_m, nodata=-32768)
    with rasterio.open(out) as ds:
        return ds.transform, ds.crs, ds.height, ds.width


def grown(block: Window, gap_px: float) -> Window:
    return Window(
        block.col_off - gap_px, block.row_off - gap_px, block.width + 2 * gap_px, block.height + 2 * gap_px
    )


def masked_inputs(fold_dir: Path, block: Window, transform: rasterio.Affine, crs: Any, gap_m: float) -> None:
    """Mauna Kea's DEM with block + gap as nodata, and its labels without the cones that reach there."""
    res = abs(transform.a)
    area = grown(block, gap_m / res)
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    with rasterio.open(DEM) as src:
        z = src.read(1)
        rows, cols = np.indices(z.shape)
        lon, lat = rasterio.transform.xy(src.transform, rows.ravel(), cols.ravel())
        x, y = to_utm.transform(np.asarray(lon), np.asarray(lat))
        inside = points_in_block(x, y, transform, area).reshape(z.shape)
        profile = src.profile
    z = np.where(inside, src.nodata if src.nodata is not None else -32768, z)
    with rasterio.open(fold_dir / "mauna_kea_masked.tif", "w", **profile) as dst:
        dst.write(z, 1)
    labels = gpd.read_file(LABELS)
    centres = labels.to_crs(crs).geometry
    radius_px = labels["radius_m"].to_numpy() / res
    reach = grown(block, gap_m / res + float(radius_px.max()))
    keep = ~points_in_block(centres.x, centres.y, transform, reach)
    labels[keep].to_file(fold_dir / "mauna_kea_masked.geojson", driver="GeoJSON")


def fold_config(fold_dir: Path, seed: int) -> Path:
    """The recipe with Mauna Kea masked, plus the whole volcano as test regions at 30 and 90 m."""
    cfg = yaml.safe_load(RECIPE.read_text())
    for name in RECIPE_MK:
        cfg["regions"][name]["dem"] = str(fold_dir / "mauna_kea_masked.tif")
        cfg["regions"][name]["labels"] = str(fold_dir / "mauna_kea_masked.geojson")
    for name, res in TEST.items():
        cfg["regions"][name] = {
            "source": "file",
            "dem": str(DEM),
            "nodata": -32768,
            "resolution_m": res,
            "role": "test",
            "labels": str(LABELS),
            "radius_field": "radius_m",
        }
    for i, (name, (ground, res)) in enumerate(HELD_OUT_SCENES.items()):
        cfg["regions"][name] = {
            "source": "scene",
            "role": "test",
            "labels": "synthetic",
            "resolution_m": res,
            "scene": {
                "seed": 900 + i,
                "ground": ground,
                "donors": ["mauna_kea_30"],
                "width_px": 300,
                "height_px": 300,
            },
        }
    cfg.setdefault("train", {})["seed"] = seed
    # the network's own objects: bench.second_stage fits and applies the verifier out of fold (the
    # shipped verifier has seen every quarter's candidates)
    cfg.setdefault("vectorize", {})["second_stage"] = "none"
    out = fold_dir / "config.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def run_fold(fold_dir: Path, seed: int, cores: int) -> None:
    config = fold_config(fold_dir, seed)
    targets = [f"results/cones/{n}.gpkg" for n in TEST] + [f"results/baseline/{n}.gpkg" for n in TEST]
    targets += [f"results/predictions/{n}.tif" for n in TEST] + [f"results/masks/{n}.tif" for n in TEST]
    targets += [f"results/predictions/{n}.tif" for n in HELD_OUT_SCENES]
    targets += [f"results/masks/{n}.tif" for n in HELD_OUT_SCENES]
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--cores",
        str(cores),
        *targets,
        "--configfile",
        str(config),
    ]
    log = fold_dir / "snakemake.log"
    with log.open("a") as fh:
        proc = subprocess.run(cmd, cwd=fold_dir, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"fold {fold_dir.name}: snakemake failed, see {log}")


def score(fold_dir: Path, name: str, block: Window, methods: dict[str, Path]) -> list[dict[str, Any]]:
    """Object scores of each method's cone layer on the cones centred in ``block``."""
    mask = fold_dir / f"results/masks/{name}.tif"
    with rasterio.open(mask) as ds:
        crs = ds.crs
    truth = load_labels(LABELS, target_crs=crs, radius_field="radius_m")
    free, free_transform, free_km2 = cone_free_ground(fold_dir / f"results/dem/{name}.tif", truth, block)
    rows = []
    for method, path in methods.items():
        cones = read_cones(path)
        objects, _ = evaluate_objects(truth, cones, mask, EvaluateSettings(), area=block)
        rows.append(
            {
                "method": method,
                "f1": objects["f1"],
                "precision": objects["precision"],
                "recall": objects["recall"],
                "n_true": objects["n_true"],
                "n_pred": objects["n_pred"],
                "cone_free_alarms": alarms_on(free, free_transform, cones.to_crs(crs)),
                "cone_free_km2": round(free_km2, 1),
            }
        )
    return rows


def cone_free_ground(
    dem_path: Path, truth: gpd.GeoDataFrame, block: Window
) -> tuple[np.ndarray, rasterio.Affine, float]:
    """The cone-free land of ``block`` of the DEM's grid (bool array of the block's shape), its
    transform and its area in km²: valid pixels above sea level farther than
    :data:`CONE_FREE_MARGIN_M` beyond every true cone's basal circle (``truth`` in the DEM's CRS, with
    ``radius_m``)."""
    with rasterio.open(dem_path) as ds:
        z = ds.read(1, window=block, masked=True)
        transform = ds.window_transform(block)
        res = abs(ds.transform.a)
    near = [
        (centre.buffer(float(r) + CONE_FREE_MARGIN_M), 1)
        for centre, r in zip(truth.geometry.centroid, truth["radius_m"], strict=True)
    ]
    cones = rasterize(near, out_shape=z.shape, transform=transform, fill=0, dtype="uint8").astype(bool)
    free = ~np.ma.getmaskarray(z) & (z.filled(0) > 0) & ~cones
    return free, transform, float(free.sum()) * res * res / 1e6


def alarms_on(free: np.ndarray, transform: rasterio.Affine, cones: gpd.GeoDataFrame) -> int:
    """How many ``cones`` (in the grid's CRS) are centred on a True pixel of ``free`` (its transform)."""
    if not len(cones):
        return 0
    centres = cones.geometry.centroid
    rows, cols = (np.asarray(a) for a in rowcol(transform, centres.x.to_numpy(), centres.y.to_numpy()))
    inside = (rows >= 0) & (rows < free.shape[0]) & (cols >= 0) & (cols < free.shape[1])
    return int(free[rows[inside], cols[inside]].sum())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "work" / "recipe_folds")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--grid", type=int, nargs=2, default=(2, 2), metavar=("ROWS", "COLS"))
    parser.add_argument("--gap-m", type=float, default=2000.0)
    parser.add_argument("--folds", type=int, nargs="*", help="1-based blocks (default: all)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--score-only", action="store_true", help="score finished folds, run nothing")
    parser.add_argument("--card", type=Path, help="write the mean held-out F1s into this model card")
    args = parser.parse_args(argv)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    grids = {res: grid_of(res, work) for res in (30, 90)}
    transform, crs, h, w = grids[30]
    blocks = block_grid(h, w, *args.grid)
    folds = args.folds or list(range(1, len(blocks) + 1))
    results = []
    for k in folds:
        fold_dir = work / f"seed{args.seed}" / f"fold{k}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        if not args.score_only:
            masked_inputs(fold_dir, blocks[k - 1], transform, crs, args.gap_m)
            run_fold(fold_dir, args.seed, args.cores)
        for name, res in TEST.items():
            _, _, hh, ww = grids[res]
            block = block_grid(hh, ww, *args.grid)[k - 1]
            methods = {
                "network": fold_dir / f"results/cones/{name}.gpkg",
                "baseline": fold_dir / f"results/baseline/{name}.gpkg",
            }
            extra = fold_dir / f"second_stage/{name}.gpkg"
            if extra.exists():
                methods["second stage"] = extra
            for row in score(fold_dir, name, block, methods):
                results.append({"seed": args.seed, "fold": k, "resolution_m": res, **row})
    (work / f"results_seed{args.seed}.json").write_text(json.dumps(results, indent=1))
    print(f"{'fold':>4} {'res':>4} {'method':<14} {'F1':>6} {'P':>6} {'R':>6} {'true':>5} {'pred':>5}")
    for r in results:
        f = lambda v: f"{v:6.3f}" if v is not None else "     -"  # noqa: E731
        print(
            f"{r['fold']:>4} {r['resolution_m']:>4} {r['method']:<14} {f(r['f1'])} {f(r['precision'])} "
            f"{f(r['recall'])} {r['n_true']:>5} {r['n_pred']:>5}"
        )
    for res in TEST.values():
        for method in dict.fromkeys(r["method"] for r in results):
            vals = [
                r["f1"]
                for r in results
                if r["resolution_m"] == res and r["method"] == method and r["f1"] is not None
            ]
            if vals:
                print(f"mean  {res:>3} m {method:<14} F1 {np.mean(vals):.3f} over {len(vals)} folds")
            rows_m = [r for r in results if r["resolution_m"] == res and r["method"] == method]
            km2 = sum(r["cone_free_km2"] for r in rows_m)
            if km2 > 0:
                alarms = sum(r["cone_free_alarms"] for r in rows_m)
                print(
                    f"      {res:>3} m {method:<14} {alarms} cones on {km2:.0f} km² of cone-free ground: "
                    f"{alarms / km2 * PER_KM2:.2f} per {PER_KM2:.0f} km²"
                )
    if args.card:
        write_heldout_scores(args.card, results, args.seed)


def write_heldout_scores(card_path: Path, results: list[dict[str, Any]], seed: int) -> None:
    """The card's ``heldout_scores``: mean object F1 per resolution and method over the folds."""
    card = json.loads(card_path.read_text())
    f1s: dict[str, dict[str, list[float]]] = {}
    for r in results:
        if r["f1"] is not None:
            f1s.setdefault(f"{r['resolution_m']}m", {}).setdefault(r["method"], []).append(r["f1"])
    card["heldout_scores"] = {
        "what": "mean object F1 of the recipe trained without each quarter of Mauna Kea, on that quarter "
        "(python -m bench.recipe_folds; 'second stage' is the shipped verifier's method)",
        "seed": seed,
        "folds": len({r["fold"] for r in results}),
        "f1": {res: {m: round(float(np.mean(v)), 3) for m, v in d.items()} for res, d in f1s.items()},
    }
    tmp = card_path.with_name(f".{card_path.name}.tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    tmp.replace(card_path)


if __name__ == "__main__":
    main()
