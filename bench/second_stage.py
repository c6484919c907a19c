"""The learned second stage, fitted and scored on out-of-fold candidates of the recipe's folds.

Run after ``python -m bench.recipe_folds`` (same ``--workdir`` and ``--seed``). Every fold's model has
mapped the whole of Mauna Kea (30 and 90 m) and eight held-out composite scenes it never trained on.
Candidates (:func:`cinderseg.cones.candidates.propose`) of those maps are labelled cone / not cone by
the matching's criterion. For fold k the verifier is fitted on

- the Mauna Kea candidates of every other fold j inside its own held-out block j (out-of-fold: the
  network that scored them never saw block j), and
- fold k's held-out scenes (built from Mauna Kea without block k), and
- with ``--negatives DIR`` (``python -m bench.negative_dems``), a :data:`NEGATIVE_FRACTION` sample of
  the candidates fold k's model proposes on real DEMs of hill country without volcanoes, as non-cones;
  then the verifier is a bag of :data:`BAG_MEMBERS` fits, each with its own sample and seed, their
  log-odds averaged (:func:`cinderseg.cones.verifier.average_verifiers`),

and scores fold k's candidates of the whole volcano; the cones it keeps are written to
``<fold>/second_stage/<region>.gpkg``, which ``recipe_folds --score-only`` then scores on block k beside
the network and the baseline. ``--ship PATH`` also fits one verifier on all folds' out-of-fold
candidates and all held-out scenes and writes it to PATH (the shipped ``verifier.json``).

    python -m bench.second_stage --workdir bench/work/recipe_folds --seed 42 \
        [--negatives resources/negative_dems] [--ship cinderseg/pretrained/verifier.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio

from bench.negative_dems import SOURCES as NEGATIVE_SOURCES
from bench.recipe_folds import HELD_OUT_SCENES, LABELS, REPO, TEST
from cinderseg.assess.matching import cone_circles
from cinderseg.cones.candidates import CANDIDATE_THRESHOLD, FEATURES, candidate_features, propose
from cinderseg.cones.morphometry import write_cone_layer
from cinderseg.cones.network import network_objects
from cinderseg.cones.outline import suppress_overlaps
from cinderseg.cones.settings import VectorizeSettings
from cinderseg.cones.verifier import Verifier, average_verifiers, fit_verifier
from cinderseg.core.grid import points_in_block
from cinderseg.data.folds import block_grid
from cinderseg.data.mask import load_labels

#: Held-out scenes (ground, resolution in m) that teach the verifier only what is not a cone (their
#: pasted cones are left out of the fit): cones pasted among the valleys and ridges of hill country
#: taught it that a knob there may be a cone, and such knobs are the commonest false cones on real
#: terrain without volcanoes (bench/README.md A4, A5). At 30 m only: at 90 m the same change cost a
#: tenth of the recall on Mauna Kea's cones under 50 m high.
NEGATIVE_ONLY_SCENES = (("hills", 30),)
#: Fraction of the candidates on each real DEM without volcanoes (bench/negative_dems.py) that join a
#: fit as non-cones, a random sample: all of them (64 000 a fold, 85 times the cones) drown the cones
#: (held-out F1 0.64 / 0.58); 10 % cut Jacksboro's false cones by three quarters but F1 to 0.73 / 0.69;
#: 1 % nearly halves the false cones on Jacksboro and Los Angeles's hills for 0.02 of F1 at 30 m and
#: none at 90 m (bench/README.md A5).
NEGATIVE_FRACTION = 0.01
#: Fits averaged when real non-cones join them, each with its own sample of them and its own seed: one
#: fit alone swings with its sample (the default demo's synthetic test region 0.88 with one and 0.95
#: with another), three together keep it at 0.97 and cut the false cones on real hills the most
#: (bench/README.md A5).
BAG_MEMBERS = 3


def candidates(fold_dir: Path, name: str) -> tuple[gpd.GeoDataFrame, pd.DataFrame]:
    """The candidates of a region mapped by the fold's model, with their features (cached)."""
    cache = fold_dir / "second_stage" / f"{name}_candidates.gpkg"
    if cache.exists():
        table = gpd.read_file(cache)
        return table, table[list(FEATURES)]
    dem = fold_dir / f"results/dem/{name}.tif"
    prob = fold_dir / f"results/predictions/{name}.tif"
    net, _ = network_objects(prob, dem, VectorizeSettings.from_config({"threshold": CANDIDATE_THRESHOLD}))
    cones, feats = candidate_features(propose(dem, net), dem, prob)
    table = gpd.GeoDataFrame(feats.reset_index(drop=True), geometry=cones.geometry.values, crs=cones.crs)
    cache.parent.mkdir(parents=True, exist_ok=True)
    table.to_file(cache, driver="GPKG", engine="pyogrio")
    return table, feats


