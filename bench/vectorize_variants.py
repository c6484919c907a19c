"""Cone outlines and height filters of the vectorize step, measured on maps the network made of
terrain it never saw: the numbers behind the ``vectorize`` defaults ``outline: dem``,
``min_height_m: 20`` and ``min_height_to_diameter: 0.05``.

Each probability map of a finished run is vectorized again with every variant below (the product's
own :func:`cinderseg.cones.vectorize.vectorize_cones`) and scored like the evaluate step does (one-to-one
matching with the labels, :func:`cinderseg.assess.evaluate.evaluate_objects`): either every fold of a
cross-validation run (``--crossval``: ``results/crossval/predictions/{fold}.tif``, scored on the
fold's held-out area) or the named test regions of a run (``--regions``:
``results/predictions/{region}.tif``, the whole region). Labels are the synthetic regions' true cones,
or ``--labels`` (with ``--radius-field`` for points). E.g. on the Mauna Kea folds and on the shipped
model's unseen synthetic regions::

    python -m bench.vectorize_variants --workdir mk --crossval \
        --labels mk/resources/mauna_kea/mauna_kea_cones.geojson --radius-field radius_m
    python -m bench.vectorize_variants --workdir transfer \
        --regions young_cones old_low small_10m coarse_90m low_shield

Prints one row per variant: object F1 per fold or region (precision / recall), and their mean. Two
rows are not vectorize settings but comparisons: the classical baseline's cones, and the default
cones kept only where a baseline cone overlaps them by more than 30 % of the smaller (agreement of
the two detectors). Results: bench/README.md, "Cross-region generalization".
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from rasterio.windows import Window

from cinderseg.assess.evaluate import evaluate_objects, read_cones
from cinderseg.assess.settings import EvaluateSettings
from cinderseg.cones.vectorize import VectorizeSettings, vectorize_cones
from cinderseg.core.raster import open_raster
from cinderseg.data.mask import load_labels

NO_HEIGHT_FILTER = {"min_height_m": 0, "min_height_to_diameter": 0}
#: name -> vectorize settings (over the schema defaults).
VARIANTS: dict[str, dict[str, Any]] = {
    "network outline, no height filter (before)": {"outline": "network", **NO_HEIGHT_FILTER},
    "network outline, height filters": {"outline": "network"},
    "dem outline, no height filter": {**NO_HEIGHT_FILTER},
    "dem outline, height filters (defaults)": {},
    "dem outline, H/D >= 0.07 (baseline's 8 deg)": {"min_height_to_diameter": 0.07},
    "dem outline, height >= 10 m": {"min_height_m": 10},
}
AGREEMENT_OVERLAP = 0.3


@dataclass(frozen=True)
class Case:
    """One probability map to vectorize and where to score it."""

    name: str
    region: str
    probability: Path
    area: Window | None


def cases(workdir: Path, crossval: bool, regions: list[str]) -> list[Case]:
    res = workdir / "results"
    if not crossval:
        return [Case(r, r, res / "predictions" / f"{r}.tif", None) for r in regions]
    out = []
    for path in sorted((res / "metrics" / "crossval").glob("*.json")):
        data = json.loads(path.read_text())
        a = data.get("area")
        area = Window(a["col_off"], a["row_off"], a["width"], a["height"]) if a else None
        out.append(
            Case(path.stem, data["region"], res / "crossval" / "predictions" / f"{path.stem}.tif", area)
        )
    if not out:
        raise SystemExit(f"{res / 'metrics' / 'crossval'}: no fold metrics (run the crossval target first)")
    return out


def overlapping(cones: gpd.GeoDataFrame, others: gpd.GeoDataFrame) -> np.ndarray:
    """Which cones overlap one of ``others`` by more than AGREEMENT_OVERLAP of the smaller area."""
    hit = np.zeros(len(cones), dtype=bool)
    tree = others.sindex
    for i, geom in enumerate(cones.geometry):
        for j in tree.query(geom, predicate="intersects"):
            other = others.geometry.iloc[j]
            if geom.intersection(other).area > AGREEMENT_OVERLAP * min(geom.area, other.area):
                hit[i] = True
                break
    return hit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("."))
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--crossval", action="store_true", help="every fold of a crossval run")
    group.add_argument("--regions", nargs="+", default=[], help="test regions of a run")
    parser.add_argument("--labels", type=Path, help="labels file (default: the synthetic true cones)")
    parser.add_argument("--radius-field", default=None)
    args = parser.parse_args(argv)
    res = args.workdir / "results"
    settings = EvaluateSettings()
    rows: dict[str, list[dict[str, Any]]] = {}
    todo = cases(args.workdir, args.crossval, args.regions)
    with tempfile.TemporaryDirectory() as tmp:
        for case in todo:
            mask = res / "masks" / f"{case.region}.tif"
            dem = res / "dem" / f"{case.region}.tif"
            with open_raster(mask, what="mask") as ds:
                crs = ds.crs
            labels = args.labels or res / "synthetic" / f"{case.region}_cones.gpkg"
            truth = load_labels(labels, target_crs=crs, radius_field=args.radius_field or "radius_m")
            baseline = read_cones(res / "baseline" / f"{case.region}.gpkg").to_crs(crs)
            found = {}
            for name, overrides in VARIANTS.items():
                found[name] = vectorize_cones(
                    case.probability, dem, Path(tmp) / "cones.gpkg", VectorizeSettings.from_config(overrides)
                )
            defaults = found["dem outline, height filters (defaults)"]
            found["defaults confirmed by the baseline"] = defaults[overlapping(defaults, baseline)]
            found["classical baseline"] = baseline
            for name, cones in found.items():
                o, _ = evaluate_objects(truth, cones, mask, settings, region=case.region, area=case.area)
                rows.setdefault(name, []).append({k: o[k] or 0.0 for k in ("f1", "precision", "recall")})
    print(f"{'variant':46s} {'mean F1':>7s}   F1 (P / R) of {', '.join(c.name for c in todo)}")
    for name, scores in rows.items():
        each = " ".join(f"{s['f1']:.2f} ({s['precision']:.2f}/{s['recall']:.2f})" for s in scores)
        print(f"{name:46s} {np.mean([s['f1'] for s in scores]):7.3f}   {each}")


if __name__ == "__main__":
    main()
