"""Snakemake script of rules mosaic_cones and mosaic_baseline: a region's cone layer from its tiles'
(mosaic_cones: with its summary and figures, like the vectorize step)."""

from cinderseg.core.step import run_step
from cinderseg.workflow.maptiles import RegionTiles, merge_tile_cones, write_merged_cone_products

plan = RegionTiles.from_params(snakemake.params.plan)
region = snakemake.wildcards.region
if snakemake.rule == "mosaic_baseline":
    run_step(
        snakemake.log[0],
        merge_tile_cones,
        list(snakemake.input),
        plan.tiles,
        plan.grid,
        snakemake.output.cones,
        region=region,
        max_overlap=snakemake.params.max_overlap,
        by_score=True,
    )
else:
    out = snakemake.output
    run_step(
        snakemake.log[0],
        write_merged_cone_products,
        list(snakemake.input.cones),
        plan,
        snakemake.input.dem,
        cones_path=out.cones,
        summary_path=out.summary,
        figure_paths={
            "size_frequency": out.size_frequency,
            "height_vs_diameter": out.height_vs_diameter,
            "cone_map": out.cone_map,
        },
        region=region,
    )