def truth_of(fold_dir: Path, name: str, crs: object) -> gpd.GeoDataFrame:
    if name in TEST:
        return load_labels(LABELS, target_crs=crs, radius_field="radius_m")
    return gpd.read_file(fold_dir / f"results/synthetic/{name}_cones.gpkg").to_crs(crs)


def positives(cands: gpd.GeoDataFrame, truth: gpd.GeoDataFrame) -> np.ndarray:
    """True where a candidate is an admissible match of a true cone (centre <= r_min, |dr| <= r_min / 2)."""
    px, py, pr = cone_circles(cands)
    tx, ty, tr = cone_circles(truth)
    if not len(tx) or not len(px):
        return np.zeros(len(px), dtype=bool)
    rmin = np.minimum(pr[:, None], tr[None])
    d = np.hypot(px[:, None] - tx[None], py[:, None] - ty[None])
    return ((d <= rmin) & (np.abs(pr[:, None] - tr[None]) <= 0.5 * rmin)).any(axis=1)


def labelled(
    fold_dir: Path, name: str, k: int | None, grid: tuple[int, int]
) -> tuple[gpd.GeoDataFrame, np.ndarray, np.ndarray]:
    """A region's candidates of a fold, their labels, and which lie in block ``k`` (all if None)."""
    cands, _ = candidates(fold_dir, name)
    y = positives(cands, truth_of(fold_dir, name, cands.crs))
    inside = np.ones(len(cands), dtype=bool)
    if k is not None:
        with rasterio.open(fold_dir / f"results/dem/{name}.tif") as ds:
            block = block_grid(ds.height, ds.width, *grid)[k - 1]
            px, py, _ = cone_circles(cands)
            inside = points_in_block(px, py, ds.transform, block)
    return cands, y, inside


def scene_rows(fold_dir: Path, name: str, grid: tuple[int, int]) -> pd.DataFrame:
    """A held-out scene's labelled candidates for the fit (``_y``: cone or not); only the non-cones of
    one of :data:`NEGATIVE_ONLY_SCENES`."""
    cands, y, _ = labelled(fold_dir, name, None, grid)
    rows = cands.assign(_y=y)
    return rows[~rows["_y"]] if HELD_OUT_SCENES[name] in NEGATIVE_ONLY_SCENES else rows


def negative_rows(
    fold_dir: Path, name: str, source: Path, resolution_m: float, sample: int = 0
) -> pd.DataFrame:
    """A :data:`NEGATIVE_FRACTION` sample (number ``sample``) of the candidates the fold's model
    proposes on a real DEM without volcanoes (``_y`` False), cached: the DEM gridded at
    ``resolution_m``, its features, the fold model's probability, the candidates."""
    cache = fold_dir / "second_stage" / f"negative_{name}_candidates.gpkg"
    if not cache.exists():
        from cinderseg.core.modelcard import read_model_card
        from cinderseg.nn.predict import predict_probability
        from cinderseg.nn.settings import PredictSettings
        from cinderseg.terrain.dem import prepare_dem
        from cinderseg.terrain.features import FeatureSettings, compute_features

        model = fold_dir / "results/models/pretrained/model.keras"
        card = read_model_card(model)
        work = fold_dir / "second_stage" / "negatives"
        work.mkdir(parents=True, exist_ok=True)
        dem, feats_tif, prob = work / f"{name}_dem.tif", work / f"{name}_features.tif", work / f"{name}_p.tif"
        if not dem.exists():
            prepare_dem([source], dem, resolution_m=resolution_m)
        compute_features(dem, feats_tif, FeatureSettings.from_config(card.get("features") or {}))
        predict_probability(
            feats_tif, model, prob, PredictSettings(), expected_channels=card["channels"], progress=False
        )
        net, _ = network_objects(prob, dem, VectorizeSettings.from_config({"threshold": CANDIDATE_THRESHOLD}))
        cones, feats = candidate_features(propose(dem, net, workers=2), dem, prob, workers=2)
        table = gpd.GeoDataFrame(feats.reset_index(drop=True), geometry=cones.geometry.values, crs=cones.crs)
        table.to_file(cache, driver="GPKG", engine="pyogrio")
    rows = pd.DataFrame(gpd.read_file(cache).drop(columns="geometry"))  # features only
    return rows.sample(frac=NEGATIVE_FRACTION, random_state=sample).assign(_y=False)


