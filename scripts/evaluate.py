"""Snakemake script of rules evaluate and crossval_evaluate: pixel and object metrics of the network
and the baseline (for a cross-validation fold: on its held-out area only)."""

from cinderseg.assess.evaluate import evaluate_region
from cinderseg.assess.settings import EvaluateSettings
from cinderseg.core.raster import open_raster
from cinderseg.core.step import run_step
from cinderseg.data.folds import Fold, held_out_area
from cinderseg.data.mask import load_labels


def main(inp, out, params, region: str) -> None:
    with open_raster(inp.dem, what=f"DEM of region '{region}'") as ds:
        crs = ds.crs
    labels = load_labels(inp.labels, target_crs=crs, radius_field=params.radius_field, region=region)
    fold = params.get("fold")  # crossval_evaluate: the fold, scored on its held-out area
    evaluate_region(
        region=region,
        mask_path=inp.mask,
        labels=labels,
        cones_path=inp.cones,
        probability_path=inp.probability,
        threshold=params.threshold,
        baseline_path=inp.baseline,
        dem_path=inp.dem,
        out_json=out.metrics,
        error_map_path=out.errors,
        settings=EvaluateSettings.from_config(params.evaluate),
        role=params.role,
        area=held_out_area(inp.mask, Fold.from_params(fold)) if fold else None,
        fold=fold,
    )


run_step(
    snakemake.log[0],
    main,
    snakemake.input,
    snakemake.output,
    snakemake.params,
    snakemake.params.get("region") or snakemake.wildcards.region,
)