def keep(cands: gpd.GeoDataFrame, verifier: Verifier) -> gpd.GeoDataFrame:
    """The candidates the verifier keeps, highest score first, no two overlapping by more than 30 %."""
    score = verifier.probability(cands)
    order = np.argsort(-score, kind="stable")
    above = order[score[order] >= verifier.threshold]
    taken = suppress_overlaps([cands.geometry.iloc[i] for i in above], range(len(above)), 0.3)
    out = cands.iloc[above[taken]].copy()
    out["second_stage_score"] = score[above[taken]]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "work" / "recipe_folds")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--grid", type=int, nargs=2, default=(2, 2))
    parser.add_argument("--ship", type=Path, help="also fit the verifier on every fold and write it here")
    parser.add_argument(
        "--negatives",
        type=Path,
        help="folder of the real DEMs without volcanoes (python -m bench.negative_dems): their candidates "
        "join every fit as non-cones",
    )
    parser.add_argument("--fold-verifiers", type=Path, help="also write each fold's verifier here")
    args = parser.parse_args(argv)
    root = args.workdir.resolve() / f"seed{args.seed}"
    folds = sorted(int(p.name[4:]) for p in root.glob("fold*") if (p / "results" / "models").exists())
    oof: dict[int, list[pd.DataFrame]] = {}
    scenes: dict[int, list[pd.DataFrame]] = {}
    negatives: dict[int, list[list[pd.DataFrame]]] = {}  # fold -> bag member -> one table per DEM
    for k in folds:
        fold_dir = root / f"fold{k}"
        oof[k] = []
        for name in TEST:
            cands, y, inside = labelled(fold_dir, name, k, tuple(args.grid))
            oof[k].append(cands[inside].assign(_y=y[inside]))
        scenes[k] = [scene_rows(fold_dir, n, tuple(args.grid)) for n in HELD_OUT_SCENES]
        negatives[k] = [
            [
                negative_rows(fold_dir, name, args.negatives / f"{name}.tif", source.resolution_m, sample=i)
                for name, source in NEGATIVE_SOURCES.items()
            ]
            for i in range(BAG_MEMBERS if args.negatives else 0)
        ]
        print(f"fold {k}: {sum(len(t) for t in scenes[k])} scene candidates", flush=True)
    for k in folds:
        train = [t for j in folds if j != k for t in oof[j]] + scenes[k]
        verifier = fit_bag(train, negatives[k], args.seed)
        if args.fold_verifiers:
            args.fold_verifiers.mkdir(parents=True, exist_ok=True)
            verifier.to_json(args.fold_verifiers / f"fold{k}.json")
        fold_dir = root / f"fold{k}"
        for name in TEST:
            cands, _ = candidates(fold_dir, name)
            kept = keep(cands, verifier)
            write_cone_layer(
                kept[["second_stage_score", "geometry"]], fold_dir / "second_stage" / f"{name}.gpkg"
            )
        print(f"fold {k}: verifier fitted ({verifier.meta['n_cones']} cones)", flush=True)
    if args.ship:
        train = [t for k in folds for t in oof[k] + scenes[k]]
        bag = [[t for k in folds for t in negatives[k][i]] for i in range(len(negatives[folds[0]]))]
        trained_on = f"out-of-fold candidates of {len(folds)} Mauna Kea folds and held-out scenes"
        if bag:
            trained_on += f", non-cones of {', '.join(NEGATIVE_SOURCES)}; {len(bag)} fits averaged"
        verifier = fit_bag(train, bag, args.seed, trained_on=trained_on)
        verifier.to_json(args.ship)
        print(f"verifier fitted ({verifier.meta['n_cones']} cones) -> {args.ship}")


def fit_bag(
    train: list[pd.DataFrame], bag: list[list[pd.DataFrame]], seed: int, trained_on: str = ""
) -> Verifier:
    """The verifier of labelled candidate tables ``train``; with a ``bag`` of samples of non-cones, the
    log-odds mean of one fit per sample (``train`` plus that sample; seed ``seed + i``)."""
    meta = {"trained_on": trained_on} if trained_on else {}
    if not bag:
        table = pd.concat(train, ignore_index=True)
        return fit_verifier(table, table["_y"].to_numpy(), FEATURES, seed=seed, meta=meta)
    members = []
    for i, sample in enumerate(bag):
        table = pd.concat(train + sample, ignore_index=True)
        members.append(fit_verifier(table, table["_y"].to_numpy(), FEATURES, seed=seed + i))
    info = {key: [m.meta[key] for m in members] for key in ("n_candidates", "seed")}
    return average_verifiers(members, meta={**info, "n_cones": members[0].meta["n_cones"], **meta})


if __name__ == "__main__":
    main()
